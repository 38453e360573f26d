//! Criterion benches. Each group measures a baseline beside our path in the same run, so the
//! ratio between them is the figure to read (see BENCHMARKS.md).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use enrich::batch::{self, RunOptions};
use enrich::bench::{Strategy, Workload, enrich_page, load_users};
use enrich::store::{self, MemoryStore, SharedStore, StoreOptions};
use enrich::{CacheConfig, Depth, Enricher, RawPage};
use serde_json::Value;
use support::RedisServer;

/// The allocator the `enrich` binary runs with, so the job figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 25 activities, 3 references each, 20 distinct users.
fn warm_workload() -> Workload {
    Workload {
        users: 20,
        activities: 25,
        zipf: 0.0,
        page: 25,
        concurrency: 1,
        seed: 1,
    }
}

/// The page as the 25 NDJSON lines of `warm_workload`, with every reference naming one of
/// 20 existing users.
fn warm_page() -> Vec<String> {
    (0..25)
        .map(|i| {
            serde_json::json!({
                "id": format!("a{i}"),
                "actor": format!("SU:u{}", i % 20),
                "verb": "post",
                "object": format!("SU:u{}", (i * 7 + 3) % 20),
                "target": format!("SU:u{}", (i * 3 + 1) % 20),
                "foreign_id": format!("post:{i}"),
                "time": "2021-05-14T14:51:13.767221",
            })
            .to_string()
        })
        .collect()
}

/// The page's lines parsed into `Value`s, as a service holding documents would have them.
fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(black_box(l)).unwrap())
        .collect()
}

