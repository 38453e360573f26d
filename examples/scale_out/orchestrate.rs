//! `run`: the cluster, the processes, the check and the report.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use enrich::bench::scale::{Checker, PageRecord, Verdict, WriteRecord, now_ns};
use enrich::store::ImportUser;
use enrich::{NewUser, StoreOptions, store};
use serde::Serialize;

use crate::counted::NodeMap;
use crate::probe::Probe;
use crate::proc;
use crate::reader::ReaderSummary;
use crate::writer::{WriterSummary, data};

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Numbers of reader processes, one run each (for each write rate).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    processes: Vec<u32>,
    /// Writes per second of the one writer (0: as fast as acknowledged), one run each.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    write_rates: Vec<f64>,
    /// Seconds each run reads and writes.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Users loaded before each run.
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// Ids that never exist, named by 2 % of references.
    #[arg(long, default_value_t = 1000)]
    missing: u32,
    /// Zipf exponent of users' popularity, for reads and writes.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Activities per page (3 references each).
    #[arg(long, default_value_t = 25)]
    page: usize,
    /// Pages per second asked of each reader; 0 (the default) for as many as it can.
    #[arg(long, default_value_t = 0.0)]
    read_rate: f64,
    /// Readers that do not watch the store (no tracking): a check of the checker, which must
    /// then find wrong answers (older versions served for as long as the L1 keeps them).
    #[arg(long)]
    no_tracking: bool,
    /// Pages in flight in each reader.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Writes in flight in the writer.
    #[arg(long, default_value_t = 4)]
    writer_concurrency: u32,
    /// Share of writes to an existing user that delete it.
    #[arg(long, default_value_t = 0.1)]
    delete_share: f64,
    /// Bytes of padding in each user's data.
    #[arg(long, default_value_t = 64)]
    pad: usize,
    /// Seconds each reader reads before the run, to fill its L1.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// An answer stale by more than this many milliseconds is wrong.
    #[arg(long, default_value_t = 1000.0)]
    bound_ms: f64,
    /// Replicas per master of the private cluster. Reads stay on the masters (unless
    /// `--read-from-replicas`); every reader tracks every node, replicas too.
    #[arg(long, default_value_t = 0)]
    replicas: u32,
    /// Readers read from replicas that have caught up (`ReadFrom::Replicas`).
    #[arg(long)]
    read_from_replicas: bool,
    /// Kill the first master (SIGKILL) this many seconds into each run; its replica takes
    /// over. Needs `--replicas 1` or more; each run then gets a new cluster.
    #[arg(long)]
    kill_master_after: Option<f64>,
    /// Fail the first master over to its replica (`CLUSTER FAILOVER`) this many seconds into
    /// each run. Needs `--replicas 1` or more; each run then gets a new cluster.
    #[arg(long)]
    failover_after: Option<f64>,
    /// A cluster of your own (`redis+cluster://h:p,…`) instead of a private one; each run
    /// writes its own namespace `scale-out-N`.
    #[arg(long)]
    url: Option<String>,
    /// Write every row, as JSON, to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the processes' records and logs in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// The seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
struct Row {
    write_rate: f64,
    processes: u32,
    seconds: f64,
    activities_per_sec: f64,
    /// Against the run with one reader at the same write rate.
    scaling: f64,
    per_reader_per_sec: Vec<f64>,
    /// Activities per CPU-second of the readers: what a reader does with the CPU it gets, on
    /// a machine shared with other work.
    per_cpu_sec: f64,
    page_p50_ms: f64,
    page_p99_ms: f64,
    l1_hit_ratio: f64,
    store_calls_per_page: f64,
    writes_per_sec: f64,
    write_errors: u64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    /// Invalidation pushes received by all readers, per second, per shard (a master and its
    /// replicas: a reader cannot tell them apart).
    pushes_per_sec_per_node: Vec<f64>,
    /// Keys they carried, per second, per shard.
    keys_per_sec_per_node: Vec<f64>,
    /// Pushes and keys each reader received, per write.
    pushes_per_write_per_reader: f64,
    keys_per_write_per_reader: f64,
    /// What one tracking connection (the probe's) received from each node, per second:
    /// masters, then replicas.
    probe_pushes_per_sec: Vec<f64>,
    probe_keys_per_sec: Vec<f64>,
    /// `ROLE` and `CLUSTER NODES` commands each node executed, per second: masters, then
    /// replicas.
    role_per_sec: Vec<f64>,
    cluster_nodes_per_sec: Vec<f64>,
    replicas: u32,
    /// Writes per master, per second.
    writes_per_sec_per_node: Vec<f64>,
    tracking_clients_per_node: Vec<u64>,
    reader_errors: u64,
    reader_first_error: Option<String>,
    stream_lost: u64,
    reader_cpu_pct: Vec<f64>,
    writer_cpu_pct: f64,
    redis_cpu_pct: Vec<f64>,
    replica_cpu_pct: Vec<f64>,
    /// When the master was killed or failed over, in seconds from the start, if it was.
    fault_at_s: Option<f64>,
    /// From the fault to the end of the last page or write that failed, in ms.
    unavailable_ms: Option<f64>,
    /// /proc/loadavg's one-minute figure at the end of the run: the machine is shared.
    load_average: f64,
    verdict: Verdict,
}

