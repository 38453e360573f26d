//! The embedded file backend: one redb database file, the CLI's zero-setup default.
//!
//! redb gives crash safety (copy-on-write pages, a commit is durable when it returns) and
//! serializable write transactions, which is all an atomic create-if-absent needs. The file is
//! opened in redb's multi-writer mode so that several `enrich` processes (a long `enrich run`
//! and an `enrich users update` beside it) can share it. redb is synchronous, so each call runs
//! on tokio's blocking pool.
//!
//! # Creating the file
//!
//! redb initializes a new database in place, and a process killed (or a disk that fills up)
//! in the middle leaves a file that is not a database and never will be. So a new store is made
//! aside, as a hidden temp file in the same directory, initialized and synced, then moved into
//! place under its name only if that name is still free (`renameat2(RENAME_NOREPLACE)` or a
//! hard link): the name is either absent or a complete database, whenever the process dies.
//! A process that loses the race to another creator opens the other's file. Temp files of
//! processes that died are removed by the next creation.
//!
//! A file that an interrupted in-place creation left (by an older version, or by another tool)
//! is recognised — empty, or without redb's magic number and with nothing written past the
//! header — and started afresh, under a lock on the directory so that two processes cannot
//! both replace it. Any other file that is not a redb database is an error naming the path.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError,
    TableDefinition,
};

use super::{
    Added, ImportOutcome, ImportUser, StoreOptions, UserSource, UserStore, conflict, not_found,
    stored_user,
};
use crate::error::{Error, ErrorKind, Result};
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// redb's header, and nothing else, is written before its magic number.
const HEADER_SPAN: usize = 4096;

/// A file larger than this is never taken for an interrupted creation.
const UNINITIALISED_MAX: u64 = 1 << 20;

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
    /// Opens the database at `path`. If there is none: creates it (see the module's doc for
    /// how), unless [`StoreOptions::create_if_missing`] is off, which makes it an
    /// [`ErrorKind::InvalidInput`] naming the path.
    pub async fn open(path: &Path, options: &StoreOptions) -> Result<FileStore> {
        // Messages name the file wherever the process runs.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let table = format!("users:{}", options.namespace_str());
        let create = options.create_if_missing_value();
        blocking(move || {
            let db = open_or_create(&path, create)?;
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

fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
    builder
}

/// Opens the database at `path`, creating or restarting it first where that is allowed.
fn open_or_create(path: &Path, create: bool) -> Result<Database> {
    // Each turn either opens, fails, or changes what is at `path` for the next; other
    // processes may change it too, but not forever.
    for _ in 0..4 {
        match builder().open(path) {
            Ok(db) => return Ok(db),
            Err(DatabaseError::Storage(StorageError::Io(e)))
                if e.kind() == io::ErrorKind::NotFound =>
            {
                if !create {
                    return Err(Error::invalid(format!(
                        "file store {} does not exist; name another with --store file:PATH, \
                         or create it with `enrich users add` or `enrich users import`",
                        path.display()
                    )));
                }
                create_aside(path, false)?;
            }
            Err(err) if not_a_database(&err) => match examine(path)? {
                Contents::Uninitialised if create => restart(path)?,
                Contents::Uninitialised => {
                    return Err(Error::invalid(format!(
                        "file store {} was never initialised (its creation was interrupted); \
                         a command that writes, such as `enrich users add`, starts it afresh",
                        path.display()
                    )));
                }
                Contents::Other => {
                    return Err(Error::invalid(format!(
                        "{} is not an enrich file store: it is not a redb database",
                        path.display()
                    ))
                    .with_cause(err));
                }
                // It became a database meanwhile: open it on the next turn.
                Contents::Database | Contents::Missing => {}
            },
            Err(err) => return Err(open_error(path, err)),
        }
    }
    Err(Error::new(
        ErrorKind::Unavailable,
        format!(
            "file store {} kept changing while it was opened",
            path.display()
        ),
    ))
}

fn not_a_database(err: &DatabaseError) -> bool {
    matches!(err, DatabaseError::Storage(StorageError::Io(e)) if e.kind() == io::ErrorKind::InvalidData)
}

/// What is at a path that redb would not open.
enum Contents {
    Missing,
    Database,
    /// Empty, or the leftovers of an interrupted in-place creation.
    Uninitialised,
    Other,
}

fn examine(path: &Path) -> Result<Contents> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Contents::Missing),
        Err(e) => return Err(io_error(path, "cannot read", e)),
    };
    let len = file
        .metadata()
        .map_err(|e| io_error(path, "cannot read", e))?
        .len();
    if len == 0 {
        return Ok(Contents::Uninitialised);
    }
    if len > UNINITIALISED_MAX {
        return Ok(Contents::Other);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| io_error(path, "cannot read", e))?;
    const MAGIC: &[u8] = b"redb\x1a\x0a\xa9\x0d\x0a";
    if bytes.starts_with(MAGIC) {
        return Ok(Contents::Database);
    }
    let untouched = |b: &[u8]| b.iter().all(|&b| b == 0);
    if untouched(&bytes[..MAGIC.len().min(bytes.len())])
        && untouched(bytes.get(HEADER_SPAN..).unwrap_or(&[]))
    {
        Ok(Contents::Uninitialised)
    } else {
        Ok(Contents::Other)
    }
}

