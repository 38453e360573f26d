//! [`UserSource`]: where an enricher reads users from. Every [`UserStore`](super::UserStore) is
//! one; a service whose users live in its own database implements this trait alone.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::{EventSink, WatchGuard};
use crate::collection::{EntryJson, EntryKey};
use crate::error::{Error, ErrorKind, Result};
use crate::record::Key;
use crate::record::Record;
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

    /// Reads many collection entries in one round trip, with an answer or an error for each.
    ///
    /// A source that keeps no collections need not implement it: every entry is then missing,
    /// and `SO:` references become Stream's `ReferenceNotFound`.
    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        vec![Ok(None); keys.len()]
    }

    /// Reads records of every kind in one go: what the resolver calls once per batch of a
    /// page's misses. The default asks [`UserSource::get_many_each`] for the users and
    /// [`UserSource::get_entries_each`] for the entries, side by side; the stores of this crate
    /// answer both kinds in one round trip (one `MGET` on Redis, one per node on a cluster).
    async fn get_records_each(&self, keys: &[Key]) -> Vec<Result<Option<Record>>> {
        let (mut users, mut entries) = (Vec::new(), Vec::new());
        for key in keys {
            match key {
                Key::User(id) => users.push(id.clone()),
                Key::Entry(key) => entries.push(key.clone()),
            }
        }
        let (asked_users, asked_entries) = (users.len(), entries.len());
        let (users, entries) = match (users.is_empty(), entries.is_empty()) {
            (false, true) => (self.get_many_each(&users).await, Vec::new()),
            (true, false) => (Vec::new(), self.get_entries_each(&entries).await),
            _ => {
                futures::join!(self.get_many_each(&users), self.get_entries_each(&entries))
            }
        };
        if users.len() != asked_users || entries.len() != asked_entries {
            let err = Error::new(
                ErrorKind::Internal,
                format!(
                    "{} answered {} of {} ids",
                    self.describe(),
                    users.len() + entries.len(),
                    keys.len()
                ),
            );
            return vec![Err(err); keys.len()];
        }
        merge_answers(keys, users, entries)
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

/// [`UserSource::get_many_each`] of a source whose one read is
/// [`UserSource::get_records_each`].
#[cfg(feature = "redis")]
pub(crate) async fn users_through_records<S: UserSource + ?Sized>(
    source: &S,
    ids: &[UserId],
) -> Vec<Result<Option<UserJson>>> {
    let keys: Vec<Key> = ids.iter().cloned().map(Key::User).collect();
    (source.get_records_each(&keys).await.into_iter())
        .map(|found| found.map(|record| record.and_then(Record::into_user)))
        .collect()
}

/// [`UserSource::get_entries_each`] of a source whose one read is
/// [`UserSource::get_records_each`].
#[cfg(any(feature = "redis", feature = "file"))]
pub(crate) async fn entries_through_records<S: UserSource + ?Sized>(
    source: &S,
    keys: &[EntryKey],
) -> Vec<Result<Option<EntryJson>>> {
    let keys: Vec<Key> = keys.iter().cloned().map(Key::Entry).collect();
    (source.get_records_each(&keys).await.into_iter())
        .map(|found| found.map(|record| record.and_then(Record::into_entry)))
        .collect()
}

/// Puts the answers for the users and for the entries of `keys` (one each, in order) back in
/// the order of `keys`.
pub(crate) fn merge_answers(
    keys: &[Key],
    users: Vec<Result<Option<UserJson>>>,
    entries: Vec<Result<Option<EntryJson>>>,
) -> Vec<Result<Option<Record>>> {
    let (mut users, mut entries) = (users.into_iter(), entries.into_iter());
    keys.iter()
        .map(|key| match key {
            Key::User(_) => (users.next())
                .expect("one answer per user")
                .map(|found| found.map(Record::User)),
            Key::Entry(_) => (entries.next())
                .expect("one answer per entry")
                .map(|found| found.map(Record::Entry)),
        })
        .collect()
}

/// A shared handle to any source.
pub type SharedSource = Arc<dyn UserSource>;
