//! The `enrich users` commands, driven through the built binary: stdout shapes, stderr
//! messages and exit codes, on the embedded default store and on a private `redis-server`.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::{RedisServer, run_enrich as enrich};

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

/// Checks the exact shape of a printed user and returns it parsed.
fn printed_user(out: &Output, id: &str, data: &str) -> Value {
    assert_eq!(code(out), 0, "stderr: {}", stderr(out));
    let text = stdout(out);
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    let user: Value = serde_json::from_str(&text).unwrap();
    let created = user["created_at"].as_str().unwrap();
    let updated = user["updated_at"].as_str().unwrap();
    assert_eq!(
        text.trim_end(),
        format!(
            r#"{{"created_at":"{created}","updated_at":"{updated}","id":"{id}","data":{data}}}"#
        )
    );
    for ts in [created, updated] {
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    }
    user
}

/// The whole users lifecycle, on whatever store `base` selects.
fn lifecycle(dir: &Path, base: &[&str]) {
    let run = |args: &[&str], stdin: &str| {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        enrich(dir, &all, stdin)
    };

    let out = run(
        &["users", "add", "alice", r#"{"name":"Alice","age":3}"#],
        "",
    );
    let added = printed_user(&out, "alice", r#"{"name":"Alice","age":3}"#);
    assert_eq!(added["created_at"], added["updated_at"]);

    let out = run(&["users", "add", "alice", "{}"], "");
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("alice"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    let out = run(
        &["users", "add", "alice", r#"{"x":1}"#, "--get-or-create"],
        "",
    );
    assert_eq!(stdout(&out), stdout(&run(&["users", "get", "alice"], "")));
    printed_user(&out, "alice", r#"{"name":"Alice","age":3}"#);

    let out = run(&["users", "update", "alice", "-"], r#"{"name":"Alicia"}"#);
    let updated = printed_user(&out, "alice", r#"{"name":"Alicia"}"#);
    assert_eq!(updated["created_at"], added["created_at"]);
    assert!(updated["updated_at"].as_str() > added["updated_at"].as_str());

    let out = run(&["users", "get", "alice"], "");
    printed_user(&out, "alice", r#"{"name":"Alicia"}"#);

    let out = run(&["users", "delete", "alice"], "");
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "{}\n"));
    for args in [
        &["users", "get", "alice"][..],
        &["users", "delete", "alice"],
        &["users", "update", "alice", "{}"],
    ] {
        let out = run(args, "");
        assert_eq!(code(&out), 4, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("\"alice\" does not exist"),
            "{}",
            stderr(&out)
        );
    }

    let out = run(&["users", "add", "bob"], "");
    printed_user(&out, "bob", "{}");
    let out = run(&["users", "add", "nulldata", "null"], "");
    printed_user(&out, "nulldata", "{}");
}

#[test]
fn lifecycle_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    lifecycle(dir.path(), &[]);
    assert!(dir.path().join("enrich.db").exists());
}

#[test]
fn lifecycle_on_redis() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    lifecycle(dir.path(), &["--store", &server.url()]);
}

#[test]
fn lifecycle_on_redis_with_password() {
    let server = RedisServer::with_password("pw-1");
    let dir = tempfile::tempdir().unwrap();
    lifecycle(dir.path(), &["--store", &server.url_with_password("pw-1")]);
    let out = enrich(
        dir.path(),
        &[
            "--store",
            &server.url_with_password("nope"),
            "users",
            "get",
            "x",
        ],
        "",
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("credentials"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("nope"), "{}", stderr(&out));
}

#[test]
fn bad_input_exits_2_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(256);
    let big = format!(r#"{{"k":"{}"}}"#, "v".repeat(10_240));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["users", "add", "a b"], "invalid user id"),
        (vec!["users", "add", "a:b"], "':'"),
        (vec!["users", "add", ""], "must not be empty"),
        (vec!["users", "add", &long], "256 bytes"),
        (vec!["users", "get", "é"], "invalid user id"),
        (vec!["users", "add", "a", "[1]"], "must be a JSON object"),
        (vec!["users", "add", "a", "{nope"], "not valid JSON"),
        (
            vec!["users", "add", "a", &big],
            "over the limit of 10240 bytes",
        ),
        (
            vec!["--store", "postgres://x", "users", "get", "a"],
            "unknown store URL",
        ),
        (
            vec!["--namespace", "a b", "users", "get", "a"],
            "invalid namespace",
        ),
        (vec!["users", "frobnicate"], "unrecognized subcommand"),
    ];
    for (args, expected) in cases {
        let out = enrich(dir.path(), &args, "");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty());
    }
    // Nothing was written by any of them.
    let out = enrich(dir.path(), &["users", "get", "a"], "");
    assert_eq!(code(&out), 4);
}

#[test]
fn unreachable_store_exits_1_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}", support::free_port());
    let out = enrich(dir.path(), &["--store", &url, "users", "get", "a"], "");
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).starts_with("error: "));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
}

