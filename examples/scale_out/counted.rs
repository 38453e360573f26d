//! Counting the invalidations each process receives, per node, without touching the engine:
//! the reader's enricher reads through [`Counted`], a source that passes every call to the
//! cluster store and counts the announcements on their way from the store's watch to the L1.
//! Each `Changed` event is one `invalidate` push of one node (the watcher passes each push's
//! keys on as one event), counted under the master that serves the slot of its first key: a
//! replica's pushes count with its master's, as the event does not say which node sent it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use enrich::store::{EventSink, StoreEvent, WatchGuard};
use enrich::{EntryJson, EntryKey, Key, Record, Result, SharedStore, UserId, UserJson, UserSource};
use serde::Serialize;

/// Which node serves which slot, read once (the harness moves no slot).
#[derive(Debug)]
pub struct NodeMap {
    /// (first slot, last slot, node).
    ranges: Vec<(u16, u16, usize)>,
    /// Each master as `host:port`.
    pub names: Vec<String>,
    /// Each replica as `host:port`, in port order.
    pub replicas: Vec<String>,
}

impl NodeMap {
    /// The slot map of the cluster at `url` (`redis+cluster://h:p,…`); a single node for a
    /// plain `redis://` URL.
    pub fn read(url: &str) -> std::result::Result<NodeMap, String> {
        let Some(seeds) = url.strip_prefix("redis+cluster://") else {
            let node = url.trim_start_matches("redis://").trim_end_matches('/');
            return Ok(NodeMap {
                ranges: vec![(0, 16383, 0)],
                names: vec![node.to_string()],
                replicas: Vec::new(),
            });
        };
        let seed = seeds.split(',').next().unwrap_or_default();
        let mut conn = redis::Client::open(format!("redis://{seed}"))
            .and_then(|c| c.get_connection())
            .map_err(|e| format!("cannot reach {seed}: {e}"))?;
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .map_err(|e| format!("CLUSTER SLOTS on {seed}: {e}"))?;
        let mut map = NodeMap {
            ranges: Vec::new(),
            names: Vec::new(),
            replicas: Vec::new(),
        };
        let redis::Value::Array(ranges) = slots else {
            return Err("CLUSTER SLOTS answered no array".into());
        };
        // `host:port` of a range's master: `[host, port, id, …]`.
        let name = |node: &redis::Value| {
            let redis::Value::Array(node) = node else {
                return None;
            };
            let host = match node.first() {
                Some(redis::Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                _ => "127.0.0.1".to_string(),
            };
            match node.get(1) {
                Some(redis::Value::Int(port)) => Some(format!("{host}:{port}")),
                _ => None,
            }
        };
        for range in ranges {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let (Some(redis::Value::Int(first)), Some(redis::Value::Int(last))) =
                (items.first(), items.get(1))
            else {
                continue;
            };
            let Some(name) = items.get(2).and_then(name) else {
                continue;
            };
            let node = match map.names.iter().position(|n| *n == name) {
                Some(node) => node,
                None => {
                    map.names.push(name);
                    map.names.len() - 1
                }
            };
            map.ranges.push((*first as u16, *last as u16, node));
        }
        // Nodes in port order, as the cluster was started.
        let mut order: Vec<usize> = (0..map.names.len()).collect();
        order.sort_by_key(|&n| map.names[n].clone());
        let rank: Vec<usize> = (0..order.len())
            .map(|n| order.iter().position(|&o| o == n).expect("a node"))
            .collect();
        map.ranges.iter_mut().for_each(|r| r.2 = rank[r.2]);
        map.names.sort();
        // Replicas from `CLUSTER NODES`: `CLUSTER SLOTS` lists a replica only once its
        // replication offset has reached the node through gossip, seconds after it is one.
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut conn)
            .map_err(|e| format!("CLUSTER NODES on {seed}: {e}"))?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let replica = fields
                .get(2)
                .is_some_and(|flags| flags.split(',').any(|f| f == "slave"));
            if let (true, Some(addr)) = (replica, fields.get(1)) {
                // `ip:port@bus-port[,hostname]`
                let addr = addr.split(['@', ',']).next().unwrap_or_default();
                map.replicas.push(addr.to_string());
            }
        }
        map.replicas.sort();
        Ok(map)
    }

    /// The node serving `key`.
    pub fn node_of(&self, key: &[u8]) -> usize {
        let slot = slot(key);
        (self.ranges.iter())
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map_or(0, |r| r.2)
    }
}

