//! Connection-level bounds (docs/contract.md §10): what a client can make the proxy hold
//! before and after auth, enforced in the accept loop and around the server
//! connection (the gateway's own for HTTP/1, [`super::http1`]; hyper's for HTTP/2).
//!
//! - `server.header_timeout`: a fresh connection, or one whose next request has
//!   begun, must deliver the request head within this; else it is closed.
//! - `server.keepalive_timeout`: a connection with no request in progress is
//!   closed after this much silence.
//! - `server.body_timeout`: the whole request body must arrive within this of the
//!   head; else the handler answers 408 ([`BodyTimedOut`]).
//! - `server.max_connections` (and the file-descriptor limit): a new client past
//!   the cap closes the connection that has been idle longest (then the slowest
//!   one still sending its head); with none to shed it is refused.
//! - A declared `Content-Length` over `server.max_body_bytes` is answered 413 at
//!   once, before any byte of the body is read (and without `100 Continue`).
//! - `server.max_body_memory`: every body draws on one budget before each chunk
//!   is read; past it the body waits (TCP backpressure), then 503
//!   ([`super::body_budget`]).
//! - Memory: every request head is read here ([`serve`]), into a buffer the
//!   size of what arrived (64 KiB at most, else 431); the HTTP/1 server
//!   connection holds nothing else between requests ([`super::http1`]).
//!
//! Each connection has a [`ConnState`]: two atomics touched per request, one
//! per read while idle, and one timer per connection that is re-armed only
//! when it fires, at least every `min(header_timeout, keepalive_timeout)`: a
//! deadline is enforced at most that late.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::Gateway;
use super::body_budget::{Acquire, BodyMemoryFull, CHUNK, Lease};
use super::body_end::{EndingBody, OnEnd};
use crate::api::metrics::{Metrics, Rejection};
use crate::api::openai::ApiError;

/// File descriptors kept for everything but client connections: upstream
/// connections, logs, the control socket, prompt fetches.
const FD_RESERVE: u64 = 256;

/// The timeouts and caps of [`crate::home::config::ServerConfig`], as durations.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// `server.max_connections`, lowered to what the descriptor limit allows.
    pub max_connections: usize,
    pub max_body_bytes: usize,
}

