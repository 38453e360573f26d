//! `fanout`: what broadcast tracking costs, measured on one private `redis-server` (a master
//! of a cluster does the same work for its share of the writes).
//!
//! 1. Server CPU per write with 0, 1, 10, 100, 1000… connections in `CLIENT TRACKING ON BCAST`
//!    on the written prefix, from `used_cpu_user + used_cpu_sys` around a `redis-benchmark`
//!    run of `SET`s: once with one writing connection (every write is its own event-loop
//!    turn, so its own push to every tracker) and once with 32 (Redis gathers the keys
//!    written in one turn into one push per tracker). The trackers are bare sockets in this
//!    process that count what they receive.
//! 2. Engine CPU per invalidation: idle engine processes (`listen`: an [`Enricher`] over the
//!    store, its L1 full) while `redis-benchmark` writes their users; their CPU less that of an
//!    idle window without writes, divided by the keys they received.
//! 3. Server memory of default (per-key) tracking: connections with `CLIENT TRACKING ON` that
//!    each read the same keys; `used_memory` and `tracking_total_items` before and after.
//! 4. What the commands every engine process sends every node in the background cost the
//!    node (`ROLE`, `CLUSTER NODES`, against `PING`): server CPU per command around a
//!    `redis-benchmark` run of each, on a master and a replica of a private cluster.
//!
//! With `--replica`, the server of 1. has a replica, and the trackers sit on the master alone,
//! then on both (N on each, as engine processes track every node): a replica announces the
//! writes it applies from its master, so it spends its own CPU on its pushes; the CPU of both
//! is measured.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use enrich::bench::scale::now_ns;
use enrich::store::ImportUser;
use enrich::{Enricher, NewUser, StoreOptions, UserId, UserSource, store};
use memchr::memmem;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::counted::{Counted, NodeMap, Pushes};
use crate::proc;

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    /// Numbers of broadcast tracking connections to measure with.
    #[arg(long, value_delimiter = ',', default_value = "0,1,10,100,1000")]
    clients: Vec<u32>,
    /// Writes per measurement, fewer with many trackers: at most `--pushes` pushes in all, and
    /// at least `--min-writes` writes.
    #[arg(long, default_value_t = 100_000)]
    writes: u64,
    #[arg(long, default_value_t = 2_000_000)]
    pushes: u64,
    #[arg(long, default_value_t = 5_000)]
    min_writes: u64,
    /// Keys written (and users of the engine's L1).
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// Idle engine processes listening while the writes run.
    #[arg(long, default_value_t = 1)]
    listeners: u32,
    /// Writes during the engine measurement.
    #[arg(long, default_value_t = 400_000)]
    listen_writes: u64,
    /// Writing connections during the engine measurement, one measurement each: with many,
    /// Redis gathers several keys in a push; with one, each write is a push of its own.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    listen_writers: Vec<u32>,
    /// Numbers of per-key tracking connections, each reading every key, for the memory figure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    per_key_clients: Vec<u32>,
    /// Which measurements to make: `push` (1.), `engine` (2.), `per-key` (3.), `polling` (4.).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "push,engine,per-key,polling"
    )]
    parts: Vec<String>,
    /// Give the server of `push` a replica, and measure with the trackers on the master alone,
    /// then on the master and the replica.
    #[arg(long)]
    replica: bool,
    /// Commands per `polling` measurement, and the connections sending them.
    #[arg(long, default_value_t = 100_000)]
    polling_commands: u64,
    #[arg(long, default_value_t = 50)]
    polling_connections: u32,
    /// Keep the records here.
    #[arg(long)]
    keep: Option<PathBuf>,
}

const NAMESPACE: &str = "fan";
const PREFIX: &str = "fan:user:";

pub fn run(args: FanoutArgs) -> Result<(), String> {
    const PARTS: [&str; 4] = ["push", "engine", "per-key", "polling"];
    if let Some(part) = args.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(format!(
            "no part {part:?}: the parts are {}",
            PARTS.join(", ")
        ));
    }
    let part = |name: &str| args.parts.iter().any(|p| p == name);
    let server = match args.replica && part("push") {
        true => crate::cluster::Cluster::pair()?,
        false => crate::cluster::Cluster::single()?,
    };
    let port = server.ports()[0];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))?;
    let temp = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    let dir = args
        .keep
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| format!("{dir:?}: {e}"))?;
    let mut out = String::new();

    if part("push") {
        push_costs(&args, &runtime, server.ports(), &mut out)?;
    }
    if part("engine") {
        engine_costs(&args, &runtime, port, &dir, &mut out)?;
    }
    if part("per-key") {
        per_key_memory(&args, &runtime, port, &mut out)?;
    }
    if part("polling") {
        polling_costs(&args, &mut out)?;
    }
    print!("{out}");
    drop(server);
    Ok(())
}

