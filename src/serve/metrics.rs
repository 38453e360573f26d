//! `GET /metrics`: the server's metrics in the OpenMetrics text format, kept with
//! `prometheus-client`.
//!
//! Every label has a bounded set of values, whatever clients send: the route is the matched
//! route's template (not the path), the method one of the seven HTTP verbs the API knows or
//! `other`, the status one the server wrote. Values that live elsewhere (the L1's size, the
//! memory budget, the invalidation stream) are read at each scrape.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::budget::Budget;
use crate::enricher::Enricher;
use crate::error::{Error, Result};
use crate::stats::EnrichStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    op: &'static str,
    kind: &'static str,
}

type Timings<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn store_buckets() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

/// The server's metrics. Recording takes a read lock of a label family at most.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Timings<RouteLabel>,
    in_flight: Gauge,
    connections: Gauge,
    closed: Family<ReasonLabel, Counter>,
    refused: Counter,
    refusals: Family<LimitLabel, Counter>,
    store_latency: Timings<OpLabel>,
    store_errors: Family<StoreErrorLabels, Counter>,
    references: Counter,
    missing: Counter,
    l1_hits: Counter,
    l1_misses: Counter,
    coalesced: Counter,
    store_calls: Counter,
    fetched: Counter,
    written: Counter,
    entries_written: Counter,
    live: Arc<Live>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(http_buckets),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            closed: Family::default(),
            refused: Counter::default(),
            refusals: Family::default(),
            store_latency: Family::new_with_constructor(store_buckets),
            store_errors: Family::default(),
            references: Counter::default(),
            missing: Counter::default(),
            l1_hits: Counter::default(),
            l1_misses: Counter::default(),
            coalesced: Counter::default(),
            store_calls: Counter::default(),
            fetched: Counter::default(),
            written: Counter::default(),
            entries_written: Counter::default(),
            live: Arc::new(Live::default()),
        };
        let r = &mut metrics.registry;
        r.register(
            "enrich_http_requests",
            "HTTP requests by route template, method and status",
            metrics.requests.clone(),
        );
        r.register(
            "enrich_http_request_duration_seconds",
            "Time from a request's headers to its answer, by route template",
            metrics.latency.clone(),
        );
        r.register(
            "enrich_http_requests_in_flight",
            "Requests being handled now",
            metrics.in_flight.clone(),
        );
        r.register(
            "enrich_http_connections",
            "Client connections open now",
            metrics.connections.clone(),
        );
        r.register(
            "enrich_http_connections_closed",
            "Connections the server closed: header_timeout, idle_timeout, write_timeout, \
             evicted (to make room at the connection limit), shutdown",
            metrics.closed.clone(),
        );
        r.register(
            "enrich_http_connections_refused",
            "Connections refused at the connection limit or for lack of file descriptors",
            metrics.refused.clone(),
        );
        r.register(
            "enrich_limit_refusals",
            "Requests refused by a limit, by the limit's name",
            metrics.refusals.clone(),
        );
        r.register(
            "enrich_store_call_duration_seconds",
            "Time of each call to the user store, by operation",
            metrics.store_latency.clone(),
        );
        r.register(
            "enrich_store_errors",
            "Failed calls to the user store, by operation and error kind",
            metrics.store_errors.clone(),
        );
        r.register(
            "enrich_references",
            "User references enriched",
            metrics.references.clone(),
        );
        r.register(
            "enrich_missing_references",
            "References to users that do not exist",
            metrics.missing.clone(),
        );
        r.register(
            "enrich_l1_hits",
            "Distinct users per enrich request answered by the L1",
            metrics.l1_hits.clone(),
        );
        r.register(
            "enrich_l1_misses",
            "Distinct users per enrich request the L1 did not have",
            metrics.l1_misses.clone(),
        );
        r.register(
            "enrich_coalesced",
            "Users answered by a load another request had in flight",
            metrics.coalesced.clone(),
        );
        r.register(
            "enrich_store_calls",
            "Batched store reads made by enrich requests",
            metrics.store_calls.clone(),
        );
        r.register(
            "enrich_store_fetched_users",
            "Users asked of the store by enrich requests",
            metrics.fetched.clone(),
        );
        r.register(
            "enrich_users_written",
            "Users written through the server, each dropped from the L1 at once",
            metrics.written.clone(),
        );
        r.register(
            "enrich_entries_written",
            "Collection entries written or deleted through the server, each dropped from the L1 \
             at once",
            metrics.entries_written.clone(),
        );
        r.register_collector(Box::new(metrics.live.clone()));
        metrics
    }

    /// Tells the scrape where the live values are.
    pub(crate) fn watch(&self, enricher: Enricher, budget: Budget) {
        let _ = self.live.source.set((enricher, budget));
    }

    /// A request is being handled; the guard counts it out.
    pub(crate) fn request_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    pub(crate) fn record_request(
        &self,
        route: &'static str,
        method: &Method,
        status: StatusCode,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(method),
                status: status.as_u16(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn record_enrich(&self, stats: &EnrichStats) {
        self.l1_hits.inc_by(stats.l1_hits);
        self.l1_misses
            .inc_by(stats.distinct.saturating_sub(stats.l1_hits));
        self.coalesced.inc_by(stats.coalesced);
        self.store_calls.inc_by(stats.store_calls);
        self.fetched.inc_by(stats.fetched);
        self.references.inc_by(stats.references);
        self.missing.inc_by(stats.missing);
    }

    /// Users written through the server, each dropped from the L1.
    pub(crate) fn record_invalidations(&self, users: u64) {
        self.written.inc_by(users);
    }

    /// Collection entries written or deleted through the server, each dropped from the L1.
    pub(crate) fn record_entry_writes(&self, entries: u64) {
        self.entries_written.inc_by(entries);
    }

    /// A request refused by a limit.
    pub(crate) fn record_refusal(&self, limit: &'static str) {
        self.refusals.get_or_create(&LimitLabel { limit }).inc();
    }

    /// A connection refused at the connection limit.
    pub(crate) fn record_connection_refused(&self) {
        self.refused.inc();
    }

    /// Connections opened (1) or closed (-1).
    pub(crate) fn record_connection_open(&self, change: i64) {
        self.connections.inc_by(change);
    }

    /// A connection the server closed, and why.
    /// `reason` names why: `header_timeout`, `idle_timeout`, `write_timeout`, `evicted`,
    /// `shutdown`.
    pub(crate) fn record_connection_closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn record_store_call<T>(
        &self,
        op: &'static str,
        started: Instant,
        result: &Result<T>,
    ) {
        self.store_latency
            .get_or_create(&OpLabel { op })
            .observe(started.elapsed().as_secs_f64());
        if let Err(err) = result {
            self.record_store_error(op, err);
        }
    }

    fn record_store_error(&self, op: &'static str, err: &Error) {
        // Answers about the record, not failures of the store.
        if !err.is_not_found() && !err.is_conflict() && !err.is_not_owner() {
            self.store_errors
                .get_or_create(&StoreErrorLabels {
                    op,
                    kind: kind_label(err),
                })
                .inc();
        }
    }
}

/// Counts a request out of the in-flight gauge when dropped.
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The method as a label: the verbs the API knows, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

fn kind_label(err: &Error) -> &'static str {
    use crate::error::ErrorKind as K;
    match err.kind() {
        K::Unavailable => "unavailable",
        K::Timeout => "timeout",
        K::OutcomeUnknown => "outcome_unknown",
        K::PermissionDenied => "permission_denied",
        K::StoreFull => "store_full",
        K::InvalidInput => "invalid_input",
        K::NotFound => "not_found",
        K::Conflict => "conflict",
        K::NotOwner => "not_owner",
        _ => "internal",
    }
}

