//! The keep-alive connections to one plain-`http://` upstream: its idle HTTP/1
//! connections (hyper's `client::conn::http1`) in a list under a lock.
//!
//! Why not hyper-util's pooled client, which this replaced on the hot path: it
//! keeps one pool for every host, keyed by scheme and authority, and hashes that
//! key (SipHash) at every checkout and put-back; it spawns a task per request to
//! put the connection back, and formats the `Host` header per request. That was
//! about 9k instructions per proxied request (benches/results/perf.md). An
//! upstream is one authority, so a `Vec` is its pool, the `Host` header and the
//! request target are worked out once per URL ([`super::http::UpstreamUrl`]), and
//! a connection goes back when its answer's body ends.
//!
//! What hyper-util's client did and this keeps: at most `max_idle` idle
//! connections (the most recently used is reused first), none kept idle for
//! longer than the idle timeout (90 s: a sweep every half of it closes those
//! idle since the sweep before last), a connection whose answer was not read to
//! its end is never reused, and a request that a reused connection closed
//! before sending (the server's keep-alive ran out meanwhile) is sent again on
//! another connection. The socket options (no delay, TCP keep-alive, connect
//! timeout) are the connector's, as before.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use super::idle::{Connection, Idle};
use axum::http::{Request, Response, Uri};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Service;

type Sender = SendRequest<Full<Bytes>>;

/// The idle connections to one upstream, and how to open another.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    idle: Arc<Idle<Sender>>,
    connector: HttpConnector,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client error (Connect)")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("client error (SendRequest)")]
    Send(#[source] hyper::Error),
}

impl Pool {
    /// A pool opening its connections with `connector`, keeping at most
    /// `max_idle` idle ones, none longer than about `idle_timeout`.
    pub fn new(connector: HttpConnector, max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                idle: Idle::new(max_idle, idle_timeout),
                connector,
            }),
        }
    }

    /// Sends `request` (its target in origin form, its `Host` header set) to
    /// the upstream at `authority` (an absolute URI, for connecting) on an idle
    /// connection, else on a new one. The answer's body gives the connection
    /// back when it ends.
    pub async fn send(
        &self,
        authority: &Uri,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, Error> {
        loop {
            let (mut sender, reused) = match self.shared.take() {
                Some(sender) => (sender, true),
                None => (self.connect(authority).await?, false),
            };
            if reused && sender.ready().await.is_err() {
                continue; // closed while idle: the next one
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.shared.wrap(response, sender)),
                Err(mut e) => match e.take_message() {
                    // Never sent: a reused connection closed meanwhile.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(Error::Send(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self, authority: &Uri) -> Result<Sender, Error> {
        let io = self
            .shared
            .connector
            .clone()
            .call(authority.clone())
            .await
            .map_err(|e| Error::Connect(Box::new(e)))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| Error::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Idle connections now (for tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.shared.idle.len()
    }
}

impl Shared {
    /// The most recently used idle connection that is still open.
    fn take(&self) -> Option<Sender> {
        self.idle.take()
    }

    fn wrap(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: Sender,
    ) -> Response<PooledBody> {
        response.map(|inner| {
            let mut body = PooledBody {
                inner,
                sender: Some(sender),
                pool: Arc::downgrade(self),
            };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    /// A connection whose answer was read to its end: kept for the next
    /// request, unless closed or `max_idle` are idle already.
    fn put(&self, sender: Sender) {
        if !sender.is_closed() {
            self.idle.put(sender);
        }
    }
}

impl Connection for Sender {
    fn is_open(&self) -> bool {
        !self.is_closed()
    }
}

/// An answer's body: gives its connection back to the pool once read to the
/// end (a body dropped before that closes the connection).
pub struct PooledBody {
    inner: Incoming,
    sender: Option<Sender>,
    pool: Weak<Shared>,
}

impl PooledBody {
    fn release(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.put(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken answer: its connection is not reused.
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers each request with a fixed body on the same
    /// connection, counting the connections it accepted.
    async fn upstream(answer: &'static [u8]) -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                answer.len()
                            );
                            if socket.write_all(head.as_bytes()).await.is_err()
                                || socket.write_all(answer).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (uri, accepted)
    }

    fn get(uri: &Uri) -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/")
            .header("host", uri.authority().unwrap().as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn read_all(body: PooledBody) -> Bytes {
        use http_body_util::BodyExt;
        body.collect().await.unwrap().to_bytes()
    }

    fn pool() -> Pool {
        Pool::new(HttpConnector::new(), 2, Duration::from_secs(90))
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read() {
        let (uri, accepted) = upstream(b"hello").await;
        let pool = pool();
        for _ in 0..3 {
            let response = pool.send(&uri, get(&uri)).await.unwrap();
            assert_eq!(read_all(response.into_body()).await, "hello");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn an_unread_answer_keeps_its_connection_out_of_the_pool() {
        let (uri, accepted) = upstream(b"hello").await;
        let pool = pool();
        let first = pool.send(&uri, get(&uri)).await.unwrap();
        // The first answer is still unread: the second needs a new connection.
        let second = pool.send(&uri, get(&uri)).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(first);
        assert_eq!(read_all(second.into_body()).await, "hello");
        assert_eq!(
            pool.idle(),
            1,
            "only the connection read to its end is kept"
        );
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (uri, _) = upstream(b"x").await;
        let pool = pool();
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(pool.send(&uri, get(&uri)).await.unwrap());
        }
        for answer in answers {
            read_all(answer.into_body()).await;
        }
        assert_eq!(pool.idle(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        // Each connection serves one request, says so, then closes.
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        let pool = pool();
        for _ in 0..3 {
            let response =
                tokio::time::timeout(Duration::from_secs(30), pool.send(&uri, get(&uri)))
                    .await
                    .expect("answered in time")
                    .expect("answered");
            assert_eq!(read_all(response.into_body()).await, "ok");
        }
    }
}
