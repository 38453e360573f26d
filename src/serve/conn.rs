//! Connections: the accept loop, the clocks of each connection, the connection limit, and
//! shutdown with a deadline.
//!
//! Each connection is in one of four phases, and each phase has its clock:
//!
//! | phase | from | closed after |
//! |---|---|---|
//! | head | the accept, or the first byte of a next request | [`Limits::header_timeout`] |
//! | busy | the request's headers, to the response's last byte | [`Limits::write_timeout`] without the client taking any of the response; the handler itself is bounded by the request timeout and the body timeout |
//! | idle | the end of a response on a kept-alive connection | [`Limits::idle_timeout`] |
//!
//! (Hyper's own header timeout starts its clock when a connection falls idle too, so it could
//! not keep the header and idle timeouts apart: the clocks are kept here, watched by each
//! connection's task.)
//!
//! At [`Limits::max_connections`] (never more than the open-file limit allows, less a
//! reserve), a new connection makes room by closing the oldest one with no request in
//! progress: a client holding many connections open without using them cannot lock others
//! out, and one that runs out the process's file descriptors (`EMFILE`) is met the same way.
//!
//! Shutdown stops accepting, closes every connection with no request in progress, lets the
//! requests in progress finish for up to [`Limits::shutdown_timeout`], then closes the rest.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::limits::Limits;
use super::metrics::Metrics;

/// File descriptors kept for everything but client connections: the store's connections, the
/// file store, the log, a connection being accepted.
const FD_RESERVE: u64 = 64;

/// Where a connection stops reading a request's line and headers. hyper's last read may fill
/// its buffer's spare room beyond it, so a head of up to twice this may be taken, depending on
/// how its bytes arrive; a connection never buffers 128 KiB of head.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Serves `app` on `listener` until `shutdown` resolves, within `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let max = effective_max_connections(limits.max_connections);
    let registry = Arc::new(Registry::default());
    let clock = Clock::new();
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if registry.len() >= max && !registry.evict_oldest_idle() {
                        metrics.record_connection_refused();
                        refuse(&stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    next_id += 1;
                    let conn = Arc::new(Conn::new(next_id, clock.now()));
                    registry.add(conn.clone());
                    let task = Connection {
                        conn,
                        app: app.clone(),
                        limits: limits.clone(),
                        clock,
                        metrics: metrics.clone(),
                        registry: registry.clone(),
                        stopping: stopping.clone(),
                    };
                    tasks.spawn(task.run(stream));
                }
                Err(err) if out_of_descriptors(&err) => {
                    // Closing an idle connection frees a descriptor for the next accept.
                    metrics.record_connection_refused();
                    if !registry.evict_oldest_idle() {
                        tracing::warn!("cannot accept a connection: {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // A connection that failed before it was accepted (reset, aborted).
                Err(_) => {}
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "requests still in progress after the shutdown timeout; closing their connections"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// The connection limit, lowered to what the open-file limit allows.
fn effective_max_connections(configured: usize) -> usize {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match files {
        Some(files) if (files.saturating_sub(FD_RESERVE) as usize) < configured => {
            let max = (files.saturating_sub(FD_RESERVE) as usize).max(1);
            tracing::info!(
                "at most {max} connections at once: the open-file limit is {files} \
                 (raise it with ulimit -n to allow the {configured} of --max-connections)"
            );
            max
        }
        _ => configured,
    }
}

fn out_of_descriptors(err: &io::Error) -> bool {
    // EMFILE: the process's limit; ENFILE: the system's.
    matches!(err.raw_os_error(), Some(24) | Some(23))
}

/// Tells a connection over the limit why it is closed, if its socket takes the bytes at once.
fn refuse(stream: &TcpStream) {
    const BODY: &str = r#"{"code":1,"detail":"the server is at its limit of connections (--max-connections); retry shortly","duration":"0.00ms","exception":"ServiceUnavailableException","status_code":503}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// Milliseconds since the server started: the clocks of every connection, in atomics.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn new() -> Clock {
        Clock(Instant::now())
    }

    fn now(&self) -> u64 {
        // Zero means "not set" below, so the clock starts at 1.
        self.0.elapsed().as_millis() as u64 + 1
    }
}

/// What the registry and the connection's task know of one connection.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// Requests in progress: from their headers to the last byte of their response.
    busy: AtomicU32,
    /// True once a request has finished: the connection is then idle, not new, between
    /// requests.
    served: AtomicBool,
    /// True when bytes of a next request arrived while no request was in progress.
    head: AtomicBool,
    /// When the current phase began.
    since: AtomicU64,
    /// When a write of the response began to wait for the client; 0 if none waits.
    blocked: AtomicU64,
    /// Wakes the task to close the connection now.
    close: Notify,
}

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    HeaderTimeout,
    IdleTimeout,
    WriteTimeout,
    Evicted,
    Shutdown,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::WriteTimeout => "write_timeout",
            Closed::Evicted => "evicted",
            Closed::Shutdown => "shutdown",
        }
    }
}

