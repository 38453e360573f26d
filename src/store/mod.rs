//! Where users live: [`UserSource`], what an enricher reads from (one batched read, maybe
//! announcements of writes); [`UserStore`], a source that also writes, and its backends.
//!
//! | URL | backend | for |
//! |---|---|---|
//! | `redis://[user:pass@]host:port[/db]`, `rediss://…` | `RedisStore` (feature `redis`; `tls` for `rediss`) | production, shared by many processes |
//! | `redis+cluster://[user:pass@]host:port[,host:port…]`, `rediss+cluster://…` | `ClusterStore` (feature `redis`; `tls` for `rediss`) | when one Redis node is not enough |
//! | `file:PATH` | `FileStore` (feature `file`) | the CLI's zero-setup default, `file:./enrich.db` |
//! | `memory:` | [`MemoryStore`] | library users and tests |
//!
//! Every backend writes and hands out the same [`UserJson`] bytes, and answers
//! [`UserSource::get_many`] in one round trip: that is the call the resolver makes once per
//! page. A service that keeps its users elsewhere implements [`UserSource`] over its own
//! database.
//!
//! - `source`: the [`UserSource`] trait; `watch`: the announcements of writes a source may
//!   make ([`StoreEvent`]);
//! - `options` and `url`: how a store is opened ([`open`]);
//! - `memory`, `file`, `redis/`: the backends.

#[cfg(feature = "file")]
mod file;
mod memory;
mod options;
#[cfg(feature = "redis")]
mod redis;
mod source;
mod url;
mod watch;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