#[test]
fn help_lists_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = enrich(dir.path(), &["--help"], "");
    assert_eq!(code(&out), 0);
    let help = stdout(&out);
    for line in [
        "Exit codes:",
        "2  invalid input",
        "3  conflict",
        "4  not found",
    ] {
        assert!(help.contains(line), "{help}");
    }
}

#[test]
fn store_and_namespace_come_from_the_environment() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let with_env = |ns: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_enrich"))
            .args(args)
            .current_dir(dir.path())
            .env("ENRICH_STORE", server.url())
            .env("ENRICH_NAMESPACE", ns)
            .output()
            .unwrap()
    };
    assert_eq!(code(&with_env("one", &["users", "add", "u"])), 0);
    assert_eq!(code(&with_env("one", &["users", "get", "u"])), 0);
    assert_eq!(code(&with_env("two", &["users", "get", "u"])), 4);
    assert!(!dir.path().join("enrich.db").exists());
}

#[test]
fn persists_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let first = enrich(dir.path(), &["users", "add", "p", r#"{"v":1}"#], "");
    assert_eq!(code(&first), 0);
    let second = enrich(dir.path(), &["users", "get", "p"], "");
    assert_eq!(stdout(&first), stdout(&second));
}

#[test]
fn import_reports_bad_lines_and_counts() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let too_big = format!(r#"{{"id":"big","data":{{"k":"{}"}}}}"#, "v".repeat(10_240));
    let input = [
        r#"{"id":"a","data":{"n":1}}"#,
        "not json",
        r#"{"id":"b c","data":{}}"#,
        "",
        &too_big,
        r#"{"id":"b","created_at":"2021-04-13T22:53:19.670051Z"}"#,
        r#"{"id":"a","data":{"n":2}}"#,
    ]
    .join("\n");
    let store = server.url();
    for (base, name) in [(vec![], "file"), (vec!["--store", store.as_str()], "redis")] {
        let run = |args: &[&str], stdin: &str| {
            let all: Vec<&str> = base.iter().chain(args).copied().collect();
            enrich(dir.path(), &all, stdin)
        };
        let out = run(&["users", "import"], &input);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{name}: {err}");
        assert!(err.contains("line 2: "), "{err}");
        assert!(err.contains("line 3: invalid user id \"b c\""), "{err}");
        assert!(err.contains("line 5: user \"big\""), "{err}");
        assert!(!err.contains("line 4"), "{err}");
        assert!(
            err.contains("imported: 2 created, 1 existing skipped, 0 overridden, 3 rejected"),
            "{err}"
        );
        let out = run(&["users", "get", "b"], "");
        printed_user(&out, "b", "{}");
        assert!(stdout(&out).starts_with(
            r#"{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z""#
        ));
        assert_eq!(
            serde_json::from_str::<Value>(&stdout(&run(&["users", "get", "a"], ""))).unwrap()["data"]
                ["n"],
            1
        );

        let file = dir.path().join("users.ndjson");
        std::fs::write(&file, r#"{"id":"a","data":{"n":3}}"#).unwrap();
        let out = run(
            &[
                "users",
                "import",
                file.to_str().unwrap(),
                "--override-existing",
            ],
            "",
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(stderr(&out).contains("0 created, 0 existing skipped, 1 overridden, 0 rejected"));
        let out = run(&["users", "get", "a"], "");
        printed_user(&out, "a", r#"{"n":3}"#);
    }
    let out = enrich(dir.path(), &["users", "import", "missing.ndjson"], "");
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("missing.ndjson"), "{}", stderr(&out));
}

/// Runs `enrich ARGS` and says how long it took.
fn timed(dir: &Path, args: &[&str]) -> (Output, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = enrich(dir, args, "");
    (out, started.elapsed())
}

#[test]
fn what_retrying_cannot_fix_fails_at_once_naming_the_cause() {
    let server = RedisServer::with_password("right-pw");
    let mut admin = redis::Client::open(server.url_with_password("right-pw"))
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "reader",
            "on",
            ">reader-pw-5",
            "~*",
            "+get",
            "+mget",
            "+ping",
        ])
        .exec(&mut admin)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = support::fixture("users.ndjson");
    let activities = support::fixture("activities.ndjson");
    let wrong = server.url_with_password("typo-pw-8");
    let reader = format!("redis://reader:reader-pw-5@127.0.0.1:{}", server.port());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--store", &wrong, "users", "get", "a"], "credentials"),
        (vec!["--store", &wrong, "run", &activities], "credentials"),
        (vec!["--store", &reader, "users", "add", "a"], "NOPERM"),
        (
            vec!["--store", &reader, "run", "--users", &users, &activities],
            "NOPERM",
        ),
    ];
    for (args, cause) in cases {
        let (out, took) = timed(dir.path(), &args);
        let err = stderr(&out);
        assert_eq!(code(&out), 1, "{args:?}: {err}");
        assert!(err.contains(cause), "{args:?}: {err}");
        assert!(err.contains(&server.url()), "{args:?}: {err}");
        assert!(!err.contains("retrying"), "{args:?}: {err}");
        for secret in ["typo-pw-8", "reader-pw-5", "right-pw"] {
            assert!(!err.contains(secret), "{args:?}: {err}");
        }
        assert!(
            took < std::time::Duration::from_secs(2),
            "{args:?} took {took:?}"
        );
    }
}

