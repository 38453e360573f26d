//! Which Redis Cluster node serves which key: the hash slot of a key, the slot map (each
//! slot's master and its replicas), how to reach each node, and how the map is kept current.
//!
//! The cluster store groups a page's keys by the node that serves them, so it needs the slot
//! of each key (CRC16/XMODEM of the key, or of its `{hash tag}`, modulo 16384) and the owner
//! of each slot, read with `CLUSTER NODES` (see [`super::cluster_nodes`]). The `redis` crate
//! keeps a map of its own but does not expose it; ours is only a routing hint — a node that
//! no longer owns a key refuses the read and the store falls back to the crate's
//! redirect-following path (see [`super::cluster`]).
//!
//! # Keeping the map current
//!
//! The map is read again every second in the background (see [`Topology::keep_current`]),
//! every 100 ms while a node fails to answer or a tracking stream is down (a failover is then
//! likely under way), and at once when a read or a write finds a node that refuses or does
//! not answer. A refresh asks several nodes at once — the masters of the map first, then its
//! replicas, then the seeds, [`ASKED`] in all — each over its own connection, and merges the
//! views of the first half of them to answer, each slot going to the master that claims it
//! with the highest config epoch. So a node that hangs (a frozen process, a partition) costs
//! nothing: it is one of the asked that never answers, not a response timeout on the critical
//! path; nodes that have not yet heard of a promotion do not outvote the one that has; and a
//! master that comes back from a freeze still thinking it owns its slots loses them to its
//! replacement's newer epoch. Refreshes asked for while one runs share its answer, and two
//! begin at least 50 ms apart.
//!
//! When the map changes, the `redis` crate's own connections (what a refused read or write
//! falls back to) are told too: it re-reads its map on a `MOVED`, but it retries a command
//! that timed out on the same node, so after a master hangs it would keep sending to it. Each
//! connection it holds is sent one command that the new map says another master serves, and
//! the redirect makes it re-read.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::node_links::NodeLinks;

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: usize = 16384;

/// The most nodes a refresh asks for their view of the map.
pub(super) const ASKED: usize = 5;

/// How often the map is read again in the background.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How often while a node is failing to answer: a failover is then likely under way, and the
/// sooner its new master is known the sooner its slots answer again.
pub(super) const REFRESH_EVERY_IN_TROUBLE: Duration = Duration::from_millis(100);

/// How long after a node last failed to answer the map is read that often.
const TROUBLE_LASTS: Duration = Duration::from_secs(10);

/// The least time between two refreshes: during an outage every failed read asks for one.
const MIN_GAP: Duration = Duration::from_millis(50);

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
    fn same_masters(&self, other: &SlotMap) -> bool {
        fn master(map: &SlotMap, owner: Option<u16>) -> Option<&Node> {
            owner.map(|i| &map.shards[usize::from(i)].master)
        }
        (self.owner.iter().zip(&other.owner)).all(|(a, b)| master(self, *a) == master(other, *b))
    }

    /// A key that master `node` does not serve by this map, for a command it will redirect.
    fn key_elsewhere(&self, node: &Node) -> Option<String> {
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

/// The slot map the store routes its reads and batch writes by, shared with the watcher so
/// that both follow a change either notices first.
pub(super) struct Topology {
    map: RwLock<Arc<SlotMap>>,
    /// Woken whenever a refresh changed the map.
    pub(super) changed: tokio::sync::Notify,
    /// Connections of our own to ask nodes for their view (the store's read links).
    links: Arc<NodeLinks>,
    /// The nodes of the store's URL: asked too, in case the map has lost them all.
    seeds: Vec<Node>,
    /// When the last refresh began; held while one runs, so that others wait for it.
    last: tokio::sync::Mutex<Option<Instant>>,
    /// The `redis` crate's connections, told of each change.
    followers: Mutex<Vec<ClusterConnection>>,
    /// When a node last failed to answer: the map is then read again more often for a while.
    trouble: Mutex<Option<Instant>>,
    response_timeout: Duration,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("masters", &self.current().masters())
            .finish()
    }
}

impl Topology {
    /// Reads the map from the seeds; fails with the last error if none answers.
    pub(super) async fn connect(
        seeds: Vec<Node>,
        links: Arc<NodeLinks>,
        response_timeout: Duration,
    ) -> redis::RedisResult<Topology> {
        let topology = Topology {
            map: RwLock::new(Arc::new(SlotMap::empty())),
            changed: tokio::sync::Notify::new(),
            links,
            seeds,
            last: tokio::sync::Mutex::new(None),
            followers: Mutex::new(Vec::new()),
            trouble: Mutex::new(None),
            response_timeout,
        };
        let map = topology.ask(topology.seeds.clone()).await?;
        *crate::sync::write(&topology.map) = Arc::new(map);
        Ok(topology)
    }

