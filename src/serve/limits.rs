//! What one request, one connection and the whole server may cost: every bound has a default
//! here, a setter for library users and a flag of `enrich serve`, and going over it is answered
//! with a Stream error naming the limit.

use std::time::Duration;

/// Bounds on the memory, time and connections the server gives to clients.
///
/// The defaults suit a server in front of Stream's clients: feed pages are tens of activities,
/// users at most 10 kB, batch calls at most 1,000 ids (Stream's own limit).
#[derive(Debug, Clone)]
#[must_use]
pub struct Limits {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_activities: u64,
    pub(crate) max_references: u64,
    pub(crate) max_response_bytes: usize,
    pub(crate) max_batch_ids: usize,
    pub(crate) max_in_flight_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new()
    }
}

impl Limits {
    /// The defaults, each named at its setter.
    pub fn new() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_activities: 1_000,
            max_references: 10_000,
            max_response_bytes: 16 << 20,
            max_batch_ids: 1_000,
            max_in_flight_bytes: 256 << 20,
            max_connections: 1_024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// The largest request body, 1 MiB by default. A body declared larger is refused before it
    /// is read; one that turns out larger stops being kept at the limit (413). The rest of a
    /// refused body, up to 16 times the limit, is read and dropped for 250 ms at most before the
    /// answer, so that a client still sending it reads the 413 rather than a reset connection.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Activities one enrich request may hold (a group counts its activities), 1,000 by
    /// default.
    pub fn max_activities(mut self, activities: u64) -> Self {
        self.max_activities = activities;
        self
    }

    /// References one enrich request may hold, 10,000 by default. Checked before the store is
    /// asked anything.
    pub fn max_references(mut self, references: u64) -> Self {
        self.max_references = references;
        self
    }

    /// The largest enriched document one request may be answered with, 16 MiB by default.
    /// Enrichment multiplies: a reference of a few bytes becomes a user of up to 10 kB, so the
    /// size is computed once the users are known and an answer over it is refused before it is
    /// built. A collections select or upsert answering over it is refused the same way (an
    /// upsert then writes nothing).
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Ids (or users, or collection entries) one batch call may name, 1,000 by default, as
    /// Stream allows.
    pub fn max_batch_ids(mut self, ids: usize) -> Self {
        self.max_batch_ids = ids;
        self
    }

    /// Bytes that request bodies and responses may hold at once over all connections, 256 MiB
    /// by default. A request that would go over it waits for room, for at most 5 s, then is
    /// answered 503.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// Connections open at once, 1,024 by default, and never more than the process's limit on
    /// open files allows (less a reserve for the store and the log). At the limit, the oldest
    /// connection that has no request in progress is closed to make room for a new one.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// How long a client may take to send a request's line and headers, from the connection's
    /// start or from the first byte of a request on a kept-alive connection, 10 s by default.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a client may take to send a request's body, 30 s by default (408).
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// How long a kept-alive connection may wait for its next request, 60 s by default.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a response may wait for the client to take more of it, 30 s by default: a
    /// client that stops reading loses its connection, and the response's memory is freed.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How long a request may take once it has arrived, 30 s by default (504).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a shutdown waits for requests in progress before it closes their connections,
    /// 10 s by default.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}
