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
//! Tracking is per connection and per node: a node announces the writes it executes, and a
//! replica announces the writes it applies from its master's replication stream, once it has
//! applied them. So the cluster watcher keeps one such connection per node of the slot map,
//! masters and replicas, and merges their announcements. We chose this over classic pub/sub
//! (which a cluster broadcasts to every node, so each write would cost traffic on all of them)
//! and over sharded pub/sub (which would need a publish in every write script and would miss
//! writes made outside the engine), for the same reasons as on one node.
//!
//! Why replicas too: a replica's stream, up since a moment it was a replica (it says so when
//! asked `ROLE`, right after tracking is on and then at every ping), announces every write it
//! makes once promoted, from the first, before the slot map says it is a master. So a failover needs no flush: after a
//! manual `CLUSTER FAILOVER` the L1 is neither bypassed nor emptied, and after a master dies
//! the L1 is used again as soon as its replica is promoted. And when the store reads from
//! replicas ([`ReadFrom::Replicas`]), the node a read went to is tracked: its announcement of
//! a write comes after it applied the write, so an L1 filled from a replica is invalidated
//! after, never before, the replica shows the new value. The cost: each write is announced to
//! each enricher once by its master and once by each replica.
//!
//! The flush-on-loss rule holds for every node the L1 depends on: the masters (they take the
//! writes), and with reads from replicas every node. The moment one of those streams is lost,
//! the watcher says [`StoreEvent::Lost`]; it says [`StoreEvent::Connected`] once they are all
//! up again. A node that becomes a master without a stream opened while it was a replica (a
//! replica the map did not list yet, or whose stream was down) may have taken writes we did
//! not hear, so the watcher says `Lost` then, and `Connected` once its stream is up. The slot
//! map is read every second, every 100 ms while a stream is down or a node fails to answer
//! (see [`super::topology`]). A slot that moves between masters we already hear from needs
//! nothing more: both announce their side of the move (the source deletes, the target writes).
//!
//! What is left: a master cut off from us but not from its writers (a partition) takes
//! writes we do not hear until its stream misses a ping: at most 500 ms and a response
//! timeout. With reads from masters, a replica whose stream is down when it is promoted is
//! heard from once the map shows it as a master (at most a second later).
//!
//! [`ReadFrom::Replicas`]: crate::store::ReadFrom::Replicas

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::slot_map::{Node, NodeUrls, SlotMap};
use super::topology::{REFRESH_EVERY_IN_TROUBLE, Topology};
use crate::error::Result;
use crate::retry::Backoff;
use crate::store::{EventSink, ReadFrom, StoreEvent, StoreOptions, WatchGuard};

/// How often the tracking connection is pinged to notice a silent failure.
const PING_EVERY: Duration = Duration::from_millis(500);

/// Starts the watcher task (see [`spawn_watcher`]).
pub(super) fn watch(
    client: Client,
    prefixes: Vec<String>,
    describe: String,
    options: &StoreOptions,
    sink: EventSink,
) -> Option<WatchGuard> {
    let events = sink.clone();
    let stream: StreamSink = Arc::new(move |state| {
        events(match state {
            Stream::Up { .. } => StoreEvent::Connected,
            Stream::Down => StoreEvent::Lost,
        })
    });
    start(client, prefixes, describe, options, sink, stream, false)
}

/// What a tracking stream says of itself.
enum Stream {
    /// Tracking is on; `replica` if the node said it was a replica after that.
    Up { replica: bool },
    /// The connection is lost: writes may go unannounced.
    Down,
}

type StreamSink = Arc<dyn Fn(Stream) + Send + Sync>;

/// Runs a watcher task: on the caller's tokio runtime, or, for an enricher built outside of
/// any (before its runtime starts, or in a synchronous part of the program), on a runtime of
/// its own on a thread of its own, which ends with the task. Either way the enricher is
/// watched: a watch left unstarted would have it cache with nothing to tell it of writes.
/// `None` only if no thread can be started.
fn spawn_watcher(task: impl Future<Output = ()> + Send + 'static) -> Option<WatchGuard> {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        return Some(WatchGuard::new(runtime.spawn(task).abort_handle()));
    }
    let runtime = (tokio::runtime::Builder::new_current_thread().enable_all())
        .build()
        .ok()?;
    let task = runtime.spawn(task);
    let guard = WatchGuard::new(task.abort_handle());
    std::thread::Builder::new()
        .name("enrich-tracking".into())
        .spawn(move || {
            // Ends when the guard aborts the task.
            let _ = runtime.block_on(task);
        })
        .ok()?;
    Some(guard)
}