impl Limits {
    /// The limits a new connection gets: the timeouts and `max_connections` as
    /// last (re)loaded; `max_body_bytes` as started (the routes' body limit is
    /// built with it).
    pub fn new(gw: &Gateway, fd_limit: Option<u64>) -> Limits {
        let live = gw.live();
        let server = &live.config.server;
        let by_fds = fd_limit.map_or(usize::MAX, |fds| {
            let reserve = FD_RESERVE + 2 * server.max_concurrent as u64;
            fds.saturating_sub(reserve).max(16) as usize
        });
        Limits {
            header_timeout: Duration::from_secs(server.header_timeout),
            body_timeout: Duration::from_secs(server.body_timeout),
            keepalive_timeout: Duration::from_secs(server.keepalive_timeout),
            max_connections: server.max_connections.min(by_fds),
            max_body_bytes: gw.config.server.max_body_bytes,
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in
/// effect afterwards (`None` if it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// The open client connections, for the cap, for shedding and for the drain.
pub struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// Set when the drain begins: a connection told to close then finishes
    /// the request it is serving first.
    draining: AtomicBool,
    /// `warden_client_connections` and the shed/refused counters.
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            draining: AtomicBool::new(false),
            metrics,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, first closing the longest-idle one (then the
    /// slowest one still sending its head) when `max` are open. `None`: all are
    /// busy, refuse the newcomer.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<Arc<ConnState>> {
        let mut conns = self.lock();
        if conns.len() >= max {
            let victim = conns
                .values()
                .filter(|c| c.active.load(Ordering::Relaxed) == 0)
                // Idle connections first (false < true), then the oldest wait;
                // within one millisecond, the first admitted.
                .min_by_key(|c| {
                    (
                        c.in_head.load(Ordering::Relaxed),
                        c.since_ms.load(Ordering::Relaxed),
                        c.id,
                    )
                })
                .map(|c| c.id);
            match victim.and_then(|id| conns.remove(&id)) {
                Some(victim) => {
                    self.metrics.connection_shed();
                    victim.close.notify_one();
                }
                None => {
                    self.metrics.connection_refused();
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            id,
            active: AtomicU32::new(0),
            since_ms: AtomicU64::new(self.now_ms()),
            in_head: AtomicBool::new(true),
            body_open: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            close: Notify::new(),
            registry: self.clone(),
        });
        conns.insert(id, state.clone());
        self.metrics.connections_open(conns.len());
        Some(state)
    }

    fn remove(&self, id: u64) {
        let mut conns = self.lock();
        if conns.remove(&id).is_some() {
            self.metrics.connections_open(conns.len());
        }
    }

    /// The drain: every connection finishes what it is serving, then closes
    /// (one that has sent nothing yet closes at once).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for conn in self.lock().values() {
            conn.close.notify_one();
        }
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Open client connections.
    pub fn open(&self) -> usize {
        self.lock().len()
    }
}

/// One client connection's progress.
pub struct ConnState {
    id: u64,
    /// Requests being served: head parsed, response not yet fully sent.
    active: AtomicU32,
    /// When the current wait began (ms since the registry's epoch): the last
    /// response's end, or the first byte of a new request head.
    since_ms: AtomicU64,
    /// No request in progress and a head is expected now (a fresh connection,
    /// or bytes arrived after an idle spell).
    in_head: AtomicBool,
    /// The current request's body has not been read to its end.
    body_open: AtomicBool,
    /// The last write to the socket could not complete (the client is not
    /// reading): an answer still has bytes to send.
    write_blocked: AtomicBool,
    pub(super) close: Notify,
    pub(super) registry: Arc<Registry>,
}

impl ConnState {
    pub(super) fn metrics(&self) -> &Metrics {
        &self.registry.metrics
    }

    /// Bytes arrived: if the connection was idle, a request head has begun.
    fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0 && !self.in_head.load(Ordering::Relaxed) {
            self.since_ms
                .store(self.registry.now_ms(), Ordering::Relaxed);
            self.in_head.store(true, Ordering::Relaxed);
        }
    }

    /// A request head was parsed and is being served.
    pub(crate) fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.in_head.store(false, Ordering::Relaxed);
    }

    /// A response was sent (or abandoned).
    fn end(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.since_ms
                .store(self.registry.now_ms(), Ordering::Relaxed);
        }
    }

    /// Records whether a write to the socket completed (stored only on change).
    pub(super) fn set_write_blocked(&self, blocked: bool) {
        if self.write_blocked.load(Ordering::Relaxed) != blocked {
            self.write_blocked.store(blocked, Ordering::Relaxed);
        }
    }

    /// When this connection must be closed if nothing changes, and whether that
    /// moment has come. `None`: a request is in progress (its body and answer
    /// have their own bounds); check again later.
    fn deadline(&self, limits: &Limits) -> (Option<Duration>, bool) {
        if self.active.load(Ordering::Relaxed) > 0 {
            return (None, false);
        }
        let limit = if self.in_head.load(Ordering::Relaxed) {
            limits.header_timeout
        } else {
            limits.keepalive_timeout
        };
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        let at = since + limit;
        let now = Duration::from_millis(self.registry.now_ms());
        (Some(at.saturating_sub(now)), now >= at)
    }
}

/// What every connection of one listener shares: one `Arc` per connection
/// instead of a copy of each part.
pub struct Shared {
    pub router: axum::Router,
    pub gw: Arc<Gateway>,
    /// For HTTP/2 (a connection that opens with the HTTP/2 preface).
    pub builder: Builder<TokioExecutor>,
    /// The descriptor limit, for [`Shared::limits`].
    pub fd_limit: Option<u64>,
    pub registry: Arc<Registry>,
}

impl Shared {
    /// The limits for a connection accepted now: a reload changes them for
    /// new connections; one keeps those it was accepted with.
    pub fn limits(&self) -> Limits {
        Limits::new(&self.gw, self.fd_limit)
    }
}

