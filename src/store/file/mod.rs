//! The embedded file backend: one redb database file, the CLI's zero-setup default.
//!
//! redb gives crash safety (copy-on-write pages, a commit is durable when it returns) and
//! serializable write transactions, which is all an atomic create-if-absent needs. The file is
//! opened in redb's multi-writer mode so that several `enrich` processes (a long `enrich run`
//! and an `enrich users update` beside it) can share it. redb is synchronous, so each call runs
//! on tokio's blocking pool.
//!
//! Users and collection entries are tables of their own per namespace (`users:{ns}`,
//! `entries:{ns}`), each keyed by id (`alice`, `food:burger`); see `create` for how the file
//! comes to exist, `entries` for the entry writes, and `read_only` for a file this process may
//! read but not write.

mod create;
mod entries;
mod read_only;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition};

use self::create::{io_kind, open_or_create};
use self::entries::Mode;
use self::read_only::Db;
use super::entries_through_records;
use super::{
    Added, BatchError, ImportEntry, ImportOutcome, ImportUser, Stamps, StoreOptions, UserSource,
    UserStore, conflict, entry_not_found, not_found, stored_user,
};
use crate::collection::{EntryJson, EntryKey, NewEntry, StoredEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::record::Key;
use crate::record::Record;
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// A table of records by key: users by id, entries by `<collection>:<id>`.
type Table<'a> = redb::Table<'a, &'static str, &'static [u8]>;

/// Users and collection entries in a redb file; each namespace has tables of its own.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    path: PathBuf,
    table: String,
    entries: String,
}

impl FileStore {
    /// Opens the database at `path`. If there is none: creates it (see the module's doc for
    /// how), unless [`StoreOptions::create_if_missing`] is off, which makes it an
    /// [`ErrorKind::InvalidInput`] naming the path. A file has no replicas: a non-zero
    /// [`StoreOptions::wait_replicas`] is refused.
    ///
    /// A file this process may read but not write (its permissions, a read-only mount), or
    /// any file with [`StoreOptions::file_read_only`], is opened only to read: every read
    /// answers, every write fails with [`ErrorKind::PermissionDenied`] naming the file. Such a
    /// store is never created.
    pub async fn open(path: &Path, options: &StoreOptions) -> Result<FileStore> {
        options.without_replicas(&format!("file:{}", path.display()))?;
        // Messages name the file wherever the process runs.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let table = format!("users:{}", options.namespace_str());
        let entries = format!("entries:{}", options.namespace_str());
        let create = options.create_if_missing_value();
        let cache = options.file_cache_value();
        let read_only = options.file_read_only_value();
        blocking(move || {
            let db = open_or_create(&path, create, cache, read_only)?;
            Ok(FileStore {
                inner: Arc::new(Inner {
                    db,
                    path,
                    table,
                    entries,
                }),
            })
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || work(&inner)).await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|failed| {
        // A panic here is redb's (it panics on some damaged pages rather than say so), or a
        // bug: either way an internal error, never a missing record, with what it said.
        let why = match failed.try_into_panic() {
            Ok(panic) => match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
                (Some(said), _) => format!("it panicked: {said}"),
                (_, Some(said)) => format!("it panicked: {said}"),
                _ => "it panicked".to_owned(),
            },
            Err(_) => "it was cancelled".to_owned(),
        };
        Error::new(
            ErrorKind::Internal,
            format!("the file store failed reading or writing its file ({why}); is it damaged?"),
        )
    })?
}

impl Inner {
    fn def(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    fn entries_def(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.entries)
    }

    fn fail(&self, err: impl Into<redb::Error>) -> Error {
        let err = err.into();
        let (kind, what) = match &err {
            redb::Error::Io(e) if io_kind(e) == ErrorKind::StoreFull => {
                (ErrorKind::StoreFull, " has no room left")
            }
            redb::Error::Io(e) => (io_kind(e), ""),
            // redb refuses every call after an I/O error, such as a full disk, until the file is
            // opened again.
            redb::Error::PreviousIo => (
                ErrorKind::Internal,
                " (unusable after an earlier I/O error until it is opened again)",
            ),
            _ => (ErrorKind::Internal, ""),
        };
        Error::new(kind, format!("file store {}{what}", self.path.display())).with_cause(err)
    }

