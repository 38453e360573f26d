//! The per-process L1: a moka cache of users (and of misses), bounded by bytes, plus the
//! registry of loads in flight that makes the cache safe against invalidation races.
//!
//! # The fence
//!
//! moka's `invalidate` does not stop a load already in flight from inserting the value it read
//! before the write: the stale value would then be served until its TTL. So every load
//! registers a [`Flight`] before it asks the store, and inserts its result only if that flight
//! is still registered, not voided, and no flush happened since it began. An invalidation
//! removes and voids the flight first and drops the cached entry second, both under the lock
//! that an insert holds, so whichever comes first, the stale value does not survive. This is the
//! in-process form of memcache's leases and of Redis's "loading marker" for client-side caching.
//!
//! The same registry coalesces loads: a page that needs an id another page is already loading
//! waits for that load rather than asking the store again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::future::Shared;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry as TableEntry;
use moka::Expiry;
use tokio::sync::oneshot;

use crate::error::Result;
use crate::store::StoreEvent;
use crate::user::{UserJson, id_hash};

/// What the L1 knows of a user.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    /// The user as stored.
    Found(UserJson),
    /// The store said there is no such user.
    Missing,
}

impl Cached {
    pub(crate) fn from_store(found: Option<UserJson>) -> Cached {
        found.map_or(Cached::Missing, Cached::Found)
    }

    pub(crate) fn user(&self) -> Option<&UserJson> {
        match self {
            Cached::Found(user) => Some(user),
            Cached::Missing => None,
        }
    }
}

/// How big the L1 may grow and how long entries live.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    max_bytes: u64,
    ttl: Duration,
    negative_ttl: Duration,
    negative_share: f64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig::new()
    }
}

impl CacheConfig {
    /// 256 MiB, users kept 60 s at most, misses 5 s, misses at most a tenth of the bytes.
    pub fn new() -> Self {
        CacheConfig {
            max_bytes: 256 << 20,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            negative_share: 0.1,
        }
    }

    /// The bound on the bytes held (keys, user JSON and per-entry overhead).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How long a user may be served from the L1: the backstop for writes that were never
    /// announced. (Pages on the raw-bytes path also answer from memos of what the L1 said,
    /// which forget everything at every invalidation and at least once a second, so an answer
    /// may outlive its TTL by up to a second; never an announced write.)
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long "no such user" may be served from the L1.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The share of [`CacheConfig::max_bytes`] that "no such user" answers may take, from 0 to
    /// 1 (default 0.1). Misses live in a part of the L1 of their own, so a flood of lookups of
    /// ids that do not exist (cheap to send, one per random id) evicts other misses, never
    /// cached users; users get the rest of the bytes.
    pub fn negative_share(mut self, share: f64) -> Self {
        self.negative_share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// A config that caches nothing: every read goes to the store.
    pub fn disabled() -> Self {
        CacheConfig::new().max_bytes(0)
    }
}

struct Ttl {
    found: Duration,
    missing: Duration,
}

impl Expiry<Arc<str>, Cached> for Ttl {
    fn expire_after_create(&self, _: &Arc<str>, value: &Cached, _: Instant) -> Option<Duration> {
        Some(match value {
            Cached::Found(_) => self.found,
            Cached::Missing => self.missing,
        })
    }

    fn expire_after_update(
        &self,
        key: &Arc<str>,
        value: &Cached,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, at)
    }
}

/// What moka charges an entry beyond its key and value bytes: its node, the hash table slot,
/// the timer wheel and the `Arc`s.
const ENTRY_OVERHEAD: usize = 96;

fn weigh(key: &Arc<str>, value: &Cached) -> u32 {
    let bytes = key.len() + value.user().map_or(0, |u| u.as_bytes().len()) + ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// What an L1 holds, and what happened to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Users cached.
    pub users: u64,
    /// "No such user" answers cached.
    pub misses: u64,
    /// Bytes the entries are charged (keys, user JSON, per-entry overhead).
    pub bytes: u64,
    /// Of which misses.
    pub miss_bytes: u64,
    /// Users pushed out to make room, since the start.
    pub evictions: u64,
    /// Ids dropped because they were written, since the start.
    pub invalidations: u64,
    /// True while the L1 is bypassed (the store's announcements may be missed).
    pub bypassed: bool,
}

