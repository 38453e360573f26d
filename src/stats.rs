//! What an enrichment call did, for callers, the batch job's summary and the benchmarks.

use std::ops::AddAssign;

/// Counters of one enrichment call, or of many added together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnrichStats {
    /// Activities examined (a group counts its activities).
    pub activities: u64,
    /// User references found.
    pub references: u64,
    /// Distinct ids among them (per call; summed over calls).
    pub distinct: u64,
    /// Distinct ids answered by the L1.
    pub l1_hits: u64,
    /// Distinct ids answered by a load another page already had in flight.
    pub coalesced: u64,
    /// Ids asked of the store.
    pub fetched: u64,
    /// Store calls made: at most one per call, or one per
    /// [`EnricherBuilder::max_batch_size`](crate::EnricherBuilder::max_batch_size) ids asked;
    /// [`Enricher::enrich_page_within`](crate::Enricher::enrich_page_within) makes one per
    /// wave of a page whose misses do not fit its allowance at once.
    pub store_calls: u64,
    /// References to users that do not exist.
    pub missing: u64,
    /// References the store could not answer for, served as `ReferenceUnavailable` (only when
    /// the caller opted in).
    pub unavailable: u64,
}

impl EnrichStats {
    /// The share of distinct ids the L1 answered, from 0 to 1.
    pub fn l1_hit_ratio(&self) -> f64 {
        if self.distinct == 0 {
            0.0
        } else {
            self.l1_hits as f64 / self.distinct as f64
        }
    }
}

impl AddAssign for EnrichStats {
    fn add_assign(&mut self, other: EnrichStats) {
        self.activities += other.activities;
        self.references += other.references;
        self.distinct += other.distinct;
        self.l1_hits += other.l1_hits;
        self.coalesced += other.coalesced;
        self.fetched += other.fetched;
        self.store_calls += other.store_calls;
        self.missing += other.missing;
        self.unavailable += other.unavailable;
    }
}
