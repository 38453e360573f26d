//! What `enrich bench` prints, and the process's peak memory it reports.

use std::fmt;

use serde::Serialize;

use super::{Strategy, StrategyReport, Workload};

/// What `enrich bench` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The store benchmarked, without password.
    pub store: String,
    /// The workload.
    pub workload: Workload,
    /// One entry per strategy, in the order run.
    pub strategies: Vec<StrategyReport>,
}

impl BenchReport {
    /// Fills in each strategy's speed relative to the engine's.
    pub fn compare(&mut self) {
        let engine = self
            .strategies
            .iter()
            .find(|s| s.strategy == Strategy::Engine)
            .map(|s| s.pages_per_sec);
        for s in &mut self.strategies {
            s.engine_speedup = engine.map_or(1.0, |e| e / s.pages_per_sec);
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.workload;
        writeln!(
            f,
            "store {} | {} users, {} activities (zipf {}), pages of {}, concurrency {}, seed {}",
            self.store, w.users, w.activities, w.zipf, w.page, w.concurrency, w.seed
        )?;
        writeln!(
            f,
            "{:<8} {:>10} {:>13} {:>9} {:>9} {:>9} {:>11} {:>10} {:>8} {:>9} {:>14}",
            "strategy",
            "pages/s",
            "activities/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "calls/page",
            "ids/page",
            "L1 hit",
            "RSS MiB",
            "engine is ×"
        )?;
        for s in &self.strategies {
            writeln!(
                f,
                "{:<8} {:>10.0} {:>13.0} {:>9.3} {:>9.3} {:>9.3} {:>11.2} {:>10.2} {:>7.1}% {:>9.1} {:>14.2}",
                s.strategy.to_string(),
                s.pages_per_sec,
                s.activities_per_sec,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                s.store_calls_per_page,
                s.ids_fetched_per_page,
                s.l1_hit_ratio * 100.0,
                s.peak_rss_mib,
                s.engine_speedup
            )?;
        }
        Ok(())
    }
}

/// The process's peak resident set (VmHWM), MiB; 0 where /proc is not there.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