/// The result of one batched store call, shared by every id it loaded: an answer or an error
/// per id (a cluster node can fail while the others answer), or one error for the whole call.
pub(crate) type BatchResult = Arc<Result<Vec<Result<Option<UserJson>>>>>;

/// A batched load's answer, as every waiter sees it; an error if the loader was dropped.
pub(crate) type BatchFuture = Shared<oneshot::Receiver<BatchResult>>;

/// A load of one id in flight: where its answer will come from, and whether it may still
/// fill the cache.
pub(crate) struct Flight {
    pub(crate) batch: BatchFuture,
    pub(crate) index: usize,
    voided: AtomicBool,
    epoch: u64,
}

type Cache = moka::sync::Cache<Arc<str>, Cached, Hasher>;

/// The L1 and its registry of loads in flight.
pub(crate) struct L1 {
    /// Users found.
    users: Cache,
    /// Ids the store said do not exist, in a budget of their own.
    misses: Cache,
    /// Users pushed out to make room.
    evictions: Arc<AtomicU64>,
    flights: DashMap<Arc<str>, Arc<Flight>, Hasher>,
    /// Bumped by every flush; a load that began in an older epoch does not fill the cache.
    epoch: AtomicU64,
    /// Held shared while a load fills the cache, exclusively while a flush bumps the epoch.
    flush: RwLock<()>,
    /// Set while announcements of writes may be missed: the cache is then neither read nor
    /// filled.
    bypass: AtomicBool,
    enabled: bool,
    pub(crate) invalidations: AtomicU64,
    /// Bumped after every invalidation, flush and change of bypass: a [`Memo`] taken at one
    /// generation is current while the generation holds.
    generation: AtomicU64,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("users", &self.users.entry_count())
            .field("misses", &self.misses.entry_count())
            .field("in_flight", &self.flights.len())
            .finish()
    }
}

/// A fast hasher with a per-process random seed: ids come from outside, so a fixed seed could
/// be attacked with colliding keys.
type Hasher = foldhash::fast::RandomState;

/// What [`L1::join_or_start`] found.
pub(crate) enum Joined {
    /// Another load of this id is in flight: wait for it.
    Waiting(Arc<Flight>),
    /// This caller registered the load and must perform it.
    Started(Arc<Flight>),
}