fn warm_page_bench(c: &mut Criterion) {
    let rt = runtime();
    let store: SharedStore = Arc::new(MemoryStore::new());
    rt.block_on(load_users(&store, &warm_workload())).unwrap();
    let enricher = Enricher::new(store.clone());
    let lines = warm_page();
    rt.block_on(enrich_page(Strategy::Engine, &enricher, &store, &lines))
        .unwrap();

    let mut group = c.benchmark_group("warm_page");
    group.throughput(Throughput::Elements(25));
    group.bench_function("bare_value_roundtrip", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(8192);
            for line in &lines {
                let doc: Value = serde_json::from_str(black_box(line)).unwrap();
                serde_json::to_writer(&mut out, &doc).unwrap();
                out.push(b'\n');
            }
            out
        })
    });
    group.bench_function("raw_path", |b| {
        b.to_async(&rt).iter(|| async {
            let mut page = RawPage::new(Depth::TopLevel);
            for line in &lines {
                page.push(black_box(line.as_bytes())).unwrap();
            }
            let enriched = enricher.enrich_page(&page).await.unwrap();
            let mut out = Vec::with_capacity(32768);
            for doc in 0..page.len() {
                enriched.write(doc, &mut out);
                out.push(b'\n');
            }
            out
        })
    });
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    group.bench_function("value_path_enrich_only", |b| {
        // The page as a service holds it already parsed; only the enrichment is timed.
        b.to_async(&rt).iter_batched(
            || parsed.clone(),
            |mut docs| async {
                enricher
                    .enrich_values(&mut docs, Depth::TopLevel)
                    .await
                    .unwrap();
                docs
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("value_path", |b| {
        b.to_async(&rt).iter(|| async {
            let mut docs = parse(&lines);
            enricher
                .enrich_values(&mut docs, Depth::TopLevel)
                .await
                .unwrap();
            let mut out = Vec::with_capacity(32768);
            for doc in &docs {
                serde_json::to_writer(&mut out, doc).unwrap();
                out.push(b'\n');
            }
            out
        })
    });
    group.bench_function("value_path_spliced", |b| {
        b.to_async(&rt).iter(|| async {
            let docs = parse(&lines);
            let enriched = enricher
                .enrich_value_page(&docs, Depth::TopLevel)
                .await
                .unwrap();
            let mut out = Vec::with_capacity(32768);
            for doc in 0..enriched.len() {
                enriched.write(doc, &mut out);
                out.push(b'\n');
            }
            out
        })
    });
    group.bench_function("value_path_spliced_serde", |b| {
        // The same page handed to serde_json through the Serialize impl, as a service's
        // response body would be: one JSON array rather than lines.
        b.to_async(&rt).iter(|| async {
            let docs = parse(&lines);
            let enriched = enricher
                .enrich_value_page(&docs, Depth::TopLevel)
                .await
                .unwrap();
            let mut out = Vec::with_capacity(32768);
            serde_json::to_writer(&mut out, &enriched).unwrap();
            out
        })
    });
    group.finish();
}

fn cold_page_bench(c: &mut Criterion) {
    let rt = runtime();
    let server = RedisServer::start();
    let store = rt
        .block_on(store::open(&server.url(), &StoreOptions::new()))
        .unwrap();
    rt.block_on(load_users(&store, &warm_workload())).unwrap();
    let enricher = Enricher::builder(store.clone())
        .cache(CacheConfig::disabled())
        .build();
    let lines = warm_page();

    let mut group = c.benchmark_group("cold_page_redis");
    group.throughput(Throughput::Elements(25));
    for strategy in [Strategy::Engine, Strategy::Mget, Strategy::Naive] {
        let (_, stats) = rt
            .block_on(enrich_page(strategy, &enricher, &store, &lines))
            .unwrap();
        eprintln!(
            "cold_page_redis/{strategy}: {} store calls per page",
            stats.store_calls
        );
        group.bench_function(BenchmarkId::from_parameter(strategy), |b| {
            b.to_async(&rt).iter(|| async {
                enrich_page(strategy, &enricher, &store, &lines)
                    .await
                    .unwrap()
            })
        });
    }
    // The engine over the mixed page: users, entries and reaction users of the page in one
    // `MGET` all the same.
    rt.block_on(store.upsert_entries(&post_entries())).unwrap();
    let mixed = mixed_page();
    let (_, stats) = rt
        .block_on(enrich_page(Strategy::Engine, &enricher, &store, &mixed))
        .unwrap();
    assert_eq!(
        stats.missing, 0,
        "every reference of the mixed page names a record"
    );
    eprintln!(
        "cold_page_redis/engine_mixed: {} store calls per page",
        stats.store_calls
    );
    group.bench_function("engine_mixed", |b| {
        b.to_async(&rt).iter(|| async {
            enrich_page(Strategy::Engine, &enricher, &store, &mixed)
                .await
                .unwrap()
        })
    });
    group.finish();
}

fn coalescing_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("coalescing");
    group.throughput(Throughput::Elements(1000));
    group.sample_size(20);
    group.bench_function("1000_cold_pages_50_users", coalescing);
    group.finish();
}

fn coalescing(b: &mut criterion::Bencher<'_>) {
    let rt = runtime();
    let server = RedisServer::start();
    let store = rt
        .block_on(store::open(&server.url(), &StoreOptions::new()))
        .unwrap();
    let users = Workload {
        users: 50,
        ..warm_workload()
    };
    rt.block_on(load_users(&store, &users)).unwrap();
    // 1,000 pages of 5 activities over the same 50 users.
    let pages: Arc<Vec<Vec<String>>> = Arc::new(
        (0..1000)
            .map(|p| {
                (0..5)
                    .map(|k| format!("{{\"actor\":\"SU:u{}\"}}", (p * 7 + k * 11) % 50))
                    .collect()
            })
            .collect(),
    );
    let run = |enricher: Enricher| {
        let pages = pages.clone();
        let store = store.clone();
        async move {
            let tasks: Vec<_> = (0..pages.len())
                .map(|i| {
                    let (enricher, store, pages) = (enricher.clone(), store.clone(), pages.clone());
                    tokio::spawn(async move {
                        enrich_page(Strategy::Engine, &enricher, &store, &pages[i])
                            .await
                            .unwrap()
                            .1
                    })
                })
                .collect();
            let mut fetched = 0;
            for task in tasks {
                fetched += task.await.unwrap().fetched;
            }
            fetched
        }
    };
    let fetched = rt.block_on(run(Enricher::new(store.clone())));
    eprintln!("coalescing: 1000 concurrent cold pages over 50 users fetched {fetched} ids");
    b.to_async(&rt).iter(|| run(Enricher::new(store.clone())));
}

/// Checking documents against the JSON grammar: the raw path's scanner (which also notes
/// every reference, numbers the page's ids and compacts the document) against serde_json's
/// check alone (`IgnoredAny`, the baseline), the same walk done with sonic-rs's SIMD parser,
/// and serde_json's and sonic-rs's DOMs, over 100k generated activities in pages of 1,024
/// lines, as the batch job takes them. The scanner is hand-written; this is the measurement
/// that keeps it so (BENCHMARKS.md).
fn scan_bench(c: &mut Criterion) {
    let workload = Workload {
        activities: 100_000,
        ..Workload::default()
    };
    let lines = workload.activity_lines();
    let bytes: usize = lines.iter().map(String::len).sum();
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(20);
    group.bench_function("serde_json_check", |b| {
        b.iter(|| {
            for line in &lines {
                serde_json::from_str::<serde::de::IgnoredAny>(black_box(line)).unwrap();
            }
        })
    });
    group.bench_function("raw_page", |b| {
        let mut page = RawPage::new(Depth::TopLevel);
        b.iter(|| {
            for chunk in lines.chunks(1024) {
                page.clear();
                for line in chunk {
                    page.push(black_box(line.as_bytes())).unwrap();
                }
            }
        })
    });
    // What the scanner does, done with sonic-rs (SIMD): each activity's members walked by its
    // checked lazy iterator, each value tested for a reference (no compaction, no interning).
    group.bench_function("sonic_rs_members", |b| {
        b.iter(|| {
            let mut references = 0;
            for line in &lines {
                for member in sonic_rs::to_object_iter(black_box(line.as_str())) {
                    let (_, value) = member.unwrap();
                    references += usize::from(value.as_raw_str().starts_with("\"SU:"));
                }
            }
            assert!(references >= 2 * lines.len());
        })
    });
    group.bench_function("sonic_rs_value", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(sonic_rs::from_str::<sonic_rs::Value>(black_box(line)).unwrap());
            }
        })
    });
    group.bench_function("serde_json_value", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(serde_json::from_str::<Value>(black_box(line)).unwrap());
            }
        })
    });
    group.finish();
}

