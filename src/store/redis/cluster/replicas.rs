//! Which replicas may answer reads: those that say they are in sync with their master.
//!
//! A replica answers reads whatever the state of its link to its master
//! (`replica-serve-stale-data`, on by default): one that was just restarted and is still
//! syncing holds an empty or old dataset, and one whose master died holds what it had. So
//! when the store reads from replicas, each replica of the map is asked `ROLE` every
//! [`CHECK_EVERY`], and reads go only to those whose last answer, less than [`TRUSTED_FOR`]
//! old, said `connected`: linked to their master and past the initial sync, so at most a
//! replication delay behind it. A replica that fails a read is off the list until it says so
//! again. The others' reads go to their master.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::Value;

use crate::store::redis::node_links::NodeLinks;
use crate::store::redis::topology::{Node, Topology};

/// How often each replica is asked whether it is in sync.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a replica's last "in sync" is trusted.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// The replicas that last said they were in sync, and when.
pub(super) struct Replicas {
    in_sync: Mutex<HashMap<Node, Instant>>,
    links: Arc<NodeLinks>,
    topology: Arc<Topology>,
    response_timeout: Duration,
}

impl Replicas {
    /// Asks every replica of the map once, then keeps asking in the background for as long
    /// as the store is in use.
    pub(super) async fn watch(
        links: Arc<NodeLinks>,
        topology: Arc<Topology>,
        response_timeout: Duration,
    ) -> Arc<Replicas> {
        let replicas = Arc::new(Replicas {
            in_sync: Mutex::new(HashMap::new()),
            links,
            topology,
            response_timeout,
        });
        replicas.check().await;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&replicas);
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(CHECK_EVERY).await;
                    let Some(replicas) = weak.upgrade() else {
                        return;
                    };
                    replicas.check().await;
                }
            });
        }
        replicas
    }

    /// True if `node` said it was in sync less than [`TRUSTED_FOR`] ago.
    pub(super) fn readable(&self, node: &Node) -> bool {
        crate::sync::lock(&self.in_sync)
            .get(node)
            .is_some_and(|at| at.elapsed() < TRUSTED_FOR)
    }

    /// Takes `node` off the list until it says it is in sync again.
    pub(super) fn failed(&self, node: &Node) {
        crate::sync::lock(&self.in_sync).remove(node);
    }

    /// Asks every replica of the map, all at once.
    async fn check(&self) {
        let map = self.topology.current();
        let masters = map.masters();
        let replicas: Vec<Node> = (map.nodes().into_iter())
            .filter(|n| !masters.contains(n))
            .collect();
        let asked = replicas.iter().map(|node| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("ROLE");
            let answer = tokio::time::timeout(self.response_timeout, self.links.send(node, &pipe));
            let in_sync = match answer.await {
                Ok(Ok(values)) => values.first().is_some_and(in_sync),
                _ => false,
            };
            (node, in_sync)
        });
        let answers = join_all(asked).await;
        let now = Instant::now();
        let mut list = crate::sync::lock(&self.in_sync);
        list.retain(|node, _| replicas.contains(node));
        for (node, in_sync) in answers {
            if in_sync {
                list.insert(node.clone(), now);
            } else {
                list.remove(node);
            }
        }
    }
}

/// True for a `ROLE` answer of a replica linked to its master and past its initial sync:
/// `["slave", host, port, "connected", offset]`.
fn in_sync(role: &Value) -> bool {
    let Value::Array(items) = role else {
        return false;
    };
    let said =
        |i: usize, what: &[u8]| matches!(items.get(i), Some(Value::BulkString(s)) if s == what);
    said(0, b"slave") && said(3, b"connected")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connected_replica_is_in_sync() {
        let role = |items: &[&str]| {
            Value::Array(
                (items.iter())
                    .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                    .collect(),
            )
        };
        assert!(in_sync(&role(&["slave", "h", "1", "connected", "9"])));
        for state in ["connect", "connecting", "sync", "handshake"] {
            assert!(!in_sync(&role(&["slave", "h", "1", state, "9"])), "{state}");
        }
        assert!(!in_sync(&role(&["master", "9"])));
        assert!(!in_sync(&Value::Nil));
    }
}
