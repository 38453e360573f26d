//! What the L1 costs in memory: 1M users cached, resident bytes added against the bytes of the
//! users' JSON (the payload). Prints one line; under `cargo test` it does nothing.
//!
//! The users are read through a source that hands out fresh bytes for each read, as Redis does
//! (each record comes off the network), so what the L1 holds is all its own: its records and
//! its bookkeeping. (A memory store's records would be shared with the store, and only the
//! bookkeeping would show.)

use std::sync::Arc;

use enrich::bench::{Workload, load_users, peak_rss_mib};
use enrich::store::{MemoryStore, SharedStore};
use enrich::{CacheConfig, Depth, Enricher, RawPage, UserId, UserJson, UserSource, async_trait};

/// A store read as if over the network: every user read is a copy of its own.
#[derive(Debug)]
struct Copies(SharedStore);

#[async_trait]
impl UserSource for Copies {
    async fn get_many(&self, ids: &[UserId]) -> enrich::Result<Vec<Option<UserJson>>> {
        let users = self.0.get_many(ids).await?;
        users
            .into_iter()
            .map(|user| {
                user.map(|user| UserJson::from_stored(user.as_bytes().to_vec()))
                    .transpose()
            })
            .collect()
    }

    fn describe(&self) -> String {
        "copies of memory:".to_string()
    }
}

/// Resident memory now, bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let users = std::env::var("L1_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let workload = Workload {
        users,
        ..Workload::default()
    };
    let store: SharedStore = Arc::new(MemoryStore::new());
    rt.block_on(load_users(&store, &workload)).unwrap();
    let payload: u64 = workload
        .user_lines()
        .iter()
        .map(|u| u.to_json(enrich::Timestamp::now()).as_bytes().len() as u64)
        .sum();
    let enricher = Enricher::source_builder(Arc::new(Copies(store)))
        .cache(CacheConfig::new().max_bytes(4 << 30))
        .build();
    let before = rss();
    // Every user, referenced once, in pages of 1,000.
    rt.block_on(async {
        for chunk in (0..users).collect::<Vec<_>>().chunks(1000) {
            let mut page = RawPage::new(Depth::TopLevel);
            for i in chunk {
                page.push(format!("{{\"actor\":\"SU:u{i}\"}}").as_bytes())
                    .unwrap();
            }
            enricher.enrich_page(&page).await.unwrap();
        }
    });
    let stats = enricher.cache_stats();
    let (entries, weighted) = (stats.users + stats.misses, stats.bytes);
    let added = rss().saturating_sub(before);
    println!(
        "l1_memory: {entries} users cached, payload {:.1} MiB, resident +{:.1} MiB ({:.2}x payload), \
         weigher {:.1} MiB, peak RSS {:.0} MiB",
        payload as f64 / 1048576.0,
        added as f64 / 1048576.0,
        added as f64 / payload as f64,
        weighted as f64 / 1048576.0,
        peak_rss_mib()
    );
}
