//! [`EnricherBuilder`]: how an [`Enricher`] is configured, and what it does when its store
//! fails ([`OnStoreError`]).

use std::sync::Arc;

use super::{Enricher, Inner};
use crate::cache::{CacheConfig, L1, MemoPool, WriteThrough};
use crate::resolver::Resolver;
use crate::store::SharedStore;

/// What to do when the store fails while a page is being enriched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// The call fails with the store's error. The default: a fault is never served as data.
    #[default]
    Fail,
    /// Serve what the L1 has; references the store could not answer for become
    /// `{"error":"ReferenceUnavailable",…}` (never `ReferenceNotFound`), counted in
    /// [`EnrichStats::unavailable`](crate::EnrichStats::unavailable).
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
    pub(super) fn new(store: SharedStore) -> Self {
        EnricherBuilder {
            store,
            cache: CacheConfig::new(),
            on_store_error: OnStoreError::Fail,
            coherent: true,
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
