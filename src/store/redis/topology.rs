//! Which Redis Cluster node serves which key: the hash slot of a key, the slot map, the
//! masters the store and the watcher share, and how to reach each node.
//!
//! The cluster store groups a page's keys by the node that serves them, so it needs the slot
//! of each key (CRC16/XMODEM of the key, or of its `{hash tag}`, modulo 16384) and the owner
//! of each slot, read with `CLUSTER SLOTS`. The `redis` crate keeps a map of its own but does
//! not expose it; ours is only a routing hint — a node that no longer owns a key refuses the
//! read and the store falls back to the crate's redirect-following path (see
//! [`super::cluster`]).

use std::sync::{Arc, RwLock};

use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: usize = 16384;

/// A master node, as the cluster names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Node {
    pub(super) host: String,
    pub(super) port: u16,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The owner of every slot, as one node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// Index into `nodes` per slot; `None` for a slot no master serves.
    owner: Vec<Option<u16>>,
    nodes: Vec<Node>,
}

impl SlotMap {
    /// A map with no slots assigned: every key goes through the fallback path.
    pub(super) fn empty() -> SlotMap {
        SlotMap {
            owner: vec![None; SLOTS],
            nodes: Vec::new(),
        }
    }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id…], replicas…]…]`.
    pub(super) fn from_cluster_slots(reply: &Value) -> Result<SlotMap, String> {
        let Value::Array(ranges) = reply else {
            return Err(format!("CLUSTER SLOTS answered {reply:?}"));
        };
        let mut map = SlotMap::empty();
        for range in ranges {
            let (start, end, master) = match range {
                Value::Array(items) if items.len() >= 3 => (&items[0], &items[1], &items[2]),
                other => return Err(format!("CLUSTER SLOTS range {other:?}")),
            };
            let (Value::Int(start), Value::Int(end)) = (start, end) else {
                return Err(format!("CLUSTER SLOTS bounds {start:?}, {end:?}"));
            };
            let node = match master {
                Value::Array(addr) if addr.len() >= 2 => match (&addr[0], &addr[1]) {
                    (Value::BulkString(host), Value::Int(port)) => Node {
                        host: String::from_utf8_lossy(host).into_owned(),
                        port: u16::try_from(*port).map_err(|_| format!("port {port}"))?,
                    },
                    other => return Err(format!("CLUSTER SLOTS node {other:?}")),
                },
                other => return Err(format!("CLUSTER SLOTS node {other:?}")),
            };
            let index = match map.nodes.iter().position(|n| *n == node) {
                Some(i) => i,
                None => {
                    map.nodes.push(node);
                    map.nodes.len() - 1
                }
            };
            let (start, end) = (*start as usize, *end as usize);
            if start > end || end >= SLOTS {
                return Err(format!("CLUSTER SLOTS range {start}-{end}"));
            }
            for owner in &mut map.owner[start..=end] {
                *owner = Some(index as u16);
            }
        }
        Ok(map)
    }

    /// The master serving `slot`, if the map knows one.
    pub(super) fn node_of(&self, slot: u16) -> Option<usize> {
        self.owner[slot as usize].map(usize::from)
    }

    /// Node `index` of the map.
    pub(super) fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    /// Every master that serves at least one slot, sorted.
    pub(super) fn masters(&self) -> Vec<Node> {
        let mut nodes = self.nodes.clone();
        nodes.sort();
        nodes
    }
}

/// The hash slot of `key`: only the part between the first `{` and the next `}` counts, if
/// that part is not empty.
pub(super) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let tail = &key[open + 1..];
            tail.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &tail[..close])
        })
        .unwrap_or(key);
    // CRC16/XMODEM, the checksum Redis Cluster uses (from the crate the Redis client uses).
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// How to reach one node by URL: the seeds' scheme, credentials and `#insecure` with its
/// address.
#[derive(Clone)]
pub(super) struct NodeUrls {
    pub(super) scheme: String,
    pub(super) auth: String,
    pub(super) fragment: String,
}

impl NodeUrls {
    /// `redis://[user:pass@]host:port[#insecure]` for `node`; never shown to anyone.
    pub(super) fn url(&self, node: &Node) -> String {
        let host = if node.host.contains(':') {
            format!("[{}]", node.host)
        } else {
            node.host.clone()
        };
        format!(
            "{}://{}{host}:{}{}",
            self.scheme, self.auth, node.port, self.fragment
        )
    }

    /// `redis://host:port`, for messages.
    pub(super) fn describe(&self, node: &Node) -> String {
        format!("{}://{node}", self.scheme)
    }
}

/// The slot map the store routes its reads by, shared with the watcher so that both react
/// to a topology change the store notices first.
#[derive(Debug)]
pub(super) struct Topology {
    map: RwLock<Arc<SlotMap>>,
    /// Woken whenever a read found the map stale.
    pub(super) stale: tokio::sync::Notify,
}

impl Topology {
    pub(super) fn new(map: SlotMap) -> Topology {
        Topology {
            map: RwLock::new(Arc::new(map)),
            stale: tokio::sync::Notify::new(),
        }
    }

    pub(super) fn current(&self) -> Arc<SlotMap> {
        crate::sync::read(&self.map).clone()
    }

    /// Reads `CLUSTER SLOTS` from some master and installs it; true if it changed.
    pub(super) async fn refresh(&self, conn: &mut ClusterConnection) -> redis::RedisResult<bool> {
        let map = Arc::new(read_slot_map(conn).await?);
        let mut current = crate::sync::write(&self.map);
        let changed = **current != *map;
        *current = map;
        Ok(changed)
    }
}

/// The cluster's slot map, as a random master sees it.
pub(super) async fn read_slot_map(conn: &mut ClusterConnection) -> redis::RedisResult<SlotMap> {
    let reply = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    SlotMap::from_cluster_slots(&reply).map_err(|why| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "unreadable CLUSTER SLOTS reply",
            why,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.0.
        assert_eq!(slot(b"enrich:user:a"), 15639);
        assert_eq!(slot(b"enrich:user:b"), 3444);
        assert_eq!(slot(b"enrich:user:h"), 11326);
        assert_eq!(slot(b"x{enrich:user:a}y"), 15639);
        assert_ne!(slot(b"{}enrich:user:a"), slot(b"enrich:user:a"));
    }

    #[test]
    fn cluster_slots_reply_reads() {
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.into()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a, b, n| Value::Array(vec![Value::Int(a), Value::Int(b), n]);
        let reply = Value::Array(vec![
            range(0, 5460, node("127.0.0.1", 7000)),
            range(5461, 16383, node("127.0.0.1", 7001)),
        ]);
        let map = SlotMap::from_cluster_slots(&reply).unwrap();
        assert_eq!(map.node(map.node_of(0).unwrap()).port, 7000);
        assert_eq!(
            map.node(map.node_of(16383).unwrap()).to_string(),
            "127.0.0.1:7001"
        );
        assert_eq!(map.masters().len(), 2);
        assert!(SlotMap::from_cluster_slots(&Value::Int(1)).is_err());
    }
}
