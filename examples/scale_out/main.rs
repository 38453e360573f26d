//! The scale-out harness: several engine processes reading from one Redis Cluster while one
//! process writes, every answer checked; and the fan-out measurements of broadcast tracking.
//! `scripts/scale-out` builds it in release and runs it:
//!
//! ```sh
//! # 3 masters on free loopback ports; P readers (1, 2, then 4) and one writer, 10 s each
//! scripts/scale-out run --processes 1,2,4 --write-rates 200,2000 --seconds 10
//! # the same with a replica per master, which every reader tracks too
//! scripts/scale-out run --replicas 1 --processes 1,2,4 --write-rates 200,2000 --seconds 5
//! # server CPU per write with 0…1000 broadcast tracking clients; engine CPU per invalidation;
//! # server memory of default (per-key) tracking; server CPU per background command
//! scripts/scale-out fanout
//! # server CPU per write with the trackers on a master, then on the master and its replica
//! scripts/scale-out fanout --parts push --replica
//! ```
//!
//! `run` starts the cluster and, for each write rate and number of readers, its own processes
//! of this binary: `reader` (the [`enrich::Enricher`] over the cluster store, with its L1 and
//! tracking, enriching pages of activities whose users follow Zipf) and `writer` (updates,
//! deletes and re-creates users at a set rate through the engine's store). Each records what it
//! did ([`enrich::bench::scale`]); `run` then checks every answer against the acknowledged
//! writes and prints throughput, latency, invalidations, staleness and CPU.

mod cluster;
mod counted;
mod fanout;
mod orchestrate;
mod probe;
mod proc;
mod reader;
mod writer;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Many engine processes on one Redis Cluster, every answer checked")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a cluster, then for each write rate and number of readers run the readers and
    /// the writer, check every answer and report.
    Run(orchestrate::RunArgs),
    /// Measure what broadcast tracking costs: server CPU per write against the number of
    /// tracking clients (on a master and its replica with `--replica`), engine CPU per
    /// invalidation, server memory of per-key tracking, server CPU per background command.
    Fanout(fanout::FanoutArgs),
    /// (Started by `run`.) One reader process.
    Reader(reader::ReaderArgs),
    /// (Started by `run`.) The writer process.
    Writer(writer::WriterArgs),
    /// (Started by `fanout`.) An idle engine that only listens to invalidations.
    Listen(fanout::ListenArgs),
}

/// What every child process is told: where the store is and what the users are.
#[derive(Args, Clone, Debug)]
struct Common {
    /// The store's URL.
    #[arg(long)]
    url: String,
    /// The namespace of this run's users.
    #[arg(long)]
    namespace: String,
    /// Users `u0`… loaded before the run.
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// Zipf exponent of users' popularity, for reads and writes.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Where the process writes its records.
    #[arg(long)]
    dir: PathBuf,
    /// The process's index, and its share of the seed.
    #[arg(long, default_value_t = 0)]
    index: u32,
    /// The seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => orchestrate::run(args),
        Command::Fanout(args) => fanout::run(args),
        Command::Reader(args) => single_threaded(reader::run(args)),
        Command::Writer(args) => single_threaded(writer::run(args)),
        Command::Listen(args) => single_threaded(fanout::listen(args)),
    };
    if let Err(err) = result {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

/// Each engine process runs on one thread, so that adding processes is what adds cores: a
/// process is the unit the harness scales.
fn single_threaded(work: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?
        .block_on(work)
}
