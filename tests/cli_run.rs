//! `enrich run`, driven through the built binary: the golden fixtures on every backend, bad
//! lines, streaming from a pipe, store counters and store faults.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{RedisServer, enrich_command as enrich, exit_within, fixture, run_enrich as run};

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A directory whose file store (the default `./enrich.db`) holds one user, `s1`.
fn with_user_s1() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["users", "add", "s1", "{\"n\":1}"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir
}

/// Activity number `i`, naming `s1`, as a line.
fn numbered(i: usize) -> String {
    format!("{{\"i\":{i},\"actor\":\"SU:s1\"}}\n")
}

/// `script` run by `sh` in `dir`, standard input empty, with none of the shell's `ENRICH_*`
/// settings: for what only a shell sets up (limits, ignored signals, redirections).
fn shell(dir: &Path, script: &str) -> std::process::Output {
    let mut command = std::process::Command::new("sh");
    support::without_settings(&mut command);
    command
        .args(["-c", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The number of each activity written.
fn numbers(stdout: &[u8]) -> Vec<i64> {
    let number = |line: &str| serde_json::from_str::<Value>(line).unwrap()["i"].as_i64();
    text(stdout)
        .lines()
        .map(|line| number(line).unwrap())
        .collect()
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
        summary.contains("activities 12, references 21, distinct 10, missing 5"),
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

/// However many worker threads the job runs on, the same output; none at all is refused.
#[test]
fn any_thread_count_writes_the_golden_output() {
    let dir = tempfile::tempdir().unwrap();
    let expected = std::fs::read_to_string(fixture("activities.enriched.ndjson")).unwrap();
    let (users, activities) = (fixture("users.ndjson"), fixture("activities.ndjson"));
    for threads in ["1", "3"] {
        let args = [
            "--store",
            "memory:",
            "run",
            "--threads",
            threads,
            "--users",
            &users,
            &activities,
        ];
        let out = run(dir.path(), &args, "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected, "--threads {threads}");
    }
    let args = ["--store", "memory:", "run", "--threads", "0", &activities];
    let out = run(dir.path(), &args, "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--threads"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
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
    assert!(err.starts_with("error: -:3: not an object"), "{err}");
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
    assert!(records.iter().all(|r| r["file"] == "-"), "{records:?}");
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
    let dir = with_user_s1();
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
        stdin.write_all(numbered(i).as_bytes()).unwrap();
        stdin.flush().unwrap();
        let (line, at) = answers
            .recv_timeout(Duration::from_secs(10))
            .expect("no answer while the pipe is open");
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["i"], i);
        assert_eq!(doc["actor"]["id"], "s1");
        latencies.push(at - sent);
    }
    // A line written with the start of the next one is answered all the same, before the
    // rest of that next line comes.
    write!(stdin, "{}{{\"i\":6,", numbered(5)).unwrap();
    stdin.flush().unwrap();
    let (line, _) = answers
        .recv_timeout(Duration::from_secs(10))
        .expect("a whole line held back behind the start of the next");
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["i"], 5);
    writeln!(stdin, "\"actor\":\"SU:s1\"}}").unwrap();
    drop(stdin);
    let (line, _) = answers.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["i"], 6);
    assert!(child.wait().unwrap().success());
    eprintln!("pipe answer latencies: {latencies:?}");
}

/// Input files are opened one at a time as the run comes to them: a run over more files
/// than the process may hold open reads them all, in order.
#[test]
fn inputs_are_opened_one_at_a_time() {
    let dir = with_user_s1();
    let names: Vec<String> = (0..300).map(|i| format!("in{i}.ndjson")).collect();
    for (i, name) in names.iter().enumerate() {
        std::fs::write(dir.path().join(name), numbered(i)).unwrap();
    }
    // 64 descriptors in all, a fifth of the inputs.
    let script = format!(
        "ulimit -n 64; exec {} run --quiet {}",
        env!("CARGO_BIN_EXE_enrich"),
        names.join(" ")
    );
    let out = shell(dir.path(), &script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(numbers(&out.stdout), (0..300).collect::<Vec<_>>());
}

/// A FIFO among the inputs is opened once, when the inputs are checked, and read at its turn:
/// closed after the check, the lines its writer wrote and the end it gave would be lost, and
/// the run would wait at its turn for a writer that never comes.
#[test]
fn a_fifo_among_the_inputs_is_opened_once() {
    let dir = with_user_s1();
    std::fs::write(dir.path().join("a.ndjson"), numbered(0)).unwrap();
    std::fs::write(dir.path().join("c.ndjson"), numbered(4)).unwrap();
    let fifo = dir.path().join("b.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    let mut child = enrich(dir.path())
        .args(["run", "--quiet", "a.ndjson", "b.fifo", "c.ndjson"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Everything at once, then the end: as soon as the run opens the FIFO to check it.
    let lines: String = (1..=3).map(numbered).collect();
    std::fs::write(&fifo, lines).expect("the FIFO's writer was cut off");
    let since = Instant::now();
    while child.try_wait().unwrap().is_none() && since.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        // Waiting for a writer at the FIFO's turn: one that writes nothing lets it end.
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(numbers(&out.stdout), [0, 1, 2, 3, 4]);
}

/// A directory given as an input is bad input, said before anything is written.
#[test]
fn a_directory_is_not_an_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let out = run(
        dir.path(),
        &["--store", "memory:", "run", "logs", "-o", "out.ndjson"],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot open logs: it is a directory"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("out.ndjson").exists());
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
    // A missing user is looked up twice, once: by the MGET, then by the GET that tells a key
    // that does not exist from one of another type.
    assert_eq!(field("keyspace_misses:"), 14, "{info}");
    let mgets = field("cmdstat_mget:calls=");
    assert!(
        (1..=3).contains(&mgets),
        "{mgets} MGETs for 3 pages: {info}"
    );
    assert_eq!(field("cmdstat_get:calls="), 7, "{info}");
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
    // The outage is told once when it starts and once when it ends, even with --quiet.
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let down: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("retrying for up to 20 s (--store-timeout)"))
        .collect();
    assert_eq!(down.len(), 1, "{err}");
    assert!(down[0].contains(&url), "{err}");
    assert_eq!(err.matches("the store answers again").count(), 1, "{err}");
}

/// SIGINT while `run --users` imports: the lines it read are committed, it says how far it
/// got, and the run ends there, exit 130, without reading its input.
#[test]
fn a_signal_during_the_users_import_says_what_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "{\"actor\":\"SU:u1\"}\n").unwrap();
    let mut child = enrich(dir.path())
        .args(["--store", "file:s.db", "run", "--users", "-", "in.ndjson"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let errors = support::drain(child.stderr.take());
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..10 {
        writeln!(stdin, "{{\"id\":\"u{i}\",\"data\":{{}}}}").unwrap();
    }
    stdin.flush().unwrap();
    while !support::catches(child.id(), 2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The store is made before the import starts; the lines are then read as they come, and
    // the batch waits for more.
    let made = Instant::now();
    while !dir.path().join("s.db").exists() {
        assert!(made.elapsed() < Duration::from_secs(30), "no store made");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = support::exit_within(&mut child, Duration::from_secs(30), "SIGINT");
    drop(stdin);
    let errors = text(&errors.join().unwrap());
    assert_eq!(status.code(), Some(130), "{errors}");
    // Every line read is committed (all ten, unless the machine was too slow to read them in
    // a second), and said.
    let said = "-: interrupted by SIGINT: imported: ";
    let rest = errors
        .split(said)
        .nth(1)
        .unwrap_or_else(|| panic!("{errors}"));
    let created: usize = rest.split(' ').next().unwrap().parse().unwrap();
    assert!((1..=10).contains(&created), "{errors}");
    assert!(rest.contains(&format!("of {created} lines")), "{errors}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.is_empty(), "{out}");
    let last = format!("u{}", created - 1);
    let got = run(
        dir.path(),
        &["--store", "file:s.db", "users", "get", &last],
        "",
    );
    assert!(got.status.success(), "{}", text(&got.stderr));
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

/// A user of about 10 kB, with fixed timestamps so that every run writes the same bytes.
fn big_user() -> String {
    format!(
        "{{\"id\":\"big\",\"created_at\":\"2021-04-13T22:53:19.670051Z\",\
         \"data\":{{\"bio\":\"{}\"}}}}\n",
        "x".repeat(10_000)
    )
}

/// One line of `references` top-level references to `big`.
fn amplified_line(references: usize) -> String {
    let mut line = String::from("{");
    for i in 0..references {
        if i > 0 {
            line.push(',');
        }
        line.push_str("\"a\":\"SU:big\"");
    }
    line.push_str("}\n");
    line
}

/// What a run holds is bounded by what it writes, not by what it reads: a 1 MiB line that
/// would be 790 MB enriched is rejected without being built; lines of 60 MB each are built
/// one piece at a time.
#[test]
fn memory_is_bounded_by_output_not_input() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.ndjson");
    std::fs::write(&users, big_user()).unwrap();
    let huge = amplified_line(79_000);
    assert!(huge.len() < 1 << 20);
    let one = dir.path().join("one.ndjson");
    std::fs::write(&one, &huge).unwrap();
    let users_arg = users.to_str().unwrap();

    // One such line: refused, named, nothing written, exit 2.
    let (out, peak) = support::run_enrich_measured(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "--users",
            users_arg,
            "one.ndjson",
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("error: one.ndjson:1: the enriched line would be ")
            && err.contains("over the limit of 67108864 bytes (--max-line-output)"),
        "{err}"
    );
    assert!(peak < 512 << 10, "peak {peak} KiB for one line");

    // Thirty of them with --rejects: every line accounted for, memory still flat.
    let thirty = dir.path().join("thirty.ndjson");
    std::fs::write(&thirty, huge.repeat(30)).unwrap();
    let (out, peak) = support::run_enrich_measured(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "--users",
            users_arg,
            "thirty.ndjson",
            "--rejects",
            "rejects.ndjson",
            "-o",
            "out.ndjson",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(dir.path().join("out.ndjson")).unwrap();
    let rejects = std::fs::read_to_string(dir.path().join("rejects.ndjson")).unwrap();
    assert_eq!(written.lines().count() + rejects.lines().count(), 30);
    let record: Value = serde_json::from_str(rejects.lines().nth(29).unwrap()).unwrap();
    assert_eq!(record["file"], "thirty.ndjson");
    assert_eq!(record["line"], 30);
    assert_eq!(record["input"].as_str().unwrap(), huge.trim_end());
    assert!(peak < 1 << 20, "peak {peak} KiB for thirty lines");

    // Lines of 60 MB each, under the limit: 1.8 GB written, a few pieces held at a time.
    let large = amplified_line(6_000);
    std::fs::write(dir.path().join("large.ndjson"), large.repeat(30)).unwrap();
    let (out, peak) = support::run_enrich_measured(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "--users",
            users_arg,
            "large.ndjson",
            "-o",
            "/dev/null",
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("lines 30 (written 30, rejected 0)"), "{err}");
    assert!(peak < 400 << 10, "peak {peak} KiB for 30 lines of 60 MB");

    // The limit is the user's: lowered, the same lines are rejected.
    let (out, _) = support::run_enrich_measured(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "--users",
            users_arg,
            "large.ndjson",
            "--max-line-output",
            "16M",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("large.ndjson:1: the enriched line would be"),
        "{}",
        text(&out.stderr)
    );
}

/// `-o` or `--rejects` naming an input, however spelled, is refused before anything is
/// written: exit 2, the input unchanged byte for byte.
#[test]
fn outputs_never_overwrite_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = "{\"actor\":\"SU:x\"}\n{\"n\":2}\n";
    std::fs::write(dir.path().join("in.ndjson"), input).unwrap();
    std::fs::write(dir.path().join("users.ndjson"), "{\"id\":\"x\"}\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("in.ndjson", dir.path().join("link.ndjson")).unwrap();
    std::fs::hard_link(dir.path().join("in.ndjson"), dir.path().join("hard.ndjson")).unwrap();
    let absolute = dir.path().join("in.ndjson");
    let spellings = [
        "in.ndjson",
        "./in.ndjson",
        "sub/../in.ndjson",
        "link.ndjson",
        "hard.ndjson",
        absolute.to_str().unwrap(),
    ];
    let check = |args: &[&str], what: &str| {
        let mut all = vec!["--store", "memory:", "run"];
        all.extend_from_slice(args);
        let out = run(dir.path(), &all, "");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(
            std::fs::read(dir.path().join("in.ndjson")).unwrap(),
            input.as_bytes(),
            "{args:?} touched the input"
        );
        assert_eq!(
            std::fs::read(dir.path().join("users.ndjson")).unwrap(),
            b"{\"id\":\"x\"}\n",
            "{args:?} touched the users"
        );
    };
    for same in spellings {
        check(&["in.ndjson", "-o", same], "is the input");
        check(&["in.ndjson", "--rejects", same], "is the input");
        check(&["other.ndjson", same, "-o", same], "is the input");
    }
    check(
        &[
            "in.ndjson",
            "--users",
            "users.ndjson",
            "-o",
            "./users.ndjson",
        ],
        "is the --users file users.ndjson",
    );
    check(
        &[
            "in.ndjson",
            "-o",
            "new.ndjson",
            "--rejects",
            "sub/../new.ndjson",
        ],
        "different files",
    );
    assert!(!dir.path().join("new.ndjson").exists());

    // Standard input redirected from the file named by -o.
    let out = enrich(dir.path())
        .args(["--store", "memory:", "run", "-o", "link.ndjson"])
        .stdin(std::fs::File::open(dir.path().join("in.ndjson")).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("-o link.ndjson is the input -"));
    assert_eq!(
        std::fs::read(dir.path().join("in.ndjson")).unwrap(),
        input.as_bytes()
    );

    // Standard output appending to an input would read its own output for ever.
    let append = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("in.ndjson"))
        .unwrap();
    let out = enrich(dir.path())
        .args(["--store", "memory:", "run", "in.ndjson"])
        .stdout(append)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("standard output is the input in.ndjson"));
    assert_eq!(
        std::fs::read(dir.path().join("in.ndjson")).unwrap(),
        input.as_bytes()
    );

    // An ordinary run still works, and a run over standard input from a file too.
    let out = run(
        dir.path(),
        &["--store", "memory:", "run", "in.ndjson", "-o", "out.ndjson"],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.ndjson"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

/// The file store is no output either: `-o` or `--rejects` naming it (or standard output
/// redirected to it) is refused before anything is written, with every user kept, and so is
/// one naming the store a run is about to create with `--users`.
#[test]
fn outputs_never_overwrite_the_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "{\"actor\":\"SU:x\"}\n").unwrap();
    std::fs::write(dir.path().join("users.ndjson"), "{\"id\":\"x\"}\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let out = run(
        dir.path(),
        &["--store", "file:s.db", "users", "import", "users.ndjson"],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let store = std::fs::read(dir.path().join("s.db")).unwrap();
    for args in [
        &["in.ndjson", "-o", "s.db"][..],
        &["in.ndjson", "-o", "sub/../s.db"],
        &["in.ndjson", "--rejects", "./s.db"],
    ] {
        let mut all = vec!["--store", "file:s.db", "run"];
        all.extend_from_slice(args);
        let out = run(dir.path(), &all, "");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("is the store s.db"), "{args:?}: {err}");
        assert_eq!(std::fs::read(dir.path().join("s.db")).unwrap(), store);
    }
    let out = enrich(dir.path())
        .args(["--store", "file:s.db", "run", "in.ndjson"])
        .stdout(
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("s.db"))
                .unwrap(),
        )
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("standard output is the store s.db"));
    assert_eq!(std::fs::read(dir.path().join("s.db")).unwrap(), store);
    let out = run(
        dir.path(),
        &["--store", "file:s.db", "users", "get", "x"],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A store the run would create.
    let out = run(
        dir.path(),
        &[
            "--store",
            "file:new.db",
            "run",
            "--users",
            "users.ndjson",
            "in.ndjson",
            "-o",
            "new.db",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is the store new.db"));
    assert!(!dir.path().join("new.db").exists());
}

/// Outputs are opened before either is emptied: a `--rejects` that cannot be created leaves
/// the `-o` file as it was, and does not leave behind one the run made.
#[test]
fn an_output_that_cannot_be_created_leaves_the_other_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "{\"n\":1}\n").unwrap();
    std::fs::write(dir.path().join("kept.ndjson"), "precious\n").unwrap();
    for out_file in ["kept.ndjson", "made.ndjson"] {
        let out = run(
            dir.path(),
            &[
                "--store",
                "memory:",
                "run",
                "in.ndjson",
                "-o",
                out_file,
                "--rejects",
                "no/such/dir/rejects.ndjson",
            ],
            "",
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("cannot create no/such/dir/rejects.ndjson"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join("kept.ndjson")).unwrap(),
        b"precious\n"
    );
    assert!(!dir.path().join("made.ndjson").exists());
}

/// Standard input is read once: naming it for the run and for an import is refused before
/// anything is read, and so is `--rejects -`; `-o -` is standard output.
#[test]
fn standard_input_is_named_once_and_dash_is_standard_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "{\"actor\":\"SU:x\"}\n").unwrap();
    for (args, why) in [
        (
            &["--users", "-"][..],
            "so does the run when it names no input file",
        ),
        (
            &["--users", "-", "-"],
            "--users - and the input - both read it",
        ),
        (
            &["--objects", "-", "--users", "-", "in.ndjson"],
            "both read it",
        ),
        (
            &["in.ndjson", "-", "-"],
            "the input - is named more than once",
        ),
        (&["in.ndjson", "--rejects", "-"], "--rejects - is not taken"),
    ] {
        let mut all = vec!["--store", "memory:", "run"];
        all.extend_from_slice(args);
        let out = run(dir.path(), &all, "{\"id\":\"x\"}\n");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let out = run(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "in.ndjson",
            "-o",
            "-",
            "--quiet",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ReferenceNotFound"),
        "{}",
        text(&out.stdout)
    );
    assert!(!dir.path().join("-").exists());
}

/// A file read through standard input (`--users -`, `--objects -`) is guarded as the file it
/// is redirected from: `-o` naming it is refused, however the files are named.
#[test]
fn an_import_read_from_standard_input_is_no_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "{\"actor\":\"SU:x\"}\n").unwrap();
    let users = "{\"id\":\"x\"}\n";
    std::fs::write(dir.path().join("users.ndjson"), users).unwrap();
    let entries = "{\"collection\":\"c\",\"id\":\"a\",\"data\":{}}\n";
    std::fs::write(dir.path().join("entries.ndjson"), entries).unwrap();
    for (flag, file, contents) in [
        ("--users", "users.ndjson", users),
        ("--objects", "entries.ndjson", entries),
    ] {
        let out = enrich(dir.path())
            .args(["--store", "memory:", "run", "in.ndjson", flag, "-", "-o"])
            .arg(format!("./{file}"))
            .stdin(std::fs::File::open(dir.path().join(file)).unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains(&format!("is the {flag} file -")),
            "{flag}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(file)).unwrap(),
            contents
        );
    }
}

/// `-o` through a symbolic link to nothing yet makes the file where the link points.
#[test]
fn an_output_through_a_dangling_link_is_made_where_it_points() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "{\"n\":1}\n").unwrap();
    std::os::unix::fs::symlink("made.ndjson", dir.path().join("link.ndjson")).unwrap();
    let out = run(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "in.ndjson",
            "-o",
            "link.ndjson",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("made.ndjson")).unwrap(),
        "{\"n\":1}\n"
    );
}

/// The arguments of a run over what [`write_workload`] wrote, with a memory store.
const WORKLOAD_RUN: [&str; 6] = [
    "--store",
    "memory:",
    "run",
    "--users",
    "users.ndjson",
    "activities.ndjson",
];

/// Users with fixed timestamps and activities naming them: every run writes the same bytes.
fn write_workload(dir: &Path, activities: usize) {
    write_workload_padded(dir, activities, 0);
}

/// [`write_workload`] with users `pad` bytes larger (a `bio` of that many letters).
fn write_workload_padded(dir: &Path, activities: usize, pad: usize) {
    let bio = match pad {
        0 => String::new(),
        _ => format!(",\"bio\":\"{}\"", "b".repeat(pad)),
    };
    let users: String = (0..200)
        .map(|i| {
            format!(
                "{{\"id\":\"u{i}\",\"created_at\":\"2021-04-13T22:53:19.670051Z\",\
                 \"data\":{{\"name\":\"User {i}\"{bio}}}}}\n"
            )
        })
        .collect();
    std::fs::write(dir.join("users.ndjson"), users).unwrap();
    let lines: String = (0..activities)
        .map(|i| {
            format!(
                "{{\"id\":\"a{i}\",\"actor\":\"SU:u{}\",\"verb\":\"post\",\"object\":\"SU:u{}\"}}\n",
                i % 200,
                i * 7 % 211
            )
        })
        .collect();
    std::fs::write(dir.join("activities.ndjson"), lines).unwrap();
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// SIGINT and SIGTERM at random moments, to a file and to a pipe, once or twice: the output is
/// always a prefix of the full output made of complete lines, the summary says the run was
/// interrupted and how many lines it wrote, and the exit code is 130 or 143.
#[test]
fn signals_stop_a_run_with_complete_lines_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    write_workload(dir.path(), 300_000);
    let base = WORKLOAD_RUN;
    let started = Instant::now();
    let full = run(
        dir.path(),
        &[&base[..], &["-o", "full.ndjson"]].concat(),
        "",
    );
    let took = started.elapsed();
    assert!(full.status.success(), "{}", text(&full.stderr));
    let full = std::fs::read(dir.path().join("full.ndjson")).unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}, a full run takes {took:?}");
    let mut rng = enrich::bench::Rng::new(seed);
    let mut interrupted = 0;
    for round in 0..8 {
        let (signal, name, code) = if round % 2 == 0 {
            ("-INT", "SIGINT", 130)
        } else {
            ("-TERM", "SIGTERM", 143)
        };
        let to_pipe = round % 4 >= 2;
        let twice = round >= 6;
        let out_file = dir.path().join(format!("out{round}.ndjson"));
        let mut command = enrich(dir.path());
        command
            .args(base)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        if to_pipe {
            command.stdout(Stdio::piped());
        } else {
            command.arg("-o").arg(&out_file).stdout(Stdio::null());
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut pipe, &mut bytes).unwrap();
                bytes
            })
        });
        // Within the first third of a run: the measured run may have been slowed by the tests
        // running beside it, and a later one that finishes before its signal proves nothing.
        let delay = 20 + rng.next_u64() % (took.as_millis() as u64 / 3).max(1);
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            kill(child.id(), signal);
            if twice {
                kill(child.id(), signal);
            }
        }
        let out = child.wait_with_output().unwrap();
        let written = match stdout {
            Some(reader) => reader.join().unwrap(),
            // A signal while the run is still preparing (importing the users) stops it before
            // it creates its output: nothing written, which the summary must then say.
            None if !out_file.exists() => Vec::new(),
            None => std::fs::read(&out_file).unwrap(),
        };
        let err = text(&out.stderr);
        let what = format!("round {round} ({name} after {delay} ms, pipe {to_pipe}): {err}");
        assert!(
            full.starts_with(&written),
            "not a prefix of the full output: {what}"
        );
        assert!(
            written.is_empty() || written.ends_with(b"\n"),
            "a cut line: {what}"
        );
        let lines = written.iter().filter(|&&b| b == b'\n').count();
        if out.status.code() == Some(0) {
            // The signal came after the last line: the whole output.
            assert_eq!(written, full, "{what}");
            continue;
        }
        interrupted += 1;
        assert_eq!(out.status.code(), Some(code), "{what}");
        assert!(err.contains(&format!("interrupted by {name}")), "{what}");
        assert!(
            err.contains(&format!("lines {lines} (written {lines}, rejected 0)")),
            "{what}"
        );
    }
    assert!(interrupted >= 4, "only {interrupted} runs were interrupted");
}