/// Serves one client connection until it ends, times out, is shed, or the
/// drain closes it.
///
/// Until a request head is complete a connection holds only its socket, this
/// small future and the bytes it has sent. An HTTP/1 request is then served by
/// the gateway's own server connection ([`super::http1`]), which holds no
/// buffer of its own between requests: after each answer the next head is
/// read here again, as a first one is, so an idle keep-alive connection is as
/// small as a fresh one: about 2 KiB of the proxy's memory plus what it sent
/// (benches/results/hostile.md). HTTP/2 is served by hyper's connection,
/// kept until it ends.
pub async fn serve(stream: TcpStream, state: Arc<ConnState>, shared: Arc<Shared>) {
    let limits = shared.limits();
    let service = ConnService {
        shared: shared.clone(),
        state: state.clone(),
        limits,
    };
    let call = move |request| service.route(request);
    serve_with(stream, state, limits, &call, Some(&shared)).await;
}

/// [`serve`], with `service` answering HTTP/1 requests (HTTP/2 only with `h2`).
pub(crate) async fn serve_with(
    stream: TcpStream,
    state: Arc<ConnState>,
    limits: Limits,
    service: super::http1::Service<'_>,
    h2: Option<&Arc<Shared>>,
) {
    let period = limits.keepalive_timeout.min(limits.header_timeout);
    // State changes (a request begins or ends) do not wake this task, which
    // keeps the hot path free of it: it looks again at least every `period`,
    // so a deadline is enforced at most `period` late.
    let next_wait = |state: &ConnState| {
        let (wait, expired) = state.deadline(&limits);
        (!expired).then(|| wait.unwrap_or(period).min(period) + Duration::from_millis(1))
    };
    // One timer and one close signal for the whole connection, armed again
    // only when they fire: a request costs neither.
    let timer = tokio::time::sleep(period + Duration::from_millis(1));
    tokio::pin!(timer);
    let close = state.close.notified();
    tokio::pin!(close);
    let mut waits = Waits {
        timer: timer.as_mut(),
        close: close.as_mut(),
        state: &state,
        next_wait: &next_wait,
    };
    let mut stream = stream;
    let mut head = FirstHead::default();
    loop {
        if !read_head(&stream, &mut head, &state, &mut waits).await {
            break;
        }
        if head.bytes.starts_with(H2_PREFACE) {
            if let Some(shared) = h2 {
                serve_h2(stream, head, &state, shared, limits, &next_wait).await;
            }
            break;
        }
        match super::http1::serve_one(
            stream,
            head.bytes,
            &state,
            service,
            &mut waits,
            limits.header_timeout,
        )
        .await
        {
            // The answer is sent and the connection stays open: the next
            // head is read here, with the bytes of it already read.
            Some((socket, unread)) => {
                stream = socket;
                head = FirstHead::resume(unread);
            }
            None => break,
        }
    }
    state.registry.remove(state.id);
}

/// The HTTP/2 connection preface (RFC 9113 §3.4) begins with this line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Reads until `head` holds a whole request head; `false`: the connection is
/// over (closed, timed out, shed, drained, or answered 431).
async fn read_head(
    stream: &TcpStream,
    head: &mut FirstHead,
    state: &ConnState,
    waits: &mut Waits<'_, '_>,
) -> bool {
    if !head.bytes.is_empty() {
        // Bytes of a next request were read with the last one.
        state.on_read();
        if head.scan() {
            return true;
        }
    }
    loop {
        tokio::select! {
            readable = stream.readable() => match readable.and_then(|()| head.read_from(stream, state)) {
                Ok(Read::Complete) => return true,
                Ok(Read::More) => {}
                Ok(Read::TooLarge) => {
                    // Answered here, from what was read: a fresh socket's send
                    // buffer takes the whole answer at once.
                    state.metrics().malformed_request(431);
                    let _ = stream.try_write(&super::malformed::automatic(
                        axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        super::MAX_HEAD_BYTES,
                    ));
                    return false;
                }
                Ok(Read::Closed) | Err(_) => return false,
            },
            // Shed, or the drain: no request was started, nothing is lost.
            () = waits.close.as_mut() => return false,
            () = waits.timer.as_mut() => if waits.expired() {
                return false;
            },
        }
    }
}

