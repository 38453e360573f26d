//! Counters for `GET /metrics`, written by hand in Prometheus' text format: requests by route,
//! method and status, a latency histogram per route, and what the enrich endpoint did with the
//! L1 and the store.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;

use crate::stats::EnrichStats;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Requests {
    /// (route, method, status) → count.
    counts: BTreeMap<(String, String, u16), u64>,
    /// route → latency.
    latency: BTreeMap<String, Histogram>,
}

/// The server's counters. A request takes one short lock; the enrich counters are atomics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<Requests>,
    l1_hits: AtomicU64,
    l1_misses: AtomicU64,
    coalesced: AtomicU64,
    store_calls: AtomicU64,
    fetched: AtomicU64,
    references: AtomicU64,
    missing: AtomicU64,
    invalidations: AtomicU64,
}

impl Metrics {
    pub(crate) fn record_request(
        &self,
        route: &str,
        method: &str,
        status: StatusCode,
        took: Duration,
    ) {
        let secs = took.as_secs_f64();
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests
            .counts
            .entry((route.to_string(), method.to_string(), status.as_u16()))
            .or_default() += 1;
        let hist = requests.latency.entry(route.to_string()).or_default();
        hist.count += 1;
        hist.sum += secs;
        for (bound, count) in BUCKETS.iter().zip(hist.counts.iter_mut()) {
            if secs <= *bound {
                *count += 1;
            }
        }
    }

    pub(crate) fn record_enrich(&self, stats: &EnrichStats) {
        self.l1_hits.fetch_add(stats.l1_hits, Ordering::Relaxed);
        self.l1_misses.fetch_add(
            stats.distinct.saturating_sub(stats.l1_hits),
            Ordering::Relaxed,
        );
        self.coalesced.fetch_add(stats.coalesced, Ordering::Relaxed);
        self.store_calls
            .fetch_add(stats.store_calls, Ordering::Relaxed);
        self.fetched.fetch_add(stats.fetched, Ordering::Relaxed);
        self.references
            .fetch_add(stats.references, Ordering::Relaxed);
        self.missing.fetch_add(stats.missing, Ordering::Relaxed);
    }

    /// Users written through the server, each dropped from the L1.
    pub(crate) fn record_invalidations(&self, users: u64) {
        self.invalidations.fetch_add(users, Ordering::Relaxed);
    }

    /// The text exposition; `l1_entries` and `l1_bytes` are read from the enricher now.
    pub(crate) fn render(&self, l1_entries: u64, l1_bytes: u64) -> String {
        let mut out = String::with_capacity(4096);
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(
            "# HELP enrich_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE enrich_http_requests_total counter\n");
        for ((route, method, status), count) in &requests.counts {
            let _ = writeln!(
                out,
                "enrich_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str("# HELP enrich_http_request_duration_seconds Time from request to response, by route.\n");
        out.push_str("# TYPE enrich_http_request_duration_seconds histogram\n");
        for (route, hist) in &requests.latency {
            for (bound, count) in BUCKETS.iter().zip(hist.counts.iter()) {
                let _ = writeln!(
                    out,
                    "enrich_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "enrich_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                hist.count
            );
            let _ = writeln!(
                out,
                "enrich_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                hist.sum
            );
            let _ = writeln!(
                out,
                "enrich_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                hist.count
            );
        }
        drop(requests);
        let counters = [
            (
                "enrich_l1_hits_total",
                "Distinct users per enrich request answered by the L1.",
                &self.l1_hits,
            ),
            (
                "enrich_l1_misses_total",
                "Distinct users per enrich request the L1 did not have.",
                &self.l1_misses,
            ),
            (
                "enrich_coalesced_total",
                "Users answered by a load another request had in flight.",
                &self.coalesced,
            ),
            (
                "enrich_store_calls_total",
                "Batched store reads made by enrich requests.",
                &self.store_calls,
            ),
            (
                "enrich_store_fetched_users_total",
                "Users asked of the store by enrich requests.",
                &self.fetched,
            ),
            (
                "enrich_references_total",
                "User references enriched.",
                &self.references,
            ),
            (
                "enrich_missing_references_total",
                "References to users that do not exist.",
                &self.missing,
            ),
            (
                "enrich_l1_invalidations_total",
                "Users dropped from the L1 because the server wrote them.",
                &self.invalidations,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP enrich_l1_entries Users and misses in the L1.\n# TYPE enrich_l1_entries gauge\nenrich_l1_entries {l1_entries}"
        );
        let _ = writeln!(
            out,
            "# HELP enrich_l1_bytes Bytes the L1 entries are charged.\n# TYPE enrich_l1_bytes gauge\nenrich_l1_bytes {l1_bytes}"
        );
        out
    }
}
