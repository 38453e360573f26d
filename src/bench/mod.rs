//! The benchmark harness behind `enrich bench` and `cargo bench`: a deterministic workload and
//! the strategies a user would otherwise use, run over the same pages in the same process so
//! their ratios hold on a noisy machine.
//!
//! Strategies:
//! - `engine`: this crate — L1, coalescing, one batched call per page, spliced bytes.
//! - `naive`: one store read per reference, substituted into a DOM ("enrich in a loop").
//! - `mget`: one batched read per page without any cache, substituted into a DOM ("enrich from
//!   your own DB").
//!
//! [`scale`] holds what the scale-out harness (several engine processes reading while one
//! writes) records, and the checker of every answer they served.
//!
//! Behind the `bench` feature, for the benchmarks and `enrich bench`; not a stable API.

mod report;
pub mod scale;
mod strategy;
mod workload;

pub use self::report::{BenchReport, peak_rss_mib};
pub use self::strategy::{Strategy, StrategyReport, enrich_page, run_strategy};
pub use self::workload::{Rng, Workload, Zipf, load_users};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_deterministic_and_skewed() {
        let w = Workload {
            users: 100,
            activities: 2000,
            ..Workload::default()
        };
        assert_eq!(w.activity_lines(), w.activity_lines());
        let other = Workload {
            seed: 7,
            ..w.clone()
        };
        assert_ne!(w.activity_lines(), other.activity_lines());
        let zipf = Zipf::new(100, 1.0);
        let mut rng = Rng::new(1);
        let top = (0..10_000).filter(|_| zipf.sample(&mut rng) == 0).count();
        // Rank 0 has 1/H(100) ≈ 19% of the mass under s = 1.
        assert!((1500..2400).contains(&top), "{top}");
        let missing = w
            .activity_lines()
            .iter()
            .filter(|l| l.contains("SU:missing"))
            .count();
        assert!(missing > 0);
    }
}
