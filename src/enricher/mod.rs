//! [`Enricher`]: the handle a service shares between its request handlers.
//!
//! - here: the enricher, what it reads from, its lookups ([`Enricher::get`],
//!   [`Enricher::get_many`], [`Enricher::prime`]) and the controls of its L1;
//! - `builder`: [`EnricherBuilder`] and [`OnStoreError`];
//! - `pages`: enriching pages of documents, as bytes ([`EnrichedPage`]) or values.

mod builder;
mod pages;

use std::fmt;
use std::sync::Arc;

pub use self::builder::{EnricherBuilder, OnStoreError};
pub use self::pages::{EnrichedPage, TooLarge};
use crate::answer::Answer;
use crate::cache::{CacheStats, MemoPool};
use crate::collection::{EntryJson, EntryKey};
use crate::error::Result;
use crate::id::Ids;
use crate::record::Record;
use crate::resolver::Resolver;
use crate::stats::EnrichStats;
use crate::store::{SharedSource, SharedStore, UserSource, UserStore, WatchGuard};
use crate::user::{UserId, UserJson};

/// Replaces user references in pages of activities, and looks users up, through a per-process
/// L1 and one batched read of its source per page. Cheap to clone: clones share the L1 and the
/// loads in flight.
///
/// `S` is what it reads from: a [`UserStore`] (the default: [`Enricher::new`]), whose writes
/// through [`Enricher::users`] reach this enricher's L1 at once; or a read-only
/// [`UserSource`] ([`Enricher::from_source`]), such as a service's own database, which has no
/// [`Enricher::users`].
///
/// Every read goes the same way, a page's references and a lookup alike: the L1; then a load
/// of the id already in flight, for any caller, is joined; then one batched read of the source
/// for the rest. A load that races an invalidation of its id never fills the L1.
///
/// # Example: lookups
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> enrich::Result<()> {
/// use enrich::{Enricher, NewUser, StoreOptions, UserId, store};
/// use serde_json::json;
///
/// let enricher = Enricher::new(store::open("memory:", &StoreOptions::new()).await?);
/// let alice = NewUser::new("alice", Some(json!({"name": "Alice"})))?;
/// let alice = enricher.users().add(&alice, false).await?.user;
///
/// // One user, or many in one batch: in order, duplicates allowed, `None` for no such user.
/// let (a, b) = (UserId::parse("alice")?, UserId::parse("bob")?);
/// assert_eq!(enricher.get(&a).await?, Some(alice.clone()));
/// let found = enricher.get_many(&[a.clone(), b, a]).await?;
/// assert_eq!(found, [Some(alice.clone()), None, Some(alice.clone())]);
///
/// // A user the caller holds, current (just written, say): later reads need no store call.
/// enricher.prime(alice);
/// // A write made where no announcement reaches this process: forget what the L1 holds.
/// enricher.invalidate("alice");
/// # Ok(())
/// # }
/// ```
pub struct Enricher<S: ?Sized = dyn UserStore> {
    inner: Arc<Inner>,
    /// What writes go to: for an enricher over a store, the store seen through the L1 (writes
    /// invalidate it); over a source, the source.
    backing: Arc<S>,
}

impl<S: ?Sized> Clone for Enricher<S> {
    fn clone(&self) -> Self {
        Enricher {
            inner: self.inner.clone(),
            backing: self.backing.clone(),
        }
    }
}

impl<S: ?Sized + fmt::Debug> fmt::Debug for Enricher<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enricher")
            .field("backing", &self.backing)
            .field("inner", &self.inner)
            .finish()
    }
}

#[derive(Debug)]
struct Inner {
    /// Resolves user references: the source, the L1, the loads in flight.
    resolver: Resolver,
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
        self.backing.clone()
    }
}

impl Enricher<dyn UserSource> {
    /// A read-only enricher over `source` with the default cache. Writes happen elsewhere:
    /// unless the source announces them ([`UserSource::watch`]), tell the enricher with
    /// [`Enricher::invalidate`] or [`Enricher::prime`], or let the TTLs of the cache run out.
    pub fn from_source(source: SharedSource) -> Enricher<dyn UserSource> {
        Enricher::source_builder(source).build()
    }

