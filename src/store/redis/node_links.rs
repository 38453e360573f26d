//! Direct connections to each master of a cluster, for the pipelines of batch writes.
//!
//! Not through the cluster connection, because it treats a pipeline as one request: if one of
//! its commands is answered `MOVED` (a slot that moved since our map was read), it sends the
//! whole pipeline again to the node named, and again, so the commands that had run would run
//! twice. Over a plain connection each command's answer is its own: the store sends the
//! refused ones again one by one, through the cluster connection, which follows redirects
//! safely for a single command (one that was refused was not run).

use std::collections::HashMap;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Pipeline, RedisResult, Value};

use super::topology::{Node, NodeUrls};
use crate::store::StoreOptions;

/// One multiplexed connection per master, opened on first use and again after a failure.
pub(super) struct NodeLinks {
    urls: NodeUrls,
    config: AsyncConnectionConfig,
    links: tokio::sync::Mutex<HashMap<Node, MultiplexedConnection>>,
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
            links: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn connection(&self, node: &Node) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.links.lock().await.get(node) {
            return Ok(conn.clone());
        }
        // Connected without the lock: a node that does not answer (a partition) must not hold
        // up the writes to the others for the connect timeout.
        let client =
            super::tls::client(&self.urls.url(node), &self.urls.describe(node)).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot reach a cluster node",
                    e.to_string(),
                ))
            })?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        self.links.lock().await.insert(node.clone(), conn.clone());
        Ok(conn)
    }

    /// Sends `pipe` to `node` and answers each command's reply, a refusal among them.
    pub(super) async fn send(&self, node: &Node, pipe: &Pipeline) -> Result<Vec<Value>, Failed> {
        let mut conn = self.connection(node).await.map_err(Failed::NotSent)?;
        match conn.req_packed_commands(pipe, 0, pipe.len()).await {
            Ok(values) => Ok(values),
            Err(err) => {
                // The next batch connects afresh.
                self.links.lock().await.remove(node);
                Err(Failed::Lost(err))
            }
        }
    }
}
