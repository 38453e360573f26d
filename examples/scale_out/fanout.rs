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
    /// Numbers of per-key tracking connections, each reading every key, for the memory figure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    per_key_clients: Vec<u32>,
    /// Keep the records here.
    #[arg(long)]
    keep: Option<PathBuf>,
}

const NAMESPACE: &str = "fan";
const PREFIX: &str = "fan:user:";

pub fn run(args: FanoutArgs) -> Result<(), String> {
    let server = crate::cluster::Cluster::single()?;
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

    // 1. Server CPU per write against broadcast trackers.
    let _ = writeln!(
        out,
        "| BCAST trackers | writing connections | writes | writes/s | server µs per write | µs per push (over 0 trackers) | pushes received per tracker | keys per push |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for writers in [1u32, 32] {
        let mut base = None;
        for &n in &args.clients {
            let writes = (args.pushes / u64::from(n.max(1)))
                .min(args.writes)
                .max(args.min_writes);
            let trackers = runtime.block_on(Trackers::open(port, n, true))?;
            wait_for(port, "tracking_clients:", f64::from(n))?;
            let before = proc::info(port)?;
            let took = benchmark(port, writes, writers, args.keys)?;
            let after = proc::info(port)?;
            // Let the trackers read what is still on its way.
            std::thread::sleep(Duration::from_millis(300));
            let (messages, keys) = trackers.counts();
            runtime.block_on(trackers.close());
            wait_for(port, "tracking_clients:", 0.0)?;
            let cpu = proc::server_cpu_secs(&after) - proc::server_cpu_secs(&before);
            let per_write = cpu * 1e6 / writes as f64;
            let base_per_write = *base.get_or_insert(per_write);
            let per_push = if n > 0 {
                format!("{:.3}", (per_write - base_per_write) / f64::from(n))
            } else {
                "–".into()
            };
            let per_tracker = messages as f64 / f64::from(n.max(1));
            let _ = writeln!(
                out,
                "| {n} | {writers} | {writes} | {:.0} | {per_write:.2} | {per_push} | {} | {} |",
                writes as f64 / took.as_secs_f64(),
                if n > 0 {
                    format!("{per_tracker:.0}")
                } else {
                    "–".into()
                },
                if messages > 0 {
                    format!("{:.2}", keys as f64 / messages as f64)
                } else {
                    "–".into()
                },
            );
            eprintln!("{}", out.lines().last().unwrap_or_default());
        }
    }

    // 2. Engine CPU per invalidation received.
    redis::cmd("FLUSHALL")
        .exec(&mut connection(port)?)
        .map_err(|e| format!("FLUSHALL: {e}"))?;
    runtime.block_on(load_users(port, args.keys))?;
    let idle = listen_round(port, &args, &dir, 0)?;
    let busy = listen_round(port, &args, &dir, args.listen_writes)?;
    let _ = writeln!(
        out,
        "\n| engine listeners | writes | keys received per listener | invalidate pushes per listener | CPU s per listener (idle window) | CPU s per listener (writes) | engine µs per key received |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
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
        "| {} | {} | {keys:.0} | {pushes:.0} | {cpu_idle:.2} | {cpu_busy:.2} | {:.3} |",
        args.listeners,
        args.listen_writes,
        (cpu_busy - cpu_idle) * 1e6 / keys.max(1.0)
    );
    eprintln!("{}", out.lines().last().unwrap_or_default());

    // 3. Server memory of per-key tracking.
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
    print!("{out}");
    drop(server);
    Ok(())
}

fn connection(port: u16) -> Result<redis::Connection, String> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("cannot reach 127.0.0.1:{port}: {e}"))
}

/// Waits until the server's `INFO` says `value` for `name`, for at most 10 s.
fn wait_for(port: u16, name: &str, value: f64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = proc::info_number(&proc::info(port)?, name);
        if got == value {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{name} is {got}, not {value}"));
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
        for _ in 0..n {
            let mut conn = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let mut hello = resp(&["HELLO", "3"]);
            hello.extend(if bcast {
                resp(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", PREFIX])
            } else {
                resp(&["CLIENT", "TRACKING", "ON"])
            });
            conn.write_all(&hello).await.map_err(|e| e.to_string())?;
            // HELLO answers a map without `+OK`; TRACKING answers `+OK`.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while memmem::find(&got, b"+OK\r\n").is_none() {
                let read = conn.read(&mut buf).await.map_err(|e| e.to_string())?;
                if read == 0 {
                    return Err("a tracker was refused".into());
                }
                got.extend_from_slice(&buf[..read]);
            }
            let (read, write) = conn.into_split();
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

/// Reads a broadcast tracker's pushes: `>2 $10 invalidate *N $len key…`, counting messages
/// and the bulk strings after them (the keys).
async fn drain(
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
        let took = benchmark(port, writes, 32, args.keys)?;
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