/// A second stop while the output is a pipe nobody reads: the run cannot finish the write it
/// is in, and ends anyway, soon after, with the stop's exit code and what it wrote so far.
#[test]
fn a_second_stop_ends_a_run_stuck_on_a_pipe_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    write_workload(dir.path(), 40_000);
    for threads in ["1", "2"] {
        let mut child = enrich(dir.path())
            .args(WORKLOAD_RUN)
            .args(["--threads", threads])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The pipe fills (64 KiB), and the run waits on it.
        std::thread::sleep(Duration::from_millis(800));
        assert!(child.try_wait().unwrap().is_none(), "the run ended");
        kill(child.id(), "-TERM");
        // Apart, so that the second is not merged into the first while it is pending.
        std::thread::sleep(Duration::from_millis(200));
        kill(child.id(), "-TERM");
        let status = exit_within(
            &mut child,
            Duration::from_secs(15),
            &format!("threads {threads}: after the second SIGTERM"),
        );
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(143), "threads {threads}: {err}");
        assert!(
            err.contains("interrupted by SIGTERM"),
            "threads {threads}: {err}"
        );
    }
}

/// A stop while the store is down does not wait out the store timeout: the page waiting for
/// the store is dropped whole and the run ends at once with what it wrote before.
#[test]
fn a_stop_during_a_store_outage_ends_the_run_at_once() {
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let out = run(dir.path(), &["--store", &url, "users", "add", "w"], "");
    assert!(out.status.success());
    let mut child = enrich(dir.path())
        .args(["--store", &url, "run", "--store-timeout", "60"])
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
    writeln!(stdin, "{{\"n\":2,\"actor\":\"SU:other\"}}").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    kill(child.id(), "-TERM");
    let status = exit_within(&mut child, Duration::from_secs(10), "after SIGTERM");
    assert_eq!(status.code(), Some(143));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "", "the page waiting for the store is not written");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("interrupted by SIGTERM: lines 1 (written 1, rejected 0)"),
        "{err}"
    );
}

