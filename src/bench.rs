//! The benchmark harness behind `enrich bench` and `cargo bench`: a deterministic workload and
//! the strategies a user would otherwise use, run over the same pages in the same process so
//! their ratios hold on a noisy machine.
//!
//! Strategies:
//! - `engine`: this crate — L1, coalescing, one batched call per page, spliced bytes.
//! - `naive`: one store read per reference, substituted into a DOM ("enrich in a loop").
//! - `mget`: one batched read per page without any cache, substituted into a DOM ("enrich from
//!   your own DB").

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::enricher::Enricher;
use crate::error::{Error, ErrorKind, Result};
use crate::page::RawPage;
use crate::reference::user_ref;
use crate::shape::Depth;
use crate::stats::EnrichStats;
use crate::store::{ImportUser, SharedStore};
use crate::user::{NewUser, Timestamp, UserId};

/// A small, fast, deterministic generator (SplitMix64): the same seed gives the same workload
/// on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws ranks 0..n with probability proportional to 1 / (rank + 1)^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A Zipf distribution over `n` ranks with exponent `s` (0 is uniform).
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Zipf { cdf }
    }

    /// A rank.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let x = rng.next_f64();
        self.cdf.partition_point(|&p| p < x).min(self.cdf.len() - 1)
    }
}

/// What to generate and how to run it.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Users in the store.
    pub users: usize,
    /// Activities in all.
    pub activities: usize,
    /// Zipf exponent of actor popularity.
    pub zipf: f64,
    /// Activities per page.
    pub page: usize,
    /// Pages enriched at once.
    pub concurrency: usize,
    /// The seed.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            users: 10_000,
            activities: 100_000,
            zipf: 1.0,
            page: 25,
            concurrency: 8,
            seed: 42,
        }
    }
}

/// The share of references that name users that were never created.
const MISSING_SHARE: f64 = 0.02;

impl Workload {
    /// The users, `u0`…, each with a little data.
    pub fn user_lines(&self) -> Vec<ImportUser> {
        let at = Timestamp::parse("2021-04-13T22:53:19.670051Z").expect("a valid timestamp");
        (0..self.users)
            .map(|i| {
                let data = json!({
                    "name": format!("User {i}"),
                    "avatar": format!("https://cdn.example.com/avatars/{i}.png"),
                    "followers": i * 7 % 1000,
                });
                let user =
                    NewUser::new(&format!("u{i}"), Some(data)).expect("generated users are valid");
                ImportUser::new(user, Some(at), Some(at)).expect("timestamps in order")
            })
            .collect()
    }

    /// The activities, as NDJSON lines: actor from the Zipf distribution, object and target
    /// uniform, a few references to users that do not exist.
    pub fn activity_lines(&self) -> Vec<String> {
        let mut rng = Rng::new(self.seed);
        let zipf = Zipf::new(self.users.max(1), self.zipf);
        let pick = |rng: &mut Rng, popular: bool| {
            if rng.next_f64() < MISSING_SHARE {
                format!("SU:missing{}", rng.next_u64() % 1000)
            } else if popular {
                format!("SU:u{}", zipf.sample(rng))
            } else {
                format!("SU:u{}", rng.next_u64() % self.users.max(1) as u64)
            }
        };
        (0..self.activities)
            .map(|i| {
                let actor = pick(&mut rng, true);
                let object = pick(&mut rng, false);
                let target = pick(&mut rng, true);
                json!({
                    "id": format!("a{i}"),
                    "actor": actor,
                    "verb": "post",
                    "object": object,
                    "target": target,
                    "foreign_id": format!("post:{i}"),
                    "time": "2021-05-14T14:51:13.767221",
                })
                .to_string()
            })
            .collect()
    }

    /// The activity lines cut into pages.
    pub fn pages(&self) -> Vec<Vec<String>> {
        self.activity_lines()
            .chunks(self.page.max(1))
            .map(|c| c.to_vec())
            .collect()
    }
}

/// Writes the workload's users into `store`.
pub async fn load_users(store: &SharedStore, workload: &Workload) -> Result<()> {
    for batch in workload.user_lines().chunks(crate::batch::IMPORT_BATCH) {
        store.import(batch, true).await?;
    }
    Ok(())
}

/// How pages are enriched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// This crate.
    Engine,
    /// One store read per reference.
    Naive,
    /// One batched read per page, no cache.
    Mget,
}

impl Strategy {
    /// Every strategy, ours first.
    pub const ALL: [Strategy; 3] = [Strategy::Engine, Strategy::Naive, Strategy::Mget];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Engine => "engine",
            Strategy::Naive => "naive",
            Strategy::Mget => "mget",
        })
    }
}

/// Enriches one page of NDJSON lines with a strategy; returns the output bytes and counters.
pub async fn enrich_page(
    strategy: Strategy,
    enricher: &Enricher,
    store: &SharedStore,
    lines: &[String],
) -> Result<(Vec<u8>, EnrichStats)> {
    match strategy {
        Strategy::Engine => {
            let mut page = RawPage::new(Depth::TopLevel);
            for line in lines {
                page.push(line.as_bytes())?;
            }
            let enriched = enricher.enrich_page(&page).await?;
            let mut out = Vec::with_capacity(page.buffered() * 3);
            for doc in 0..page.len() {
                enriched.write(doc, &mut out);
                out.push(b'\n');
            }
            Ok((out, enriched.stats()))
        }
        Strategy::Naive | Strategy::Mget => dom_page(strategy, store, lines).await,
    }
}

