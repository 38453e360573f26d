//! `enrich run`, driven through the built binary: the golden fixtures on every backend, bad
//! lines, streaming from a pipe, store counters and store faults.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{RedisServer, enrich_command as enrich, fixture, run_enrich as run};

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Runs the fixtures as the README does and compares with the golden file byte for byte.
/// Where the store outlives a process, `dan` is created and deleted first: a deleted user must
/// read as missing, like one never created.
fn golden(dir: &Path, store: &[&str], persistent: bool) {
    let args = |rest: &[&str]| -> Vec<String> {
        store.iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let call = |rest: &[&str]| {
        let all = args(rest);
        run(dir, &all.iter().map(String::as_str).collect::<Vec<_>>(), "")
    };
    if persistent {
        for step in [&["users", "add", "dan"][..], &["users", "delete", "dan"]] {
            let out = call(step);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }
    let out = call(&[
        "run",
        "--users",
        &fixture("users.ndjson"),
        &fixture("activities.ndjson"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read_to_string(fixture("activities.enriched.ndjson")).unwrap();
    assert_eq!(text(&out.stdout), expected);
    let summary = text(&out.stderr);
    assert!(
        summary.contains("lines 10 (written 10, rejected 0)"),
        "{summary}"
    );
    assert!(
        summary.contains("activities 12, references 19, distinct users 8, missing 3"),
        "{summary}"
    );
}

#[test]
fn golden_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    golden(dir.path(), &[], true);
    // The same again, now that users exist: identical output.
    golden(dir.path(), &[], true);
}

#[test]
fn golden_on_memory() {
    let dir = tempfile::tempdir().unwrap();
    golden(dir.path(), &["--store", "memory:"], false);
}

#[test]
fn golden_on_redis() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    golden(dir.path(), &["--store", &server.url()], true);
}

#[test]
fn bad_line_stops_after_writing_what_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let input = "{\"actor\":\"SU:x\"}\n{\"a\":1}\n[1,2]\n{\"b\":2}\n";
    let out = run(dir.path(), &["--store", "memory:", "run", "--quiet"], input);
    assert_eq!(out.status.code(), Some(2));
    let written = text(&out.stdout);
    assert_eq!(written.lines().count(), 2, "{written}");
    assert!(written.lines().nth(1) == Some("{\"a\":1}"), "{written}");
    let err = text(&out.stderr);
    assert!(err.starts_with("error: line 3: not an object"), "{err}");
}

/// A line that is not UTF-8 inside a string is refused, naming the byte, never passed on.
#[test]
fn a_line_that_is_not_utf8_is_rejected_not_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = b"{\"a\":\"caf\xc3\xa9\"}\n{\"a\":\"caf\xe9\"}\n{\"b\":2}\n";
    let rejects = dir.path().join("rejects.ndjson");
    let out = run(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "--rejects",
            rejects.to_str().unwrap(),
        ],
        input,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = String::from_utf8(out.stdout).expect("the output is UTF-8");
    assert_eq!(written, "{\"a\":\"café\"}\n{\"b\":2}\n");
    let record: Value =
        serde_json::from_str(std::fs::read_to_string(&rejects).unwrap().trim()).unwrap();
    assert_eq!(record["line"], 2);
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("not UTF-8 at byte 10"),
        "{record}"
    );
}

#[test]
fn rejects_keep_every_bad_line_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let too_long = format!("{{\"k\":\"{}\"}}", "v".repeat(1 << 20));
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    let input = [
        "{\"actor\":\"SU:x\"}",
        "not json",
        "",
        "\"SU:x\"",
        &too_long,
        &deep,
        "{\"a\":1",
        "{\"ok\":true}",
    ]
    .join("\n");
    let rejects = dir.path().join("rejects.ndjson");
    let out = run(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "--rejects",
            rejects.to_str().unwrap(),
        ],
        &input,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = text(&out.stdout);
    assert_eq!(written.lines().count(), 2);
    assert_eq!(written.lines().nth(1), Some("{\"ok\":true}"));
    let records: Vec<Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = records
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 7]);
    let errors: Vec<&str> = records
        .iter()
        .map(|r| r["error"].as_str().unwrap())
        .collect();
    for (error, expected) in errors.iter().zip([
        "not valid JSON",
        "empty line",
        "not an object",
        "over the limit of 1048576 bytes",
        "nesting too deep",
        "not valid JSON",
    ]) {
        assert!(error.contains(expected), "{error} / {expected}");
    }
    assert_eq!(records[0]["input"], "not json");
    assert_eq!(records[5]["input"], "{\"a\":1");
    assert_eq!(2 + records.len(), 8, "output + rejected = input");
    assert!(
        text(&out.stderr).contains("lines 8 (written 2, rejected 6)"),
        "{}",
        text(&out.stderr)
    );
}