pub fn run(args: RunArgs) -> Result<(), String> {
    let faults = args.kill_master_after.is_some() || args.failover_after.is_some();
    if faults && (args.replicas == 0 || args.url.is_some()) {
        return Err("--kill-master-after and --failover-after need --replicas 1 or more, and a cluster of the harness's own".into());
    }
    let temp = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    let root = args
        .keep
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("no runtime: {e}"))?;
    let start_cluster = || -> Result<crate::cluster::Cluster, String> {
        eprintln!(
            "starting a cluster of 3 masters ({} replica(s) each) on loopback…",
            args.replicas
        );
        crate::cluster::Cluster::start(args.replicas)
    };
    // A run that kills or fails over a master gets a cluster of its own.
    let mut cluster = match (&args.url, faults) {
        (None, false) => Some(start_cluster()?),
        _ => None,
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut map = None;
    let mut n = 0;
    for &rate in &args.write_rates {
        for &processes in &args.processes {
            n += 1;
            if faults {
                cluster = Some(start_cluster()?);
            }
            let url = match (&cluster, &args.url) {
                (Some(cluster), _) => cluster.url(),
                (None, Some(url)) => url.clone(),
                (None, None) => unreachable!("a cluster is started when none is given"),
            };
            let nodes = NodeMap::read(&url)?;
            let dir = root.join(format!("run-{n}"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {dir:?}: {e}"))?;
            let namespace = format!("scale-out-{n}-{}", now_ns() % 1_000_000);
            eprintln!(
                "run {n}: {processes} reader(s), {rate} writes/s, {} s",
                args.seconds
            );
            let place = Place {
                url: &url,
                map: &nodes,
                cluster: cluster.as_mut(),
                namespace: &namespace,
                dir: &dir,
            };
            let mut row = run_one(&args, &runtime, place, rate, processes)?;
            let one = rows
                .iter()
                .find(|r| r.write_rate == rate && r.processes == 1)
                .map(|r| r.activities_per_sec);
            row.scaling = one.map_or(1.0, |one| row.activities_per_sec / one);
            eprintln!("{}", summary_line(&row));
            rows.push(row);
            map = Some(nodes);
        }
    }
    let map = map.ok_or("no run was asked for")?;
    print!("{}", tables(&rows, &map));
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&rows).expect("rows serialize");
        std::fs::write(path, json).map_err(|e| format!("cannot write {path:?}: {e}"))?;
    }
    let wrong: u64 = rows.iter().map(|r| r.verdict.wrong).sum();
    // With a master killed, failed pages and writes are expected: they are reported, and
    // only wrong answers fail the run.
    let errors: u64 = match faults {
        true => 0,
        false => rows.iter().map(|r| r.reader_errors + r.write_errors).sum(),
    };
    if wrong > 0 || errors > 0 {
        return Err(format!(
            "{wrong} wrong answer(s), {errors} failed page(s) or write(s)"
        ));
    }
    Ok(())
}

/// A child process of this binary, waiting for its start signal.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
}

