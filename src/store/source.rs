//! [`UserSource`]: where an enricher reads users from. Every [`UserStore`](super::UserStore) is
//! one; a service whose users live in its own database implements this trait alone.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::{EventSink, WatchGuard};
use crate::error::Result;
use crate::user::{UserId, UserJson};

/// Where an enricher reads users from: one batched read, and maybe announcements of writes.
///
/// The resolver calls [`UserSource::get_many_each`] once per page for the ids the L1 could
/// not answer; the enricher puts its L1, the coalescing of loads in flight and the caching of
/// misses around it.
///
/// A source answers `Ok(None)` only for a user that does not exist: that answer is cached as a
/// miss. A failure to read (a database down, a timeout) must be an `Err`, with a kind for which
/// [`Error::is_store_fault`](crate::Error::is_store_fault) holds, such as
/// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable): it is never cached, and pages
/// fail with it (or show `ReferenceUnavailable`, as the enricher is configured).
#[async_trait]
pub trait UserSource: Send + Sync + fmt::Debug + 'static {
    /// Reads many users in one round trip: one answer per id, in order, `None` for a user that
    /// does not exist.
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>>;

    /// Like [`UserSource::get_many`], but with an answer or an error for each id on its own:
    /// a store spread over several servers (Redis Cluster) still answers the ids of the servers
    /// that are up when one is down. One round trip per server; an error is never `Ok(None)`.
    async fn get_many_each(&self, ids: &[UserId]) -> Vec<Result<Option<UserJson>>> {
        match self.get_many(ids).await {
            Ok(found) => found.into_iter().map(Ok).collect(),
            Err(err) => vec![Err(err); ids.len()],
        }
    }

    /// Where the source is, for messages: `redis://127.0.0.1:6379`, `file:./enrich.db`. Never
    /// includes a password.
    fn describe(&self) -> String;

    /// Starts telling `sink` of every write to this source's users, by anyone, for as long as
    /// the returned guard lives. `None` if the source cannot: then a write made outside this
    /// process is seen only when a cached entry's TTL runs out (or when the process calls
    /// [`Enricher::invalidate`](crate::Enricher::invalidate)).
    fn watch(&self, sink: EventSink) -> Option<WatchGuard> {
        let _ = sink;
        None
    }
}

/// A shared handle to any source.
pub type SharedSource = Arc<dyn UserSource>;
