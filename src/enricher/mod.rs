//! [`Enricher`]: the handle a service shares between its request handlers.
//!
//! - here: the enricher and the controls of its L1;
//! - `builder`: [`EnricherBuilder`] and [`OnStoreError`];
//! - `pages`: enriching pages of documents, as bytes ([`EnrichedPage`]) or values.

mod builder;
mod pages;

use std::sync::Arc;

pub use self::builder::{EnricherBuilder, OnStoreError};
pub use self::pages::EnrichedPage;
use crate::cache::{CacheStats, MemoPool, WriteThrough};
use crate::resolver::Resolver;
use crate::store::{SharedStore, WatchGuard};

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
        EnricherBuilder::new(store)
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
}
