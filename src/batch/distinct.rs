//! The run's count of distinct ids, merged by the chunks that found them: exact up to a bound,
//! estimated beyond it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cardinality_estimator::CardinalityEstimator;

use crate::sync::lock;

/// Shards of the set: enough that chunks on many threads rarely wait for one another.
const SHARDS: usize = 16;

/// A HyperLogLog of 2^14 registers (12 KiB per shard): a standard error of about 0.8 %.
type Estimator = CardinalityEstimator<u64, std::hash::DefaultHasher, 14, 6>;

/// The distinct ids of a run, counted by the 64-bit hashes of their ids that the chunks
/// computed anyway: exact unless two ids collide (odds about one in a million for ten million
/// distinct ids), until the run has met more than the bound; from then on each shard, at its
/// next ids, turns to an estimate (HyperLogLog, by Cloudflare's `cardinality-estimator`) in a
/// fixed 12 KiB, so that an input naming a billion different ids costs the count no more memory
/// than one naming the bound and a chunk's worth (a set costs about 16 bytes an id).
///
/// Each chunk merges its own hashes, on its own thread, one lock per shard. The writer, one
/// thread for the whole run, used to merge them all: 2.7 % of the job's CPU (perf, 1M
/// activities over 50k users), on the thread that is the first limit of the job past a few
/// cores.
#[derive(Debug)]
pub(super) struct Distinct {
    shards: [Mutex<Shard>; SHARDS],
    /// Hashes held exactly by all shards.
    exact: AtomicU64,
    /// The most hashes held exactly before shards turn to estimates.
    bound: u64,
}

/// A shard's ids: their hashes, or an estimate of how many there are.
#[derive(Debug)]
enum Shard {
    Exact(HashSet<u64, foldhash::fast::RandomState>),
    Estimated(Box<Estimator>),
}

/// How many distinct ids a run met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Count {
    pub(super) ids: u64,
    /// The count is an estimate: more ids than the bound were met.
    pub(super) estimated: bool,
}

impl Distinct {
    /// A count exact up to `bound` distinct ids, estimated beyond.
    pub(super) fn new(bound: u64) -> Distinct {
        Distinct {
            shards: std::array::from_fn(|_| Mutex::new(Shard::Exact(HashSet::default()))),
            exact: AtomicU64::new(0),
            bound,
        }
    }

    /// Which shard a hash goes to: bits that neither the set's buckets (the low bits) nor its
    /// tags (the top seven) use, so each shard's table is as well spread as a whole one.
    fn shard(hash: u64) -> usize {
        (hash >> 32) as usize % SHARDS
    }

    /// Adds a chunk's distinct ids, by their hashes.
    pub(super) fn add(&self, hashes: &[u64]) {
        // Grouped by shard first (a counting sort), so each shard is locked once.
        let mut ends = [0; SHARDS];
        for &hash in hashes {
            ends[Distinct::shard(hash)] += 1;
        }
        let mut start = 0;
        for end in &mut ends {
            start += *end;
            *end = start;
        }
        let mut grouped = vec![0; hashes.len()];
        let mut at = ends;
        for &hash in hashes.iter().rev() {
            let shard = Distinct::shard(hash);
            at[shard] -= 1;
            grouped[at[shard]] = hash;
        }
        let mut from = 0;
        for (shard, &end) in self.shards.iter().zip(&ends) {
            if end > from {
                let over = self.exact.load(Ordering::Relaxed) > self.bound;
                let added = lock(shard).add(&grouped[from..end], over);
                self.exact.fetch_add(added, Ordering::Relaxed);
            }
            from = end;
        }
    }

    /// Distinct ids added.
    pub(super) fn count(&self) -> Count {
        let mut count = Count::default();
        for shard in &self.shards {
            match &*lock(shard) {
                Shard::Exact(set) => count.ids += set.len() as u64,
                Shard::Estimated(estimator) => {
                    count.ids += estimator.estimate() as u64;
                    count.estimated = true;
                }
            }
        }
        count
    }
}

impl Shard {
    /// Adds `hashes`, first turning to an estimate if the run is `over` its bound. Returns how
    /// many more hashes the shard holds exactly (none once it estimates).
    fn add(&mut self, hashes: &[u64], over: bool) -> u64 {
        if let Shard::Exact(set) = self {
            if !over {
                let before = set.len();
                set.extend(hashes);
                return (set.len() - before) as u64;
            }
            let mut estimator = Box::new(Estimator::new());
            for &hash in set.iter() {
                estimator.insert_hash(hash);
            }
            *self = Shard::Estimated(estimator);
        }
        if let Shard::Estimated(estimator) = self {
            for &hash in hashes {
                estimator.insert_hash(hash);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(ids: std::ops::Range<u64>) -> Vec<u64> {
        ids.map(|i| crate::id::id_hash(format!("u{i}").as_bytes()))
            .collect()
    }

    #[test]
    fn counts_each_hash_once() {
        let distinct = Distinct::new(1_000_000);
        let hashes = hashes(0..5_000);
        distinct.add(&hashes[..3_000]);
        distinct.add(&hashes[2_000..]);
        distinct.add(&[]);
        let count = distinct.count();
        assert_eq!((count.ids, count.estimated), (5_000, false));
    }

    /// Past the bound the count is an estimate, close to the truth, and its memory stops
    /// growing with the ids.
    #[test]
    fn past_the_bound_the_count_is_estimated() {
        let distinct = Distinct::new(10_000);
        for start in (0..200_000).step_by(20_000) {
            let chunk = hashes(start..start + 20_000);
            distinct.add(&chunk);
            // Ids met again are not counted again.
            distinct.add(&chunk[..5_000]);
        }
        let count = distinct.count();
        assert!(count.estimated);
        let error = (count.ids as f64 - 200_000.0).abs() / 200_000.0;
        assert!(error < 0.03, "{} for 200,000", count.ids);
        for shard in &distinct.shards {
            assert!(matches!(&*lock(shard), Shard::Estimated(_)));
        }
    }
}
