//! The `sxds` command line: the daemon (`sxds`, `sxds serve`) and the client
//! subcommands beside it. This file holds the arguments and the dispatch;
//! [`client`] speaks to the REST API, [`diff`] compares bundles, [`migrate`]
//! turns Go sxds (Envoy v2) bundles into v3, [`table`] prints tables, and
//! [`bootstrap`] writes an Envoy's bootstrap (from ECS task metadata).
//!
//! Exit codes: 0 ok, 1 refused (by the server, by the validator, or the
//! server could not be reached), 2 usage (bad arguments, unreadable files).

mod bootstrap;
mod client;
mod diff;
mod migrate;
mod table;

use std::{fmt, io::Read, path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use sxds::{
    bundle::{self, Counts, Format},
    resource_type::ResourceType,
    Config,
};

use client::Client;

/// A standalone Envoy xDS control plane: PUT a bundle of Envoy v3 resources
/// for a node type, and every Envoy whose node id is `<node_type>-...` gets it.
///
/// Without a subcommand sxds runs the daemon, with the options below
/// (the same as `sxds serve`).
#[derive(Debug, Parser)]
#[command(name = "sxds", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    daemon: Config,

    #[command(subcommand)]
    command: Option<Command>,
}

/// The subcommands alone, for a command line that starts with one: the
/// daemon's options (and their `SXDS_*` variables) are then not read, so a
/// variable meant for the daemon cannot break a client call.
#[derive(Debug, Parser)]
#[command(name = "sxds", version)]
struct Subcommands {
    #[command(subcommand)]
    command: Command,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Daemon(Config),
    Client(Command),
}

/// Parses the process's arguments.
pub fn parse() -> Result<Invocation, clap::Error> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|arg| arg.to_str()).unwrap_or_default();
    let subcommand = first != "help" && Cli::command().get_subcommands().any(|command| command.get_name() == first);
    if subcommand {
        return Ok(match Subcommands::try_parse_from(args)?.command {
            Command::Serve(config) => Invocation::Daemon(config),
            command => Invocation::Client(command),
        });
    }
    let cli = Cli::try_parse_from(args)?;
    Ok(match cli.command {
        None => Invocation::Daemon(cli.daemon),
        Some(Command::Serve(config)) => Invocation::Daemon(config),
        Some(command) => Invocation::Client(command),
    })
}

