//! One reader process: an [`Enricher`] over the cluster store (its L1, its loads in flight,
//! its tracking connection per node) enriching pages of activities as a feed server would,
//! recording what each page served.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use clap::Args;
use enrich::bench::scale::{PageRecord, Seen, now_ns, observe};
use enrich::bench::{Rng, Zipf};
use enrich::store::ReadFrom;
use enrich::{Depth, Enricher, RawPage, StoreOptions, UserSource, store};
use serde::{Deserialize, Serialize};

use crate::Common;
use crate::counted::{Counted, NodeMap, Pushes};
use crate::proc;

#[derive(Args, Clone, Debug)]
pub struct ReaderArgs {
    #[command(flatten)]
    pub common: Common,
    /// Activities per page.
    #[arg(long, default_value_t = 25)]
    pub page: usize,
    /// Pages in flight at once in the process.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Ids `m0`… that never exist, named by 2 % of references.
    #[arg(long, default_value_t = 1000)]
    pub missing: u32,
    /// Seconds of reading before the run, to fill the L1.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Pages per second the process is asked for (spread over its pages in flight); 0 for as
    /// many as it can.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Do not watch the store: writes are seen when the L1's entries expire.
    #[arg(long)]
    pub no_tracking: bool,
    /// Read from replicas that have caught up (`ReadFrom::Replicas`).
    #[arg(long)]
    pub read_from_replicas: bool,
}

/// What a reader says when it is done (its answers are in `reader-N.pages`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReaderSummary {
    pub index: u32,
    pub activities: u64,
    pub pages: u64,
    /// Pages that failed (a store fault), and the first such error.
    pub errors: u64,
    pub first_error: Option<String>,
    /// When the first and the last failed page ended ([`now_ns`]).
    pub first_error_at: Option<u64>,
    pub last_error_at: Option<u64>,
    /// CPU seconds used during the run, and the run's length in seconds.
    pub cpu_secs: f64,
    pub seconds: f64,
    /// Invalidations received during the run.
    pub pushes: Pushes,
    pub references: u64,
    pub l1_hits: u64,
    pub store_calls: u64,
    /// Ids the L1 dropped because they were written, during the run.
    pub invalidations: u64,
}

/// A page of activities and the users each names, in document order.
struct Page {
    lines: Vec<String>,
    expected: Vec<Vec<u32>>,
}

const MISSING_SHARE: f64 = 0.02;
/// Distinct pages a reader cycles through.
const PAGES: usize = 256;

fn pages(args: &ReaderArgs) -> Vec<Page> {
    let users = args.common.users;
    let mut rng = Rng::new(args.common.seed ^ ((u64::from(args.common.index) + 1) * 0x9E37_79B9));
    let zipf = Zipf::new(users.max(1) as usize, args.common.zipf);
    let pick = |rng: &mut Rng, popular: bool| -> (String, u32) {
        if args.missing > 0 && rng.next_f64() < MISSING_SHARE {
            let m = (rng.next_u64() % u64::from(args.missing)) as u32;
            (format!("m{m}"), users + m)
        } else {
            let u = if popular {
                zipf.sample(rng) as u32
            } else {
                (rng.next_u64() % u64::from(users.max(1))) as u32
            };
            (format!("u{u}"), u)
        }
    };
    (0..PAGES)
        .map(|p| {
            let mut page = Page {
                lines: Vec::new(),
                expected: Vec::new(),
            };
            for a in 0..args.page {
                let (actor, a_ix) = pick(&mut rng, true);
                let (object, o_ix) = pick(&mut rng, false);
                let (target, t_ix) = pick(&mut rng, true);
                // No `id` of the activity's own: `"id":"` marks answers only.
                page.lines.push(format!(
                    r#"{{"actor":"SU:{actor}","verb":"post","object":"SU:{object}","target":"SU:{target}","foreign_id":"post:{p}:{a}","time":"2021-05-14T14:51:13.767221"}}"#
                ));
                page.expected.push(vec![a_ix, o_ix, t_ix]);
            }
            page
        })
        .collect()
}

/// The index of the user an answer names: `u12` is 12, `m3` is `users + 3`.
fn index_of(id: &[u8], users: u32) -> Option<u32> {
    let (kind, number) = id.split_first()?;
    let n: u32 = std::str::from_utf8(number).ok()?.parse().ok()?;
    match kind {
        b'u' => Some(n),
        b'm' => users.checked_add(n),
        _ => None,
    }
}

