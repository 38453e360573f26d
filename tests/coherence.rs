//! Coherence between enrichers that share one Redis, each with its own connections and L1, and
//! what happens to their caches when the invalidation stream or the server goes away.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use enrich::store::{self, StoreOptions};
use enrich::{Depth, Enricher, NewUser, UserId};
use serde_json::{Value, json};
use support::{RedisServer, actor, watched_enricher};

async fn enricher(server: &RedisServer) -> Enricher {
    watched_enricher(&server.url(), Duration::from_secs(5)).await
}

/// Polls `enricher` until `id` satisfies `done`; how long it took, or a panic after `limit`.
async fn until(
    enricher: &Enricher,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let seen = actor(enricher, id).await;
        if done(&seen) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{id} still {seen} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn version(user: &Value) -> i64 {
    user["data"]["v"].as_i64().unwrap_or(-1)
}

fn user(id: &str, v: i64) -> NewUser {
    NewUser::new(id, Some(json!({ "v": v }))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_enricher_reach_the_others() {
    let server = RedisServer::start();
    let a = enricher(&server).await;
    let b = enricher(&server).await;
    a.users().add(&user("u", 0), false).await.unwrap();
    assert_eq!(version(&actor(&b, "u").await), 0);
    // B now serves u from its L1; each write through A must replace it.
    let mut latencies = Vec::new();
    for v in 1..=1000 {
        a.users().update(&user("u", v)).await.unwrap();
        latencies.push(until(&b, "u", Duration::from_secs(5), |u| version(u) == v).await);
    }
    latencies.sort();
    eprintln!(
        "visibility of a write in another enricher: p50 {:?}, p99 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies[latencies.len() - 1]
    );
    a.users()
        .delete(&UserId::parse("u").unwrap())
        .await
        .unwrap();
    until(&b, "u", Duration::from_secs(5), |u| {
        u["error"] == "ReferenceNotFound"
    })
    .await;
    // A negative entry is replaced by a creation like any update.
    assert_eq!(actor(&b, "late").await["error"], "ReferenceNotFound");
    a.users().add(&user("late", 7), false).await.unwrap();
    until(&b, "late", Duration::from_secs(5), |u| version(u) == 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_outside_the_engine_are_seen_through_tracking() {
    let server = RedisServer::start();
    let b = enricher(&server).await;
    let users = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let stored = users.add(&user("ext", 1), false).await.unwrap().user;
    assert_eq!(version(&actor(&b, "ext").await), 1);
    let mut conn = server.connection();
    let edited = stored.as_str().replace(r#""v":1"#, r#""v":2"#);
    redis::cmd("SET")
        .arg("enrich:user:ext")
        .arg(&edited)
        .exec(&mut conn)
        .unwrap();
    until(&b, "ext", Duration::from_secs(5), |u| version(u) == 2).await;
    redis::cmd("FLUSHDB").exec(&mut conn).unwrap();
    until(&b, "ext", Duration::from_secs(5), |u| {
        u["error"] == "ReferenceNotFound"
    })
    .await;
}

/// The id of the tracking connection, from the server's client list.
fn tracking_client(server: &RedisServer) -> Option<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.connection())
        .unwrap();
    list.lines()
        .find(|l| l.contains("name=enrich-tracking"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
}

/// An enricher without an L1 has nothing to keep coherent: it opens no tracking connection
/// and is never bypassed waiting for one (with an L1 it is, until its stream is up, and
/// never uses the L1 without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enricher_without_an_l1_watches_nothing() {
    let server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let uncached = Enricher::builder(store.clone())
        .cache(enrich::CacheConfig::disabled())
        .build();
    assert!(!uncached.cache_stats().bypassed);
    assert!(uncached.wait_for_cache(Duration::ZERO).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tracking_client(&server).is_none(), "a tracking connection");
    uncached.users().add(&user("n", 1), false).await.unwrap();
    assert_eq!(version(&actor(&uncached, "n").await), 1);

    // Its stream may come up before the first look (a loaded machine's scheduling decides),
    // but the L1 is never used without it: the connection is named before tracking is on,
    // and the bypass ends only once tracking is on.
    let cached = Enricher::new(store);
    if !cached.cache_stats().bypassed {
        assert!(
            tracking_client(&server).is_some(),
            "cached before its stream is up"
        );
    }
    assert!(cached.wait_for_cache(Duration::from_secs(5)).await);
    assert!(tracking_client(&server).is_some(), "no tracking connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stream_bypasses_the_cache_until_it_is_back() {
    let server = RedisServer::start();
    let a = enricher(&server).await;
    let b = enricher(&server).await;
    a.users().add(&user("k", 1), false).await.unwrap();
    assert_eq!(version(&actor(&b, "k").await), 1);
    for round in 2..6 {
        assert!(tracking_client(&server).is_some(), "no tracking connection");
        // Kill every tracking connection, then write at once: the write's announcement is
        // lost for B, which must still serve the new value.
        let mut conn = server.connection();
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
        for id in list
            .lines()
            .filter(|l| l.contains("name=enrich-tracking"))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        {
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .exec(&mut conn)
                .unwrap();
        }
        a.users().update(&user("k", round)).await.unwrap();
        let took = until(&b, "k", Duration::from_secs(1), |u| version(u) == round).await;
        eprintln!("after a killed stream, the new value was served in {took:?}");
        // And the stream comes back by itself, with the cache in use again.
        assert!(b.wait_for_cache(Duration::from_secs(5)).await);
        assert_eq!(version(&actor(&b, "k").await), round);
    }
}

/// An enricher built outside any runtime (before the service's starts) is watched all the
/// same: a write made elsewhere is served, never the value its L1 held.
#[test]
fn an_enricher_built_outside_a_runtime_hears_of_writes() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime
        .block_on(store::open(&server.url(), &StoreOptions::new()))
        .unwrap();
    let b = Enricher::new(store.clone());
    runtime.block_on(async {
        assert!(
            b.wait_for_cache(Duration::from_secs(5)).await,
            "never watched"
        );
        store.add(&user("out", 1), false).await.unwrap();
        assert_eq!(version(&actor(&b, "out").await), 1);
        // Through another store: b's L1 learns of it only from Redis.
        let other = store::open(&server.url(), &StoreOptions::new())
            .await
            .unwrap();
        other.update(&user("out", 2)).await.unwrap();
        until(&b, "out", Duration::from_secs(5), |u| version(u) == 2).await;
        assert!(!b.cache_stats().bypassed);
    });
    drop(b);
}

/// `SWAPDB` changes every key without a write Redis announces; the README's remedy, closing
/// the tracking connections, has every L1 serve the swapped-in database at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_database_is_served_once_the_tracking_connections_are_closed() {
    let server = RedisServer::start();
    let b = enricher(&server).await;
    let stored = (b.users().add(&user("sw", 1), false).await.unwrap()).user;
    assert_eq!(version(&actor(&b, "sw").await), 1);
    let mut conn = server.connection();
    redis::cmd("SELECT").arg(1).exec(&mut conn).unwrap();
    redis::cmd("SET")
        .arg("enrich:user:sw")
        .arg(stored.as_str().replace(r#""v":1"#, r#""v":2"#))
        .exec(&mut conn)
        .unwrap();
    redis::cmd("SWAPDB").arg(0).arg(1).exec(&mut conn).unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    let ids: Vec<&str> = (list.lines())
        .filter(|l| l.contains("name=enrich-tracking"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(ids.len(), 1, "{list}");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(ids[0])
        .exec(&mut conn)
        .unwrap();
    until(&b, "sw", Duration::from_secs(1), |u| version(u) == 2).await;
    assert!(b.wait_for_cache(Duration::from_secs(5)).await);
    assert_eq!(version(&actor(&b, "sw").await), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_never_leaves_an_overwritten_value_cached() {
    let mut server = RedisServer::with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let a = enricher(&server).await;
    let b = enricher(&server).await;
    a.users().add(&user("r", 1), false).await.unwrap();
    assert_eq!(version(&actor(&b, "r").await), 1);
    server.stop();
    // Once B notices that it cannot hear, reads fail rather than serve what may be stale.
    let noticed = Instant::now();
    while !b.cache_bypassed() {
        assert!(
            noticed.elapsed() < Duration::from_secs(5),
            "the lost stream went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut docs = vec![json!({"actor": "SU:r"})];
    let err = b
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap_err();
    assert!(err.is_store_fault(), "{err:?}");
    server.restart();
    // Overwritten while B was reconnecting, by a writer B never hears from.
    let mut writer = None;
    for _ in 0..100 {
        if let Ok(store) = store::open(&server.url(), &StoreOptions::new()).await {
            writer = Some(store);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.unwrap().update(&user("r", 2)).await.unwrap();
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let mut docs = vec![json!({"actor": "SU:r"})];
        if b.enrich_values(&mut docs, Depth::TopLevel).await.is_ok() {
            seen.push(version(&docs[0]["actor"]));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|v| *v == 2),
        "served an overwritten value: {seen:?}"
    );
    drop(a);
}

/// Every acknowledged write of one user, (version, when), in order.
type WriteLog = std::sync::Mutex<Vec<(i64, Instant)>>;

/// Readers and writers at once over a real server: each write stores a higher version; a
/// reader's versions never go backwards, and once a write is acknowledged and the bound has
/// passed, nobody reads an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_versions_never_go_backwards() {
    const USERS: usize = 8;
    const BOUND: Duration = Duration::from_millis(500);
    let server = RedisServer::start();
    let writer = enricher(&server).await;
    let readers = [enricher(&server).await, enricher(&server).await];
    for u in 0..USERS {
        writer
            .users()
            .add(&user(&format!("s{u}"), 0), false)
            .await
            .unwrap();
    }
    // acknowledged[u]: every acknowledged write of user u, (version, when), in order.
    let acknowledged: Arc<Vec<WriteLog>> = Arc::new(
        (0..USERS)
            .map(|_| std::sync::Mutex::new(vec![(0, Instant::now())]))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (r, reader) in readers.iter().enumerate() {
        for t in 0..2 {
            let reader = reader.clone();
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            let reads = reads.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = [0i64; USERS];
                let mut i = r * 7 + t;
                while !stop.load(Ordering::Relaxed) {
                    let u = i % USERS;
                    i += 1;
                    // What must be visible: the last write acknowledged more than BOUND ago.
                    let floor = {
                        let writes = acknowledged[u].lock().unwrap();
                        let settled = writes.partition_point(|(_, at)| at.elapsed() > BOUND);
                        settled.checked_sub(1).map_or(0, |i| writes[i].0)
                    };
                    let seen = version(&actor(&reader, &format!("s{u}")).await);
                    assert!(seen >= last[u], "s{u} went back from {} to {seen}", last[u]);
                    assert!(
                        seen >= floor,
                        "s{u} served {seen}, older than acknowledged {floor}"
                    );
                    last[u] = seen;
                    reads.fetch_add(1, Ordering::Relaxed);
                    // A request handler between reads: a read served by the L1 never waits, so
                    // without this the readers would starve the connections' own tasks.
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    let started = Instant::now();
    let mut v = 0;
    while started.elapsed() < Duration::from_secs(3) {
        v += 1;
        for u in 0..USERS {
            writer
                .users()
                .update(&user(&format!("s{u}"), v))
                .await
                .unwrap();
            acknowledged[u].lock().unwrap().push((v, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!(
        "{} reads across {v} rounds of writes",
        reads.load(Ordering::Relaxed)
    );
    assert!(reads.load(Ordering::Relaxed) > 100);
}
