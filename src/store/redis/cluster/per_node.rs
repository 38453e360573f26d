//! Commands grouped by the master that serves their keys: a page's reads as one `EVAL_RO` per
//! node, and batch writes as one pipeline per node, all nodes at once.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::future::join_all;
use redis::Cmd;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::ClusterStore;
use crate::collection::{EntryJson, NewEntry};
use crate::error::Result;
use crate::store::Stamps;
use crate::store::redis::concern::{self, Answer, Writes};
use crate::store::redis::entries::{self, Mode};
use crate::store::redis::node_links::Failed;
use crate::store::redis::topology::{Node, slot};
use crate::user::Timestamp;

/// Reads the keys given as arguments, all served by the node that runs it. `no-writes` lets it
/// run as `EVAL_RO`; `allow-cross-slot-keys` lets it read keys of several slots, which Redis
/// allows only for keys not declared as `KEYS` (declared keys must share one slot).
const READ: &str = "#!lua flags=no-writes,allow-cross-slot-keys
local out = {}
for i, key in ipairs(ARGV) do out[i] = redis.call('GET', key) end
return out
";

impl ClusterStore {
    /// One group of keys, all served by `node` by our map: one `EVAL_RO` there, or the
    /// crate's redirect-following `MGET` if the node refuses.
    async fn read_group(&self, node: Option<Node>, keys: Vec<&str>) -> Result<Vec<Option<Bytes>>> {
        if let Some(node) = node {
            let mut read = redis::cmd("EVAL_RO");
            read.arg(READ).arg(0).arg(&keys);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: node.host.clone(),
                port: node.port,
            });
            match self.conn.clone().route_command(read, routing).await {
                Ok(value) => match redis::from_redis_value::<Vec<Option<Bytes>>>(value) {
                    Ok(found) if found.len() == keys.len() => return Ok(found),
                    other => tracing::debug!(%node, "unexpected read answer: {other:?}"),
                },
                Err(err) => tracing::debug!(%node, "read refused, following the cluster: {err}"),
            }
            // The map may be stale: read it again, and tell the watcher if it moved.
            if let Ok(true) = self.topology.refresh(&mut self.conn.clone()).await {
                self.topology.stale.notify_one();
            }
        }
        redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.fault(e))
    }

    /// Positions in `keys` grouped by the master that serves them by our map (`None`: a slot
    /// no master serves by it).
    fn by_node(&self, keys: &[String]) -> Vec<(Option<Node>, Vec<usize>)> {
        let map = self.topology.current();
        let mut groups: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            groups
                .entry(map.node_of(slot(key.as_bytes())))
                .or_default()
                .push(i);
        }
        (groups.into_iter())
            .map(|(node, positions)| (node.map(|n| map.node(n).clone()), positions))
            .collect()
    }

    /// Reads `keys` with one command per node, all nodes at once; an answer or an error per
    /// key (a node that cannot be reached fails its keys only).
    pub(super) async fn read_keys(&self, keys: &[String]) -> Vec<Result<Option<Bytes>>> {
        let reads = self.by_node(keys).into_iter().map(|(node, positions)| {
            let group_keys = positions.iter().map(|i| keys[*i].as_str()).collect();
            async move { (positions, self.read_group(node, group_keys).await) }
        });
        let mut answers: Vec<Option<Result<Option<Bytes>>>> = vec![None; keys.len()];
        for (positions, result) in join_all(reads).await {
            match result {
                Ok(found) => {
                    for (i, bytes) in positions.into_iter().zip(found) {
                        answers[i] = Some(Ok(bytes));
                    }
                }
                Err(err) => {
                    for i in positions {
                        answers[i] = Some(Err(err.clone()));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every key is in one group"))
            .collect()
    }

    /// Runs one write command per key: one pipeline per node (behind `prelude`, whose answers
    /// are dropped, and before the `WAIT` of the write concern), all nodes at once, each over
    /// a direct connection to its node (see [`super::node_links`]); each command's answer on
    /// its own, in key order.
    ///
    /// `pipelined(i)` is key `i`'s command in a pipeline, `alone(i)` the same command sent on
    /// its own. A command the node refused because the key is not (or not yet, or no longer)
    /// its own (a slot that moved), or that could not be sent (a node we cannot reach), was not
    /// run, so it is sent again alone (with its own `WAIT`) through the crate's routing, which
    /// follows the cluster's redirects.
    pub(super) async fn write_keys(
        &self,
        keys: &[String],
        prelude: Option<Cmd>,
        pipelined: impl Fn(usize) -> Cmd + Sync,
        alone: impl Fn(usize) -> Cmd + Sync,
    ) -> Vec<Answer> {
        let (pipelined, alone, prelude) = (&pipelined, &alone, &prelude);
        let groups = self
            .by_node(keys)
            .into_iter()
            .map(|(node, positions)| async move {
                let mut answers: Vec<Option<Answer>> = match node {
                    Some(node) => {
                        let writes = Writes::new(
                            prelude.clone(),
                            positions.iter().map(|&i| pipelined(i)),
                            self.concern.as_ref(),
                        );
                        match self.node_links.send(&node, writes.pipe()).await {
                            Ok(values) => {
                                let describe = format!("{} (node {node})", self.describe);
                                (writes.answers(&describe, values).into_iter())
                                    .map(|answer| match answer.value() {
                                        Err(err) if not_run_here(err) => None,
                                        _ => Some(answer),
                                    })
                                    .collect()
                            }
                            Err(Failed::NotSent(err)) => {
                                tracing::debug!(%node, "cannot reach the node, following the cluster: {err}");
                                vec![None; positions.len()]
                            }
                            Err(Failed::Lost(err)) => (positions.iter())
                                .map(|_| Some(Answer::lost(err.clone())))
                                .collect(),
                        }
                    }
                    None => vec![None; positions.len()],
                };
                if answers.iter().any(Option::is_none) {
                    // Our map is stale: read it again, and tell the watcher if it moved.
                    if let Ok(true) = self.topology.refresh(&mut self.conn.clone()).await {
                        self.topology.stale.notify_one();
                    }
                }
                for (slot_answer, &i) in answers.iter_mut().zip(&positions) {
                    if slot_answer.is_none() {
                        *slot_answer = Some(self.write_alone(alone(i)).await);
                    }
                }
                (positions, answers)
            });
        let mut out: Vec<Option<Answer>> = (0..keys.len()).map(|_| None).collect();
        for (positions, answers) in join_all(groups).await {
            for (i, answer) in positions.into_iter().zip(answers) {
                out[i] = answer;
            }
        }
        out.into_iter()
            .map(|a| a.expect("every key is in one group"))
            .collect()
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

    /// Writes `batch`, each entry with its stamps, in `mode`: one pipeline per node, each
    /// entry its own atomic write.
    pub(super) async fn write_entries(
        &self,
        batch: &[(&NewEntry, Stamps)],
        mode: Mode,
    ) -> Vec<Result<EntryJson>> {
        let now = Timestamp::now();
        let keys: Vec<String> = batch.iter().map(|(e, _)| self.entry_key(e.key())).collect();
        let script = &self.entry_script;
        let call = |i: usize, loaded| script.call(&keys[i], batch[i], mode, now, loaded);
        let answers = self
            .write_keys(
                &keys,
                Some(script.load()),
                |i| call(i, true),
                |i| call(i, false),
            )
            .await;
        (batch.iter().zip(answers))
            .map(|(&write, answer)| {
                answer.confirm(|value| entries::written(&self.describe, write, now, value))
            })
            .collect()
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