/// The DOM strategies: parse, read users, substitute, serialize.
async fn dom_page(
    strategy: Strategy,
    store: &SharedStore,
    lines: &[String],
) -> Result<(Vec<u8>, EnrichStats)> {
    let mut stats = EnrichStats::default();
    let mut docs = Vec::with_capacity(lines.len());
    for line in lines {
        let doc: Value =
            serde_json::from_str(line).map_err(|e| Error::invalid(format!("not JSON: {e}")))?;
        docs.push(doc);
    }
    let refs: Vec<String> = docs
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|o| o.values())
        .filter_map(|v| v.as_str().and_then(user_ref).map(str::to_string))
        .collect();
    stats.references = refs.len() as u64;
    let mut users: HashMap<String, Value> = HashMap::new();
    match strategy {
        Strategy::Naive => {
            for id in &refs {
                stats.store_calls += 1;
                stats.fetched += 1;
                let id = UserId::parse(id)?;
                match store.get(&id).await {
                    Ok(user) => {
                        users.insert(id.to_string(), user.to_value());
                    }
                    Err(err) if err.is_not_found() => {}
                    Err(err) => return Err(err),
                }
            }
        }
        _ => {
            let mut distinct: Vec<UserId> = Vec::new();
            for id in &refs {
                if !distinct.iter().any(|d| d.as_str() == id) {
                    distinct.push(UserId::parse(id)?);
                }
            }
            stats.distinct = distinct.len() as u64;
            stats.store_calls += 1;
            stats.fetched += distinct.len() as u64;
            for (id, found) in distinct.iter().zip(store.get_many(&distinct).await?) {
                if let Some(user) = found {
                    users.insert(id.to_string(), user.to_value());
                }
            }
        }
    }
    let mut out = Vec::new();
    for mut doc in docs {
        if let Some(object) = doc.as_object_mut() {
            for value in object.values_mut() {
                if let Some(id) = value.as_str().and_then(user_ref) {
                    *value = match users.get(id) {
                        Some(user) => user.clone(),
                        None => {
                            stats.missing += 1;
                            json!({"error":"ReferenceNotFound","reference":format!("SU:{id}"),"reference_type":"user","id":id})
                        }
                    };
                }
            }
        }
        serde_json::to_writer(&mut out, &doc).expect("a Value serializes");
        out.push(b'\n');
    }
    Ok((out, stats))
}

/// The figures of one strategy over the whole workload.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyReport {
    /// Which strategy.
    pub strategy: Strategy,
    /// Pages enriched.
    pub pages: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Pages per second.
    pub pages_per_sec: f64,
    /// Activities per second.
    pub activities_per_sec: f64,
    /// Page latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest page.
    pub max_ms: f64,
    /// Store calls per page.
    pub store_calls_per_page: f64,
    /// Ids asked of the store per page.
    pub ids_fetched_per_page: f64,
    /// Share of distinct ids answered by the L1 (engine only).
    pub l1_hit_ratio: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: f64,
    /// Speed relative to the engine (pages/s of the engine ÷ pages/s of this strategy).
    pub engine_speedup: f64,
}

/// Runs `strategy` over every page with `concurrency` pages at once.
pub async fn run_strategy(
    strategy: Strategy,
    enricher: &Enricher,
    store: &SharedStore,
    pages: &Arc<Vec<Vec<String>>>,
    concurrency: usize,
) -> Result<StrategyReport> {
    let started = Instant::now();
    let results: Vec<Result<(Duration, EnrichStats, usize)>> =
        futures::stream::iter(0..pages.len())
            .map(|i| {
                let enricher = enricher.clone();
                let store = store.clone();
                let pages = pages.clone();
                // Each page is a task of its own, as each request is in a server: pages in
                // flight run on every core.
                let page = tokio::spawn(async move {
                    let begun = Instant::now();
                    let (_, stats) = enrich_page(strategy, &enricher, &store, &pages[i]).await?;
                    Ok((begun.elapsed(), stats, pages[i].len()))
                });
                async move {
                    page.await.map_err(|e| {
                        Error::new(ErrorKind::Internal, "a benchmark page failed").with_cause(e)
                    })?
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(results.len());
    let mut total = EnrichStats::default();
    let mut activities = 0;
    for result in results {
        let (latency, stats, docs) = result?;
        latencies.push(latency);
        total += stats;
        activities += docs;
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let pages_n = latencies.len() as u64;
    Ok(StrategyReport {
        strategy,
        pages: pages_n,
        seconds,
        pages_per_sec: pages_n as f64 / seconds,
        activities_per_sec: activities as f64 / seconds,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        store_calls_per_page: total.store_calls as f64 / pages_n.max(1) as f64,
        ids_fetched_per_page: total.fetched as f64 / pages_n.max(1) as f64,
        l1_hit_ratio: total.l1_hit_ratio(),
        peak_rss_mib: peak_rss_mib(),
        engine_speedup: 1.0,
    })
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
