//! Writes grouped by the master that serves their keys, by our slot map: one pipeline per
//! node, all nodes at once, over our own connections; a single write is a batch of one.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::{BoxFuture, join_all};
use redis::Cmd;

use super::ClusterStore;
use crate::collection::EntryJson;
use crate::error::Result;
use crate::store::redis::concern::{self, Answer, Writes};
use crate::store::redis::entries::{self, Mode, Write, Written};
use crate::store::redis::fault::fault;
use crate::store::redis::slot_map::{Node, SlotMap, slot};
use crate::user::Timestamp;

/// Writes, one command per key, and how to make each: `pipelined(i)` is key `i`'s command
/// in a pipeline behind `prelude` (whose answers are dropped), `alone(i)` the same command
/// sent on its own.
struct Batch<'a> {
    keys: &'a [String],
    prelude: &'a Option<Cmd>,
    pipelined: &'a (dyn Fn(usize) -> Cmd + Sync),
    alone: &'a (dyn Fn(usize) -> Cmd + Sync),
}

/// Each position of a batch with its answer.
type Answered = Vec<(usize, Answer)>;

impl ClusterStore {
    /// Runs one write command per key: one pipeline per node (behind `prelude`, whose answers
    /// are dropped, and before the `WAIT` of the write concern), all nodes at once, each over
    /// a direct connection to its node (see [`super::super::node_links`]); each command's answer on
    /// its own, in key order. A single write is a batch of one.
    ///
    /// `pipelined(i)` is key `i`'s command in a pipeline, `alone(i)` the same command sent on
    /// its own. Where a write goes, and what happens when its node fails:
    ///
    /// - Each key goes to the master our map names for its slot.
    /// - While the connection to that master is being made (a node that hangs accepts it and
    ///   never answers), nothing has been sent: if the map changes meanwhile so that another
    ///   master serves the key (the failover of a master that hangs), the write goes there at
    ///   once, without waiting out the connect timeout.
    /// - No connection could be made (a node that is down, or that hung until the connect
    ///   timeout): nothing was sent, so the map is read again and, if another master now
    ///   serves the key, the write goes there; otherwise it fails at once, as a read does,
    ///   [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) (or
    ///   [`ErrorKind::Timeout`](crate::ErrorKind::Timeout)), never of unknown outcome.
    /// - Sent, and the answers lost (no answer within the response timeout, or the connection
    ///   dropped): the writes may have run, so they are never sent again; each is answered
    ///   [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown) by the caller.
    /// - Refused by the node without being run — the key is not (or not yet, or no longer)
    ///   its own (a slot that moved), the cluster is down or failing over for now, a script
    ///   it did not know: that command is sent again alone (with its own `WAIT`) through the
    ///   crate's routing, which follows the cluster's `MOVED` and `ASK`.
    ///
    /// A write is moved to another master at most once.
    pub(super) async fn write_keys(
        &self,
        keys: &[String],
        prelude: Option<Cmd>,
        pipelined: impl Fn(usize) -> Cmd + Sync,
        alone: impl Fn(usize) -> Cmd + Sync,
    ) -> Vec<Answer> {
        let batch = Batch {
            keys,
            prelude: &prelude,
            pipelined: &pipelined,
            alone: &alone,
        };
        let all = (0..keys.len()).collect();
        let mut out: Vec<Option<Answer>> = (0..keys.len()).map(|_| None).collect();
        for (i, answer) in self
            .write_on(self.topology.current(), &batch, all, true)
            .await
        {
            out[i] = Some(answer);
        }
        out.into_iter()
            .map(|a| a.expect("every key is in one group"))
            .collect()
    }