/// Redis Cluster's hash slot of `key`, hash tags included.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

/// Invalidations received, per node.
#[derive(Debug)]
pub struct PushCounts {
    /// `invalidate` pushes per node.
    pushes: Vec<AtomicU64>,
    /// Keys they carried, per node.
    keys: Vec<AtomicU64>,
    /// Flushes (a null `invalidate`) and losses of the stream.
    flushes: AtomicU64,
    lost: AtomicU64,
}

/// A snapshot of [`PushCounts`].
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Pushes {
    /// `invalidate` pushes per node.
    pub pushes: Vec<u64>,
    /// Keys they carried, per node.
    pub keys: Vec<u64>,
    /// Flushes of everything.
    pub flushes: u64,
    /// Losses of the invalidation stream.
    pub lost: u64,
}

impl PushCounts {
    fn new(nodes: usize) -> PushCounts {
        PushCounts {
            pushes: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            keys: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            flushes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// What was counted so far.
    pub fn snapshot(&self) -> Pushes {
        let all = |v: &[AtomicU64]| v.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        Pushes {
            pushes: all(&self.pushes),
            keys: all(&self.keys),
            flushes: self.flushes.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

impl Pushes {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Pushes) -> Pushes {
        let minus = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(a, b)| a - b).collect();
        Pushes {
            pushes: minus(&self.pushes, &earlier.pushes),
            keys: minus(&self.keys, &earlier.keys),
            flushes: self.flushes - earlier.flushes,
            lost: self.lost - earlier.lost,
        }
    }
}

/// The store, read through, with its announcements counted.
#[derive(Debug)]
pub struct Counted {
    store: SharedStore,
    map: Arc<NodeMap>,
    /// The key prefix of users, to find a user's node.
    prefix: String,
    counts: Arc<PushCounts>,
}

impl Counted {
    /// Reads through `store`, whose users' keys start with `prefix`.
    pub fn new(store: SharedStore, map: NodeMap, prefix: String) -> Counted {
        Counted {
            store,
            counts: Arc::new(PushCounts::new(map.names.len())),
            map: Arc::new(map),
            prefix,
        }
    }

    /// The counts, shared with the watch.
    pub fn counts(&self) -> Arc<PushCounts> {
        self.counts.clone()
    }
}

#[enrich::async_trait]
impl UserSource for Counted {
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        self.store.get_many(ids).await
    }

    async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        self.store.get_many_each(ids).await
    }

    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        self.store.get_entries_each(keys).await
    }

    async fn get_records_each(&self, keys: &[Key]) -> Vec<Result<Option<Record>>> {
        self.store.get_records_each(keys).await
    }

    fn describe(&self) -> String {
        self.store.describe()
    }

    fn watch(&self, sink: EventSink) -> Option<WatchGuard> {
        let (counts, map, prefix) = (self.counts.clone(), self.map.clone(), self.prefix.clone());
        let key = std::sync::Mutex::new(Vec::new());
        self.store.watch(Arc::new(move |event: StoreEvent| {
            match &event {
                StoreEvent::Changed(ids) => {
                    if let Some(first) = ids.first() {
                        let mut key = key.lock().unwrap_or_else(|e| e.into_inner());
                        key.clear();
                        key.extend_from_slice(prefix.as_bytes());
                        key.extend_from_slice(first.as_bytes());
                        let node = map.node_of(&key);
                        counts.pushes[node].fetch_add(1, Ordering::Relaxed);
                        counts.keys[node].fetch_add(ids.len() as u64, Ordering::Relaxed);
                    }
                }
                StoreEvent::ChangedAll => {
                    counts.flushes.fetch_add(1, Ordering::Relaxed);
                }
                StoreEvent::Lost => {
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                }
                StoreEvent::Connected => {}
            }
            sink(event)
        }))
    }
}
