//! The write concern (`--wait-replicas`, [`StoreOptions::wait_replicas`]): a write is
//! acknowledged only once enough replicas confirmed it, so a failover cannot lose it; one they
//! did not confirm in time is of unknown outcome, never a success. And, without it, the
//! acknowledged write a failover does lose.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use enrich::store::{self, ImportEntry, ImportUser, SharedStore, StoreOptions};
use enrich::{EntryKey, ErrorKind, NewEntry, NewUser, UserId};
use serde_json::{Value, json};
use support::{RedisCluster, RedisServer, code, run_enrich, stderr, stdout};

/// A stopped (`SIGSTOP`) server process, which neither reads its replication stream nor
/// acknowledges anything; it goes on (`SIGCONT`) when dropped.
struct Frozen(u32);

impl Frozen {
    fn new(conn: &mut redis::Connection) -> Frozen {
        let info: String = redis::cmd("INFO").arg("server").query(conn).unwrap();
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("process_id in INFO server");
        signal("-STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

fn get(conn: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(conn).unwrap()
}

fn uid(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn user(id: &str, v: i64) -> NewUser {
    NewUser::new(id, Some(json!({ "v": v }))).unwrap()
}

fn entry(id: &str, v: i64) -> NewEntry {
    NewEntry::new(EntryKey::new("food", id).unwrap(), Some(json!({ "v": v }))).unwrap()
}

fn waiting(replicas: u32, timeout: Duration) -> StoreOptions {
    StoreOptions::new()
        .wait_replicas(replicas)
        .wait_timeout(timeout)
}

/// Checks that `write` is of unknown outcome, answered within about the wait.
async fn unknown<T: std::fmt::Debug>(
    wait: Duration,
    write: impl std::future::Future<Output = enrich::Result<T>>,
) -> String {
    let started = Instant::now();
    let result = write.await;
    let took = started.elapsed();
    let err = result.expect_err("a write no replica confirmed was acknowledged");
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    assert!(took >= wait.mul_f64(0.9), "answered after {took:?}: {err}");
    assert!(took < wait + Duration::from_secs(2), "took {took:?}");
    err.to_string()
}

/// Single Redis with one replica: with the concern on, every kind of write is acknowledged
/// only once the replica has it (it is there the moment the call returns); with the replica
/// stopped, every write that changes something is of unknown outcome after the wait, though
/// the master applied it, and one that changes nothing says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_waits_for_its_replica() {
    let master = RedisServer::start();
    let replica = master.start_replica();
    let wait = Duration::from_millis(400);
    let store = store::open(&master.url(), &waiting(1, wait)).await.unwrap();
    let (mut on_master, mut on_replica) = (master.connection(), replica.connection());
    let mut same = |key: &str, present: bool| {
        let copy = get(&mut on_replica, key);
        assert_eq!(copy.is_some(), present, "{key}");
        assert_eq!(copy, get(&mut on_master, key), "{key}");
    };

    let alice = store.add(&user("alice", 1), false).await.unwrap();
    assert!(alice.created);
    same("enrich:user:alice", true);
    let again = store.add(&user("alice", 9), true).await.unwrap();
    assert!(!again.created && again.user == alice.user);
    store.update(&user("alice", 2)).await.unwrap();
    same("enrich:user:alice", true);
    let batch = [user("bob", 1), user("carol", 1)].map(|u| ImportUser::new(u, None, None).unwrap());
    store.import(&batch, true).await.unwrap();
    same("enrich:user:bob", true);
    same("enrich:user:carol", true);
    store.delete(&uid("bob")).await.unwrap();
    same("enrich:user:bob", false);
    store.add_entry(&entry("a", 1)).await.unwrap();
    store.update_entry(&entry("a", 2)).await.unwrap();
    same("enrich:object:food:a", true);
    store
        .upsert_entries(&[entry("b", 1), entry("c", 1)])
        .await
        .unwrap();
    store
        .import_entries(&[ImportEntry::from(entry("d", 1))])
        .await
        .unwrap();
    for id in ["b", "c", "d"] {
        same(&format!("enrich:object:food:{id}"), true);
    }
    store
        .delete_entry(&EntryKey::new("food", "a").unwrap())
        .await
        .unwrap();
    let keys = ["b", "zz"].map(|id| EntryKey::new("food", id).unwrap());
    assert_eq!(store.delete_entries(&keys).await.unwrap(), 1);
    same("enrich:object:food:a", false);
    same("enrich:object:food:b", false);
    // The writes made only for an entry's owner, too.
    let olga = uid("olga");
    for id in ["o", "p", "q"] {
        let owned = entry(id, 1).owned_by(Some(olga.clone()));
        store.add_entry(&owned).await.unwrap();
    }
    store
        .update_owned_entry(&entry("o", 2), &olga)
        .await
        .unwrap();
    same("enrich:object:food:o", true);
    let o = EntryKey::new("food", "o").unwrap();
    store.delete_owned_entry(&o, &olga).await.unwrap();
    same("enrich:object:food:o", false);

    let frozen = Frozen::new(&mut replica.connection());
    let said = unknown(wait, store.add(&user("dave", 1), false)).await;
    assert!(said.contains("only 0 of the 1 replicas"), "{said}");
    // Applied on the master all the same: unknown, not undone.
    assert!(get(&mut master.connection(), "enrich:user:dave").is_some());
    unknown(wait, store.update(&user("alice", 3))).await;
    unknown(wait, store.delete(&uid("carol"))).await;
    let batch = [ImportUser::new(user("erin", 1), None, None).unwrap()];
    unknown(wait, store.import(&batch, false)).await;
    unknown(wait, store.add_entry(&entry("e", 1))).await;
    unknown(wait, store.update_entry(&entry("c", 2))).await;
    unknown(wait, store.upsert_entries(&[entry("f", 1)])).await;
    let import = [entry("g", 1).into()];
    unknown(wait, async { Ok(store.import_entries(&import).await?) }).await;
    unknown(
        wait,
        store.delete_entry(&EntryKey::new("food", "c").unwrap()),
    )
    .await;
    unknown(
        wait,
        store.delete_entries(&[EntryKey::new("food", "d").unwrap()]),
    )
    .await;
    unknown(wait, store.update_owned_entry(&entry("p", 2), &olga)).await;
    let q = EntryKey::new("food", "q").unwrap();
    unknown(wait, store.delete_owned_entry(&q, &olga)).await;
    // Writes that change nothing are answered as what they are.
    let refused = (store.update_owned_entry(&entry("p", 3), &uid("bob")).await).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::NotOwner, "{refused}");
    let p = EntryKey::new("food", "p").unwrap();
    let refused = store.delete_owned_entry(&p, &uid("bob")).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::NotOwner, "{refused}");
    let absent = store.delete_owned_entry(&o, &olga).await.unwrap_err();
    assert_eq!(absent.kind(), ErrorKind::NotFound, "{absent}");
    let taken = store.add(&user("alice", 4), false).await.unwrap_err();
    assert_eq!(taken.kind(), ErrorKind::Conflict, "{taken}");
    let ghost = store.delete(&uid("ghost")).await.unwrap_err();
    assert_eq!(ghost.kind(), ErrorKind::NotFound, "{ghost}");
    let existing = store.add(&user("alice", 5), true).await.unwrap();
    assert!(!existing.created);
    assert_eq!(store.delete_entries(&keys).await.unwrap(), 0);

    // Writes at once share the connection WAIT holds: they take their turns, and every one is
    // still answered, as unknown, within the wait plus the store's response time.
    let started = Instant::now();
    let writes = (0..6).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.update(&user("alice", 10 + i)).await })
    });
    for write in futures::future::join_all(writes).await {
        let err = write.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    }
    let took = started.elapsed();
    assert!(took < wait + Duration::from_secs(4), "{took:?}");

    drop(frozen);
    // The replica catches up, and writes are acknowledged again.
    let frank = store.add(&user("frank", 1), false).await.unwrap();
    assert!(frank.created);
    same("enrich:user:frank", true);
    same("enrich:user:dave", true);
}