/// Replaces an uninitialised file with a new database, unless another process did first.
fn restart(path: &Path) -> Result<()> {
    let dir =
        File::open(parent(path)).map_err(|e| io_error(path, "cannot lock the directory of", e))?;
    dir.lock()
        .map_err(|e| io_error(path, "cannot lock the directory of", e))?;
    let result = match examine(path)? {
        Contents::Uninitialised => create_aside(path, true),
        _ => Ok(()),
    };
    let _ = dir.unlock();
    result
}

/// Creates a database in a temp file beside `path`, then moves it into place: over whatever is
/// there with `replace`, else only if nothing is (a creator that got there first wins).
fn create_aside(path: &Path, replace: bool) -> Result<()> {
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("file store {} names no file", path.display())))?
        .to_string_lossy()
        .into_owned();
    let prefix = format!(".{name}.{}.", std::process::id());
    remove_dead_temps(dir, &name);
    let mut temp = tempfile::Builder::new();
    temp.prefix(&prefix).suffix(".tmp");
    // As a file created in place would be (the umask applies), not private to the user.
    #[cfg(unix)]
    temp.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let temp = temp
        .tempfile_in(dir)
        .map_err(|e| io_error(path, "cannot create", e))?;
    // Dropping `temp` on any error below removes it. The new database is opened once more as
    // every later command will open it, so that one that cannot be (no room for what an open
    // writes) never takes the name.
    let db = builder()
        .create(temp.path())
        .map_err(|e| database_error(path, "cannot create", e))?;
    drop(db);
    let db = builder()
        .open(temp.path())
        .map_err(|e| database_error(path, "cannot create", e))?;
    drop(db);
    temp.as_file()
        .sync_all()
        .map_err(|e| io_error(path, "cannot create", e))?;
    let placed = if replace {
        temp.persist(path).map(drop)
    } else {
        temp.persist_noclobber(path).map(drop)
    };
    match placed {
        Ok(()) => {}
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_error(path, "cannot create", e.error)),
    }
    // The new name must survive a crash too.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Removes the temp files of creations whose process is gone (killed mid-way).
fn remove_dead_temps(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let start = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&start))
            .filter(|rest| rest.ends_with(".tmp"))
        else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Without `/proc`, a temp file's owner cannot be checked: keep them all.
#[cfg(not(target_os = "linux"))]
fn process_alive(_pid: u32) -> bool {
    true
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The kind an I/O failure is: a full disk or quota is [`ErrorKind::StoreFull`], a refusal
/// by the file system's permissions [`ErrorKind::PermissionDenied`], anything else
/// [`ErrorKind::Internal`].
fn io_kind(err: &io::Error) -> ErrorKind {
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::StoreFull,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Internal,
    }
}

fn io_error(path: &Path, doing: &str, err: io::Error) -> Error {
    let kind = match err.kind() {
        // A directory that does not exist: the path is wrong.
        io::ErrorKind::NotFound => ErrorKind::InvalidInput,
        _ => io_kind(&err),
    };
    Error::new(kind, format!("{doing} file store {}", path.display())).with_cause(err)
}

fn open_error(path: &Path, err: DatabaseError) -> Error {
    database_error(path, "cannot open", err)
}

fn database_error(path: &Path, doing: &str, err: DatabaseError) -> Error {
    let kind = match &err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            ErrorKind::Unavailable
        }
        DatabaseError::Storage(StorageError::Io(e)) => io_kind(e),
        _ => ErrorKind::Internal,
    };
    Error::new(kind, format!("{doing} file store {}", path.display())).with_cause(err)
}

impl Inner {
    fn def(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.table)
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
}