/// A line written into a pipe is answered while the pipe stays open.
#[test]
fn streams_from_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["users", "add", "s1", "{\"n\":1}"], "");
    assert!(out.status.success());
    let mut child: Child = enrich(dir.path())
        .args(["run", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (lines, answers) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = lines.send((line.unwrap(), Instant::now()));
        }
    });
    let mut latencies = Vec::new();
    for i in 0..5 {
        let sent = Instant::now();
        writeln!(stdin, "{{\"i\":{i},\"actor\":\"SU:s1\"}}").unwrap();
        stdin.flush().unwrap();
        let (line, at) = answers
            .recv_timeout(Duration::from_secs(10))
            .expect("no answer while the pipe is open");
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["i"], i);
        assert_eq!(doc["actor"]["id"], "s1");
        latencies.push(at - sent);
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    eprintln!("pipe answer latencies: {latencies:?}");
}

#[test]
fn on_redis_each_page_is_one_mget_and_each_user_is_read_once() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let users: String = (0..100).map(|i| format!("{{\"id\":\"r{i}\"}}\n")).collect();
    let activities: String = (0..3000)
        .map(|i| {
            format!(
                "{{\"actor\":\"SU:r{}\",\"object\":\"SU:gone{}\"}}\n",
                i % 100,
                i % 7
            )
        })
        .collect();
    let users_file = dir.path().join("users.ndjson");
    let activities_file = dir.path().join("activities.ndjson");
    std::fs::write(&users_file, users).unwrap();
    std::fs::write(&activities_file, activities).unwrap();
    let url = server.url();
    let out = run(
        dir.path(),
        &[
            "--store",
            &url,
            "users",
            "import",
            users_file.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut conn = server.connection();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec(&mut conn)
        .unwrap();
    let out = run(
        dir.path(),
        &["--store", &url, "run", activities_file.to_str().unwrap()],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3000);
    let info: String = redis::cmd("INFO").arg("all").query(&mut conn).unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(field("keyspace_hits:"), 100, "{info}");
    assert_eq!(field("keyspace_misses:"), 7, "{info}");
    let mgets = field("cmdstat_mget:calls=");
    assert!(
        (1..=3).contains(&mgets),
        "{mgets} MGETs for 3 pages: {info}"
    );
    assert_eq!(field("cmdstat_get:calls="), 0, "{info}");
}

#[test]
fn store_down_for_longer_than_the_timeout_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}", support::free_port());
    let started = Instant::now();
    let out = run(
        dir.path(),
        &["--store", &url, "run", "--store-timeout", "1"],
        "{\"actor\":\"SU:x\"}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&url), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn a_run_waits_out_a_store_restart_and_answers_correctly() {
    let mut server = RedisServer::with_args(&["--appendonly", "yes"]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let out = run(
        dir.path(),
        &["--store", &url, "users", "add", "w", "{\"v\":1}"],
        "",
    );
    assert!(out.status.success());
    let mut child = enrich(dir.path())
        .args(["--store", &url, "run", "--quiet", "--store-timeout", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "{{\"n\":1,\"actor\":\"SU:w\"}}").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("\"id\":\"w\""), "{line}");

    server.stop();
    // Asked while the store is down, with a user the L1 has never seen.
    writeln!(
        stdin,
        "{{\"n\":2,\"actor\":\"SU:w\",\"object\":\"SU:other\"}}"
    )
    .unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let doc: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(doc["n"], 2);
    assert_eq!(doc["actor"]["data"]["v"], 1);
    assert_eq!(doc["object"]["error"], "ReferenceNotFound");
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
}

/// Two processes over one Redis: a streaming `enrich run` serves every write another
/// process makes with `enrich users`, from the next line on.
#[test]
fn a_streaming_run_sees_writes_from_another_process() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let users = |args: &[&str]| {
        let mut all = vec!["--store", url.as_str(), "users"];
        all.extend_from_slice(args);
        let out = run(dir.path(), &all, "");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    users(&["add", "x", "{\"v\":0}"]);
    let mut child = enrich(dir.path())
        .args(["--store", &url, "run", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |n: u32| -> Value {
        writeln!(stdin, "{{\"n\":{n},\"actor\":\"SU:x\"}}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["n"], n);
        doc["actor"].clone()
    };
    assert_eq!(ask(0)["data"]["v"], 0);
    let mut n = 1;
    for v in 1..=5 {
        users(&["update", "x", &format!("{{\"v\":{v}}}")]);
        // The write was acknowledged before this line was written; allow the announcement
        // a moment to cross, then it must be served.
        let started = Instant::now();
        loop {
            let seen = ask(n);
            n += 1;
            if seen["data"]["v"] == v {
                break;
            }
            assert!(
                seen["data"]["v"].as_i64() < Some(v),
                "went past {v}: {seen}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{v} not served: {seen}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Every client connection of the run killed, then a write at once: the run reconnects,
    // and what it missed while it could not hear is not served.
    let mut conn = server.connection();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .exec(&mut conn)
        .ok();
    users(&["update", "x", "{\"v\":6}"]);
    let started = Instant::now();
    loop {
        let seen = ask(n);
        n += 1;
        if seen["data"]["v"] == 6 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "6 not served: {seen}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    users(&["delete", "x"]);
    let started = Instant::now();
    while ask(n)["error"] != "ReferenceNotFound" {
        n += 1;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the delete was not served"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
