//! Direct connections to each node of a cluster: for the pipelines of batch writes, for the
//! reads of a page, and for reading the slot map.
//!
//! Not through the cluster connection, because it treats a pipeline as one request: if one of
//! its commands is answered `MOVED` (a slot that moved since our map was read), it sends the
//! whole pipeline again to the node named, and again, so the commands that had run would run
//! twice. Over a plain connection each command's answer is its own: the store sends the
//! refused ones again one by one, through the cluster connection, which follows redirects
//! safely for a single command (one that was refused was not run).
//!
//! Reads and the slot map go this way too, because the cluster connection retries a command
//! that timed out on the same node, and reads its own map from one node after another: a
//! master that hangs would cost several response timeouts per read, and hold up everything
//! else while it is asked for the map. Here a node that does not answer costs its caller one
//! response timeout, and nobody else anything.

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

/// Why a pipeline did not get its answers.
pub(super) enum Failed {
    /// No connection to the node could be made: nothing was sent.
    NotSent(redis::RedisError),
    /// It was sent, and its answers were lost: its commands may have run.
    Lost(redis::RedisError),
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

    async fn connection(&self, node: &Node) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = crate::sync::lock(&self.links).get(node) {
            return Ok(conn.clone());
        }
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

    /// Sends `pipe` to `node` and answers each command's reply, a refusal among them.
    pub(super) async fn send(&self, node: &Node, pipe: &Pipeline) -> Result<Vec<Value>, Failed> {
        let mut conn = self.connection(node).await.map_err(Failed::NotSent)?;
        match conn.req_packed_commands(pipe, 0, pipe.len()).await {
            Ok(values) => Ok(values),
            Err(err) => {
                // The next batch connects afresh.
                crate::sync::lock(&self.links).remove(node);
                Err(Failed::Lost(err))
            }
        }
    }
}
