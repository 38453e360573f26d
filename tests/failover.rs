//! Redis Cluster with replicas: a master killed or failed over while several enrichers read
//! and one writer writes, every answer checked against the writer's history.
//!
//! # What is checked
//!
//! The writer is one task doing one operation at a time on users whose data is `{"v": N}`, N
//! unique per operation: an update, a delete or a re-creation. Each operation is logged with
//! the instant it was sent and the instant its answer came, and its outcome: applied,
//! refused (not applied), or unknown (a fault: it may or may not have been applied).
//!
//! Each enricher (its own cluster connections, its own tracking, its own L1: a separate
//! process as far as coherence goes), and a real `enrich serve` process through its enrich
//! endpoint, reads every user in a loop. An answer of a read that
//! started at `s` and ended at `e` is right if it is the state left by some operation `k`
//! that was sent before `e` and not refused, and no operation after `k` was acknowledged
//! before `s - LAG`: the value was current at some instant of the read, give or take `LAG`,
//! the time an invalidation takes from the server to the enricher's L1 (the server sends it
//! before it acknowledges the write, but another process receives it on its own clock). A
//! "not found" is checked the same way (it must be the state left by a delete), and a store
//! fault is allowed (it is an error, not an answer). Once the writer stops, every enricher's
//! answer must equal the cluster's exactly: a missed invalidation would leave a stale entry
//! that only its TTL would end.
//!
//! Reading from replicas adds the replication delay: a replica is read only if it had
//! caught up with its master at a check begun less than 300 ms before (the engine's trust in a
//! check; the next comes 250 ms after the last began), so those runs allow `LAG` and that,
//! [`REPLICA_LAG`].
//!
//! Redis replicates asynchronously: a write a master acknowledged just before it died may be
//! missing from its promoted replica, and the store's truth then goes back a version. That
//! loss is not what these tests are about, so before the kill the writer is held for the
//! instant it takes the replica to confirm the master's replication offset; the writer goes
//! on at once after the kill.

mod support;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enrich::store::{self, ReadFrom, SharedStore, StoreOptions};
use enrich::{Enricher, NewUser, UserId};
use serde_json::json;
use support::RedisCluster;

/// How long an invalidation may take to reach another enricher's L1 (see the module doc).
const LAG: Duration = Duration::from_millis(100);

/// How far behind a read from replicas may be: `LAG`, and how long the engine trusts a check
/// that found the replica caught up with its master.
const REPLICA_LAG: Duration = Duration::from_millis(100 + 300);

/// How long after its watch comes up a store reading from replicas still reads from the
/// masters: a replica may not have applied the writes made before the watch was heard (the
/// engine's 300 ms trust in a check, and a margin).
const WATCH_SETTLES: Duration = Duration::from_millis(350);

/// What a user is after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Present(i64),
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Sent, no answer yet.
    Pending,
    Applied(Instant),
    Refused,
    Unknown,
}

#[derive(Debug, Clone)]
struct Op {
    sent: Instant,
    outcome: Outcome,
    state: State,
}

/// Every operation on every user, in order (one writer, one operation at a time).
struct History {
    ops: Mutex<Vec<Vec<Op>>>,
}

impl History {
    fn new(users: usize, at: Instant) -> History {
        let first = Op {
            sent: at,
            outcome: Outcome::Applied(at),
            state: State::Present(0),
        };
        History {
            ops: Mutex::new(vec![vec![first]; users]),
        }
    }

    fn send(&self, user: usize, state: State) {
        let op = Op {
            sent: Instant::now(),
            outcome: Outcome::Pending,
            state,
        };
        self.ops.lock().unwrap()[user].push(op);
    }

    fn answer(&self, user: usize, outcome: Outcome) {
        let mut ops = self.ops.lock().unwrap();
        ops[user].last_mut().unwrap().outcome = outcome;
    }

    /// How far behind the writes an answer seen by a read over `[start, end]` is: zero if it
    /// was current during the read, else how long before `start` the first write after it
    /// was acknowledged; `None` if no operation could have left it.
    fn staleness(
        &self,
        user: usize,
        seen: State,
        start: Instant,
        end: Instant,
    ) -> Option<Duration> {
        let ops = self.ops.lock().unwrap();
        let ops = &ops[user];
        (0..ops.len())
            .filter(|&k| {
                let op = &ops[k];
                op.state == seen && op.sent <= end && op.outcome != Outcome::Refused
            })
            .map(|k| {
                let next = ops[k + 1..].iter().find_map(|op| match op.outcome {
                    Outcome::Applied(at) => Some(at),
                    _ => None,
                });
                match next {
                    Some(at) if at < start => start - at,
                    _ => Duration::ZERO,
                }
            })
            .min()
    }
}

fn id(i: usize) -> UserId {
    UserId::parse(&format!("f{i}")).unwrap()
}

fn user(i: usize, v: i64) -> NewUser {
    NewUser::new(&format!("f{i}"), Some(json!({ "v": v }))).unwrap()
}

/// The state an answer shows; `None` for a fault.
fn state_of(answer: &enrich::Result<Option<enrich::UserJson>>) -> Option<State> {
    match answer {
        Ok(Some(user)) => Some(State::Present(
            user.to_value()["data"]["v"]
                .as_i64()
                .expect("versioned data"),
        )),
        Ok(None) => Some(State::Absent),
        Err(err) => {
            assert!(err.is_store_fault(), "a read failed with {err:?}");
            None
        }
    }
}