impl Conn {
    fn new(id: u64, now: u64) -> Conn {
        Conn {
            id,
            busy: AtomicU32::new(0),
            served: AtomicBool::new(false),
            head: AtomicBool::new(false),
            since: AtomicU64::new(now),
            blocked: AtomicU64::new(0),
            close: Notify::new(),
        }
    }

    /// No request in progress, and no answer's last bytes waiting for the client: hyper counts
    /// an answer done once it has taken its last piece, which may still sit in its buffer.
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && self.blocked.load(Ordering::Acquire) == 0
    }

    /// A request's headers have arrived.
    fn begin(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.head.store(false, Ordering::Release);
    }

    /// A response's last byte was taken (or the response was dropped).
    fn end(&self, now: u64) {
        self.served.store(true, Ordering::Release);
        self.since.store(now, Ordering::Release);
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// Bytes arrived from the client.
    fn read(&self, now: u64) {
        if self.idle() && !self.head.swap(true, Ordering::AcqRel) {
            // A kept-alive connection's next request: its head has the header timeout from
            // now. A new connection's first request counts from the accept.
            if self.served.load(Ordering::Acquire) {
                self.since.store(now, Ordering::Release);
            }
        }
    }

    /// Whether a clock has run out.
    fn verdict(&self, now: u64, limits: &Limits) -> Option<Closed> {
        let over = |since: u64, limit: Duration| {
            since != 0 && now.saturating_sub(since) > limit.as_millis() as u64
        };
        if !self.idle() {
            return over(self.blocked.load(Ordering::Acquire), limits.write_timeout)
                .then_some(Closed::WriteTimeout);
        }
        let since = self.since.load(Ordering::Acquire);
        if self.head.load(Ordering::Acquire) || !self.served.load(Ordering::Acquire) {
            over(since, limits.header_timeout).then_some(Closed::HeaderTimeout)
        } else {
            over(since, limits.idle_timeout).then_some(Closed::IdleTimeout)
        }
    }
}

/// The open connections, oldest first.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        crate::sync::lock(&self.conns)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn add(&self, conn: Arc<Conn>) {
        self.lock().insert(conn.id, conn);
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the oldest connection with no request in progress; false if there is none.
    fn evict_oldest_idle(&self) -> bool {
        let mut conns = self.lock();
        let Some(id) = conns.values().find(|c| c.idle()).map(|c| c.id) else {
            return false;
        };
        if let Some(conn) = conns.remove(&id) {
            conn.close.notify_one();
        }
        true
    }
}

