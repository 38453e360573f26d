//! Direct connections to each node of a cluster: for every write (a single one is a
//! pipeline of one), for the reads of a page, and for reading the slot map.
//!
//! Not through the cluster connection, because it treats a pipeline as one request: if one of
//! its commands is answered `MOVED` (a slot that moved since our map was read), it sends the
//! whole pipeline again to the node named, and again, so the commands that had run would run
//! twice. Over a plain connection each command's answer is its own: the store sends the
//! refused ones again one by one, through the cluster connection, which follows redirects
//! safely for a single command (one that was refused was not run).
//!
//! Single writes, reads and the slot map go this way too, because the cluster connection
//! retries a command that timed out on the same node, and reads its own map from one node
//! after another: a master that hangs would cost several response timeouts per read, take
//! write after write until the crate's own map had changed, and hold up everything else while
//! it is asked for the map. Here a node that does not answer costs its caller one response
//! timeout, and nobody else anything; and connecting is a step of its own
//! ([`NodeLinks::connect`]), so a caller knows whether its write was sent, and may give up a
//! connection that is slow to be made (to a node that hangs) when the map names another
//! master.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Pipeline, RedisResult, Value};

use super::slot_map::{Node, NodeUrls};
use crate::store::StoreOptions;

/// One multiplexed connection per node, opened on first use and again after a failure.
pub(super) struct NodeLinks {
    urls: NodeUrls,
    config: AsyncConnectionConfig,
    /// Whether each connection says `READONLY` first, so that a replica answers reads of its
    /// master's slots instead of redirecting them.
    read_only: bool,
    links: Arc<Mutex<HashMap<Node, Slot>>>,
    /// Numbers each connection, so that a failure drops the one it happened on, not a newer.
    opened: AtomicU64,
}

/// An attempt to connect, shared by every caller that waits for it.
type Opening = Shared<BoxFuture<'static, RedisResult<MultiplexedConnection>>>;

/// What a node has: a connection, or the one attempt to open it that every caller waits for,
/// so that a node that hangs (accepting connections, never answering them) costs one socket
/// at a time, however many reads and writes are waiting for it. The attempt is a task of its
/// own, which puts what it opened in the slot: one whose callers all gave up (a read moved to
/// another node, a slot map read that had heard enough) still ends within the connect
/// timeout, and is never found half done, its timeout long past, by the next caller.
enum Slot {
    Open(u64, MultiplexedConnection),
    Opening(u64, Opening),
}

impl NodeLinks {
    pub(super) fn new(urls: NodeUrls, options: &StoreOptions) -> NodeLinks {
        NodeLinks {
            urls,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(options.connect_timeout_value()))
                .set_response_timeout(Some(options.write_response_timeout())),
            read_only: false,
            links: Arc::default(),
            opened: AtomicU64::new(0),
        }
    }

    /// Links for reads (and the slot map): an answer's time is the response timeout, and with
    /// `read_only` each connection says `READONLY` first, for reads from replicas.
    pub(super) fn for_reads(urls: NodeUrls, options: &StoreOptions, read_only: bool) -> NodeLinks {
        NodeLinks {
            urls,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(options.connect_timeout_value()))
                .set_response_timeout(Some(options.response_timeout_value())),
            read_only,
            links: Arc::default(),
            opened: AtomicU64::new(0),
        }
    }

    /// A connection to `node`, opened if there is none (or joining the attempt under way);
    /// an error here means that nothing was sent. A caller may drop the future while the node
    /// is slow to answer (a node that hangs accepts the connection and then never answers its
    /// setup): nothing is sent then either.
    pub(super) async fn connect<'a>(&'a self, node: &'a Node) -> RedisResult<Link<'a>> {
        let (id, opening) = {
            let mut links = crate::sync::lock(&self.links);
            match links.get(node) {
                Some(Slot::Open(id, conn)) => {
                    let (id, conn) = (*id, conn.clone());
                    return Ok(self.link(node, id, conn));
                }
                Some(Slot::Opening(id, opening)) => (*id, opening.clone()),
                None => {
                    let id = self.opened.fetch_add(1, Ordering::Relaxed);
                    let opening = self.spawn_open(node, id);
                    links.insert(node.clone(), Slot::Opening(id, opening.clone()));
                    (id, opening)
                }
            }
        };
        Ok(self.link(node, id, opening.await?))
    }

    /// Starts connecting to `node`, as attempt `id`, without the lock (a node that does not
    /// answer must not hold up the others for the connect timeout), in a task that settles
    /// the slot: the connection, or none for the next caller to try afresh.
    fn spawn_open(&self, node: &Node, id: u64) -> Opening {
        let (open, links, node) = (self.open(node), self.links.clone(), node.clone());
        let task = tokio::spawn(async move {
            let opened = open.await;
            let mut links = crate::sync::lock(&links);
            if matches!(links.get(&node), Some(Slot::Opening(at, _)) if *at == id) {
                match &opened {
                    Ok(conn) => links.insert(node, Slot::Open(id, conn.clone())),
                    Err(_) => links.remove(&node),
                };
            }
            opened
        });
        let joined = async move {
            task.await.unwrap_or_else(|e| {
                Err(redis::RedisError::from(std::io::Error::other(
                    e.to_string(),
                )))
            })
        };
        joined.boxed().shared()
    }

    fn link<'a>(&'a self, node: &'a Node, id: u64, conn: MultiplexedConnection) -> Link<'a> {
        Link {
            links: self,
            node,
            id,
            conn,
        }
    }

    /// Opens a connection to `node`, for everyone waiting for one.
    fn open(
        &self,
        node: &Node,
    ) -> impl Future<Output = RedisResult<MultiplexedConnection>> + Send + 'static {
        let (url, describe) = (self.urls.url(node), self.urls.describe(node));
        let (config, read_only) = (self.config.clone(), self.read_only);
        async move {
            // Made here, not under the lock: a TLS client loads its roots.
            let client = super::tls::client(&url, &describe).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot reach a cluster node",
                    e.to_string(),
                ))
            })?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            if read_only {
                redis::cmd("READONLY").exec_async(&mut conn).await?;
            }
            Ok(conn)
        }
    }

    /// Sends `pipe` to `node` and answers each command's reply, a refusal among them; for a
    /// caller to whom a pipeline not sent and one whose answers were lost are the same (a
    /// read).
    pub(super) async fn send(&self, node: &Node, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        self.connect(node).await?.send(pipe).await
    }
}

/// A connection to one node, ready: what is sent on it may run.
pub(super) struct Link<'a> {
    links: &'a NodeLinks,
    node: &'a Node,
    id: u64,
    conn: MultiplexedConnection,
}

impl Link<'_> {
    /// Sends `pipe` and answers each command's reply, a refusal among them; an error means
    /// the answers were lost, and the commands may have run.
    pub(super) async fn send(mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let sent = self.conn.req_packed_commands(pipe, 0, pipe.len()).await;
        if sent.is_err() {
            // The next caller connects afresh (unless another did already).
            let mut links = crate::sync::lock(&self.links.links);
            if matches!(links.get(self.node), Some(Slot::Open(id, _)) if *id == self.id) {
                links.remove(self.node);
            }
        }
        sent
    }
}
