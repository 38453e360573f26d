//! How a store is opened: its namespace, its time limits, whether a file store may be
//! created, and which nodes of a Redis Cluster answer reads.

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
    /// A replica of each slot's master that says it is in sync with it, where there is one,
    /// to take reads off the masters; the master otherwise. A replica applies a write a moment
    /// after its master acknowledged it, so a read may show the version before a write that
    /// was just acknowledged, for as long as replication takes. It never shows a user as
    /// missing on a replica's word alone (a miss is asked of the master), and a watching
    /// enricher's L1 is invalidated by the replica it read from, once that replica has
    /// applied the write (see `ClusterStore`, feature `redis`).
    Replicas,
}

/// How to open a store: the namespace and the time limits.
#[derive(Debug, Clone)]
#[must_use]
pub struct StoreOptions {
    namespace: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    create_if_missing: bool,
    read_from: ReadFrom,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions::new()
    }
}

impl StoreOptions {
    /// The defaults: namespace `enrich`, 2 s to connect, 2 s for an answer, a file store
    /// created if missing, reads from masters.
    pub fn new() -> Self {
        StoreOptions {
            namespace: DEFAULT_NAMESPACE.to_string(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            create_if_missing: true,
            read_from: ReadFrom::Masters,
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
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "invalid namespace {ns:?}: use 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.'"
            )))
        }
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
}