/// What `sxds rollout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RolloutAction {
    /// Show the rollout: state, canaries, which ACKed, why it halted.
    Status,
    /// Start a halted rollout again, with the canaries connected now.
    Retry,
    /// Give it up: the canaries get the stored bundle again.
    Abandon,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default when no subcommand is given).
    Serve(Config),
    /// Store a bundle for a node type and print the server's summary.
    Put {
        /// Node type, e.g. `sidecar`.
        node_type: String,
        /// Bundle file (JSON, or YAML for .yaml/.yml); `-` reads stdin.
        file: PathBuf,
        /// Send a bundle with no listeners and no clusters anyway (it empties every Envoy of the node type).
        #[arg(long)]
        allow_empty: bool,
        /// Roll it out to the Envoys whose node id matches this glob first
        /// (e.g. `sidecar-canary-*`); the others get it once they all ACKed.
        #[arg(long, value_name = "GLOB")]
        canary: Option<String>,
        /// How long the canaries have to ACK before the rollout halts.
        #[arg(long, value_name = "DURATION", requires = "canary")]
        wait: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// A node type's canary rollout: its status, or retry or abandon a halted one.
    Rollout {
        #[arg(value_enum)]
        action: RolloutAction,
        node_type: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the stored bundle of a node type as JSON.
    Get {
        node_type: String,
        /// An earlier stored version instead of the current one (see `sxds history`).
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Forget a node type's bundle (connected Envoys keep their config).
    Delete {
        node_type: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the stored node types with their versions and resource counts.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// List the connected Envoys: what each was sent, ACKed and NACKed.
    Nodes {
        /// Only the Envoys of this node type.
        #[arg(long)]
        node_type: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show what putting FILE would change, per resource.
    Diff {
        node_type: String,
        /// Bundle file (JSON, or YAML for .yaml/.yml); `-` reads stdin.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check a bundle offline, with the server's own parser and checks.
    Validate {
        /// Bundle file (JSON, or YAML for .yaml/.yml); `-` reads stdin.
        file: PathBuf,
        /// Accept a bundle with no listeners and no clusters.
        #[arg(long)]
        allow_empty: bool,
    },
    /// List the stored versions of a node type, newest first.
    History {
        node_type: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Serve an earlier version of a node type's bundle again.
    Rollback {
        node_type: String,
        /// The version to restore (see `sxds history`).
        version: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Convert a Go sxds bundle (Envoy v2 resources) to v3, offline.
    Migrate {
        /// Go sxds bundle (JSON, or YAML for .yaml/.yml); `-` reads stdin.
        file: PathBuf,
        /// Where to write the v3 bundle (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write the Envoy bootstrap of this Envoy (in an ECS task: node id and locality from the task metadata).
    Bootstrap(bootstrap::BootstrapArgs),
    /// Print shell completions, e.g. `sxds completions bash > /etc/bash_completion.d/sxds`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Where the REST API is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Base URL of the sxds REST API.
    #[arg(long, env = "SXDS_SERVER", default_value = "http://127.0.0.1:8082")]
    pub server: String,
    /// Token of a server with a token file, sent as `Authorization: Bearer`; writes (put, delete, rollback) need it.
    #[arg(long, env = "SXDS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed an https server's certificate.
    #[arg(long, env = "SXDS_CACERT")]
    pub cacert: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Why a subcommand failed; each maps to an exit code.
#[derive(Debug)]
pub enum Failure {
    /// The server or the validator said no, or the server was unreachable: exit 1.
    Refused(String),
    /// Bad arguments or unreadable files: exit 2.
    Usage(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(message) | Self::Usage(message) => f.write_str(message),
        }
    }
}

impl Failure {
    fn code(&self) -> ExitCode {
        match self {
            Self::Refused(_) => ExitCode::from(1),
            Self::Usage(_) => ExitCode::from(2),
        }
    }

    /// A bundle the validator refused, with its field path.
    fn bundle(error: &bundle::BundleError) -> Self {
        Self::Refused(with_path(&error.message, error.path.as_deref()))
    }
}

/// `message (at path)`, the one way errors with a field path are printed.
pub fn with_path(message: &str, path: Option<&str>) -> String {
    match path {
        Some(path) => format!("{message} (at {path})"),
        None => message.to_owned(),
    }
}

/// Runs a client subcommand (not `serve`) and prints its failure, if any.
pub fn run(command: Command) -> ExitCode {
    // One request at a time: a current-thread runtime is enough.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sxds: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sxds: {failure}");
            failure.code()
        }
    }
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(_) => Err(Failure::Usage("serve runs the daemon, not a client call".into())),
        Command::Put { node_type, file, allow_empty, canary: None, remote, .. } => {
            let (body, format) = read_bundle(&file)?;
            let summary = Client::new(&remote)?.put(&node_type, body, format, allow_empty).await?;
            emit(&put_summary(&summary))
        }
        Command::Put { node_type, file, canary: Some(glob), wait, remote, .. } => {
            let (body, format) = read_bundle(&file)?;
            let answer = Client::new(&remote)?.canary(&node_type, body, format, &glob, wait.as_deref()).await?;
            emit(&table::rollout(&answer["rollout"]))
        }
        Command::Rollout { action, node_type, remote } => {
            let client = Client::new(&remote)?;
            let rollout = match action {
                RolloutAction::Status => client.rollout(&node_type).await?,
                RolloutAction::Retry => client.retry_rollout(&node_type).await?,
                RolloutAction::Abandon => client.abandon_rollout(&node_type).await?,
            };
            emit(&table::rollout(&rollout))
        }
        Command::Get { node_type, version, remote } => {
            let client = Client::new(&remote)?;
            let bundle = match version {
                Some(version) => client.get_version(&node_type, &version).await?,
                None => client.get(&node_type).await?.ok_or_else(|| not_found(&node_type))?,
            };
            emit(&(table::pretty_json(&bundle) + "\n"))
        }
        Command::Delete { node_type, remote } => {
            Client::new(&remote)?.delete(&node_type).await?;
            emit(&format!("{node_type}: deleted (connected Envoys keep their config)\n"))
        }
        Command::List { remote } => {
            let list = Client::new(&remote)?.list().await?;
            emit(&table::bundles(&list))
        }
        Command::Nodes { node_type, output, remote } => {
            let mut nodes = Client::new(&remote)?.nodes().await?;
            if let (Some(wanted), Some(Value::Array(streams))) = (&node_type, nodes.get_mut("streams")) {
                streams.retain(|stream| stream["node_type"].as_str() == Some(wanted));
            }
            match output {
                Output::Json => emit(&(serde_json::to_string_pretty(&nodes).unwrap_or_default() + "\n")),
                Output::Table => emit(&table::nodes(&nodes, std::io::IsTerminal::is_terminal(&std::io::stdout()))),
            }
        }
        Command::Diff { node_type, file, remote } => {
            let (body, format) = read_bundle(&file)?;
            // Refused here first, offline, with the same message the server would give.
            accept(&body, format)?;
            let answer = Client::new(&remote)?.dry_run(&node_type, body, format).await?;
            let changes: bundle::Diff = serde_json::from_value(answer).map_err(|e| Failure::Refused(format!("the server's dry run answer: {e}")))?;
            emit(&diff::render(&node_type, &changes, std::io::IsTerminal::is_terminal(&std::io::stdout())))
        }
        Command::Validate { file, allow_empty } => {
            let (body, format) = read_bundle(&file)?;
            let stored = accept(&body, format)?;
            let counts = bundle::counts(&stored);
            if counts[ResourceType::Listener] == 0 && counts[ResourceType::Cluster] == 0 && !allow_empty {
                return Err(Failure::Refused(with_path(
                    "this bundle has no listeners and no clusters: it would empty the config of every Envoy of its node type \
                     (--allow-empty accepts it)",
                    Some("listeners"),
                )));
            }
            emit(&format!("ok: version {:?}: {}\n", stored.version, counts_line(&counts)))
        }
        Command::History { node_type, remote } => {
            let history = Client::new(&remote)?.history(&node_type).await?;
            emit(&table::history(&history))
        }
        Command::Rollback { node_type, version, remote } => {
            let answer = Client::new(&remote)?.rollback(&node_type, &version).await?;
            let new_version = answer["version"].as_str().unwrap_or("?");
            let unchanged = if answer["changed"].as_bool() == Some(false) { " (already served; nothing changed)" } else { "" };
            emit(&format!("{node_type}: rolled back to {version:?} as version {new_version:?}{unchanged}: {}\n", counts_of_json(&answer)))
        }
        Command::Migrate { file, output } => {
            let (body, format) = read_bundle(&file)?;
            let migrated = migrate::run(&body, format)?;
            match output {
                Some(path) => std::fs::write(&path, migrated).map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?,
                None => emit(&migrated)?,
            }
            Ok(())
        }
        Command::Bootstrap(args) => bootstrap::run(args).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sxds", &mut script);
            emit(&String::from_utf8_lossy(&script))
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Refused(format!("cannot write to stdout: {e}"))),
        _ => Ok(()),
    }
}

/// Parses and validates like the server's PUT does.
fn accept(body: &[u8], format: Format) -> Result<sxds::schema::StoredBundle, Failure> {
    bundle::accept(body, format).map_err(|e| Failure::bundle(&e))
}

fn not_found(node_type: &str) -> Failure {
    Failure::Refused(format!("no bundle for node type {node_type}"))
}

/// Reads a bundle file or stdin (`-`); `.yaml`/`.yml` files are YAML, stdin
/// is YAML unless it starts like JSON.
fn read_bundle(path: &std::path::Path) -> Result<(Vec<u8>, Format), Failure> {
    if path.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
        let json = body.iter().find(|b| !b.is_ascii_whitespace()).is_none_or(|b| *b == b'{' || *b == b'[');
        return Ok((body, if json { Format::Json } else { Format::Yaml }));
    }
    let body = std::fs::read(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let yaml = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml"));
    Ok((body, if yaml { Format::Yaml } else { Format::Json }))
}

/// "1 listeners, 2 clusters, ...", in the order a bundle lists the types:
/// the core four, and others when there are some.
fn counts_line(counts: &Counts) -> String {
    let mut types: Vec<_> = counts.iter().filter(|(ty, n)| ty.info().core || **n > 0).collect();
    types.sort_by_key(|(ty, _)| ty.bundle_field());
    types.iter().map(|(ty, n)| format!("{n} {ty}")).collect::<Vec<_>>().join(", ")
}

fn counts_of_json(answer: &Value) -> String {
    let n = |key: &str| answer[key].as_u64().unwrap_or(0) as usize;
    counts_line(&Counts::from_fn(|ty| n(ty.name())))
}

fn put_summary(summary: &Value) -> String {
    let node_type = summary["node_type"].as_str().unwrap_or("?");
    let version = summary["version"].as_str().unwrap_or("?");
    let what = if summary["changed"].as_bool() == Some(false) { "unchanged (already stored)" } else { "stored" };
    format!("{node_type}: version {version:?} {what}: {}\n", counts_of_json(summary))
}