    /// Writes the keys of `batch` at `positions` grouped by `map`, all nodes at once; `retry`
    /// allows a group one more pass on another master.
    fn write_on<'a>(
        &'a self,
        map: Arc<SlotMap>,
        batch: &'a Batch<'a>,
        positions: Vec<usize>,
        retry: bool,
    ) -> BoxFuture<'a, Answered> {
        Box::pin(async move {
            let keys: Vec<&str> = positions.iter().map(|&i| batch.keys[i].as_str()).collect();
            let groups = (map.group(&keys).into_iter()).map(|(shard, group)| {
                let node = shard.map(|s| map.shard(s).master.clone());
                let group = group.into_iter().map(|g| positions[g]).collect();
                self.write_group(node, batch, group, retry)
            });
            join_all(groups).await.into_iter().flatten().collect()
        })
    }

    /// Writes the keys of `batch` at `positions`, all of `node`'s by our map (`None`: of slots
    /// no master serves by it), as one pipeline.
    async fn write_group(
        &self,
        node: Option<Node>,
        batch: &Batch<'_>,
        positions: Vec<usize>,
        retry: bool,
    ) -> Answered {
        let Some(node) = node else {
            // Our map is stale, or the cluster lost those slots.
            let _ = self.topology.refresh().await;
            if retry {
                return self
                    .write_on(self.topology.current(), batch, positions, false)
                    .await;
            }
            return self.write_each_alone(batch, positions).await;
        };
        let keys: Vec<&str> = positions.iter().map(|&i| batch.keys[i].as_str()).collect();
        let connect = self.node_links.connect(&node);
        let connected = if retry {
            match self.topology.unless_moved(connect, &keys, &node).await {
                Some(connected) => connected,
                None => {
                    tracing::debug!(%node, "slots moved while connecting, writing elsewhere");
                    return (self.write_on(self.topology.current(), batch, positions, false)).await;
                }
            }
        } else {
            connect.await
        };
        let describe = format!("{} (node {node})", self.describe);
        let link = match connected {
            Ok(link) => link,
            Err(err) => {
                tracing::debug!(%node, "cannot reach the node, nothing written: {err}");
                self.topology.trouble();
                if retry
                    && let Ok(fresh) = self.topology.refresh().await
                    && fresh.elsewhere(&keys, &node)
                {
                    return self.write_on(fresh, batch, positions, false).await;
                }
                let err = fault(&describe, err);
                return (positions.into_iter())
                    .map(|i| (i, Answer::unsent(err.clone())))
                    .collect();
            }
        };
        let writes = Writes::new(
            batch.prelude.clone(),
            positions.iter().map(|&i| (batch.pipelined)(i)),
            self.concern.as_ref(),
        );
        let values = match link.send(writes.pipe()).await {
            Ok(values) => values,
            Err(err) => {
                // Sent: they may have run, so they are not sent again.
                tracing::debug!(%node, "writes unanswered: {err}");
                self.topology.trouble();
                return (positions.into_iter())
                    .map(|i| (i, Answer::lost(err.clone())))
                    .collect();
            }
        };
        let mut answered = Vec::with_capacity(positions.len());
        let mut not_run = Vec::new();
        for (i, answer) in positions.into_iter().zip(writes.answers(&describe, values)) {
            match answer.value() {
                Some(Err(err)) if not_run_here(err) => not_run.push(i),
                _ => answered.push((i, answer)),
            }
        }
        if !not_run.is_empty() {
            // Our map is stale: read it again (the watcher hears of a change).
            let _ = self.topology.refresh().await;
            answered.extend(self.write_each_alone(batch, not_run).await);
        }
        answered
    }

    /// The keys of `batch` at `positions` written one by one through the crate's routing.
    async fn write_each_alone(&self, batch: &Batch<'_>, positions: Vec<usize>) -> Answered {
        let mut answered = Vec::with_capacity(positions.len());
        for i in positions {
            answered.push((i, self.write_alone((batch.alone)(i)).await));
        }
        answered
    }

    /// One write sent again alone through the cluster connection, with the `WAIT` of the
    /// write concern behind it in the same pipeline.
    async fn write_alone(&self, cmd: Cmd) -> Answer {
        use redis::aio::ConnectionLike;
        let writes = Writes::new(None, [cmd], self.concern.as_ref());
        match (self.writes.clone())
            .req_packed_commands(writes.pipe(), 0, writes.len())
            .await
        {
            Ok(values) => concern::one(writes.answers(&self.describe, values)),
            Err(err) => Answer::lost(err),
        }
    }

    /// Writes `batch`, each entry with its stamps, in `mode`: one script call per slot (a
    /// script may only touch keys of one slot), each written whole or not at all, sent as one
    /// pipeline per node, all nodes at once.
    pub(super) async fn write_entries(&self, batch: &[Write<'_>], mode: Mode) -> Written {
        let now = Timestamp::now();
        let keys: Vec<String> = batch.iter().map(|(e, _)| self.entry_key(e.key())).collect();
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            by_slot.entry(slot(key.as_bytes())).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = by_slot.into_values().collect();
        let calls: Vec<Vec<(&str, Write<'_>)>> = (groups.iter())
            .map(|group| {
                group
                    .iter()
                    .map(|&i| (keys[i].as_str(), batch[i]))
                    .collect()
            })
            .collect();
        // Each group is routed by its first key: all of its keys are of that slot.
        let firsts: Vec<String> = groups.iter().map(|g| keys[g[0]].clone()).collect();
        let script = &self.entry_script;
        let call = |g: usize, loaded| script.call(&calls[g], mode, now, loaded);
        let answers = self
            .write_keys(
                &firsts,
                Some(script.load()),
                |g| call(g, true),
                |g| call(g, false),
            )
            .await;
        let mut each: Vec<Option<Result<EntryJson>>> = (0..batch.len()).map(|_| None).collect();
        let mut refused = None;
        for (group, answer) in groups.iter().zip(answers) {
            let writes: Vec<Write<'_>> = group.iter().map(|&i| batch[i]).collect();
            let written = entries::written(&self.describe, &writes, now, answer);
            if let Some(at) = written.refused {
                refused = Some(refused.map_or(group[at], |r: usize| r.min(group[at])));
            }
            for (&i, outcome) in group.iter().zip(written.each) {
                each[i] = Some(outcome);
            }
        }
        Written {
            each: (each.into_iter())
                .map(|e| e.expect("every entry is in one group"))
                .collect(),
            refused,
        }
    }
}

/// True for a refusal that means the command was not run because its key is not this node's
/// to serve (now), or the node did not know the script: sending it again elsewhere is safe.
fn not_run_here(err: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as K;
    matches!(
        err.kind(),
        redis::ErrorKind::Server(
            K::Moved | K::Ask | K::TryAgain | K::ClusterDown | K::MasterDown | K::NoScript
        )
    )
}
