//! The `sxds` binary: the daemon (configuration, logging, signals,
//! listeners) and, beside it, the client subcommands of [`cli`].

mod cli;

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use cli::Invocation;
use sxds::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let invocation = match cli::parse() {
        Ok(invocation) => invocation,
        // --help and --version print in full; bad arguments are one line.
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            eprintln!("sxds: {}", one_line(&error.to_string()));
            return ExitCode::from(2);
        }
    };
    let config = match invocation {
        Invocation::Daemon(config) => config,
        Invocation::Client(command) => return cli::run(command),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sxds: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("sxds: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A clap error's message up to its usage block, as one line: the lines
/// after the first name what is missing or where the value came from.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().take_while(|line| !line.trim().is_empty() && !line.starts_with("Usage:")).map(str::trim).collect();
    lines.join(" ").trim_start_matches("error: ").to_owned()
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log).context("--log is not a valid log filter")?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    if config.production {
        logs.json().init();
    } else {
        logs.init();
    }
    // A panic (a task's, or one a parser guard catches) is a log line like
    // any other, JSON in production, not raw text on stderr.
    std::panic::set_hook(Box::new(|panic| tracing::error!(%panic, "panic")));

    // Every Envoy holds a connection open: raise the open-file limit to the hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
    if config.ads_mode {
        tracing::info!("SXDS_ADS_MODE is accepted for compatibility; ADS and the per-type services are always served");
    }

    let xds_addr = SocketAddr::new(config.listen_address, config.xds_port);
    let rest_addr = SocketAddr::new(config.listen_address, config.cacher_port);
    let xds = TcpListener::bind(xds_addr).await.with_context(|| format!("cannot listen on {xds_addr} (xDS)"))?;
    let rest = TcpListener::bind(rest_addr).await.with_context(|| format!("cannot listen on {rest_addr} (REST)"))?;
    tracing::info!(xds = %xds.local_addr()?, rest = %rest.local_addr()?, "sxds listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    sxds::run(&config, xds, rest, shutdown).await.context("sxds stopped")?;
    tracing::info!("sxds stopped");
    Ok(())
}

/// SIGTERM or SIGINT starts a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
