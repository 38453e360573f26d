//! Which Redis Cluster node serves which key: the hash slot of a key, the slot map (each
//! slot's master and its replicas, as [`super::cluster_nodes`] reads it) and how to reach
//! each node. [`super::topology`] keeps the map current.
//!
//! The cluster store groups a page's keys by the node that serves them, so it needs the slot
//! of each key (CRC16/XMODEM of the key, or of its `{hash tag}`, modulo 16384) and the owner
//! of each slot. The `redis` crate keeps a map of its own but does not expose it; ours is only
//! a routing hint — a node that no longer owns a key refuses the read and the store falls back
//! to the crate's redirect-following path (see [`super::cluster`]).

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: usize = 16384;

/// A node, as the cluster names it.
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

/// A master and its replicas: the nodes that hold the same slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Shard {
    pub(super) master: Node,
    /// Sorted. Only replicas the cluster counts as usable: `CLUSTER SLOTS` leaves out a
    /// replica marked failed or that has not synced yet.
    pub(super) replicas: Vec<Node>,
}

/// The owner of every slot, as one node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// Index into `shards` per slot; `None` for a slot no master serves.
    owner: Vec<Option<u16>>,
    shards: Vec<Shard>,
}

impl SlotMap {
    /// A map with no slots assigned: every key goes through the fallback path.
    pub(super) fn empty() -> SlotMap {
        SlotMap {
            owner: vec![None; SLOTS],
            shards: Vec::new(),
        }
    }

    /// A map of `shards`, `owner` giving each slot's index in them.
    pub(super) fn from_parts(owner: Vec<Option<u16>>, shards: Vec<Shard>) -> SlotMap {
        debug_assert_eq!(owner.len(), SLOTS);
        SlotMap { owner, shards }
    }

    /// The shard serving `slot`, if the map knows one.
    pub(super) fn shard_of(&self, slot: u16) -> Option<usize> {
        self.owner[slot as usize].map(usize::from)
    }

    /// The positions of `keys` grouped by the shard that serves each key's slot, shards in
    /// order (`None`: a slot no master serves by this map).
    pub(super) fn group<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> std::collections::BTreeMap<Option<usize>, Vec<usize>> {
        let mut groups = std::collections::BTreeMap::<_, Vec<usize>>::new();
        for (i, key) in keys.iter().enumerate() {
            groups
                .entry(self.shard_of(slot(key.as_ref())))
                .or_default()
                .push(i);
        }
        groups
    }

    /// Shard `index` of the map.
    pub(super) fn shard(&self, index: usize) -> &Shard {
        &self.shards[index]
    }

    /// Every shard of the map.
    pub(super) fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// True if this map says some of `keys` are served by another master than `master` (a
    /// failover or a slot move since `master` was chosen for them).
    pub(super) fn elsewhere<K: AsRef<[u8]>>(&self, keys: &[K], master: &Node) -> bool {
        keys.iter().any(|key| {
            (self.shard_of(slot(key.as_ref()))).is_some_and(|s| self.shards[s].master != *master)
        })
    }

    /// Every master that serves at least one slot, sorted.
    pub(super) fn masters(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self.shards.iter().map(|s| s.master.clone()).collect();
        nodes.sort();
        nodes
    }

    /// Every master and replica of the map, sorted.
    pub(super) fn nodes(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = (self.shards.iter())
            .flat_map(|s| std::iter::once(&s.master).chain(&s.replicas))
            .cloned()
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// True if every slot has the same master in both maps (their replicas may differ).
    pub(super) fn same_masters(&self, other: &SlotMap) -> bool {
        fn master(map: &SlotMap, owner: Option<u16>) -> Option<&Node> {
            owner.map(|i| &map.shards[usize::from(i)].master)
        }
        (self.owner.iter().zip(&other.owner)).all(|(a, b)| master(self, *a) == master(other, *b))
    }

    /// A key that master `node` does not serve by this map, for a command it will redirect.
    pub(super) fn key_elsewhere(&self, node: &Node) -> Option<String> {
        (0..1000)
            .map(|i| format!("enrich:redirect:{i}"))
            .find(|key| {
                self.shard_of(slot(key.as_bytes()))
                    .is_some_and(|s| self.shards[s].master != *node)
            })
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

/// The node a seed URL (`redis://[user:pass@]host:port[#insecure]`) names, if it names one.
pub(super) fn seed_node(url: &str) -> Option<Node> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let rest = rest.strip_suffix("#insecure").unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Node {
        host: host.to_string(),
        port: port.parse().ok()?,
    })
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
    fn maps_answer_what_they_hold() {
        let node = |port| Node {
            host: "127.0.0.1".to_string(),
            port,
        };
        let shards = vec![
            Shard {
                master: node(7000),
                replicas: vec![node(7004), node(7005)],
            },
            Shard {
                master: node(7001),
                replicas: Vec::new(),
            },
        ];
        let mut owner = vec![Some(0); SLOTS];
        owner[5461..=10000].fill(Some(1));
        let map = SlotMap::from_parts(owner, shards);
        let first = map.shard(map.shard_of(0).unwrap());
        assert_eq!(first.master.port, 7000);
        assert_eq!(map.shard_of(16383), map.shard_of(0));
        assert_eq!(map.shard(map.shard_of(5461).unwrap()).master.port, 7001);
        assert_eq!(map.masters().len(), 2);
        assert_eq!(map.nodes().len(), 4);
        let key = map.key_elsewhere(&first.master).unwrap();
        assert_eq!(map.shard_of(slot(key.as_bytes())), map.shard_of(5461));
        assert!(map.elsewhere(&[key.as_str()], &first.master));
        assert!(!map.elsewhere(&[key.as_str()], &node(7001)));
        // A slot no master serves is nobody else's either.
        let mut unserved = map.clone();
        unserved.owner.fill(None);
        assert!(!unserved.elsewhere(&[key.as_str()], &first.master));
        assert!(!map.same_masters(&SlotMap::empty()));
        assert!(map.same_masters(&map.clone()));
    }

    #[test]
    fn seeds_name_their_node() {
        let node = |url| seed_node(url).map(|n| n.to_string());
        assert_eq!(node("redis://u:p@w@h:7000").as_deref(), Some("h:7000"));
        assert_eq!(node("rediss://h:1#insecure").as_deref(), Some("h:1"));
        assert_eq!(node("redis://[::1]:7000").as_deref(), Some("::1:7000"));
        assert_eq!(node("redis://h"), None);
    }
}