/// Each input is numbered from its own line 1, and errors and rejects name it.
#[test]
fn errors_and_rejects_name_the_file_and_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.ndjson"), "{\"a\":1}\n{\"a\":2}\n").unwrap();
    std::fs::write(dir.path().join("b.ndjson"), "{\"b\":1}\n[2]\n{\"b\":3}\n").unwrap();
    let out = run(
        dir.path(),
        &["--store", "memory:", "run", "a.ndjson", "b.ndjson"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout).lines().count(), 3);
    let err = text(&out.stderr);
    assert!(err.contains("error: b.ndjson:2: not an object"), "{err}");
    assert!(err.contains("lines 4 (written 3, rejected 1)"), "{err}");

    let out = run(
        dir.path(),
        &[
            "--store",
            "memory:",
            "run",
            "a.ndjson",
            "-",
            "b.ndjson",
            "--rejects",
            "rejects.ndjson",
        ],
        "{\"s\":1}\nnope\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 5);
    let records: Vec<Value> = std::fs::read_to_string(dir.path().join("rejects.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let places: Vec<(&str, u64)> = records
        .iter()
        .map(|r| (r["file"].as_str().unwrap(), r["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(places, [("-", 2), ("b.ndjson", 2)]);
    let keys: Vec<&str> = records[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["file", "line", "error", "input"]);
}

/// A line of exactly the limit is accepted whether it ends with `\n` or `\r\n`.
#[test]
fn crlf_counts_like_lf_toward_the_line_limit() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = "{\"k\":\"";
    let line = format!("{prefix}{}\"}}", "v".repeat((1 << 20) - prefix.len() - 2));
    assert_eq!(line.len(), 1 << 20);
    for ending in ["\n", "\r\n"] {
        let input = format!("{line}{ending}{{\"n\":2}}{ending}");
        let out = run(dir.path(), &["--store", "memory:", "run"], &input);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{ending:?}: {}",
            text(&out.stderr)
        );
        let written = text(&out.stdout);
        assert_eq!(written.lines().count(), 2);
        assert_eq!(written.lines().next(), Some(line.as_str()));
    }
    let over = format!(
        "{prefix}{}\"}}\r\n",
        "v".repeat((1 << 20) - prefix.len() - 1)
    );
    // Without rejects the run ends at the line, read no further than the limit; with them it
    // is read to its end, and its record gives its length.
    let out = run(dir.path(), &["--store", "memory:", "run"], &over);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("-:1: line is over the limit of 1048576 bytes"),
        "{}",
        text(&out.stderr)
    );
    let args = ["--store", "memory:", "run", "--rejects", "rejects.ndjson"];
    let out = run(dir.path(), &args, &over);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rejects = std::fs::read_to_string(dir.path().join("rejects.ndjson")).unwrap();
    assert!(
        rejects.contains("line is 1048577 bytes, over the limit of 1048576"),
        "{}",
        &rejects[..200]
    );
}

/// Without rejects, a line over the limit ends the run as soon as the limit is passed, without
/// waiting for the rest of the line: a pipe that pauses inside it, or never ends it.
#[test]
fn a_line_over_the_limit_ends_the_run_without_waiting_for_its_end() {
    let dir = with_user_s1();
    let mut child = enrich(dir.path())
        .args(["run", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(numbered(1).as_bytes()).unwrap();
    // Past the limit, and the pipe kept open with no end to the line.
    let long = vec![b'x'; (1 << 20) + 4096];
    // The run may end before it has read all of it.
    let _ = stdin.write_all(&long);
    let status = exit_within(&mut child, Duration::from_secs(10), "with the pipe open");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("-:2: line is over the limit of 1048576 bytes"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "the line before it is written"
    );
}

/// Pretty-printed JSON is met with a hint that the input must be NDJSON.
#[test]
fn a_document_over_several_lines_gets_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let pretty = "{\n  \"actor\": \"SU:x\",\n  \"verb\": \"post\"\n}\n";
    let out = run(dir.path(), &["--store", "memory:", "run"], pretty);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("error: -:1: ")
            && err.contains("(input must be NDJSON: one JSON document per line)"),
        "{err}"
    );
    // A line that is simply not JSON gets no such hint.
    let out = run(dir.path(), &["--store", "memory:", "run"], "nope\n");
    assert!(
        !text(&out.stderr).contains("NDJSON"),
        "{}",
        text(&out.stderr)
    );
}

/// On a terminal the progress display never mixes into standard output: with both on one
/// terminal every line there is an enriched line or the summary.
#[test]
fn progress_never_mixes_into_output_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    write_workload(dir.path(), 200_000);
    let command = format!(
        "{} --store memory: run --users users.ndjson activities.ndjson",
        env!("CARGO_BIN_EXE_enrich")
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux runs a command on a terminal");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let screen = text(&out.stdout);
    let mut lines = 0;
    for line in screen.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("lines ")
            || line.starts_with("store ")
            || line.starts_with("users.ndjson: imported")
        {
            continue;
        }
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not an output line: {:?}",
            &line[..line.len().min(200)]
        );
        lines += 1;
    }
    assert_eq!(lines, 200_000);
}

