//! What the `enrich` binary does once its flags are parsed: each command checks its input,
//! opens the store, runs, and reports. `main.rs` maps the outcome to output and exit codes.
//!
//! - `users`: `enrich users add|get|update|delete|import`;
//! - `collections`: `enrich collections add|get|update|delete|import`;
//! - `run`: `enrich run`, with its progress display and its signals;
//! - `bench`: `enrich bench`; `serve`: `enrich serve`;
//! - here: what they share — which store, how it is opened, inputs and outputs.

mod bench;
mod collections;
mod progress;
mod run;
mod serve;
mod users;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use enrich::batch::Stop;
use enrich::error::{Error, ErrorKind, Result};
use enrich::retry::Backoff;
use enrich::store::{self, SharedStore, StoreOptions, StoreUrl};
use enrich::{CacheConfig, Enricher};

pub(crate) use self::bench::bench;
pub(crate) use self::collections::{
    entries_add, entries_delete, entries_get, entries_import, entries_update,
};
pub(crate) use self::run::{RunArgs, run};
pub(crate) use self::serve::{ServeArgs, serve};
pub(crate) use self::users::{users_add, users_delete, users_get, users_import, users_update};

/// The exit codes of the binary, listed in `enrich --help`.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  store unavailable, timeout, refusal (credentials, permissions, full), a write of unknown
     outcome (not answered, or not confirmed by --wait-replicas), or any other failure
  2  invalid input or usage, including a file store that does not exist for a command that
     only reads (users or collections get, update, delete; run without --users or --objects)
  3  conflict: the user or entry already exists
  4  not found: the user or entry does not exist";

/// The exit code for an error.
pub(crate) fn exit_code(err: &Error) -> u8 {
    match err.kind() {
        ErrorKind::InvalidInput => 2,
        ErrorKind::Conflict => 3,
        ErrorKind::NotFound => 4,
        _ => 1,
    }
}

/// Which store a command works on.
#[derive(Debug, Clone)]
pub(crate) struct StoreSpec {
    url: String,
    options: StoreOptions,
    /// The L1 of the enrichers built over it.
    cache: CacheConfig,
}

impl StoreSpec {
    /// The store at `url`, opened with `options`; enrichers over it cache as `cache` says.
    pub fn new(url: impl Into<String>, options: StoreOptions, cache: CacheConfig) -> Self {
        StoreSpec {
            url: url.into(),
            options,
            cache,
        }
    }

    /// An enricher over `store` (opened from this spec), with this spec's L1.
    pub fn enricher(&self, store: SharedStore) -> Enricher {
        Enricher::builder(store).cache(self.cache.clone()).build()
    }

    /// Opens the store. Commands call this only once their own input has been checked, so bad
    /// input is reported as such even when the store is down.
    pub async fn open(&self) -> Result<SharedStore> {
        store::open(&self.url, &self.options).await
    }

    /// The file of a file store; `None` for any other store.
    pub fn file(&self) -> Option<std::path::PathBuf> {
        match StoreUrl::parse(&self.url) {
            Ok(StoreUrl::File(path)) => Some(path),
            _ => None,
        }
    }

    /// Opens the store for work that only reads: a file store that does not exist is an error
    /// naming its path, never a new empty store.
    pub async fn open_existing(&self) -> Result<SharedStore> {
        let options = self.options.clone().create_if_missing(false);
        store::open(&self.url, &options).await
    }
}

/// The most DATA read from standard input: the longest line an import takes
/// ([`batch::MAX_LINE`](enrich::batch::MAX_LINE)). A user holds at most 10,240 bytes of compact
/// JSON and an entry 51,200, so this leaves room for any layout and no more; what goes on is
/// not read.
const MAX_DATA: u64 = enrich::batch::MAX_LINE as u64;

/// Reads a DATA argument: JSON object text, or `-` for standard input (at most [`MAX_DATA`]).
pub(crate) async fn read_data(arg: &str) -> Result<Value> {
    let mut read = Vec::new();
    let text = if arg == "-" {
        tokio::io::stdin()
            .take(MAX_DATA + 1)
            .read_to_end(&mut read)
            .await
            .map_err(|e| Error::invalid("cannot read DATA from standard input").with_cause(e))?;
        if read.len() as u64 > MAX_DATA {
            return Err(Error::invalid(format!(
                "DATA from standard input is over the limit of {MAX_DATA} bytes"
            )));
        }
        &read[..]
    } else {
        arg.as_bytes()
    };
    serde_json::from_slice(text).map_err(|e| Error::invalid(format!("DATA is not valid JSON: {e}")))
}