/// One connection's task.
struct Connection {
    conn: Arc<Conn>,
    app: Router,
    limits: Limits,
    clock: Clock,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        self.metrics.record_connection_open(1);
        let conn = self.conn.clone();
        let clock = self.clock;
        let io = TokioIo::new(Watched {
            inner: stream,
            conn: conn.clone(),
            clock,
        });
        let app = self.app.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            conn.begin();
            let guard = EndOfResponse {
                conn: conn.clone(),
                clock,
            };
            let response = app.clone().oneshot(request.map(Body::new));
            async move {
                let response = response
                    .await
                    .unwrap_or_else(|never: Infallible| match never {});
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        inner: body,
                        _guard: guard,
                    })
                }))
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.keep_alive(true).max_buf_size(MAX_HEAD_BYTES);
        let connection = http.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let mut tick = tokio::time::interval(check_every(&self.limits));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = *self.stopping.borrow();
        let closed = loop {
            if draining && self.conn.idle() {
                break Some(Closed::Shutdown);
            }
            tokio::select! {
                _ = connection.as_mut() => break None,
                _ = tick.tick() => {
                    if let Some(why) = self.conn.verdict(self.clock.now(), &self.limits) {
                        break Some(why);
                    }
                }
                () = self.conn.close.notified() => break Some(Closed::Evicted),
                changed = self.stopping.changed(), if !draining => {
                    if changed.is_err() || *self.stopping.borrow() {
                        draining = true;
                        // The request in progress finishes; the connection then closes.
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        };
        if let Some(why) = closed {
            self.metrics.record_connection_closed(why.label());
        }
        self.registry.remove(self.conn.id);
        self.metrics.record_connection_open(-1);
    }
}

/// How often a connection's clocks are looked at: a tenth of the shortest timeout, between
/// 10 ms and 1 s.
fn check_every(limits: &Limits) -> Duration {
    let shortest = [
        limits.header_timeout,
        limits.idle_timeout,
        limits.write_timeout,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1));
    (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Ends a request's busy phase when its response is done with.
struct EndOfResponse {
    conn: Arc<Conn>,
    clock: Clock,
}

impl Drop for EndOfResponse {
    fn drop(&mut self) {
        self.conn.end(self.clock.now());
    }
}

/// A response body that ends its request's busy phase when dropped: hyper drops it once the
/// last byte is written, or when the connection goes.
struct Tracked {
    inner: Body,
    _guard: EndOfResponse,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, watched: reads start a request's head clock, writes that wait for the client
/// start the write clock.
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
    clock: Clock,
}

impl Watched {
    fn wrote<T>(&self, poll: &Poll<io::Result<T>>) {
        match poll {
            Poll::Pending => {
                if self.conn.blocked.load(Ordering::Relaxed) == 0 {
                    self.conn.blocked.store(self.clock.now(), Ordering::Release);
                }
            }
            Poll::Ready(_) => self.conn.blocked.store(0, Ordering::Release),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read(self.clock.now());
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(&poll);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new()
            .header_timeout(Duration::from_millis(100))
            .idle_timeout(Duration::from_millis(300))
            .write_timeout(Duration::from_millis(200))
    }

    #[test]
    fn each_phase_has_its_clock() {
        let limits = limits();
        let conn = Conn::new(1, 1);
        // New: the head clock runs from the accept, bytes or not.
        assert_eq!(conn.verdict(100, &limits), None);
        conn.read(50);
        assert_eq!(conn.verdict(102, &limits), Some(Closed::HeaderTimeout));
        // Busy: only a blocked write counts.
        conn.begin();
        assert_eq!(conn.verdict(10_000, &limits), None);
        conn.blocked.store(10_000, Ordering::Release);
        assert_eq!(conn.verdict(10_250, &limits), Some(Closed::WriteTimeout));
        conn.blocked.store(0, Ordering::Release);
        conn.end(10_300);
        // Idle: the idle clock, until bytes of a next request come.
        assert_eq!(conn.verdict(10_500, &limits), None);
        assert_eq!(conn.verdict(10_700, &limits), Some(Closed::IdleTimeout));
        conn.read(10_650);
        assert_eq!(conn.verdict(10_700, &limits), None);
        assert_eq!(conn.verdict(10_760, &limits), Some(Closed::HeaderTimeout));
    }

    #[test]
    fn eviction_takes_the_oldest_idle_connection() {
        let registry = Registry::default();
        let (a, b, c) = (
            Arc::new(Conn::new(1, 1)),
            Arc::new(Conn::new(2, 1)),
            Arc::new(Conn::new(3, 1)),
        );
        a.begin();
        for conn in [&a, &b, &c] {
            registry.add(conn.clone());
        }
        assert!(registry.evict_oldest_idle());
        assert_eq!(registry.lock().keys().copied().collect::<Vec<_>>(), [1, 3]);
        c.begin();
        assert!(!registry.evict_oldest_idle());
    }
}