/// What a connection waits on besides its socket: its one timer, re-armed
/// only when it fires (at least every `min(header_timeout,
/// keepalive_timeout)`), and the signal to close (shedding, the drain).
pub(crate) struct Waits<'a, 's> {
    pub(crate) timer: Pin<&'a mut tokio::time::Sleep>,
    pub(crate) close: Pin<&'a mut tokio::sync::futures::Notified<'s>>,
    state: &'s ConnState,
    next_wait: &'a (dyn Fn(&ConnState) -> Option<Duration> + Send + Sync),
}

impl Waits<'_, '_> {
    /// The timer fired: whether the connection's deadline has passed (it is
    /// then closed); if not, the timer is armed again.
    pub(crate) fn expired(&mut self) -> bool {
        match (self.next_wait)(self.state) {
            None => true,
            Some(wait) => {
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + wait);
                false
            }
        }
    }

    /// The close signal fired and was handled: listen for the next one.
    pub(crate) fn rearm_close(&mut self) {
        let state = self.state;
        self.close.set(state.close.notified());
    }
}

/// What hyper serves a connection with: its socket (behind the bytes already
/// read) and the service that answers its requests.
fn io_and_service(
    stream: TcpStream,
    head: FirstHead,
    state: &Arc<ConnState>,
    shared: &Arc<Shared>,
    limits: Limits,
) -> (TokioIo<WatchedIo<TcpStream>>, ConnService) {
    let io = TokioIo::new(WatchedIo::new(stream, head.bytes.freeze(), state.clone()));
    let service = ConnService {
        shared: shared.clone(),
        state: state.clone(),
        limits,
    };
    (io, service)
}

