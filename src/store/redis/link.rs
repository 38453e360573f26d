//! The connection a single-node Redis store writes through, kept apart from its reads.
//!
//! Apart, because Redis answers one connection's commands in order: a write the server holds
//! back (`CLIENT PAUSE WRITE`, which is what a failover does) would hold every read queued
//! behind it on a shared connection. Reads keep a connection of their own and go on.
//!
//! Not a `ConnectionManager`, because a write's error must say whether the write was sent: the
//! manager reports a failed reconnect and a lost answer alike. Here connecting is a step of its
//! own, so a failure there means nothing was sent ([`ErrorKind::Unavailable`]), and only a
//! failure after sending is [`ErrorKind::OutcomeUnknown`]. A connection that has not been used
//! for a while is pinged before a write, so a server that restarted meanwhile costs a
//! reconnect, not a write of unknown outcome.
//!
//! [`ErrorKind::Unavailable`]: crate::ErrorKind::Unavailable
//! [`ErrorKind::OutcomeUnknown`]: crate::ErrorKind::OutcomeUnknown

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A connection idle for longer than this is pinged before it carries a write.
const IDLE: Duration = Duration::from_secs(1);

/// One multiplexed connection, opened on first use and again after a failure.
pub(super) struct WriteLink {
    client: Client,
    config: AsyncConnectionConfig,
    current: tokio::sync::Mutex<Link>,
    /// How many attempts to connect have failed.
    failures: AtomicU64,
    /// When the connection last answered, in milliseconds since `epoch`.
    answered: AtomicU64,
    epoch: Instant,
}

/// The connection, if one is open, and how the last attempt to open one failed.
#[derive(Default)]
struct Link {
    conn: Option<MultiplexedConnection>,
    failed: Option<redis::RedisError>,
}

impl WriteLink {
    pub(super) fn new(client: Client, config: AsyncConnectionConfig) -> WriteLink {
        WriteLink {
            client,
            config,
            current: tokio::sync::Mutex::new(Link::default()),
            failures: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A connection that works, as far as can be known without sending the write. An error
    /// here means that nothing was sent.
    ///
    /// Writes that queued behind an attempt to connect share its failure: each trying in turn,
    /// against a server whose handshake stalls (one with a password or TLS, paused), the n-th
    /// write would wait out n connect timeouts.
    pub(super) async fn connection(&self) -> RedisResult<Recorded<'_>> {
        let failures = self.failures.load(Ordering::Acquire);
        let mut current = self.current.lock().await;
        if let Some(conn) = current.conn.as_mut() {
            if self.since_answer() < IDLE {
                return Ok(self.recorded(conn.clone()));
            }
            if redis::cmd("PING").exec_async(conn).await.is_ok() {
                self.mark_answered();
                return Ok(self.recorded(conn.clone()));
            }
            current.conn = None;
        }
        if self.failures.load(Ordering::Acquire) != failures
            && let Some(failed) = &current.failed
        {
            return Err(failed.clone());
        }
        match (self.client)
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
        {
            Ok(conn) => {
                self.mark_answered();
                current.failed = None;
                current.conn = Some(conn.clone());
                Ok(self.recorded(conn))
            }
            Err(err) => {
                current.failed = Some(err.clone());
                self.failures.fetch_add(1, Ordering::AcqRel);
                Err(err)
            }
        }
    }

    fn recorded(&self, conn: MultiplexedConnection) -> Recorded<'_> {
        Recorded { conn, link: self }
    }

    /// Records the outcome of a command: an answer (even an error reply) proves the connection
    /// alive; a lost one drops it, so the next write connects afresh.
    async fn record<T>(&self, result: &RedisResult<T>) {
        match result {
            Err(err) if err.is_unrecoverable_error() || err.is_timeout() => {
                self.current.lock().await.conn = None;
            }
            _ => self.mark_answered(),
        }
    }

    fn since_answer(&self) -> Duration {
        let at = Duration::from_millis(self.answered.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(at)
    }

    fn mark_answered(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.answered.fetch_max(now, Ordering::Relaxed);
    }
}

/// A connection from [`WriteLink::connection`], which tells the link how each command went.
pub(super) struct Recorded<'a> {
    conn: MultiplexedConnection,
    link: &'a WriteLink,
}

impl ConnectionLike for Recorded<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.link.record(&result).await;
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.link.record(&result).await;
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
