//! The wire's share of a fan-out update, measured without sxds: N loopback
//! TCP connections; per round, a server task per connection is woken by one
//! `watch` (as a node type's streams are by its snapshot), writes a response
//! of `--response-bytes` and reads an ACK of `--ack-bytes` (`--exchanges`
//! times in turn; with `--batch N`, N responses written at once and then
//! their N ACKs read), while a client task per connection answers each
//! response with an ACK. The server's CPU per round is what one response and its ACK
//! per stream cost in the kernel and tokio alone, with no HTTP/2, gRPC or
//! xDS: the floor under the daemon's CPU per update (issue #12).
//!
//! ```text
//! cargo run --release --example wire_floor -- --streams 10000 --rounds 20
//! cargo run --release --example wire_floor -- --streams 10000 --exchanges 4 --response-bytes 4000 --ack-bytes 800
//! cargo run --release --example wire_floor -- --streams 10000 --exchanges 2 --batch 2 --response-bytes 4000 --ack-bytes 800
//! ```
//!
//! The clients run in a second process (this binary with `--client`): one
//! process holds at most 20,000 files here, not 10,000 connections' two
//! ends. The CPU counted is the server's worker threads'
//! (`/proc/self/task/*/schedstat`), user and system, which on loopback
//! includes delivering what they write.

#![allow(dead_code)] // the smoke test takes `run` alone

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
    sync::{watch, Notify},
};

#[derive(Debug, Parser)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// An EDS response of one small endpoint set, with its gRPC and HTTP/2 DATA headers.
    #[arg(long, default_value_t = 170)]
    pub response_bytes: usize,
    /// An ACK naming the mesh's clusters, with its headers (100 names: about 1.5 KB).
    #[arg(long, default_value_t = 1500)]
    pub ack_bytes: usize,
    /// Responses per stream per round, each sent once the one before is
    /// ACKed, as ADS orders a full push (CDS, EDS, LDS, RDS: 4).
    #[arg(long, default_value_t = 1)]
    pub exchanges: usize,
    /// Responses written together in each exchange before their ACKs are
    /// read: sxds sends CDS with EDS, then LDS with RDS (2 exchanges of 2).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Worker threads of the server's runtime and of the clients' (the daemon's default: one per core).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Run the clients of the server at this address (the second process).
    #[arg(long)]
    pub client: Option<std::net::SocketAddr>,
}

/// Where the clients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// On a runtime of their own in this process (small sizes: the smoke test).
    InProcess,
    /// In a child process, this binary with `--client`.
    Process,
}

/// Server CPU and time until every stream ACKed, per round.
#[derive(Debug)]
pub struct Round {
    pub cpu: Duration,
    pub wall: Duration,
}

const SERVER_THREAD: &str = "floor-server";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Each process holds one end of every connection.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("wire_floor: cannot raise the open-file limit: {error}");
    }
    if let Some(server) = args.client {
        return runtime(args.threads, "floor-client")?.block_on(async {
            connect_clients(server, args.streams, args.response_bytes, args.ack_bytes).await?;
            // Until the server is done and kills this process.
            std::future::pending().await
        });
    }
    println!(
        "wire floor: {} streams, {} × {} × ({} B response, {} B ACK) a round, {} worker threads each for server and clients",
        args.streams, args.exchanges, args.batch, args.response_bytes, args.ack_bytes, args.threads
    );
    let rounds = run(&args, Clients::Process, |i, round| println!("  round {i:>3}: server CPU {:>6.1} ms, all ACKed after {:>6.1} ms", ms(round.cpu), ms(round.wall)))?;
    let count = u32::try_from(rounds.len())?;
    let (cpu, wall) = (rounds.iter().map(|r| r.cpu).sum::<Duration>(), rounds.iter().map(|r| r.wall).sum::<Duration>());
    let per_stream_us = cpu.as_secs_f64() * 1e6 / (rounds.len() * args.streams * args.exchanges * args.batch) as f64;
    println!("mean: server CPU {:.1} ms a round ({per_stream_us:.1} µs a response and its ACK), all ACKed after {:.1} ms", ms(cpu / count), ms(wall / count));
    Ok(())
}