impl Proc {
    fn start(name: &str, dir: &Path, args: &[String]) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("where am I: {e}"))?;
        let stderr = dir.join(format!("{name}.err"));
        let file = std::fs::File::create(&stderr).map_err(|e| format!("{stderr:?}: {e}"))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().expect("piped")),
            child,
            stderr,
        })
    }

    fn failed(&self, what: &str) -> String {
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("{} {what}:\n{log}", self.name)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| self.failed(&format!("said nothing ({e})")))?;
        if line.trim() != "ready" {
            return Err(self.failed("never became ready"));
        }
        Ok(())
    }

    fn go(&mut self, start: u64, end: u64) -> Result<(), String> {
        let mut stdin = self.stdin.take().expect("told once");
        writeln!(stdin, "go {start} {end}").map_err(|e| self.failed(&format!("gone ({e})")))
    }

    fn wait(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(self.failed(&format!("exited with {status}"))),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(self.failed("did not finish in time"));
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where a run happens.
struct Place<'a> {
    url: &'a str,
    map: &'a NodeMap,
    /// The harness's own cluster, to kill or fail a master over.
    cluster: Option<&'a mut crate::cluster::Cluster>,
    namespace: &'a str,
    dir: &'a Path,
}

fn run_one(
    args: &RunArgs,
    runtime: &tokio::runtime::Runtime,
    place: Place<'_>,
    rate: f64,
    processes: u32,
) -> Result<Row, String> {
    let Place {
        url,
        map,
        cluster,
        namespace,
        dir,
    } = place;
    let load = runtime.block_on(load_users(url, namespace, args.users, args.pad))?;
    let common = |index: u32| -> Vec<String> {
        [
            "--url",
            url,
            "--namespace",
            namespace,
            "--users",
            &args.users.to_string(),
            "--zipf",
            &args.zipf.to_string(),
            "--dir",
            &dir.display().to_string(),
            "--index",
            &index.to_string(),
            "--seed",
            &args.seed.to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let mut children = Vec::new();
    let mut writer_args = vec!["writer".to_string()];
    writer_args.extend(common(0));
    writer_args.extend(
        [
            "--rate",
            &rate.to_string(),
            "--concurrency",
            &args.writer_concurrency.to_string(),
            "--delete-share",
            &args.delete_share.to_string(),
            "--pad",
            &args.pad.to_string(),
        ]
        .map(String::from),
    );
    children.push(Proc::start("writer", dir, &writer_args)?);
    for i in 0..processes {
        let mut reader_args = vec!["reader".to_string()];
        reader_args.extend(common(i));
        reader_args.extend(
            [
                "--page",
                &args.page.to_string(),
                "--concurrency",
                &args.concurrency.to_string(),
                "--missing",
                &args.missing.to_string(),
                "--warmup",
                &args.warmup.to_string(),
                "--rate",
                &args.read_rate.to_string(),
            ]
            .map(String::from),
        );
        if args.no_tracking {
            reader_args.push("--no-tracking".into());
        }
        if args.read_from_replicas {
            reader_args.push("--read-from-replicas".into());
        }
        children.push(Proc::start(&format!("reader-{i}"), dir, &reader_args)?);
    }
    for child in &mut children {
        child.wait_ready()?;
    }
    // Masters first, then replicas.
    let ports = (map.names.iter().chain(&map.replicas))
        .map(|n| {
            (n.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
                .ok_or_else(|| format!("no port in {n}"))
        })
        .collect::<Result<Vec<u16>, String>>()?;
    let all_nodes: Vec<String> = map.names.iter().chain(&map.replicas).cloned().collect();
    let probe = runtime.block_on(Probe::open(&all_nodes, &format!("{namespace}:user:")))?;
    let before: Vec<String> = ports
        .iter()
        .map(|&p| proc::info(p))
        .collect::<Result<_, _>>()?;
    let probed = probe.snapshot();
    let start = now_ns() + 300_000_000;
    let end = start + (args.seconds * 1e9) as u64;
    for child in &mut children {
        child.go(start, end)?;
    }
    let mut fault_at = None;
    if let Some(cluster) = cluster {
        let after = args.kill_master_after.or(args.failover_after);
        if let Some(after) = after {
            let at = start + (after * 1e9) as u64;
            std::thread::sleep(Duration::from_nanos(at.saturating_sub(now_ns())));
            fault_at = Some(now_ns());
            if args.kill_master_after.is_some() {
                eprintln!("  killing the master on {}", ports[0]);
                cluster.kill(ports[0])?;
            } else {
                eprintln!("  failing the master on {} over", ports[0]);
                cluster.failover(ports[0])?;
            }
        }
    }
    std::thread::sleep(Duration::from_nanos(end.saturating_sub(now_ns())));
    // A killed master answers nothing: its CPU counts as none.
    let after: Vec<String> = (ports.iter())
        .map(|&p| proc::info(p).unwrap_or_default())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for child in &mut children {
        child.wait(deadline)?;
    }
    // Read once the readers are done, so the pushes of the last writes have arrived.
    let probed: Vec<(u64, u64)> = (probe.snapshot().iter().zip(&probed))
        .map(|(a, b)| (a.0 - b.0, a.1 - b.1))
        .collect();
    drop(probe);

    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let writer: WriterSummary =
        serde_json::from_slice(&read("writer.json")?).map_err(|e| e.to_string())?;
    let mut writes = load;
    writes.extend(WriteRecord::decode_all(&read("writer.writes")?).map_err(|e| e.to_string())?);
    let mut checker = Checker::new(writes, (args.bound_ms * 1e6) as u64);
    let mut readers = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..processes {
        let summary: ReaderSummary = serde_json::from_slice(&read(&format!("reader-{i}.json"))?)
            .map_err(|e| e.to_string())?;
        let pages = PageRecord::decode_all(&read(&format!("reader-{i}.pages"))?)
            .map_err(|e| e.to_string())?;
        for page in &pages {
            checker.check(page);
            latencies.push(page.end - page.start);
        }
        readers.push(summary);
    }
    let verdict = checker.verdict();
    latencies.sort_unstable();
    let ms_at = |q: f64| {
        latencies
            .get(((latencies.len().saturating_sub(1)) as f64 * q).round() as usize)
            .map_or(0.0, |&ns| ns as f64 / 1e6)
    };
    let nodes = map.names.len();
    let secs = args.seconds;
    let sum_nodes = |f: &dyn Fn(&ReaderSummary) -> &Vec<u64>| -> Vec<f64> {
        (0..nodes)
            .map(|n| {
                readers
                    .iter()
                    .map(|r| f(r).get(n).copied().unwrap_or(0))
                    .sum::<u64>() as f64
                    / secs
            })
            .collect()
    };
    let activities: u64 = readers.iter().map(|r| r.activities).sum();
    let received = |f: &dyn Fn(&ReaderSummary) -> &Vec<u64>| -> f64 {
        readers
            .iter()
            .map(|r| f(r).iter().sum::<u64>())
            .sum::<u64>() as f64
            / f64::from(processes.max(1))
            / (writer.writes.max(1) as f64)
    };
    let cpu_pct = |b: &String, a: &String| match a.is_empty() {
        true => 0.0,
        false => 100.0 * (proc::server_cpu_secs(a) - proc::server_cpu_secs(b)) / secs,
    };
    let calls_per_sec = |command: &str| -> Vec<f64> {
        (before.iter().zip(&after))
            .map(|(b, a)| match a.is_empty() {
                true => 0.0,
                false => (proc::command_calls(a, command) - proc::command_calls(b, command)) / secs,
            })
            .collect()
    };
    let pages: u64 = readers.iter().map(|r| r.pages).sum();
    let references: u64 = readers.iter().map(|r| r.references).sum();
    Ok(Row {
        write_rate: rate,
        processes,
        seconds: secs,
        activities_per_sec: activities as f64 / secs,
        scaling: 1.0,
        per_reader_per_sec: readers
            .iter()
            .map(|r| r.activities as f64 / r.seconds)
            .collect(),
        per_cpu_sec: activities as f64 / readers.iter().map(|r| r.cpu_secs).sum::<f64>().max(1e-9),
        page_p50_ms: ms_at(0.5),
        page_p99_ms: ms_at(0.99),
        l1_hit_ratio: readers.iter().map(|r| r.l1_hits).sum::<u64>() as f64
            / references.max(1) as f64,
        store_calls_per_page: readers.iter().map(|r| r.store_calls).sum::<u64>() as f64
            / pages.max(1) as f64,
        writes_per_sec: writer.writes as f64 / secs,
        write_errors: writer.errors,
        ack_p50_ms: writer.ack_p50_ms,
        ack_p99_ms: writer.ack_p99_ms,
        pushes_per_sec_per_node: sum_nodes(&|r| &r.pushes.pushes),
        keys_per_sec_per_node: sum_nodes(&|r| &r.pushes.keys),
        pushes_per_write_per_reader: received(&|r| &r.pushes.pushes),
        keys_per_write_per_reader: received(&|r| &r.pushes.keys),
        probe_pushes_per_sec: probed.iter().map(|p| p.0 as f64 / secs).collect(),
        probe_keys_per_sec: probed.iter().map(|p| p.1 as f64 / secs).collect(),
        role_per_sec: calls_per_sec("role"),
        cluster_nodes_per_sec: calls_per_sec("cluster|nodes"),
        replicas: map.replicas.len() as u32 / nodes.max(1) as u32,
        writes_per_sec_per_node: writer.per_node.iter().map(|&w| w as f64 / secs).collect(),
        tracking_clients_per_node: before
            .iter()
            .map(|i| proc::info_number(i, "tracking_clients:") as u64)
            .collect(),
        reader_errors: readers.iter().map(|r| r.errors).sum(),
        reader_first_error: readers.iter().find_map(|r| r.first_error.clone()),
        stream_lost: readers.iter().map(|r| r.pushes.lost).sum(),
        reader_cpu_pct: readers
            .iter()
            .map(|r| 100.0 * r.cpu_secs / r.seconds)
            .collect(),
        writer_cpu_pct: 100.0 * writer.cpu_secs / writer.seconds,
        redis_cpu_pct: (before.iter().zip(&after))
            .take(nodes)
            .map(|(b, a)| cpu_pct(b, a))
            .collect(),
        replica_cpu_pct: (before.iter().zip(&after))
            .skip(nodes)
            .map(|(b, a)| cpu_pct(b, a))
            .collect(),
        fault_at_s: fault_at.map(|at| (at - start) as f64 / 1e9),
        unavailable_ms: fault_at.map(|at| {
            let last = (readers.iter().filter_map(|r| r.last_error_at))
                .chain(writer.last_error_at)
                .max()
                .unwrap_or(at);
            last.saturating_sub(at) as f64 / 1e6
        }),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0),
        verdict,
    })
}

/// Loads users `u0`… at version 0, and returns those writes as the start of the history.
async fn load_users(
    url: &str,
    namespace: &str,
    users: u32,
    pad: usize,
) -> Result<Vec<WriteRecord>, String> {
    let options = StoreOptions::new().namespace(namespace);
    let store = store::open(url, &options)
        .await
        .map_err(|e| format!("cannot open {url}: {e}"))?;
    let sent = now_ns();
    let all: Vec<ImportUser> = (0..users)
        .map(|u| {
            let user = NewUser::new(&format!("u{u}"), Some(data(0, pad))).expect("valid user");
            ImportUser::new(user, None, None).expect("no timestamps")
        })
        .collect();
    for batch in all.chunks(500) {
        store
            .import(batch, true)
            .await
            .map_err(|e| format!("cannot load users: {e}"))?;
    }
    let acked = now_ns();
    Ok((0..users)
        .map(|user| WriteRecord {
            user,
            version: 0,
            deleted: false,
            sent,
            acked: Some(acked),
        })
        .collect())
}

fn list(values: &[f64], digits: usize) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
    parts.join(" / ")
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "–".into() } else { s }
}

