//! The enricher as a library: batching, L1, coalescing, the fence, faults, and the two paths
//! agreeing with each other.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use enrich::store::{
    self, Added, ImportOutcome, ImportUser, MemoryStore, SharedStore, StoreOptions, UserSource,
    UserStore,
};
use enrich::{
    CacheConfig, Depth, Enricher, Error, ErrorKind, NewUser, OnStoreError, RawPage, UserId,
    UserJson,
};
use serde_json::{Value, json};
use support::RedisServer;
use tokio::sync::Semaphore;

/// A real store with counters and switches around its reads: how many calls and ids, a gate
/// that holds reads until opened, and a switch that makes reads fail like a dead server.
#[derive(Debug)]
struct Watched {
    inner: SharedStore,
    calls: AtomicU64,
    ids: AtomicU64,
    gate: Semaphore,
    gated: AtomicBool,
    failing: AtomicBool,
}

impl Watched {
    fn new(inner: SharedStore) -> Arc<Watched> {
        Arc::new(Watched {
            inner,
            calls: AtomicU64::new(0),
            ids: AtomicU64::new(0),
            gate: Semaphore::new(0),
            gated: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        })
    }

    fn memory() -> Arc<Watched> {
        Watched::new(Arc::new(MemoryStore::new()))
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn ids(&self) -> u64 {
        self.ids.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl UserSource for Watched {
    async fn get_many(&self, ids: &[UserId]) -> enrich::Result<Vec<Option<UserJson>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.ids.fetch_add(ids.len() as u64, Ordering::SeqCst);
        if self.gated.load(Ordering::SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Unavailable, "store is down"));
        }
        self.inner.get_many(ids).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[async_trait]
impl UserStore for Watched {
    async fn add(&self, user: &NewUser, get_or_create: bool) -> enrich::Result<Added> {
        self.inner.add(user, get_or_create).await
    }

    async fn update(&self, user: &NewUser) -> enrich::Result<UserJson> {
        self.inner.update(user).await
    }

    async fn delete(&self, id: &UserId) -> enrich::Result<()> {
        self.inner.delete(id).await
    }

    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> enrich::Result<Vec<ImportOutcome>> {
        self.inner.import(users, override_existing).await
    }
}

async fn add(store: &dyn UserStore, id: &str, data: Value) -> UserJson {
    store
        .add(&NewUser::new(id, Some(data)).unwrap(), false)
        .await
        .unwrap()
        .user
}

fn not_found(id: &str) -> Value {
    json!({"error":"ReferenceNotFound","reference":format!("SU:{id}"),"reference_type":"user","id":id})
}

/// 25 activities, 3 references each, over users u0..u19 (u19 never created).
fn page() -> Vec<Value> {
    (0..25)
        .map(|i| {
            json!({
                "id": format!("a{i}"),
                "actor": format!("SU:u{}", i % 20),
                "verb": "post",
                "object": format!("SU:u{}", (i * 7) % 20),
                "target": format!("SU:u{}", (i * 3) % 20),
            })
        })
        .collect()
}

#[tokio::test]
async fn one_store_call_per_page_then_none() {
    let store = Watched::memory();
    for i in 0..19 {
        add(&*store, &format!("u{i}"), json!({ "n": i })).await;
    }
    let enricher = Enricher::new(store.clone());
    let mut first = page();
    let stats = enricher
        .enrich_values(&mut first, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(store.calls(), 1);
    assert_eq!(store.ids(), 20);
    assert_eq!(
        (stats.references, stats.distinct, stats.fetched),
        (75, 20, 20)
    );
    assert_eq!(stats.activities, 25);
    assert_eq!(
        stats.missing,
        first
            .iter()
            .map(|a| {
                ["actor", "object", "target"]
                    .iter()
                    .filter(|k| a[**k] == not_found("u19"))
                    .count() as u64
            })
            .sum::<u64>()
    );
    assert!(stats.missing > 0);
    assert_eq!(first[1]["actor"]["id"], "u1");
    assert_eq!(first[1]["actor"]["data"]["n"], 1);

    // Warm: the L1 answers everything, misses included.
    let mut second = page();
    let stats = enricher
        .enrich_values(&mut second, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(store.calls(), 1);
    assert_eq!(
        (stats.l1_hits, stats.store_calls, stats.fetched),
        (20, 0, 0)
    );
    assert_eq!(first, second);
}

#[tokio::test]
async fn raw_and_value_paths_agree() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    for i in 0..19 {
        add(&*store, &format!("u{i}"), json!({ "n": i, "s": "é\"\n" })).await;
    }
    let enricher = Enricher::new(store);
    let fixtures = std::fs::read_to_string("fixtures/activities.ndjson").unwrap();
    let mut docs: Vec<Value> = page();
    docs.extend(
        fixtures
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()),
    );
    for depth in [Depth::TopLevel, Depth::Deep] {
        let mut values = docs.clone();
        let value_stats = enricher.enrich_values(&mut values, depth).await.unwrap();
        let mut page = RawPage::new(depth);
        for doc in &docs {
            page.push(serde_json::to_string(doc).unwrap().as_bytes())
                .unwrap();
        }
        let enriched = enricher.enrich_page(&page).await.unwrap();
        for (i, expected) in values.iter().enumerate() {
            let mut out = Vec::new();
            enriched.write(i, &mut out);
            assert_eq!(enriched.doc_len(i), out.len(), "doc_len is exact");
            let raw: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(&raw, expected, "{depth:?} document {i}");
            // Same key order too.
            assert_eq!(
                serde_json::to_string(&raw).unwrap(),
                serde_json::to_string(expected).unwrap()
            );
        }
        let raw_stats = enriched.stats();
        assert_eq!(
            (
                raw_stats.references,
                raw_stats.distinct,
                raw_stats.missing,
                raw_stats.activities
            ),
            (
                value_stats.references,
                value_stats.distinct,
                value_stats.missing,
                value_stats.activities
            )
        );
    }
}

#[tokio::test]
async fn deep_mode_reaches_nested_references() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let bob = add(&*store, "bob", json!({})).await;
    let enricher = Enricher::new(store);
    let doc = br#"{"actor":"SU:bob","meta":{"by":["SU:bob",{"x":"SU:nobody"}]}}"#;
    let mut top = Vec::new();
    enricher
        .enrich_bytes(doc, Depth::TopLevel, &mut top)
        .await
        .unwrap();
    let top: Value = serde_json::from_slice(&top).unwrap();
    assert_eq!(top["meta"], json!({"by":["SU:bob",{"x":"SU:nobody"}]}));
    let mut deep = Vec::new();
    let stats = enricher
        .enrich_bytes(doc, Depth::Deep, &mut deep)
        .await
        .unwrap();
    let deep: Value = serde_json::from_slice(&deep).unwrap();
    assert_eq!(deep["meta"]["by"][0], bob.to_value());
    assert_eq!(deep["meta"]["by"][1]["x"], not_found("nobody"));
    assert_eq!((stats.references, stats.missing), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pages_coalesce_their_loads() {
    let store = Watched::memory();
    for i in 0..50 {
        add(&*store, &format!("c{i}"), json!({ "i": i })).await;
    }
    store.gated.store(true, Ordering::SeqCst);
    let enricher = Enricher::new(store.clone());
    let pages: Vec<_> = (0..1000)
        .map(|p| {
            let enricher = enricher.clone();
            tokio::spawn(async move {
                let mut docs: Vec<Value> = (0..5)
                    .map(|k| json!({ "actor": format!("SU:c{}", (p * 7 + k * 11) % 50) }))
                    .collect();
                let stats = enricher
                    .enrich_values(&mut docs, Depth::TopLevel)
                    .await
                    .unwrap();
                (docs, stats)
            })
        })
        .collect();
    // Let every page register its loads while the store holds the first ones back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.gate.add_permits(10_000);
    let mut coalesced = 0;
    for task in pages {
        let (docs, stats) = task.await.unwrap();
        coalesced += stats.coalesced;
        for doc in docs {
            assert!(
                doc["actor"]["id"].as_str().unwrap().starts_with('c'),
                "{doc}"
            );
        }
    }
    assert!(store.ids() <= 50, "{} ids fetched", store.ids());
    assert!(coalesced > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_fences_a_load_in_flight() {
    // A load reads v1, then the user is invalidated, then the load returns: the value it read
    // may be stale and must not be cached.
    let inner: SharedStore = Arc::new(MemoryStore::new());
    add(&*inner, "st", json!({"v": 1})).await;
    let store = Watched::new(inner.clone());
    let enricher = Enricher::new(store.clone());
    store.gated.store(true, Ordering::SeqCst);
    let stale_reader = {
        let enricher = enricher.clone();
        tokio::spawn(async move {
            let mut docs = vec![json!({"actor": "SU:st"})];
            enricher
                .enrich_values(&mut docs, Depth::TopLevel)
                .await
                .unwrap();
            docs
        })
    };
    while store.calls() == 0 {
        tokio::task::yield_now().await;
    }
    // Invalidate while the read is paused; the paused read will still see v1 because the
    // write goes to the store only after the gate opens.
    enricher.invalidate("st");
    store.gate.add_permits(1);
    let served = stale_reader.await.unwrap();
    assert_eq!(served[0]["actor"]["data"]["v"], 1);
    store.gated.store(false, Ordering::SeqCst);
    inner
        .update(&NewUser::new("st", Some(json!({"v": 2}))).unwrap())
        .await
        .unwrap();
    // Without the fence, v1 would now sit in the L1 for a minute.
    let calls = store.calls();
    let mut docs = vec![json!({"actor": "SU:st"})];
    enricher
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(store.calls(), calls + 1, "the fenced value was cached");
    assert_eq!(docs[0]["actor"]["data"]["v"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_page_does_not_strand_the_pages_waiting_on_its_load() {
    let store = Watched::memory();
    add(&*store, "d", json!({})).await;
    let enricher = Enricher::new(store.clone());
    store.gated.store(true, Ordering::SeqCst);
    let first = {
        let enricher = enricher.clone();
        tokio::spawn(async move {
            let mut docs = vec![json!({"actor": "SU:d"})];
            enricher.enrich_values(&mut docs, Depth::TopLevel).await
        })
    };
    while store.calls() == 0 {
        tokio::task::yield_now().await;
    }
    let second = {
        let enricher = enricher.clone();
        tokio::spawn(async move {
            let mut docs = vec![json!({"actor": "SU:d"})];
            let stats = enricher
                .enrich_values(&mut docs, Depth::TopLevel)
                .await
                .unwrap();
            (docs, stats)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.abort();
    store.gate.add_permits(1);
    let (docs, stats) = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the waiting page was stranded")
        .unwrap();
    assert_eq!(docs[0]["actor"]["id"], "d");
    assert_eq!((stats.coalesced, stats.store_calls), (1, 0));
    assert_eq!(store.calls(), 1);
}

#[tokio::test]
async fn a_store_fault_is_an_error_never_a_missing_user() {
    let store = Watched::memory();
    add(&*store, "cached", json!({})).await;
    let strict = Enricher::new(store.clone());
    let lenient = Enricher::builder(store.clone())
        .on_store_error(OnStoreError::ServeFromCache)
        .build();
    for enricher in [&strict, &lenient] {
        let mut warm = vec![json!({"actor": "SU:cached"})];
        enricher
            .enrich_values(&mut warm, Depth::TopLevel)
            .await
            .unwrap();
    }
    store.failing.store(true, Ordering::SeqCst);
    let doc = || vec![json!({"actor": "SU:cached", "object": "SU:other"})];

    let mut docs = doc();
    let err = strict
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap_err();
    assert!(err.is_store_fault(), "{err:?}");
    let mut out = Vec::new();
    let err = strict
        .enrich_bytes(br#"{"actor":"SU:other"}"#, Depth::TopLevel, &mut out)
        .await
        .unwrap_err();
    assert!(err.is_store_fault(), "{err:?}");

    let mut docs = doc();
    let stats = lenient
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(docs[0]["actor"]["id"], "cached");
    assert_eq!(docs[0]["object"]["error"], "ReferenceUnavailable");
    assert_eq!((stats.missing, stats.unavailable), (0, 1));

    // A failed load is not cached: once the store is back, the answer is real.
    store.failing.store(false, Ordering::SeqCst);
    let mut docs = doc();
    let stats = strict
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(docs[0]["object"], not_found("other"));
    assert_eq!(stats.missing, 1);
}

#[tokio::test]
async fn a_store_fault_fails_a_spliced_page_unless_served_from_cache() {
    let store = Watched::memory();
    let cached = add(&*store, "cached", json!({"n": 1})).await;
    let strict = Enricher::new(store.clone());
    let lenient = Enricher::builder(store.clone())
        .on_store_error(OnStoreError::ServeFromCache)
        .build();
    let warm = [json!({"actor": "SU:cached"})];
    for enricher in [&strict, &lenient] {
        enricher
            .enrich_value_page(&warm, Depth::TopLevel)
            .await
            .unwrap();
    }
    store.failing.store(true, Ordering::SeqCst);
    let docs = [json!({"actor": "SU:cached", "object": "SU:other", "target": "SU:other"})];

    let err = strict
        .enrich_value_page(&docs, Depth::TopLevel)
        .await
        .unwrap_err();
    assert!(err.is_store_fault(), "{err:?}");

    let enriched = lenient
        .enrich_value_page(&docs, Depth::TopLevel)
        .await
        .unwrap();
    let mut out = Vec::new();
    enriched.write(0, &mut out);
    let unavailable = r#"{"error":"ReferenceUnavailable","reference":"SU:other","reference_type":"user","id":"other"}"#;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(r#"{{"actor":{cached},"object":{unavailable},"target":{unavailable}}}"#)
    );
    let stats = enriched.stats();
    assert_eq!(
        (stats.references, stats.missing, stats.unavailable),
        (3, 0, 2)
    );
    assert_eq!(
        serde_json::to_string(&enriched).unwrap(),
        format!(r#"[{{"actor":{cached},"object":{unavailable},"target":{unavailable}}}]"#)
    );
}

#[tokio::test]
async fn writes_through_the_enricher_are_read_at_once() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let enricher = Enricher::new(store);
    let users = enricher.users();
    let read = |e: Enricher| async move {
        let mut docs = vec![json!({"actor": "SU:ryw"})];
        e.enrich_values(&mut docs, Depth::TopLevel).await.unwrap();
        docs.remove(0)["actor"].clone()
    };
    assert_eq!(read(enricher.clone()).await, not_found("ryw"));
    let created = users
        .add(&NewUser::new("ryw", Some(json!({"v": 1}))).unwrap(), false)
        .await
        .unwrap()
        .user;
    assert_eq!(read(enricher.clone()).await, created.to_value());
    let updated = users
        .update(&NewUser::new("ryw", Some(json!({"v": 2}))).unwrap())
        .await
        .unwrap();
    assert_eq!(read(enricher.clone()).await, updated.to_value());
    users.delete(&UserId::parse("ryw").unwrap()).await.unwrap();
    assert_eq!(read(enricher.clone()).await, not_found("ryw"));
}

#[tokio::test]
async fn negative_entries_expire_on_their_own_ttl() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let enricher = Enricher::builder(store.clone())
        .cache(CacheConfig::new().negative_ttl(Duration::from_millis(100)))
        .build();
    let mut docs = vec![json!({"actor": "SU:late"})];
    enricher
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(docs[0]["actor"], not_found("late"));
    // Created behind the enricher's back: no invalidation reaches it.
    let created = add(&*store, "late", json!({})).await;
    let mut docs = vec![json!({"actor": "SU:late"})];
    enricher
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(
        docs[0]["actor"],
        not_found("late"),
        "served from the negative entry"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut docs = vec![json!({"actor": "SU:late"})];
    enricher
        .enrich_values(&mut docs, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(docs[0]["actor"], created.to_value());
}

#[tokio::test]
async fn redis_page_is_one_mget_and_embeds_stored_bytes() {
    let server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let mut stored = Vec::new();
    for i in 0..19 {
        stored.push(add(&*store, &format!("u{i}"), json!({ "n": i })).await);
    }
    let enricher = Enricher::new(store);
    let mut conn = server.connection();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec(&mut conn)
        .unwrap();
    let mut page_bytes = RawPage::new(Depth::TopLevel);
    for doc in page() {
        page_bytes.push(doc.to_string().as_bytes()).unwrap();
    }
    let enriched = enricher.enrich_page(&page_bytes).await.unwrap();
    let mut out = Vec::new();
    enriched.write(1, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(stored[1].as_str()), "{text}");
    let stats: String = redis::cmd("INFO").arg("all").query(&mut conn).unwrap();
    let line = |prefix: &str| {
        stats
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {stats}"))
            .to_string()
    };
    assert!(
        line("cmdstat_mget:").starts_with("cmdstat_mget:calls=1,"),
        "{stats}"
    );
    assert_eq!(line("keyspace_hits:"), "keyspace_hits:19");
    // The one missing user is asked again with GET, which tells a key that does not exist
    // from one of another type (nil to MGET too): two lookups, both misses.
    assert_eq!(line("keyspace_misses:"), "keyspace_misses:2");
    assert!(
        line("cmdstat_get:").starts_with("cmdstat_get:calls=1,"),
        "{stats}"
    );
}

/// A record in Redis that is not JSON (written there by something else) is a store fault on
/// every path: never spliced into the output, never a missing user, never a panic.
#[tokio::test]
async fn a_corrupt_record_in_redis_is_a_store_fault() {
    let server = RedisServer::start();
    let store = store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let good = add(&*store, "good", json!({})).await;
    let corrupt = good.as_str().replace("\"data\":{}", "\"data\":{]");
    redis::cmd("SET")
        .arg("enrich:user:bob")
        .arg(&corrupt)
        .exec(&mut server.connection())
        .unwrap();
    let doc = json!({"actor": "SU:bob", "object": "SU:good"});
    // Not a fault to retry through: the record stays corrupt.
    let fails = |err: Error| {
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        assert!(
            err.to_string()
                .contains("user bob: stored user record is corrupt"),
            "{err}"
        );
    };

    let strict = Enricher::builder(store.clone()).coherent(false).build();
    let mut page = RawPage::new(Depth::TopLevel);
    page.push(doc.to_string().as_bytes()).unwrap();
    fails(strict.enrich_page(&page).await.unwrap_err());
    fails(
        strict
            .enrich_values(&mut [doc.clone()], Depth::TopLevel)
            .await
            .unwrap_err(),
    );
    let docs = [doc.clone()];
    fails(
        strict
            .enrich_value_page(&docs, Depth::TopLevel)
            .await
            .unwrap_err(),
    );

    let lenient = Enricher::builder(store)
        .coherent(false)
        .on_store_error(OnStoreError::ServeFromCache)
        .build();
    let mut values = [doc];
    let stats = lenient
        .enrich_values(&mut values, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(stats.unavailable, 1);
    assert_eq!(values[0]["actor"]["error"], "ReferenceUnavailable");
    assert_eq!(values[0]["object"]["id"], "good");
}

#[tokio::test]
async fn a_flood_of_missing_ids_does_not_evict_cached_users() {
    let store = Watched::memory();
    for i in 0..100 {
        add(
            &*store.inner,
            &format!("u{i}"),
            json!({"name": "x".repeat(100)}),
        )
        .await;
    }
    let max_bytes = 256 << 10;
    let enricher = Enricher::builder(store.clone())
        .cache(CacheConfig::new().max_bytes(max_bytes))
        .build();
    let users: Vec<Value> = (0..100)
        .map(|i| json!({"actor": format!("SU:u{i}")}))
        .collect();
    enricher
        .enrich_values(&mut users.clone(), Depth::TopLevel)
        .await
        .unwrap();
    // Far more misses than the whole L1 could hold, as random ids from a client would be.
    for chunk in 0..200 {
        let mut flood: Vec<Value> = (0..100)
            .map(|i| json!({"actor": format!("SU:missing-{chunk}-{i}")}))
            .collect();
        enricher
            .enrich_values(&mut flood, Depth::TopLevel)
            .await
            .unwrap();
    }
    let stats = enricher.cache_stats();
    assert!(stats.misses > 0, "{stats:?}");
    assert!(stats.miss_bytes <= max_bytes / 10, "{stats:?}");
    assert_eq!(stats.users, 100, "{stats:?}");
    assert_eq!(stats.evictions, 0, "{stats:?}");
    let before = store.calls();
    let mut again = users.clone();
    let page = enricher
        .enrich_values(&mut again, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!((page.l1_hits, store.calls() - before), (100, 0));
}

#[tokio::test]
async fn raw_pages_see_every_write_at_once_through_their_memos() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let enricher = Enricher::new(store.clone());
    let users = enricher.users();
    add(&*users, "m", json!({"v": 0})).await;
    let read = |enricher: Enricher| async move {
        let mut page = RawPage::new(Depth::TopLevel);
        page.push(br#"{"actor":"SU:m"}"#).unwrap();
        let enriched = enricher.enrich_page(&page).await.unwrap();
        let mut out = Vec::new();
        enriched.write(0, &mut out);
        serde_json::from_slice::<Value>(&out).unwrap()["actor"].take()
    };
    for v in 1..20 {
        // Warm: the next pages are answered from a memo.
        assert_eq!(read(enricher.clone()).await["data"]["v"], v - 1);
        assert_eq!(read(enricher.clone()).await["data"]["v"], v - 1);
        users
            .update(&NewUser::new("m", Some(json!({"v": v}))).unwrap())
            .await
            .unwrap();
    }
    users.delete(&UserId::parse("m").unwrap()).await.unwrap();
    assert_eq!(read(enricher.clone()).await, not_found("m"));
}

/// Within a byte allowance, a page whose misses fit whatever their sizes is still one store
/// call; a page of many large users is refused once those read are over it, the rest never
/// asked for.
#[tokio::test]
async fn a_page_within_an_allowance_reads_no_more_than_it() {
    let store = Watched::memory();
    for i in 0..19 {
        add(&*store, &format!("u{i}"), json!({ "n": i })).await;
    }
    for i in 0..100 {
        add(
            &*store,
            &format!("big{i}"),
            json!({ "bio": "x".repeat(9_000) }),
        )
        .await;
    }
    let enricher = Enricher::new(store.clone());
    let mut page = RawPage::new(Depth::TopLevel);
    for doc in self::page() {
        page.push(doc.to_string().as_bytes()).unwrap();
    }
    let enriched = enricher
        .enrich_page_within(&page, 16 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((store.calls(), store.ids()), (1, 20));
    assert_eq!(enriched.stats().store_calls, 1);

    let mut big = RawPage::new(Depth::TopLevel);
    for i in 0..100 {
        big.push(format!(r#"{{"actor":"SU:big{i}","object":"SU:u1"}}"#).as_bytes())
            .unwrap();
    }
    let too_large = enricher
        .enrich_page_within(&big, 50_000)
        .await
        .unwrap()
        .unwrap_err();
    // u1 came from the L1; 50 kB and one user of the largest size are 6 users of 9 kB.
    let read = store.ids() - 20;
    assert!(read <= 7, "{read} ids read: {too_large:?}");
    assert!(store.calls() > 2, "waves, one after the other");
    assert!(too_large.at_least > 50_000, "{too_large}");
    assert_eq!(too_large.stats.fetched, read);

    // Without an allowance, the same page is one call again.
    let calls = store.calls();
    let enriched = enricher.enrich_page(&big).await.unwrap();
    assert_eq!(store.calls(), calls + 1);
    assert!(enriched.doc_len(0) > 9_000);
}