/// Starts a watcher task that passes writes to `sink` and its own state to `stream` (see
/// [`spawn_watcher`]).
fn start(
    client: Client,
    prefixes: Vec<String>,
    describe: String,
    options: &StoreOptions,
    sink: EventSink,
    stream: StreamSink,
    ask_role: bool,
) -> Option<WatchGuard> {
    let watcher = Watcher {
        client,
        prefixes,
        describe,
        connect_timeout: options.connect_timeout_value(),
        response_timeout: options.response_timeout_value(),
        sink,
        stream,
        ask_role,
    };
    spawn_watcher(watcher.run())
}

struct Watcher {
    client: Client,
    /// The key prefixes of every kind of record; none is a prefix of another.
    prefixes: Vec<String>,
    describe: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    sink: EventSink,
    stream: StreamSink,
    /// Whether to ask the node's role once tracking is on (cluster nodes).
    ask_role: bool,
}

impl Watcher {
    async fn run(self) {
        // A lost stream is reopened quickly at first: until it is, the L1 is bypassed.
        let mut backoff = Backoff::between(Duration::from_millis(20), Duration::from_secs(1));
        // Each outage is logged once when it starts and once when it ends, not per retry.
        let mut down = false;
        loop {
            match self.connect().await {
                Ok((conn, pushes, replica)) => {
                    (self.stream)(Stream::Up { replica });
                    if down {
                        tracing::warn!(store = %self.describe, "invalidation stream restored");
                    }
                    backoff.reset();
                    let why = self.listen(conn, pushes).await;
                    (self.stream)(Stream::Down);
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

    /// Opens a RESP3 connection and turns tracking on for the namespace's keys; whether the
    /// node then said it was a replica.
    async fn connect(
        &self,
    ) -> Result<(
        MultiplexedConnection,
        mpsc::UnboundedReceiver<PushInfo>,
        bool,
    )> {
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
        // Asked after tracking is on: a node that is a replica now announces every write it
        // makes from here on, including those it makes once promoted.
        let replica = self.ask_role && self.replica(&mut conn).await.map_err(fault)?;
        Ok((conn, pushes, replica))
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
                    // A cluster node is asked its role as the ping: one that is a replica now
                    // (a master demoted by a failover) is heard from its first write if it is
                    // promoted again.
                    let ping = if self.ask_role {
                        self.replica(&mut conn).await.map(|replica| {
                            if replica {
                                (self.stream)(Stream::Up { replica });
                            }
                        })
                    } else {
                        redis::cmd("PING").exec_async(&mut conn).await
                    };
                    if let Err(err) = ping {
                        return format!("ping failed: {err}");
                    }
                }
            }
        }
    }

    /// Whether the node says it is a replica (`ROLE`). A user without the right to ask counts
    /// its nodes as masters: a promotion then flushes the L1, which is always safe.
    async fn replica(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
        let role: redis::RedisResult<Vec<Value>> = redis::cmd("ROLE").query_async(conn).await;
        match role {
            Ok(role) => Ok(matches!(role.first(), Some(Value::BulkString(r)) if r == b"slave")),
            // Refused: the connection is alive, the answer unknown.
            Err(err) if err.code().is_some() => {
                tracing::debug!(store = %self.describe, "cannot ask the node's role: {err}");
                Ok(false)
            }
            Err(err) => Err(err),
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

/// How long the stream of a node is kept after the node left the map.
const STREAM_KEPT: Duration = Duration::from_secs(10);

/// Starts the cluster watcher task (one tracking connection per node; see
/// [`spawn_watcher`]).
pub(super) fn watch_cluster(
    topology: Arc<Topology>,
    nodes: NodeUrls,
    prefixes: Vec<String>,
    options: &StoreOptions,
    sink: EventSink,
) -> Option<WatchGuard> {
    let watcher = ClusterWatcher {
        topology,
        nodes,
        prefixes,
        options: options.clone(),
        every_node: options.read_from_value() == ReadFrom::Replicas,
        sink,
        health: Arc::new(Mutex::new(Health::default())),
    };
    spawn_watcher(watcher.run())
}

struct ClusterWatcher {
    topology: Arc<Topology>,
    nodes: NodeUrls,
    prefixes: Vec<String>,
    options: StoreOptions,
    /// Whether every node's stream is needed (reads from replicas), or only the masters'.
    every_node: bool,
    sink: EventSink,
    health: Arc<Mutex<Health>>,
}

/// The state of one node's stream.
#[derive(Default)]
struct NodeStream {
    up: bool,
    /// Up since a moment the node said it was a replica: every write it has made as a master
    /// was announced.
    since_replica: bool,
}

/// The streams of the nodes, which of them the L1 needs, and whether we last said
/// `Connected`.
#[derive(Default)]
struct Health {
    streams: HashMap<Node, NodeStream>,
    masters: Vec<Node>,
    needed: Vec<Node>,
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

    /// Says `Connected` when every needed stream is up, `Lost` when one is not.
    fn settle(&mut self, sink: &EventSink) {
        let up = (self.needed.iter()).all(|n| self.streams.get(n).is_some_and(|s| s.up));
        if !up {
            self.lose(sink);
        } else if !self.announced {
            self.announced = true;
            sink(StoreEvent::Connected);
        }
    }

    /// Takes in a new map: its nodes, its masters, and which streams are needed; the streams
    /// of nodes not in `kept` are gone.
    fn follow(&mut self, map: &SlotMap, kept: &[Node], every_node: bool, sink: &EventSink) {
        let (nodes, masters) = (map.nodes(), map.masters());
        // A node that became a master was heard from its first write as a master only if its
        // stream was opened while it was a replica and stayed up since; otherwise what it
        // wrote before we knew may be cached, stale.
        let first = self.masters.is_empty();
        let unheard = (masters.iter())
            .filter(|m| !self.masters.contains(m))
            .any(|m| !self.streams.get(m).is_some_and(|s| s.up && s.since_replica));
        if unheard && !first {
            tracing::debug!(
                ?masters,
                "a new master was not heard from as a replica: flushing"
            );
            self.lose(sink);
        }
        self.streams.retain(|node, _| kept.contains(node));
        for node in kept {
            self.streams.entry(node.clone()).or_default();
        }
        self.needed = if every_node { nodes } else { masters.clone() };
        self.masters = masters;
        self.settle(sink);
    }
}

impl ClusterWatcher {
    async fn run(self) {
        let mut watchers: HashMap<Node, WatchGuard> = HashMap::new();
        // When each node was last in the map. Nodes' views of a replica that just synced or
        // changed roles differ for a moment, so a refresh may leave it out and the next put it
        // back: its stream is kept through that, and dropped only once it has been gone a
        // while.
        let mut seen: HashMap<Node, Instant> = HashMap::new();
        loop {
            let map = self.topology.current();
            let now = Instant::now();
            for node in map.nodes() {
                seen.insert(node, now);
            }
            seen.retain(|_, at| now.duration_since(*at) < STREAM_KEPT);
            let kept: Vec<Node> = seen.keys().cloned().collect();
            let down = {
                let mut health = crate::sync::lock(&self.health);
                health.follow(&map, &kept, self.every_node, &self.sink);
                !health.announced
            };
            watchers.retain(|node, _| seen.contains_key(node));
            for node in kept {
                if !watchers.contains_key(&node)
                    && let Some(guard) = self.watch_node(&node)
                {
                    watchers.insert(node, guard);
                }
            }
            if down {
                // A stream is down: a failover is likely under way.
                self.topology.trouble();
            }
            // The store reads the map in the background and wakes us on a change; the timer
            // only catches streams that came up or went down meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY_IN_TROUBLE) => {}
                _ = self.topology.changed.notified() => {}
            }
        }
    }

    /// Starts the tracking connection of one node; its state counts towards the cluster's,
    /// its announcements pass straight on.
    fn watch_node(&self, node: &Node) -> Option<WatchGuard> {
        let client = match super::tls::client(&self.nodes.url(node), &self.nodes.describe(node)) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(%node, "cannot watch this node: {err}");
                return None;
            }
        };
        let health = self.health.clone();
        let sink = self.sink.clone();
        let me = node.clone();
        let stream: StreamSink = Arc::new(move |state| {
            let mut health = crate::sync::lock(&health);
            if let Some(stream) = health.streams.get_mut(&me) {
                *stream = match state {
                    Stream::Up { replica } => NodeStream {
                        up: true,
                        since_replica: replica,
                    },
                    Stream::Down => NodeStream::default(),
                };
            }
            health.settle(&sink);
        });
        start(
            client,
            self.prefixes.clone(),
            self.nodes.describe(node),
            &self.options,
            self.sink.clone(),
            stream,
            true,
        )
    }
}