#[test]
fn a_store_that_is_down_is_said_at_once_then_retried() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}", support::free_port());
    let started = std::time::Instant::now();
    let mut child = support::enrich_command(dir.path())
        .args(["--store", &url, "run", "--store-timeout", "20"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let took = started.elapsed();
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "{line}");
    assert!(line.starts_with("enrich: "), "{line}");
    assert!(
        line.contains(&url) && line.contains("unavailable"),
        "{line}"
    );
    assert!(
        line.contains("retrying for up to 20 s (--store-timeout)"),
        "{line}"
    );
    assert!(took < std::time::Duration::from_secs(2), "{took:?}: {line}");
}

#[test]
fn no_help_or_error_shows_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "SECRETPW-31";
    let url = format!(
        "redis://default:{secret}@127.0.0.1:{}",
        support::free_port()
    );
    let with_env = |args: &[&str]| {
        support::enrich_command(dir.path())
            .args(args)
            .env("ENRICH_STORE", &url)
            .env("ENRICH_API_KEY", format!("key-{secret}"))
            .env("ENRICH_API_SECRET", format!("secret-{secret}"))
            .output()
            .unwrap()
    };
    for args in [
        &["--help"][..],
        &["-h"],
        &["run", "--help"],
        &["users", "--help"],
        &["users", "get", "--help"],
        &["serve", "--help"],
        &["bench", "--help"],
        &["users", "get", "x"],
        &["run", "--store-timeout", "0"],
        &["no-such-command"],
    ] {
        let out = with_env(args);
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains(secret), "{args:?}: {all}");
    }
    for store in [
        format!("postgres://u:{secret}@h"),
        format!("redis:/u:{secret}@h:1"),
        format!("redis://u:{secret}@127.0.0.1:notaport"),
        format!("redis+cluster://u:{secret}@127.0.0.1:1,127.0.0.1"),
    ] {
        let out = enrich(dir.path(), &["--store", &store, "users", "get", "x"], "");
        assert_ne!(code(&out), 0, "{store}");
        assert!(!stderr(&out).contains(secret), "{store}: {}", stderr(&out));
    }
}
