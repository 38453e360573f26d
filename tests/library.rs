//! The library face a service uses beside pages: lookups (`get`, `get_many`) through the same
//! L1, coalescing and fence as pages, `prime`, the limit on ids per source call, and enrichers
//! over a read-only source.

mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use enrich::store::{MemoryStore, SharedStore, StoreOptions, UserSource};
use enrich::{
    Depth, EnrichStats, Enricher, Error, ErrorKind, NewUser, OnStoreError, RawPage, UserId,
    UserJson, async_trait,
};
use serde_json::{Value, json};
use support::RedisServer;
use tokio::sync::Semaphore;

/// A read-only source over a memory store, with counters and switches around its reads: the
/// size of each call, a gate that holds reads until opened, and a switch that makes reads fail
/// like a database that went away.
#[derive(Debug)]
struct Rows {
    users: SharedStore,
    batches: Mutex<Vec<usize>>,
    gate: Semaphore,
    gated: AtomicBool,
    failing: AtomicBool,
}

impl Rows {
    fn new() -> Arc<Rows> {
        Arc::new(Rows {
            users: Arc::new(MemoryStore::new()),
            batches: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            gated: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        })
    }

    /// Writes `id` with `data` behind the enricher's back, as the service's own code would.
    async fn put(&self, id: &str, data: Value) -> UserJson {
        let user = NewUser::new(id, Some(data)).unwrap();
        match self.users.add(&user, false).await {
            Ok(added) => added.user,
            Err(err) if err.is_conflict() => self.users.update(&user).await.unwrap(),
            Err(err) => panic!("{err}"),
        }
    }

    /// Source calls so far.
    fn calls(&self) -> usize {
        self.batches.lock().unwrap().len()
    }

    /// The number of ids of each source call so far.
    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }

    fn hold(&self) {
        self.gated.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.gate.add_permits(1_000);
    }

    /// Waits until `calls` source calls have been made (and are maybe held at the gate).
    async fn wait_for_calls(&self, calls: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.calls() < calls {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the source was never called");
    }
}

#[async_trait]
impl UserSource for Rows {
    async fn get_many(&self, ids: &[UserId]) -> enrich::Result<Vec<Option<UserJson>>> {
        self.batches.lock().unwrap().push(ids.len());
        if self.gated.load(Ordering::SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Unavailable, "rows: database is down"));
        }
        self.users.get_many(ids).await
    }

    fn describe(&self) -> String {
        "rows".to_string()
    }
}

fn id(text: &str) -> UserId {
    UserId::parse(text).unwrap()
}

fn data(user: &Option<UserJson>) -> Value {
    user.as_ref().expect("a user").to_value()["data"].take()
}

