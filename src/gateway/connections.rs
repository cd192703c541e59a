//! Connection-level bounds (SPEC §10): what a client can make the proxy hold
//! before and after auth, enforced in the accept loop and around hyper.
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
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::Gateway;
use crate::api::metrics::Rejection;
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
    pub fn new(gw: &Gateway, fd_limit: Option<u64>) -> Limits {
        let server = &gw.config.server;
        let by_fds = fd_limit.map_or(usize::MAX, |fds| {
            let reserve = FD_RESERVE + 2 * server.max_concurrent as u64;
            fds.saturating_sub(reserve).max(16) as usize
        });
        Limits {
            header_timeout: Duration::from_secs(server.header_timeout),
            body_timeout: Duration::from_secs(server.body_timeout),
            keepalive_timeout: Duration::from_secs(server.keepalive_timeout),
            max_connections: server.max_connections.min(by_fds),
            max_body_bytes: server.max_body_bytes,
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

/// The open client connections, for the cap and for shedding.
pub struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// Connections closed to make room, and new ones refused (for the log).
    pub shed: AtomicU64,
    pub refused: AtomicU64,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            shed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection, first closing the longest-idle one (then the
    /// slowest one still sending its head) when `max` are open. `None`: all are
    /// busy, refuse the newcomer.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<Arc<ConnState>> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() >= max {
            let victim = conns
                .values()
                .filter(|c| c.active.load(Ordering::Relaxed) == 0)
                // Idle connections first (false < true), then the oldest wait.
                .min_by_key(|c| {
                    (
                        c.in_head.load(Ordering::Relaxed),
                        c.since_ms.load(Ordering::Relaxed),
                    )
                })
                .map(|c| c.id);
            match victim.and_then(|id| conns.remove(&id)) {
                Some(victim) => {
                    self.shed.fetch_add(1, Ordering::Relaxed);
                    victim.close.notify_one();
                }
                None => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
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
            close: Notify::new(),
            registry: self.clone(),
        });
        conns.insert(id, state.clone());
        Some(state)
    }

    fn remove(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
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
    close: Notify,
    registry: Arc<Registry>,
}

impl ConnState {
    /// Bytes arrived: if the connection was idle, a request head has begun.
    fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0 && !self.in_head.load(Ordering::Relaxed) {
            self.since_ms
                .store(self.registry.now_ms(), Ordering::Relaxed);
            self.in_head.store(true, Ordering::Relaxed);
        }
    }

    /// A request head was parsed and is being served.
    fn begin(&self) {
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

/// Serves one connection until it ends, times out, or is shed.
pub async fn supervise(conn: impl Future<Output = ()>, state: Arc<ConnState>, limits: Limits) {
    tokio::pin!(conn);
    let period = limits.keepalive_timeout.min(limits.header_timeout);
    loop {
        let (wait, expired) = state.deadline(&limits);
        if expired {
            break;
        }
        // State changes (a request begins or ends) do not wake this task, which
        // keeps the hot path free of it: it looks again at least every
        // `period`, so a deadline is enforced at most `period` late.
        let wait = wait.unwrap_or(period).min(period);
        tokio::select! {
            () = conn.as_mut() => break,
            () = state.close.notified() => break,
            () = tokio::time::sleep(wait + Duration::from_millis(1)) => {}
        }
    }
    state.registry.remove(state.id);
}

/// Bytes read on a connection mark the start of a request head when it was idle.
pub struct WatchedIo<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> WatchedIo<T> {
        WatchedIo { inner, state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// A request body with a deadline; the timer is only armed if the body is not
/// already all there when first read.
struct TimedBody {
    inner: Incoming,
    deadline: tokio::time::Instant,
    timeout_secs: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = self.deadline;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout_secs)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells its connection when it is done (sent or dropped).
pub struct TrackedBody {
    inner: Body,
    state: Option<Arc<ConnState>>,
}

impl TrackedBody {
    fn done(&mut self) {
        if let Some(state) = self.state.take() {
            state.end();
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.done();
    }
}

/// The hyper service of one connection: the router, with the request-level
/// bounds around it.
#[derive(Clone)]
pub struct ConnService {
    router: axum::Router,
    gw: Arc<Gateway>,
    state: Arc<ConnState>,
    limits: Limits,
}

impl ConnService {
    pub fn new(
        router: axum::Router,
        gw: Arc<Gateway>,
        state: Arc<ConnState>,
        limits: Limits,
    ) -> ConnService {
        ConnService {
            router,
            gw,
            state,
            limits,
        }
    }
}

/// A declared body length over the limit (`None`: no or an unreadable length).
fn declared_too_large(request: &Request<Incoming>, max: usize) -> bool {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > max as u64)
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, std::convert::Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        use tower::ServiceExt;
        self.state.begin();
        let state = self.state.clone();
        if declared_too_large(&request, self.limits.max_body_bytes) {
            // Answered from the head alone: no `100 Continue`, no body read,
            // and the connection closes (the unread body cannot be skipped).
            self.gw.metrics.rejected(Rejection::BodyTooLarge);
            let error = ApiError::payload_too_large(self.limits.max_body_bytes);
            let mut response = if request.uri().path().starts_with("/v1/messages") {
                super::messages::error_response(&error)
            } else {
                error.into_response()
            };
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            let response = response.map(|inner| TrackedBody {
                inner,
                state: Some(state),
            });
            return Box::pin(std::future::ready(Ok(response)));
        }
        let deadline = tokio::time::Instant::now() + self.limits.body_timeout;
        let timeout_secs = self.limits.body_timeout.as_secs();
        let request = request.map(|inner| {
            Body::new(TimedBody {
                inner,
                deadline,
                timeout_secs,
                sleep: None,
            })
        });
        let routed = self.router.clone().oneshot(request);
        Box::pin(async move {
            let response = match routed.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|inner| TrackedBody {
                inner,
                state: Some(state),
            }))
        })
    }
}
