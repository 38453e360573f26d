//! Load test of `enrich serve` on loopback: the server in-process, 64 concurrent keep-alive
//! connections, a fixed time per scenario. Reports requests/s and p50/p99 for `GET` of a user
//! and for `POST /api/v1.0/enrich/` of a 25-activity feed page (3 references each, 20 distinct
//! users), over the memory store and a private redis-server.
//!
//! `cargo bench --bench serve_load` runs it (about 10 s); under `cargo test` it does nothing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use enrich::serve::{ServeConfig, serve};
use enrich::{Enricher, NewUser, StoreOptions, store};
use serde_json::json;

const CONNECTIONS: usize = 64;
const PER_SCENARIO: Duration = Duration::from_millis(2_200);
const WARMUP: Duration = Duration::from_millis(300);
const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret";

fn main() {
    // cargo test runs bench targets without --bench: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("serve_load: skipped (run with cargo bench --bench serve_load)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let redis = support::RedisServer::start();
    let mut rows = Vec::new();
    runtime.block_on(async {
        for (backend, url) in [("memory", "memory:".to_string()), ("redis", redis.url())] {
            rows.extend(run_backend(backend, &url).await);
        }
    });
    println!(
        "\nenrich serve, loopback, {CONNECTIONS} connections, {:.1} s per row",
        PER_SCENARIO.as_secs_f64()
    );
    println!(
        "{:<8} {:<28} {:>10} {:>9} {:>9}",
        "store", "route", "req/s", "p50 ms", "p99 ms"
    );
    for row in rows {
        println!("{row}");
    }
}

async fn run_backend(backend: &str, url: &str) -> Vec<String> {
    let store = store::open(url, &StoreOptions::new().namespace("bench"))
        .await
        .expect("open store");
    let enricher = Enricher::new(store);
    enricher.wait_for_cache(Duration::from_secs(2)).await;
    for i in 0..20 {
        let user = NewUser::new(
            &format!("user-{i}"),
            Some(json!({"name": format!("User {i}"), "avatar": "https://example.com/a.png"})),
        )
        .expect("valid user");
        enricher.users().add(&user, true).await.expect("add user");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        enricher,
        ServeConfig::new(KEY, SECRET),
        async move {
            let _ = stopped.await;
        },
    ));
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"resource": "users", "action": "*", "feed_id": "*"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("sign");
    let activities: Vec<_> = (0..25)
        .map(|a| {
            json!({
                "id": format!("act-{a}"),
                "actor": format!("SU:user-{}", (a * 3) % 20),
                "verb": "post",
                "object": format!("SU:user-{}", (a * 3 + 1) % 20),
                "target": format!("SU:user-{}", (a * 3 + 2) % 20),
                "time": "2021-05-14T14:51:13.767221",
                "foreign_id": format!("post:{a}"),
            })
        })
        .collect();
    let page = json!({"results": activities, "next": ""}).to_string();

    let get = Scenario {
        method: reqwest::Method::GET,
        url: format!("{base}/api/v1.0/user/user-7/?api_key={KEY}"),
        body: String::new(),
    };
    let post = Scenario {
        method: reqwest::Method::POST,
        url: format!("{base}/api/v1.0/enrich/?api_key={KEY}"),
        body: page,
    };
    let mut rows = Vec::new();
    for (name, scenario) in [("GET user", get), ("POST enrich (25 x 3 refs)", post)] {
        let result = scenario.run(&token).await;
        rows.push(format!("{backend:<8} {name:<28} {result}"));
    }
    let _ = stop.send(());
    let _ = server.await;
    rows
}

#[derive(Clone)]
struct Scenario {
    method: reqwest::Method,
    url: String,
    body: String,
}

impl Scenario {
    async fn run(&self, token: &str) -> String {
        let start = Instant::now();
        let warm_until = start + WARMUP;
        let until = warm_until + PER_SCENARIO;
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            let scenario = self.clone();
            let token = token.to_string();
            tasks.push(tokio::spawn(async move {
                // One client per task: one keep-alive connection each.
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client");
                let mut latencies = Vec::new();
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let response = client
                        .request(scenario.method.clone(), &scenario.url)
                        .header("Authorization", &token)
                        .header("stream-auth-type", "jwt")
                        .body(scenario.body.clone())
                        .send()
                        .await
                        .expect("request");
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.expect("body");
                    if sent >= warm_until {
                        latencies.push(sent.elapsed());
                    }
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("load task"));
        }
        all.sort();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        format!(
            "{:>10.0} {:>9.2} {:>9.2}",
            all.len() as f64 / PER_SCENARIO.as_secs_f64(),
            pct(0.50),
            pct(0.99)
        )
    }
}