/// Part 1, server CPU per write against broadcast trackers: on the server; with a replica,
/// on the master alone, then on the master and the replica (N each, as engine processes
/// track both), with the CPU of both.
fn push_costs(
    args: &FanoutArgs,
    runtime: &tokio::runtime::Runtime,
    ports: &[u16],
    out: &mut String,
) -> Result<(), String> {
    let (port, replica) = (ports[0], ports.get(1).copied());
    let _ = writeln!(
        out,
        "| BCAST trackers | on | writing connections | writes | writes/s | server µs per write | µs per push (over 0 trackers) | replica µs per write | replica µs per push | pushes received per tracker | keys per push |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    let placements: &[&[u16]] = match replica {
        None => &[&[port]],
        Some(_) => &[&ports[..1], ports],
    };
    for &on in placements {
        let on_name = match on.len() {
            1 => "master",
            _ => "master + replica",
        };
        for writers in [1u32, 32] {
            // The CPU per write with no tracker, of the master and of the replica.
            let mut base: Option<(f64, f64)> = None;
            for &n in &args.clients {
                let writes = (args.pushes / u64::from(n.max(1)))
                    .min(args.writes)
                    .max(args.min_writes);
                let mut trackers = Vec::new();
                for &node in on {
                    trackers.push(runtime.block_on(Trackers::open(node, n, true))?);
                    wait_for(node, "tracking_clients:", f64::from(n))?;
                }
                let cpu = |p: u16| proc::info(p).map(|i| proc::server_cpu_secs(&i));
                let before = (cpu(port)?, replica.map(cpu).transpose()?);
                let took = benchmark(port, writes, writers, args.keys)?;
                if let Some(replica) = replica {
                    caught_up(port, replica)?;
                }
                // Let the trackers read what is still on its way.
                std::thread::sleep(Duration::from_millis(300));
                let after = (cpu(port)?, replica.map(cpu).transpose()?);
                let counts: Vec<(u64, u64)> = trackers.iter().map(Trackers::counts).collect();
                for (trackers, &node) in trackers.into_iter().zip(on) {
                    runtime.block_on(trackers.close());
                    wait_for(node, "tracking_clients:", 0.0)?;
                }
                let per_write = (after.0 - before.0) * 1e6 / writes as f64;
                let replica_per_write =
                    (after.1.zip(before.1)).map(|(a, b)| (a - b) * 1e6 / writes as f64);
                let (base_master, base_replica) =
                    *base.get_or_insert((per_write, replica_per_write.unwrap_or(0.0)));
                let per_push = |cost: f64, base: f64| match n {
                    0 => "–".to_string(),
                    n => format!("{:.3}", (cost - base) / f64::from(n)),
                };
                let replica_push = match (on.len(), replica_per_write) {
                    (2, Some(cost)) => per_push(cost, base_replica),
                    _ => "–".to_string(),
                };
                let each = |f: &dyn Fn(u64, u64) -> String| -> String {
                    let all: Vec<String> = counts.iter().map(|&(m, k)| f(m, k)).collect();
                    all.join(" / ")
                };
                let _ = writeln!(
                    out,
                    "| {n} | {on_name} | {writers} | {writes} | {:.0} | {per_write:.2} | {} | {} | {replica_push} | {} | {} |",
                    writes as f64 / took.as_secs_f64(),
                    per_push(per_write, base_master),
                    replica_per_write.map_or("–".to_string(), |c| format!("{c:.2}")),
                    each(&|m, _| match n {
                        0 => "–".into(),
                        n => format!("{:.0}", m as f64 / f64::from(n)),
                    }),
                    each(&|m, k| match m {
                        0 => "–".into(),
                        m => format!("{:.2}", k as f64 / m as f64),
                    }),
                );
                eprintln!("{}", out.lines().last().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// Waits until the replica on `replica` has applied everything the master on `master` has.
fn caught_up(master: u16, replica: u16) -> Result<(), String> {
    let offset = proc::info_number(&proc::info(master)?, "master_repl_offset:");
    wait_until(replica, "slave_repl_offset:", |v| v >= offset)
}

/// Part 2, engine CPU per invalidation received.
fn engine_costs(
    args: &FanoutArgs,
    runtime: &tokio::runtime::Runtime,
    port: u16,
    dir: &std::path::Path,
    out: &mut String,
) -> Result<(), String> {
    redis::cmd("FLUSHALL")
        .exec(&mut connection(port)?)
        .map_err(|e| format!("FLUSHALL: {e}"))?;
    runtime.block_on(load_users(port, args.keys))?;
    let idle = listen_round(port, args, dir, 0, 0)?;
    let _ = writeln!(
        out,
        "\n| engine listeners | writing connections | writes | keys received per listener | invalidate pushes per listener | CPU s per listener (idle window) | CPU s per listener (writes) | engine µs per key received | engine µs per push received |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for (i, &writers) in args.listen_writers.iter().enumerate() {
        // `redis-benchmark` wrote over the users: load them again for the engine's L1.
        if i > 0 {
            redis::cmd("FLUSHALL")
                .exec(&mut connection(port)?)
                .map_err(|e| format!("FLUSHALL: {e}"))?;
            runtime.block_on(load_users(port, args.keys))?;
        }
        let busy = listen_round(port, args, dir, args.listen_writes, writers)?;
        engine_row(args, writers, &idle, &busy, out);
    }
    Ok(())
}

fn engine_row(
    args: &FanoutArgs,
    writers: u32,
    idle: &[ListenSummary],
    busy: &[ListenSummary],
    out: &mut String,
) {
    let keys = busy
        .iter()
        .map(|l| l.pushes.keys.iter().sum::<u64>())
        .sum::<u64>() as f64
        / busy.len() as f64;
    let pushes = busy
        .iter()
        .map(|l| l.pushes.pushes.iter().sum::<u64>())
        .sum::<u64>() as f64
        / busy.len() as f64;
    let cpu_idle = idle.iter().map(|l| l.cpu_secs).sum::<f64>() / idle.len() as f64;
    let cpu_busy = busy.iter().map(|l| l.cpu_secs).sum::<f64>() / busy.len() as f64;
    let _ = writeln!(
        out,
        "| {} | {writers} | {} | {keys:.0} | {pushes:.0} | {cpu_idle:.2} | {cpu_busy:.2} | {:.3} | {:.3} |",
        args.listeners,
        args.listen_writes,
        (cpu_busy - cpu_idle) * 1e6 / keys.max(1.0),
        (cpu_busy - cpu_idle) * 1e6 / pushes.max(1.0)
    );
    eprintln!("{}", out.lines().last().unwrap_or_default());
}

/// Part 3, server memory of per-key tracking.
fn per_key_memory(
    args: &FanoutArgs,
    runtime: &tokio::runtime::Runtime,
    port: u16,
    out: &mut String,
) -> Result<(), String> {
    let _ = writeln!(
        out,
        "\n| per-key trackers | keys each read | tracking_total_keys | tracking_total_items | used_memory added (less connection buffers) | bytes per item |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for &n in &args.per_key_clients {
        // A flush empties the tracking table too (closing a connection does not: its entries
        // stay until their keys are written), so each row starts from nothing.
        let mut conn = connection(port)?;
        redis::cmd("FLUSHALL")
            .exec(&mut conn)
            .map_err(|e| format!("FLUSHALL: {e}"))?;
        let value = crate::writer::data(0, 64).to_string();
        for chunk in (0..args.keys).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("SET")
                    .arg(format!("{PREFIX}{k:012}"))
                    .arg(&value)
                    .ignore();
            }
            pipe.exec(&mut conn).map_err(|e| format!("SET: {e}"))?;
        }
        wait_for(port, "tracking_total_items:", 0.0)?;
        let before = proc::info(port)?;
        let mut trackers = runtime.block_on(Trackers::open(port, n, false))?;
        runtime.block_on(trackers.read_all(args.keys))?;
        let after = proc::info(port)?;
        let items = proc::info_number(&after, "tracking_total_items:");
        let tracked = proc::info_number(&after, "tracking_total_keys:");
        // The connections' own buffers are in `mem_clients_normal`; what tracking keeps is the
        // rest of what was added.
        let clients = proc::info_number(&after, "mem_clients_normal:")
            - proc::info_number(&before, "mem_clients_normal:");
        let added = proc::info_number(&after, "used_memory:")
            - proc::info_number(&before, "used_memory:")
            - clients;
        let _ = writeln!(
            out,
            "| {n} | {} | {tracked:.0} | {items:.0} | {:.1} MiB | {:.0} |",
            args.keys,
            added / 1_048_576.0,
            added / items.max(1.0)
        );
        eprintln!("{}", out.lines().last().unwrap_or_default());
        runtime.block_on(trackers.close());
        wait_for(port, "tracking_clients:", 0.0)?;
    }
    Ok(())
}

/// Part 4, server CPU per background command of an engine process, on a master and on a replica
/// of a private cluster of 3 masters and 3 replicas: each command from
/// `--polling-connections` connections at once, as many processes' would arrive.
fn polling_costs(args: &FanoutArgs, out: &mut String) -> Result<(), String> {
    let cluster = crate::cluster::Cluster::start(1)?;
    let map = NodeMap::read(&cluster.url())?;
    let port = |name: &String| -> Result<u16, String> {
        (name.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
            .ok_or_else(|| format!("no port in {name}"))
    };
    let nodes = [
        ("master", port(&map.names[0])?),
        ("replica", port(&map.replicas[0])?),
    ];
    let _ = writeln!(
        out,
        "\n| command | on | connections | commands | commands/s | server µs per command | of it in the command (commandstats) | bytes per answer |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for (on, port) in nodes {
        for command in [&["PING"][..], &["ROLE"], &["CLUSTER", "NODES"]] {
            let before = proc::info(port)?;
            let started = Instant::now();
            let status = Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-n", &args.polling_commands.to_string()])
                .args(["-c", &args.polling_connections.to_string(), "-q"])
                .args(command)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
            if !status.success() {
                return Err(format!("redis-benchmark {}: {status}", command.join(" ")));
            }
            let took = started.elapsed();
            let after = proc::info(port)?;
            let n = args.polling_commands as f64;
            let cpu = proc::server_cpu_secs(&after) - proc::server_cpu_secs(&before);
            let name = command.join("|").to_lowercase();
            let usec = proc::command_usec(&after, &name) - proc::command_usec(&before, &name);
            let bytes = proc::info_number(&after, "total_net_output_bytes:")
                - proc::info_number(&before, "total_net_output_bytes:");
            let _ = writeln!(
                out,
                "| `{}` | {on} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0} |",
                command.join(" "),
                args.polling_connections,
                args.polling_commands,
                n / took.as_secs_f64(),
                cpu * 1e6 / n,
                usec / n,
                bytes / n,
            );
            eprintln!("{}", out.lines().last().unwrap_or_default());
        }
    }
    Ok(())
}

fn connection(port: u16) -> Result<redis::Connection, String> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("cannot reach 127.0.0.1:{port}: {e}"))
}

/// Waits until the server's `INFO` says `value` for `name`, for at most 10 s.
fn wait_for(port: u16, name: &str, value: f64) -> Result<(), String> {
    wait_until(port, name, |got| got == value)
}

/// Waits until the server's `INFO` figure `name` passes `test`, for at most 10 s.
fn wait_until(port: u16, name: &str, test: impl Fn(f64) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = proc::info_number(&proc::info(port)?, name);
        if test(got) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{name} is still {got}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `writes` `SET`s of `fan:user:<12 digits>` over `keys` keys from `writers` connections.
fn benchmark(port: u16, writes: u64, writers: u32, keys: u32) -> Result<Duration, String> {
    let started = Instant::now();
    let status = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-n", &writes.to_string(), "-c", &writers.to_string()])
        .args(["-r", &keys.to_string(), "-q"])
        .args(["SET", &format!("{PREFIX}__rand_int__"), "x"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    if !status.success() {
        return Err(format!("redis-benchmark: {status}"));
    }
    Ok(started.elapsed())
}

/// Bare RESP3 connections with tracking on, each counting the pushes and keys it receives.
struct Trackers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    writers: Vec<tokio::net::tcp::OwnedWriteHalf>,
    readers: Vec<tokio::net::tcp::OwnedReadHalf>,
    messages: Arc<AtomicU64>,
    keys: Arc<AtomicU64>,
}

/// A command in RESP.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Counts the occurrences of a needle in a stream read in pieces.
struct Needle {
    needle: &'static [u8],
    tail: Vec<u8>,
}

impl Needle {
    fn new(needle: &'static [u8]) -> Needle {
        Needle {
            needle,
            tail: Vec::new(),
        }
    }

    fn count(&mut self, piece: &[u8]) -> u64 {
        // The tail is shorter than the needle, so nothing found in it was counted before.
        self.tail.extend_from_slice(piece);
        let found = memmem::find_iter(&self.tail, self.needle).count() as u64;
        let keep = (self.needle.len() - 1).min(self.tail.len());
        self.tail.drain(..self.tail.len() - keep);
        found
    }
}

impl Trackers {
    async fn open(port: u16, n: u32, bcast: bool) -> Result<Trackers, String> {
        let mut trackers = Trackers {
            tasks: Vec::new(),
            writers: Vec::new(),
            readers: Vec::new(),
            messages: Arc::new(AtomicU64::new(0)),
            keys: Arc::new(AtomicU64::new(0)),
        };
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..n {
            let prefix = bcast.then_some(PREFIX);
            let (read, write) = tracker(&addr, prefix).await?.into_split();
            trackers.writers.push(write);
            if bcast {
                let (messages, keys) = (trackers.messages.clone(), trackers.keys.clone());
                trackers
                    .tasks
                    .push(tokio::spawn(drain(read, messages, keys)));
            } else {
                trackers.readers.push(read);
            }
        }
        Ok(trackers)
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.messages.load(Ordering::Relaxed),
            self.keys.load(Ordering::Relaxed),
        )
    }

    /// Per-key trackers: each reads every key (`GET`s pipelined), and so is remembered by the
    /// server as holding it.
    async fn read_all(&mut self, keys: u32) -> Result<(), String> {
        for (write, read) in self.writers.iter_mut().zip(self.readers.iter_mut()) {
            for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
                let mut gets = Vec::new();
                for k in chunk {
                    gets.extend(resp(&["GET", &format!("{PREFIX}{k:012}")]));
                }
                write.write_all(&gets).await.map_err(|e| e.to_string())?;
                // Each answer is a bulk string; count their headers until all came.
                let mut headers = Needle::new(b"\r\n$");
                let mut seen = 0u64;
                let mut first = true;
                let mut buf = vec![0u8; 65536];
                while seen < chunk.len() as u64 {
                    let n = read.read(&mut buf).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("a tracker was closed".into());
                    }
                    if first && buf[0] == b'$' {
                        seen += 1;
                    }
                    first = false;
                    seen += headers.count(&buf[..n]);
                }
            }
        }
        Ok(())
    }

    async fn close(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        drop(self.writers);
        drop(self.readers);
    }
}

/// A bare RESP3 connection to `addr` with tracking on: broadcast on `prefix` if given, per
/// key otherwise.
pub async fn tracker(addr: &str, prefix: Option<&str>) -> Result<TcpStream, String> {
    let mut conn = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let mut hello = resp(&["HELLO", "3"]);
    hello.extend(match prefix {
        Some(prefix) => resp(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", prefix]),
        None => resp(&["CLIENT", "TRACKING", "ON"]),
    });
    conn.write_all(&hello).await.map_err(|e| e.to_string())?;
    // HELLO answers a map without `+OK`; TRACKING answers `+OK`.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while memmem::find(&got, b"+OK\r\n").is_none() {
        let read = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err(format!("a tracker was refused by {addr}"));
        }
        got.extend_from_slice(&buf[..read]);
    }
    Ok(conn)
}

