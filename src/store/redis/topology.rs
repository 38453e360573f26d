//! The slot map the cluster store routes by ([`super::slot_map`]), and how it is kept
//! current: read with `CLUSTER NODES` ([`super::cluster_nodes`]) from several nodes at once.
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
use super::slot_map::{Node, SlotMap};

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
