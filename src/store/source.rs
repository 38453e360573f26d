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
/// The resolver calls [`UserSource::get_many_each`] once per batch of ids the L1 could not
/// answer (a page's misses, split by
/// [`EnricherBuilder::max_batch_size`](crate::EnricherBuilder::max_batch_size)); the enricher
/// puts its L1, the coalescing of loads in flight and the caching of misses around it. Build an
/// enricher over a source with [`Enricher::from_source`](crate::Enricher::from_source).
///
/// A source answers `Ok(None)` only for a user that does not exist: that answer is cached as a
/// miss. A failure to read (a database down, a timeout) must be an `Err`, with a kind for which
/// [`Error::is_store_fault`](crate::Error::is_store_fault) holds, such as
/// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable): it is never cached, and pages
/// fail with it (or show `ReferenceUnavailable`, as the enricher is configured).
///
/// # Example: a source over the service's own rows
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> enrich::Result<()> {
/// use std::collections::HashMap;
/// use std::sync::Arc;
///
/// use enrich::{Depth, Enricher, Timestamp, UserId, UserJson, UserSource, async_trait};
/// use serde_json::{Value, json};
///
/// /// Users as a service keeps them: id → (data, created_at, updated_at).
/// #[derive(Debug)]
/// struct Accounts(HashMap<String, (Value, Timestamp, Timestamp)>);
///
/// #[async_trait]
/// impl UserSource for Accounts {
///     async fn get_many(&self, ids: &[UserId]) -> enrich::Result<Vec<Option<UserJson>>> {
///         // One query for the whole batch, such as `SELECT … WHERE id = ANY($1)`.
///         ids.iter()
///             .map(|id| match self.0.get(id.as_str()) {
///                 Some((data, created, updated)) => {
///                     UserJson::new(id, data.clone(), *created, *updated).map(Some)
///                 }
///                 None => Ok(None),
///             })
///             .collect()
///     }
///
///     fn describe(&self) -> String {
///         "accounts".to_string()
///     }
/// }
///
/// let at = Timestamp::parse("2024-05-01T12:00:00Z")?;
/// let accounts = Accounts(HashMap::from([("alice".to_string(), (json!({"name": "Alice"}), at, at))]));
/// let enricher = Enricher::from_source(Arc::new(accounts));
///
/// let mut page = vec![json!({"actor": "SU:alice"}), json!({"actor": "SU:bob"})];
/// enricher.enrich_values(&mut page, Depth::TopLevel).await?;
/// assert_eq!(page[0]["actor"]["data"]["name"], "Alice");
/// assert_eq!(page[1]["actor"]["error"], "ReferenceNotFound");
/// # Ok(())
/// # }
/// ```
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