fn summary_line(r: &Row) -> String {
    let fault = match (r.fault_at_s, r.unavailable_ms) {
        (Some(at), Some(ms)) => format!(
            "; master down at {at:.1} s: {} failed pages, {} failed writes, the last {ms:.0} ms after{}",
            r.reader_errors,
            r.write_errors,
            r.reader_first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        ),
        _ => String::new(),
    };
    let line = format!(
        "  {} activities/s ({:.2}× one reader), page p50 {:.3} ms p99 {:.3} ms, {:.0} writes/s, \
         {} answers checked, {} stale, window {:.2} ms, {} wrong",
        thousands(r.activities_per_sec),
        r.scaling,
        r.page_p50_ms,
        r.page_p99_ms,
        r.writes_per_sec,
        r.verdict.observations,
        r.verdict.stale,
        r.verdict.window_ns as f64 / 1e6,
        r.verdict.wrong
    );
    line + &fault
}

fn tables(rows: &[Row], map: &NodeMap) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nmasters: {}", map.names.join(", "));
    if !map.replicas.is_empty() {
        let _ = writeln!(out, "replicas: {}", map.replicas.join(", "));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| writes/s | readers | activities/s | × 1 reader | per reader | per reader CPU-s | page p50 ms | page p99 ms | L1 hits | CPU % readers | CPU % writer | CPU % masters | CPU % replicas | load avg |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let per: Vec<f64> = r.per_reader_per_sec.iter().map(|v| v / 1000.0).collect();
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {:.2}× | {}k | {} | {:.3} | {:.3} | {:.1} % | {} | {:.0} | {} | {} | {:.1} |",
            r.writes_per_sec,
            r.processes,
            thousands(r.activities_per_sec),
            r.scaling,
            list(&per, 0),
            thousands(r.per_cpu_sec),
            r.page_p50_ms,
            r.page_p99_ms,
            100.0 * r.l1_hit_ratio,
            list(&r.reader_cpu_pct, 0),
            r.writer_cpu_pct,
            list(&r.redis_cpu_pct, 0),
            or_dash(list(&r.replica_cpu_pct, 0)),
            r.load_average,
        );
    }
    let _ = writeln!(
        out,
        "\n| writes/s | readers | writes/s per master | pushes/s per shard (all readers) | pushes per write, per reader | keys per push | answers checked | stale | staleness window ms (at least) | stale p50 / p99 ms | wrong |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let v = &r.verdict;
        let pushes: f64 = r.pushes_per_sec_per_node.iter().sum();
        let keys: f64 = r.keys_per_sec_per_node.iter().sum();
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {:.2} ({:.2}) | {:.2} / {:.2} | **{}** |",
            r.writes_per_sec,
            r.processes,
            list(&r.writes_per_sec_per_node, 0),
            list(&r.pushes_per_sec_per_node, 0),
            r.pushes_per_write_per_reader,
            keys / pushes.max(1e-9),
            thousands(v.observations as f64),
            thousands(v.stale as f64),
            v.window_ns as f64 / 1e6,
            v.window_at_least_ns as f64 / 1e6,
            v.stale_p50_ns as f64 / 1e6,
            v.stale_p99_ns as f64 / 1e6,
            v.wrong,
        );
    }
    // What each node sent one tracking connection, and the background commands it ran.
    let _ = writeln!(
        out,
        "\n| writes/s | readers | pushes/s to one tracker, masters | replicas | keys per push, masters | replicas | keys per write, per reader | `ROLE`/s per node | `CLUSTER NODES`/s per node |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let m = r.redis_cpu_pct.len();
        let per_push = |from: usize, to: usize| -> Vec<f64> {
            (from..to)
                .map(|n| r.probe_keys_per_sec[n] / r.probe_pushes_per_sec[n].max(1e-9))
                .collect()
        };
        let n = r.probe_pushes_per_sec.len();
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
            r.writes_per_sec,
            r.processes,
            list(&r.probe_pushes_per_sec[..m], 0),
            or_dash(list(&r.probe_pushes_per_sec[m..], 0)),
            list(&per_push(0, m), 2),
            or_dash(list(&per_push(m, n), 2)),
            r.keys_per_write_per_reader,
            list(&r.role_per_sec, 1),
            list(&r.cluster_nodes_per_sec, 1),
        );
    }
    if rows.iter().any(|r| r.fault_at_s.is_some()) {
        let _ = writeln!(
            out,
            "\n| writes/s | readers | master down at s | failed pages | failed writes | last failure after the fault, ms | tracking lost (readers) | first error |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for r in rows {
            let _ = writeln!(
                out,
                "| {:.0} | {} | {:.1} | {} | {} | {:.0} | {} | {} |",
                r.writes_per_sec,
                r.processes,
                r.fault_at_s.unwrap_or(0.0),
                r.reader_errors,
                r.write_errors,
                r.unavailable_ms.unwrap_or(0.0),
                r.stream_lost,
                r.reader_first_error.as_deref().unwrap_or("–"),
            );
        }
    }
    for r in rows.iter().filter(|r| r.verdict.wrong > 0) {
        let _ = writeln!(
            out,
            "\nwrong answers with {} readers at {:.0} writes/s: {:?}",
            r.processes, r.write_rate, r.verdict.wrong_by_kind
        );
        for w in &r.verdict.examples {
            let _ = writeln!(out, "  {w}");
        }
    }
    out
}
