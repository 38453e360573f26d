//! Announcements of writes: what a watched source tells an enricher, so that its L1 drops what
//! another process wrote.

use std::sync::Arc;

/// What a watched store says about writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Announcements flow: from now on every write is told. Writes before may have been missed.
    Connected,
    /// These users were written.
    Changed(Vec<Box<str>>),
    /// Any user may have been written (the database was flushed, or announcements overflowed).
    ChangedAll,
    /// Announcements may be missed from now on, until the next [`StoreEvent::Connected`].
    Lost,
}

/// Receives [`StoreEvent`]s; called on the watcher's task, so it must not block.
pub type EventSink = Arc<dyn Fn(StoreEvent) + Send + Sync>;

/// Keeps a watch running; dropping it stops the watch.
#[derive(Debug)]
pub struct WatchGuard(tokio::task::AbortHandle);

impl WatchGuard {
    /// A guard that stops `task` (the source's watcher) when dropped: what a source's
    /// [`UserSource::watch`](super::UserSource::watch) returns.
    pub fn new(task: tokio::task::AbortHandle) -> Self {
        WatchGuard(task)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
