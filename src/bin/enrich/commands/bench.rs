//! `enrich bench`.

use std::sync::Arc;
use std::time::Duration;

use enrich::bench::{BenchReport, Strategy, Workload, load_users, run_strategy};
use enrich::error::Result;

use super::StoreSpec;

/// `enrich bench`: loads a generated workload into the store (in the namespace
/// `{namespace}.bench`, never the users of the namespace itself), then runs each strategy over
/// the same pages.
pub(crate) async fn bench(
    spec: &StoreSpec,
    workload: Workload,
    strategies: &[Strategy],
) -> Result<BenchReport> {
    let bench_spec = StoreSpec::new(
        spec.url.clone(),
        spec.options
            .clone()
            .namespace(format!("{}.bench", spec.options.namespace_str())),
        spec.cache.clone(),
    );
    let store = bench_spec.open().await?;
    load_users(&store, &workload).await?;
    let pages = Arc::new(workload.pages());
    let enricher = spec.enricher(store.clone());
    enricher.wait_for_cache(Duration::from_secs(2)).await;
    let mut report = BenchReport {
        store: store.describe(),
        workload: workload.clone(),
        strategies: Vec::new(),
    };
    for strategy in strategies {
        report
            .strategies
            .push(run_strategy(*strategy, &enricher, &store, &pages, workload.concurrency).await?);
    }
    report.compare();
    Ok(report)
}