/// Reads a broadcast tracker's pushes: `>2 $10 invalidate *N $len key…`, counting messages
/// and the bulk strings after them (the keys).
pub async fn drain(
    mut read: tokio::net::tcp::OwnedReadHalf,
    messages: Arc<AtomicU64>,
    keys: Arc<AtomicU64>,
) {
    let mut invalidate = Needle::new(b"$10\r\ninvalidate\r\n");
    let mut bulks = Needle::new(b"\r\n$");
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = read.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let m = invalidate.count(&buf[..n]);
        let b = bulks.count(&buf[..n]);
        messages.fetch_add(m, Ordering::Relaxed);
        // Every bulk string after `>2` is `invalidate` or a key.
        keys.fetch_add(b.saturating_sub(m), Ordering::Relaxed);
    }
}

/// Users `000000000000`… (the names `redis-benchmark` gives `__rand_int__`), for the engine's
/// L1.
async fn load_users(port: u16, keys: u32) -> Result<(), String> {
    let options = StoreOptions::new().namespace(NAMESPACE);
    let store = store::open(&format!("redis://127.0.0.1:{port}"), &options)
        .await
        .map_err(|e| e.to_string())?;
    let all: Vec<ImportUser> = (0..keys)
        .map(|k| {
            let user = NewUser::new(&format!("{k:012}"), Some(crate::writer::data(0, 64)))
                .expect("a valid user");
            ImportUser::new(user, None, None).expect("no timestamps")
        })
        .collect();
    for batch in all.chunks(500) {
        store.import(batch, true).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct ListenArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    keys: u32,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    index: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ListenSummary {
    cpu_secs: f64,
    pushes: Pushes,
    invalidations: u64,
}

/// One round of listeners: ready, then a window of 20 s in which `writes` are made.
fn listen_round(
    port: u16,
    args: &FanoutArgs,
    dir: &std::path::Path,
    writes: u64,
    writers: u32,
) -> Result<Vec<ListenSummary>, String> {
    use std::io::{BufRead, BufReader, Write};
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let url = format!("redis://127.0.0.1:{port}");
    let mut children = Vec::new();
    for i in 0..args.listeners {
        let mut child = Command::new(&exe)
            .args(["listen", "--url", &url, "--keys", &args.keys.to_string()])
            .args([
                "--dir",
                &dir.display().to_string(),
                "--index",
                &i.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a listener: {e}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err("a listener never became ready".into());
        }
        children.push(child);
    }
    // Writes run in the window; the window is as long for the idle round as for the busy one,
    // so the listeners' own pings and timers cancel out.
    let start = now_ns() + 200_000_000;
    let window = 20_000_000_000u64;
    let end = start + window;
    for child in &mut children {
        let mut stdin = child.stdin.take().expect("piped");
        writeln!(stdin, "go {start} {end}").map_err(|e| e.to_string())?;
    }
    std::thread::sleep(Duration::from_nanos(start.saturating_sub(now_ns())));
    if writes > 0 {
        let took = benchmark(port, writes, writers, args.keys)?;
        eprintln!(
            "{writes} writes in {:.1} s under {} listener(s)",
            took.as_secs_f64(),
            args.listeners
        );
        if now_ns() > end {
            eprintln!("warning: the writes outlasted the listeners' window; lower --listen-writes");
        }
    }
    let mut summaries = Vec::new();
    for (i, mut child) in children.into_iter().enumerate() {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("listener {i}: {status}"));
        }
        let json =
            std::fs::read(dir.join(format!("listen-{i}.json"))).map_err(|e| e.to_string())?;
        summaries.push(serde_json::from_slice(&json).map_err(|e| e.to_string())?);
    }
    Ok(summaries)
}

/// An idle engine: its L1 full of the users, listening to invalidations for the window.
pub async fn listen(args: ListenArgs) -> Result<(), String> {
    let options = StoreOptions::new().namespace(NAMESPACE);
    let store = store::open(&args.url, &options)
        .await
        .map_err(|e| e.to_string())?;
    let counted = Counted::new(store, NodeMap::read(&args.url)?, PREFIX.to_string());
    let counts = counted.counts();
    let source: Arc<dyn UserSource> = Arc::new(counted);
    let enricher = Enricher::source_builder(source).build();
    if !enricher.wait_for_cache(Duration::from_secs(10)).await {
        return Err("the invalidation stream did not come up".into());
    }
    let ids: Vec<UserId> = (0..args.keys)
        .map(|k| UserId::parse(&format!("{k:012}")).expect("a valid id"))
        .collect();
    for chunk in ids.chunks(1000) {
        enricher.get_many(chunk).await.map_err(|e| e.to_string())?;
    }
    let (start, end) = proc::ready_then_wait_for_go()?;
    proc::sleep_until(start).await;
    let (cpu, pushes, l1) = (proc::cpu_secs(), counts.snapshot(), enricher.cache_stats());
    proc::sleep_until(end).await;
    let summary = ListenSummary {
        cpu_secs: proc::cpu_secs() - cpu,
        pushes: counts.snapshot().since(&pushes),
        invalidations: enricher.cache_stats().invalidations - l1.invalidations,
    };
    let json = serde_json::to_vec(&summary).expect("a summary serializes");
    std::fs::write(args.dir.join(format!("listen-{}.json", args.index)), json)
        .map_err(|e| e.to_string())
}
