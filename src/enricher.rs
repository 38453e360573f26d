//! [`Enricher`]: the handle a service shares between its request handlers.

use std::sync::Arc;

use serde_json::Value;

use crate::answer::Answer;
use crate::cache::{CacheConfig, CacheStats, L1, Memo, MemoPool, WriteThrough};
use crate::error::Result;
use crate::page::RawPage;
use crate::resolver::Resolver;
use crate::shape::Depth;
use crate::stats::EnrichStats;
use crate::store::{SharedStore, WatchGuard};
use crate::value::{EnrichedValues, References, enrich_in_place};

/// What to do when the store fails while a page is being enriched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// The call fails with the store's error. The default: a fault is never served as data.
    #[default]
    Fail,
    /// Serve what the L1 has; references the store could not answer for become
    /// `{"error":"ReferenceUnavailable",…}` (never `ReferenceNotFound`), counted in
    /// [`EnrichStats::unavailable`].
    ServeFromCache,
}

/// Builds an [`Enricher`].
#[derive(Debug)]
pub struct EnricherBuilder {
    store: SharedStore,
    cache: CacheConfig,
    on_store_error: OnStoreError,
    coherent: bool,
}

impl EnricherBuilder {
    /// The L1's size and lifetimes.
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// What a store fault does to a page.
    pub fn on_store_error(mut self, policy: OnStoreError) -> Self {
        self.on_store_error = policy;
        self
    }

    /// Whether to watch the store for writes made by other processes (on by default, where the
    /// store can: Redis). Off, such writes are seen when cached entries expire.
    pub fn coherent(mut self, coherent: bool) -> Self {
        self.coherent = coherent;
        self
    }

    /// The enricher. Where the store is watched, the L1 stays bypassed until the watch is up,
    /// since writes before it would go unannounced. Call within a tokio runtime.
    pub fn build(self) -> Enricher {
        let l1 = Arc::new(L1::new(&self.cache));
        let watch = if self.coherent {
            l1.set_bypass(true);
            let sink_l1 = l1.clone();
            let watch = self
                .store
                .watch(Arc::new(move |event| sink_l1.apply(event)));
            if watch.is_none() {
                l1.set_bypass(false);
            }
            watch
        } else {
            None
        };
        Enricher {
            inner: Arc::new(Inner {
                resolver: Resolver {
                    store: self.store.clone(),
                    l1: l1.clone(),
                },
                users: Arc::new(WriteThrough {
                    store: self.store,
                    l1,
                }),
                on_store_error: self.on_store_error,
                memos: MemoPool::default(),
                _watch: watch,
            }),
        }
    }
}

/// Replaces user references in pages of activities, through a per-process L1 and one batched
/// store call per page. Cheap to clone: clones share the L1 and the loads in flight.
#[derive(Debug, Clone)]
pub struct Enricher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    resolver: Resolver,
    users: Arc<WriteThrough>,
    on_store_error: OnStoreError,
    /// Memos of the L1's answers lent to pages on the raw-bytes path.
    memos: MemoPool,
    /// Stops the watch when the last clone goes.
    _watch: Option<WatchGuard>,
}

impl Enricher {
    /// An enricher over `store` with the default cache.
    pub fn new(store: SharedStore) -> Enricher {
        Enricher::builder(store).build()
    }

    /// Starts configuring an enricher over `store`.
    pub fn builder(store: SharedStore) -> EnricherBuilder {
        EnricherBuilder {
            store,
            cache: CacheConfig::new(),
            on_store_error: OnStoreError::Fail,
            coherent: true,
        }
    }

    /// The user store, as a handle whose writes also invalidate this enricher's L1 (so this
    /// process reads its own writes at once).
    pub fn users(&self) -> SharedStore {
        self.inner.users.clone()
    }

    /// Drops `id` from the L1 and keeps loads of it in flight from filling it.
    pub fn invalidate(&self, id: &str) {
        self.inner.resolver.l1.invalidate(id);
    }

    /// Drops everything from the L1 and fences every load in flight.
    pub fn invalidate_all(&self) {
        self.inner.resolver.l1.invalidate_all();
    }

    /// While `true`, the L1 is neither read nor filled: every read goes to the store. For when
    /// announcements of writes may be missed.
    pub fn set_cache_bypass(&self, bypass: bool) {
        self.inner.resolver.l1.set_bypass(bypass);
    }

    /// True while the L1 is bypassed: the store is watched but its announcements may be missed
    /// (the watch is starting, or its connection is down).
    pub fn cache_bypassed(&self) -> bool {
        self.inner.resolver.l1.bypassed()
    }

    /// Waits until the L1 is in use (the store's watch is up), for at most `timeout`; true if
    /// it is. A batch job calls this before its first page so that it caches from the start.
    pub async fn wait_for_cache(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.cache_bypassed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        true
    }