#[cfg(feature = "file")]
pub use self::file::FileStore;
pub use self::memory::MemoryStore;
pub use self::options::{
    DEFAULT_FILE_CACHE, DEFAULT_NAMESPACE, DEFAULT_WAIT_TIMEOUT, ReadFrom, StoreOptions,
};
#[cfg(feature = "redis")]
pub use self::redis::{ClusterStore, RedisStore};
#[cfg(any(feature = "redis", feature = "file"))]
pub(crate) use self::source::entries_through_records;
#[cfg(feature = "redis")]
pub(crate) use self::source::users_through_records;
pub use self::source::{SharedSource, UserSource};
pub use self::url::{DEFAULT_STORE_URL, StoreUrl, open};
pub use self::watch::{EventSink, StoreEvent, WatchGuard};
use crate::collection::{EntryJson, EntryKey, NewEntry, StoredEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// A user store with the semantics of Stream's Feeds v2 users API: a [`UserSource`] that also
/// writes.
///
/// Writes are atomic per user: two racing `add`s never both create, and an `update` never
/// loses `created_at`.
#[async_trait]
pub trait UserStore: UserSource {
    /// Creates `user`. If it exists: with `get_or_create`, returns the stored user untouched;
    /// without, fails with [`ErrorKind::Conflict`].
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added>;

    /// Replaces the data of an existing user, bumps `updated_at` and keeps `created_at`.
    async fn update(&self, user: &NewUser) -> Result<UserJson>;

    /// Removes a user; [`ErrorKind::NotFound`] if there is none.
    async fn delete(&self, id: &UserId) -> Result<()>;

    /// Writes many users in one round trip, in order. An existing user is skipped, or with
    /// `override_existing` replaced (keeping its `created_at` unless the import gives one).
    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>>;

    /// Reads one user; [`ErrorKind::NotFound`] if there is none.
    async fn get(&self, id: &UserId) -> Result<UserJson> {
        let mut found = self.get_many(std::slice::from_ref(id)).await?;
        found.pop().flatten().ok_or_else(|| not_found(id))
    }

    // Collection entries. Every backend of this crate keeps them beside its users, with the
    // same guarantees: atomic writes per entry, one serialized form, announcements of writes
    // (an entry's key in `StoreEvent::Changed` is `<collection>:<id>`). A store of another
    // crate that keeps none answers every entry write with `ErrorKind::InvalidInput`.

    /// Creates `entry`, stamped now; [`ErrorKind::Conflict`] if its key is taken.
    async fn add_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        Err(no_collections(self.describe(), entry.key()))
    }

    /// Replaces the data of an existing entry, bumps `updated_at`, keeps `created_at` and the
    /// owner; [`ErrorKind::NotFound`] if there is none.
    async fn update_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        Err(no_collections(self.describe(), entry.key()))
    }

    /// Removes an entry; [`ErrorKind::NotFound`] if there is none.
    async fn delete_entry(&self, key: &EntryKey) -> Result<()> {
        Err(no_collections(self.describe(), key))
    }

    /// [`UserStore::update_entry`] made only if `owner` owns the entry: what a user may do to
    /// its own entries. One owned by another user, or by none, is left as it is and answered
    /// [`ErrorKind::NotOwner`]; an absent one is [`ErrorKind::NotFound`]. The check and the
    /// write are one atomic operation on every backend of this crate, so the entry cannot be
    /// deleted and created again by another user in between.
    async fn update_owned_entry(&self, entry: &NewEntry, owner: &UserId) -> Result<EntryJson> {
        let _ = owner;
        Err(no_collections(self.describe(), entry.key()))
    }

    /// [`UserStore::delete_entry`] made only if `owner` owns the entry, in one atomic
    /// operation as [`UserStore::update_owned_entry`] is: another user's entry, or one of no
    /// user, is left and answered [`ErrorKind::NotOwner`]; an absent one is
    /// [`ErrorKind::NotFound`].
    async fn delete_owned_entry(&self, key: &EntryKey, owner: &UserId) -> Result<()> {
        let _ = owner;
        Err(no_collections(self.describe(), key))
    }

    /// Writes many entries in one round trip, in order: each is created, or replaces the
    /// existing entry keeping its `created_at` and owner. Answers the entries as stored.
    ///
    /// A batch is refused whole: if a stored record of one of its entries cannot be kept
    /// (corrupt), nothing of the batch is written, on every backend of this crate; on a Redis
    /// Cluster, whose writes cannot span slots, that holds for the entries of each slot (see
    /// [`UserStore::import_entries`] for what was written all the same).
    async fn upsert_entries(&self, entries: &[NewEntry]) -> Result<Vec<EntryJson>> {
        match entries.first() {
            Some(entry) => Err(no_collections(self.describe(), entry.key())),
            None => Ok(Vec::new()),
        }
    }

    /// Writes many imported entries in one round trip, in order, as
    /// [`UserStore::upsert_entries`] does, but stamped with the timestamps each carries (see
    /// [`ImportEntry::new`]): a replaced entry keeps its owner, and its `created_at` unless the
    /// import gives one. Answers the entries as stored. Refused whole as an upsert is.
    ///
    /// When it fails, the [`BatchError`] says which entry stopped the batch, when the store
    /// knows it, and how many of the batch were written all the same (none, except on a Redis
    /// Cluster): what an import reports. `?` turns it into the crate's [`Error`].
    async fn import_entries(&self, entries: &[ImportEntry]) -> Result<Vec<EntryJson>, BatchError> {
        match entries.first() {
            Some(import) => Err(BatchError {
                error: no_collections(self.describe(), import.entry().key()),
                at: Some(0),
                written: 0,
            }),
            None => Ok(Vec::new()),
        }
    }

    /// Removes many entries in one round trip; keys that do not exist are skipped. Answers how
    /// many existed.
    async fn delete_entries(&self, keys: &[EntryKey]) -> Result<u64> {
        match keys.first() {
            Some(key) => Err(no_collections(self.describe(), key)),
            None => Ok(0),
        }
    }

    /// Reads one entry with its owner; `None` if there is none.
    async fn get_stored_entry(&self, key: &EntryKey) -> Result<Option<StoredEntry>> {
        Err(no_collections(self.describe(), key))
    }

    /// Reads one entry; [`ErrorKind::NotFound`] if there is none.
    async fn get_entry(&self, key: &EntryKey) -> Result<EntryJson> {
        let mut found = self.get_entries_each(std::slice::from_ref(key)).await;
        found
            .pop()
            .unwrap_or(Ok(None))?
            .ok_or_else(|| entry_not_found(key))
    }
}

