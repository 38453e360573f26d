//! A file store opened only to read: because [`StoreOptions::file_read_only`] asks for it, or
//! because this process may read the file but not write it (another user's file with mode
//! 0644, a read-only mount, an immutable file). Such a store answers every read and refuses
//! every write with [`ErrorKind::PermissionDenied`] naming the file and why it is read-only.
//!
//! It is opened with redb's `ReadOnlyDatabase`, which never writes: its file is opened
//! `O_RDONLY` and its backend has no way to write (a write would be a bug of redb's, a panic).
//! What redb 4.6 does with it, read in its source (`db.rs`, `page_manager.rs`):
//!
//! - Locks. In the concurrency mode the writers use (multi-writer, see `create`), a reader
//!   takes only shared byte-range locks (`F_OFD_SETLK` with `F_RDLCK`, which a read-only
//!   descriptor may take): its protocol generation byte and the shared reader byte for as long
//!   as it is open, the header while it reads it, and one byte per read transaction so that no
//!   writer reclaims the pages the transaction reads. So it shares the file with any number of
//!   `enrich` processes that write it, and each read transaction sees their latest commit. It
//!   must be opened in their mode: a reader in redb's default (exclusive) mode locks the whole
//!   file and would be refused by, and refuse, every writer. A process holding the file in
//!   exclusive mode (another tool) refuses it: `DatabaseAlreadyOpen`, [`ErrorKind::Unavailable`].
//! - Repair. A reader never repairs. A writer marks the file unclean for as long as it has it
//!   open, so a writer that did not close it (killed, even idle) leaves it so; while no live
//!   writer holds it, a reader's open fails with `RepairAborted`. The next process that opens
//!   it to write repairs it, so that is [`ErrorKind::Unavailable`] too, saying so.
//!
//! Nothing else of the file store writes: it keeps no state beside the file and announces no
//! writes, and a table that was never written (a namespace without users or entries) reads as
//! empty, as it does on a store open for writing.
//!
//! [`StoreOptions::file_read_only`]: crate::store::StoreOptions::file_read_only

use std::io;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, TransactionError};

use crate::error::{Error, ErrorKind, Result};

/// The database of a file store: open to write, or only to read.
pub(super) enum Db {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase, Why),
}

/// Why a file store is open only to read.
#[derive(Debug, Clone)]
pub(super) enum Why {
    /// [`StoreOptions::file_read_only`](crate::store::StoreOptions::file_read_only).
    Asked,
    /// Opening it to write failed with this.
    Unwritable(Arc<io::Error>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Writable(_) => f.write_str("Writable"),
            Db::ReadOnly(_, why) => f.debug_tuple("ReadOnly").field(why).finish(),
        }
    }
}

impl Db {
    pub(super) fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        match self {
            Db::Writable(db) => db.begin_read(),
            Db::ReadOnly(db, _) => db.begin_read(),
        }
    }

    /// The database to write in, or the refusal of a write to the store at `path`.
    pub(super) fn writable(&self, path: &Path) -> Result<&Database> {
        match self {
            Db::Writable(db) => Ok(db),
            Db::ReadOnly(_, why) => Err(refused(path, why)),
        }
    }
}

/// Whether an open to write that failed with `err` may be tried again to read: the file is
/// there, and the process may not write it (`EACCES`, `EPERM`, `EROFS`).
pub(super) fn unwritable(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
}

/// A write refused: the store is read-only. [`ErrorKind::PermissionDenied`], as a store that
/// refuses a command is (exit 1; 502 from `enrich serve`): retrying cannot help until the
/// file's permissions, its mount, or the options change.
fn refused(path: &Path, why: &Why) -> Error {
    let path = path.display();
    match why {
        Why::Asked => Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "file store {path} is open read-only (StoreOptions::file_read_only): the write \
                 was not applied"
            ),
        ),
        Why::Unwritable(cause) => Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "file store {path} is open read-only because this process cannot write it, so \
                 the write was not applied"
            ),
        )
        .with_cause(cause.clone()),
    }
}

/// The error for a file that redb would not open to read because it needs a repair.
pub(super) fn needs_repair(path: &Path, why: &Why, err: redb::DatabaseError) -> Error {
    let because = match why {
        Why::Asked => "it is opened read-only",
        Why::Unwritable(_) => "this process cannot write it",
    };
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "file store {} was not closed cleanly by a process that had it open to write \
             (killed, or crashed), and cannot be repaired here because {because}; the next \
             command that may write it repairs it",
            path.display()
        ),
    )
    .with_cause(err)
}
