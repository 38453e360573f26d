//! Which replicas may answer reads: those that have caught up with their master.
//!
//! A replica answers reads whatever the state of its link to its master
//! (`replica-serve-stale-data`, on by default): one that was just restarted and is still
//! syncing holds an empty or old dataset, and one whose master died holds what it had. Even
//! `connected` is not enough: after a full sync a master holds back the writes it took
//! meanwhile until the replica's first acknowledgement, up to a second later (seen on 7.0:
//! a restarted replica served versions a second old while saying `connected`). So when the
//! store reads from replicas, every [`CHECK_EVERY`] each master and then each replica of the
//! map is asked `ROLE`, and a replica may answer reads only if it says `connected` and its
//! replication offset reaches the offset its master gave just before (within
//! [`CATCH_UP_TRIES`] × [`CATCH_UP_WAIT`]): it has applied every write its master had
//! acknowledged at the time of the check. That verdict holds until the next round (at most
//! [`TRUSTED_FOR`]); a replica that fails a read is off the list until a round says otherwise.
//! The others' reads go to their master.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::Value;

use crate::store::redis::node_links::NodeLinks;
use crate::store::redis::topology::{Node, Topology};

/// How often each replica is asked whether it is in sync.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How long a replica's last "caught up" is trusted, should the checks stop coming.
const TRUSTED_FOR: Duration = Duration::from_millis(600);

/// How many times a round asks a replica that has not caught up yet, and how long apart: a
/// replica under a stream of writes is always a few behind the instant its master answered,
/// and is counted caught up if it gets there within this.
const CATCH_UP_TRIES: usize = 3;
const CATCH_UP_WAIT: Duration = Duration::from_millis(5);

/// The replicas that were last found caught up, and when.
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

    /// Asks every master of the map its offset, then every replica its state and offset,
    /// again a few times, [`CATCH_UP_WAIT`] apart, for those not there yet.
    async fn check(&self) {
        let map = self.topology.current();
        let masters = map.masters();
        let offsets: HashMap<&Node, i64> = (join_all(masters.iter().map(|m| self.role(m)))
            .await
            .into_iter())
        .zip(&masters)
        .filter_map(|(role, master)| match role {
            Some(Role::Master(offset)) => Some((master, offset)),
            _ => None,
        })
        .collect();
        // Each replica, and the offset its master had just now: everything the master had
        // acknowledged before this round.
        let mut pending: Vec<(&Node, i64)> = (map.shards().iter())
            .filter_map(|s| offsets.get(&s.master).map(|wanted| (s, *wanted)))
            .flat_map(|(s, wanted)| s.replicas.iter().map(move |r| (r, wanted)))
            .collect();
        let mut caught_up = Vec::new();
        for attempt in 0..CATCH_UP_TRIES {
            if attempt > 0 {
                tokio::time::sleep(CATCH_UP_WAIT).await;
            }
            let roles = join_all(pending.iter().map(|(replica, _)| self.role(replica))).await;
            let mut behind = Vec::new();
            for ((replica, wanted), role) in pending.into_iter().zip(roles) {
                match role {
                    Some(Role::Replica {
                        connected: true,
                        offset,
                    }) if offset >= wanted => caught_up.push(replica.clone()),
                    Some(Role::Replica {
                        connected: true, ..
                    }) => behind.push((replica, wanted)),
                    _ => {}
                }
            }
            pending = behind;
            if pending.is_empty() {
                break;
            }
        }
        let now = Instant::now();
        let mut list = crate::sync::lock(&self.in_sync);
        list.clear();
        list.extend(caught_up.into_iter().map(|node| (node, now)));
    }

    /// What `node` says it is, or `None` if it does not answer in time.
    async fn role(&self, node: &Node) -> Option<Role> {
        let mut pipe = redis::pipe();
        pipe.cmd("ROLE");
        let answer = tokio::time::timeout(self.response_timeout, self.links.send(node, &pipe));
        match answer.await {
            Ok(Ok(values)) => values.first().and_then(role),
            _ => None,
        }
    }
}

/// A node's `ROLE`, as far as reads from replicas care.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    /// `["master", offset, replicas]`.
    Master(i64),
    /// `["slave", host, port, state, offset]`; `connected` once linked and past the sync.
    Replica { connected: bool, offset: i64 },
}

/// Reads a `ROLE` answer.
fn role(answer: &Value) -> Option<Role> {
    let Value::Array(items) = answer else {
        return None;
    };
    let said =
        |i: usize, what: &[u8]| matches!(items.get(i), Some(Value::BulkString(s)) if s == what);
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    if said(0, b"master") {
        return int(1).map(Role::Master);
    }
    if said(0, b"slave") {
        return int(4).map(|offset| Role::Replica {
            connected: said(3, b"connected"),
            offset,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let replica = |state: &str| {
            Value::Array(vec![
                text("slave"),
                text("h"),
                Value::Int(1),
                text(state),
                Value::Int(9),
            ])
        };
        assert_eq!(
            role(&replica("connected")),
            Some(Role::Replica {
                connected: true,
                offset: 9
            })
        );
        for state in ["connect", "connecting", "sync", "handshake"] {
            assert_eq!(
                role(&replica(state)),
                Some(Role::Replica {
                    connected: false,
                    offset: 9
                }),
                "{state}"
            );
        }
        let master = Value::Array(vec![text("master"), Value::Int(42), Value::Array(vec![])]);
        assert_eq!(role(&master), Some(Role::Master(42)));
        assert_eq!(role(&Value::Nil), None);
    }
}
