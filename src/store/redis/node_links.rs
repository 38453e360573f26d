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
//! timeout, and nobody else anything; and connecting is a step of its own ([`NodeLinks::connect`]),
//! so a caller knows whether its write was sent, and may give up a connection that is slow
//! to be made (to a node that hangs) when the map names another master.

use std::collections::HashMap;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Pipeline, RedisResult, Value};

use super::topology::{Node, NodeUrls};
use crate::store::StoreOptions;

/// One multiplexed connection per node, opened on first use and again after a failure.
pub(super) struct NodeLinks {
    urls: NodeUrls,
    config: AsyncConnectionConfig,
    /// Whether each connection says `READONLY` first, so that a replica answers reads of its
    /// master's slots instead of redirecting them.
    read_only: bool,
    links: std::sync::Mutex<HashMap<Node, MultiplexedConnection>>,
}

impl NodeLinks {
    pub(super) fn new(urls: NodeUrls, options: &StoreOptions) -> NodeLinks {
        NodeLinks {
            urls,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(options.connect_timeout_value()))
                .set_response_timeout(Some(options.write_response_timeout())),
            read_only: false,
            links: std::sync::Mutex::new(HashMap::new()),
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
            links: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A connection to `node`, opened if there is none; an error here means that nothing was
    /// sent. A caller may drop the future while the node is slow to answer (a node that hangs
    /// accepts the connection and then never answers its setup): nothing is sent then either.
    pub(super) async fn connect<'a>(&'a self, node: &'a Node) -> RedisResult<Link<'a>> {
        let cached = crate::sync::lock(&self.links).get(node).cloned();
        let conn = match cached {
            Some(conn) => conn,
            None => self.open(node).await?,
        };
        Ok(Link {
            links: self,
            node,
            conn,
        })
    }

    async fn open(&self, node: &Node) -> RedisResult<MultiplexedConnection> {
        // Connected without the lock: a node that does not answer (a partition) must not hold
        // up the others for the connect timeout.
        let client =
            super::tls::client(&self.urls.url(node), &self.urls.describe(node)).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot reach a cluster node",
                    e.to_string(),
                ))
            })?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        if self.read_only {
            redis::cmd("READONLY").exec_async(&mut conn).await?;
        }
        let mut links = crate::sync::lock(&self.links);
        Ok(links.entry(node.clone()).or_insert(conn).clone())
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
    conn: MultiplexedConnection,
}

impl Link<'_> {
    /// Sends `pipe` and answers each command's reply, a refusal among them; an error means
    /// the answers were lost, and the commands may have run.
    pub(super) async fn send(mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let sent = self.conn.req_packed_commands(pipe, 0, pipe.len()).await;
        if sent.is_err() {
            // The next batch connects afresh.
            crate::sync::lock(&self.links.links).remove(self.node);
        }
        sent
    }
}