fn job_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("job_100k");
    group.throughput(Throughput::Elements(100_000));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for name in ["bare_value_roundtrip", "warm", "cold"] {
        group.bench_function(name, |b| job(b, name));
    }
    group.finish();
}

/// The NDJSON job over 100k generated activities on the memory store: warm (every user
/// cached), cold (a new enricher each run), and the bare DOM round trip of the same input.
fn job(b: &mut criterion::Bencher<'_>, name: &str) {
    let rt = runtime();
    let workload = Workload {
        activities: 100_000,
        ..Workload::default()
    };
    let store: SharedStore = Arc::new(MemoryStore::new());
    rt.block_on(load_users(&store, &workload)).unwrap();
    let input: Arc<Vec<u8>> = Arc::new(
        workload
            .activity_lines()
            .into_iter()
            .flat_map(|l| (l + "\n").into_bytes())
            .collect(),
    );
    let run = |enricher: Enricher| {
        let input = input.clone();
        async move {
            let inputs = vec![batch::Source::new(
                "activities",
                std::io::Cursor::new(input.to_vec()),
            )];
            batch::run(
                &enricher,
                inputs,
                batch::Output::writer(std::io::sink()),
                None,
                &RunOptions::new(),
                &batch::RunProgress::new(),
                futures::stream::pending(),
            )
            .await
            .unwrap()
        }
    };
    let warm = Enricher::new(store.clone());
    let summary = rt.block_on(run(warm.clone()));
    eprintln!("job: {summary}");
    match name {
        "bare_value_roundtrip" => b.iter(|| {
            let mut out = Vec::with_capacity(input.len() * 4);
            for line in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let doc: Value = serde_json::from_slice(line).unwrap();
                serde_json::to_writer(&mut out, &doc).unwrap();
                out.push(b'\n');
            }
            out
        }),
        "warm" => b.to_async(&rt).iter(|| run(warm.clone())),
        _ => b.to_async(&rt).iter(|| run(Enricher::new(store.clone()))),
    }
}

