//! Records written into Redis by something else, in shapes we never write: every read checks
//! the whole record, so a corrupt one is an error naming its user — never printed, never
//! spliced into output, never a panic — and no write builds a new record upon one.
//! Driven through the built binary against a private `redis-server`.

mod support;

use std::process::Output;

use support::{RedisServer, run_enrich};

const CREATED: &str = "2021-04-13T22:53:19.670051Z";

/// A record exactly as we write it.
fn record(id: &str, data: &str) -> String {
    format!(r#"{{"created_at":"{CREATED}","updated_at":"{CREATED}","id":"{id}","data":{data}}}"#)
}

struct Redis {
    server: RedisServer,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        Redis {
            server: RedisServer::start(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn set(&self, id: &str, bytes: impl AsRef<[u8]>) {
        redis::cmd("SET")
            .arg(format!("enrich:user:{id}"))
            .arg(bytes.as_ref())
            .exec(&mut self.server.connection())
            .unwrap();
    }

    fn stored(&self, id: &str) -> Option<Vec<u8>> {
        redis::cmd("GET")
            .arg(format!("enrich:user:{id}"))
            .query(&mut self.server.connection())
            .unwrap()
    }

    fn enrich(&self, args: &[&str], stdin: &str) -> Output {
        let url = self.server.url();
        let all: Vec<&str> = ["--store", url.as_str()]
            .iter()
            .chain(args)
            .copied()
            .collect();
        run_enrich(self.dir.path(), &all, stdin)
    }
}

/// The command failed with exit 1 (a store-side fault, not the caller's input), saying on one
/// line that `id`'s stored record is corrupt, and wrote nothing to standard output.
fn fails_naming(out: &Output, id: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains(&format!("user {id}: stored user record is corrupt")),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A non-ASCII character inside `created_at`, the record as long as a good one: a reader that
/// slices it at fixed offsets would cut a character in two.
fn non_ascii_created_at(id: &str) -> String {
    record(id, r#"{"name":"Bob"}"#).replacen("53:19.6", "53:19é", 1)
}

#[test]
fn a_record_with_a_non_ascii_created_at_is_never_served() {
    let redis = Redis::start();
    let out = redis.enrich(&["users", "add", "good", r#"{"name":"Good"}"#], "");
    assert_eq!(out.status.code(), Some(0));
    let corrupt = non_ascii_created_at("bob");
    assert_eq!(corrupt.len(), record("bob", r#"{"name":"Bob"}"#).len());
    redis.set("bob", &corrupt);

    fails_naming(&redis.enrich(&["users", "get", "bob"], ""), "bob");
    assert_eq!(
        redis.enrich(&["users", "get", "good"], "").status.code(),
        Some(0)
    );
    fails_naming(
        &redis.enrich(&["users", "add", "bob", "{}", "--get-or-create"], ""),
        "bob",
    );

    // A page naming it fails: a store fault is never served as data, nor as a missing user.
    let input = "{\"actor\":\"SU:bob\",\"object\":\"SU:good\"}\n";
    for args in [
        &["run", "--quiet"][..],
        &["run", "--quiet", "--rejects", "rejects.ndjson"],
    ] {
        let out = redis.enrich(args, input);
        fails_naming(&out, "bob");
    }
    // A page without it is served.
    let out = redis.enrich(&["run", "--quiet"], "{\"actor\":\"SU:good\"}\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""name":"Good""#));

    // An update would keep that created_at: it fails, and the record is left as it was.
    fails_naming(
        &redis.enrich(&["users", "update", "bob", r#"{"name":"New"}"#], ""),
        "bob",
    );
    assert_eq!(redis.stored("bob").unwrap(), corrupt.as_bytes());

    // So would an import that overrides it without a created_at of its own; nothing of its
    // batch is written.
    let lines = "{\"id\":\"carl\",\"data\":{}}\n{\"id\":\"bob\",\"data\":{\"n\":1}}\n";
    let out = redis.enrich(&["users", "import", "--override-existing"], lines);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("user bob: stored user record is corrupt"),
        "{err}"
    );
    assert!(err.contains("nothing of this batch was written"), "{err}");
    assert_eq!(redis.stored("bob").unwrap(), corrupt.as_bytes());
    assert_eq!(redis.stored("carl"), None);
    // One that brings its own created_at replaces the record whole.
    let lines = format!("{{\"id\":\"bob\",\"created_at\":\"{CREATED}\",\"data\":{{}}}}\n");
    let out = redis.enrich(&["users", "import", "--override-existing"], &lines);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(redis.stored("bob").unwrap(), record("bob", "{}").as_bytes());
    assert_eq!(
        redis.enrich(&["users", "get", "bob"], "").status.code(),
        Some(0)
    );
}

#[test]
fn every_kind_of_corruption_is_an_error_naming_the_user() {
    let redis = Redis::start();
    let good = record("bob", r#"{"n":1}"#);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "month 13",
            good.replacen("2021-04-13", "2021-13-13", 1).into_bytes(),
        ),
        (
            "short created_at",
            good.replacen(".670051Z", ".67005Z", 1).into_bytes(),
        ),
        (
            "non-ASCII updated_at",
            good.replace("T22:53:19.670051Z\",\"id", "T22:53:1é.670051Z\",\"id")
                .into_bytes(),
        ),
        (
            "no updated_at",
            good.replacen(r#""updated_at":"2021-04-13T22:53:19.670051Z","#, "", 1)
                .into_bytes(),
        ),
        ("trailing bytes", format!("{good}x").into_bytes()),
        ("data not an object", record("bob", "[1]").into_bytes()),
        ("data not JSON", record("bob", "{]").into_bytes()),
        (
            "lone surrogate",
            record("bob", r#"{"s":"\ud800"}"#).into_bytes(),
        ),
        (
            "number out of range",
            record("bob", r#"{"n":1e400}"#).into_bytes(),
        ),
        (
            "another user's record",
            record("alice", r#"{"n":1}"#).into_bytes(),
        ),
        (
            "longer than a record can be",
            record("bob", &format!(r#"{{"bio":"{}"}}"#, "x".repeat(1 << 20))).into_bytes(),
        ),
        ("invalid UTF-8", {
            let mut bytes = good.clone().into_bytes();
            let at = bytes.len() - 3;
            bytes[at] = 0xff;
            bytes
        }),
    ];
    for (what, bytes) in &cases {
        redis.set("bob", bytes);
        let out = redis.enrich(&["users", "get", "bob"], "");
        assert_eq!(out.status.code(), Some(1), "{what}");
        fails_naming(&out, "bob");
        let out = redis.enrich(&["run", "--quiet"], "{\"actor\":\"SU:bob\"}\n");
        fails_naming(&out, "bob");
    }
    redis.set("bob", record("alice", "{}"));
    let err = redis.enrich(&["users", "get", "bob"], "").stderr;
    assert!(
        String::from_utf8_lossy(&err).contains(r#"it holds user "alice""#),
        "{}",
        String::from_utf8_lossy(&err)
    );

    // An update keeps only created_at and writes the rest anew: where created_at is intact,
    // the record comes out whole.
    redis.set("bob", record("alice", "{]"));
    let out = redis.enrich(&["users", "update", "bob", r#"{"n":2}"#], "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = String::from_utf8(redis.stored("bob").unwrap()).unwrap();
    assert!(stored.starts_with(&format!(r#"{{"created_at":"{CREATED}","updated_at":""#)));
    assert!(
        stored.ends_with(r#","id":"bob","data":{"n":2}}"#),
        "{stored}"
    );
    assert_eq!(
        redis.enrich(&["users", "get", "bob"], "").status.code(),
        Some(0)
    );
}

/// A key of ours holding a hash or a list (something else wrote it) is nil to `MGET`, as a key
/// that does not exist is: it must be a fault naming the key, never a missing user or entry.
#[test]
fn a_key_of_another_type_is_an_error_not_a_missing_record() {
    let redis = Redis::start();
    let mut conn = redis.server.connection();
    redis::cmd("HSET")
        .arg("enrich:user:bob")
        .arg("name")
        .arg("Bob")
        .exec(&mut conn)
        .unwrap();
    redis::cmd("RPUSH")
        .arg("enrich:object:food:x")
        .arg("1")
        .exec(&mut conn)
        .unwrap();
    let fails_naming_key = |out: &Output, key: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {err}");
        assert!(
            err.contains(&format!(
                "another type than a string under {key} (WRONGTYPE)"
            )),
            "{err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    fails_naming_key(
        &redis.enrich(&["users", "get", "bob"], ""),
        "enrich:user:bob",
    );
    fails_naming_key(
        &redis.enrich(&["collections", "get", "food", "x"], ""),
        "enrich:object:food:x",
    );
    // Beside a user that is missing and one that is not: the page fails, whichever is named.
    redis.set("alice", record("alice", "{}"));
    let page = "{\"actor\":\"SU:alice\",\"object\":\"SU:carol\",\"target\":\"SU:bob\"}\n";
    fails_naming_key(&redis.enrich(&["run", "--quiet"], page), "enrich:user:bob");
    fails_naming_key(
        &redis.enrich(&["run", "--quiet"], "{\"object\":\"SO:food:x\"}\n"),
        "enrich:object:food:x",
    );
    // The missing one alone is still missing.
    let out = redis.enrich(&["run", "--quiet"], "{\"actor\":\"SU:carol\"}\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ReferenceNotFound"));
}

/// The update script's check of the kept `created_at` runs in Redis, in Lua: it must take
/// exactly the timestamps a read takes.
#[tokio::test]
async fn the_scripts_keep_exactly_the_created_at_a_read_takes() {
    let server = RedisServer::start();
    let store = enrich::store::open(&server.url(), &enrich::StoreOptions::new())
        .await
        .unwrap();
    let mut conn = server.connection();
    let user = enrich::NewUser::new("bob", Some(serde_json::json!({"n": 1}))).unwrap();
    let bob = enrich::UserId::parse("bob").unwrap();
    for created_at in [
        "2021-04-13T22:53:19.670051Z",
        "2024-02-29T00:00:00.000000Z",
        "2000-02-29T12:00:00.000000Z",
        "0000-01-01T00:00:00.000000Z",
        "9999-12-31T23:59:59.999999Z",
        "1900-02-29T12:00:00.000000Z",
        "2021-02-29T12:00:00.000000Z",
        "2021-04-31T12:00:00.000000Z",
        "2021-00-10T12:00:00.000000Z",
        "2021-13-10T12:00:00.000000Z",
        "2021-12-00T12:00:00.000000Z",
        "2021-12-10T24:00:00.000000Z",
        "2021-12-10T23:60:00.000000Z",
        "2021-12-10T23:59:60.000000Z",
        "2021-12-10T23:59:59.00000aZ",
        "2021-12-10 23:59:59.000000Z",
        "2021-12-10T23:59:59.000000z",
        "2021-12-1\u{e9}23:59:59.000000Z",
        "\u{660}021-12-10T23:59:59.00000Z",
    ] {
        let record = record("bob", "{}").replacen(CREATED, created_at, 1);
        redis::cmd("SET")
            .arg("enrich:user:bob")
            .arg(&record)
            .exec(&mut conn)
            .unwrap();
        let read = store.get(&bob).await;
        let updated = store.update(&user).await;
        assert_eq!(
            read.is_ok(),
            updated.is_ok(),
            "{created_at}: {read:?} / {updated:?}"
        );
        let stored: Vec<u8> = redis::cmd("GET")
            .arg("enrich:user:bob")
            .query(&mut conn)
            .unwrap();
        match updated {
            Ok(new) => {
                assert_eq!(new.created_at(), created_at);
                assert_eq!(stored, new.as_bytes());
            }
            Err(err) => {
                assert!(
                    err.to_string()
                        .contains("user bob: stored user record is corrupt"),
                    "{err}"
                );
                assert_eq!(stored, record.as_bytes(), "left as it was");
            }
        }
    }
}