/// More replicas asked for than confirm: unknown too, naming how many did.
#[tokio::test]
async fn fewer_replicas_than_asked_for_is_unknown() {
    let master = RedisServer::start();
    let _replica = master.start_replica();
    let wait = Duration::from_millis(200);
    let store = store::open(&master.url(), &waiting(2, wait)).await.unwrap();
    let said = unknown(wait, store.add(&user("alice", 1), false)).await;
    assert!(said.contains("only 1 of the 2 replicas"), "{said}");
    let one = store::open(&master.url(), &waiting(1, wait)).await.unwrap();
    one.update(&user("alice", 2)).await.unwrap();
}

/// Stores without replicas refuse a write concern instead of pretending to keep it.
#[tokio::test]
async fn stores_without_replicas_refuse_a_write_concern() {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("file:{}", dir.path().join("u.db").display());
    for url in ["memory:", file.as_str()] {
        let err = store::open(url, &waiting(1, Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        assert!(err.to_string().contains("--wait-replicas"), "{err}");
        // Refused before anything was made.
        assert!(!dir.path().join("u.db").exists());
    }
    store::open(&file, &StoreOptions::new()).await.unwrap();
}

/// What one writer did with one key: the last value acknowledged, and the last one tried
/// (acknowledged or not: a write whose outcome is unknown may have been applied).
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    acked: Option<i64>,
    tried: i64,
}

type Ledger = HashMap<String, Seen>;

/// Writes versions 1, 2, 3… of `keys` with `write` until `stop`, one round at a time; what
/// was acknowledged and tried, per key. A failure is a store fault, or an update of a key
/// whose first write was never acknowledged (and maybe never applied) not finding it.
async fn writer<F, Fut>(keys: Vec<String>, stop: Arc<AtomicBool>, write: F) -> Ledger
where
    F: Fn(Vec<String>, i64) -> Fut,
    Fut: std::future::Future<Output = Vec<enrich::Result<()>>>,
{
    let mut ledger: Ledger = keys.iter().map(|k| (k.clone(), Seen::default())).collect();
    let mut v = 0;
    while !stop.load(Ordering::Relaxed) {
        v += 1;
        let results = write(keys.clone(), v).await;
        for (key, result) in keys.iter().zip(results) {
            let seen = ledger.get_mut(key).unwrap();
            seen.tried = v;
            match result {
                Ok(()) => seen.acked = Some(v),
                Err(err) => assert!(
                    err.is_store_fault()
                        || (seen.acked.is_none() && err.kind() == ErrorKind::NotFound),
                    "{key} v{v}: a failover is a store fault, not {err}"
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ledger
}

/// Each entry of `batch` with its own result: a batch fails or succeeds whole.
fn each(n: usize, result: enrich::Result<()>) -> Vec<enrich::Result<()>> {
    (0..n).map(|_| result.clone()).collect()
}

fn version(record: &Value) -> i64 {
    record["data"]["v"].as_i64().unwrap()
}

/// A replicated cluster under a burst of writes of every kind through the engine, with the
/// concern on: a master's replica falls behind (stopped, its link dropped) and the master is
/// killed; after the replica is promoted, every acknowledged write is there with its
/// acknowledged value (or a later one that was tried). Without the concern, the writes the
/// master acknowledged alone in those 300 ms would be lost. Until a
/// replica is back for the promoted master, its writes cannot be confirmed; once the killed
/// node rejoins as that replica, they are acknowledged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_the_kill_of_their_master() {
    let mut cluster = RedisCluster::start_replicated();
    let options = waiting(1, Duration::from_secs(1));
    let enricher = enrich::Enricher::new(store::open(&cluster.url(), &options).await.unwrap());
    let store: SharedStore = enricher.users();
    let stop = Arc::new(AtomicBool::new(false));
    let ids = |prefix: &str| (0..24).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();

    // Users one at a time, entries by batch, users by import batch: the single-key and the
    // per-node pipeline paths.
    let singles = tokio::spawn(writer(ids("u"), stop.clone(), {
        let store = store.clone();
        move |keys, v| {
            let store = store.clone();
            async move {
                let mut out = Vec::new();
                for id in keys {
                    let written = if v == 1 {
                        store.add(&user(&id, v), false).await.map(drop)
                    } else {
                        store.update(&user(&id, v)).await.map(drop)
                    };
                    out.push(written);
                }
                out
            }
        }
    }));
    let entries = tokio::spawn(writer(ids("e"), stop.clone(), {
        let store = store.clone();
        move |keys, v| {
            let store = store.clone();
            async move {
                let batch: Vec<NewEntry> = keys.iter().map(|id| entry(id, v)).collect();
                each(keys.len(), store.upsert_entries(&batch).await.map(drop))
            }
        }
    }));
    let imports = tokio::spawn(writer(ids("i"), stop.clone(), {
        let store = store.clone();
        move |keys, v| {
            let store = store.clone();
            async move {
                let batch: Vec<ImportUser> = (keys.iter())
                    .map(|id| ImportUser::new(user(id, v), None, None).unwrap())
                    .collect();
                each(keys.len(), store.import(&batch, true).await.map(drop))
            }
        }
    }));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = cluster.masters()[0];
    let replica = cluster.replica_of(killed);
    // The replica falls behind while the burst goes on, as a replica does: what the master
    // acknowledges from now on, the replica never gets.
    let frozen = Frozen::new(&mut cluster.node_connection(replica));
    drop_replicas(&cluster, killed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The burst ends with the kill: what was in flight then is of unknown outcome.
    stop.store(true, Ordering::Relaxed);
    cluster.kill(killed);
    let ledgers = [
        ("user", singles.await.unwrap()),
        ("entry", entries.await.unwrap()),
        ("import", imports.await.unwrap()),
    ];
    drop(frozen);
    let took = tokio::task::block_in_place(|| cluster.wait_promoted(replica));
    eprintln!("replica promoted {took:?} after the writers stopped");

    let fresh = store::open(&cluster.url(), &StoreOptions::new())
        .await
        .unwrap();
    let mut acked = 0;
    for (kind, ledger) in &ledgers {
        for (id, seen) in ledger {
            let stored = if *kind == "entry" {
                let key = EntryKey::new("food", id).unwrap();
                settled(|| fresh.get_entry(&key))
                    .await
                    .ok()
                    .map(|e| e.to_value())
            } else {
                let user = uid(id);
                settled(|| fresh.get(&user))
                    .await
                    .ok()
                    .map(|u| u.to_value())
            };
            let Some(acked_v) = seen.acked else {
                continue;
            };
            acked += 1;
            let stored =
                stored.unwrap_or_else(|| panic!("{kind} {id}: acknowledged v{acked_v}, lost"));
            let v = version(&stored);
            assert!(
                (acked_v..=seen.tried).contains(&v),
                "{kind} {id}: acknowledged v{acked_v}, tried up to v{}, stored v{v}",
                seen.tried
            );
        }
        let last = ledger.values().map(|s| s.acked.unwrap_or(0)).min().unwrap();
        let tried = ledger.values().map(|s| s.tried).max().unwrap();
        eprintln!("{kind}: every key acknowledged up to at least v{last}, tried up to v{tried}");
    }
    assert_eq!(acked, 3 * 24, "every key was acknowledged at least once");

    // Once the killed node is back, as the replica of the promoted one, every write is
    // acknowledged again, those of the promoted master's slots too.
    tokio::task::block_in_place(|| {
        cluster.restart(killed);
        cluster.wait_replicas_synced();
    });
    for id in ids("u") {
        store.update(&user(&id, 1_000)).await.unwrap();
    }
}

/// Makes master `node` of `cluster` drop the connections of its replicas, which reconnect
/// on their own unless they are stopped.
fn drop_replicas(cluster: &RedisCluster, node: usize) {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .exec(&mut cluster.node_connection(node))
        .unwrap();
}

/// A user id, not `not`, whose key node `node` of `cluster` serves.
fn user_of_node(cluster: &RedisCluster, node: usize, not: &str) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|id| {
            id != not && cluster.owner_of(cluster.slot_of(&format!("enrich:user:{id}"))) == node
        })
        .unwrap()
}

/// What the write concern is for. Its master's link to its replica is broken (the replica
/// stopped, the master dropping it, as a partition or a lagging replica would) when a master
/// acknowledges a write and dies: the replica promoted in its place never had it, and the
/// acknowledged write is gone. The same write with the concern on is reported of unknown
/// outcome instead, never acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_concern_a_failover_loses_an_acknowledged_write() {
    let mut cluster = RedisCluster::start_replicated();
    let url = cluster.url();
    let plain = store::open(&url, &StoreOptions::new()).await.unwrap();
    let wait = Duration::from_millis(300);
    let careful = store::open(&url, &waiting(1, wait)).await.unwrap();
    let master = cluster.masters()[0];
    let replica = cluster.replica_of(master);
    let lost = user_of_node(&cluster, master, "");
    let unsure = user_of_node(&cluster, master, &lost);
    // The replica must hold both before its link is broken: a loaded machine may take longer
    // than `wait` to confirm, which is not what this test is about.
    let settled_in = store::open(&url, &waiting(1, Duration::from_secs(10)))
        .await
        .unwrap();
    settled_in.add(&user(&lost, 1), false).await.unwrap();
    settled_in.add(&user(&unsure, 1), false).await.unwrap();

    let frozen = Frozen::new(&mut cluster.node_connection(replica));
    drop_replicas(&cluster, master);
    // Acknowledged by the master alone.
    let acknowledged = plain.update(&user(&lost, 2)).await.unwrap();
    assert_eq!(version(&acknowledged.to_value()), 2);
    // Not acknowledged: the replica did not confirm it.
    let said = unknown(wait, careful.update(&user(&unsure, 2))).await;
    assert!(said.contains("a failover may lose it"), "{said}");

    tokio::task::block_in_place(|| {
        cluster.kill(master);
        drop(frozen);
        let deadline = Instant::now() + Duration::from_secs(15);
        while cluster.role(replica) != "master" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if cluster.role(replica) != "master" {
            redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .arg("TAKEOVER")
                .exec(&mut cluster.node_connection(replica))
                .unwrap();
        }
        cluster.wait_promoted(replica);
    });
    let fresh = store::open(&url, &StoreOptions::new()).await.unwrap();
    let (lost_id, unsure_id) = (uid(&lost), uid(&unsure));
    let after = settled(|| fresh.get(&lost_id)).await.unwrap();
    assert_eq!(
        version(&after.to_value()),
        1,
        "the acknowledged v2 of {lost} survived: {after:?}"
    );
    let after = settled(|| fresh.get(&unsure_id)).await.unwrap();
    assert_eq!(version(&after.to_value()), 1, "{after:?}");
}

/// The command line and `enrich serve` take the flags and their environment variables: with
/// the replica stopped, a write exits non-zero saying its outcome is unknown; an import says
/// what it committed for sure; the server answers 504. A store without replicas refuses the
/// flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_serve_take_the_flags() {
    let master = RedisServer::start();
    let replica = master.start_replica();
    let dir = tempfile::tempdir().unwrap();
    let url = master.url();
    let base = ["--store", url.as_str(), "--wait-replicas", "1"];
    let run = |more: &[&str]| {
        let all: Vec<&str> = base.iter().chain(more).copied().collect();
        run_enrich(dir.path(), &all, "")
    };

    let out = run(&["users", "add", "alice", r#"{"v":1}"#]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(get(&mut replica.connection(), "enrich:user:alice").is_some());

    let frozen = Frozen::new(&mut replica.connection());
    for write in [
        &["users", "add", "bob", r#"{"v":1}"#][..],
        &["users", "update", "alice", r#"{"v":2}"#],
        &[
            "collections",
            "add",
            "food",
            "--id",
            "a",
            "--data",
            r#"{"v":1}"#,
        ],
    ] {
        let started = Instant::now();
        let out = run(&[&["--wait-timeout", "0.3"][..], write].concat());
        assert_eq!(code(&out), 1, "{write:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("only 0 of the 1 replicas"),
            "{}",
            stderr(&out)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    // From the environment, for an import: what was committed before, then why it stopped.
    let lines: String = (0..700)
        .map(|i| format!("{{\"id\":\"u{i}\",\"data\":{{\"i\":{i}}}}}\n"))
        .collect();
    let file = dir.path().join("users.ndjson");
    std::fs::write(&file, &lines).unwrap();
    let out = support::enrich_command(dir.path())
        .env("ENRICH_WAIT_REPLICAS", "1")
        .env("ENRICH_WAIT_TIMEOUT", "0.3")
        .args(["--store", &url, "users", "import", file.to_str().unwrap()])
        .output()
        .unwrap();
    let said = stderr(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(said.contains("imported: 0 created"), "{said}");
    assert!(said.contains("import stopped at line 1"), "{said}");
    assert!(said.contains("replicas"), "{said}");

    let (status, body) = serve_post_user(&url, "carol").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("WriteOutcomeUnknownException"), "{body}");
    drop(frozen);

    // `enrich run --users` imports with the concern too; with the replica back, it commits.
    let activity = dir.path().join("in.ndjson");
    std::fs::write(&activity, "{\"actor\":\"SU:u1\"}\n").unwrap();
    let out = run(&[
        "run",
        "--users",
        file.to_str().unwrap(),
        activity.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(r#""i":1"#), "{}", stdout(&out));
    assert!(get(&mut replica.connection(), "enrich:user:u699").is_some());

    for store in ["memory:", "file:x.db"] {
        let out = run_enrich(
            dir.path(),
            &[
                "--store",
                store,
                "--wait-replicas",
                "1",
                "users",
                "get",
                "a",
            ],
            "",
        );
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("--wait-replicas"), "{}", stderr(&out));
    }
    let out = run(&["--wait-timeout", "0", "users", "get", "a"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

/// `enrich --wait-replicas 1 --wait-timeout 0.3 serve` over `url`: the status and body of a
/// create of user `id`.
async fn serve_post_user(url: &str, id: &str) -> (u16, String) {
    use std::io::{BufRead, BufReader};
    let mut child = support::enrich_command(std::path::Path::new("."))
        .args([
            "--store",
            url,
            "--wait-replicas",
            "1",
            "--wait-timeout",
            "0.3",
        ])
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ENRICH_API_KEY", support::serve::KEY)
        .env("ENRICH_API_SECRET", support::serve::SECRET)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (found, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on http://".len()..];
                let _ = found.send(rest.split(',').next().unwrap().to_string());
            }
        }
    });
    let addr = address
        .recv_timeout(Duration::from_secs(20))
        .expect("serve started");
    let token = support::serve::sign(
        &json!({"resource": "users", "action": "*", "feed_id": "*"}),
        support::serve::SECRET,
    );
    let answer = reqwest::Client::new()
        .post(format!(
            "http://{addr}/api/v1.0/user/?api_key={}",
            support::serve::KEY
        ))
        .header("authorization", token)
        .header("stream-auth-type", "jwt")
        .body(format!(r#"{{"id":"{id}","data":{{}}}}"#))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body = answer.text().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    (status, body)
}

/// `read`'s answer once the store answers at all: right after a promotion a node of the old
/// map may still be asked for a moment (unavailable), which is availability, not what these
/// tests check; any other answer, an error included, is returned as it is. 10 s at most.
async fn settled<T, F, Fut>(mut read: F) -> enrich::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = enrich::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match read().await {
            Err(err) if err.kind() == ErrorKind::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answer => return answer,
        }
    }
}
