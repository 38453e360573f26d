//! The L1: tables of users and of misses, each bounded by bytes ([`super::table`]), in front
//! of the registry of loads in flight ([`super::flight`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::flight::{BatchFuture, Flight, Flights, Joined};
use super::table::Table;
use super::{CacheConfig, CacheStats, Cached};
use crate::record::Record;
use crate::store::StoreEvent;

/// The L1 and its registry of loads in flight.
pub(crate) struct L1 {
    /// Users found.
    users: Table,
    /// Ids the store said do not exist, in a budget of their own.
    misses: Table,
    flights: Flights,
    /// Held shared while a load fills the cache, exclusively while a flush bumps the epoch.
    flush: RwLock<()>,
    /// Set while announcements of writes may be missed: the cache is then neither read nor
    /// filled.
    bypass: AtomicBool,
    enabled: bool,
    pub(crate) invalidations: AtomicU64,
    flushes: AtomicU64,
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

impl L1 {
    pub(crate) fn new(config: &CacheConfig) -> L1 {
        // Truncation is fine: a share of a byte count.
        let miss_bytes = (config.max_bytes as f64 * config.negative_share) as u64;
        L1 {
            users: Table::new(config.max_bytes.saturating_sub(miss_bytes), config.ttl),
            misses: Table::new(miss_bytes, config.negative_ttl),
            flights: Flights::default(),
            flush: RwLock::new(()),
            bypass: AtomicBool::new(false),
            enabled: config.max_bytes > 0,
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// The cached answer for `id`, if any and if the cache may be read now.
    pub(crate) fn get(&self, id: &[u8]) -> Option<Cached> {
        if !self.enabled || self.bypass.load(Ordering::Acquire) {
            return None;
        }
        self.users.get(id).or_else(|| self.misses.get(id))
    }

    fn part(&self, answer: &Cached) -> &Table {
        match answer {
            Cached::Found(_) => &self.users,
            Cached::Missing => &self.misses,
        }
    }

    /// Joins the load of `id` in flight, or registers a new one answered by `batch`.
    pub(crate) fn join_or_start(&self, id: &str, batch: &BatchFuture, index: usize) -> Joined {
        self.flights.join_or_start(id, batch, index)
    }

    /// Ends a load: fills the cache with its answer unless it was fenced off, and unregisters
    /// it. Pass `None` for a load that failed; nothing is cached then.
    pub(crate) fn complete(&self, id: &str, flight: &Arc<Flight>, answer: Option<Cached>) {
        let _no_flush = crate::sync::read(&self.flush);
        let fill_now = answer.is_some() && self.enabled && !self.bypass.load(Ordering::Acquire);
        self.flights.complete(id, flight, fill_now, |key| {
            if let Some(answer) = answer {
                self.part(&answer).insert(key, &answer);
            }
        });
    }

    /// Puts `user`, which the caller holds and vouches is current, in the cache, as a load
    /// that completes now would: not while the cache is bypassed or disabled, and not past an
    /// invalidation of its id that begins meanwhile. A load of it in flight no longer fills.
    pub(crate) fn prime(&self, key: &str, record: Record) {
        let _no_flush = crate::sync::read(&self.flush);
        if !self.enabled || self.bypass.load(Ordering::Acquire) {
            return;
        }
        self.flights.prime(key, |key| {
            self.misses.invalidate(key);
            self.users.insert(key, &Cached::Found(record.clone()));
        });
        // Memos hold what the L1 said before: they must start over, as after an invalidation.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops what the cache holds for `id` and fences the loads of it in flight.
    pub(crate) fn invalidate(&self, id: &str) {
        self.flights.void(id);
        self.users.invalidate(id);
        self.misses.invalidate(id);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops everything and fences every load in flight.
    pub(crate) fn invalidate_all(&self) {
        let _flush = crate::sync::write(&self.flush);
        self.flights.void_all();
        self.users.invalidate_all();
        self.misses.invalidate_all();
        self.flushes.fetch_add(1, Ordering::Relaxed);
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
    pub(super) fn generation(&self) -> Option<u64> {
        let generation = self.generation.load(Ordering::Acquire);
        (self.enabled && !self.bypass.load(Ordering::Acquire)).then_some(generation)
    }

    /// What the L1 holds now.
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            users: self.users.entry_count(),
            misses: self.misses.entry_count(),
            bytes: self.users.weighted_size() + self.misses.weighted_size(),
            miss_bytes: self.misses.weighted_size(),
            evictions: self.users.evictions(),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            bypassed: self.bypassed(),
        }
    }
}
