//! The engine on a private three-master Redis Cluster: the golden run through the CLI, reads
//! per node from each node's own statistics, coherence across enrichers, a slot migration
//! under reads and under writes, a master that hangs, and a killed master.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use enrich::store::{self, SharedStore, StoreOptions};
use enrich::{Depth, Enricher, NewUser, OnStoreError, UserId};
use serde_json::{Value, json};
use support::backends::start_cluster as start;
use support::{RedisCluster, actor, fixture, run_enrich, watched_enricher};

async fn open(cluster: &RedisCluster) -> SharedStore {
    store::open(&cluster.url(), &StoreOptions::new())
        .await
        .unwrap()
}

fn user(id: &str, v: i64) -> NewUser {
    NewUser::new(id, Some(json!({ "v": v }))).unwrap()
}

fn id(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn enrich(dir: &Path, args: &[&str]) -> std::process::Output {
    run_enrich(dir, args, "")
}

/// Adds `n` users `prefix0…` at version `v`; their names.
async fn add_users(store: &SharedStore, prefix: &str, n: usize, v: i64) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for name in &names {
        store.add(&user(name, v), false).await.unwrap();
    }
    names
}

/// The node index serving each id, from the nodes themselves.
fn owners(cluster: &RedisCluster, ids: &[String]) -> Vec<usize> {
    ids.iter()
        .map(|i| cluster.owner_of(cluster.slot_of(&format!("enrich:user:{i}"))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_run_through_the_cli() {
    let cluster = start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    for step in [&["users", "add", "dan"][..], &["users", "delete", "dan"]] {
        let args: Vec<&str> = ["--store", url.as_str()]
            .into_iter()
            .chain(step.iter().copied())
            .collect();
        let out = enrich(dir.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (users, activities) = (fixture("users.ndjson"), fixture("activities.ndjson"));
    let out = enrich(
        dir.path(),
        &["--store", &url, "run", "--users", &users, &activities],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read_to_string(fixture("activities.enriched.ndjson")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);

    // A malformed cluster URL is a usage error that names what is wrong.
    let out = enrich(
        dir.path(),
        &[
            "--store",
            "redis+cluster://:pw@127.0.0.1:1,127.0.0.1:x",
            "users",
            "get",
            "a",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid port \"x\""), "{err}");
    assert!(!err.contains("pw"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_page_is_one_read_per_node_and_each_id_is_read_once() {
    let cluster = start().await;
    let store = open(&cluster).await;
    let names = add_users(&store, "p", 60, 1).await;
    let mut ids: Vec<String> = names.clone();
    ids.extend((0..9).map(|i| format!("absent{i}")));
    let owner = owners(&cluster, &ids);
    for node in 0..3 {
        assert!(owner.contains(&node), "node {node} serves none of the page");
    }
    cluster.reset_stats();
    let enricher = Enricher::builder(store.clone()).coherent(false).build();
    let mut page: Vec<Value> = ids
        .chunks(3)
        .map(|c| json!({"actor": format!("SU:{}", c[0]), "object": format!("SU:{}", c.last().unwrap())}))
        .collect();
    let mut all = page.clone();
    let stats = enricher
        .enrich_values(&mut page, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(stats.store_calls, 1);
    // And the whole id list in one store call, counted per node.
    cluster.reset_stats();
    let found = store
        .get_many(&ids.iter().map(|i| id(i)).collect::<Vec<_>>())
        .await
        .unwrap();
    for (i, answer) in found.iter().enumerate() {
        match answer {
            Some(user) => assert_eq!(user.parse().unwrap().id, ids[i]),
            None => assert!(ids[i].starts_with("absent"), "{} missing", ids[i]),
        }
    }
    for node in 0..3 {
        let on_node = owner.iter().filter(|o| **o == node).count() as u64;
        let evals = cluster.stat(node, "cmdstat_eval_ro:calls=");
        let mgets = cluster.stat(node, "cmdstat_mget:calls=");
        let gets = cluster.stat(node, "cmdstat_get:calls=");
        let looked = cluster.stat(node, "keyspace_hits:") + cluster.stat(node, "keyspace_misses:");
        eprintln!(
            "node {node}: {on_node} ids, EVAL_RO {evals}, MGET {mgets}, GET inside the script {gets}, keyspace lookups {looked}"
        );
        assert_eq!(evals, 1, "node {node}: one read command");
        assert_eq!(mgets, 0, "node {node}: no fallback");
        assert_eq!(looked, on_node, "node {node}: each id looked up once");
    }
    // Served from the L1 the second time: no reads at all.
    cluster.reset_stats();
    let stats = enricher
        .enrich_values(&mut all, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(stats.store_calls, 0, "{stats:?}");
    for node in 0..3 {
        assert_eq!(cluster.stat(node, "cmdstat_eval_ro:calls="), 0);
    }
}

/// A key of ours holding a hash (something else wrote it) is nil to `MGET`, as a key that
/// does not exist is; the read script tells them apart: a fault naming the key, never a
/// missing user, and the other users of the page are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_is_a_fault_not_a_missing_user() {
    let cluster = start().await;
    let store = open(&cluster).await;
    let names = add_users(&store, "w", 12, 1).await;
    let key = "enrich:user:hashed";
    redis::cmd("HSET")
        .arg(key)
        .arg("name")
        .arg("H")
        .exec(&mut cluster.node_connection(cluster.owner_of(cluster.slot_of(key))))
        .unwrap();
    let mut ids: Vec<UserId> = names.iter().map(|n| id(n)).collect();
    ids.push(id("hashed"));
    ids.push(id("absent"));
    let read = store.get_many_each(&ids).await;
    for (answer, name) in read.iter().zip(&names) {
        assert!(matches!(answer, Ok(Some(_))), "{name}: {answer:?}");
    }
    match &read[names.len()] {
        Err(err) => assert!(
            err.to_string()
                .contains("another type than a string under enrich:user:hashed (WRONGTYPE)"),
            "{err}"
        ),
        other => panic!("the hash read as {other:?}"),
    }
    assert!(
        matches!(read[names.len() + 1], Ok(None)),
        "{:?}",
        read.last()
    );
}

async fn enricher(cluster: &RedisCluster) -> Enricher {
    watched_enricher(&cluster.url(), Duration::from_secs(10)).await
}

async fn until(enricher: &Enricher, id: &str, limit: Duration, want: i64) -> Duration {
    let started = Instant::now();
    loop {
        let seen = actor(enricher, id).await;
        if seen["data"]["v"].as_i64() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{id} still {seen} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_other_enrichers_and_a_lost_stream_bypasses_the_cache() {
    let cluster = start().await;
    let a = enricher(&cluster).await;
    let b = enricher(&cluster).await;
    let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
    for name in &names {
        a.users().add(&user(name, 0), false).await.unwrap();
        assert_eq!(actor(&b, name).await["data"]["v"], 0);
    }
    // Every user, whichever master holds it, is invalidated in B by a write through A.
    for v in 1..=3 {
        for name in &names {
            a.users().update(&user(name, v)).await.unwrap();
            until(&b, name, Duration::from_secs(5), v).await;
        }
    }
    // Kill the tracking connections on one master only, then write a user of that master at
    // once: B must not serve its cached copy.
    let owner = owners(&cluster, &names);
    for round in 10..13 {
        let node = usize::try_from(round).unwrap() % 3;
        let name = &names[owner.iter().position(|o| *o == node).unwrap()];
        let mut conn = cluster.node_connection(node);
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
        let killed = list
            .lines()
            .filter(|l| l.contains("name=enrich-tracking"))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(|id| {
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .exec(&mut conn)
                    .unwrap()
            })
            .count();
        assert_eq!(
            killed, 2,
            "one tracking connection per enricher on node {node}"
        );
        a.users().update(&user(name, round)).await.unwrap();
        let took = until(&b, name, Duration::from_secs(1), round).await;
        eprintln!("after a killed stream on node {node}, the new value was served in {took:?}");
        assert!(b.wait_for_cache(Duration::from_secs(5)).await);
        assert_eq!(actor(&b, name).await["data"]["v"], round);
    }
}

/// Moves the slot of each of `names`' users, one at a time (keys moved 50 ms apart, 100 ms
/// between slots), from its master to the next, while the caller's tasks go on.
async fn migrate_users(cluster: RedisCluster, names: &[String]) -> RedisCluster {
    let moves: Vec<(u16, usize)> = (names.iter())
        .map(|n| {
            let slot = cluster.slot_of(&format!("enrich:user:{n}"));
            (slot, cluster.owner_of(slot))
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for (slot, from) in moves {
            cluster.migrate_slot(slot, from, (from + 1) % 3, Duration::from_millis(50));
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    })
    .await
    .unwrap()
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_under_reads_gives_no_wrong_answer() {
    let cluster = start().await;
    let store = open(&cluster).await;
    let names = add_users(&store, "m", 40, 7).await;
    let ids: Vec<UserId> = names.iter().map(|n| id(n)).collect();
    let enricher = enricher(&cluster).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..2 {
        let (store, enricher, ids, names, stop) = (
            store.clone(),
            enricher.clone(),
            ids.clone(),
            names.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let (mut reads, mut faults) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                if r == 0 {
                    match store.get_many(&ids).await {
                        Ok(found) => {
                            for (answer, name) in found.iter().zip(&names) {
                                let user = answer
                                    .as_ref()
                                    .unwrap_or_else(|| panic!("{name} read as missing"));
                                assert_eq!(user.parse().unwrap().id, *name);
                            }
                        }
                        Err(err) => {
                            assert!(err.is_store_fault(), "{err:?}");
                            faults += 1;
                        }
                    }
                } else {
                    let mut page: Vec<Value> = names
                        .iter()
                        .map(|n| json!({"actor": format!("SU:{n}")}))
                        .collect();
                    match enricher.enrich_values(&mut page, Depth::TopLevel).await {
                        Ok(_) => {
                            for (doc, name) in page.iter().zip(&names) {
                                assert_eq!(doc["actor"]["id"], *name, "{doc}");
                            }
                        }
                        Err(err) => {
                            assert!(err.is_store_fault(), "{err:?}");
                            faults += 1;
                        }
                    }
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (reads, faults)
        }));
    }
    // Move the slots of the first six users, one at a time, to the next master.
    let cluster = migrate_users(cluster, &names[..6]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let (reads, faults) = reader.await.unwrap();
        eprintln!("{reads} reads during the migration, {faults} store faults");
        assert!(reads > 10);
        assert!(faults * 10 <= reads, "{faults} faults in {reads} reads");
    }
    // After the move: the map is refreshed and the cheap path is back.
    store.get_many(&ids).await.unwrap();
    cluster.reset_stats();
    let found = store.get_many(&ids).await.unwrap();
    assert!(found.iter().all(Option::is_some));
    for node in 0..3 {
        assert!(cluster.stat(node, "cmdstat_eval_ro:calls=") <= 1);
        assert_eq!(cluster.stat(node, "cmdstat_mget:calls="), 0, "node {node}");
    }
}

/// Single writes while their slots move: a write the old owner refuses (`ASK` for a key that
/// has moved already, `MOVED` once the slot is the new owner's) was not run there, and is sent
/// where the key is now. Every write is answered, none of unknown outcome; a refused one (the
/// cluster may say `TRYAGAIN` for a moment) changed nothing; each user ends as last written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writes_during_a_slot_migration_follow_the_keys() {
    let cluster = start().await;
    let store = open(&cluster).await;
    let names = add_users(&store, "w", 6, 0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, names, stop) = (store.clone(), names.clone(), stop.clone());
        async move {
            // What each user holds: the version last applied, `None` once deleted.
            let mut held: Vec<Option<i64>> = vec![Some(0); names.len()];
            let (mut writes, mut refused) = (0u64, 0u64);
            let mut v = 0;
            let check = |result: enrich::Result<()>, refused: &mut u64| -> bool {
                match result {
                    Ok(()) => true,
                    Err(err) => {
                        // An answer that says nothing was applied, never a lost one.
                        assert_eq!(err.kind(), enrich::ErrorKind::Unavailable, "{err}");
                        *refused += 1;
                        false
                    }
                }
            };
            while !stop.load(Ordering::Relaxed) {
                for (k, name) in names.iter().enumerate() {
                    v += 1;
                    writes += 1;
                    // Updates, and every third write a delete and a create: the create of a
                    // key gone from the old owner is what `ASK` sends to the new one.
                    match held[k] {
                        Some(_) if v % 3 == 0 => {
                            if check(store.delete(&id(name)).await, &mut refused) {
                                held[k] = None;
                            }
                        }
                        Some(_) => {
                            let updated = store.update(&user(name, v)).await.map(drop);
                            if check(updated, &mut refused) {
                                held[k] = Some(v);
                            }
                        }
                        None => {
                            let added = store.add(&user(name, v), false).await.map(drop);
                            if check(added, &mut refused) {
                                held[k] = Some(v);
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (held, writes, refused)
        }
    });
    let cluster = migrate_users(cluster, &names).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (held, writes, refused) = writer.await.unwrap();
    let asking: u64 = (0..3)
        .map(|i| cluster.stat(i, "cmdstat_asking:calls="))
        .sum();
    eprintln!("{writes} writes during the migration, {refused} refused, {asking} ASKING");
    assert!(writes > 60, "{writes}");
    // Some writes met a key mid-move, and were sent on to its new owner.
    assert!(asking > 0, "no write met a key mid-move");
    assert!(refused * 10 <= writes, "{refused} refused of {writes}");
    for (name, held) in names.iter().zip(held) {
        let stored = store.get_many(&[id(name)]).await.unwrap().pop().unwrap();
        let v = stored.map(|u| u.to_value()["data"]["v"].as_i64().unwrap());
        assert_eq!(v, held, "{name}");
    }
    drop(cluster);
}

/// The TCP connections open from this machine to local port `port`, by the kernel's table.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    (table.lines().skip(1))
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // The remote address, and the state: 01 is ESTABLISHED.
            fields[2].rsplit(':').next() == Some(&format!("{port:04X}")) && fields[3] == "01"
        })
        .count()
}

/// A master that hangs, after its connection lost a write: the writes that come next, all
/// at once, wait for one connection attempt together (the node accepts connections and never
/// answers them), not one socket each; and since none of them was sent, none is of unknown
/// outcome when the attempt times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_hung_master_share_one_connection_attempt() {
    let mut cluster = start().await;
    let store = open(&cluster).await;
    let names = add_users(&store, "h", 30, 1).await;
    let owner = owners(&cluster, &names);
    let hung: Vec<String> = (names.iter().zip(&owner))
        .filter(|(_, o)| **o == 2)
        .map(|(n, _)| n.clone())
        .collect();
    let port = cluster.ports()[2];
    cluster.freeze(2);
    let lost = store.update(&user(&hung[0], 2)).await.unwrap_err();
    assert_eq!(lost.kind(), enrich::ErrorKind::OutcomeUnknown, "{lost}");
    // The Redis client's own connections, and one of ours for reading the slot map.
    let before = connections_to(port);
    let writes: Vec<_> = (0..40)
        .map(|i| {
            let (store, name) = (store.clone(), hung[i % hung.len()].clone());
            tokio::spawn(async move { store.update(&user(&name, 3)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = connections_to(port);
    eprintln!("{open} connections to the hung node while 40 writes wait for it, {before} before");
    assert!(
        open <= before + 1,
        "{open} connections to the hung node, {before} before"
    );
    for write in writes {
        let err = write.await.unwrap().unwrap_err();
        assert!(err.is_store_fault(), "{err:?}");
        assert_ne!(err.kind(), enrich::ErrorKind::OutcomeUnknown, "{err}");
    }
    cluster.thaw(2);
}

/// A write given up while its connection was being made (its caller gone, as a read moved to
/// another node or a slot map read that heard enough go) is not sent, and leaves the attempt
/// to finish on its own: the next write, after the attempt's connect timeout, finds the
/// connection, not that timeout long past.
// On one thread, so that nothing else runs between the one poll and the drop.
#[tokio::test]
async fn a_connection_attempt_given_up_is_finished_for_the_next_write() {
    let cluster = start().await;
    open(&cluster)
        .await
        .add(&user("g", 1), false)
        .await
        .unwrap();
    let options = StoreOptions::new().connect_timeout(Duration::from_millis(300));
    let store = store::open(&cluster.url(), &options).await.unwrap();
    // Its first write: polled once, which starts connecting, then given up.
    let second = user("g", 2);
    let mut given_up = Box::pin(store.update(&second));
    assert!(futures::poll!(&mut given_up).is_pending());
    drop(given_up);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = store
        .get_many(&[id("g")])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(
        held.to_value()["data"]["v"],
        1,
        "the write given up was sent"
    );
    store.update(&user("g", 3)).await.unwrap();
}

/// A master restarted on its address (empty: no persistence here) answers the first read
/// after it, on a new connection: its users are missing, not a store fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_master_restarts_is_answered() {
    let mut cluster = start().await;
    let store = open(&cluster).await;
    let names = add_users(&store, "r", 30, 1).await;
    let owner = owners(&cluster, &names);
    let ids: Vec<UserId> = names.iter().map(|n| id(n)).collect();
    assert!(
        store
            .get_many(&ids)
            .await
            .unwrap()
            .iter()
            .all(Option::is_some)
    );
    cluster.kill(2);
    cluster.restart(2);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_ok();
        cluster
    })
    .await
    .unwrap();
    let read = store.get_many_each(&ids).await;
    for ((answer, name), node) in read.iter().zip(&names).zip(&owner) {
        match answer {
            Ok(found) => assert_eq!(found.is_some(), *node != 2, "{name}"),
            Err(err) => panic!("{name} on node {node}: {err}"),
        }
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_makes_only_its_users_unavailable() {
    let mut cluster = start().await;
    let store = open(&cluster).await;
    let names = add_users(&store, "k", 30, 1).await;
    let owner = owners(&cluster, &names);
    let by_node: HashMap<usize, usize> = owner.iter().fold(HashMap::new(), |mut m, o| {
        *m.entry(*o).or_default() += 1;
        m
    });
    assert_eq!(by_node.len(), 3);
    let strict = Enricher::new(store.clone());
    let lenient = Enricher::builder(store.clone())
        .on_store_error(OnStoreError::ServeFromCache)
        .build();
    cluster.kill(2);
    let page = || -> Vec<Value> {
        names
            .iter()
            .map(|n| json!({"actor": format!("SU:{n}")}))
            .collect()
    };

    let started = Instant::now();
    let err = strict
        .enrich_values(&mut page(), Depth::TopLevel)
        .await
        .unwrap_err();
    assert!(err.is_store_fault(), "{err:?}");
    eprintln!("strict page failed in {:?}: {err}", started.elapsed());

    let mut docs = page();
    let started = Instant::now();
    let stats = lenient
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap();
    eprintln!("lenient page answered in {:?}", started.elapsed());
    for ((doc, name), node) in docs.iter().zip(&names).zip(&owner) {
        let actor = &doc["actor"];
        assert_ne!(actor["error"], "ReferenceNotFound", "{name}: {actor}");
        if *node == 2 {
            assert_eq!(actor["error"], "ReferenceUnavailable", "{name}: {actor}");
        } else {
            assert_eq!(actor["id"], *name, "{actor}");
            assert_eq!(actor["data"]["v"], 1);
        }
    }
    assert_eq!(stats.unavailable as usize, by_node[&2]);
    assert_eq!(stats.missing, 0);
    // A single read of a user on the dead master is a store fault, never "not found".
    let lost = &names[owner.iter().position(|o| *o == 2).unwrap()];
    let err = store.get(&id(lost)).await.unwrap_err();
    assert!(err.is_store_fault(), "{err:?}");
    // A write to it is a store fault. The first may be sent on the connection the node
    // closed as it died, and be of unknown outcome (a closed connection does not say whether
    // what was sent on it arrived); the next cannot connect, so nothing is sent: unavailable.
    let first = store.update(&user(lost, 2)).await.unwrap_err();
    assert!(first.is_store_fault(), "{first}");
    for _ in 0..3 {
        let err = store.update(&user(lost, 2)).await.unwrap_err();
        assert_eq!(err.kind(), enrich::ErrorKind::Unavailable, "{err}");
    }
    let alive = &names[owner.iter().position(|o| *o != 2).unwrap()];
    store.update(&user(alive, 2)).await.unwrap();
}
