//! The writer process: updates, deletes and re-creates users at a set rate through the
//! engine's store ([`Enricher::users`]), recording each write's version, send and ack times.

use std::collections::HashMap;

use clap::Args;
use enrich::bench::scale::{WriteRecord, now_ns};
use enrich::bench::{Rng, Zipf};
use enrich::{Enricher, NewUser, StoreOptions, UserId, store};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Common;
use crate::counted::NodeMap;
use crate::proc;

#[derive(Args, Clone, Debug)]
pub struct WriterArgs {
    #[command(flatten)]
    pub common: Common,
    /// Writes per second, in all; 0 for as fast as they are acknowledged.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Writes in flight at once (each user is written by one of them only, so a user's writes
    /// stay in order).
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,
    /// The share of writes to an existing user that delete it (the next write of a deleted
    /// user creates it again).
    #[arg(long, default_value_t = 0.1)]
    pub delete_share: f64,
    /// Bytes of padding in each user's data.
    #[arg(long, default_value_t = 64)]
    pub pad: usize,
}

/// What the writer says when it is done (its writes are in `writer.writes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriterSummary {
    pub writes: u64,
    pub deletes: u64,
    pub creates: u64,
    /// Writes that failed: their outcome is unknown.
    pub errors: u64,
    pub first_error: Option<String>,
    /// When the first and the last failed write was answered ([`now_ns`]).
    pub first_error_at: Option<u64>,
    pub last_error_at: Option<u64>,
    /// Writes per node (by the slot of the user's key).
    pub per_node: Vec<u64>,
    pub cpu_secs: f64,
    pub seconds: f64,
    /// Median and 99th percentile of the time from send to acknowledgement, in ms.
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
}

/// A user's data at `version`: the version first, then padding (no `"id":"` anywhere).
pub fn data(version: u32, pad: usize) -> serde_json::Value {
    json!({"v": version, "x": "x".repeat(pad)})
}

pub async fn run(args: WriterArgs) -> Result<(), String> {
    let common = &args.common;
    let options = StoreOptions::new().namespace(common.namespace.clone());
    let store = store::open(&common.url, &options)
        .await
        .map_err(|e| format!("cannot open {}: {e}", common.url))?;
    // The writer reads nothing: no tracking connection of its own, so the invalidations
    // counted are the readers'.
    let enricher = Enricher::builder(store).coherent(false).build();
    let map = NodeMap::read(&common.url)?;
    let (start, end) = proc::ready_then_wait_for_go()?;
    proc::sleep_until(start).await;
    let cpu = proc::cpu_secs();
    let k = args.concurrency.max(1);
    let tasks = (0..k).map(|task| write_some(&args, &enricher, task, start, end));
    let done = futures::future::join_all(tasks).await;
    let mut summary = WriterSummary {
        per_node: vec![0; map.names.len()],
        cpu_secs: proc::cpu_secs() - cpu,
        seconds: (now_ns().max(end) - start) as f64 / 1e9,
        ..WriterSummary::default()
    };
    let mut log = Vec::new();
    let mut acks = Vec::new();
    for part in done {
        summary.errors += part.errors;
        summary.first_error = summary.first_error.or(part.first_error);
        summary.first_error_at = match (summary.first_error_at, part.first_error_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        summary.last_error_at = summary.last_error_at.max(part.last_error_at);
        for write in part.writes {
            write.encode(&mut log);
            summary.writes += 1;
            summary.deletes += u64::from(write.deleted);
            if let Some(acked) = write.acked {
                acks.push(acked - write.sent);
            }
            let key = format!("{}:user:u{}", common.namespace, write.user);
            summary.per_node[map.node_of(key.as_bytes())] += 1;
        }
        summary.creates += part.creates;
    }
    acks.sort_unstable();
    let at = |q: f64| {
        acks.get(((acks.len().saturating_sub(1)) as f64 * q) as usize)
            .map_or(0.0, |&ns| ns as f64 / 1e6)
    };
    summary.ack_p50_ms = at(0.5);
    summary.ack_p99_ms = at(0.99);
    let dir = &common.dir;
    std::fs::write(dir.join("writer.writes"), log)
        .map_err(|e| format!("cannot write the write log: {e}"))?;
    let json = serde_json::to_vec(&summary).expect("a summary serializes");
    std::fs::write(dir.join("writer.json"), json)
        .map_err(|e| format!("cannot write the summary: {e}"))
}

#[derive(Default)]
struct Part {
    writes: Vec<WriteRecord>,
    creates: u64,
    errors: u64,
    first_error: Option<String>,
    first_error_at: Option<u64>,
    last_error_at: Option<u64>,
}

/// The writes of task `task` of `k`: its share of the schedule, to the users `u` with
/// `u % k == task`.
async fn write_some(
    args: &WriterArgs,
    enricher: &Enricher,
    task: u32,
    start: u64,
    end: u64,
) -> Part {
    let common = &args.common;
    let k = args.concurrency.max(1);
    let users = common.users.max(1);
    let mut rng = Rng::new(common.seed ^ 0x5752_4954 ^ (u64::from(task) << 32));
    let zipf = Zipf::new(users as usize, common.zipf);
    // (version, present) of this task's users; every user starts loaded at version 0.
    let mut state: HashMap<u32, (u32, bool)> = HashMap::new();
    let mut part = Part::default();
    let store = enricher.users();
    let interval = (args.rate > 0.0).then(|| 1e9 / args.rate);
    for n in 0u64.. {
        let now = now_ns();
        if now >= end {
            break;
        }
        if let Some(interval) = interval {
            let due = start + ((n * u64::from(k) + u64::from(task)) as f64 * interval) as u64;
            if due >= end {
                break;
            }
            proc::sleep_until(due).await;
        }
        let user = loop {
            let u = zipf.sample(&mut rng) as u32;
            if u % k == task || k > users {
                break u;
            }
        };
        let (version, present) = state.get(&user).copied().unwrap_or((0, true));
        let next = version + 1;
        let id = UserId::parse(&format!("u{user}")).expect("a valid id");
        let delete = present && rng.next_f64() < args.delete_share;
        let sent = now_ns();
        let outcome = if delete {
            store.delete(&id).await
        } else {
            let user = NewUser::with_id(id, Some(data(next, args.pad))).expect("valid data");
            if present {
                store.update(&user).await.map(|_| ())
            } else {
                part.creates += 1;
                store.add(&user, false).await.map(|_| ())
            }
        };
        let acked = now_ns();
        if let Err(err) = &outcome {
            part.errors += 1;
            part.first_error.get_or_insert_with(|| err.to_string());
            part.first_error_at.get_or_insert(acked);
            part.last_error_at = Some(acked);
        }
        part.writes.push(WriteRecord {
            user,
            version: next,
            deleted: delete,
            sent,
            acked: outcome.is_ok().then_some(acked),
        });
        // Whatever the outcome, the version is spent; a failed write may have been applied.
        state.insert(user, (next, !delete));
    }
    part
}
