//! What the write concern costs: the same writes with `wait_replicas` 0 and 1, one beside the
//! other in the same run, on a single Redis with one replica and on a cluster of three masters
//! with one replica each. Prints a Markdown table; under `cargo test` it does nothing.
//!
//! `WC_USERS=N` imports N users (10,000 by default); `WC_WRITES=N` makes N single writes
//! (2,000 by default).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use enrich::NewUser;
use enrich::batch::import_users;
use enrich::store::{self, SharedStore, StoreOptions};
use support::{RedisCluster, RedisServer};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The users file of an import: `users` lines.
fn lines(users: usize) -> Vec<u8> {
    (0..users)
        .map(|i| format!("{{\"id\":\"u{i}\",\"data\":{{\"name\":\"User {i}\",\"i\":{i}}}}}\n"))
        .collect::<String>()
        .into_bytes()
}

/// How long `enrich users import --override-existing` of `file` takes, through the import the
/// CLI runs (batches of 500).
async fn import(store: &SharedStore, file: &[u8]) -> Duration {
    let started = Instant::now();
    let summary = import_users(&**store, file, true, |_| {}).await.unwrap();
    assert_eq!(summary.rejected, 0);
    started.elapsed()
}

/// How long `n` updates take, `at_once` of them in flight at a time.
async fn updates(store: &SharedStore, n: usize, at_once: usize) -> Duration {
    let started = Instant::now();
    let workers = (0..at_once).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            for i in (w..n).step_by(at_once) {
                let user =
                    NewUser::new(&format!("u{}", i % 1000), Some(serde_json::json!({"v": i})));
                store.update(&user.unwrap()).await.unwrap();
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.unwrap();
    }
    started.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let (users, writes) = (env("WC_USERS", 10_000), env("WC_WRITES", 2_000));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let master = RedisServer::start();
    let _replica = master.start_replica();
    let cluster = RedisCluster::start_replicated();
    let file = Arc::new(lines(users));
    println!("| store | writes | wait 0 | wait 1 | ratio |");
    println!("|---|---|---|---|---|");
    for (name, url) in [
        ("Redis + 1 replica", master.url()),
        ("Cluster, 3 masters + 3 replicas", cluster.url()),
    ] {
        let open = |n| {
            let options = StoreOptions::new().wait_replicas(n);
            let url = url.clone();
            async move { store::open(&url, &options).await.unwrap() }
        };
        let (off, on) = rt.block_on(async { (open(0).await, open(1).await) });
        type Run<'a> = Box<dyn Fn(&SharedStore) -> Duration + 'a>;
        let runs: [(String, Run<'_>); 3] = [
            (
                format!("import of {users} users (batches of 500)"),
                Box::new(|s| rt.block_on(import(s, &file))),
            ),
            (
                format!("{writes} updates, one at a time"),
                Box::new(|s| rt.block_on(updates(s, writes, 1))),
            ),
            (
                format!("{writes} updates, 16 at a time"),
                Box::new(|s| rt.block_on(updates(s, writes, 16))),
            ),
        ];
        for (what, run) in runs {
            run(&on); // warm: every user exists, every connection is up
            // Alternated, the best of five each: the machine's load moves both alike.
            let (mut best_off, mut best_on) = (Duration::MAX, Duration::MAX);
            for _ in 0..5 {
                best_off = best_off.min(run(&off));
                best_on = best_on.min(run(&on));
            }
            println!(
                "| {name} | {what} | {:.0} ms | {:.0} ms | {:.2} |",
                best_off.as_secs_f64() * 1e3,
                best_on.as_secs_f64() * 1e3,
                best_on.as_secs_f64() / best_off.as_secs_f64()
            );
        }
    }
}