/// What `enrich serve` put in place of `SU:id`, as a store's answer: the user, "missing", or a
/// fault.
fn served(actor: &serde_json::Value, id: &UserId) -> enrich::Result<Option<enrich::UserJson>> {
    match actor["error"].as_str() {
        None => {
            assert_eq!(actor["id"], id.as_str(), "{actor}");
            let text = serde_json::to_string(actor).unwrap();
            Ok(Some(enrich::UserJson::from_stored(text).unwrap()))
        }
        Some("ReferenceNotFound") => Ok(None),
        Some(_) => Err(enrich::Error::new(
            enrich::ErrorKind::Unavailable,
            actor.to_string(),
        )),
    }
}

/// One read or write of the disrupted master's users: when it was sent, when its answer
/// came, and whether it was answered (every id of a read; a write applied).
#[derive(Debug, Clone, Copy)]
struct Attempt {
    sent: Instant,
    done: Instant,
    ok: bool,
}

/// How long after `at` attempts succeeded for good: the end of the first successful attempt
/// sent after the last failed one was sent (or after `at`, if none failed).
fn recovered(attempts: &[Attempt], at: Instant) -> Option<Duration> {
    let last_failed = (attempts.iter().rev())
        .find(|a| !a.ok && a.sent >= at)
        .map_or(at, |a| a.sent);
    (attempts.iter())
        .find(|a| a.ok && a.sent >= last_failed)
        .map(|a| a.done - at)
}

/// Prints when `attempts` went from answered to failed and back, in ms from `at`.
fn trace(name: &str, attempts: &[Attempt], at: Instant) {
    let ms = |t: Instant| match t.checked_duration_since(at) {
        Some(d) => d.as_millis() as i64,
        None => -((at - t).as_millis() as i64),
    };
    let mut last = None;
    let changes: Vec<String> = (attempts.iter())
        .filter(|a| last.replace(a.ok) != Some(a.ok))
        .map(|a| format!("{} at {}", if a.ok { "ok" } else { "FAULT" }, ms(a.done)))
        .collect();
    let slowest = (attempts.iter())
        .filter(|a| a.sent >= at)
        .map(|a| a.done - a.sent)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{name}: {}; slowest after the disruption {slowest:?}",
        changes.join(", ")
    );
}

/// What the readers and the writer saw.
#[derive(Default)]
struct Seen {
    /// The enrichers' reads of the disrupted master's users.
    reads: Vec<Attempt>,
    /// The store's reads of them, without an L1: what a cold page meets.
    probes: Vec<Attempt>,
    /// The writes of one of them.
    writes: Vec<Attempt>,
    answers: u64,
    faults: u64,
    /// The largest staleness of any answer.
    worst: Duration,
    wrong: Vec<String>,
}

/// How long after the disruption its slots answered again, for good.
#[derive(Debug)]
struct Availability {
    /// Through the enrichers, L1 and all.
    read: Duration,
    /// Through the store, with no L1: a page none of whose users is cached.
    store_read: Duration,
    /// A write of one of them.
    write: Duration,
    /// How many times the enrichers emptied their L1 meanwhile, all together.
    flushes: u64,
}

/// How long the disrupted slots may stay unavailable: the cluster's own failure detection
/// and election (about two seconds with [`support::NODE_TIMEOUT_MS`]), the engine's noticing,
/// a response timeout for what was sent to a hung master, and room for a busy test machine.
const OUTAGE: Duration = Duration::from_secs(8);

impl Availability {
    fn check(&self, what: &str) {
        eprintln!("{what}: {self:?}");
        for took in [self.read, self.store_read, self.write] {
            assert!(took < OUTAGE, "{what}: {self:?}");
        }
    }
}

struct Run {
    users: usize,
    /// The users whose slot the disrupted master serves.
    affected: Vec<bool>,
    history: History,
    seen: Mutex<Seen>,
    stop: AtomicBool,
    /// Set by the test to hold the writer between two operations; `held` says it is.
    hold: AtomicBool,
    held: AtomicBool,
    version: AtomicI64,
    /// When the disruption began.
    disrupted: Mutex<Option<Instant>>,
    /// How far behind an answer may be (see the module doc).
    lag: Duration,
}

impl Run {
    /// When `t` was, next to the disruption, for messages.
    fn since_disruption(&self, t: Instant) -> String {
        match *self.disrupted.lock().unwrap() {
            Some(at) if t >= at => format!("{:?} after the disruption", t - at),
            Some(at) => format!("{:?} before the disruption", at - t),
            None => "before the disruption".to_string(),
        }
    }

    async fn read_loop(self: Arc<Run>, enricher: Enricher) -> (u64, Enricher) {
        let ids: Vec<UserId> = (0..self.users).map(id).collect();
        let mut reads = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let answers = enricher.get_many_each(&ids).await;
            let attempt = self.check("an enricher", &ids, &answers, sent);
            self.seen.lock().unwrap().reads.push(attempt);
            reads += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (reads, enricher)
    }

