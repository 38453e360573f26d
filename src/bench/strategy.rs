//! The strategies benchmarked against each other, and how one is run over the pages.

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
use crate::store::SharedStore;
use crate::user::UserId;

use super::peak_rss_mib;

/// How pages are enriched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
