//! `enrich serve`, the built binary, in front of hostile and careless clients: requests that
//! amplify, clients that stall or hold connections, a process out of file descriptors, and a
//! shutdown with connections stuck; and the flags that size what it holds. Memory is read
//! from the process, not from its counters.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::RedisServer;

const KEY: &str = "traffic-key";
const SECRET: &str = "traffic-secret";

/// A running `enrich serve`, killed when dropped.
struct Serve {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    /// `enrich --store STORE serve ARGS…` on a free port; `shell` wraps the command (a
    /// `ulimit`, say).
    fn start(store: &str, args: &[&str], shell: Option<&str>) -> Serve {
        let bin = env!("CARGO_BIN_EXE_enrich");
        let mut command = match shell {
            Some(prefix) => {
                let mut line = format!("{prefix}; exec '{bin}' --store '{store}' serve");
                for arg in args {
                    line.push_str(&format!(" '{arg}'"));
                }
                line.push_str(" --listen 127.0.0.1:0");
                let mut command = Command::new("sh");
                command.arg("-c").arg(line);
                command
            }
            None => {
                let mut command = Command::new(bin);
                command
                    .args(["--store", store, "serve", "--listen", "127.0.0.1:0"])
                    .args(args);
                command
            }
        };
        let mut child = support::without_settings(&mut command)
            .env("ENRICH_API_KEY", KEY)
            .env("ENRICH_API_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start enrich serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (found, address) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on http://".len()..];
                    let addr = rest.split(',').next().unwrap().to_string();
                    let _ = found.send(addr);
                }
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = address
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("enrich serve did not start: {}", log.lock().unwrap()));
        let serve = Serve { child, addr, log };
        serve.wait_ready();
        serve
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.try_request("GET", "/readyz", "", Duration::from_secs(2)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never ready: {}", self.log());
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// One request on a new connection; the status and the body.
    fn try_request(
        &self,
        method: &str,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let sep = if path.contains('?') { '&' } else { '?' };
        let request = format!(
            "{method} {path}{sep}api_key={KEY} HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\n\
             stream-auth-type: jwt\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.addr,
            token(),
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let answer = String::from_utf8_lossy(&answer).to_string();
        let status = answer
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status in {answer:?}")))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.try_request(method, path, body, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// The process's peak resident memory, in bytes, as the kernel counts it.
    fn peak_rss(&self) -> u64 {
        support::peak_kib(self.pid()).expect("the server's peak memory") * 1024
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; its exit status and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (Some(status), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, started.elapsed())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"resource": "users", "action": "*", "feed_id": "*"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Connects and sends `bytes`, without finishing the request.
fn half_open(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    stream
}

/// A connection with a signed request in progress: its headers sent, its body not finished.
fn mid_body(addr: &str) -> TcpStream {
    let head = format!(
        "POST /api/v1.0/user/?api_key={KEY} HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\
         stream-auth-type: jwt\r\ncontent-length: 100\r\n\r\n{{\"id\"",
        token()
    );
    half_open(addr, head.as_bytes())
}

/// How long until the server closes `stream` (a read returns 0 or fails), up to `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// A user of about 10 kB.
fn big_user() -> String {
    json!({"id": "big", "data": {"bio": "x".repeat(10_150)}}).to_string()
}

/// One document of `references` references to `big`, nested so that only `?deep=true` finds
/// them.
fn amplifying_document(references: usize) -> String {
    let mut doc = String::from(r#"{"actor":"SU:big","refs":["#);
    for i in 0..references {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(r#""SU:big""#);
    }
    doc.push_str("]}");
    doc
}

#[test]
fn amplification_is_refused_before_it_costs_memory() {
    let redis = RedisServer::start();
    // Raised so that the response size, not the reference count, is what refuses.
    let serve = Serve::start(&redis.url(), &["--max-references", "1000000"], None);
    let (status, _) = serve.request("POST", "/api/v1.0/user/", &big_user());
    assert_eq!(status, 201);
    let doc = amplifying_document(79_000);
    assert!(doc.len() < 1 << 20);
    let before = serve.peak_rss();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..3)
            .map(|_| s.spawn(|| serve.request("POST", "/api/v1.0/enrich/?deep=true", &doc)))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (status, body) in answers {
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("--max-response-bytes"), "{body}");
        assert!(body.contains("InputException"), "{body}");
    }
    let peak = serve.peak_rss();
    assert!(
        peak < 512 << 20,
        "peak RSS {peak} bytes (was {before} before)"
    );
    // The next ordinary request is answered.
    let (status, body) = serve.request("POST", "/api/v1.0/enrich/", r#"{"actor":"SU:big"}"#);
    assert_eq!(status, 200);
    assert!(body.contains(r#""id":"big""#));

    // With the default limits the reference count refuses it before the store is asked.
    drop(serve);
    let serve = Serve::start(&redis.url(), &[], None);
    let (status, body) = serve.request("POST", "/api/v1.0/enrich/?deep=true", &doc);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("79001 references"), "{body}");
    assert!(body.contains("--max-references"), "{body}");
}

/// The first read after the store restarted finds its connection dropped and asks again on a
/// new one: the client gets its answer, not a 503.
#[test]
fn a_read_after_a_store_restart_is_answered() {
    let mut redis = RedisServer::with_args(&["--appendonly", "yes"]);
    let serve = Serve::start(&redis.url(), &["--l1-bytes", "0"], None);
    let (status, body) = serve.request("POST", "/api/v1.0/user/", r#"{"id":"r","data":{}}"#);
    assert_eq!(status, 201, "{body}");
    let (status, _) = serve.request("GET", "/api/v1.0/user/r/", "");
    assert_eq!(status, 200);
    redis.restart();
    for _ in 0..3 {
        let (status, body) = serve.request("POST", "/api/v1.0/enrich/", r#"{"actor":"SU:r"}"#);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""id":"r""#), "{body}");
    }
}

#[test]
fn stalled_clients_are_closed_on_their_timeouts() {
    let serve = Serve::start(
        "memory:",
        &[
            "--header-timeout",
            "1",
            "--idle-timeout",
            "2",
            "--body-timeout",
            "1",
        ],
        None,
    );
    // Half a request line: closed on the header timeout.
    let mut stream = half_open(&serve.addr, b"GET /readyz HT");
    let took = closed_within(&mut stream, Duration::from_secs(10)).expect("still open");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Nothing at all: the same.
    let mut stream = half_open(&serve.addr, b"");
    assert!(closed_within(&mut stream, Duration::from_secs(10)).is_some());

    // A kept-alive connection that goes quiet: open past the header timeout, closed on the
    // idle timeout.
    let mut stream = half_open(
        &serve.addr,
        format!("GET /livez HTTP/1.1\r\nhost: {}\r\n\r\n", serve.addr).as_bytes(),
    );
    let mut buf = [0u8; 1024];
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = stream.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = closed_within(&mut stream, Duration::from_secs(10)).expect("still open");
    assert!(
        took > Duration::from_millis(1500) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // A body that never comes: 408 on the body timeout.
    let mut stream = half_open(
        &serve.addr,
        format!(
            "PUT /api/v1.0/user/a/?api_key={KEY} HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\
             stream-auth-type: jwt\r\ncontent-length: 100\r\n\r\n{{\"data\"",
            token()
        )
        .as_bytes(),
    );
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-timeout"), "{answer}");

    let (_, metrics) = serve.request("GET", "/metrics", "");
    for reason in ["header_timeout", "idle_timeout"] {
        let series = format!(r#"enrich_http_connections_closed_total{{reason="{reason}"}}"#);
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
}

#[test]
fn held_connections_do_not_lock_others_out() {
    // 300 connections that never finish a request, against a process allowed 256 files.
    let serve = Serve::start("memory:", &[], Some("ulimit -n 256"));
    let mut held = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(&serve.addr) {
            Ok(mut stream) => {
                let _ = stream.write_all(b"GET /readyz HT");
                held.push(stream);
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let answer = serve.try_request("GET", "/readyz", "", Duration::from_secs(5));
    assert!(
        matches!(answer, Ok((200, _))),
        "{answer:?} after {:?}\n{}",
        started.elapsed(),
        serve.log()
    );
    let (status, _) = serve.request("GET", "/livez", "");
    assert_eq!(status, 200);
    drop(held);
}

#[test]
fn sigterm_with_a_stuck_connection_exits_in_time() {
    let mut serve = Serve::start("memory:", &["--shutdown-timeout", "3"], None);
    // One connection mid-headers, one mid-body (a request in progress).
    let _head = half_open(&serve.addr, b"GET /readyz HT");
    let mut body = mid_body(&serve.addr);
    std::thread::sleep(Duration::from_millis(200));
    serve.signal("TERM");
    let (status, took) = serve.wait_exit(Duration::from_secs(15));
    let status = status.unwrap_or_else(|| panic!("still running\n{}", serve.log()));
    assert!(status.success(), "{status:?}\n{}", serve.log());
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(closed_within(&mut body, Duration::from_secs(1)).is_some());
}

/// A second signal while a request is still in progress ends the process at once, not at the
/// shutdown timeout.
#[test]
fn a_second_signal_exits_at_once() {
    let mut serve = Serve::start("memory:", &["--shutdown-timeout", "30"], None);
    let _body = mid_body(&serve.addr);
    std::thread::sleep(Duration::from_millis(200));
    serve.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    serve.signal("INT");
    let (status, took) = serve.wait_exit(Duration::from_secs(15));
    let status = status.unwrap_or_else(|| panic!("still running\n{}", serve.log()));
    assert_eq!(status.code(), Some(130), "{}", serve.log());
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(serve.log().contains("SIGINT again"), "{}", serve.log());
}

#[test]
fn a_client_that_stops_reading_loses_its_connection() {
    let redis = RedisServer::start();
    let serve = Serve::start(&redis.url(), &["--write-timeout", "1"], None);
    let ids = add_big_users(&serve, 1000);
    // Asks for 9 MB, more than the sockets' buffers hold, and reads none of it.
    let mut stream = half_open(
        &serve.addr,
        format!(
            "GET /api/v1.0/users/?ids={}&api_key={KEY} HTTP/1.1\r\nhost: x\r\n\
             authorization: {}\r\nstream-auth-type: jwt\r\n\r\n",
            ids.join(","),
            token()
        )
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_secs(4));
    let (_, metrics) = serve.request("GET", "/metrics", "");
    assert!(
        metrics.contains(r#"enrich_http_connections_closed_total{reason="write_timeout"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("enrich_in_flight_bytes 0"), "{metrics}");
    // What the client finally reads ends early.
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.len() < 9_000_000, "{}", answer.len());
}

#[test]
fn logs_are_plain_lines_and_one_per_request() {
    let serve = Serve::start("memory:", &[], None);
    serve.request("GET", "/livez", "");
    serve.request("GET", "/api/v1.0/user/nobody/", "");
    let log = log_once(&serve, |log| log.contains("status=404"));
    assert!(!log.contains('\u{1b}'), "colour codes on a pipe: {log:?}");
    assert!(
        log.lines().any(|l| l.contains("GET")
            && l.contains(r#"route="/api/v1.0/user/{id}""#)
            && l.contains("status=404")),
        "{log}"
    );
    drop(serve);

    let serve = Serve::start("memory:", &["--log-format", "json"], None);
    serve.request("GET", "/livez", "");
    let log = log_once(&serve, |log| log.contains(r#""route":"/livez""#));
    let access: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v| v["fields"]["route"] == "/livez")
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    assert_eq!(access[0]["fields"]["status"], 200);
    assert_eq!(access[0]["level"], "INFO");
}

/// The server's log once `ready` holds for it (access lines are written by a buffered writer,
/// so they trail the answer), or after 10 s, whatever it holds then.
fn log_once(serve: &Serve, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = serve.log();
        if ready(&log) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The headers that authenticate a request to the users routes (`host` first), and the path
/// that adds a user.
fn users_route() -> (String, String) {
    let auth = format!(
        "host: x\r\nauthorization: {}\r\nstream-auth-type: jwt\r\n",
        token()
    );
    (auth, format!("/api/v1.0/user/?api_key={KEY}"))
}

/// Adds the user `small` on `stream`, an open connection: the status and headers of the
/// answer (201, or 409 once it exists).
fn add_small_user(stream: &mut TcpStream) -> (u16, String) {
    let (auth, path) = users_route();
    let user = r#"{"id":"small","data":{}}"#;
    let next = format!(
        "POST {path} HTTP/1.1\r\n{auth}content-length: {}\r\n\r\n{user}",
        user.len()
    );
    stream.write_all(next.as_bytes()).unwrap();
    read_answer(stream)
}

/// Reads one HTTP/1.1 answer with a content-length from `stream`: its status and headers.
fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("connection closed after {head:?}");
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (head[9..12].parse().unwrap(), head)
}

/// Requests without credentials whose bodies never come: each is answered at once and its
/// connection closed within a moment, reserving nothing of the budget, so that neither the
/// connections nor the budget they would hold lock others out (one body of 1 MiB declared
/// would have been charged in full while it was awaited, up to --body-timeout).
#[test]
fn bodies_without_credentials_hold_nothing() {
    let serve = Serve::start(
        "memory:",
        &[
            "--max-in-flight-bytes",
            "4194304",
            "--max-connections",
            "64",
        ],
        None,
    );
    let mut held = Vec::new();
    for i in 0..100 {
        let mut stream = TcpStream::connect(&serve.addr).unwrap();
        let path = if i % 2 == 0 {
            "/api/v1.0/user/?api_key=wrong"
        } else {
            "/no/such/route"
        };
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n{{");
        stream.write_all(head.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        held.push(stream);
    }
    // Each is closed within a moment: answered (its refusal, or 503 while the connection
    // limit was full of them), or closed unanswered to make room for a newer one. None waits
    // for its body. The old code held every one of them for the body timeout (30 s).
    let started = Instant::now();
    let mut answered = 0;
    for (i, stream) in held.iter_mut().enumerate() {
        let mut all = Vec::new();
        if let Err(e) = stream.read_to_end(&mut all) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "stream {i}: {e}"
            );
        }
        let head = String::from_utf8_lossy(&all).to_ascii_lowercase();
        if head.is_empty() {
            continue;
        }
        let status: u16 = head[9..12].parse().unwrap();
        let refused = if i % 2 == 0 { 401 } else { 404 };
        assert!(status == refused || status == 503, "stream {i}: {head}");
        assert!(head.contains("connection: close"), "stream {i}: {head}");
        answered += usize::from(status == refused);
    }
    assert!(answered > 0, "none answered");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A body of 0.8 MiB, its parsed values and its answer fit only if the 50 bodies of 1 MiB
    // declared hold nothing of the 4 MiB.
    let body = format!(r#"{{"id":"big","data":{{"bio":"{}"}}}}"#, "x".repeat(9_000));
    let batch = format!(
        r#"{{"users":[{}]}}"#,
        (0..90)
            .map(|i| body.replace("\"big\"", &format!("\"big{i}\"")))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(batch.len() > 800_000);
    let (status, answer) = serve.request("POST", "/api/v1.0/users/", &batch);
    assert_eq!(status, 201, "{answer}");
    drop(held);
}

#[test]
fn a_refused_request_leaves_its_connection_usable() {
    let serve = Serve::start("memory:", &[], None);
    let mut stream = TcpStream::connect(&serve.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = r#"{"id":"k","data":{}}"#;
    // As Python's requests sends: the headers, then the body a moment later. Each of these is
    // answered before a handler would need the body.
    for (path, token, want) in [
        ("/api/v1.0/user/?api_key=wrong".to_string(), token(), 401),
        (
            format!("/api/v1.0/user/?api_key={KEY}"),
            "forged".to_string(),
            401,
        ),
        (format!("/api/v1.0/nothing/?api_key={KEY}"), token(), 404),
        (format!("/api/v1.0/user/k/?api_key={KEY}"), token(), 404),
    ] {
        let method = if path.contains("/user/k/") {
            "DELETE"
        } else {
            "POST"
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: {token}\r\n\
             stream-auth-type: jwt\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        stream.write_all(body.as_bytes()).unwrap();
        let (status, head) = read_answer(&mut stream);
        assert_eq!(status, want, "{method} {path}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    // The same connection still carries a request.
    let request = format!(
        "POST /api/v1.0/user/?api_key={KEY} HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\
         stream-auth-type: jwt\r\ncontent-length: {}\r\n\r\n{body}",
        token(),
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut stream).0, 201);
}

/// A body over `--max-body-bytes` (by less than 16 times) sent whole without waiting, as Go's
/// client sends one, is answered 413 and the client reads it: the rest of the body is read and
/// dropped first, where closing the connection on it reset it under the client's feet (Go saw
/// a broken pipe a third of the time). A body that ends in time leaves the connection usable;
/// a client that waits for `100 Continue` is answered at once and sends nothing.
#[test]
fn a_body_over_the_limit_is_answered_not_reset() {
    let serve = Serve::start("memory:", &["--max-body-bytes", "65536"], None);
    let (auth, path) = users_route();
    let big = format!(
        r#"{{"id":"big","data":{{"bio":"{}"}}}}"#,
        "x".repeat(900_000)
    );
    let chunked: String = big
        .as_bytes()
        .chunks(60_000)
        .map(|chunk| {
            format!(
                "{:x}\r\n{}\r\n",
                chunk.len(),
                String::from_utf8_lossy(chunk)
            )
        })
        .chain(["0\r\n\r\n".to_string()])
        .collect();
    let declared = format!("content-length: {}\r\n", big.len());
    let chunked_head = "transfer-encoding: chunked\r\n".to_string();
    let wrong_key = "/api/v1.0/user/?api_key=wrong".to_string();
    for (how, target, head, body, want) in [
        ("declared", &path, &declared, &big, 413),
        ("chunked", &path, &chunked_head, &chunked, 413),
        // Refused for its credentials, a body over the limit is dropped the same way.
        ("refused", &wrong_key, &declared, &big, 401),
    ] {
        let mut stream = TcpStream::connect(&serve.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = format!("POST {target} HTTP/1.1\r\n{auth}{head}\r\n{body}");
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("{how}: the body was cut off: {e}"));
        let (status, answer) = read_answer(&mut stream);
        assert_eq!(status, want, "{how}: {answer}");
        // Read whole, the body leaves the connection ready for the next request.
        let (status, answer) = add_small_user(&mut stream);
        assert!(status == 201 || status == 409, "{how}: {answer}");
    }
    let mut stream = TcpStream::connect(&serve.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\n{auth}expect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let (status, answer) = read_answer(&mut stream);
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

/// A request refused because the memory budget stays full (503 after its wait) has the rest of
/// its body read and dropped as a 413's is: the client gets its answer, not a reset, and the
/// connection serves the next request.
#[test]
fn a_body_refused_for_a_full_budget_is_answered_not_reset() {
    let serve = Serve::start("memory:", &["--max-in-flight-bytes", "100000"], None);
    let (auth, path) = users_route();
    // A body declared as big as the whole budget, of which one byte comes: it holds the budget
    // while it is awaited.
    let mut holder = TcpStream::connect(&serve.addr).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\n{auth}content-length: 100000\r\n\r\n{{");
    holder.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    loop {
        let (_, metrics) = serve.request("GET", "/metrics", "");
        if metrics
            .lines()
            .any(|l| l == "enrich_in_flight_bytes 100000")
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{metrics}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let body = format!(
        r#"{{"id":"late","data":{{"bio":"{}"}}}}"#,
        "x".repeat(80_000)
    );
    let mut stream = TcpStream::connect(&serve.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("the body was cut off: {e}"));
    let (status, answer) = read_answer(&mut stream);
    assert_eq!(status, 503, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // The body was read whole: the same connection takes the next request.
    let (status, answer) = add_small_user(&mut stream);
    assert_eq!(status, 201, "{answer}");
    drop(holder);
}

/// `--l1-bytes` sizes the server's L1: by default a user enriched again is answered from it, at
/// 0 every request asks the store.
#[test]
fn the_l1_of_the_server_is_sized_by_l1_bytes() {
    for (args, hits, store_calls) in [(&[][..], 2, 1), (&["--l1-bytes", "0"][..], 0, 3)] {
        let serve = Serve::start("memory:", args, None);
        let (status, body) = serve.request("POST", "/api/v1.0/user/", r#"{"id":"eric","data":{}}"#);
        assert_eq!(status, 201, "{body}");
        for _ in 0..3 {
            let (status, body) =
                serve.request("POST", "/api/v1.0/enrich/", r#"{"actor":"SU:eric"}"#);
            assert_eq!(status, 200, "{body}");
        }
        let (_, metrics) = serve.request("GET", "/metrics", "");
        for line in [
            format!("enrich_l1_hits_total {hits}"),
            format!("enrich_store_calls_total {store_calls}"),
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{args:?}: no {line:?} in\n{metrics}"
            );
        }
    }
}

/// Adds users `b0`…`b{count-1}` of about 9 kB each, a hundred at a time; their ids.
fn add_big_users(serve: &Serve, count: usize) -> Vec<String> {
    let mut users = Vec::new();
    for i in 0..count {
        users.push(json!({"id": format!("b{i}"), "data": {"bio": "x".repeat(9_000)}}));
        if users.len() == 100 || i + 1 == count {
            let body = json!({ "users": users }).to_string();
            let (status, answer) = serve.request("POST", "/api/v1.0/users/", &body);
            assert_eq!(status, 201, "{answer}");
            users.clear();
        }
    }
    (0..count).map(|i| format!("b{i}")).collect()
}

/// The answer to a write, 9 MB echoing the users it names, is held against the memory budget
/// until the client has read it, and reaches a slow client whole through a shutdown: the
/// server does not count it sent, nor close its connection as idle, while its last bytes wait
/// in the server's buffers.
#[test]
fn a_large_write_answer_is_charged_and_reaches_a_slow_client_whole() {
    let mut serve = Serve::start("memory:", &[], None);
    let ids = add_big_users(&serve, 1000);
    // The same users again, without override: the answer echoes them as stored.
    let users: Vec<Value> = ids.iter().map(|id| json!({"id": id, "data": {}})).collect();
    let body = json!({ "users": users }).to_string();
    let (auth, _) = users_route();
    let mut stream = TcpStream::connect(&serve.addr).unwrap();
    let request = format!(
        "POST /api/v1.0/users/?api_key={KEY} HTTP/1.1\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "{head}");
    }
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(String::from)
        })
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    assert!(length > 9_000_000, "{length}");
    let (_, metrics) = serve.request("GET", "/metrics", "");
    let held: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("enrich_in_flight_bytes "))
        .expect("the budget's gauge")
        .parse()
        .unwrap();
    assert!(
        held >= 8_000_000,
        "{held} bytes held for an unread answer of {length}"
    );
    serve.signal("TERM");
    // Read at about 4 MB/s: the whole answer takes a few seconds after the signal.
    let mut answer = Vec::new();
    let mut piece = vec![0u8; 40_000];
    while answer.len() < length {
        let n = reader.read(&mut piece).unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&piece[..n]);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(answer.len(), length, "the answer was cut off");
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["created_users"].as_array().unwrap().len(), 1000);
    let (status, _) = serve.wait_exit(Duration::from_secs(15));
    assert!(status.unwrap().success(), "{}", serve.log());
}

/// Batch reads left unread wait for the memory budget before they read their users, so that
/// many of them hold no more than the budget: 30 reads of 9 MB each under a budget of 32 MiB.
#[test]
fn unread_batch_reads_hold_the_budget_not_more() {
    let serve = Serve::start("memory:", &["--max-in-flight-bytes", "32M"], None);
    let ids = add_big_users(&serve, 1000);
    let before = serve.peak_rss();
    let (auth, _) = users_route();
    let request = format!(
        "GET /api/v1.0/users/?ids={}&api_key={KEY} HTTP/1.1\r\n{auth}\r\n",
        ids.join(",")
    );
    let streams: Vec<TcpStream> = (0..30)
        .map(|_| half_open(&serve.addr, request.as_bytes()))
        .collect();
    // Those the budget has no room for are refused after waiting for it (5 s).
    std::thread::sleep(Duration::from_secs(7));
    let grown = serve.peak_rss().saturating_sub(before);
    assert!(
        grown < 160 << 20,
        "{} MiB over the {} MiB before",
        grown >> 20,
        before >> 20
    );
    drop(streams);
}