/// Standard output redirected to a file, as a shell does it: written from where the file
/// stands, left where the output ends (the shell's next write to the same file follows it),
/// and appended to when opened to append.
#[test]
fn a_redirected_output_is_written_where_the_shell_expects() {
    let dir = tempfile::tempdir().unwrap();
    write_workload(dir.path(), 20_000);
    let job = format!(
        "{} --store memory: run --threads 3 --users users.ndjson activities.ndjson",
        env!("CARGO_BIN_EXE_enrich")
    );
    let sh = |script: &str| {
        let out = shell(dir.path(), script);
        assert!(out.status.success(), "{script}: {}", text(&out.stderr));
        out
    };
    sh(&format!("{job} -o full.ndjson"));
    let full = std::fs::read(dir.path().join("full.ndjson")).unwrap();
    assert_eq!(full.iter().filter(|&&b| b == b'\n').count(), 20_000);
    let expect = |file: &str, head: &str, tail: &str| {
        let got = std::fs::read(dir.path().join(file)).unwrap();
        let want = [head.as_bytes(), &full, tail.as_bytes()].concat();
        assert!(
            got == want,
            "{file}: {} bytes, not {}",
            got.len(),
            want.len()
        );
    };
    sh(&format!(
        "{{ echo head; {job}; echo tail; }} > shared.ndjson"
    ));
    expect("shared.ndjson", "head\n", "tail\n");
    sh(&format!(
        "echo before > appended.ndjson; {job} >> appended.ndjson; echo after >> appended.ndjson"
    ));
    expect("appended.ndjson", "before\n", "after\n");
    sh(&format!("{job} | cat > piped.ndjson"));
    expect("piped.ndjson", "", "");
}