/// Opens the store, retrying while it is unavailable for up to `timeout`. The first failure is
/// said at once on standard error, so a store that is down is never a silent wait; a failure
/// that retrying cannot fix (credentials, permissions, a certificate) ends it at once.
async fn open_with_retry(spec: &StoreSpec, create: bool, timeout: Duration) -> Result<SharedStore> {
    let started = Instant::now();
    let mut backoff = Backoff::new();
    let mut told = false;
    loop {
        let opened = if create {
            spec.open().await
        } else {
            spec.open_existing().await
        };
        match opened {
            Err(err) if err.is_transient() && started.elapsed() < timeout => {
                if !told {
                    tell!(
                        "enrich: {err}; retrying for up to {} s (--store-timeout)",
                        timeout.as_secs_f64()
                    );
                    told = true;
                }
                let left = timeout.saturating_sub(started.elapsed());
                tokio::time::sleep(backoff.pause().min(left)).await;
            }
            Err(err) if err.is_transient() => {
                return Err(err.context(format!(
                    "gave up after {} s (--store-timeout)",
                    timeout.as_secs_f64()
                )));
            }
            Ok(store) => {
                if told {
                    tell!("enrich: store {} is available", store.describe());
                }
                return Ok(store);
            }
            other => return other,
        }
    }
}

/// An output file opened but not yet emptied, so that a command with several outputs opens
/// them all before it empties any: one that cannot be created (a missing directory) leaves
/// the others as they were.
pub(crate) struct OpenedOutput {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// Made by this open, rather than there before.
    created: bool,
}

impl OpenedOutput {
    /// Opens `path` to write, creating it if it is missing (where it points, for a symbolic
    /// link to nothing yet, as a plain create would); nothing in it is changed yet.
    pub(crate) fn open(path: &Path) -> Result<OpenedOutput> {
        let fails = |what: &str, e| {
            Error::invalid(format!("cannot {what} {}", path.display())).with_cause(e)
        };
        let target = enrich::batch::follow_links(path);
        let new = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target);
        let (file, created) = match new {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| fails("open", e))?;
                (file, false)
            }
            Err(e) => return Err(fails("create", e)),
        };
        Ok(OpenedOutput {
            file,
            path: target,
            created,
        })
    }

    /// Empties both outputs, the rejects first (of the two, the one cheaper to lose): if that
    /// fails, the output is given up unchanged.
    pub(crate) fn truncate_both(
        output: Option<OpenedOutput>,
        rejects: Option<OpenedOutput>,
    ) -> Result<(Option<std::fs::File>, Option<std::fs::File>)> {
        let rejects = match rejects.map(OpenedOutput::truncate).transpose() {
            Ok(rejects) => rejects,
            Err(error) => {
                output.into_iter().for_each(OpenedOutput::abandon);
                return Err(error);
            }
        };
        Ok((output.map(OpenedOutput::truncate).transpose()?, rejects))
    }

    /// The file, emptied if it is a regular one (a FIFO or a device is written as it is).
    fn truncate(self) -> Result<std::fs::File> {
        let cannot =
            |e| Error::invalid(format!("cannot empty {}", self.path.display())).with_cause(e);
        if !self.created && self.file.metadata().map_err(cannot)?.is_file() {
            self.file.set_len(0).map_err(cannot)?;
        }
        Ok(self.file)
    }

    /// Gives the file up unchanged: removed if this open made it.
    pub(crate) fn abandon(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An input stream.
pub(crate) type Input = Box<dyn AsyncRead + Unpin + Send>;

/// Opens an input: a file, or standard input for `-` or nothing. The error names the file; a
/// file that is missing or a directory is bad input (exit 2), like a bad line.
pub(crate) async fn open_input(path: Option<&Path>) -> Result<Input> {
    match path {
        None => Ok(Box::new(tokio::io::stdin())),
        Some(path) if path == Path::new("-") => Ok(Box::new(tokio::io::stdin())),
        Some(path) => Ok(Box::new(open_file(path).await?.0)),
    }
}

/// Opens the file at `path` as [`open_input`] does, with what it is (a regular file, a FIFO, a
/// device).
pub(crate) async fn open_file(path: &Path) -> Result<(tokio::fs::File, std::fs::Metadata)> {
    let cannot =
        |kind, e| Error::new(kind, format!("cannot open {}", path.display())).with_cause(e);
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::InvalidInput
        } else {
            ErrorKind::Internal
        };
        cannot(kind, e)
    })?;
    // A directory opens, and fails only when read.
    let metadata = file
        .metadata()
        .await
        .map_err(|e| cannot(ErrorKind::Internal, e))?;
    if metadata.is_dir() {
        return Err(Error::invalid(format!(
            "cannot open {}: it is a directory",
            path.display()
        )));
    }
    Ok((file, metadata))
}

/// SIGINT and SIGTERM, as they arrive, from now on: the process no longer dies of them.
pub(super) fn stop_signals() -> impl Stream<Item = Stop> + Unpin + Send {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, stop) in [
            (SignalKind::interrupt(), Stop::Interrupt),
            (SignalKind::terminate(), Stop::Terminate),
        ] {
            if let Ok(mut signal) = signal(kind) {
                let sender = sender.clone();
                tokio::spawn(async move {
                    while signal.recv().await.is_some() && sender.send(stop).is_ok() {}
                });
            }
        }
    }
    #[cfg(not(unix))]
    {
        let sender = sender.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() && sender.send(Stop::Interrupt).is_ok() {}
        });
    }
    drop(sender);
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async {
        receiver.recv().await.map(|stop| (stop, receiver))
    }))
}

/// The first SIGINT or SIGTERM from when it is first polled: what stops an import.
pub(super) async fn first_stop() -> Stop {
    match stop_signals().next().await {
        Some(stop) => stop,
        None => std::future::pending().await,
    }
}
