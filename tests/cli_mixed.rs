//! The mixed golden fixture through the built binary: `enrich run --users … --objects …` over a
//! page mixing `SU:` and `SO:` references and reactions, compared with
//! `fixtures/mixed.enriched.ndjson` byte for byte on memory, the embedded file default, Redis
//! and a Redis Cluster, with the summary's counts and its one store call for the page.

mod support;

use std::path::Path;

use support::{RedisCluster, RedisServer, fixture, run_enrich as run};

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Runs the mixed fixture as the README does and compares with the golden file byte for byte.
/// Where the store outlives a process, `food:deleted` is created and deleted first: a deleted
/// entry must read as missing, like one never created (on memory it never exists).
fn golden(dir: &Path, store: &[&str], persistent: bool) {
    let call = |rest: &[&str]| {
        let all: Vec<&str> = store.iter().chain(rest).copied().collect();
        run(dir, &all, "")
    };
    if persistent {
        let add = [
            "collections",
            "add",
            "food",
            "--id",
            "deleted",
            "--data",
            r#"{"name":"Gone"}"#,
        ];
        for step in [&add[..], &["collections", "delete", "food", "deleted"]] {
            let out = call(step);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }
    let out = call(&[
        "run",
        "--users",
        &fixture("users.ndjson"),
        "--objects",
        &fixture("objects.ndjson"),
        &fixture("mixed.ndjson"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read_to_string(fixture("mixed.enriched.ndjson")).unwrap();
    assert_eq!(text(&out.stdout), expected);
    let summary = text(&out.stderr);
    assert!(
        summary.contains("of 4 lines") && summary.contains("4 entries written, 0 rejected"),
        "{summary}"
    );
    assert!(
        summary.contains("lines 7 (written 7, rejected 0)"),
        "{summary}"
    );
    // Users and entries: alice, bob, carol-ng, dave_99, Eve, frank, ghost; food:burger,
    // food:fries, place:home-2, post:1, food:pizza, food:deleted, nosuch:1. Missing: ghost
    // twice, food:pizza twice, food:deleted, nosuch:1.
    assert!(
        summary.contains("activities 9, references 31, distinct 14, missing 6"),
        "{summary}"
    );
    // The fixture is one page: every user, entry and reaction user of it in one store call.
    assert!(summary.contains(", store calls 1, "), "{summary}");
}

#[test]
fn mixed_golden_on_memory() {
    let dir = tempfile::tempdir().unwrap();
    golden(dir.path(), &["--store", "memory:"], false);
}

#[test]
fn mixed_golden_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    golden(dir.path(), &[], true);
    // Again over the same file, users and entries now replaced by the import: the imported
    // timestamps make the output identical.
    golden(dir.path(), &[], true);
}

#[test]
fn mixed_golden_on_redis() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    golden(dir.path(), &["--store", &url], true);
    let mut conn = server.connection();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec(&mut conn)
        .unwrap();
    golden(dir.path(), &["--store", &url], true);
    // The server's own count: the page's reads, users and entries, were one MGET (the GETs
    // it also counts are those of the write scripts).
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    let calls = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("mget"), 1, "{info}");
}

#[test]
fn mixed_golden_on_a_cluster() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    golden(dir.path(), &["--store", &url], true);
    golden(dir.path(), &["--store", &url], true);
}
