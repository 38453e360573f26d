//! The embedded file backend: one redb database file, the CLI's zero-setup default.
//!
//! redb gives crash safety (copy-on-write pages, a commit is durable when it returns) and
//! serializable write transactions, which is all an atomic create-if-absent needs. The file is
//! opened in redb's multi-writer mode so that several `enrich` processes (a long `enrich run`
//! and an `enrich users update` beside it) can share it. redb is synchronous, so each call runs
//! on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Added, ImportOutcome, ImportUser, StoreOptions, UserStore, conflict, not_found, stored_user,
};
use crate::error::{Error, ErrorKind, Result};
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// Users in a redb file; each namespace is a table of its own.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    path: PathBuf,
    table: String,
}

impl FileStore {
    /// Opens the database at `path`, creating it if it does not exist.
    pub async fn open(path: &Path, options: &StoreOptions) -> Result<FileStore> {
        let path = path.to_path_buf();
        let table = format!("users:{}", options.namespace_str());
        blocking(move || {
            let db = Database::builder()
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .create(&path)
                .map_err(|e| open_error(&path, e))?;
            Ok(FileStore {
                inner: Arc::new(Inner { db, path, table }),
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
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "file store task failed").with_cause(e))?
}

fn open_error(path: &Path, err: redb::DatabaseError) -> Error {
    let kind = match err {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Internal,
    };
    Error::new(kind, format!("cannot open file store {}", path.display())).with_cause(err)
}

impl Inner {
    fn def(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.table)
    }

    fn fail(&self, err: impl Into<redb::Error>) -> Error {
        Error::new(
            ErrorKind::Internal,
            format!("file store {}", self.path.display()),
        )
        .with_cause(err.into())
    }

    /// Runs `work` in one write transaction and commits it.
    fn write<T>(
        &self,
        work: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        let out = {
            let mut table = txn.open_table(self.def()).map_err(|e| self.fail(e))?;
            work(&mut table)?
        };
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(out)
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

    fn describe(&self) -> String {
        format!("file:{}", self.inner.path.display())
    }
}