fn no_collections(store: String, key: &EntryKey) -> Error {
    Error::invalid(format!(
        "{store} keeps no collection entries (writing entry {key})"
    ))
}

/// The error for an entry that does not exist.
pub(crate) fn entry_not_found(key: &EntryKey) -> Error {
    Error::new(ErrorKind::NotFound, format!("entry {key:?} does not exist"))
}

/// The error for an entry that exists already.
pub(crate) fn entry_conflict(key: &EntryKey) -> Error {
    Error::new(ErrorKind::Conflict, format!("entry {key:?} already exists"))
}

/// The error for an entry that `owner` does not own (another user does, or none).
pub(crate) fn entry_not_owned(key: &EntryKey, owner: &UserId) -> Error {
    Error::new(
        ErrorKind::NotOwner,
        format!("entry {key:?} is not owned by user {owner:?}; it was left as it was"),
    )
}

/// A batch of entry writes that did not all succeed: see [`UserStore::import_entries`].
#[derive(Debug, Clone)]
pub struct BatchError {
    /// Why, naming the entry.
    pub error: Error,
    /// The position in the batch of the entry that stopped it, when the store knows it.
    pub at: Option<usize>,
    /// How many entries of the batch were written all the same: none where a batch is
    /// written whole or not at all; on a Redis Cluster, those of the slots (or nodes) that
    /// were written.
    pub written: u64,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

/// Displayed as its error, cause included (see [`Error`]): no `source`.
impl std::error::Error for BatchError {}

impl From<BatchError> for Error {
    /// The error alone, for callers to whom the batch's position and count do not matter.
    fn from(stopped: BatchError) -> Error {
        stopped.error
    }
}

/// The entries of a batch written each on its own, `each` in batch order: all of them, or
/// why the batch stopped: at `refused`, the entry whose stored record refused it whole, else
/// at the first entry not written.
#[cfg(feature = "redis")]
pub(crate) fn batch_written(
    each: Vec<Result<EntryJson>>,
    refused: Option<usize>,
) -> Result<Vec<EntryJson>, BatchError> {
    let at = refused.or_else(|| each.iter().position(Result::is_err));
    let Some(at) = at else {
        return Ok(each.into_iter().flatten().collect());
    };
    let written = each.iter().filter(|e| e.is_ok()).count() as u64;
    let error = each
        .into_iter()
        .nth(at)
        .and_then(Result::err)
        .unwrap_or_else(|| Error::new(ErrorKind::Internal, "a batch stopped at a written entry"));
    Err(BatchError {
        error,
        at: Some(at),
        written,
    })
}

/// A shared handle to any store.
pub type SharedStore = Arc<dyn UserStore>;

/// What [`UserStore::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The user as stored now.
    pub user: UserJson,
    /// True if this call created it, false if it existed (get-or-create only).
    pub created: bool,
}

/// What an import did with one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImportOutcome {
    /// The user did not exist and was written.
    Created,
    /// The user existed and was left as it was.
    Skipped,
    /// The user existed and was replaced.
    Overridden,
}

/// A user to import, maybe with the timestamps it had in another store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportUser {
    user: NewUser,
    created_at: Option<Timestamp>,
    updated_at: Option<Timestamp>,
}

impl ImportUser {
    /// A user to import. Missing timestamps are filled at write time: a given one stands for
    /// both, and with neither the time of the write is used (an overridden user keeps its
    /// `created_at`).
    pub fn new(
        user: NewUser,
        created_at: Option<Timestamp>,
        updated_at: Option<Timestamp>,
    ) -> Result<ImportUser> {
        if let (Some(c), Some(u)) = (created_at, updated_at)
            && u < c
        {
            return Err(Error::invalid(format!(
                "user {:?}: updated_at {u} is before created_at {c}",
                user.id()
            )));
        }
        Ok(ImportUser {
            user,
            created_at,
            updated_at,
        })
    }

