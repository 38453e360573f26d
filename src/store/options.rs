//! How a store is opened: its namespace, its time limits, whether a file store may be
//! created or written, how many replicas must confirm each write, and which nodes of a Redis
//! Cluster answer reads.

use std::time::Duration;

use crate::error::{Error, Result};

/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "enrich";

/// Which nodes of a Redis Cluster answer an enricher's reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ReadFrom {
    /// Each slot's master (the default): a read sees every write the master acknowledged.
    #[default]
    Masters,
    /// A replica of each slot's master that has caught up with it (checked every 250 ms),
    /// where there is one, to take reads off the masters; the master otherwise. A replica applies a write a moment
    /// after its master acknowledged it, so a read may show the version before a write that
    /// was just acknowledged, for as long as replication takes. It never shows a user as
    /// missing on a replica's word alone (a miss is asked of the master), and a watching
    /// enricher's L1 is invalidated by the replica it read from, once that replica has
    /// applied the write (see `ClusterStore`, feature `redis`). A key the watch announced
    /// written in the last 300 ms (every key, for 300 ms after the watch comes up or the
    /// store is flushed) is read from its master, so that what the L1 keeps is current.
    Replicas,
}

/// How long a write waits for its replicas when none is given
/// ([`StoreOptions::wait_timeout`]).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default of [`StoreOptions::file_cache`]: 1 GiB, what the file store's engine (redb)
/// holds by default. A store smaller than this is held whole once read.
pub const DEFAULT_FILE_CACHE: usize = 1 << 30;

/// How to open a store: the namespace, the time limits, the write concern, and where reads
/// go.
#[derive(Debug, Clone)]
#[must_use]
pub struct StoreOptions {
    namespace: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    create_if_missing: bool,
    read_from: ReadFrom,
    wait_replicas: u32,
    wait_timeout: Duration,
    file_cache: usize,
    file_read_only: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions::new()
    }
}

impl StoreOptions {
    /// The defaults: namespace `enrich`, 2 s to connect, 2 s for an answer, a file store
    /// created if missing, writes acknowledged without waiting for replicas, reads from
    /// masters.
    pub fn new() -> Self {
        StoreOptions {
            namespace: DEFAULT_NAMESPACE.to_string(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            create_if_missing: true,
            read_from: ReadFrom::Masters,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            file_cache: DEFAULT_FILE_CACHE,
            file_read_only: false,
        }
    }

    /// Which nodes of a Redis Cluster answer reads ([`ReadFrom::Masters`] by default). Other
    /// backends ignore it.
    pub fn read_from(mut self, read_from: ReadFrom) -> Self {
        self.read_from = read_from;
        self
    }

    /// Which nodes of a Redis Cluster answer reads.
    pub fn read_from_value(&self) -> ReadFrom {
        self.read_from
    }

    /// Whether opening a file store that does not exist creates it (the default) or fails
    /// with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the path. Off for work that only reads, so that a
    /// mistyped path or another working directory is an error, not an empty store. Other
    /// backends ignore it.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Whether a store that does not exist yet may be created.
    pub fn create_if_missing_value(&self) -> bool {
        self.create_if_missing
    }

    /// The most a file store holds in memory of the pages of its file, in bytes
    /// ([`DEFAULT_FILE_CACHE`] by default), besides an enricher's L1 in front of it. Less
    /// memory for a large store costs reads of its file again: a job over 1M users of a
    /// 550 MB file took 12 % longer with 64 MiB and peaked at about 365 MB instead
    /// of 790 MB (BENCHMARKS.md, fifth pass).
    /// Other backends ignore it.
    pub fn file_cache(mut self, bytes: usize) -> Self {
        self.file_cache = bytes;
        self
    }

    /// The most a file store holds of its file's pages.
    pub fn file_cache_value(&self) -> usize {
        self.file_cache
    }

    /// Whether a file store is opened only to read (off by default): every read answers, every
    /// write fails with [`ErrorKind::PermissionDenied`](crate::ErrorKind::PermissionDenied)
    /// naming the file, and a file that does not exist is not created (an
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the path). For a
    /// process that must never change the store, such as one serving a shipped file. Without
    /// it, a file this process may read but not write (its permissions, a read-only mount) is
    /// opened so all the same. Other backends ignore it.
    pub fn file_read_only(mut self, read_only: bool) -> Self {
        self.file_read_only = read_only;
        self
    }