    /// Has `server` enrich a page of one activity per user, again and again: its answers
    /// through the enrich endpoint, L1 and all, of another process.
    async fn serve_loop(self: Arc<Run>, server: ServeProcess) -> (u64, ServeProcess) {
        let ids: Vec<UserId> = (0..self.users).map(id).collect();
        let page: Vec<serde_json::Value> = (ids.iter())
            .map(|id| json!({"actor": format!("SU:{id}"), "verb": "read"}))
            .collect();
        let mut reads = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let resp = (server.api(reqwest::Method::POST, "/api/v1.0/enrich/"))
                .json(&page)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            let answers: Vec<enrich::Result<Option<enrich::UserJson>>> = match status {
                200 => {
                    let docs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
                    (docs.iter().zip(&ids))
                        .map(|(doc, id)| served(&doc["actor"], id))
                        .collect()
                }
                503 => {
                    let fault = enrich::Error::new(enrich::ErrorKind::Unavailable, body);
                    ids.iter().map(|_| Err(fault.clone())).collect()
                }
                other => panic!("enrich answered {other}: {body}"),
            };
            let attempt = self.check("enrich serve", &ids, &answers, sent);
            self.seen.lock().unwrap().reads.push(attempt);
            reads += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (reads, server)
    }

    /// Reads the disrupted master's users from the store itself, again and again.
    async fn probe_loop(self: Arc<Run>, store: SharedStore) {
        let ids: Vec<UserId> = (0..self.users)
            .filter(|&i| self.affected[i])
            .map(id)
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let answers = store.get_many_each(&ids).await;
            let attempt = self.check("the store", &ids, &answers, sent);
            self.seen.lock().unwrap().probes.push(attempt);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Checks the answers to a read of `ids` sent at `sent`; the read as an attempt on the
    /// disrupted master's users.
    fn check(
        &self,
        who: &str,
        ids: &[UserId],
        answers: &[enrich::Result<Option<enrich::UserJson>>],
        sent: Instant,
    ) -> Attempt {
        let done = Instant::now();
        let mut ok = true;
        let mut seen = self.seen.lock().unwrap();
        for (id, answer) in ids.iter().zip(answers) {
            let i: usize = id.as_str()[1..].parse().unwrap();
            seen.answers += 1;
            let Some(state) = state_of(answer) else {
                seen.faults += 1;
                ok &= !self.affected[i];
                continue;
            };
            match self.history.staleness(i, state, sent, done) {
                Some(late) if late <= self.lag => seen.worst = seen.worst.max(late),
                Some(late) => {
                    seen.worst = seen.worst.max(late);
                    let wrong = format!(
                        "f{i}: {state:?} served by {who} {late:?} after it was replaced, {}",
                        self.since_disruption(sent)
                    );
                    seen.wrong.push(wrong);
                }
                None => seen
                    .wrong
                    .push(format!("f{i}: {state:?} served by {who} was never written")),
            }
        }
        Attempt { sent, done, ok }
    }

    async fn write_loop(self: Arc<Run>, store: SharedStore) -> u64 {
        let mut present = vec![true; self.users];
        let mut writes = 0u64;
        let mut pick = 7usize;
        while !self.stop.load(Ordering::Relaxed) {
            if self.hold.load(Ordering::Acquire) {
                self.held.store(true, Ordering::Release);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            self.held.store(false, Ordering::Release);
            // A fixed stride over the users: each is written about as often as the others.
            pick = (pick + 37) % self.users;
            let i = pick;
            let v = self.version.fetch_add(1, Ordering::Relaxed) + 1;
            let delete = present[i] && v % 7 == 0;
            let state = if delete {
                State::Absent
            } else {
                State::Present(v)
            };
            self.history.send(i, state);
            let sent = Instant::now();
            let result = if delete {
                store.delete(&id(i)).await
            } else if present[i] {
                store.update(&user(i, v)).await.map(|_| ())
            } else {
                store.add(&user(i, v), false).await.map(|_| ())
            };
            let done = Instant::now();
            let outcome = match &result {
                Ok(()) => {
                    present[i] = !delete;
                    Outcome::Applied(done)
                }
                // The user was not as the writer believed (after an unknown outcome).
                Err(err) if err.is_not_found() => {
                    present[i] = false;
                    Outcome::Refused
                }
                Err(err) if err.is_conflict() => {
                    present[i] = true;
                    Outcome::Refused
                }
                Err(err) => {
                    assert!(err.is_store_fault(), "a write failed with {err:?}");
                    Outcome::Unknown
                }
            };
            self.history.answer(i, outcome);
            if self.affected[i] {
                let ok = matches!(outcome, Outcome::Applied(_));
                self.seen
                    .lock()
                    .unwrap()
                    .writes
                    .push(Attempt { sent, done, ok });
            }
            writes += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        writes
    }
}

/// Replication offsets of `master` and of its replicas, from the master's account.
fn replication_offsets(cluster: &RedisCluster, master: usize) -> (u64, Vec<u64>) {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut cluster.node_connection(master))
        .unwrap();
    let own = (info.lines())
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let replicas = (info.lines())
        .filter(|l| l.starts_with("slave"))
        .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    (own, replicas)
}

/// Waits until every running node's `CLUSTER SLOTS` lists a replica for each master: it lists
/// a replica only once it has heard the replica has synced, so then every node knows every
/// replica, synced.
fn wait_replicas_listed(cluster: &RedisCluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = |i: usize| {
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut cluster.node_connection(i))
            .unwrap();
        match slots {
            redis::Value::Array(ranges) => ranges
                .iter()
                .all(|range| matches!(range, redis::Value::Array(items) if items.len() >= 4)),
            _ => false,
        }
    };
    while !cluster.running().into_iter().all(listed) {
        assert!(Instant::now() < deadline, "replicas never listed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every replica of `master` has confirmed all it was sent.
fn wait_replicated(cluster: &RedisCluster, master: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (own, replicas) = replication_offsets(cluster, master);
        if !replicas.is_empty() && replicas.iter().all(|r| *r >= own) {
            return;
        }
        assert!(Instant::now() < deadline, "replicas never caught up");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// SIGKILL: connections to the master are refused at once.
    Kill,
    /// SIGSTOP: the master hangs, its connections stay open and unanswered.
    Freeze,
    /// `CLUSTER FAILOVER` on its replica: no write is lost, the roles swap; then back.
    ManualFailover,
}

/// An `enrich serve` process of its own over the cluster at `url`, killed when dropped: an
/// engine process beside the test's own enrichers.
struct ServeProcess {
    child: std::process::Child,
    base: String,
    client: reqwest::Client,
    token: String,
}

impl ServeProcess {
    /// Starts it with `env` set, and waits until it is ready (its store's announcements
    /// heard).
    async fn start(url: &str, env: &[(&str, &str)]) -> ServeProcess {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut child = support::enrich_command(std::path::Path::new("."))
            .args(["--store", url, "serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                format!("info,{}", std::env::var("RUST_LOG").unwrap_or_default()),
            )
            .env("ENRICH_API_KEY", support::serve::KEY)
            .env("ENRICH_API_SECRET", support::serve::SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        // With FAILOVER_TRACE, its log joins the test's (RUST_LOG filters both).
        let echo = std::env::var_os("FAILOVER_TRACE").is_some();
        let (found, address) = tokio::sync::oneshot::channel();
        // Reads its log to the end, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in stderr.lines().map_while(Result::ok) {
                if echo {
                    eprintln!("SERVE {line}");
                }
                if let Some((_, rest)) = line.split_once("listening on http://")
                    && let Some(found) = found.take()
                {
                    let _ = found.send(rest.split(',').next().unwrap().to_string());
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), address)
            .await
            .expect("enrich serve did not start")
            .unwrap();
        let server = ServeProcess {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            token: support::serve::sign(
                &json!({"resource": "*", "action": "*", "feed_id": "*"}),
                support::serve::SECRET,
            ),
        };
        let ready = Instant::now();
        while !(server
            .client
            .get(format!("{}/readyz", server.base))
            .send()
            .await)
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(ready.elapsed() < Duration::from_secs(10), "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    /// A request with the API key and a server token.
    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let sep = if path.contains('?') { '&' } else { '?' };
        (self.client)
            .request(
                method,
                format!("{}{path}{sep}api_key={}", self.base, support::serve::KEY),
            )
            .header("authorization", &self.token)
            .header("stream-auth-type", "jwt")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const USERS: usize = 90;
const READERS: usize = 3;

fn options(read_from: ReadFrom) -> StoreOptions {
    StoreOptions::new().read_from(read_from)
}

/// Runs readers and the writer across `disruption` of the master of the first user's slot,
/// the enrichers reading from `read_from`; checks every answer and returns the availability
/// figures.
async fn under_load(disruption: Disruption, read_from: ReadFrom) -> Availability {
    if std::env::var_os("FAILOVER_TRACE").is_some() {
        // The engine's own account of the failover, filtered by RUST_LOG.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let Outage {
        cluster,
        store: writer,
        victim,
        promoted,
        affected,
    } = Outage::prepare().await;
    let url = cluster.url();
    let run = Arc::new(Run {
        users: USERS,
        affected,
        history: History::new(USERS, Instant::now()),
        seen: Mutex::new(Seen::default()),
        stop: AtomicBool::new(false),
        hold: AtomicBool::new(false),
        held: AtomicBool::new(false),
        version: AtomicI64::new(0),
        disrupted: Mutex::new(None),
        lag: match read_from {
            ReadFrom::Masters => LAG,
            _ => REPLICA_LAG,
        },
    });
    let mut readers = Vec::new();
    let mut watching = Vec::new();
    for _ in 0..READERS {
        let store = store::open(&url, &options(read_from)).await.unwrap();
        let enricher = Enricher::new(store);
        assert!(enricher.wait_for_cache(Duration::from_secs(10)).await);
        watching.push(enricher.clone());
        readers.push(tokio::spawn(run.clone().read_loop(enricher)));
    }
    let flushes = || -> u64 { watching.iter().map(|e| e.cache_stats().flushes).sum() };
    let read_from_env = match read_from {
        ReadFrom::Masters => "masters",
        _ => "replicas",
    };
    let server = ServeProcess::start(&url, &[("ENRICH_READ_FROM", read_from_env)]).await;
    let serving = tokio::spawn(run.clone().serve_loop(server));
    let probe = store::open(&url, &options(read_from)).await.unwrap();
    let probing = tokio::spawn(run.clone().probe_loop(probe));
    let writing = tokio::spawn(run.clone().write_loop(writer.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;

    let flushed_before = flushes();
    let (cluster, at) = {
        let run = run.clone();
        tokio::task::spawn_blocking(move || {
            let mut cluster = cluster;
            let at = match disruption {
                Disruption::Kill | Disruption::Freeze => {
                    run.hold.store(true, Ordering::Release);
                    while !run.held.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    wait_replicated(&cluster, victim);
                    let at = Instant::now();
                    *run.disrupted.lock().unwrap() = Some(at);
                    match disruption {
                        Disruption::Kill => cluster.kill(victim),
                        _ => cluster.freeze(victim),
                    }
                    run.hold.store(false, Ordering::Release);
                    tracing::warn!("disrupted node {victim}");
                    let took = cluster.wait_promoted(promoted);
                    eprintln!("the cluster promoted the replica {took:?} after {disruption:?}");
                    at
                }
                Disruption::ManualFailover => {
                    let at = Instant::now();
                    *run.disrupted.lock().unwrap() = Some(at);
                    cluster.failover(promoted);
                    eprintln!("CLUSTER FAILOVER done in {:?}", at.elapsed());
                    // And back, once the old master has been a replica for a moment.
                    std::thread::sleep(Duration::from_millis(1500));
                    let back = Instant::now();
                    cluster.failover(victim);
                    eprintln!("CLUSTER FAILOVER back done in {:?}", back.elapsed());
                    at
                }
            };
            (cluster, at)
        })
        .await
        .unwrap()
    };
    // Run on until the disrupted slots have answered a read and a write, and a while more.
    let deadline = Instant::now() + OUTAGE;
    loop {
        let recovered = {
            let seen = run.seen.lock().unwrap();
            let answered = |attempts: &[Attempt]| {
                attempts.iter().any(|a| a.sent > at && a.ok)
                    && attempts.last().is_some_and(|a| a.ok)
            };
            answered(&seen.reads) && answered(&seen.probes) && answered(&seen.writes)
        };
        if recovered || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cluster = match disruption {
        // The killed master comes back as a replica of its replacement, empty (no
        // persistence here) until it has synced: under load all the same.
        Disruption::Kill => tokio::task::spawn_blocking(move || {
            let mut cluster = cluster;
            cluster.restart(victim);
            cluster.wait_replicas_synced();
            wait_replicas_listed(&cluster);
            eprintln!(
                "the killed master is back as a replica {:?} after the kill",
                at.elapsed()
            );
            cluster
        })
        .await
        .unwrap(),
        _ => cluster,
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    run.stop.store(true, Ordering::Relaxed);
    let flushed = flushes() - flushed_before;
    let writes = writing.await.unwrap();
    probing.await.unwrap();
    let (served_reads, server) = serving.await.unwrap();
    let mut reads = Vec::new();
    let mut enrichers = Vec::new();
    for reader in readers {
        let (count, enricher) = reader.await.unwrap();
        reads.push(count);
        enrichers.push(enricher);
    }

    let figures = {
        let seen = run.seen.lock().unwrap();
        eprintln!(
            "{disruption:?} reading {read_from:?}: {writes} writes, reads per enricher {reads:?}, \
             {served_reads} pages through enrich serve, {} answers, {} faults, worst staleness \
             {:?}",
            seen.answers, seen.faults, seen.worst
        );
        assert!(
            seen.wrong.is_empty(),
            "{} wrong answers, the first: {:#?}",
            seen.wrong.len(),
            &seen.wrong[..seen.wrong.len().min(10)]
        );
        trace("enrichers' reads", &seen.reads, at);
        trace("store reads", &seen.probes, at);
        trace("writes", &seen.writes, at);
        let took = |attempts: &[Attempt], what: &str| {
            recovered(attempts, at).unwrap_or_else(|| panic!("the disrupted slots never {what}"))
        };
        Availability {
            read: took(&seen.reads, "answered an enricher's read"),
            store_read: took(&seen.probes, "answered a read"),
            write: took(&seen.writes, "took a write"),
            flushes: flushed,
        }
    };

    // Quiet now: every enricher must answer exactly what the cluster holds, from its L1.
    tokio::time::sleep(LAG).await;
    let truth = store::open(&url, &StoreOptions::new()).await.unwrap();
    let ids: Vec<UserId> = (0..USERS).map(id).collect();
    let held: Vec<State> = (truth.get_many(&ids).await.unwrap().into_iter())
        .map(|held| state_of(&Ok(held)).unwrap())
        .collect();
    let now = Instant::now();
    for (i, state) in held.iter().enumerate() {
        let late = run.history.staleness(i, *state, now, now);
        assert_eq!(
            late,
            Some(Duration::ZERO),
            "f{i} is {state:?} in the cluster"
        );
    }
    for enricher in &enrichers {
        assert!(
            enricher.wait_for_cache(Duration::from_secs(5)).await,
            "the L1 is still bypassed"
        );
        for _ in 0..2 {
            let answers = enricher.get_many_each(&ids).await;
            for (i, answer) in answers.iter().enumerate() {
                assert_eq!(state_of(answer), Some(held[i]), "f{i} once quiet");
            }
        }
    }
    let page: Vec<serde_json::Value> = (ids.iter())
        .map(|id| json!({"actor": format!("SU:{id}")}))
        .collect();
    for _ in 0..2 {
        let resp = (server.api(reqwest::Method::POST, "/api/v1.0/enrich/"))
            .json(&page)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let docs: Vec<serde_json::Value> = resp.json().await.unwrap();
        for (i, doc) in docs.iter().enumerate() {
            let answer = served(&doc["actor"], &ids[i]);
            assert_eq!(
                state_of(&answer),
                Some(held[i]),
                "f{i} from enrich serve once quiet"
            );
        }
    }
    drop(server);
    drop(cluster);
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_under_load_serves_no_stale_or_missing_user() {
    let figures = under_load(Disruption::Kill, ReadFrom::Masters).await;
    figures.check("after the kill");
    // The master's stream was lost: what it announced last may not have reached us.
    assert!(figures.flushes >= READERS as u64, "{figures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_under_load_serves_no_stale_or_missing_user() {
    under_load(Disruption::Freeze, ReadFrom::Masters)
        .await
        .check("after the freeze");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_under_load_serves_no_stale_or_missing_user() {
    let figures = under_load(Disruption::ManualFailover, ReadFrom::Masters).await;
    figures.check("after CLUSTER FAILOVER");
    // The new master was tracked as a replica: heard from its first write, nothing to flush.
    assert_eq!(figures.flushes, 0, "{figures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_under_load_with_reads_from_replicas_serves_no_stale_or_missing_user() {
    let figures = under_load(Disruption::Kill, ReadFrom::Replicas).await;
    figures.check("after the kill, reading from replicas");
}

/// A master that hangs, one write at a time to its users: the first write, sent to it, is of
/// unknown outcome once its response timeout is out (the node may still apply it when it goes
/// on); no later write is sent to the hung node, so none is of unknown outcome — each either
/// goes to the replica as soon as it is promoted, or fails as never sent. The first one
/// applied is on the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_write_lost_on_a_hung_master_no_other_is_sent_to_it() {
    let Outage {
        mut cluster,
        store,
        victim,
        promoted,
        affected,
    } = Outage::prepare().await;
    let affected: Vec<usize> = (0..USERS).filter(|&i| affected[i]).collect();
    wait_replicated(&cluster, victim);
    cluster.freeze(victim);
    let at = Instant::now();
    let mut outcomes = Vec::new();
    let applied = loop {
        let v = outcomes.len() as i64 + 1;
        let i = affected[outcomes.len() % affected.len()];
        let result = store.update(&user(i, v)).await;
        outcomes.push((
            at.elapsed(),
            result.as_ref().map(drop).map_err(|e| e.kind()),
        ));
        match result {
            Ok(_) => break (i, v),
            Err(err) => assert!(err.is_store_fault(), "{err:?}"),
        }
        assert!(at.elapsed() < OUTAGE, "no write applied: {outcomes:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("writes after the freeze (time of the answer, outcome): {outcomes:?}");
    assert_eq!(
        outcomes[0].1,
        Err(enrich::ErrorKind::OutcomeUnknown),
        "{outcomes:?}"
    );
    let unknown = (outcomes.iter())
        .filter(|(_, outcome)| *outcome == Err(enrich::ErrorKind::OutcomeUnknown))
        .count();
    assert_eq!(
        unknown, 1,
        "a write was sent to the hung master again: {outcomes:?}"
    );
    let (i, v) = applied;
    let held: String = redis::cmd("GET")
        .arg(format!("enrich:user:f{i}"))
        .query(&mut cluster.node_connection(promoted))
        .unwrap();
    assert!(held.contains(&format!(r#""v":{v}"#)), "{held}");
}

/// A replicated cluster holding the users `f0…` at version 0 (its replicas listed), a store on
/// it, and the master an outage is made on: the one holding `f0`.
struct Outage {
    cluster: RedisCluster,
    store: SharedStore,
    victim: usize,
    /// The victim's replica, which the cluster promotes.
    promoted: usize,
    /// Whether each user is held by the victim.
    affected: Vec<bool>,
}

impl Outage {
    async fn prepare() -> Outage {
        let cluster = RedisCluster::start_replicated();
        let store = store::open(&cluster.url(), &StoreOptions::new())
            .await
            .unwrap();
        for i in 0..USERS {
            store.add(&user(i, 0), false).await.unwrap();
        }
        wait_replicas_listed(&cluster);
        let victim = cluster.owner_of(cluster.slot_of("enrich:user:f0"));
        let promoted = cluster.replica_of(victim);
        let affected = (0..USERS)
            .map(|i| cluster.owner_of(cluster.slot_of(&format!("enrich:user:f{i}"))) == victim)
            .collect();
        Outage {
            cluster,
            store,
            victim,
            promoted,
            affected,
        }
    }
}

/// The number of `EVAL_RO` calls nodes `nodes` ran since their statistics were reset.
fn eval_ro_calls(cluster: &RedisCluster, nodes: &[usize]) -> u64 {
    (nodes.iter())
        .map(|&i| cluster.stat(i, "cmdstat_eval_ro:calls="))
        .sum()
}

/// A started replicated cluster with `users` users `r0…` at version 0, once its replicas are
/// listed; the masters and the replicas.
async fn replicated_with_users(users: usize) -> (RedisCluster, Vec<usize>, Vec<usize>) {
    let cluster = RedisCluster::start_replicated();
    let writer = store::open(&cluster.url(), &StoreOptions::new())
        .await
        .unwrap();
    for i in 0..users {
        let user = NewUser::new(&format!("r{i}"), Some(json!({ "v": 0 }))).unwrap();
        writer.add(&user, false).await.unwrap();
    }
    let cluster = tokio::task::spawn_blocking(move || {
        wait_replicas_listed(&cluster);
        cluster
    })
    .await
    .unwrap();
    let masters = cluster.masters();
    let replicas = (cluster.running().into_iter())
        .filter(|i| !masters.contains(i))
        .collect();
    (cluster, masters, replicas)
}

fn version_of(user: &Option<enrich::UserJson>) -> Option<i64> {
    user.as_ref()
        .map(|u| u.to_value()["data"]["v"].as_i64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_replicas_are_answered_by_replicas_and_follow_every_write() {
    let (cluster, masters, replicas) = replicated_with_users(30).await;
    let url = cluster.url();
    let writer = store::open(&url, &StoreOptions::new()).await.unwrap();
    let reader = Enricher::new(
        store::open(&url, &options(ReadFrom::Replicas))
            .await
            .unwrap(),
    );
    assert!(reader.wait_for_cache(Duration::from_secs(10)).await);
    tokio::time::sleep(WATCH_SETTLES).await;
    let ids: Vec<UserId> = (0..30)
        .map(|i| UserId::parse(&format!("r{i}")).unwrap())
        .collect();

    // A cold page: one EVAL_RO per replica, none on the masters.
    cluster.reset_stats();
    let found = reader.get_many(&ids).await.unwrap();
    assert!(found.iter().all(|u| version_of(u) == Some(0)));
    assert_eq!(eval_ro_calls(&cluster, &masters), 0);
    assert_eq!(eval_ro_calls(&cluster, &replicas), 3);

    // Each write through another store reaches the reader's L1 through the replica it reads:
    // once it shows the new version, it never shows an older one.
    let mut latencies = Vec::new();
    for v in 1..=150 {
        let id = &ids[v as usize % ids.len()];
        let user = NewUser::with_id(id.clone(), Some(json!({ "v": v }))).unwrap();
        writer.update(&user).await.unwrap();
        let written = Instant::now();
        loop {
            let seen = version_of(&reader.get(id).await.unwrap()).unwrap();
            if seen == v {
                break;
            }
            assert!(
                seen < v && written.elapsed() < Duration::from_secs(5),
                "{id}: {seen}"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(written.elapsed());
        for _ in 0..5 {
            assert_eq!(version_of(&reader.get(id).await.unwrap()), Some(v), "{id}");
        }
    }
    latencies.sort();
    eprintln!(
        "a write seen by an enricher reading replicas after: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // A delete and a re-creation are followed the same way.
    writer.delete(&ids[0]).await.unwrap();
    let deleted = Instant::now();
    while reader.get(&ids[0]).await.unwrap().is_some() {
        assert!(deleted.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let back = NewUser::with_id(ids[0].clone(), Some(json!({ "v": 1000 }))).unwrap();
    writer.add(&back, false).await.unwrap();
    let created = Instant::now();
    while version_of(&reader.get(&ids[0]).await.unwrap()) != Some(1000) {
        assert!(created.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    // The L1 answers the rest: no store read at all. The reader hears every write twice, from
    // the master and later from the replica, so the second push of a last write may still
    // drop an entry reloaded after the first: those arrive within milliseconds, then one
    // read refills what they dropped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.get_many(&ids[1..]).await.unwrap();
    cluster.reset_stats();
    reader.get_many(&ids[1..]).await.unwrap();
    assert_eq!(
        eval_ro_calls(&cluster, &masters) + eval_ro_calls(&cluster, &replicas),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_user_does_not_make_it_missing() {
    let (cluster, masters, replicas) = replicated_with_users(1).await;
    let store = store::open(&cluster.url(), &options(ReadFrom::Replicas))
        .await
        .unwrap();
    // A replica that lacks the user, as one does before it applies a creation or while a
    // restarted one syncs: here made so by emptying the replica itself.
    let key = "enrich:user:r0";
    let replica = cluster.replica_of(cluster.owner_of(cluster.slot_of(key)));
    let mut conn = cluster.node_connection(replica);
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-read-only")
        .arg("no")
        .exec(&mut conn)
        .unwrap();
    redis::cmd("FLUSHALL").exec(&mut conn).unwrap();
    cluster.reset_stats();
    let r0 = UserId::parse("r0").unwrap();
    let found = store.get_many(std::slice::from_ref(&r0)).await.unwrap();
    assert_eq!(version_of(&found[0]), Some(0));
    // Asked of the replica first, then of its master.
    assert_eq!(eval_ro_calls(&cluster, &[replica]), 1);
    assert_eq!(eval_ro_calls(&cluster, &masters), 1);
    // A user nobody has is missing, on the master's word.
    let nobody = UserId::parse("nobody").unwrap();
    assert!(store.get(&nobody).await.unwrap_err().is_not_found());
    assert_eq!(eval_ro_calls(&cluster, &masters), 2);
    assert!(eval_ro_calls(&cluster, &replicas) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_from_flag_reaches_the_commands_and_the_server() {
    let (cluster, masters, replicas) = replicated_with_users(2).await;
    let url = cluster.url();

    cluster.reset_stats();
    let out = support::enrich_command(std::path::Path::new("."))
        .args([
            "--store",
            &url,
            "--read-from",
            "replicas",
            "users",
            "get",
            "r0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""id":"r0""#));
    assert_eq!(eval_ro_calls(&cluster, &masters), 0);
    assert_eq!(eval_ro_calls(&cluster, &replicas), 1);

    let server = ServeProcess::start(&url, &[("ENRICH_READ_FROM", "replicas")]).await;
    tokio::time::sleep(WATCH_SETTLES).await;
    cluster.reset_stats();
    let resp = (server.api(reqwest::Method::GET, "/api/v1.0/user/r1/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.unwrap().contains(r#""v":0"#));
    assert_eq!(eval_ro_calls(&cluster, &masters), 0);
    assert_eq!(eval_ro_calls(&cluster, &replicas), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_or_cut_off_its_master_is_not_read() {
    let (cluster, _, _) = replicated_with_users(1).await;
    let url = cluster.url();
    let store = store::open(&url, &options(ReadFrom::Replicas))
        .await
        .unwrap();
    let writer = store::open(&url, &StoreOptions::new()).await.unwrap();
    let r0 = UserId::parse("r0").unwrap();
    let master = cluster.owner_of(cluster.slot_of("enrich:user:r0"));
    let replica = cluster.replica_of(master);
    cluster.reset_stats();
    store.get(&r0).await.unwrap();
    assert_eq!(
        eval_ro_calls(&cluster, &[replica]),
        1,
        "read from the replica"
    );

    // A replica linked to its master but behind it: `CLIENT PAUSE WRITE` holds back the
    // writes of its replication stream, as a master holds them back after a full sync until
    // the replica's first acknowledgement. It says `connected`, and answers reads with the
    // version before.
    let mut conn = cluster.node_connection(replica);
    hold_back(&mut conn);
    let version = |v| NewUser::with_id(r0.clone(), Some(json!({ "v": v }))).unwrap();
    writer.update(&version(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.reset_stats();
    let found = store.get_many(std::slice::from_ref(&r0)).await.unwrap();
    assert_eq!(version_of(&found[0]), Some(1));
    assert_eq!(eval_ro_calls(&cluster, &[replica]), 0);
    assert_eq!(eval_ro_calls(&cluster, &[master]), 1);
    let_go(&mut conn);
    // Caught up, it is read again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.reset_stats();
    let found = store.get_many(std::slice::from_ref(&r0)).await.unwrap();
    assert_eq!(version_of(&found[0]), Some(1));
    assert_eq!(eval_ro_calls(&cluster, &[replica]), 1);

    // Cut the replica off its master: it cannot sign in again, and goes on answering reads
    // with what it has.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("masterauth")
        .arg("not-the-password")
        .exec(&mut conn)
        .unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("master")
        .exec(&mut conn)
        .unwrap();
    writer.update(&version(2)).await.unwrap();
    // Once the store has heard the replica is out of sync, its master answers.
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.reset_stats();
    let found = store.get_many(std::slice::from_ref(&r0)).await.unwrap();
    assert_eq!(version_of(&found[0]), Some(2));
    assert_eq!(eval_ro_calls(&cluster, &[replica]), 0);
    assert_eq!(eval_ro_calls(&cluster, &[master]), 1);
}

/// A replica read within its check's trust, whose master then holds back its stream: what an
/// enricher cached from it must not outlive that trust. The write's announcement from the
/// master has already passed when the read is made, and the replica announces the write only
/// once it applies it, which `CLIENT PAUSE WRITE` (as a master holding back its stream after a
/// full sync) delays by seconds. Several rounds: a round finds the replica trusted unless a
/// check of it began between the write and the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_held_back_after_a_write_leaves_no_stale_user_in_the_l1() {
    let (cluster, _, _) = replicated_with_users(1).await;
    let url = cluster.url();
    let reader = Enricher::new(
        store::open(&url, &options(ReadFrom::Replicas))
            .await
            .unwrap(),
    );
    assert!(reader.wait_for_cache(Duration::from_secs(10)).await);
    let writer = store::open(&url, &StoreOptions::new()).await.unwrap();
    let r0 = UserId::parse("r0").unwrap();
    let master = cluster.owner_of(cluster.slot_of("enrich:user:r0"));
    let replica = cluster.replica_of(master);
    let mut conn = cluster.node_connection(replica);
    let mut from_replica = 0;
    for v in 1..=5 {
        // Caught up and trusted again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(version_of(&reader.get(&r0).await.unwrap()), Some(v - 1));
        hold_back(&mut conn);
        let user = NewUser::with_id(r0.clone(), Some(json!({ "v": v }))).unwrap();
        writer.update(&user).await.unwrap();
        // The master's announcement is heard: the L1 holds nothing for r0 now.
        tokio::time::sleep(LAG / 2).await;
        cluster.reset_stats();
        let first = version_of(&reader.get(&r0).await.unwrap());
        from_replica += eval_ro_calls(&cluster, &[replica]);
        tokio::time::sleep(REPLICA_LAG + LAG).await;
        let later = version_of(&reader.get(&r0).await.unwrap());
        let_go(&mut conn);
        eprintln!("round {v}: read {first:?}, then {later:?}");
        assert_eq!(later, Some(v), "r0 once the replica's trust is over");
    }
    eprintln!("reads from the held-back replica: {from_replica}");
}

/// Holds back the replica `conn` is connected to: `CLIENT PAUSE WRITE` (for 3 s at most) stops
/// it applying its replication stream, while it still says `connected` and answers reads.
fn hold_back(conn: &mut redis::Connection) {
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .exec(conn)
        .unwrap();
}

/// Ends [`hold_back`].
fn let_go(conn: &mut redis::Connection) {
    redis::cmd("CLIENT").arg("UNPAUSE").exec(conn).unwrap();
}