    /// What the L1 holds (users, misses, bytes) and what happened to it (evictions,
    /// invalidations, bypass).
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.resolver.l1.stats()
    }

    /// Enriches a page of documents in place: each is an activity, a group or a feed response.
    pub async fn enrich_values(&self, page: &mut [Value], depth: Depth) -> Result<EnrichStats> {
        let refs = References::collect(page, depth);
        let (answers, stats) = self.resolve_references(&refs).await?;
        enrich_in_place(page, depth, &refs, &answers);
        Ok(stats)
    }

    /// Enriches one document given as JSON bytes (an activity, a group, a feed response, or an
    /// array of them) and appends the result, compact, to `out`.
    pub async fn enrich_bytes(
        &self,
        doc: &[u8],
        depth: Depth,
        out: &mut Vec<u8>,
    ) -> Result<EnrichStats> {
        let mut page = RawPage::new(depth);
        page.push_any(doc)?;
        let enriched = self.enrich_page(&page).await?;
        enriched.write(0, out);
        Ok(enriched.stats())
    }

    /// Resolves every reference of a [`RawPage`] with at most one store call; the result
    /// writes each enriched document.
    pub async fn enrich_page<'p>(&self, page: &'p RawPage) -> Result<EnrichedPage<'p>> {
        // Popular users are answered from a memo of what the L1 said to earlier pages, as
        // coherent as the L1 itself; a page dropped mid-way just loses its memo.
        let mut memo = self.inner.memos.take();
        let enriched = self.enrich_page_with(page, Some(&mut memo)).await;
        self.inner.memos.put(memo);
        enriched
    }

    /// Like [`Enricher::enrich_page`], for a worker that enriches page after page: `memo`
    /// answers the ids it saw in earlier pages, as long as the L1 has not changed since.
    pub(crate) async fn enrich_page_with<'p>(
        &self,
        page: &'p RawPage,
        memo: Option<&mut Memo>,
    ) -> Result<EnrichedPage<'p>> {
        let mut stats = EnrichStats {
            activities: page.activities(),
            references: page.references(),
            ..EnrichStats::default()
        };
        stats.distinct = page.ids().len() as u64;
        let answers = self
            .inner
            .resolver
            .resolve_with(
                page.ids(),
                &mut stats,
                memo.map(|memo| (memo, page.id_hashes())),
            )
            .await;
        let answers = self.fail_on_store_fault(answers)?;
        for (answer, count) in answers.iter().zip(page.site_counts()) {
            for _ in 0..count {
                answer.count(&mut stats);
            }
        }
        Ok(EnrichedPage {
            page,
            answers,
            stats,
        })
    }

    /// Resolves every reference of a page of documents held as values (activities, groups or
    /// feed responses), with at most one store call, without touching them: the result writes
    /// each document with the users spliced in as their stored bytes.
    ///
    /// The same references, answers and stats as [`Enricher::enrich_values`], for a page that
    /// is to be serialized: no user is built as a `Value`, so it costs about what the raw-bytes
    /// path costs rather than a deep copy of a user per reference.
    pub async fn enrich_value_page<'a>(
        &self,
        docs: &'a [Value],
        depth: Depth,
    ) -> Result<EnrichedValues<'a>> {
        let refs = References::collect(docs, depth);
        let (answers, stats) = self.resolve_references(&refs).await?;
        Ok(EnrichedValues::new(docs, depth, refs, answers, stats))
    }

    /// Resolves the references a walk of `Value`s found, and counts what each was answered.
    async fn resolve_references(&self, refs: &References) -> Result<(Vec<Answer>, EnrichStats)> {
        let mut stats = EnrichStats {
            activities: refs.activities,
            references: refs.sites.len() as u64,
            ..EnrichStats::default()
        };
        let answers = self.resolve(&refs.ids, &mut stats).await?;
        for &site in &refs.sites {
            answers[site as usize].count(&mut stats);
        }
        Ok((answers, stats))
    }

    async fn resolve(&self, ids: &[Box<str>], stats: &mut EnrichStats) -> Result<Vec<Answer>> {
        stats.distinct = ids.len() as u64;
        let answers = self.inner.resolver.resolve(ids, stats).await;
        self.fail_on_store_fault(answers)
    }

    /// The answers, or the first store fault among them if faults fail the page.
    fn fail_on_store_fault(&self, answers: Vec<Answer>) -> Result<Vec<Answer>> {
        if self.inner.on_store_error == OnStoreError::Fail
            && let Some(Answer::Unavailable(err)) =
                answers.iter().find(|a| matches!(a, Answer::Unavailable(_)))
        {
            return Err(err.clone());
        }
        Ok(answers)
    }
}

/// A [`RawPage`] whose references are resolved.
#[derive(Debug)]
pub struct EnrichedPage<'p> {
    page: &'p RawPage,
    answers: Vec<Answer>,
    stats: EnrichStats,
}

impl EnrichedPage<'_> {
    /// Appends document `doc` of the page, enriched, to `out`.
    pub fn write(&self, doc: usize, out: &mut Vec<u8>) {
        self.page.write_doc(doc, &self.answers, out);
    }

    /// The exact number of bytes [`EnrichedPage::write`] appends for document `doc`, known
    /// before anything is written: a caller with a bound on its output checks this first.
    pub fn doc_len(&self, doc: usize) -> usize {
        self.page.doc_len(doc, &self.answers)
    }

    /// What the enrichment did.
    pub fn stats(&self) -> EnrichStats {
        self.stats
    }
}