/// Connects the streams, runs the rounds, and reports each to `report`.
pub fn run(args: &Args, clients: Clients, mut report: impl FnMut(usize, &Round)) -> anyhow::Result<Vec<Round>> {
    let server = runtime(args.threads, SERVER_THREAD)?;
    let listener = server.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    // Kept until the rounds are done: dropping either stops the clients.
    let (_client_runtime, _client_process) = match clients {
        Clients::InProcess => {
            let runtime = runtime(args.threads, "floor-client")?;
            runtime.spawn(connect_clients(address, args.streams, args.response_bytes, args.ack_bytes));
            (Some(runtime), None)
        }
        Clients::Process => {
            let child = std::process::Command::new(std::env::current_exe()?)
                .args(["--client", &address.to_string(), "--streams", &args.streams.to_string(), "--threads", &args.threads.to_string()])
                .args(["--response-bytes", &args.response_bytes.to_string(), "--ack-bytes", &args.ack_bytes.to_string()])
                .spawn()
                .context("starting the clients' process")?;
            (None, Some(KillOnDrop(child)))
        }
    };

    server.block_on(async {
        let (round_tx, round_rx) = watch::channel(0usize);
        let acked = Arc::new(AtomicUsize::new(0));
        let all_acked = Arc::new(Notify::new());
        let deadline = Instant::now() + Duration::from_secs(120);
        for _ in 0..args.streams {
            let (mut stream, _) = tokio::time::timeout_at(deadline.into(), listener.accept()).await.context("the clients did not connect in time")??;
            stream.set_nodelay(true)?;
            let (mut rounds, acked, all_acked) = (round_rx.clone(), acked.clone(), all_acked.clone());
            let (streams, exchanges) = (args.streams, args.exchanges);
            let (response, mut ack) = (vec![b'r'; args.response_bytes * args.batch], vec![0; args.ack_bytes * args.batch]);
            tokio::spawn(async move {
                while rounds.changed().await.is_ok() {
                    for _ in 0..exchanges {
                        if stream.write_all(&response).await.is_err() || stream.read_exact(&mut ack).await.is_err() {
                            return;
                        }
                    }
                    if acked.fetch_add(1, Ordering::AcqRel) + 1 == streams {
                        all_acked.notify_one();
                    }
                }
            });
        }

        let mut rounds = Vec::with_capacity(args.rounds);
        for i in 1..=args.rounds {
            tokio::time::sleep(Duration::from_millis(200)).await;
            acked.store(0, Ordering::Release);
            let (cpu, wall) = (server_cpu()?, Instant::now());
            round_tx.send_replace(i);
            tokio::time::timeout(Duration::from_secs(60), all_acked.notified()).await.context("a round did not complete in 60 s")?;
            let round = Round { cpu: server_cpu()?.saturating_sub(cpu), wall: wall.elapsed() };
            report(i, &round);
            rounds.push(round);
        }
        Ok(rounds)
    })
}

/// Opens the streams; each answers every response with an ACK until the server goes.
async fn connect_clients(server: std::net::SocketAddr, streams: usize, response: usize, ack: usize) -> anyhow::Result<()> {
    for _ in 0..streams {
        let mut stream = TcpStream::connect(server).await.context("connect")?;
        stream.set_nodelay(true)?;
        let ack = vec![b'a'; ack];
        tokio::spawn(async move {
            let mut buf = vec![0; response];
            while stream.read_exact(&mut buf).await.is_ok() {
                if stream.write_all(&ack).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// A runtime of `threads` worker threads named `name` (the server's are
/// told apart by their name when their CPU is read).
fn runtime(threads: usize, name: &'static str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads).thread_name(name).enable_all().build()
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The CPU time of the server's threads, user and system, in nanoseconds:
/// a round is a few hundred milliseconds, too short for `/proc`'s 10 ms
/// ticks, and the clients' threads share the process.
fn server_cpu() -> anyhow::Result<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path();
        // A thread may end between listing and reading: it is skipped.
        let (Ok(name), Ok(schedstat)) = (std::fs::read_to_string(path.join("comm")), std::fs::read_to_string(path.join("schedstat"))) else { continue };
        if name.trim_end() == SERVER_THREAD {
            total += schedstat.split_whitespace().next().context("schedstat is empty")?.parse::<u64>()?;
        }
    }
    Ok(Duration::from_nanos(total))
}