    /// Runs `work` on the users in one write transaction and commits it.
    fn write<T>(&self, work: impl FnOnce(&mut Table<'_>) -> Result<T>) -> Result<T> {
        self.write_in(self.def(), work)
    }

    /// Runs `work` on the entries in one write transaction and commits it.
    fn write_entries<T>(&self, work: impl FnOnce(&mut Table<'_>) -> Result<T>) -> Result<T> {
        self.write_in(self.entries_def(), work)
    }

    fn write_in<T>(
        &self,
        def: TableDefinition<'_, &'static str, &'static [u8]>,
        work: impl FnOnce(&mut Table<'_>) -> Result<T>,
    ) -> Result<T> {
        let db = self.db.writable(&self.path)?;
        let txn = db.begin_write().map_err(|e| self.fail(e))?;
        let out = {
            let mut table = txn.open_table(def).map_err(|e| self.fail(e))?;
            work(&mut table)?
        };
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(out)
    }

    /// Opens a table for reading; `None` if nothing was ever written to it.
    fn read_table(
        &self,
        txn: &redb::ReadTransaction,
        def: TableDefinition<'_, &'static str, &'static [u8]>,
    ) -> Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>> {
        match txn.open_table(def) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn get_in(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        id: &UserId,
    ) -> Result<Option<UserJson>> {
        match table.get(id.as_str()).map_err(|e| self.fail(e))? {
            Some(value) => Ok(Some(stored_user(id, value.value().to_vec())?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl UserSource for FileStore {
    async fn get_many(&self, ids: &[UserId]) -> Result<Vec<Option<UserJson>>> {
        let ids = ids.to_vec();
        self.run(move |inner| {
            let txn = inner.db.begin_read().map_err(|e| inner.fail(e))?;
            let table = match txn.open_table(inner.def()) {
                Ok(table) => table,
                // Nothing was ever written in this namespace.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; ids.len()]),
                Err(e) => return Err(inner.fail(e)),
            };
            ids.iter().map(|id| inner.get_in(&table, id)).collect()
        })
        .await
    }

    async fn get_entries_each(&self, keys: &[EntryKey]) -> Vec<Result<Option<EntryJson>>> {
        entries_through_records(self, keys).await
    }

    /// Users and entries in one read transaction.
    async fn get_records_each(&self, keys: &[Key]) -> Vec<Result<Option<Record>>> {
        let count = keys.len();
        let keys = keys.to_vec();
        let read = self.run(move |inner| {
            let txn = inner.db.begin_read().map_err(|e| inner.fail(e))?;
            let users = inner.read_table(&txn, inner.def())?;
            let entries = inner.read_table(&txn, inner.entries_def())?;
            // A corrupt record fails its own key only.
            Ok((keys.iter())
                .map(|key| match key {
                    Key::User(id) => match &users {
                        Some(users) => Ok(inner.get_in(users, id)?.map(Record::User)),
                        None => Ok(None),
                    },
                    Key::Entry(key) => match &entries {
                        Some(entries) => Ok(inner
                            .entry_in(entries, key)?
                            .map(|e| Record::Entry(e.entry))),
                        None => Ok(None),
                    },
                })
                .collect::<Vec<_>>())
        });
        match read.await {
            Ok(found) => found,
            Err(err) => vec![Err(err); count],
        }
    }

    fn describe(&self) -> String {
        format!("file:{}", self.inner.path.display())
    }
}

#[async_trait]
impl UserStore for FileStore {
    async fn add(&self, user: &NewUser, get_or_create: bool) -> Result<Added> {
        let user = user.clone();
        self.run(move |inner| {
            inner.write(|table| {
                if let Some(existing) = inner.get_in(table, user.id())? {
                    return if get_or_create {
                        Ok(Added {
                            user: existing,
                            created: false,
                        })
                    } else {
                        Err(conflict(user.id()))
                    };
                }
                let now = Timestamp::now();
                let json = user.to_json(now, now);
                table
                    .insert(user.id().as_str(), json.as_bytes())
                    .map_err(|e| inner.fail(e))?;
                Ok(Added {
                    user: json,
                    created: true,
                })
            })
        })
        .await
    }

    async fn update(&self, user: &NewUser) -> Result<UserJson> {
        let user = user.clone();
        self.run(move |inner| {
            inner.write(|table| {
                let existing = inner
                    .get_in(table, user.id())?
                    .ok_or_else(|| not_found(user.id()))?;
                let json = existing.replace_tail(&user.tail(Timestamp::now()));
                table
                    .insert(user.id().as_str(), json.as_bytes())
                    .map_err(|e| inner.fail(e))?;
                Ok(json)
            })
        })
        .await
    }

    async fn delete(&self, id: &UserId) -> Result<()> {
        let id = id.clone();
        self.run(move |inner| {
            inner.write(|table| {
                let removed = table.remove(id.as_str()).map_err(|e| inner.fail(e))?;
                removed.map(|_| ()).ok_or_else(|| not_found(&id))
            })
        })
        .await
    }

    async fn import(
        &self,
        users: &[ImportUser],
        override_existing: bool,
    ) -> Result<Vec<ImportOutcome>> {
        let users = users.to_vec();
        self.run(move |inner| {
            inner.write(|table| {
                let now = Timestamp::now();
                let mut outcomes = Vec::with_capacity(users.len());
                for import in &users {
                    let id = import.user().id();
                    let (json, outcome) = match inner.get_in(table, id)? {
                        None => (import.to_json(now), ImportOutcome::Created),
                        Some(existing) if override_existing => (
                            import.to_override_json(&existing, now),
                            ImportOutcome::Overridden,
                        ),
                        Some(_) => {
                            outcomes.push(ImportOutcome::Skipped);
                            continue;
                        }
                    };
                    table
                        .insert(id.as_str(), json.as_bytes())
                        .map_err(|e| inner.fail(e))?;
                    outcomes.push(outcome);
                }
                Ok(outcomes)
            })
        })
        .await
    }
    async fn add_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        self.write_entry(entry, Mode::Add).await
    }

    async fn update_entry(&self, entry: &NewEntry) -> Result<EntryJson> {
        self.write_entry(entry, Mode::Update).await
    }

    async fn delete_entry(&self, key: &EntryKey) -> Result<()> {
        match self.delete_entries(std::slice::from_ref(key)).await? {
            0 => Err(entry_not_found(key)),
            _ => Ok(()),
        }
    }

    /// One write transaction reads the owner and writes.
    async fn update_owned_entry(&self, entry: &NewEntry, owner: &UserId) -> Result<EntryJson> {
        let (entry, owner) = (entry.clone(), owner.clone());
        self.run(move |inner| {
            let now = Timestamp::now();
            inner.write_entries(|table| {
                inner.check_owner(table, entry.key(), &owner)?;
                inner.write_entry(table, &entry, Stamps::default(), Mode::Update, now)
            })
        })
        .await
    }

    /// One write transaction reads the owner and removes.
    async fn delete_owned_entry(&self, key: &EntryKey, owner: &UserId) -> Result<()> {
        let (key, owner) = (key.clone(), owner.clone());
        self.run(move |inner| {
            inner.write_entries(|table| {
                inner.check_owner(table, &key, &owner)?;
                table.remove(key.as_str()).map_err(|e| inner.fail(e))?;
                Ok(())
            })
        })
        .await
    }

    /// One write transaction: all of the batch is written, or none of it.
    async fn upsert_entries(&self, batch: &[NewEntry]) -> Result<Vec<EntryJson>> {
        self.upsert(batch.iter().cloned().map(ImportEntry::from).collect())
            .await
    }

    /// One write transaction: all of the batch is written, or none of it.
    async fn import_entries(&self, batch: &[ImportEntry]) -> Result<Vec<EntryJson>, BatchError> {
        self.upsert_at(batch.to_vec()).await
    }

    async fn delete_entries(&self, keys: &[EntryKey]) -> Result<u64> {
        let keys = keys.to_vec();
        self.run(move |inner| {
            inner.write_entries(|table| {
                let mut removed = 0;
                for key in &keys {
                    let gone = table.remove(key.as_str()).map_err(|e| inner.fail(e))?;
                    removed += u64::from(gone.is_some());
                }
                Ok(removed)
            })
        })
        .await
    }

    async fn get_stored_entry(&self, key: &EntryKey) -> Result<Option<StoredEntry>> {
        let key = key.clone();
        self.run(move |inner| {
            let txn = inner.db.begin_read().map_err(|e| inner.fail(e))?;
            match inner.read_table(&txn, inner.entries_def())? {
                Some(table) => inner.entry_in(&table, &key),
                None => Ok(None),
            }
        })
        .await
    }
}

impl FileStore {
    async fn write_entry(&self, entry: &NewEntry, mode: Mode) -> Result<EntryJson> {
        let entry = entry.clone();
        self.run(move |inner| {
            let now = Timestamp::now();
            inner.write_entries(|table| {
                inner.write_entry(table, &entry, Stamps::default(), mode, now)
            })
        })
        .await
    }

    /// Creates or replaces each entry of `batch` in one write transaction.
    async fn upsert(&self, batch: Vec<ImportEntry>) -> Result<Vec<EntryJson>> {
        self.upsert_at(batch).await.map_err(|stopped| stopped.error)
    }

    /// Writes `batch` in one transaction; if it fails, the position of the entry that failed.
    async fn upsert_at(&self, batch: Vec<ImportEntry>) -> Result<Vec<EntryJson>, BatchError> {
        let stopped = |error, at| BatchError {
            error,
            at,
            written: 0,
        };
        let written = self.run(move |inner| {
            let now = Timestamp::now();
            let mut at = None;
            let written = inner.write_entries(|table| {
                (batch.iter().enumerate())
                    .map(|(i, import)| {
                        let (entry, stamps) = (import.entry(), import.stamps());
                        (inner.write_entry(table, entry, stamps, Mode::Upsert, now))
                            .inspect_err(|_| at = Some(i))
                    })
                    .collect()
            });
            Ok(written.map_err(|error| (error, at)))
        });
        match written.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err((error, at))) => Err(stopped(error, at)),
            Err(error) => Err(stopped(error, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in the file's thread (redb's, on some damaged pages) is an internal error
    /// saying what it said, never a missing record or a crash.
    #[tokio::test]
    async fn a_panic_reading_the_file_is_an_internal_error() {
        let failed = blocking(|| -> Result<()> { panic!("entered unreachable code") })
            .await
            .unwrap_err();
        assert_eq!(failed.kind(), ErrorKind::Internal);
        assert!(
            failed
                .message()
                .contains("(it panicked: entered unreachable code); is it damaged?"),
            "{failed}"
        );
    }
}