    /// The user being imported.
    pub fn user(&self) -> &NewUser {
        &self.user
    }

    /// True when an overridden user keeps the `created_at` it has in the store.
    pub fn keeps_created_at(&self) -> bool {
        self.created_at.is_none()
    }

    /// The record to write, with `now` standing in for missing timestamps.
    pub fn to_json(&self, now: Timestamp) -> UserJson {
        let created = self.created_at.or(self.updated_at).unwrap_or(now);
        let updated = self.updated_at.or(self.created_at).unwrap_or(now);
        self.user.to_json(created, updated)
    }

    /// The record that replaces `existing` under override.
    pub fn to_override_json(&self, existing: &UserJson, now: Timestamp) -> UserJson {
        let json = self.to_json(now);
        if self.keeps_created_at() {
            existing.replace_tail(&json.as_str()[UserJson::TAIL_START..])
        } else {
            json
        }
    }
}

/// An entry to import, maybe with the timestamps it had in another store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportEntry {
    entry: NewEntry,
    stamps: Stamps,
}

impl ImportEntry {
    /// An entry to import. Missing timestamps are filled at write time as for an
    /// [`ImportUser`]: a given one stands for both, and with neither the time of the write is
    /// used (a replaced entry keeps its `created_at`). `updated_at` before `created_at` is
    /// refused.
    pub fn new(
        entry: NewEntry,
        created_at: Option<Timestamp>,
        updated_at: Option<Timestamp>,
    ) -> Result<ImportEntry> {
        if let (Some(c), Some(u)) = (created_at, updated_at)
            && u < c
        {
            return Err(Error::invalid(format!(
                "entry {:?}: updated_at {u} is before created_at {c}",
                entry.key().as_str()
            )));
        }
        Ok(ImportEntry {
            entry,
            stamps: Stamps {
                created_at,
                updated_at,
            },
        })
    }

    /// The entry being imported.
    pub fn entry(&self) -> &NewEntry {
        &self.entry
    }

    /// The `created_at` the import gives, if any.
    pub fn created_at(&self) -> Option<Timestamp> {
        self.stamps.created_at
    }

    /// The `updated_at` the import gives, if any.
    pub fn updated_at(&self) -> Option<Timestamp> {
        self.stamps.updated_at
    }

    /// The timestamps this write is given.
    pub(crate) fn stamps(&self) -> Stamps {
        self.stamps
    }
}

impl From<NewEntry> for ImportEntry {
    /// An import without timestamps: stamped at write time, as an upsert is.
    fn from(entry: NewEntry) -> ImportEntry {
        ImportEntry {
            entry,
            stamps: Stamps::default(),
        }
    }
}

/// The timestamps one entry write is given: none for an add, an update or an upsert (stamped
/// at write time), those of its line for an import. The rules of [`ImportUser`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stamps {
    created_at: Option<Timestamp>,
    updated_at: Option<Timestamp>,
}

impl Stamps {
    /// The `created_at` to write: the given one; else, over an existing entry, the one it
    /// has (`kept`); else the given `updated_at`; else `now`.
    pub(crate) fn created(&self, kept: Option<Timestamp>, now: Timestamp) -> Timestamp {
        self.created_at.or(kept).or(self.updated_at).unwrap_or(now)
    }

    /// The `created_at` the import gives, which replaces an existing entry's.
    #[cfg(feature = "redis")]
    pub(crate) fn given_created(&self) -> Option<Timestamp> {
        self.created_at
    }

    /// The `created_at` of a new entry.
    pub(crate) fn fresh(&self, now: Timestamp) -> Timestamp {
        self.created(None, now)
    }

    /// The `updated_at` to write: the given one, else the given `created_at`, else `now`.
    pub(crate) fn updated(&self, now: Timestamp) -> Timestamp {
        self.updated_at.or(self.created_at).unwrap_or(now)
    }
}

