//! Imports stopped by the store, against a real `redis-server` that runs out of memory, or by
//! a signal: what was committed is reported, and matches what the store holds.

mod support;

use support::{RedisServer, run_enrich as run};

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Users of about 1 kB each: 20,000 of them cannot fit in a few MB.
fn users(count: usize) -> String {
    let padding = "p".repeat(1_000);
    (0..count)
        .map(|i| format!("{{\"id\":\"u{i}\",\"data\":{{\"p\":\"{padding}\"}}}}\n"))
        .collect()
}

/// A Redis that refuses writes once it holds a few MB, as a production one at `maxmemory`
/// with `noeviction` does.
fn small_redis() -> RedisServer {
    let server = RedisServer::start();
    server.cap_memory("4mb");
    server
}

fn keys(server: &RedisServer) -> u64 {
    redis::cmd("DBSIZE")
        .query(&mut server.connection())
        .unwrap()
}

/// `enrich users import` stopped by OOM prints the summary of the batches it committed, then
/// the error naming the first line not committed.
#[test]
fn an_import_stopped_by_the_store_reports_what_it_committed() {
    let server = small_redis();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.ndjson"), users(20_000)).unwrap();
    let out = run(
        dir.path(),
        &["--store", &server.url(), "users", "import", "users.ndjson"],
        "",
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let stored = keys(&server);
    assert!(stored > 0 && stored < 20_000, "{stored} users stored");
    let summary = format!(
        "imported: {stored} created, 0 existing skipped, 0 overridden, 0 rejected, of {stored} \
         lines"
    );
    let at = err
        .find(&summary)
        .unwrap_or_else(|| panic!("{summary:?} in {err}"));
    let error = err
        .find(&format!("error: import stopped at line {}: ", stored + 1))
        .unwrap_or_else(|| panic!("no error naming line {} in {err}", stored + 1));
    assert!(at < error, "the summary comes before the error: {err}");
    assert!(err.contains("OOM"), "{err}");
}

/// The same through `enrich run --users`: the summary names the users file, and the run
/// stops before creating its output.
#[test]
fn a_run_whose_users_import_is_stopped_reports_what_it_committed() {
    let server = small_redis();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.ndjson"), users(20_000)).unwrap();
    std::fs::write(dir.path().join("in.ndjson"), "{\"actor\":\"SU:u1\"}\n").unwrap();
    let out = run(
        dir.path(),
        &[
            "--store",
            &server.url(),
            "run",
            "--users",
            "users.ndjson",
            "in.ndjson",
            "-o",
            "out.ndjson",
        ],
        "",
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let stored = keys(&server);
    assert!(
        err.contains(&format!(
            "users.ndjson: imported: {stored} created, 0 existing skipped, 0 overridden, \
             0 rejected, of {stored} lines"
        )),
        "{stored}: {err}"
    );
    assert!(err.contains("error: import stopped at line"), "{err}");
    assert!(!dir.path().join("out.ndjson").exists());
}

/// SIGINT or SIGTERM in the middle of an import: the lines it read are committed, the summary
/// says it was interrupted and how many lines are in, the store holds exactly those, and the
/// exit code is 130 or 143.
#[test]
fn a_signal_stops_an_import_with_what_it_read_committed() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.ndjson"), users(200_000)).unwrap();
    for (signal, number, code) in [("-INT", 2, 130), ("-TERM", 15, 143)] {
        let store = format!("file:{}.db", &signal[1..]);
        let mut child = support::enrich_command(dir.path())
            .args(["--store", &store, "users", "import", "users.ndjson"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let errors = support::drain(child.stderr.take());
        while !support::catches(child.id(), number) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        let sent = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = support::exit_within(&mut child, Duration::from_secs(60), signal);
        let errors = text(&errors.join().unwrap());
        assert_eq!(status.code(), Some(code), "{errors}");
        let said = format!("interrupted by SIG{}: imported: ", &signal[1..]);
        let rest = (errors.split(&said).nth(1)).unwrap_or_else(|| panic!("{signal}: {errors}"));
        let created: u64 = rest.split(' ').next().unwrap().parse().unwrap();
        assert!(
            rest.contains(&format!("of {created} lines")),
            "{signal}: {errors}"
        );
        assert!(created < 200_000, "{signal}: not interrupted: {errors}");
        for (id, there) in [(created.checked_sub(1), true), (Some(created), false)] {
            let Some(id) = id else { continue };
            let out = run(
                dir.path(),
                &["--store", &store, "users", "get", &format!("u{id}")],
                "",
            );
            assert_eq!(out.status.success(), there, "{signal} u{id}: {errors}");
        }
    }
}
