//! The registry of loads in flight, and the fence that keeps a load racing a write from
//! filling the L1 with what it read before the write.
//!
//! Dropping an id from the L1 does not stop a load already in flight from inserting the value
//! it read before the write: the stale value would then be served until its TTL. So every load
//! registers a [`Flight`] before it asks the store, and inserts its result only if that flight
//! is still registered, not voided, and no flush happened since it began. An invalidation
//! removes and voids the flight first and drops the cached entry second, both under the lock
//! that an insert holds, so whichever comes first, the stale value does not survive. This is the
//! in-process form of memcache's leases and of Redis's "loading marker" for client-side caching.
//!
//! The same registry coalesces loads: a page that needs an id another page is already loading
//! waits for that load rather than asking the store again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::future::Shared;
use tokio::sync::oneshot;

use super::Hasher;
use crate::error::Result;
use crate::record::Record;

/// The result of one batched store call, shared by every id it loaded: an answer or an error
/// per id (a cluster node can fail while the others answer), or one error for the whole call.
pub(crate) type BatchResult = Arc<Result<Vec<Result<Option<Record>>>>>;

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

/// The loads in flight, by id.
#[derive(Default)]
pub(crate) struct Flights {
    loads: DashMap<Arc<str>, Arc<Flight>, Hasher>,
    /// Bumped by every flush; a load that began in an older epoch does not fill the cache.
    epoch: AtomicU64,
}

/// What [`Flights::join_or_start`] found.
pub(crate) enum Joined {
    /// Another load of this id is in flight: wait for it.
    Waiting(Arc<Flight>),
    /// This caller registered the load and must perform it.
    Started(Arc<Flight>),
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("loads", &self.loads.len())
            .finish()
    }
}

impl Flights {
    /// Joins the load of `id` in flight, or registers a new one answered by `batch`.
    pub(crate) fn join_or_start(&self, id: &str, batch: &BatchFuture, index: usize) -> Joined {
        match self.loads.entry(Arc::from(id)) {
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

    /// Ends a load: calls `fill` with the id's key if `fill_now` and the load is still the
    /// registered, unvoided load of `id` begun in this epoch, then unregisters it. The registry
    /// entry is held while `fill` runs, which keeps an invalidation of this id out until the
    /// insert is done; the invalidation then removes what was inserted.
    pub(crate) fn complete(
        &self,
        id: &str,
        flight: &Arc<Flight>,
        fill_now: bool,
        fill: impl FnOnce(&Arc<str>),
    ) {
        if fill_now
            && let Some(current) = self.loads.get(id)
            && Arc::ptr_eq(current.value(), flight)
            && !flight.voided.load(Ordering::Acquire)
            && flight.epoch == self.epoch.load(Ordering::Acquire)
        {
            fill(current.key());
        }
        self.loads
            .remove_if(id, |_, current| Arc::ptr_eq(current, flight));
    }

    /// Fills the cache with an answer that no load of this registry read (a prime): `fill`
    /// runs while the registry entry of `id` is held, so an invalidation of `id` that begins
    /// meanwhile waits and then removes what was inserted. A load of `id` in flight is voided:
    /// it may have read the user before the write that the primed answer shows.
    pub(crate) fn prime(&self, id: &str, fill: impl FnOnce(&Arc<str>)) {
        match self.loads.entry(Arc::from(id)) {
            Entry::Occupied(flight) => {
                flight.get().voided.store(true, Ordering::Release);
                fill(flight.key());
                flight.remove();
            }
            Entry::Vacant(slot) => fill(slot.key()),
        }
    }

    /// Fences the load of `id` in flight, if any: it will not fill the cache.
    pub(crate) fn void(&self, id: &str) {
        if let Some((_, flight)) = self.loads.remove(id) {
            flight.voided.store(true, Ordering::Release);
        }
    }

    /// Fences every load in flight, and any that began before now.
    pub(crate) fn void_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.loads.retain(|_, flight| {
            flight.voided.store(true, Ordering::Release);
            false
        });
    }

    /// Loads in flight.
    pub(crate) fn len(&self) -> usize {
        self.loads.len()
    }
}
