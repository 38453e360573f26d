//! Load test of `enrich serve`: the built binary over a private redis-server, driven by `wrk`
//! (one thread, 32 keep-alive connections) as a separate process, with everything an operator
//! runs switched on: the limits, the timeouts, the metrics and one access-log line per request
//! (written to a file, as a deployment's log would be).
//!
//! Rows: `GET /healthz` (a store read per request: the baseline), `GET /livez`, `GET` of a
//! user, and `POST /api/v1.0/enrich/` cycling through 400 distinct feed pages of 25 activities
//! (3 references each, over 1,000 users, warm in the L1). The figure that matters is the
//! enrich row's requests/s as a share of `/healthz`'s in the same run. A second pass runs
//! the same with the access log off.
//!
//! `cargo bench --bench serve_load` runs it (about a minute); it needs `wrk` (Debian package
//! `wrk`) and says so if it is missing. Under `cargo test` it does nothing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret";
const CONNECTIONS: &str = "32";
const SECONDS: &str = "5";
const USERS: usize = 1_000;
const PAGES: usize = 400;

fn main() {
    // cargo test runs bench targets without --bench: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("serve_load: skipped (run with cargo bench --bench serve_load)");
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("serve_load: needs wrk (apt-get install wrk)");
        return;
    }
    let redis = support::RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    load_users(dir.path(), &redis.url());
    let pages = write_script(dir.path());
    let get = write_get_script(dir.path());

    println!(
        "\nenrich serve over redis-server, wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, loopback, \
         one machine"
    );
    println!(
        "{:<12} {:<30} {:>10} {:>8} {:>8} {:>11}",
        "access log", "route", "req/s", "p50 ms", "p99 ms", "÷ /healthz"
    );
    for (label, rust_log) in [("on", "info"), ("off", "info,enrich::access=off")] {
        let server = Server::start(dir.path(), &redis.url(), rust_log);
        let base = format!("http://{}", server.addr);
        // Warm the L1 with every page.
        wrk(&base, Some(&pages), "2");
        let rows = [
            ("GET /healthz", format!("{base}/healthz"), None),
            ("GET /livez", format!("{base}/livez"), None),
            (
                "GET /api/v1.0/user/{id}",
                format!("{base}/api/v1.0/user/user-7/?api_key={KEY}"),
                Some(&get),
            ),
            ("POST /api/v1.0/enrich (25×3)", base.clone(), Some(&pages)),
        ];
        let mut healthz = 0.0;
        for (route, url, script) in rows {
            let result = wrk(&url, script.map(|p| p.as_path()), SECONDS);
            if healthz == 0.0 {
                healthz = result.rate;
            }
            println!(
                "{label:<12} {route:<30} {:>10.0} {:>8.2} {:>8.2} {:>10.2}×",
                result.rate,
                result.p50,
                result.p99,
                result.rate / healthz
            );
        }
    }
}

struct WrkResult {
    rate: f64,
    p50: f64,
    p99: f64,
}

/// Runs wrk against `url` and reads requests/s and the p50 and p99 latency (ms).
fn wrk(url: &str, script: Option<&Path>, seconds: &str) -> WrkResult {
    let mut command = Command::new("wrk");
    command.args(["-t1", "-c", CONNECTIONS, "-d", seconds, "--latency"]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw errors against {url}:\n{text}"
    );
    let field = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        let value = line[prefix.len()..].trim();
        let number: String = value
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let number: f64 = number.parse().expect("a number");
        if value.ends_with("us") {
            number / 1000.0
        } else if value.ends_with("ms") {
            number
        } else if value.ends_with('s') {
            number * 1000.0
        } else {
            number
        }
    };
    WrkResult {
        rate: field("Requests/sec:"),
        p50: field("50%"),
        p99: field("99%"),
    }
}

fn token() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"resource": "users", "action": "*", "feed_id": "*"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("sign")
}

/// 1,000 users, imported with the binary.
fn load_users(dir: &Path, store: &str) {
    let path = dir.join("users.ndjson");
    let mut file = std::fs::File::create(&path).expect("users file");
    for i in 0..USERS {
        let user = json!({"id": format!("user-{i}"), "data": {
            "name": format!("User {i}"),
            "avatar": format!("https://example.com/avatars/{i}.png"),
        }});
        writeln!(file, "{user}").expect("write users");
    }
    let status = Command::new(env!("CARGO_BIN_EXE_enrich"))
        .args(["--store", store, "users", "import"])
        .arg(&path)
        .stderr(Stdio::null())
        .status()
        .expect("import users");
    assert!(status.success());
}

/// A wrk script that posts 400 distinct feed pages in turn.
fn write_script(dir: &Path) -> std::path::PathBuf {
    // A fixed linear congruential sequence: the same pages every run.
    let mut state = 42u64;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    let mut lua = String::from("pages = {\n");
    for page in 0..PAGES {
        let activities: Vec<_> = (0..25)
            .map(|a| {
                json!({
                    "id": format!("act-{page}-{a}"),
                    "actor": format!("SU:user-{}", next(USERS)),
                    "verb": "post",
                    "object": format!("SU:user-{}", next(USERS)),
                    "target": format!("SU:user-{}", next(USERS)),
                    "time": "2021-05-14T14:51:13.767221",
                    "foreign_id": format!("post:{a}"),
                })
            })
            .collect();
        let doc = json!({"results": activities, "next": ""}).to_string();
        lua.push_str(&format!("[==[{doc}]==],\n"));
    }
    lua.push_str("}\n");
    lua.push_str(&format!(
        "i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"POST\", \
         \"/api/v1.0/enrich/?api_key={KEY}\", {{[\"Authorization\"]=\"{}\", \
         [\"stream-auth-type\"]=\"jwt\", [\"Content-Type\"]=\"application/json\"}}, \
         pages[(i % {PAGES}) + 1])\nend\n",
        token()
    ));
    let path = dir.join("enrich.lua");
    std::fs::write(&path, lua).expect("write script");
    path
}

/// A wrk script that sends the token with a GET.
fn write_get_script(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("get.lua");
    let lua = format!(
        "wrk.headers[\"Authorization\"] = \"{}\"\nwrk.headers[\"stream-auth-type\"] = \"jwt\"\n",
        token()
    );
    std::fs::write(&path, lua).expect("write script");
    path
}

/// `enrich serve`, its log in a file.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(dir: &Path, store: &str, rust_log: &str) -> Server {
        let path = dir.join("serve.log");
        let log = std::fs::File::create(&path).expect("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_enrich"))
            .args(["--store", store, "serve", "--listen", "127.0.0.1:0"])
            .env("ENRICH_API_KEY", KEY)
            .env("ENRICH_API_SECRET", SECRET)
            .env("RUST_LOG", rust_log)
            .stderr(log)
            .spawn()
            .expect("start enrich serve");
        for _ in 0..500 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(at) = text.find("listening on http://") {
                let rest = &text[at + "listening on http://".len()..];
                let addr = rest.split(',').next().expect("address").to_string();
                // Let the invalidation stream come up, so the L1 is in use.
                std::thread::sleep(Duration::from_millis(200));
                return Server { child, addr };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("enrich serve did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