/// The error for a user that does not exist.
pub(crate) fn not_found(id: &UserId) -> Error {
    Error::new(ErrorKind::NotFound, format!("user {id:?} does not exist"))
}

/// The error for a user that exists already.
pub(crate) fn conflict(id: &UserId) -> Error {
    Error::new(ErrorKind::Conflict, format!("user {id:?} already exists"))
}

/// A record read back from a store for `id`, checked whole (one copied from another user's key
/// is as corrupt as one cut short); a corrupt one is an error naming the user.
#[cfg(any(feature = "redis", feature = "file"))]
pub(crate) fn stored_user(id: &UserId, bytes: impl Into<bytes::Bytes>) -> Result<UserJson> {
    UserJson::from_stored_as(id, bytes).map_err(|e| e.context(format!("user {id}")))
}

/// An entry record read back from a store for `key`, checked whole as a user's is; a corrupt
/// one is an error naming the entry.
#[cfg(any(feature = "redis", feature = "file"))]
pub(crate) fn stored_entry(key: &EntryKey, bytes: impl Into<bytes::Bytes>) -> Result<StoredEntry> {
    EntryJson::from_stored_as(key, bytes).map_err(|e| e.context(format!("entry {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_timestamps_fill_in() {
        let user = NewUser::new("a", None).unwrap();
        let t1 = Timestamp::parse("2020-01-01T00:00:00Z").unwrap();
        let t2 = Timestamp::parse("2021-01-01T00:00:00Z").unwrap();
        let now = Timestamp::parse("2022-01-01T00:00:00Z").unwrap();
        let only_created = ImportUser::new(user.clone(), Some(t1), None).unwrap();
        assert_eq!(only_created.to_json(now), user.to_json(t1, t1));
        let both = ImportUser::new(user.clone(), Some(t1), Some(t2)).unwrap();
        assert_eq!(both.to_json(now), user.to_json(t1, t2));
        let none = ImportUser::new(user.clone(), None, None).unwrap();
        let existing = user.to_json(t1, t1);
        assert_eq!(none.to_override_json(&existing, now), user.to_json(t1, now));
        assert!(ImportUser::new(user, Some(t2), Some(t1)).is_err());
    }

    #[test]
    fn entry_import_timestamps_fill_in_as_a_user_import_does() {
        let key = EntryKey::new("food", "a").unwrap();
        let entry = NewEntry::new(key, Some(serde_json::json!({"x": 1}))).unwrap();
        let t1 = Timestamp::parse("2020-01-01T00:00:00Z").unwrap();
        let t2 = Timestamp::parse("2021-01-01T00:00:00Z").unwrap();
        let now = Timestamp::parse("2022-01-01T00:00:00Z").unwrap();
        let kept = Timestamp::parse("2019-01-01T00:00:00Z").unwrap();
        let stamps = |c, u| ImportEntry::new(entry.clone(), c, u).unwrap().stamps();
        // (created_at, updated_at) given → (new entry's, replacing one kept `kept`'s).
        let cases = [
            ((None, None), (now, now), (kept, now)),
            ((Some(t1), None), (t1, t1), (t1, t1)),
            ((None, Some(t2)), (t2, t2), (kept, t2)),
            ((Some(t1), Some(t2)), (t1, t2), (t1, t2)),
        ];
        for ((c, u), fresh, replacing) in cases {
            let s = stamps(c, u);
            assert_eq!((s.fresh(now), s.updated(now)), fresh, "{c:?} {u:?}");
            assert_eq!((s.created(Some(kept), now), s.updated(now)), replacing);
        }
        assert_eq!(ImportEntry::from(entry.clone()).stamps(), Stamps::default());
        let err = ImportEntry::new(entry, Some(t2), Some(t1)).unwrap_err();
        assert!(err.is_invalid_input() && err.to_string().contains("before created_at"));
    }
}
