//! [`EnricherBuilder`]: how an [`Enricher`] is configured, and what it does when its source
//! fails ([`OnStoreError`]).

use std::sync::Arc;

use super::{Enricher, Inner};
use crate::cache::{CacheConfig, L1, MemoPool, WriteThrough};
use crate::resolver::Resolver;
use crate::store::{SharedSource, UserSource, UserStore};

/// What to do when the store fails while a page is being enriched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// The call fails with the store's error. The default: a fault is never served as data.
    #[default]
    Fail,
    /// Serve what the L1 has; references the store could not answer for become
    /// `{"error":"ReferenceUnavailable",…}` (never `ReferenceNotFound`), counted in
    /// [`EnrichStats::unavailable`](crate::EnrichStats::unavailable). Pages only: a lookup
    /// ([`Enricher::get`]) has nothing to stand in for a user and returns the error.
    ServeFromCache,
}

/// Builds an [`Enricher`] over a [`UserStore`] ([`Enricher::builder`]) or a [`UserSource`]
/// ([`Enricher::source_builder`]).
#[derive(Debug)]
#[must_use]
pub struct EnricherBuilder<S: ?Sized = dyn UserStore> {
    backing: Arc<S>,
    cache: CacheConfig,
    on_store_error: OnStoreError,
    coherent: bool,
    max_batch: usize,
}

impl<S: ?Sized> EnricherBuilder<S> {
    pub(super) fn new(backing: Arc<S>) -> Self {
        EnricherBuilder {
            backing,
            cache: CacheConfig::new(),
            on_store_error: OnStoreError::Fail,
            coherent: true,
            max_batch: usize::MAX,
        }
    }

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
    /// store can: Redis, and when there is an L1 to keep coherent). Off, such writes are seen
    /// when cached entries expire.
    pub fn coherent(mut self, coherent: bool) -> Self {
        self.coherent = coherent;
        self
    }

    /// The most ids one read of the source asks for (at least 1). A page with more misses
    /// makes several reads, at once, each coalesced with other pages like any other; each
    /// counts in [`EnrichStats::store_calls`](crate::EnrichStats::store_calls). Unlimited by
    /// default: a page's misses are bounded by the page, and the Redis, file and memory stores
    /// read any number in one call. Set it for a source with a limit on what one query may
    /// take, such as a SQL database's bound on parameters.
    pub fn max_batch_size(mut self, ids: usize) -> Self {
        self.max_batch = ids.max(1);
        self
    }

    /// The parts every enricher has, reading from `source`. Where the source is watched, the
    /// L1 stays bypassed until the watch is up, since writes before it would go unannounced.
    /// Without an L1 there is nothing to keep coherent, and no watch (a connection of its
    /// own, on Redis) is started.
    fn inner(&self, source: SharedSource) -> Arc<Inner> {
        let l1 = Arc::new(L1::new(&self.cache));
        let watch = if self.coherent && self.cache.caches() {
            l1.set_bypass(true);
            let sink_l1 = l1.clone();
            let watch = source.watch(Arc::new(move |event| sink_l1.apply(event)));
            if watch.is_none() {
                l1.set_bypass(false);
            }
            watch
        } else {
            None
        };
        Arc::new(Inner {
            resolver: Resolver {
                source,
                l1,
                max_batch: self.max_batch,
            },
            on_store_error: self.on_store_error,
            memos: MemoPool::default(),
            _watch: watch,
        })
    }
}

impl EnricherBuilder {
    /// The enricher. Its reads and writes are to be awaited within a tokio runtime; it may be
    /// built outside one (over Redis, its watch of the writes then runs on a thread of its
    /// own).
    pub fn build(self) -> Enricher {
        let inner = self.inner(self.backing.clone());
        let users = Arc::new(WriteThrough {
            store: self.backing,
            l1: inner.resolver.l1.clone(),
        });
        Enricher {
            inner,
            backing: users,
        }
    }
}

impl EnricherBuilder<dyn UserSource> {
    /// The enricher. Its reads are to be awaited within a tokio runtime; it may be built
    /// outside one (over Redis, its watch of the writes then runs on a thread of its own).
    pub fn build(self) -> Enricher<dyn UserSource> {
        Enricher {
            inner: self.inner(self.backing.clone()),
            backing: self.backing,
        }
    }
}