    /// Whether a file store is opened only to read.
    pub fn file_read_only_value(&self) -> bool {
        self.file_read_only
    }

    /// Keeps users apart from those of other namespaces in the same store.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long to wait for a connection before the store counts as unavailable.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for an answer before a command fails with a timeout.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many replicas must confirm each write before it is acknowledged; 0 (the default)
    /// acknowledges a write once the master applied it.
    ///
    /// Redis replicates asynchronously: a write the master acknowledged and then lost in a
    /// crash, before any replica had it, is gone once a replica is promoted. With `n` > 0,
    /// every write of a Redis or Redis Cluster store is followed, on the same connection,
    /// by `WAIT n` ([`StoreOptions::wait_timeout`]); a write that fewer than `n` replicas
    /// confirmed in time fails with [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown):
    /// the master applied it, and a failover may lose it. Writes that change nothing (a
    /// conflict, a user not found) are answered as such. A store without replicas (`memory:`,
    /// `file:`) refuses to open with `n` > 0.
    pub fn wait_replicas(mut self, n: u32) -> Self {
        self.wait_replicas = n;
        self
    }

    /// How long a write waits for its replicas ([`StoreOptions::wait_replicas`]) before its
    /// outcome is reported unknown; [`DEFAULT_WAIT_TIMEOUT`] (1 s) by default, 1 ms at least.
    /// A write's answer may then take this long beyond the
    /// [`response timeout`](StoreOptions::response_timeout).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// How many replicas must confirm each write; 0 for none.
    pub fn wait_replicas_value(&self) -> u32 {
        self.wait_replicas
    }

    /// How long a write waits for its replicas.
    pub fn wait_timeout_value(&self) -> Duration {
        self.wait_timeout
    }

    /// How long the answer to a write may take: an answer's time, and the wait for replicas
    /// when there is one.
    #[cfg(feature = "redis")]
    pub(crate) fn write_response_timeout(&self) -> Duration {
        match self.wait_replicas {
            0 => self.response_timeout,
            _ => self.response_timeout.saturating_add(self.wait_timeout),
        }
    }

    /// Refuses a write concern for `store`, which has no replicas to confirm anything.
    pub(super) fn without_replicas(&self, store: &str) -> Result<()> {
        match self.wait_replicas {
            0 => Ok(()),
            n => Err(Error::invalid(format!(
                "wait_replicas {n} (--wait-replicas, ENRICH_WAIT_REPLICAS) needs a Redis store \
                 with replicas to confirm each write, and {store} has none"
            ))),
        }
    }

    /// The namespace.
    pub fn namespace_str(&self) -> &str {
        &self.namespace
    }

    /// How long a connection may take.
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// How long an answer may take.
    pub fn response_timeout_value(&self) -> Duration {
        self.response_timeout
    }

    pub(super) fn validate(&self) -> Result<()> {
        let ns = &self.namespace;
        let ok = !ns.is_empty()
            && ns.len() <= 64
            && ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(Error::invalid(format!(
                "invalid namespace {ns:?}: use 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.'"
            )));
        }
        // `WAIT n 0` would wait for ever.
        if self.wait_replicas > 0 && self.wait_timeout < Duration::from_millis(1) {
            return Err(Error::invalid(format!(
                "wait_timeout {:?} (--wait-timeout, ENRICH_WAIT_TIMEOUT) is below the minimum of 1 ms",
                self.wait_timeout
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_checked() {
        assert!(
            StoreOptions::new()
                .namespace("tenant-1.a")
                .validate()
                .is_ok()
        );
        assert!(StoreOptions::new().namespace("a b").validate().is_err());
        assert!(StoreOptions::new().namespace("").validate().is_err());
    }

    #[test]
    fn a_write_concern_needs_a_timeout_and_replicas() {
        let on = StoreOptions::new().wait_replicas(1);
        assert_eq!(on.wait_timeout_value(), DEFAULT_WAIT_TIMEOUT);
        assert!(on.validate().is_ok());
        let err = (on.clone().wait_timeout(Duration::ZERO).validate()).unwrap_err();
        assert!(err.to_string().contains("--wait-timeout"), "{err}");
        // Off, the timeout is not used.
        let off = StoreOptions::new().wait_timeout(Duration::ZERO);
        assert!(off.validate().is_ok() && off.without_replicas("memory:").is_ok());
        let err = on.without_replicas("memory:").unwrap_err();
        assert!(err.is_invalid_input() && err.to_string().contains("--wait-replicas"));
    }
}
