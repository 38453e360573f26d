//! Batch writes grouped by the master that serves their keys: one pipeline per node, all
//! nodes at once.

use futures::future::join_all;
use redis::Cmd;

use super::ClusterStore;
use crate::collection::{EntryJson, NewEntry};
use crate::error::Result;
use crate::store::Stamps;
use crate::store::redis::concern::{self, Answer, Writes};
use crate::store::redis::entries::{self, Mode};
use crate::store::redis::node_links::Failed;
use crate::store::redis::topology::Node;
use crate::user::Timestamp;

impl ClusterStore {
    /// Positions in `keys` grouped by the master that serves them by our map (`None`: a slot
    /// no master serves by it).
    fn by_node(&self, keys: &[String]) -> Vec<(Option<Node>, Vec<usize>)> {
        let map = self.topology.current();
        (map.group(keys).into_iter())
            .map(|(shard, positions)| (shard.map(|s| map.shard(s).master.clone()), positions))
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
                    // Our map is stale: read it again (the watcher hears of a change).
                    let _ = self.topology.refresh().await;
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
