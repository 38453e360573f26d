//! Opening a file store, and creating its file.
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

use redb::{ConcurrencyMode, Database, DatabaseError, StorageError};

use super::read_only::{Db, Why, needs_repair, unwritable};
use crate::error::{Error, ErrorKind, Result};

/// redb's header, and nothing else, is written before its magic number.
const HEADER_SPAN: usize = 4096;

/// A file larger than this is never taken for an interrupted creation.
const UNINITIALISED_MAX: u64 = 1 << 20;

/// How every `enrich` process opens a file store, to write or only to read: in redb's
/// multi-writer mode, so that they share it.
fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
    builder
}

/// Opens the database at `path`, creating or restarting it first where that is allowed; it
/// holds at most `cache` bytes of its pages in memory. With `read_only`, or if the file is
/// there but this process may not write it, it is opened only to read (see `read_only`), and
/// never created or restarted.
pub(super) fn open_or_create(
    path: &Path,
    create: bool,
    cache: usize,
    read_only: bool,
) -> Result<Db> {
    let path = &resolve(path)?;
    let mut only_read = read_only.then_some(Why::Asked);
    // Each turn either opens, fails, or changes what is at `path` (or how it is opened) for
    // the next; other processes may change it too, but not forever.
    for _ in 0..4 {
        let opened = match &only_read {
            None => builder().set_cache_size(cache).open(path).map(Db::Writable),
            Some(why) => (builder().set_cache_size(cache).open_read_only(path))
                .map(|db| Db::ReadOnly(db, why.clone())),
        };
        // Nor is a file opened to read created or started afresh: that writes.
        let create = create && only_read.is_none();
        match opened {
            Ok(db) => return Ok(db),
            // Opening to write opens the file read-write, which the file's permissions or its
            // mount may refuse while they allow reading it.
            Err(DatabaseError::Storage(StorageError::Io(e)))
                if only_read.is_none() && unwritable(&e) =>
            {
                only_read = Some(Why::Unwritable(Arc::new(e)));
            }
            Err(err @ DatabaseError::RepairAborted) => {
                return Err(match &only_read {
                    Some(why) => needs_repair(path, why, err),
                    None => open_error(path, err),
                });
            }
            Err(DatabaseError::Storage(StorageError::Io(e)))
                if e.kind() == io::ErrorKind::NotFound =>
            {
                if !create {
                    return Err(Error::invalid(format!(
                        "file store {} does not exist; name another with --store file:PATH, \
                         or create it with a command that writes (`enrich users import`, \
                         `enrich collections import`, `enrich run --users`…)",
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

/// The file `path` names: a symbolic link is followed to its target, so that a store reached
/// through one is opened, or started afresh, where it is (never replaced by a file of the
/// link's name). Anything but a regular file is refused: redb would wait for ever on a FIFO,
/// and starting an empty device afresh would replace the device node.
fn resolve(path: &Path) -> Result<PathBuf> {
    let not_regular = |what: &str| {
        Err(Error::invalid(format!(
            "file store {} is not a regular file: it is {what}",
            path.display()
        )))
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(meta) if meta.is_dir() => return not_regular("a directory"),
        Ok(_) => return not_regular("a device, a FIFO or a socket"),
        // Nothing there, or a symbolic link to nothing: the store is made where it points.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(link_target(path)),
        Err(e) => return Err(io_error(path, "cannot read", e)),
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::canonicalize(path).map_err(|e| io_error(path, "cannot read", e))
        }
        _ => Ok(path.to_path_buf()),
    }
}

/// Where `path` leads once its symbolic links are followed (itself if it is none), as far as
/// they lead: to the name a dangling link points to. A loop of links was refused before this
/// is asked (the metadata of a path in a loop is no `NotFound`), and any other chain stops
/// after 40 links, the kernel's bound. (`batch::follow_links` does the same for a run's
/// outputs; the store does not reach up into the batch module for it.)
fn link_target(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&path) else {
            break;
        };
        path = match path.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
    }
    path
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
    if replace {
        // The file started afresh keeps its owner and permissions (a private store stays so).
        if let Ok(old) = std::fs::metadata(path) {
            keep_access(temp.as_file(), &old);
        }
    }
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

/// Gives `file` the owner and permissions of `old`, as far as this process may (only root
/// may give a file to another user).
#[cfg(unix)]
fn keep_access(file: &File, old: &std::fs::Metadata) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // The owner first: a change of owner clears the set-id bits.
    let _ = std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()));
    let _ = file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777));
}

#[cfg(not(unix))]
fn keep_access(file: &File, old: &std::fs::Metadata) {
    let _ = file.set_permissions(old.permissions());
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
pub(super) fn io_kind(err: &io::Error) -> ErrorKind {
    match err.kind() {
        // A file grown to the process's size limit (`ulimit -f`, EFBIG) is as full as a disk.
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => {
            ErrorKind::StoreFull
        }
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