/// A write that fails half way (here the file size limit, `ulimit -f`) leaves the output file
/// with complete lines only, as many as the summary says were written: a prefix of what a full
/// run writes. The file is written by whichever worker's chunk is due, so with 1 and 2 threads.
#[test]
fn a_failed_write_leaves_only_complete_lines() {
    let dir = tempfile::tempdir().unwrap();
    write_workload(dir.path(), 20_000);
    let job = format!(
        "{} {}",
        env!("CARGO_BIN_EXE_enrich"),
        WORKLOAD_RUN.join(" ")
    );
    let full = run(
        dir.path(),
        &[&WORKLOAD_RUN[..], &["-o", "full.ndjson"]].concat(),
        "",
    );
    assert!(full.status.success(), "{}", text(&full.stderr));
    let full = std::fs::read(dir.path().join("full.ndjson")).unwrap();
    for threads in ["1", "2"] {
        // 1,000 blocks of 512 bytes: the limit falls inside a line. SIGXFSZ ignored, so the
        // write fails with EFBIG instead of killing the process.
        let script = format!(
            "trap '' XFSZ; ulimit -f 1000; exec {job} --threads {threads} -o out{threads}.ndjson"
        );
        let out = shell(dir.path(), &script);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "threads {threads}: {err}");
        assert!(
            err.contains("cannot write output"),
            "threads {threads}: {err}"
        );
        let written = std::fs::read(dir.path().join(format!("out{threads}.ndjson"))).unwrap();
        assert!(!written.is_empty() && written.len() <= 1000 * 512);
        assert!(
            full.starts_with(&written),
            "threads {threads}: not a prefix"
        );
        assert!(written.ends_with(b"\n"), "threads {threads}: a cut line");
        let lines = written.iter().filter(|&&b| b == b'\n').count();
        assert!(
            err.contains(&format!("lines {lines} (written {lines}, rejected 0)")),
            "threads {threads}: {lines} lines in the file: {err}"
        );
    }
}

