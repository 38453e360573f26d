//! The `enrich collections` commands and `enrich run --objects`, driven through the built
//! binary: stdout shapes, stderr messages and exit codes, on the embedded default store, on a
//! private `redis-server`, and on `memory:` (one process, so only what one command can show).

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::{RedisServer, code, printed_record, run_enrich as enrich, stderr, stdout};

/// Checks the exact shape of a printed entry (one compact line, Stream's key order) and
/// returns it parsed.
fn printed_entry(out: &Output, collection: &str, id: &str, data: &str) -> Value {
    printed_record(out, |created, updated| {
        format!(
            r#"{{"id":"{id}","collection":"{collection}","foreign_id":"{collection}:{id}","data":{data},"created_at":"{created}","updated_at":"{updated}"}}"#
        )
    })
}

/// Every entry command, on whatever store `base` selects.
fn lifecycle(dir: &Path, base: &[&str]) {
    let run = |args: &[&str], stdin: &str| {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        enrich(dir, &all, stdin)
    };

    let out = run(
        &[
            "collections",
            "add",
            "food",
            "--id",
            "burger",
            "--data",
            r#"{"name":"Burger","n":1}"#,
        ],
        "",
    );
    let added = printed_entry(&out, "food", "burger", r#"{"name":"Burger","n":1}"#);
    assert_eq!(added["created_at"], added["updated_at"]);
    let added_line = stdout(&out);

    let out = run(
        &[
            "collections",
            "add",
            "food",
            "--id",
            "burger",
            "--data",
            r#"{"x":1}"#,
        ],
        "",
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("food:burger"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    let out = run(&["collections", "get", "food", "burger"], "");
    assert_eq!(stdout(&out), added_line);
    printed_entry(&out, "food", "burger", r#"{"name":"Burger","n":1}"#);

    let out = run(
        &["collections", "update", "food", "burger", "--data", "-"],
        r#"{"name":"Big Burger"}"#,
    );
    let updated = printed_entry(&out, "food", "burger", r#"{"name":"Big Burger"}"#);
    assert_eq!(updated["created_at"], added["created_at"]);
    assert!(updated["updated_at"].as_str() > added["updated_at"].as_str());
    assert_eq!(
        stdout(&run(&["collections", "get", "food", "burger"], "")),
        stdout(&out)
    );

    // A generated id: a UUID v4, lowercase.
    let out = run(&["collections", "add", "food", "--data", r#"{"a":1}"#], "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let generated: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = generated["id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(id, id.to_lowercase());
    printed_entry(&out, "food", id, r#"{"a":1}"#);

    let out = run(&["collections", "delete", "food", "burger"], "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "{}\n");
    for args in [
        &["collections", "get", "food", "burger"][..],
        &["collections", "delete", "food", "burger"],
        &[
            "collections",
            "update",
            "food",
            "burger",
            "--data",
            r#"{"a":1}"#,
        ],
    ] {
        let out = run(args, "");
        assert_eq!(code(&out), 4, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("food:burger"), "{}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
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
    let url = server.url();
    lifecycle(dir.path(), &["--store", &url]);
    let stored: Option<String> = redis::cmd("GET")
        .arg("enrich:object:food:burger")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(stored, None, "deleted");
}

#[test]
fn memory_store_answers_within_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["--store", "memory:"];
    let out = enrich(
        dir.path(),
        &[
            &base[..],
            &[
                "collections",
                "add",
                "c",
                "--id",
                "x",
                "--data",
                r#"{"k":true}"#,
            ],
        ]
        .concat(),
        "",
    );
    printed_entry(&out, "c", "x", r#"{"k":true}"#);
    let out = enrich(
        dir.path(),
        &[&base[..], &["collections", "get", "c", "x"]].concat(),
        "",
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
}

#[test]
fn bad_input_exits_2_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["collections", "get", "bad name", "x"],
            "invalid collection name",
        ),
        (
            &["collections", "get", "food", "!abcdee!"],
            "invalid entry id",
        ),
        (
            &["collections", "get", "fo:od", "x"],
            "invalid collection name",
        ),
        (
            &["collections", "add", "food", "--data", r#""text""#],
            "must be a JSON object",
        ),
        (
            &["collections", "add", "food", "--data", "{}"],
            "must not be empty",
        ),
        (
            &["collections", "add", "food", "--data", "{"],
            "not valid JSON",
        ),
        (
            &["collections", "update", "food", "x", "--data", "[1]"],
            "must be a JSON object",
        ),
    ];
    for (args, expected) in cases {
        let out = enrich(dir.path(), args, "");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty());
    }
    // Only reading commands never created the file store.
    assert!(!dir.path().join("enrich.db").exists());
}

/// `collections import` on `base`: creates, replaces keeping created_at, generates ids,
/// reports bad lines as FILE:LINE and exits 2, and writes in batches.
fn import(dir: &Path, base: &[&str]) {
    let run = |args: &[&str], stdin: &str| {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        enrich(dir, &all, stdin)
    };
    let first = "{\"collection\":\"food\",\"id\":\"a\",\"data\":{\"v\":1}}\n";
    let file = dir.join("first.ndjson");
    std::fs::write(&file, first).unwrap();
    let out = run(&["collections", "import", file.to_str().unwrap()], "");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 entries written"),
        "{}",
        stderr(&out)
    );
    let before: Value =
        serde_json::from_str(&stdout(&run(&["collections", "get", "food", "a"], ""))).unwrap();

    let mut lines = String::new();
    lines.push_str("{\"collection\":\"food\",\"id\":\"a\",\"data\":{\"v\":2}}\n");
    lines.push_str("not json\n");
    lines.push_str("{\"collection\":\"food\",\"data\":{\"generated\":true}}\n");
    lines.push('\n');
    lines.push_str("{\"collection\":\"bad name\",\"id\":\"x\",\"data\":{\"v\":1}}\n");
    for i in 0..2500 {
        lines.push_str(&format!(
            "{{\"collection\":\"bulk\",\"id\":\"e{i}\",\"data\":{{\"i\":{i}}}}}\n"
        ));
    }
    let file = dir.join("entries.ndjson");
    std::fs::write(&file, &lines).unwrap();
    let name = file.to_str().unwrap();
    let out = run(&["collections", "import", name], "");
    let err = stderr(&out);
    assert_eq!(code(&out), 2, "{err}");
    assert!(
        err.contains(&format!("error: {name}:2: not an entry line")),
        "{err}"
    );
    assert!(
        err.contains(&format!("error: {name}:5: invalid collection name")),
        "{err}"
    );
    assert!(
        err.contains("imported: 2502 entries written, 2 rejected, of 2505 lines"),
        "{err}"
    );
    assert!(err.contains("error: 2 line(s) rejected"), "{err}");
    let after: Value =
        serde_json::from_str(&stdout(&run(&["collections", "get", "food", "a"], ""))).unwrap();
    assert_eq!(after["data"]["v"], 2);
    assert_eq!(after["created_at"], before["created_at"]);
    let out = run(&["collections", "get", "bulk", "e2499"], "");
    printed_entry(&out, "bulk", "e2499", r#"{"i":2499}"#);

    // Standard input, named "-".
    let out = run(&["collections", "import", "-"], "{\"collection\":\"x\"}\n");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: -:1: entry x:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn import_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    import(dir.path(), &[]);
}

#[test]
fn import_on_redis_writes_in_batches_of_at_most_1000() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    import(dir.path(), &["--store", &url]);
    let mut conn = server.connection();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    // 1 + 2502 entries written: three batches for the 2502 (1000, 1000, 502) and one for
    // the first file, each one script call.
    let calls = |name: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("cmdstat_eval:calls="), 4, "{stats}");
    assert_eq!(calls("cmdstat_evalsha:calls="), 0, "{stats}");
}

/// An import whose batch meets a corrupt stored entry writes nothing of that batch, and says
/// so: the summary counts only what was written, and the error names the line of the entry
/// that stopped it.
#[test]
fn import_on_redis_over_a_corrupt_entry_writes_nothing_of_its_batch() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let mut conn = server.connection();
    redis::cmd("SET")
        .arg("enrich:object:food:bad")
        .arg("garbage")
        .exec(&mut conn)
        .unwrap();
    let file = dir.path().join("entries.ndjson");
    let lines: String = ["good3", "bad", "good4"]
        .iter()
        .map(|id| format!("{{\"collection\":\"food\",\"id\":\"{id}\",\"data\":{{\"v\":1}}}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let run = |args: &[&str]| {
        let all: Vec<&str> = ["--store", url.as_str()]
            .iter()
            .chain(args)
            .copied()
            .collect();
        enrich(dir.path(), &all, "")
    };
    let out = run(&["collections", "import", file.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("imported: 0 entries written, 0 rejected, of 0 lines"),
        "{err}"
    );
    assert!(
        err.contains("import stopped at line 2, of the batch from line 1 to 3: entry food:bad"),
        "{err}"
    );
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains("nothing of this batch was written"), "{err}");
    for id in ["good3", "good4"] {
        let out = run(&["collections", "get", "food", id]);
        assert_ne!(code(&out), 0, "{id} was written: {}", stdout(&out));
    }
    let left: String = redis::cmd("GET")
        .arg("enrich:object:food:bad")
        .query(&mut conn)
        .unwrap();
    assert_eq!(left, "garbage");
}

#[test]
fn run_with_objects_imports_then_enriches() {
    for on_redis in [false, true] {
        let server = on_redis.then(RedisServer::start);
        let dir = tempfile::tempdir().unwrap();
        let url = server.as_ref().map(RedisServer::url);
        let base: Vec<&str> = match &url {
            Some(url) => vec!["--store", url],
            None => vec![],
        };
        let objects = dir.path().join("objects.ndjson");
        std::fs::write(
            &objects,
            "{\"collection\":\"food\",\"id\":\"burger\",\"data\":{\"name\":\"Burger\"}}\n",
        )
        .unwrap();
        let users = dir.path().join("users.ndjson");
        std::fs::write(&users, "{\"id\":\"alice\",\"data\":{\"name\":\"Alice\"}}\n").unwrap();
        let page = concat!(
            r#"{"actor":"SU:alice","object":"SO:food:burger","target":"SO:food:fries","x":"SO:food"}"#,
            "\n"
        );
        let args: Vec<&str> = base
            .iter()
            .copied()
            .chain([
                "run",
                "--quiet",
                "--users",
                users.to_str().unwrap(),
                "--objects",
                objects.to_str().unwrap(),
            ])
            .collect();
        let out = enrich(dir.path(), &args, page);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(doc["actor"]["data"]["name"], "Alice");
        let entry_args: Vec<&str> = base
            .iter()
            .copied()
            .chain(["collections", "get", "food", "burger"])
            .collect();
        let stored = stdout(&enrich(dir.path(), &entry_args, ""));
        let embedded = format!(r#""object":{},"#, stored.trim_end());
        assert!(
            stdout(&out).contains(&embedded),
            "byte for byte: {}",
            stdout(&out)
        );
        assert_eq!(doc["target"]["error"], "ReferenceNotFound");
        assert_eq!(doc["target"]["reference_type"], "object");
        assert_eq!(doc["x"], "SO:food");

        // A bad objects line fails the run before any output, naming FILE:LINE.
        std::fs::write(&objects, "{\"collection\":\"food\",\"id\":\"burger\"}\n").unwrap();
        let out = enrich(dir.path(), &args, page);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        let name = objects.display().to_string();
        assert!(
            stderr(&out).contains(&format!(
                "error: {name}:1: entry food:burger: data is missing"
            )),
            "{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(&format!("error: {name}: 1 entry line(s) rejected")),
            "{}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty());

        // So does a bad users line, counted as a user line.
        std::fs::write(
            &objects,
            "{\"collection\":\"food\",\"id\":\"burger\",\"data\":{\"a\":1}}\n",
        )
        .unwrap();
        std::fs::write(&users, "{\"id\":\"bad id\"}\n{\"id\":\"bob\"}\n").unwrap();
        let out = enrich(dir.path(), &args, page);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        let name = users.display().to_string();
        for said in [
            format!("error: {name}:1: "),
            format!("error: {name}: 1 user line(s) rejected"),
        ] {
            assert!(stderr(&out).contains(&said), "{said}: {}", stderr(&out));
        }
        assert!(stdout(&out).is_empty());

        // Writing over the objects file is refused.
        let mut over = args.clone();
        over.extend(["-o", objects.to_str().unwrap()]);
        let out = enrich(dir.path(), &over, page);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("refusing to write over it"),
            "{}",
            stderr(&out)
        );
    }
}
