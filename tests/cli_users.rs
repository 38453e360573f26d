//! The `enrich users` commands, driven through the built binary: stdout shapes, stderr
//! messages and exit codes, on the embedded default store and on a private `redis-server`.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{RedisServer, code, printed_record, run_enrich as enrich, stderr, stdout};

/// Checks the exact shape of a printed user and returns it parsed.
fn printed_user(out: &Output, id: &str, data: &str) -> Value {
    printed_record(out, |created, updated| {
        format!(
            r#"{{"created_at":"{created}","updated_at":"{updated}","id":"{id}","data":{data}}}"#
        )
    })
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
    // Nothing was written by any of them: not even an empty store was made.
    let out = enrich(dir.path(), &["users", "get", "a"], "");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(!dir.path().join("enrich.db").exists());
}

/// DATA from standard input is read no further than its limit: an endless input is refused at
/// once, naming the limit, with nothing written.
#[test]
fn data_from_standard_input_is_read_no_further_than_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["users", "add", "a", "-"][..],
        &["collections", "add", "food", "--id", "a", "--data", "-"],
    ] {
        let mut child = support::enrich_command(dir.path())
            .args(args)
            .stdin(std::fs::File::open("/dev/zero").unwrap())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let errors = support::drain(child.stderr.take());
        let status = support::exit_within(&mut child, Duration::from_secs(30), "endless DATA");
        let errors = String::from_utf8(errors.join().unwrap()).unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {errors}");
        assert!(
            errors.contains("DATA from standard input is over the limit of 1048576 bytes"),
            "{args:?}: {errors}"
        );
    }
    assert!(!dir.path().join("enrich.db").exists());
}

/// Standard output and standard error that cannot be written (`>/dev/full 2>/dev/full`) make
/// documented exit codes, never a panic's 101; what was done stays done.
#[test]
fn unwritable_output_is_an_exit_code_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.ndjson"),
        "{\"id\":\"b\",\"data\":{}}\nbad\n",
    )
    .unwrap();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for (args, expected) in [
        (&["users", "add", "a", "{}"][..], 1),
        (&["users", "import", "users.ndjson"], 2),
        (&["users", "get", "a"], 1),
        (&["users", "get", "nobody"], 4),
    ] {
        let status = support::enrich_command(dir.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(full())
            .stderr(full())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(expected), "{args:?}");
    }
    for id in ["a", "b"] {
        let out = enrich(dir.path(), &["users", "get", id], "");
        assert_eq!(code(&out), 0, "{id}: {}", stderr(&out));
    }
}