/// Serves an HTTP/2 connection until it ends.
async fn serve_h2(
    stream: TcpStream,
    head: FirstHead,
    state: &Arc<ConnState>,
    shared: &Arc<Shared>,
    limits: Limits,
    next_wait: &impl Fn(&ConnState) -> Option<Duration>,
) {
    let (io, service) = io_and_service(stream, head, state, shared, limits);
    let mut conn = Box::pin(shared.builder.serve_connection_with_upgrades(io, service));
    let mut draining = false;
    while let Some(wait) = next_wait(state) {
        tokio::select! {
            _ = conn.as_mut() => break,
            () = state.close.notified() => {
                if draining || !shared.registry.is_draining() {
                    break; // shed to make room
                }
                // The drain: finish the request in progress, then close.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A request head, read before any server connection is involved.
#[derive(Default)]
struct FirstHead {
    bytes: BytesMut,
    /// Bytes already searched for the end of the head.
    searched: usize,
}

/// What one read of [`FirstHead`] found.
enum Read {
    /// The head is all there (and maybe more: it all goes to the server connection).
    Complete,
    More,
    /// `MAX_HEAD_BYTES` and still no end of the head: 431.
    TooLarge,
    Closed,
}

impl FirstHead {
    /// Most first heads fit; a longer one doubles the buffer as it arrives.
    const FIRST_READ: usize = 1024;

    /// Continues with bytes already read (none, usually).
    fn resume(bytes: BytesMut) -> FirstHead {
        FirstHead { bytes, searched: 0 }
    }

    /// Whether the bytes held already end a head (looked for from where the
    /// last look ended, 2 bytes back, in case the end straddles two reads).
    fn scan(&mut self) -> bool {
        let from = self.searched.saturating_sub(2);
        let recent = &self.bytes[from..];
        let found = memchr::memchr_iter(b'\n', recent).any(|at| {
            let after = &recent[at + 1..];
            after.first() == Some(&b'\n') || after.starts_with(b"\r\n")
        });
        self.searched = self.bytes.len();
        found
    }

    /// Reads what the socket has. `Err`: a read error (the connection is over).
    fn read_from(&mut self, stream: &TcpStream, state: &ConnState) -> std::io::Result<Read> {
        if self.bytes.len() == self.bytes.capacity() {
            self.bytes
                .reserve(self.bytes.capacity().max(Self::FIRST_READ));
        }
        match stream.try_read_buf(&mut self.bytes) {
            Ok(0) => return Ok(Read::Closed),
            // On an idle keep-alive connection, a request head has begun.
            Ok(_) => state.on_read(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Read::More),
            Err(e) => return Err(e),
        }
        // The end is `\r\n\r\n` (or `\n\n`, which HTTP parsers accept).
        Ok(if self.scan() {
            Read::Complete
        } else if self.bytes.len() >= super::MAX_HEAD_BYTES {
            Read::TooLarge
        } else {
            Read::More
        })
    }
}

/// The socket as hyper's HTTP/2 connection sees it: what was read before
/// hyper took over comes first, and bytes read on an idle connection mark the
/// start of a request.
pub struct WatchedIo<T> {
    inner: T,
    /// What was read before hyper took over (the first request head), read first.
    prefix: Bytes,
    state: Arc<ConnState>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, prefix: Bytes, state: Arc<ConnState>) -> WatchedIo<T> {
        WatchedIo {
            inner,
            prefix,
            state,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            if self.prefix.is_empty() {
                // Its buffer is not kept for the rest of the connection.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.state.set_write_blocked(polled.is_pending());
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.state.set_write_blocked(polled.is_pending());
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The request body did not arrive within `server.body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within server.body_timeout ({0} s)")]
pub struct BodyTimedOut(pub u64);

impl BodyTimedOut {
    /// Whether `error` (an extractor's rejection) was caused by a body timeout.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
                return Some(t.0);
            }
            current = e.source();
        }
        None
    }
}

type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body with a deadline, drawing on `server.max_body_memory` before
/// each chunk is read ([`super::body_budget`]). The timer is only armed if the
/// body is not already all there when first read.
struct TimedBody<B> {
    inner: B,
    deadline: tokio::time::Instant,
    timeout_secs: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The connection, told when the body has been read to its end (`None`
    /// once told, or for a body that was empty).
    conn: Option<Arc<ConnState>>,
    lease: Arc<Lease>,
    /// Bytes reserved in the budget and not yet used by a chunk.
    credit: usize,
    /// Bytes read so far.
    received: usize,
    /// `server.max_body_bytes`: a reservation never asks beyond it.
    max_body_bytes: usize,
    /// `server.max_body_memory`, for the 503's message.
    budget_total: usize,
    /// A chunk that arrived larger than the credit, waiting for the rest.
    pending: Option<Frame<Bytes>>,
    /// A wait for room in the budget (the deadline during it means 503).
    waiting: Option<Acquire>,
}

impl<B> TimedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    /// The body has been read to its end: the connection is told.
    fn read_to_end(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.body_open.store(false, Ordering::Relaxed);
        }
    }

    /// Reserves `n` bytes now, or starts waiting for them (`false`).
    fn reserve(&mut self, n: usize) -> bool {
        if self.lease.try_take(n) {
            self.credit += n;
            true
        } else {
            self.waiting = Some(self.lease.wait_for(n));
            false
        }
    }

    /// How much to reserve before the next read: the rest of a declared
    /// length, at most one chunk, never past `max_body_bytes`.
    fn next_reservation(&self) -> usize {
        let rest = self.max_body_bytes.saturating_sub(self.received).max(1);
        let hint = http_body::Body::size_hint(&self.inner)
            .upper()
            .unwrap_or(u64::MAX);
        (hint.min(CHUNK as u64) as usize).min(rest).max(1)
    }

    /// Nothing to do until the client sends or the budget frees: the
    /// deadline, if it has come, ends the body (408, or 503 if waiting for room).
    fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.waiting.take().is_some() {
            return Poll::Ready(Some(Err(Box::new(BodyMemoryFull {
                total: self.budget_total,
                secs: self.timeout_secs,
            }))));
        }
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout_secs)))))
    }
}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(wait) = &mut this.waiting {
                match wait.as_mut().poll(cx) {
                    Poll::Ready(Ok(permit)) => {
                        this.credit += this.lease.took(permit);
                        if this.sleep.as_ref().is_some_and(|s| s.is_elapsed()) {
                            // Room came only after body_timeout: still a 503.
                            return this.poll_deadline(cx);
                        }
                        this.waiting = None;
                    }
                    // The budget's semaphore is never closed.
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                    Poll::Pending => return this.poll_deadline(cx),
                }
            }
            if let Some(frame) = this.pending.take() {
                let n = frame.data_ref().map_or(0, Bytes::len);
                if n <= this.credit {
                    this.credit -= n;
                    this.received += n;
                    if this.inner.is_end_stream() {
                        this.read_to_end();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                let short = n - this.credit;
                this.pending = Some(frame);
                this.reserve(short);
                continue;
            }
            if this.credit == 0 && !this.inner.is_end_stream() {
                let n = this.next_reservation();
                if !this.reserve(n) {
                    continue;
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => this.pending = Some(frame),
                Poll::Ready(None) => {
                    // The reservation the end did not use goes back at once.
                    this.lease.give_back(std::mem::take(&mut this.credit));
                    this.read_to_end();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => return this.poll_deadline(cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let pending = self
            .pending
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// The connection's answer count goes down when a response body is over.
impl OnEnd for Arc<ConnState> {
    fn ended(self, _completed: bool) {
        self.end();
    }
}

/// A response body that tells its connection when it is done (sent or dropped).
pub type TrackedBody = EndingBody<Arc<ConnState>>;

/// The hyper service of one connection: the router, with the request-level
/// bounds around it.
pub struct ConnService {
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    /// The connection's limits, as when it was accepted.
    limits: Limits,
}

/// A declared body length over the limit (`None`: no or an unreadable length).
fn declared_too_large<B>(request: &Request<B>, max: usize) -> bool {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > max as u64)
}

/// What the connection's service returns for a request.
pub type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, std::convert::Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.route(request)
    }
}

impl ConnService {
    /// The router's answer to `request`, with the request-level bounds.
    pub(crate) fn route<B>(&self, request: Request<B>) -> ServiceFuture
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BodyError>,
    {
        use tower::ServiceExt;
        self.state.begin();
        let state = self.state.clone();
        let limits = &self.limits;
        if declared_too_large(&request, limits.max_body_bytes) {
            // Answered from the head alone: no `100 Continue`, no body read,
            // and the connection closes (the unread body cannot be skipped).
            self.shared.gw.metrics.rejected(Rejection::BodyTooLarge);
            let error = ApiError::payload_too_large(limits.max_body_bytes);
            let mut response = if request.uri().path().starts_with("/v1/messages") {
                super::messages::error_response(&error)
            } else {
                error.into_response()
            };
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            let response = response.map(|inner| TrackedBody::new(inner, state));
            return Box::pin(std::future::ready(Ok(response)));
        }
        let deadline = tokio::time::Instant::now() + limits.body_timeout;
        let timeout_secs = limits.body_timeout.as_secs();
        let budget = &self.shared.gw.body_budget;
        let lease = budget.lease();
        let mut request = request;
        // A handler that streams the body on (pass-through) gives bytes back
        // as they leave, instead of when it answers.
        request.extensions_mut().insert(lease.clone());
        // Until the body is read to its end, the connection is not idle.
        let open = !http_body::Body::is_end_stream(request.body());
        self.state.body_open.store(open, Ordering::Relaxed);
        let request = request.map(|inner| {
            Body::new(TimedBody {
                inner,
                conn: open.then(|| self.state.clone()),
                deadline,
                timeout_secs,
                sleep: None,
                lease: lease.clone(),
                credit: 0,
                received: 0,
                max_body_bytes: limits.max_body_bytes,
                budget_total: budget.total(),
                pending: None,
                waiting: None,
            })
        });
        let routed = self.shared.router.clone().oneshot(request);
        Box::pin(async move {
            let response = match routed.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // The handler has answered: the body's bytes go back to the budget.
            drop(lease);
            Ok(response.map(|inner| TrackedBody::new(inner, state)))
        })
    }
}
