//! How every enricher learns of every write to Redis: server-assisted client-side caching.
//!
//! Each watching enricher keeps one extra RESP3 connection with
//! `CLIENT TRACKING ON BCAST PREFIX {namespace}:user: PREFIX {namespace}:object:`. Redis then
//! pushes an `invalidate` message with the key of every write under those prefixes, from the same command that made the
//! write, so an acknowledged write has always been announced. A key becomes the L1 key of its
//! record by dropping its prefix: `{namespace}:user:alice` is `alice`,
//! `{namespace}:object:food:burger` is `food:burger`. We chose this over publishing
//! from our own write scripts because it also catches writes made outside the engine (a
//! `redis-cli SET`, a migration script, `FLUSHDB`), and because it keeps no per-key state on
//! the server (broadcast mode).
//!
//! Pushes are fire-and-forget: while the connection is down, announcements are lost. So the
//! watcher says [`StoreEvent::Lost`] the moment the connection drops or stops answering its
//! pings (the enricher then bypasses and empties its L1), reconnects with backoff, and says
//! [`StoreEvent::Connected`] once tracking is on again (the enricher flushes once more, to drop
//! whatever was loaded while it could not hear, and resumes caching). The connection is named
//! `enrich-tracking` in `CLIENT LIST`.
//!
//! # On Redis Cluster
//!
//! Tracking is per connection and per node: a node announces the writes it executes. So the
//! cluster watcher keeps one such connection per master, found in the slot map, and merges
//! their announcements. We chose this over classic pub/sub (which a cluster broadcasts to every
//! node, so each write would cost traffic on all of them) and over sharded pub/sub (which
//! would need a publish in every write script and would miss writes made outside the engine),
//! for the same reasons as on one node.
//!
//! The flush-on-loss rule holds for every node: the moment any master's stream is lost, the
//! watcher says [`StoreEvent::Lost`]; it says [`StoreEvent::Connected`] only once every master's
//! stream is up again. A master we do not hear from yet could already be taking writes, so the
//! slot map is read again every second, and at once when a read finds it stale (a slot that
//! moved, a node that failed over): a change in the set of masters says `Lost` until the new
//! masters' streams are up. A slot that moves between masters we already hear from needs
//! nothing more: both announce their side of the move (the source deletes, the target writes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::topology::{Node, NodeUrls, Topology};
use crate::error::Result;
use crate::retry::Backoff;
use crate::store::{EventSink, StoreEvent, StoreOptions, WatchGuard};

/// How often the tracking connection is pinged to notice a silent failure.
const PING_EVERY: Duration = Duration::from_millis(500);

/// Starts the watcher task, or `None` outside a tokio runtime.
pub(super) fn watch(
    client: Client,
    prefixes: Vec<String>,
    describe: String,
    options: &StoreOptions,
    sink: EventSink,
) -> Option<WatchGuard> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let watcher = Watcher {
        client,
        prefixes,
        describe,
        connect_timeout: options.connect_timeout_value(),
        response_timeout: options.response_timeout_value(),
        sink,
    };
    Some(WatchGuard::new(runtime.spawn(watcher.run()).abort_handle()))
}

struct Watcher {
    client: Client,
    /// The key prefixes of every kind of record; none is a prefix of another.
    prefixes: Vec<String>,
    describe: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    sink: EventSink,
}

impl Watcher {
    async fn run(self) {
        // A lost stream is reopened quickly at first: until it is, the L1 is bypassed.
        let mut backoff = Backoff::between(Duration::from_millis(20), Duration::from_secs(1));
        // Each outage is logged once when it starts and once when it ends, not per retry.
        let mut down = false;
        loop {
            match self.connect().await {
                Ok((conn, pushes)) => {
                    (self.sink)(StoreEvent::Connected);
                    if down {
                        tracing::warn!(store = %self.describe, "invalidation stream restored");
                    }
                    backoff.reset();
                    let why = self.listen(conn, pushes).await;
                    (self.sink)(StoreEvent::Lost);
                    tracing::warn!(
                        store = %self.describe,
                        "invalidation stream lost ({why}); serving from the store until it is back"
                    );
                    down = true;
                }
                Err(err) => {
                    if !down {
                        tracing::warn!(store = %self.describe, "cannot open the invalidation stream: {err}");
                        down = true;
                    }
                }
            }
            tokio::time::sleep(backoff.pause()).await;
        }
    }

    /// Opens a RESP3 connection and turns tracking on for the namespace's keys.
    async fn connect(&self) -> Result<(MultiplexedConnection, mpsc::UnboundedReceiver<PushInfo>)> {
        let fault = |e| super::fault::fault(&self.describe, e);
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(fault)?;
        let (sender, pushes) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_push_sender(sender);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(fault)?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("enrich-tracking")
            .exec_async(&mut conn)
            .await
            .map_err(fault)?;
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON").arg("BCAST");
        for prefix in &self.prefixes {
            tracking.arg("PREFIX").arg(prefix);
        }
        tracking.exec_async(&mut conn).await.map_err(fault)?;
        Ok((conn, pushes))
    }