/// The warm page with one reference of each kind per activity: an `SU:` actor, an `SO:`
/// object (one of 20 entries with as much data as a user) and a like whose `user_id` is
/// enriched (in place of the users-only page's `SU:` target).
fn mixed_page() -> Vec<String> {
    (0..25)
        .map(|i| {
            serde_json::json!({
                "id": format!("a{i}"),
                "actor": format!("SU:u{}", i % 20),
                "verb": "post",
                "object": format!("SO:post:p{}", (i * 7 + 3) % 20),
                "foreign_id": format!("post:{i}"),
                "time": "2021-05-14T14:51:13.767221",
                "latest_reactions": {"like": [{
                    "id": format!("r{i}"),
                    "kind": "like",
                    "user_id": format!("u{}", (i * 3 + 1) % 20),
                    "data": {},
                }]},
                "reaction_counts": {"like": 1},
            })
            .to_string()
        })
        .collect()
}

/// The 20 entries `post:p0`… that the mixed page names, with as much data as a workload user.
fn post_entries() -> Vec<enrich::NewEntry> {
    (0..20)
        .map(|i| {
            let key = enrich::EntryKey::new("post", &format!("p{i}")).unwrap();
            // As much data as a workload user: the records differ by their framing only.
            let data = serde_json::json!({
                "title": format!("Post {i}"),
                "image": format!("https://cdn.example.com/posts/{i}.png"),
            });
            enrich::NewEntry::new(key, Some(data)).unwrap()
        })
        .collect()
}

/// Users only against users, entries and reaction users: the same number of references,
/// warm, on the raw-bytes path. Throughput is in references, so the two rows compare per
/// reference.
fn mixed_page_bench(c: &mut Criterion) {
    let rt = runtime();
    let store: SharedStore = Arc::new(MemoryStore::new());
    // `u0`…`u19` and the objects' `u20`…`u29`, `u210`…`u219`.
    let users = Workload {
        users: 220,
        ..warm_workload()
    };
    rt.block_on(load_users(&store, &users)).unwrap();
    rt.block_on(store.upsert_entries(&post_entries())).unwrap();
    let enricher = Enricher::new(store.clone());

    let mut group = c.benchmark_group("mixed_page");
    // Every page names 40 distinct records with 75 references, so the rows differ only by
    // the kind of what they name. Two baselines: users only (the warm page with its objects
    // 20 other users), and the mixed page with users only (its like's `user_id` renamed so
    // that it is no reference, its objects other users, a target `SU:`), which carries the
    // same reaction JSON to scan: the cost of each kind of lookup, apart from the cost of the
    // bytes around it.
    let other_users = |l: &String| l.replace(r#""object":"SU:u"#, r#""object":"SU:u2"#);
    let users_only: Vec<String> = warm_page().iter().map(other_users).collect();
    let entries: Vec<String> = (warm_page().iter())
        .map(|l| l.replace(r#""object":"SU:u"#, r#""object":"SO:post:p"#))
        .collect();
    let same_bytes: Vec<String> = (mixed_page().iter())
        .map(|l| {
            l.replace(r#""user_id""#, r#""user_xx""#)
                .replace("SO:post:p", "SU:u2")
                .replace(r#""actor""#, r#""target":"SU:u1","actor""#)
        })
        .collect();
    for (name, lines) in [
        ("users_only", users_only),
        ("users_and_entries", entries),
        ("users_only_reaction_json", same_bytes),
        ("users_entries_reactions", mixed_page()),
    ] {
        let mut page = RawPage::new(Depth::TopLevel);
        for line in &lines {
            page.push(line.as_bytes()).unwrap();
        }
        let stats = rt.block_on(enricher.enrich_page(&page)).unwrap().stats();
        assert_eq!(stats.missing, 0, "{name}: every reference names a record");
        assert_eq!(
            stats.distinct, 40,
            "{name}: as many distinct records as the others"
        );
        group.throughput(Throughput::Elements(stats.references));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut page = RawPage::new(Depth::TopLevel);
                for line in &lines {
                    page.push(black_box(line.as_bytes())).unwrap();
                }
                let enriched = enricher.enrich_page(&page).await.unwrap();
                let mut out = Vec::with_capacity(32768);
                for doc in 0..page.len() {
                    enriched.write(doc, &mut out);
                    out.push(b'\n');
                }
                out
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    warm_page_bench,
    mixed_page_bench,
    cold_page_bench,
    coalescing_bench,
    scan_bench,
    job_bench
);
criterion_main!(benches);