/// A rejects file that cannot take its records (the file size limit) fails the run, and the
/// summary counts only the rejected lines the file kept: never ones a full disk dropped.
#[test]
fn rejects_a_full_disk_dropped_are_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input: String = (0..6_000)
        .map(|i| {
            if i % 2 == 0 {
                format!("{{\"n\":{i}}}\n")
            } else {
                format!("{{bad line {i}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("in.ndjson"), input).unwrap();
    let script = format!(
        "trap '' XFSZ; ulimit -f 200; exec {} --store memory: run in.ndjson -o /dev/null \
         --rejects rejects.ndjson",
        env!("CARGO_BIN_EXE_enrich")
    );
    let out = shell(dir.path(), &script);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write rejects"), "{err}");
    let kept = std::fs::read(dir.path().join("rejects.ndjson")).unwrap();
    assert!(kept.is_empty() || kept.ends_with(b"\n"), "a cut record");
    let kept = kept.iter().filter(|&&b| b == b'\n').count();
    assert!(kept < 3_000, "{kept} records: the limit was never met");
    assert!(
        err.contains(&format!("rejected {kept})")),
        "{kept} records in the file: {err}"
    );
}

/// Past `--max-distinct-ids` the summary's distinct count is an estimate, marked `~` and
/// close to the truth; below it, exact as ever.
#[test]
fn the_distinct_count_past_its_bound_is_an_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let input: String = (0..20_000)
        .map(|i| format!("{{\"actor\":\"SU:u{i}\",\"object\":\"SU:u{}\"}}\n", i / 2))
        .collect();
    let path = dir.path().join("in.ndjson");
    std::fs::write(&path, input).unwrap();
    let distinct = |bound: &str| {
        let out = run(
            dir.path(),
            &[
                "--store",
                "memory:",
                "run",
                "--max-distinct-ids",
                bound,
                path.to_str().unwrap(),
                "-o",
                "/dev/null",
            ],
            "",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let summary = text(&out.stderr);
        let count = summary.split("distinct ").nth(1).unwrap();
        count[..count.find(',').unwrap()].to_string()
    };
    assert_eq!(distinct("20000"), "20000");
    let estimate = distinct("1000");
    let ids: f64 = estimate
        .strip_prefix('~')
        .expect("marked as an estimate")
        .parse()
        .unwrap();
    assert!((ids - 20_000.0).abs() < 600.0, "{estimate} for 20000");
}

/// `--max-pending-output` bounds the enriched output a run holds for a reader that does not
/// keep up: into a pipe nobody reads yet, a run of 107 MB of output holds about the default's
/// 64 MiB of it, and about 4 MiB with `--max-pending-output 4M`; read in the end, both outputs
/// are whole and the same.
#[test]
fn the_output_budget_bounds_what_waits_for_a_slow_reader() {
    let dir = tempfile::tempdir().unwrap();
    // Two users of 9 kB a line: 107 MB of output.
    write_workload_padded(dir.path(), 6_000, 9_000);
    let held = |budget: &[&str]| {
        let mut child = enrich(dir.path())
            .args(WORKLOAD_RUN)
            .args(budget)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Nothing is read until the run's memory has stopped growing for two seconds: it is
        // then waiting on its budget (or it has failed, which the status below says).
        let (mut peak, mut since) = (0, Instant::now());
        let started = Instant::now();
        while since.elapsed() < Duration::from_secs(2)
            && started.elapsed() < Duration::from_secs(60)
        {
            let now = support::peak_kib(child.id()).unwrap_or(0);
            if now > peak {
                (peak, since) = (now, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stdout = support::drain(child.stdout.take());
        let stderr = support::drain(child.stderr.take());
        let status = child.wait().unwrap();
        let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
        assert!(status.success(), "{}", text(&stderr));
        (peak, stdout)
    };
    let (default, full) = held(&[]);
    let (bounded, same) = held(&["--max-pending-output", "4M"]);
    assert_eq!(full.iter().filter(|&&b| b == b'\n').count(), 6_000);
    assert!(full.len() > 100_000_000, "{} bytes of output", full.len());
    assert!(full == same, "the outputs differ");
    // The default lets 64 MiB wait; 4 MiB leaves most of that out.
    assert!(
        default > bounded + (40 << 10),
        "peak {default} KiB waiting with the default budget, {bounded} KiB with 4 MiB"
    );
}

/// `--file-cache` bounds what a file store holds of its file, and `--l1-bytes` what the L1
/// holds: a run that reads every user of a store of tens of megabytes holds the file's pages
/// and the users with the defaults (1 GiB, 256 MiB), the pages no more with a cache of 1 MiB,
/// and the users no more either with an L1 of 1 MiB.
#[test]
fn the_file_cache_and_the_l1_bound_what_a_run_holds() {
    let dir = tempfile::tempdir().unwrap();
    let users = 6_000;
    let bio = "b".repeat(5_000);
    let lines: String = (0..users)
        .map(|i| format!("{{\"id\":\"u{i}\",\"data\":{{\"bio\":\"{bio}\"}}}}\n"))
        .collect();
    let payload = lines.len() as u64 >> 10;
    std::fs::write(dir.path().join("users.ndjson"), lines).unwrap();
    let activities: String = (0..users)
        .map(|i| format!("{{\"actor\":\"SU:u{i}\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("in.ndjson"), activities).unwrap();
    let out = run(
        dir.path(),
        &["--store", "file:s.db", "users", "import", "users.ndjson"],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = std::fs::metadata(dir.path().join("s.db")).unwrap().len() >> 10;
    assert!(file > 30 << 10, "store of {file} KiB");

    // The median of three runs: a run's peak also holds the output waiting to be written, up
    // to all 30 MB of it when the writing falls behind (tests running beside it), which one
    // run alone can add to either side of a comparison.
    let peak = |file_cache: &str, l1: &str| {
        let mut peaks: Vec<u64> = (0..3)
            .map(|_| {
                let (out, peak) = support::run_enrich_measured(
                    dir.path(),
                    &[
                        "--store",
                        "file:s.db",
                        "--file-cache",
                        file_cache,
                        "--l1-bytes",
                        l1,
                        "run",
                        "in.ndjson",
                        "-o",
                        "out.ndjson",
                    ],
                );
                assert!(out.status.success(), "{}", text(&out.stderr));
                peak
            })
            .collect();
        peaks.sort_unstable();
        peaks[1]
    };
    let held = peak("1G", "256M");
    let no_pages = peak("1M", "256M");
    let neither = peak("1M", "1M");
    // The pages of the file read: most of it, as every user was read; then the users.
    assert!(
        held > no_pages + file / 2,
        "peak {held} KiB with a 1 GiB file cache, {no_pages} KiB with 1 MiB, for a file of \
         {file} KiB"
    );
    // Less than all of them: the run's memo keeps up to 16 MiB of users whatever the L1's
    // size (a 1 MiB L1 drops the peak by 22 MB of the 29 MB of users; one ignored, by 2 MB).
    assert!(
        no_pages > neither + payload / 3,
        "peak {no_pages} KiB with a 256 MiB L1, {neither} KiB with 1 MiB, for {payload} KiB \
         of users"
    );
}