    /// Passes announcements on until the connection fails; says why it stopped.
    async fn listen(
        &self,
        mut conn: MultiplexedConnection,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    ) -> String {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(PushInfo { kind: PushKind::Invalidate, data }) => self.invalidate(data),
                    Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => {
                        return "connection closed".to_string();
                    }
                    Some(_) => {}
                },
                _ = ping.tick() => {
                    if let Err(err) = redis::cmd("PING").exec_async(&mut conn).await {
                        return format!("ping failed: {err}");
                    }
                }
            }
        }
    }

    /// `invalidate` carries an array of keys, or null when everything is invalid (a flush).
    fn invalidate(&self, data: Vec<Value>) {
        for item in data {
            match item {
                Value::Array(keys) => {
                    let ids = keys
                        .into_iter()
                        .filter_map(|key| match key {
                            Value::BulkString(bytes) => (self.prefixes.iter())
                                .find_map(|prefix| bytes.strip_prefix(prefix.as_bytes()))
                                .and_then(|key| std::str::from_utf8(key).ok())
                                .map(Box::<str>::from),
                            _ => None,
                        })
                        .collect::<Vec<_>>();
                    if !ids.is_empty() {
                        (self.sink)(StoreEvent::Changed(ids));
                    }
                }
                _ => (self.sink)(StoreEvent::ChangedAll),
            }
        }
    }
}

/// How often the cluster watcher reads the slot map, to notice new masters.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);

/// Starts the cluster watcher task (one tracking connection per master), or `None` outside a
/// tokio runtime.
pub(super) fn watch_cluster(
    conn: redis::cluster_async::ClusterConnection,
    topology: Arc<Topology>,
    nodes: NodeUrls,
    prefixes: Vec<String>,
    options: &StoreOptions,
    sink: EventSink,
) -> Option<WatchGuard> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let watcher = ClusterWatcher {
        conn,
        topology,
        nodes,
        prefixes,
        options: options.clone(),
        sink,
        health: Arc::new(Mutex::new(Health::default())),
    };
    Some(WatchGuard::new(runtime.spawn(watcher.run()).abort_handle()))
}

struct ClusterWatcher {
    conn: redis::cluster_async::ClusterConnection,
    topology: Arc<Topology>,
    nodes: NodeUrls,
    prefixes: Vec<String>,
    options: StoreOptions,
    sink: EventSink,
    health: Arc<Mutex<Health>>,
}

/// Which masters' streams are up, and whether we last said `Connected`.
#[derive(Default)]
struct Health {
    up: HashMap<Node, bool>,
    announced: bool,
}

impl Health {
    /// Says `Lost` unless it is said already.
    fn lose(&mut self, sink: &EventSink) {
        if self.announced {
            self.announced = false;
            sink(StoreEvent::Lost);
        }
    }
}

impl ClusterWatcher {
    async fn run(mut self) {
        let mut watchers: HashMap<Node, WatchGuard> = HashMap::new();
        loop {
            if let Err(err) = self.topology.refresh(&mut self.conn).await {
                tracing::debug!("cannot read the cluster's slot map: {err}");
            }
            let masters = self.topology.current().masters();
            let same =
                masters.len() == watchers.len() && masters.iter().all(|m| watchers.contains_key(m));
            if !same {
                {
                    let mut health = crate::sync::lock(&self.health);
                    health.lose(&self.sink);
                    health.up.retain(|node, _| masters.contains(node));
                    for node in &masters {
                        health.up.entry(node.clone()).or_insert(false);
                    }
                }
                watchers.retain(|node, _| masters.contains(node));
                for node in masters {
                    if !watchers.contains_key(&node)
                        && let Some(guard) = self.watch_node(&node)
                    {
                        watchers.insert(node, guard);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TOPOLOGY_EVERY) => {}
                _ = self.topology.stale.notified() => {}
            }
        }
    }

    /// Starts the tracking connection of one master; its `Connected` and `Lost` count towards
    /// the cluster's, its announcements pass straight on.
    fn watch_node(&self, node: &Node) -> Option<WatchGuard> {
        let client = match super::tls::client(&self.nodes.url(node), &self.nodes.describe(node)) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(%node, "cannot watch this master: {err}");
                return None;
            }
        };
        let health = self.health.clone();
        let sink = self.sink.clone();
        let me = node.clone();
        let node_sink: EventSink = Arc::new(move |event| match event {
            StoreEvent::Connected => {
                let mut health = crate::sync::lock(&health);
                if let Some(up) = health.up.get_mut(&me) {
                    *up = true;
                }
                if !health.announced && health.up.values().all(|up| *up) {
                    health.announced = true;
                    sink(StoreEvent::Connected);
                }
            }
            StoreEvent::Lost => {
                let mut health = crate::sync::lock(&health);
                if let Some(up) = health.up.get_mut(&me) {
                    *up = false;
                }
                health.lose(&sink);
            }
            other => sink(other),
        });
        watch(
            client,
            self.prefixes.clone(),
            self.nodes.describe(node),
            &self.options,
            node_sink,
        )
    }
}