    /// Starts configuring a read-only enricher over `source`.
    pub fn source_builder(source: SharedSource) -> EnricherBuilder<dyn UserSource> {
        EnricherBuilder::new(source)
    }
}

impl<S: ?Sized> Enricher<S> {
    /// The same enricher (its L1, memos and watch), seen as one that only reads: what a job
    /// that never writes holds, whatever the enricher was built over.
    pub(crate) fn reader(&self) -> Enricher<dyn UserSource> {
        Enricher {
            inner: self.inner.clone(),
            backing: self.inner.resolver.source.clone(),
        }
    }

    /// The user `id` as a page's reference to it would be answered, through the L1 and the
    /// loads in flight: `None` if there is no such user. A fault of the source is an error,
    /// whatever the [`OnStoreError`] policy, never `None`.
    pub async fn get(&self, id: &UserId) -> Result<Option<UserJson>> {
        let ids = [Box::<str>::from(id.as_str())];
        let mut stats = EnrichStats::default();
        let answers = self.inner.resolver.resolve(&ids[..], &mut stats).await;
        user_of((answers.into_iter().next()).expect("one answer per id"))
    }

    /// The collection entry `key` as a page's `SO:` reference to it would be answered, through
    /// the L1 and the loads in flight: `None` if there is no such entry. A fault of the source
    /// is an error, never `None`.
    pub async fn get_entry(&self, key: &EntryKey) -> Result<Option<EntryJson>> {
        let keys = [Box::<str>::from(key.as_str())];
        let mut stats = EnrichStats::default();
        let answers = self.inner.resolver.resolve(&keys[..], &mut stats).await;
        let answer = answers.into_iter().next().expect("one answer per key");
        Ok(answer.into_result()?.and_then(Record::into_entry))
    }

    /// The users `ids`, in order (an id given twice is answered twice, read once), with one
    /// read of the source for the ids the L1 and the loads in flight do not answer (or one per
    /// [`EnricherBuilder::max_batch_size`] of them). The first fault of the source, for any id,
    /// is the error of the call; [`Enricher::get_many_each`] keeps the answers of the others.
    pub async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        self.get_many_each(ids).await.into_iter().collect()
    }

    /// Like [`Enricher::get_many`], with an answer or an error for each id on its own: over
    /// Redis Cluster, the ids of the nodes that are up are answered while one is down.
    pub async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        let mut distinct = Ids::with_capacity(ids.len());
        let slots: Vec<u32> = ids
            .iter()
            .map(|id| distinct.intern(id.as_str().as_bytes()))
            .collect();
        let mut stats = EnrichStats::default();
        let answers = (self.inner.resolver).resolve(&distinct, &mut stats).await;
        (slots.into_iter())
            .map(|slot| user_of(answers[slot as usize].clone()))
            .collect()
    }

    /// Puts `user`, which the caller holds, in the L1, so that reads of it need no store call:
    /// a user the caller has just written to the source, or just read from it.
    ///
    /// `user` must be current when `prime` is called. It then counts as a load that completes
    /// at once: a write announced after `prime` begins (an [`Enricher::invalidate`], a change
    /// the store's watch reports, a write through [`Enricher::users`]) drops it, however the
    /// two interleave; a load of the id already in flight, which may have read an older
    /// version, no longer fills the L1; and it is cached only while the L1 is in use (not
    /// bypassed, not disabled), for the same TTL as a loaded user. Unlike DataLoader's `prime`,
    /// it replaces what the L1 holds for the id.
    pub fn prime(&self, user: UserJson) {
        let key: Box<str> = user.id().into();
        self.inner.resolver.l1.prime(&key, Record::User(user));
    }

    /// Drops `key` from the L1 and keeps loads of it in flight from filling it: a user's id
    /// (`alice`), or a collection entry's `<collection>:<id>` (`food:burger`, its
    /// [`EntryKey::as_str`]).
    pub fn invalidate(&self, key: &str) {
        self.inner.resolver.l1.invalidate(key);
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

/// The user an answer to a user id holds.
fn user_of(answer: Answer) -> Result<Option<UserJson>> {
    Ok(answer.into_result()?.and_then(Record::into_user))
}