#[tokio::test]
async fn lookups_go_through_the_l1_in_order() {
    let rows = Rows::new();
    let alice = rows.put("alice", json!({"name": "Alice"})).await;
    rows.put("carol", json!({"name": "Carol"})).await;
    let enricher = Enricher::from_source(rows.clone());

    assert_eq!(
        enricher.get(&id("alice")).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        enricher.get(&id("alice")).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(rows.batches(), [1], "the second get is an L1 hit");

    // Order kept, duplicates answered each time and read once, misses as `None`.
    let asked = [id("bob"), id("alice"), id("carol"), id("bob"), id("carol")];
    let found = enricher.get_many(&asked).await.unwrap();
    assert_eq!(found.len(), 5);
    assert_eq!((found[0].clone(), found[3].clone()), (None, None));
    assert_eq!(found[1], Some(alice));
    assert_eq!(data(&found[2]), json!({"name": "Carol"}));
    assert_eq!(found[2], found[4]);
    assert_eq!(
        rows.batches(),
        [1, 2],
        "bob and carol, once each, in one call"
    );

    // The miss is cached like any other answer, and pages share what lookups cached.
    assert_eq!(enricher.get(&id("bob")).await.unwrap(), None);
    let mut page = vec![json!({"actor": "SU:carol", "object": "SU:bob"})];
    let stats = enricher
        .enrich_values(&mut page, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!((stats.l1_hits, stats.store_calls), (2, 0));
    assert_eq!(page[0]["object"]["error"], "ReferenceNotFound");
    assert_eq!(rows.calls(), 2);
    assert!(enricher.get_many(&[]).await.unwrap().is_empty());
    assert_eq!(rows.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_joins_the_load_of_a_page_in_flight() {
    let rows = Rows::new();
    for name in ["a", "b", "c"] {
        rows.put(name, json!({ "name": name })).await;
    }
    let enricher = Enricher::from_source(rows.clone());
    rows.hold();
    let page = {
        let enricher = enricher.clone();
        tokio::spawn(async move {
            let mut docs = vec![json!({"actor": "SU:a", "object": "SU:b", "target": "SU:x"})];
            let stats = enricher
                .enrich_values(&mut docs, Depth::TopLevel)
                .await
                .unwrap();
            (docs, stats)
        })
    };
    rows.wait_for_calls(1).await;
    // While the page's load is held, lookups of its ids wait for it rather than read again;
    // `c` is new and makes a read of its own.
    let lookups = {
        let enricher = enricher.clone();
        tokio::spawn(async move {
            let many = enricher
                .get_many(&[id("b"), id("x"), id("a")])
                .await
                .unwrap();
            let one = enricher.get(&id("c")).await.unwrap();
            (many, one)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rows.batches(), [3], "the lookup joined the page's load");
    rows.release();
    let (docs, stats) = page.await.unwrap();
    let (many, one) = lookups.await.unwrap();
    assert_eq!((stats.store_calls, stats.fetched), (1, 3));
    assert_eq!(docs[0]["actor"]["data"]["name"], "a");
    assert_eq!(data(&many[0]), json!({"name": "b"}));
    assert_eq!(many[1], None);
    assert_eq!(data(&many[2]), json!({"name": "a"}));
    assert_eq!(data(&one), json!({"name": "c"}));
    assert_eq!(rows.batches(), [3, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_racing_an_invalidation_never_fills_the_l1() {
    let rows = Rows::new();
    rows.put("st", json!({"v": 1})).await;
    let enricher = Enricher::from_source(rows.clone());
    rows.hold();
    let stale_reader = {
        let enricher = enricher.clone();
        tokio::spawn(async move { enricher.get(&id("st")).await.unwrap() })
    };
    rows.wait_for_calls(1).await;
    // The read is held; a write is announced before it returns. (The held read still sees v1:
    // the write reaches the rows only after the gate opens.)
    enricher.invalidate("st");
    rows.release();
    let served = stale_reader.await.unwrap();
    assert_eq!(data(&served), json!({"v": 1}));
    rows.put("st", json!({"v": 2})).await;
    // Without the fence, v1 would sit in the L1 until its TTL.
    let after = enricher.get(&id("st")).await.unwrap();
    assert_eq!(data(&after), json!({"v": 2}));
    assert_eq!(rows.calls(), 2, "the fenced value was cached");
}

#[tokio::test]
async fn a_primed_user_is_served_without_a_read_until_invalidated() {
    let rows = Rows::new();
    let enricher = Enricher::from_source(rows.clone());
    // The service wrote the user itself and hands the enricher what it wrote.
    let written = rows.put("p", json!({"v": 1})).await;
    enricher.prime(written.clone());
    assert_eq!(enricher.get(&id("p")).await.unwrap(), Some(written.clone()));
    let mut page = vec![json!({"actor": "SU:p"})];
    enricher
        .enrich_values(&mut page, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(page[0]["actor"]["data"]["v"], 1);
    assert_eq!(rows.calls(), 0, "a primed user needs no read");

    // A later write, announced, wins over the primed value.
    rows.put("p", json!({"v": 2})).await;
    enricher.invalidate("p");
    assert_eq!(
        data(&enricher.get(&id("p")).await.unwrap()),
        json!({"v": 2})
    );
    assert_eq!(rows.calls(), 1);

    // A prime replaces a cached miss too.
    assert_eq!(enricher.get(&id("q")).await.unwrap(), None);
    let q = rows.put("q", json!({})).await;
    enricher.prime(q.clone());
    assert_eq!(enricher.get(&id("q")).await.unwrap(), Some(q));
    assert_eq!(rows.calls(), 2);

    // While the L1 is bypassed nothing is cached, primed or not.
    enricher.set_cache_bypass(true);
    enricher.prime(rows.put("r", json!({})).await);
    enricher.set_cache_bypass(false);
    assert!(enricher.get(&id("r")).await.unwrap().is_some());
    assert_eq!(rows.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prime_voids_an_older_load_in_flight() {
    let rows = Rows::new();
    rows.put("p", json!({"v": 1})).await;
    let enricher = Enricher::from_source(rows.clone());
    rows.hold();
    let reader = {
        let enricher = enricher.clone();
        tokio::spawn(async move { enricher.get(&id("p")).await.unwrap() })
    };
    rows.wait_for_calls(1).await;
    // The held read will see v1; meanwhile the service writes v2 and primes it.
    let v2 = NewUser::new("p", Some(json!({"v": 2}))).unwrap();
    let v2 = v2.to_json(enrich::Timestamp::now(), enrich::Timestamp::now());
    enricher.prime(v2.clone());
    rows.release();
    assert_eq!(data(&reader.await.unwrap()), json!({"v": 1}));
    // The load that read v1 did not replace the primed v2.
    assert_eq!(enricher.get(&id("p")).await.unwrap(), Some(v2));
    assert_eq!(rows.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_over_the_batch_size_makes_several_coalesced_calls() {
    let rows = Rows::new();
    let users: Vec<_> = (0..2_400)
        .map(|i| {
            enrich::store::ImportUser::new(
                NewUser::new(&format!("u{i}"), None).unwrap(),
                None,
                None,
            )
            .unwrap()
        })
        .collect();
    rows.users.import(&users, false).await.unwrap();
    let enricher = Enricher::source_builder(rows.clone())
        .max_batch_size(1_000)
        .build();
    // 2,500 distinct ids, of which 100 do not exist.
    let docs: Vec<Value> = (0..2_500)
        .map(|i| json!({ "actor": format!("SU:u{i}") }))
        .collect();
    rows.hold();
    let first = {
        let (enricher, docs) = (enricher.clone(), docs.clone());
        tokio::spawn(async move {
            let mut docs = docs;
            let stats = enricher
                .enrich_values(&mut docs, Depth::TopLevel)
                .await
                .unwrap();
            (docs, stats)
        })
    };
    // The three calls go out together, not one after the other.
    rows.wait_for_calls(3).await;
    // A second page of the same ids, on the raw-bytes path, joins all three.
    let second = {
        let enricher = enricher.clone();
        let mut page = RawPage::new(Depth::TopLevel);
        for doc in &docs {
            page.push(doc.to_string().as_bytes()).unwrap();
        }
        tokio::spawn(async move { enricher.enrich_page(&page).await.unwrap().stats() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    rows.release();
    let (enriched, stats) = first.await.unwrap();
    let joined: EnrichStats = second.await.unwrap();
    let mut batches = rows.batches();
    batches.sort();
    assert_eq!(batches, [500, 1_000, 1_000]);
    assert_eq!((stats.store_calls, stats.fetched), (3, 2_500));
    assert_eq!((stats.missing, stats.distinct), (100, 2_500));
    // (Waiting on the loads, or answered by the L1 they filled if it came late: never a read.)
    assert_eq!(joined.store_calls, 0);
    assert_eq!(joined.coalesced + joined.l1_hits, 2_500);
    assert_eq!(joined.missing, 100);
    for (i, doc) in enriched.iter().enumerate() {
        if i < 2_400 {
            assert_eq!(doc["actor"]["id"], format!("u{i}"));
        } else {
            assert_eq!(doc["actor"]["error"], "ReferenceNotFound");
        }
    }

    // Lookups are split the same way.
    enricher.invalidate_all();
    let ids: Vec<UserId> = (0..2_500).map(|i| id(&format!("u{i}"))).collect();
    let found = enricher.get_many(&ids).await.unwrap();
    assert_eq!(found.iter().filter(|u| u.is_some()).count(), 2_400);
    assert_eq!(rows.calls(), 6);
}

#[tokio::test]
async fn a_fault_of_a_read_only_source_stays_an_error() {
    let rows = Rows::new();
    rows.put("cached", json!({})).await;
    let strict = Enricher::from_source(rows.clone());
    let lenient = Enricher::source_builder(rows.clone())
        .on_store_error(OnStoreError::ServeFromCache)
        .build();
    for enricher in [&strict, &lenient] {
        assert!(enricher.get(&id("cached")).await.unwrap().is_some());
    }
    rows.failing.store(true, Ordering::SeqCst);

    let err = strict.get(&id("other")).await.unwrap_err();
    assert!(err.is_store_fault(), "{err}");
    assert!(err.to_string().contains("database is down"), "{err}");
    let mut page = vec![json!({"actor": "SU:cached", "object": "SU:other"})];
    let err = strict
        .enrich_values(&mut page, Depth::TopLevel)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);

    // Served from the cache, a page shows the fault in the reference's place; a lookup has
    // nothing to show and fails, for the faulty ids alone with `get_many_each`.
    let stats = lenient
        .enrich_values(&mut page, Depth::TopLevel)
        .await
        .unwrap();
    assert_eq!(page[0]["actor"]["id"], "cached");
    assert_eq!(page[0]["object"]["error"], "ReferenceUnavailable");
    assert_eq!(stats.unavailable, 1);
    assert!(
        lenient
            .get(&id("other"))
            .await
            .unwrap_err()
            .is_store_fault()
    );
    assert!(
        lenient
            .get_many(&[id("cached"), id("other")])
            .await
            .is_err()
    );
    let each = lenient.get_many_each(&[id("cached"), id("other")]).await;
    assert!(each[0].as_ref().unwrap().is_some());
    assert!(each[1].as_ref().unwrap_err().is_store_fault());

    // Nothing of the fault was cached: once the source is back, the id is read and found.
    rows.failing.store(false, Ordering::SeqCst);
    rows.put("other", json!({"back": true})).await;
    assert_eq!(
        data(&strict.get(&id("other")).await.unwrap()),
        json!({"back": true})
    );
}

#[tokio::test]
async fn a_source_that_answers_the_wrong_number_of_ids_is_an_internal_error() {
    #[derive(Debug)]
    struct Short;

    #[async_trait]
    impl UserSource for Short {
        async fn get_many(&self, _: &[UserId]) -> enrich::Result<Vec<Option<UserJson>>> {
            Ok(Vec::new())
        }

        fn describe(&self) -> String {
            "short".to_string()
        }
    }

    let enricher = Enricher::from_source(Arc::new(Short));
    let err = enricher.get(&id("a")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(
        err.to_string().contains("short answered 0 of 1 ids"),
        "{err}"
    );
}

/// Over Redis: lookups through an enricher's L1, and a primed user giving way to a write that
/// another process makes, announced by the store's watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_lookups_and_primes_stay_coherent() {
    let server = RedisServer::start();
    let enricher = support::watched_enricher(&server.url(), Duration::from_secs(5)).await;
    let other = enrich::store::open(&server.url(), &StoreOptions::new())
        .await
        .unwrap();
    let v1 = enricher
        .users()
        .add(&NewUser::new("r", Some(json!({"v": 1}))).unwrap(), false)
        .await
        .unwrap()
        .user;
    let found = enricher.get_many(&[id("r"), id("none")]).await.unwrap();
    assert_eq!(found, [Some(v1.clone()), None]);

    enricher.prime(v1);
    other
        .update(&NewUser::new("r", Some(json!({"v": 2}))).unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = enricher.get(&id("r")).await.unwrap();
        if data(&seen) == json!({"v": 2}) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the primed v1 outlived a write made elsewhere"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
