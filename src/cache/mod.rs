//! The per-process L1 and what keeps it coherent.
//!
//! - `l1`: tables of users and of misses, bounded by bytes, bypassed while the store's
//!   announcements of writes may be missed;
//! - `table`: the table itself: one allocation per entry, CLOCK eviction, a TTL per table;
//! - `flight`: the registry of loads in flight, which coalesces loads across pages and fences
//!   a load that raced an invalidation;
//! - `memo`: private copies of the L1's answers a worker keeps between its pages, exactly as
//!   coherent as the L1, in a map of its own (`memo::slots`) whose lookups can be fetched
//!   ahead;
//! - `write_through`: the store seen through an enricher, whose writes invalidate the L1.

mod flight;
mod l1;
mod memo;
mod table;
mod write_through;

use std::time::Duration;

use crate::record::Record;

pub(crate) use self::flight::{BatchFuture, BatchResult, Flight, Joined};
pub(crate) use self::l1::L1;
pub(crate) use self::memo::{Memo, MemoPool};
pub(crate) use self::write_through::WriteThrough;

/// A fast hasher with a per-process random seed: ids come from outside, so a fixed seed could
/// be attacked with colliding keys.
type Hasher = foldhash::fast::RandomState;

/// What the L1 knows of a key.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    /// The record as stored.
    Found(Record),
    /// The store said there is no such record.
    Missing,
}

impl Cached {
    pub(crate) fn from_store(found: Option<Record>) -> Cached {
        found.map_or(Cached::Missing, Cached::Found)
    }

    pub(crate) fn record(&self) -> Option<&Record> {
        match self {
            Cached::Found(record) => Some(record),
            Cached::Missing => None,
        }
    }
}

/// How big the L1 may grow and how long entries live.
#[derive(Debug, Clone)]
#[must_use]
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

/// The default of [`CacheConfig::max_bytes`]: 256 MiB.
pub const DEFAULT_L1_BYTES: u64 = 256 << 20;

impl CacheConfig {
    /// [`DEFAULT_L1_BYTES`], users kept 60 s at most, misses 5 s, misses at most a tenth of
    /// the bytes.
    pub fn new() -> Self {
        CacheConfig {
            max_bytes: DEFAULT_L1_BYTES,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            negative_share: 0.1,
        }
    }

    /// The bound on the bytes held (keys, user JSON and per-entry overhead):
    /// [`DEFAULT_L1_BYTES`] by default; 0 caches nothing ([`CacheConfig::disabled`]).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Whether anything is cached at all.
    pub(crate) fn caches(&self) -> bool {
        self.max_bytes > 0
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
    /// Times the whole L1 was emptied, since the start: when announcements of writes were
    /// lost and when they came back, when the store was flushed, when asked to.
    pub flushes: u64,
    /// True while the L1 is bypassed (the store's announcements may be missed).
    pub bypassed: bool,
}