    /// Reads the map again every [`REFRESH_EVERY`] in the background, for as long as the
    /// topology is in use: a store that only writes, with no watcher and no failed read to
    /// ask for a refresh, still follows a failover.
    pub(super) fn keep_current(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let topology = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut pause = REFRESH_EVERY;
            loop {
                tokio::time::sleep(pause).await;
                let Some(topology) = topology.upgrade() else {
                    return;
                };
                if let Err(err) = topology.refresh().await {
                    tracing::debug!("cannot read the cluster's slot map: {err}");
                }
                let troubled = crate::sync::lock(&topology.trouble)
                    .is_some_and(|at| at.elapsed() < TROUBLE_LASTS);
                pause = if troubled {
                    REFRESH_EVERY_IN_TROUBLE
                } else {
                    REFRESH_EVERY
                };
            }
        });
    }

    /// Says a node did not answer: a failover may be under way, so the map is read again
    /// every [`REFRESH_EVERY_IN_TROUBLE`] for the next [`TROUBLE_LASTS`].
    pub(super) fn trouble(&self) {
        *crate::sync::lock(&self.trouble) = Some(Instant::now());
    }

    /// Tells `conn`, a connection of the `redis` crate, of every change of the map.
    pub(super) fn follow(&self, conn: ClusterConnection) {
        crate::sync::lock(&self.followers).push(conn);
    }

    pub(super) fn current(&self) -> Arc<SlotMap> {
        crate::sync::read(&self.map).clone()
    }

    /// `work` (on `master`, for `keys`), unless the map changes while it runs so that `master`
    /// no longer serves all of `keys` (a failover of a master that hangs): then `None`, and
    /// `work` is dropped, without waiting for the old node's timeout.
    pub(super) async fn unless_moved<F: std::future::Future>(
        &self,
        work: F,
        keys: &[&str],
        master: &Node,
    ) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the map is looked at, so no change slips in between.
            changed.as_mut().enable();
            if self.current().elsewhere(keys, master) {
                return None;
            }
            tokio::select! {
                done = &mut work => return Some(done),
                _ = changed => {}
            }
        }
    }

    /// Reads the map again (or waits for a refresh that began after this call) and installs
    /// it; the map now.
    pub(super) async fn refresh(&self) -> redis::RedisResult<Arc<SlotMap>> {
        let called = Instant::now();
        let mut last = self.last.lock().await;
        if last.is_some_and(|began| began >= called || began.elapsed() < MIN_GAP) {
            return Ok(self.current());
        }
        *last = Some(Instant::now());
        let current = self.current();
        // Masters first: they are the ones a failover replaces.
        let mut asked: Vec<Node> = current.masters();
        for node in current
            .nodes()
            .into_iter()
            .chain(self.seeds.iter().cloned())
        {
            if !asked.contains(&node) {
                asked.push(node);
            }
        }
        asked.truncate(ASKED);
        let map = Arc::new(self.ask(asked).await?);
        if *map != *current {
            *crate::sync::write(&self.map) = map.clone();
            tracing::debug!(nodes = ?map.nodes(), masters = ?map.masters(), "the cluster's slot map changed");
            self.changed.notify_waiters();
            if !map.same_masters(&current) {
                self.tell_followers(&map);
            }
        }
        Ok(map)
    }

    /// The map the views of `asked` make together (see [`super::cluster_nodes`]), from the
    /// answers of more than half of them, or of as many as answer before the others fail or
    /// time out.
    async fn ask(&self, asked: Vec<Node>) -> redis::RedisResult<SlotMap> {
        let enough = asked.len() / 2 + 1;
        let mut pending: FuturesUnordered<_> = (asked.iter())
            .map(|node| async move {
                let mut pipe = redis::pipe();
                pipe.cmd("CLUSTER").arg("NODES");
                let answer =
                    tokio::time::timeout(self.response_timeout, self.links.send(node, &pipe));
                let unreadable = |why: String| {
                    redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "unreadable CLUSTER NODES reply",
                        why,
                    ))
                };
                match answer.await {
                    Ok(Ok(mut values)) => match values.pop() {
                        Some(Value::ServerError(err)) => Err(err.into()),
                        Some(reply) => {
                            let text: String = redis::from_redis_value(reply)
                                .map_err(|e| unreadable(e.to_string()))?;
                            super::cluster_nodes::parse(&text).map_err(unreadable)
                        }
                        None => Err(unreadable("nothing".to_string())),
                    },
                    Ok(Err(err)) => Err(err),
                    Err(_) => Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    ))),
                }
            })
            .collect();
        let mut views = Vec::new();
        let mut last_err = None;
        while let Some(answer) = pending.next().await {
            match answer {
                Ok(view) => {
                    views.push(view);
                    if views.len() >= enough {
                        break;
                    }
                }
                Err(err) => last_err = Some(err),
            }
        }
        if views.is_empty() {
            return Err(last_err.unwrap_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Client, "no cluster node to ask"))
            }));
        }
        Ok(super::cluster_nodes::merge(&views))
    }

    /// Makes each follower re-read its own map: one command to a master that the new map
    /// says it does not serve, which answers `MOVED`. In the background: nobody waits for it.
    fn tell_followers(&self, map: &SlotMap) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let target = (map.masters().into_iter())
            .find_map(|master| map.key_elsewhere(&master).map(|key| (master, key)));
        let Some((master, key)) = target else {
            return;
        };
        for conn in crate::sync::lock(&self.followers).iter() {
            let mut conn = conn.clone();
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: master.host.clone(),
                port: master.port,
            });
            let exists = redis::cmd("EXISTS").arg(&key).clone();
            let timeout = self.response_timeout;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(timeout, conn.route_command(exists, routing)).await;
            });
        }
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