/// What is read at each scrape rather than counted as it happens.
#[derive(Debug, Default)]
struct Live {
    source: OnceLock<(Enricher, Budget)>,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some((enricher, budget)) = self.source.get() else {
            return Ok(());
        };
        let cache = enricher.cache_stats();
        let gauges: [(&str, &str, i64); 6] = [
            ("enrich_l1_users", "Users in the L1", cache.users as i64),
            (
                "enrich_l1_misses_cached",
                "No-such-user answers in the L1",
                cache.misses as i64,
            ),
            (
                "enrich_l1_bytes",
                "Bytes the L1's entries are charged",
                cache.bytes as i64,
            ),
            (
                "enrich_l1_bypassed",
                "1 while the L1 is bypassed because writes may go unannounced",
                i64::from(cache.bypassed),
            ),
            (
                "enrich_invalidation_stream_up",
                "1 while the store's announcements of writes are heard (always 1 for stores \
                 without them)",
                i64::from(!cache.bypassed),
            ),
            (
                "enrich_in_flight_bytes",
                "Bytes of request and response bodies held against --max-in-flight-bytes",
                budget.used() as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 3] = [
            (
                "enrich_l1_evictions",
                "Users pushed out of the L1 to make room",
                cache.evictions,
            ),
            (
                "enrich_l1_invalidations",
                "Ids dropped from the L1 because they were written, by this server or \
                 announced by the store",
                cache.invalidations,
            ),
            (
                "enrich_l1_flushes",
                "Times the whole L1 was emptied: the store's announcements of writes lost or \
                 back, the store flushed",
                cache.flushes,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        let metrics = Metrics::new();
        for i in 0..100 {
            let method = Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
            metrics.record_request("unmatched", &method, StatusCode::NOT_FOUND, Duration::ZERO);
        }
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("enrich_http_requests_total"))
            .collect();
        assert_eq!(
            series,
            [r#"enrich_http_requests_total{route="unmatched",method="other",status="404"} 100"#]
        );
    }
}