/// A file store that reaches the process's file size limit (`ulimit -f`) is full, as a full disk
/// is: the import stops naming it, with the batches before it committed, instead of being
/// killed by SIGXFSZ with no word.
#[test]
fn the_file_size_limit_is_a_full_store() {
    let dir = tempfile::tempdir().unwrap();
    let users: String = (0..50_000)
        .map(|i| format!("{{\"id\":\"u{i}\",\"data\":{{\"name\":\"{:0>50}\"}}}}\n", i))
        .collect();
    std::fs::write(dir.path().join("users.ndjson"), users).unwrap();
    let mut command = std::process::Command::new("sh");
    command.current_dir(dir.path()).arg("-c").arg(format!(
        "ulimit -f 2048; exec {} --store file:users.db users import users.ndjson",
        env!("CARGO_BIN_EXE_enrich")
    ));
    support::without_settings(&mut command);
    let out = command.output().unwrap();
    let errors = stderr(&out);
    assert_eq!(code(&out), 1, "{errors}");
    assert!(errors.contains("has no room left"), "{errors}");
    let created: u64 = (errors.split("imported: ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {errors}"));
    assert!(created > 0 && created < 50_000, "{errors}");
    let last = format!("u{}", created - 1);
    let out = enrich(
        dir.path(),
        &["--store", "file:users.db", "users", "get", &last],
        "",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// An open-file limit too low for the runtime is said, not a panic (tokio's, at 6 or 7).
#[test]
fn too_few_open_files_is_said_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for limit in [6, 7] {
        let mut command = std::process::Command::new("sh");
        command.current_dir(dir.path()).arg("-c").arg(format!(
            "ulimit -n {limit}; exec {} --store memory: users get a",
            env!("CARGO_BIN_EXE_enrich")
        ));
        support::without_settings(&mut command);
        let out = command.output().unwrap();
        assert_eq!(code(&out), 1, "{limit}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("the open-file limit (ulimit -n) is {limit}")),
            "{limit}: {}",
            stderr(&out)
        );
    }
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
        // Named as every other command names a bad line: FILE:LINE (`-` for standard input).
        assert!(err.contains("error: -:2: "), "{err}");
        assert!(err.contains("error: -:3: invalid user id \"b c\""), "{err}");
        assert!(err.contains("error: -:5: user \"big\""), "{err}");
        assert!(!err.contains("-:4"), "{err}");
        assert!(
            err.contains("imported: 2 created, 1 existing skipped, 0 overridden, 3 rejected"),
            "{err}"
        );
        assert!(err.contains("error: 3 line(s) rejected"), "{err}");
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

#[test]
fn commands_that_only_read_never_create_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let activities = support::fixture("activities.ndjson");
    let typo = format!("file:{}/enrihc.db", dir.path().display());
    for args in [
        &["users", "get", "a"][..],
        &["users", "update", "a", "{}"],
        &["users", "delete", "a"],
        &["run", &activities],
        &["--store", &typo, "users", "get", "a"],
        &["--store", &typo, "run", &activities],
    ] {
        let out = enrich(elsewhere.path(), args, "");
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{args:?}: {err}");
        assert!(err.starts_with("error: file store /"), "{args:?}: {err}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Commands that write create it, and the run says which store it read.
    let out = enrich(
        dir.path(),
        &[
            "run",
            "--users",
            &support::fixture("users.ndjson"),
            &activities,
        ],
        "",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let store = format!("store file:{}", dir.path().join("enrich.db").display());
    assert!(stderr(&out).contains(&store), "{}", stderr(&out));
    let out = enrich(dir.path(), &["run", &activities], "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains(&store), "{}", stderr(&out));
}

/// What `users get` and `users add` make of `dir`'s store after whatever happened to it.
fn store_still_opens(dir: &Path, what: &str) {
    let out = enrich(dir, &["users", "get", "k"], "");
    assert!(
        [0, 2, 4].contains(&code(&out)),
        "{what}: users get: {}",
        stderr(&out)
    );
    if code(&out) == 2 {
        assert!(
            stderr(&out).contains("does not exist"),
            "{what}: {}",
            stderr(&out)
        );
    }
    let out = enrich(dir, &["users", "add", "k", "--get-or-create"], "");
    assert_eq!(code(&out), 0, "{what}: users add: {}", stderr(&out));
}

#[test]
fn a_creation_killed_at_any_moment_leaves_a_store_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("enrich.db");
    // Kills spread over the whole life of an uninterrupted creation (some 10 to 30 ms), from
    // a fixed pseudo-random sequence.
    let started = std::time::Instant::now();
    store_still_opens(dir.path(), "an uninterrupted creation");
    let span = u64::try_from(started.elapsed().as_micros() / 2)
        .unwrap()
        .max(20_000);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut killed_before_it_existed = 0;
    let mut killed_mid_creation = 0;
    for round in 0..100 {
        let _ = std::fs::remove_file(&db);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = std::time::Duration::from_micros(seed % span);
        let mut child = support::enrich_command(dir.path())
            .args(["users", "add", "k", r#"{"round":1}"#])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        if !db.exists() {
            killed_before_it_existed += 1;
        }
        if std::fs::read_dir(dir.path()).unwrap().count() > usize::from(db.exists()) {
            killed_mid_creation += 1;
        }
        store_still_opens(
            dir.path(),
            &format!("round {round}, killed after {delay:?}"),
        );
    }
    // Temp files of the killed creators are removed by later creations.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "enrich.db")
        .collect();
    assert!(left.len() <= 1, "{left:?}");
    eprintln!(
        "{killed_before_it_existed} of 100 killed before the store existed, \
         {killed_mid_creation} while its temp file was there"
    );
}

#[test]
fn leftovers_of_an_interrupted_creation_are_started_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("enrich.db");
    let mut header_only = vec![0u8; 73_728];
    header_only[20..40].fill(7);
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("all zero", vec![0u8; 73_728]),
        ("a header without its magic number", header_only),
    ] {
        std::fs::write(&db, &bytes).unwrap();
        let out = enrich(dir.path(), &["users", "get", "a"], "");
        assert_eq!(code(&out), 2, "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("never initialised"),
            "{what}: {}",
            stderr(&out)
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "{what}: a read changed it"
        );
        let out = enrich(dir.path(), &["users", "add", "a"], "");
        printed_user(&out, "a", "{}");
        let out = enrich(dir.path(), &["users", "get", "a"], "");
        printed_user(&out, "a", "{}");
    }
    // Anything else is not taken for a store, and left alone.
    std::fs::write(&db, "my notes\n").unwrap();
    for args in [&["users", "get", "a"][..], &["users", "add", "a"]] {
        let out = enrich(dir.path(), args, "");
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("is not an enrich file store"),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(&db.display().to_string()));
    }
    assert_eq!(std::fs::read_to_string(&db).unwrap(), "my notes\n");
}

/// A store started afresh keeps its file's permissions; one named through a symbolic link is
/// made where the link points, the link kept; a path that is not a regular file (a FIFO, on
/// which an open would wait for ever, or a directory) is refused at once.
#[test]
fn a_store_path_is_a_regular_file_kept_as_it_is() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.db");
    std::fs::write(&private, "").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = enrich(
        dir.path(),
        &["--store", "file:private.db", "users", "add", "a"],
        "",
    );
    printed_user(&out, "a", "{}");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    std::fs::write(dir.path().join("target.db"), "").unwrap();
    std::os::unix::fs::symlink("target.db", dir.path().join("link.db")).unwrap();
    let out = enrich(
        dir.path(),
        &["--store", "file:link.db", "users", "add", "a"],
        "",
    );
    printed_user(&out, "a", "{}");
    let link = std::fs::symlink_metadata(dir.path().join("link.db")).unwrap();
    assert!(link.file_type().is_symlink());
    let out = enrich(
        dir.path(),
        &["--store", "file:target.db", "users", "get", "a"],
        "",
    );
    printed_user(&out, "a", "{}");

    // A link to nothing yet (through another link): the store is made where it points.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("../sub/made.db", dir.path().join("sub/inner.db")).unwrap();
    std::os::unix::fs::symlink("sub/inner.db", dir.path().join("dangling.db")).unwrap();
    let out = enrich(
        dir.path(),
        &["--store", "file:dangling.db", "users", "add", "b"],
        "",
    );
    printed_user(&out, "b", "{}");
    let out = enrich(
        dir.path(),
        &["--store", "file:sub/made.db", "users", "get", "b"],
        "",
    );
    printed_user(&out, "b", "{}");
    assert!(
        std::fs::symlink_metadata(dir.path().join("dangling.db"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.path().join("fifo.db"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::fs::create_dir(dir.path().join("dir.db")).unwrap();
    for (path, what) in [("fifo.db", "a device, a FIFO"), ("dir.db", "a directory")] {
        let store = format!("file:{path}");
        for args in [
            &["--store", &store, "users", "get", "a"][..],
            &["--store", &store, "users", "add", "a"],
        ] {
            let mut child = support::enrich_command(dir.path())
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let errors = support::drain(child.stderr.take());
            let status = support::exit_within(&mut child, Duration::from_secs(30), path);
            let errors = String::from_utf8(errors.join().unwrap()).unwrap();
            assert_eq!(status.code(), Some(2), "{args:?}: {errors}");
            assert!(
                errors.contains("is not a regular file: it is") && errors.contains(what),
                "{args:?}: {errors}"
            );
        }
    }
    assert!(
        std::fs::symlink_metadata(dir.path().join("fifo.db"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// A tmpfs of `size` at `dir`, if this process may mount one (root); unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_at_creation_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(dir.path(), "8k") else {
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let out = enrich(dir.path(), &["users", "add", "a"], "");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot create file store") && err.contains("No space left"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Once there is room, the store is created as if nothing had happened.
    disk.resize("4m");
    let out = enrich(dir.path(), &["users", "add", "a"], "");
    printed_user(&out, "a", "{}");
}