impl L1 {
    pub(crate) fn new(config: &CacheConfig) -> L1 {
        let ttl = || Ttl {
            found: config.ttl,
            missing: config.negative_ttl,
        };
        // Truncation is fine: a share of a byte count.
        let miss_bytes = (config.max_bytes as f64 * config.negative_share) as u64;
        let evictions = Arc::new(AtomicU64::new(0));
        let evicted = evictions.clone();
        let users = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes.saturating_sub(miss_bytes))
            .weigher(weigh)
            .expire_after(ttl())
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(Hasher::default());
        let misses = moka::sync::Cache::builder()
            .max_capacity(miss_bytes)
            .weigher(weigh)
            .expire_after(ttl())
            .build_with_hasher(Hasher::default());
        L1 {
            users,
            misses,
            evictions,
            flights: DashMap::with_hasher(Hasher::default()),
            epoch: AtomicU64::new(0),
            flush: RwLock::new(()),
            bypass: AtomicBool::new(false),
            enabled: config.max_bytes > 0,
            invalidations: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// The cached answer for `id`, if any and if the cache may be read now.
    pub(crate) fn get(&self, id: &str) -> Option<Cached> {
        if !self.enabled || self.bypass.load(Ordering::Acquire) {
            return None;
        }
        self.users.get(id).or_else(|| self.misses.get(id))
    }

    fn part(&self, answer: &Cached) -> &Cache {
        match answer {
            Cached::Found(_) => &self.users,
            Cached::Missing => &self.misses,
        }
    }

    /// Joins the load of `id` in flight, or registers a new one answered by `batch`.
    pub(crate) fn join_or_start(&self, id: &str, batch: &BatchFuture, index: usize) -> Joined {
        match self.flights.entry(Arc::from(id)) {
            Entry::Occupied(flight) => Joined::Waiting(flight.get().clone()),
            Entry::Vacant(slot) => {
                let flight = Arc::new(Flight {
                    batch: batch.clone(),
                    index,
                    voided: AtomicBool::new(false),
                    epoch: self.epoch.load(Ordering::Acquire),
                });
                slot.insert(flight.clone());
                Joined::Started(flight)
            }
        }
    }

    /// Ends a load: fills the cache with its answer unless it was fenced off, and unregisters
    /// it. Pass `None` for a load that failed; nothing is cached then.
    pub(crate) fn complete(&self, id: &str, flight: &Arc<Flight>, answer: Option<Cached>) {
        if let Some(answer) = answer
            && self.enabled
        {
            let _no_flush = self.flush.read().unwrap_or_else(|e| e.into_inner());
            // Holding the registry entry keeps an invalidation of this id out until the insert
            // is done; the invalidation then removes what was inserted.
            if let Some(current) = self.flights.get(id)
                && Arc::ptr_eq(current.value(), flight)
                && !flight.voided.load(Ordering::Acquire)
                && flight.epoch == self.epoch.load(Ordering::Acquire)
                && !self.bypass.load(Ordering::Acquire)
            {
                self.part(&answer).insert(current.key().clone(), answer);
            }
        }
        self.flights
            .remove_if(id, |_, current| Arc::ptr_eq(current, flight));
    }

    /// Drops what the cache holds for `id` and fences the loads of it in flight.
    pub(crate) fn invalidate(&self, id: &str) {
        if let Some((_, flight)) = self.flights.remove(id) {
            flight.voided.store(true, Ordering::Release);
        }
        self.users.invalidate(id);
        self.misses.invalidate(id);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops everything and fences every load in flight.
    pub(crate) fn invalidate_all(&self) {
        let _flush = self.flush.write().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.flights.retain(|_, flight| {
            flight.voided.store(true, Ordering::Release);
            false
        });
        self.users.invalidate_all();
        self.misses.invalidate_all();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops reading and filling the cache (`true`) or resumes (`false`). Entering bypass also
    /// flushes, since what is cached may have been overwritten unannounced.
    pub(crate) fn set_bypass(&self, bypass: bool) {
        if bypass {
            self.bypass.store(true, Ordering::Release);
            self.invalidate_all();
        } else {
            // Loads begun during the bypass read the store while writes might go unannounced.
            self.invalidate_all();
            self.bypass.store(false, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Applies what the store said about writes.
    pub(crate) fn apply(&self, event: StoreEvent) {
        match event {
            StoreEvent::Connected => self.set_bypass(false),
            StoreEvent::Lost => self.set_bypass(true),
            StoreEvent::Changed(ids) => ids.iter().for_each(|id| self.invalidate(id)),
            StoreEvent::ChangedAll => self.invalidate_all(),
        }
    }

    /// True while the cache is bypassed.
    pub(crate) fn bypassed(&self) -> bool {
        self.bypass.load(Ordering::Acquire)
    }

    /// The current generation, or `None` while nothing read from the L1 may be kept (it is
    /// bypassed or disabled).
    fn generation(&self) -> Option<u64> {
        let generation = self.generation.load(Ordering::Acquire);
        (self.enabled && !self.bypass.load(Ordering::Acquire)).then_some(generation)
    }

    /// What the L1 holds now, after moka's pending bookkeeping.
    pub(crate) fn stats(&self) -> CacheStats {
        self.users.run_pending_tasks();
        self.misses.run_pending_tasks();
        CacheStats {
            users: self.users.entry_count(),
            misses: self.misses.entry_count(),
            bytes: self.users.weighted_size() + self.misses.weighted_size(),
            miss_bytes: self.misses.weighted_size(),
            evictions: self.evictions.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            bypassed: self.bypassed(),
        }
    }
}

/// A private copy of answers the L1 gave, kept by one worker of a batch job between its pages.
///
/// A job looks up the same popular users in page after page; asking moka each time costs a
/// shared hash table probe, reference-count traffic between cores and access-order bookkeeping.
/// A memo answers those from a plain map the worker owns, with its own copies of the bytes.
///
/// It stays exactly as coherent as the L1: it holds only answers taken while the L1's
/// generation did not move, and it is emptied as soon as the generation moves (any
/// invalidation, flush or bypass), when it is older than [`Memo::MAX_AGE`] (so it never
/// stretches the L1's TTLs by more than that), or when it outgrows [`Memo::MAX_ENTRIES`].
#[derive(Debug, Default)]
pub(crate) struct Memo {
    generation: u64,
    since: Option<Instant>,
    /// Ids with their answers, found by [`id_hash`].
    answers: HashTable<(Box<str>, Cached)>,
    /// Bytes of the users held.
    bytes: usize,
    /// Whether the users are shared with the L1 rather than copied (see [`Memo::sharing`]).
    shares: bool,
}

impl Memo {
    /// The longest an answer is served from a memo after the memo was started.
    pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);
    /// Entries at most; a memo this full starts over.
    pub(crate) const MAX_ENTRIES: usize = 1 << 16;
    /// Bytes of users at most; a memo this full starts over.
    pub(crate) const MAX_BYTES: usize = 16 << 20;

    /// A memo whose users are the L1's own bytes, not copies: for memos that come and go with
    /// requests (a copy per page would cost more than it saves), and whose memory should stay
    /// the L1's.
    pub(crate) fn sharing() -> Memo {
        Memo {
            shares: true,
            ..Memo::default()
        }
    }

    /// Starts a page: empties the memo if the L1 moved on since it was filled. Returns the
    /// generation the page's answers may be kept under, or `None` if they may not be kept.
    pub(crate) fn begin(&mut self, l1: &L1) -> Option<u64> {
        let Some(generation) = l1.generation() else {
            self.clear();
            return None;
        };
        let stale = generation != self.generation
            || self
                .since
                .is_none_or(|since| since.elapsed() > Memo::MAX_AGE)
            || self.answers.len() >= Memo::MAX_ENTRIES
            || self.bytes >= Memo::MAX_BYTES;
        if stale {
            self.clear();
            self.generation = generation;
            self.since = Some(Instant::now());
        }
        Some(generation)
    }

    /// What the memo holds for `id`, whose [`id_hash`] is `hash`.
    pub(crate) fn get(&self, id: &str, hash: u64) -> Option<&Cached> {
        self.answers
            .find(hash, |(known, _)| **known == *id)
            .map(|(_, cached)| cached)
    }

    /// Keeps the answers of a page begun at `generation`, if the L1 has not moved on since.
    pub(crate) fn keep<'a>(
        &mut self,
        l1: &L1,
        generation: u64,
        answers: impl Iterator<Item = (&'a str, u64, Cached)>,
    ) {
        if l1.generation() != Some(generation) || generation != self.generation {
            return;
        }
        let answers: Vec<(&str, u64, Cached)> = answers.collect();
        let bytes = (answers.iter())
            .filter_map(|(_, _, cached)| cached.user())
            .map(|user| user.as_bytes().len())
            .sum();
        self.bytes += bytes;
        // The memo's copies of a page's users share one buffer: one allocation, and one
        // reference count that stays in this core's cache however many of them a page uses.
        let mut copies = Vec::with_capacity(if self.shares { 0 } else { bytes });
        if !self.shares {
            for user in answers.iter().filter_map(|(_, _, cached)| cached.user()) {
                copies.extend_from_slice(user.as_bytes());
            }
        }
        let copies = bytes::Bytes::from(copies);
        let mut at = 0;
        for (id, hash, cached) in answers {
            let private = match cached {
                Cached::Found(user) if !self.shares => {
                    let len = user.as_bytes().len();
                    at += len;
                    Cached::Found(user.held_in(copies.slice(at - len..at)))
                }
                other => other,
            };
            match self.answers.entry(
                hash,
                |(known, _)| **known == *id,
                |(known, _)| id_hash(known),
            ) {
                TableEntry::Occupied(mut known) => known.get_mut().1 = private,
                TableEntry::Vacant(slot) => {
                    slot.insert((id.into(), private));
                }
            }
        }
    }

    fn clear(&mut self) {
        self.answers.clear();
        self.since = None;
        self.bytes = 0;
    }
}

/// Memos lent to one page at a time: a service's requests come and go, but the popular users
/// they name are the same, so each page borrows a memo that earlier pages filled.
#[derive(Debug, Default)]
pub(crate) struct MemoPool(std::sync::Mutex<Vec<Memo>>);

impl MemoPool {
    /// More are never kept: a few per core covers the pages resolving at once.
    const KEEP: usize = 8;

    pub(crate) fn take(&self) -> Memo {
        let mut memos = self.0.lock().unwrap_or_else(|e| e.into_inner());
        memos.pop().unwrap_or_else(Memo::sharing)
    }

    pub(crate) fn put(&self, memo: Memo) {
        let mut memos = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if memos.len() < Self::KEEP {
            memos.push(memo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Cached {
        let json = format!(
            r#"{{"created_at":"2021-04-13T22:53:19.670051Z","updated_at":"2021-04-13T22:53:19.670051Z","id":"a","data":{{"name":"{name}"}}}}"#
        );
        Cached::Found(UserJson::from_stored(json).unwrap())
    }

    fn name(cached: Option<&Cached>) -> Option<String> {
        let user = cached?.user()?.as_str();
        let start = user.find(r#""name":""#)? + 8;
        Some(user[start..user.len() - 3].to_string())
    }

    /// Fills a memo as a page would: begin, then keep what the page learned.
    fn fill(memo: &mut Memo, l1: &L1, answers: Vec<(&str, Cached)>) -> Option<u64> {
        let generation = memo.begin(l1)?;
        memo.keep(l1, generation, hashed(answers));
        Some(generation)
    }

    fn hashed(answers: Vec<(&str, Cached)>) -> impl Iterator<Item = (&str, u64, Cached)> {
        answers
            .into_iter()
            .map(|(id, cached)| (id, id_hash(id), cached))
    }

    fn get<'m>(memo: &'m Memo, id: &str) -> Option<&'m Cached> {
        memo.get(id, id_hash(id))
    }

    #[test]
    fn a_memo_answers_until_the_l1_changes() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        fill(
            &mut memo,
            &l1,
            vec![("a", user("old")), ("b", Cached::Missing)],
        )
        .unwrap();
        memo.begin(&l1).unwrap();
        assert_eq!(name(get(&memo, "a")).as_deref(), Some("old"));
        assert!(matches!(get(&memo, "b"), Some(Cached::Missing)));

        // Any invalidation, of any id, empties it at the next page.
        l1.invalidate("zzz");
        memo.begin(&l1).unwrap();
        assert!(get(&memo, "a").is_none() && get(&memo, "b").is_none());

        fill(&mut memo, &l1, vec![("a", user("new"))]).unwrap();
        l1.invalidate_all();
        memo.begin(&l1).unwrap();
        assert!(get(&memo, "a").is_none());
    }

    #[test]
    fn a_page_that_saw_an_invalidation_keeps_nothing() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        let generation = memo.begin(&l1).unwrap();
        // The page read "a", then a write to "a" was announced before it finished.
        l1.invalidate("a");
        memo.keep(&l1, generation, hashed(vec![("a", user("stale"))]));
        assert!(get(&memo, "a").is_none());
        memo.begin(&l1).unwrap();
        assert!(get(&memo, "a").is_none());
    }

    #[test]
    fn no_memo_while_the_l1_is_bypassed_or_disabled() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        fill(&mut memo, &l1, vec![("a", user("old"))]).unwrap();
        l1.set_bypass(true);
        assert_eq!(memo.begin(&l1), None);
        assert!(get(&memo, "a").is_none());
        l1.set_bypass(false);
        assert!(memo.begin(&l1).is_some());

        let disabled = L1::new(&CacheConfig::disabled());
        assert_eq!(Memo::default().begin(&disabled), None);
    }

    #[test]
    fn a_memo_starts_over_when_old() {
        let l1 = L1::new(&CacheConfig::new());
        let mut memo = Memo::default();
        fill(&mut memo, &l1, vec![("a", user("old"))]).unwrap();
        memo.since = Some(Instant::now() - Memo::MAX_AGE - Duration::from_millis(1));
        memo.begin(&l1).unwrap();
        assert!(get(&memo, "a").is_none());
    }
}
