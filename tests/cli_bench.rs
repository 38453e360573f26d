//! `enrich bench` through the built binary, on a small workload.

mod support;

use std::process::Command;

use serde_json::Value;
use support::RedisServer;

#[test]
fn bench_reports_every_strategy_and_leaves_the_namespace_alone() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let report = bench_json(
        support::enrich_command(dir.path())
            .args(["--store", &server.url(), "bench", "--users", "200"])
            .args(["--activities", "2000", "--page", "20", "--concurrency", "4"]),
    );
    let strategies = report["strategies"].as_array().unwrap();
    let by_name = |name: &str| {
        strategies
            .iter()
            .find(|s| s["strategy"] == name)
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    let (engine, naive, mget) = (by_name("engine"), by_name("naive"), by_name("mget"));
    for s in [engine, naive, mget] {
        assert_eq!(s["pages"], 100, "{s}");
        assert!(s["pages_per_sec"].as_f64().unwrap() > 0.0);
        assert!(s["p99_ms"].as_f64().unwrap() >= s["p50_ms"].as_f64().unwrap());
    }
    assert!(engine["store_calls_per_page"].as_f64().unwrap() <= 1.0);
    assert!(engine["l1_hit_ratio"].as_f64().unwrap() > 0.5, "{engine}");
    assert_eq!(naive["store_calls_per_page"].as_f64().unwrap(), 60.0);
    assert_eq!(mget["store_calls_per_page"].as_f64().unwrap(), 1.0);
    assert_eq!(engine["engine_speedup"].as_f64().unwrap(), 1.0);
    // The generated users went to NS.bench, not to the namespace itself.
    let mut conn = server.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("enrich:user:*")
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("enrich.bench:user:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 200);

    let table = support::enrich_command(dir.path())
        .args([
            "--store",
            "memory:",
            "bench",
            "--users",
            "50",
            "--activities",
            "500",
        ])
        .args(["--strategy", "engine"])
        .output()
        .unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(table.status.success());
    assert!(
        text.contains("pages/s") && text.lines().any(|l| l.starts_with("engine")),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("naive")), "{text}");
}

/// `--l1-bytes` (here as `ENRICH_L1_BYTES`) sizes the L1 of the engine that `bench` measures:
/// at 0 it answers nothing, and every page asks the store.
#[test]
fn bench_measures_the_engine_with_the_l1_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let engine = |l1: Option<&str>| {
        let mut command = support::enrich_command(dir.path());
        if let Some(l1) = l1 {
            command.env("ENRICH_L1_BYTES", l1);
        }
        let report = bench_json(
            command
                .args(["--store", "memory:", "bench", "--users", "50"])
                .args(["--activities", "500", "--strategy", "engine"]),
        );
        report["strategies"][0].clone()
    };
    let cached = engine(None);
    assert!(cached["l1_hit_ratio"].as_f64().unwrap() > 0.5, "{cached}");
    let uncached = engine(Some("0"));
    assert_eq!(
        uncached["l1_hit_ratio"].as_f64().unwrap(),
        0.0,
        "{uncached}"
    );
    assert_eq!(
        uncached["store_calls_per_page"].as_f64().unwrap(),
        1.0,
        "{uncached}"
    );
}

/// Runs `command` (an `enrich bench`) with `--json`; its report, once it has succeeded.
fn bench_json(command: &mut Command) -> Value {
    let out = command.arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