pub async fn run(args: ReaderArgs) -> Result<(), String> {
    let common = &args.common;
    let read_from = match args.read_from_replicas {
        true => ReadFrom::Replicas,
        false => ReadFrom::Masters,
    };
    let options = StoreOptions::new()
        .namespace(common.namespace.clone())
        .read_from(read_from);
    let store = store::open(&common.url, &options)
        .await
        .map_err(|e| format!("cannot open {}: {e}", common.url))?;
    let map = NodeMap::read(&common.url)?;
    let counted = Counted::new(store, map, format!("{}:user:", common.namespace));
    let counts = counted.counts();
    let source: std::sync::Arc<dyn UserSource> = std::sync::Arc::new(counted);
    let enricher = Enricher::source_builder(source)
        .coherent(!args.no_tracking)
        .build();
    if !enricher.wait_for_cache(Duration::from_secs(10)).await {
        return Err("the invalidation stream did not come up within 10 s".into());
    }
    let pages = pages(&args);
    let state = Reading {
        enricher: &enricher,
        pages: &pages,
        users: common.users,
        index: common.index,
        next: Cell::new(0),
        log: RefCell::new(Vec::new()),
        summary: RefCell::new(ReaderSummary {
            index: common.index,
            ..ReaderSummary::default()
        }),
    };

    // Warm the L1 unrecorded: no write happens before the run.
    let warm_until = now_ns() + (args.warmup * 1e9) as u64;
    state.read_until(warm_until, args.concurrency, None).await;
    state.log.borrow_mut().clear();
    *state.summary.borrow_mut() = ReaderSummary {
        index: common.index,
        ..ReaderSummary::default()
    };

    let (start, end) = proc::ready_then_wait_for_go()?;
    proc::sleep_until(start).await;
    let (cpu, pushes, l1) = (proc::cpu_secs(), counts.snapshot(), enricher.cache_stats());
    let began = now_ns();
    let pace = (args.rate > 0.0).then_some((start, 1e9 / args.rate));
    state.read_until(end, args.concurrency, Some(pace)).await;
    let mut summary = state.summary.take();
    summary.cpu_secs = proc::cpu_secs() - cpu;
    summary.seconds = (now_ns() - began) as f64 / 1e9;
    summary.pushes = counts.snapshot().since(&pushes);
    summary.invalidations = enricher.cache_stats().invalidations - l1.invalidations;

    let dir = &common.dir;
    std::fs::write(
        dir.join(format!("reader-{}.pages", common.index)),
        state.log.take(),
    )
    .map_err(|e| format!("cannot write the page log: {e}"))?;
    let json = serde_json::to_vec(&summary).expect("a summary serializes");
    std::fs::write(dir.join(format!("reader-{}.json", common.index)), json)
        .map_err(|e| format!("cannot write the summary: {e}"))
}

/// What the reader's pages in flight share (one thread: cells suffice).
struct Reading<'a> {
    enricher: &'a Enricher<dyn UserSource>,
    pages: &'a [Page],
    users: u32,
    index: u32,
    next: Cell<usize>,
    log: RefCell<Vec<u8>>,
    summary: RefCell<ReaderSummary>,
}

impl Reading<'_> {
    /// Enriches pages, `concurrency` at a time, until `end`; records them when `run` is
    /// given, paced at one page per interval from its start if it holds one.
    async fn read_until(&self, end: u64, concurrency: usize, run: Option<Option<(u64, f64)>>) {
        let k = concurrency.max(1);
        let workers = (0..k).map(|w| self.worker(end, run, w as u64, k as u64));
        futures::future::join_all(workers).await;
    }

    async fn worker(&self, end: u64, run: Option<Option<(u64, f64)>>, w: u64, k: u64) {
        let record = run.is_some();
        let pace = run.flatten();
        let mut out = Vec::new();
        let mut bounds = Vec::new();
        let mut seen = Vec::new();
        for mine in 0u64.. {
            if let Some((from, interval)) = pace {
                let due = from + ((mine * k + w) as f64 * interval) as u64;
                if due >= end {
                    return;
                }
                proc::sleep_until(due).await;
            }
            let start = now_ns();
            if start >= end {
                return;
            }
            let n = self.next.get();
            self.next.set(n + 1);
            let page = &self.pages[n % self.pages.len()];
            let mut raw = RawPage::new(Depth::TopLevel);
            for line in &page.lines {
                raw.push(line.as_bytes())
                    .expect("generated pages are valid");
            }
            out.clear();
            bounds.clear();
            let stats = match self.enricher.enrich_page(&raw).await {
                Ok(enriched) => {
                    for doc in 0..raw.len() {
                        let from = out.len();
                        enriched.write(doc, &mut out);
                        bounds.push(from..out.len());
                    }
                    enriched.stats()
                }
                Err(err) => {
                    self.failed(&err);
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let finished = now_ns();
            if record {
                seen.clear();
                let mut observed = Vec::new();
                for (doc, range) in bounds.iter().enumerate() {
                    observed.clear();
                    observe(&out[range.clone()], &mut observed);
                    let expected = &page.expected[doc];
                    let matches = observed.len() == expected.len()
                        && (observed.iter().zip(expected))
                            .all(|((id, _), &want)| index_of(id, self.users) == Some(want));
                    if matches {
                        seen.extend(observed.iter().zip(expected).map(|((_, s), &u)| (u, *s)));
                    } else {
                        seen.extend(expected.iter().map(|&u| (u, Seen::Garbled)));
                    }
                }
                seen.sort_unstable_by_key(|&(user, s)| (user, order(s)));
                seen.dedup();
                let record = PageRecord {
                    process: self.index,
                    start,
                    end: finished,
                    seen: std::mem::take(&mut seen),
                };
                record.encode(&mut self.log.borrow_mut());
                seen = record.seen;
            }
            self.count(raw.len() as u64, &stats);
            // Pages answered from the L1 never wait: let the other pages in flight run.
            tokio::task::yield_now().await;
        }
    }
}

impl Reading<'_> {
    fn failed(&self, err: &enrich::Error) {
        let mut summary = self.summary.borrow_mut();
        summary.errors += 1;
        summary.first_error.get_or_insert_with(|| err.to_string());
        let now = now_ns();
        summary.first_error_at.get_or_insert(now);
        summary.last_error_at = Some(now);
    }

    fn count(&self, activities: u64, stats: &enrich::EnrichStats) {
        let mut summary = self.summary.borrow_mut();
        summary.pages += 1;
        summary.activities += activities;
        summary.references += stats.references;
        summary.l1_hits += stats.l1_hits;
        summary.store_calls += stats.store_calls;
    }
}

fn order(seen: Seen) -> u64 {
    match seen {
        Seen::Version(v) => u64::from(v),
        Seen::NotFound => 1 << 32,
        Seen::Garbled => (1 << 32) + 1,
    }
}
