//! The keep-alive connections to one plain-`http://` upstream: HTTP/1.1
//! written and read here, on the socket itself, with no connection task. Every
//! request to such an upstream goes this way, streamed or not (`https://`
//! upstreams and those behind an HTTP proxy go through reqwest).
//!
//! Why not hyper's client connection: it is a task of its own, woken for every
//! request and answer (often on the other worker thread), and it holds, for as
//! long as the connection lives, an 8 KiB write buffer (allocated when the
//! connection is made, never shrunk) and the first block of its request channel
//! (~9 KiB). Here a connection is its socket and a read buffer of
//! [`READ_SIZE`] bytes (larger only for a head or line that needs it, or for a
//! body whose `content-length` says it is larger); the request is written from
//! one buffer that is freed once sent, and the answer is read by whoever polls
//! its body.
//!
//! What it does as hyper did: the request exactly as hyper writes it (the target
//! in origin form, the headers as given, `content-length`), interim 1xx answers
//! skipped, bodies delimited by `transfer-encoding: chunked`, `content-length`
//! or the end of the connection (RFC 9112 §6.3; an answer to `HEAD` has none),
//! trailers read and dropped (as reqwest's body stream drops them); a connection
//! is reused only when its answer was read exactly to its end, with nothing past
//! it, and neither side said `connection: close` (see [`reusable`] for the
//! rest). What an upstream can make it read and drop is bounded as hyper bounds
//! it: the head ([`MAX_HEAD`], interim answers included), lines ([`MAX_LINE`](super::framing::MAX_LINE)),
//! chunk extensions and trailers
//! ([`MAX_CHUNK_EXTENSIONS`](super::framing::MAX_CHUNK_EXTENSIONS),
//! [`MAX_TRAILERS`](super::framing::MAX_TRAILERS));
//! the body itself is handed on as it arrives, so a huge event never grows the
//! read buffer (the relay's `upstream.max_event_bytes` bounds events, and
//! `upstream.max_response_bytes` a whole body). The pool keeps at most
//! `max_idle` idle connections, none idle longer than about the idle timeout
//! ([`super::idle`]); a connection found closed when taken is replaced, and a
//! request that could not be written on a reused connection is written on
//! another (one that was written is never sent again: the upstream may have
//! acted on it).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use super::framing::{Decoded, Framing, Spent, decode, invalid};
use super::idle::{Connection, Idle};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower::Service;

/// What a connection reads at a time: a stream is events of a few hundred
/// bytes, and the buffer is held for as long as the stream lasts.
pub const READ_SIZE: usize = 1024;
/// The most read at a time of a body whose `content-length` is larger than
/// [`READ_SIZE`] (a whole answer, read to its end at once; a stream has no
/// length).
const MAX_SIZED_READ: usize = 64 * 1024;

/// The largest answer head read (hyper's client allows about as much).
const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer head may have (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;
/// A body of at most this many bytes is sent in the same write as the head.
const COALESCE_BODY: usize = 16 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client error (Connect)")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("client error (SendRequest)")]
    Send(#[source] io::Error),
}

/// The idle connections to one upstream, and how to open another.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    idle: Arc<Idle<TcpStream>>,
    connector: HttpConnector,
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
    /// connection, else on a new one, and reads the answer's head. The
    /// answer's body gives the connection back when read to its end.
    pub async fn send(
        &self,
        authority: &Uri,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<StreamBody>, Error> {
        let (parts, body) = request.into_parts();
        let body = body_bytes(body);
        let close_asked = asks_close(&parts.headers);
        let bodiless = parts.method == axum::http::Method::HEAD;
        let head = encode_head(&parts, &body);
        self.send_head(authority, head, body, close_asked, bodiless)
            .await
    }

    /// [`Pool::send`] for a request already written out: `head` is a
    /// [`RequestHead`]'s, `body` what it was finished with; `close_asked`:
    /// its headers say `connection: close`; `bodiless`: it is a `HEAD`.
    pub async fn send_head(
        &self,
        authority: &Uri,
        head: Vec<u8>,
        body: Bytes,
        close_asked: bool,
        bodiless: bool,
    ) -> Result<Response<StreamBody>, Error> {
        loop {
            let (mut socket, reused) = match self.shared.take() {
                Some(socket) => (socket, true),
                None => (self.connect(authority).await?, false),
            };
            match write_request(&mut socket, &head, &body).await {
                Ok(()) => {}
                // A reused connection the upstream closed meanwhile: another.
                Err(_) if reused => continue,
                Err(e) => return Err(Error::Send(e)),
            }
            let (mut response, buf) = read_head(&mut socket).await.map_err(Error::Send)?;
            if bodiless {
                // RFC 9112 §6.3: an answer to HEAD ends with its head,
                // whatever its `content-length` says.
                *response.body_mut() = Framing::Done;
            }
            return Ok(self.shared.wrap(response, socket, buf, close_asked));
        }
    }

    async fn connect(&self, authority: &Uri) -> Result<TcpStream, Error> {
        let io = self
            .shared
            .connector
            .clone()
            .call(authority.clone())
            .await
            .map_err(|e| Error::Connect(Box::new(e)))?;
        Ok(io.into_inner())
    }

    /// Idle connections now (for tests).
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.shared.idle.len()
    }

    /// Waits (30 s at most) until every idle connection is found closed by
    /// its upstream (for tests).
    #[cfg(test)]
    pub(super) async fn until_idle_closed(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self
            .shared
            .idle
            .inspect(|conns, _| conns.iter().any(|(s, _)| is_open(s)))
        {
            assert!(std::time::Instant::now() < deadline, "the close arrived");
            tokio::task::yield_now().await;
        }
    }
}

impl Shared {
    /// The most recently used idle connection that is still open.
    fn take(&self) -> Option<TcpStream> {
        self.idle.take()
    }

    fn wrap(
        self: &Arc<Self>,
        response: Response<Framing>,
        socket: TcpStream,
        buf: BytesMut,
        close_asked: bool,
    ) -> Response<StreamBody> {
        let keep_alive = !close_asked && reusable(&response);
        response.map(|framing| {
            let read_size = match framing {
                Framing::Length(left) => usize::try_from(left)
                    .map_or(MAX_SIZED_READ, |n| n.clamp(READ_SIZE, MAX_SIZED_READ)),
                _ => READ_SIZE,
            };
            let mut body = StreamBody {
                socket: Some(socket),
                buf,
                read_size,
                framing,
                spent: Spent::default(),
                keep_alive,
                pool: Arc::downgrade(self),
            };
            if body.framing.is_done() {
                body.release();
            }
            body
        })
    }

    /// A connection whose answer was read to its end: kept for the next
    /// request, unless `max_idle` are idle already.
    fn put(&self, socket: TcpStream) {
        self.idle.put(socket);
    }
}

impl Connection for TcpStream {
    fn is_open(&self) -> bool {
        is_open(self)
    }
}

/// Whether an idle connection can carry a request: the upstream has neither
/// closed it nor sent anything unasked.
fn is_open(socket: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(socket.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// A `Full` body's bytes (it is one frame, or none).
fn body_bytes(body: Full<Bytes>) -> Bytes {
    let mut body = body;
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// Whether the connection of `response` may carry another request once its
/// body ends: HTTP/1.1, no `connection: close`, not a `101 Switching
/// Protocols` (the connection speaks something else after it), and not both
/// `transfer-encoding` and `content-length` (RFC 9112 §6.3: the body is
/// chunked, and the connection is closed after it, as the two disagreeing
/// is how a request is smuggled).
fn reusable(response: &Response<Framing>) -> bool {
    let headers = response.headers();
    response.version() == Version::HTTP_11
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
        && !asks_close(headers)
        && !(headers.contains_key(axum::http::header::TRANSFER_ENCODING)
            && headers.contains_key(axum::http::header::CONTENT_LENGTH))
}

/// Whether a `Connection` header says `close`.
fn asks_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .any(|v| has_token(v, "close"))
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The request line and headers, as hyper's client writes them: the headers
/// as given (names in lower case), then `content-length` unless given; an
/// empty body has none, whatever the method (hyper writes no length for a
/// body that has ended before it is sent).
pub(super) fn encode_head(parts: &axum::http::request::Parts, body: &Bytes) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let mut head = RequestHead::new(
        &parts.method,
        target,
        parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum::<usize>()
            + 4 * parts.headers.len()
            + body.len().min(COALESCE_BODY + 1),
    );
    for (name, value) in &parts.headers {
        head.header(name, value);
    }
    let length_given = parts
        .headers
        .contains_key(axum::http::header::CONTENT_LENGTH);
    head.finish(!length_given, body)
}

/// A request's head being written out, as hyper's client writes it.
pub struct RequestHead {
    buf: Vec<u8>,
}

impl RequestHead {
    /// The request line; `more`: about how many bytes the headers and body
    /// will take.
    pub fn new(method: &axum::http::Method, target: &str, more: usize) -> RequestHead {
        let mut buf = Vec::with_capacity(64 + target.len() + more);
        buf.extend_from_slice(method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(target.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        RequestHead { buf }
    }

    pub fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.buf.extend_from_slice(name.as_str().as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// The head's end, after `content-length` when `length` and the body is
    /// not empty; a body of at most [`COALESCE_BODY`] bytes follows in the
    /// same buffer, to go in one write ([`write_request`] writes a larger one).
    pub fn finish(mut self, length: bool, body: &Bytes) -> Vec<u8> {
        let head = &mut self.buf;
        if length && !body.is_empty() {
            head.extend_from_slice(b"content-length: ");
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            let mut left = body.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (left % 10) as u8;
                left /= 10;
                if left == 0 {
                    break;
                }
            }
            head.extend_from_slice(&digits[at..]);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        if body.len() <= COALESCE_BODY {
            head.extend_from_slice(body);
        }
        self.buf
    }
}

/// Writes the request: `head` from [`RequestHead::finish`], then the body
/// unless it went with the head.
async fn write_request(socket: &mut TcpStream, head: &[u8], body: &Bytes) -> io::Result<()> {
    socket.write_all(head).await?;
    if body.len() > COALESCE_BODY {
        socket.write_all(body).await?;
    }
    Ok(())
}

/// Reads at most `limit` bytes more into `buf`; `Ok(0)`: the upstream closed
/// the connection. Never more at a time, whatever room `buf` has: a stream
/// keeps its buffer's allocation while it lasts (`BytesMut` reuses or copies
/// its first capacity), so a read must not fill a buffer grown for a large
/// head or line with bytes of the body.
fn poll_read_more(
    socket: &TcpStream,
    buf: &mut BytesMut,
    limit: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() && buf.capacity() > limit {
        // What is left of a buffer grown for a large head or line: let go.
        *buf = BytesMut::new();
    }
    if buf.capacity() - buf.len() < limit {
        buf.reserve(limit);
    }
    loop {
        ready!(socket.poll_read_ready(cx))?;
        match socket.try_read_buf(&mut bytes::BufMut::limit(&mut *buf, limit)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

/// Reads an answer's head (after any interim 1xx answers, which count
/// towards its [`MAX_HEAD`]): the answer, with how its body is delimited, and
/// the bytes read past the head.
async fn read_head(socket: &mut TcpStream) -> io::Result<(Response<Framing>, BytesMut)> {
    let mut buf = BytesMut::new();
    // The bytes of the interim answers before this head.
    let mut interim = 0;
    loop {
        if let Some((response, head_len)) = parse_head(&mut buf)? {
            interim += head_len;
            if interim > MAX_HEAD {
                return Err(invalid("message head is too large"));
            }
            let status = response.status();
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue; // 100 Continue, 103 Early Hints: the answer follows
            }
            if buf.is_empty() {
                // Nothing of the body yet: the buffer is allocated afresh at
                // the first read, [`READ_SIZE`] bytes, whatever the head took.
                buf = BytesMut::new();
            } else if buf.capacity() > READ_SIZE {
                // The body's first bytes (at most one read), out of a buffer
                // grown for the head.
                let mut body = BytesMut::with_capacity(READ_SIZE.max(buf.len()));
                body.extend_from_slice(&buf);
                buf = body;
            }
            return Ok((response, buf));
        }
        if interim + buf.len() >= MAX_HEAD {
            return Err(invalid("message head is too large"));
        }
        let read =
            std::future::poll_fn(|cx| poll_read_more(socket, &mut buf, READ_SIZE, cx)).await?;
        if read == 0 {
            return Err(if buf.is_empty() {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before message completed",
                )
            } else {
                io::Error::new(io::ErrorKind::UnexpectedEof, "incomplete message head")
            });
        }
    }
}

/// Parses an answer head from the start of `buf` and takes it off;
/// `None`: it is incomplete. The header values are slices of the head's
/// bytes (one allocation for them all, as hyper does).
fn parse_head(buf: &mut BytesMut) -> io::Result<Option<(Response<Framing>, usize)>> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Left uninitialised: filling 100 headers costs more than parsing a few.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(invalid("invalid message head")),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| invalid("invalid status"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each name and value is in `buf` (offset, length), to be sliced
    // out of the head once it is taken off. In `u32`s (a head is under
    // 66 KiB): a smaller array is cheaper to clear.
    let start = buf.as_ptr() as usize;
    let at = |part: &[u8]| match part.len() {
        0 => (0u32, 0u32),
        len => ((part.as_ptr() as usize - start) as u32, len as u32),
    };
    let count = parsed.headers.len();
    let mut places = [((0u32, 0u32), (0u32, 0u32)); MAX_HEADERS];
    for (header, place) in parsed.headers.iter().zip(places.iter_mut()) {
        *place = (at(header.name.as_bytes()), at(header.value));
    }
    let head = buf.split_to(head_len).freeze();
    let mut map = HeaderMap::with_capacity(count);
    for ((name, name_len), (value, value_len)) in places.into_iter().take(count) {
        let (name, name_len) = (name as usize, name_len as usize);
        let (value, value_len) = (value as usize, value_len as usize);
        let name = HeaderName::from_bytes(&head[name..name + name_len])
            .map_err(|_| invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            .map_err(|_| invalid("invalid header value"))?;
        map.append(name, value);
    }
    let framing = Framing::of(status, &map)?;
    let mut response = Response::new(framing);
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some((response, head_len)))
}

/// An answer's body, read from its connection as it is polled (no task reads
/// ahead). Read to its end, it gives the connection back; dropped before that,
/// the connection is closed.
pub struct StreamBody {
    /// `None` once given back or closed.
    socket: Option<TcpStream>,
    /// Bytes read and not yet handed out.
    buf: BytesMut,
    /// The most read at a time ([`READ_SIZE`], more for a large sized body).
    read_size: usize,
    framing: Framing,
    spent: Spent,
    /// Whether the connection may carry another request once this body ends.
    keep_alive: bool,
    pool: Weak<Shared>,
}

impl StreamBody {
    fn release(&mut self) {
        let socket = self.socket.take();
        // Bytes past the answer's end: the connection is out of step; closed.
        if let (Some(socket), true, true) = (socket, self.keep_alive, self.buf.is_empty()) {
            if let Some(pool) = self.pool.upgrade() {
                pool.put(socket);
            }
        }
        self.buf = BytesMut::new();
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.socket = None;
        self.framing = Framing::Done;
        self.buf = BytesMut::new();
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            match decode(&mut this.framing, &mut this.buf, &mut this.spent) {
                Err(e) => return this.fail(e),
                Ok(Decoded::Data(data)) => {
                    if this.framing.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
            }
            let Some(socket) = &this.socket else {
                return Poll::Ready(None);
            };
            match ready!(poll_read_more(socket, &mut this.buf, this.read_size, cx)) {
                Err(e) => return this.fail(e),
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.socket = None;
                    this.framing = Framing::Done;
                    this.buf = BytesMut::new();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of file before message length reached",
                    ));
                }
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::framing::{Chunk, MAX_CHUNK_EXTENSIONS, MAX_LINE, MAX_TRAILERS};
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;

    /// Feeds `wire` to the decoder `step` bytes at a time; the body's bytes,
    /// and whether it ended.
    fn decode_all(mut framing: Framing, wire: &[u8], step: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut spent = Spent::default();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match decode(&mut framing, &mut buf, &mut spent)? {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::End => return Ok((body, buf.is_empty())),
                    Decoded::NeedMore => break,
                }
            }
        }
        Ok((body, false))
    }

    const CHUNKED: &[u8] =
        b"6\r\nhello \r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\ntrailer: x\r\n\r\n";

    #[test]
    fn a_chunked_body_is_decoded_however_it_arrives() {
        for step in 1..=CHUNKED.len() {
            let (body, clean) = decode_all(Framing::Chunked(Chunk::Size), CHUNKED, step).unwrap();
            assert_eq!(body, b"hello abcdefghijklmnopqrstuvwxyz", "step {step}");
            assert!(clean, "step {step}: the trailers and last CRLF were read");
        }
    }

    #[test]
    fn a_broken_chunked_body_is_an_error() {
        for wire in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"\r\nab\r\n",
            b"2\r\nabX\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            // Bare LFs and CRs, and space before the size, as hyper refuses them.
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"3\r\nabc\r\n0\n\n",
            b"3;a\nb\r\nabc\r\n0\r\n\r\n",
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",
            b" 3\r\nabc\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(Framing::Chunked(Chunk::Size), wire, 1).is_err(),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        let endless = vec![b'1'; MAX_LINE + 2];
        assert!(decode_all(Framing::Chunked(Chunk::Size), &endless, 64).is_err());
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let (body, clean) = decode_all(Framing::Length(5), b"hello", 2).unwrap();
        assert_eq!((body.as_slice(), clean), (&b"hello"[..], true));
        // Bytes past the end stay in the buffer (the connection is not reused).
        let (body, clean) = decode_all(Framing::Length(5), b"helloEXTRA", 10).unwrap();
        assert_eq!((body.as_slice(), clean), (&b"hello"[..], false));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.append(*k, HeaderValue::from_static(v));
            }
            map
        };
        let ok = StatusCode::OK;
        let of = |status, pairs| Framing::of(status, &headers(pairs)).ok();
        assert_eq!(
            of(
                ok,
                &[("transfer-encoding", "chunked"), ("content-length", "3")]
            ),
            Some(Framing::Chunked(Chunk::Size))
        );
        assert_eq!(
            of(ok, &[("transfer-encoding", "gzip, chunked")]),
            Some(Framing::Chunked(Chunk::Size))
        );
        assert_eq!(
            of(ok, &[("transfer-encoding", "gzip")]),
            Some(Framing::UntilClose)
        );
        assert_eq!(of(ok, &[("content-length", "7")]), Some(Framing::Length(7)));
        assert_eq!(of(ok, &[("content-length", "0")]), Some(Framing::Done));
        assert_eq!(of(ok, &[]), Some(Framing::UntilClose));
        assert_eq!(of(StatusCode::NO_CONTENT, &[]), Some(Framing::Done));
        assert_eq!(of(ok, &[("content-length", "x")]), None);
        assert_eq!(of(ok, &[("content-length", "+1")]), None);
        assert_eq!(
            of(ok, &[("content-length", "1"), ("content-length", "2")]),
            None
        );
    }

    /// An upstream answering each request (a head and a `content-length`
    /// body) with the next of `answers` (the last one repeated; an empty one
    /// closes the connection), on the same connection unless `close_after`;
    /// it counts connections accepted and keeps the requests' bytes.
    pub(in crate::upstream) async fn upstream(
        answers: Vec<&'static [u8]>,
        close_after: bool,
    ) -> (Uri, Arc<AtomicUsize>, Arc<Mutex<Vec<u8>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (counter, record) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            let answered = Arc::new(AtomicUsize::new(0));
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (answers, answered, record) =
                    (answers.clone(), answered.clone(), record.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        // A whole request: head, then its content-length body.
                        let request_len = loop {
                            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                                let length = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length: "))
                                    .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                                if pending.len() >= end + 4 + length {
                                    break end + 4 + length;
                                }
                            }
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&buf[..n]),
                            }
                        };
                        record.lock().unwrap().extend(pending.drain(..request_len));
                        let i = answered.fetch_add(1, Ordering::SeqCst);
                        let answer = answers[i.min(answers.len() - 1)];
                        // An empty answer: the request is read, and the
                        // connection closed without a word.
                        if answer.is_empty()
                            || socket.write_all(answer).await.is_err()
                            || close_after
                        {
                            return;
                        }
                    }
                });
            }
        });
        (uri, accepted, seen)
    }

    fn post(uri: &Uri, body: &'static str) -> Request<Full<Bytes>> {
        Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("host", uri.authority().unwrap().as_str())
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    fn pool() -> Pool {
        Pool::new(HttpConnector::new(), 2, Duration::from_secs(90))
    }

    async fn read_all(body: StreamBody) -> io::Result<Bytes> {
        use http_body_util::BodyExt;
        tokio::time::timeout(Duration::from_secs(30), body.collect())
            .await
            .expect("read in time")
            .map(|c| c.to_bytes())
    }

    async fn send(pool: &Pool, uri: &Uri) -> Result<Response<StreamBody>, Error> {
        tokio::time::timeout(Duration::from_secs(30), pool.send(uri, post(uri, "{}")))
            .await
            .expect("answered in time")
    }

    const STREAM: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
        e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";

    #[tokio::test]
    async fn a_stream_is_read_and_its_connection_reused() {
        let (uri, accepted, seen) = upstream(vec![STREAM], false).await;
        let pool = pool();
        for _ in 0..3 {
            let response = send(&pool, &uri).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            assert_eq!(
                read_all(response.into_body()).await.unwrap(),
                "data: [DONE]\n\n"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
        let host = uri.authority().unwrap().as_str();
        let one = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        assert_eq!(
            String::from_utf8_lossy(&seen.lock().unwrap()),
            one.repeat(3)
        );
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_lengths_kept() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nerror";
        let (uri, accepted, _) = upstream(vec![answer], false).await;
        let pool = pool();
        for _ in 0..2 {
            let response = send(&pool, &uri).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            assert_eq!(response.body().size_hint().exact(), Some(5));
            assert_eq!(read_all(response.into_body()).await.unwrap(), "error");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_by_either_side_is_not_reused() {
        // The upstream says close, then closes.
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        let (uri, accepted, _) = upstream(vec![close], true).await;
        let pool = pool();
        for _ in 0..2 {
            let response = send(&pool, &uri).await.unwrap();
            assert_eq!(read_all(response.into_body()).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle(), 0);
        // The upstream closes without a word after answering: found closed when
        // taken, so the next request goes on a new connection.
        let quiet = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (uri, accepted, _) = upstream(vec![quiet], true).await;
        for _ in 0..3 {
            let response = send(&pool, &uri).await.unwrap();
            assert_eq!(read_all(response.into_body()).await.unwrap(), "ok");
            // Its close may not have arrived yet when the next is sent: wait
            // (with a deadline) until it did.
            pool.until_idle_closed().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_until_close_and_a_cut_stream() {
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        let (uri, _, _) = upstream(vec![until_close], true).await;
        let pool = pool();
        let response = send(&pool, &uri).await.unwrap();
        assert_eq!(read_all(response.into_body()).await.unwrap(), "all of it");
        assert_eq!(pool.idle(), 0);

        let cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel";
        let (uri, _, _) = upstream(vec![cut], true).await;
        let response = send(&pool, &uri).await.unwrap();
        let error = read_all(response.into_body()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);

        let nothing: &[u8] = b"";
        let (uri, _, _) = upstream(vec![nothing], true).await;
        let Err(error) = send(&pool, &uri).await else {
            panic!("an answer from an upstream that sent nothing");
        };
        assert!(
            crate::support::http_client::error_chain(&error).contains("closed before"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_unread_answer_keeps_its_connection_out_of_the_pool() {
        let (uri, accepted, _) = upstream(vec![STREAM], false).await;
        let pool = pool();
        let first = send(&pool, &uri).await.unwrap();
        let second = send(&pool, &uri).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop(first);
        read_all(second.into_body()).await.unwrap();
        assert_eq!(
            pool.idle(),
            1,
            "only the connection read to its end is kept"
        );
    }

    /// `bytes` as a `'static` answer (tests build long ones).
    fn leak(bytes: Vec<u8>) -> &'static [u8] {
        Box::leak(bytes.into_boxed_slice())
    }

    #[tokio::test]
    async fn chunked_and_a_length_together_read_chunked_and_close() {
        // RFC 9112 §6.3: transfer-encoding wins, and the connection is not
        // kept, as the two disagreeing is how requests are smuggled.
        let both = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n\
            3\r\nabc\r\n0\r\n\r\n";
        let (uri, accepted, _) = upstream(vec![both], false).await;
        let pool = pool();
        for _ in 0..2 {
            let response = send(&pool, &uri).await.unwrap();
            assert_eq!(read_all(response.into_body()).await.unwrap(), "abc");
            assert_eq!(pool.idle(), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The same with `gzip, chunked` (the body is passed on as it came,
        // as hyper does: transfer codings other than chunked are not undone).
        let gzip =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (uri, accepted, _) = upstream(vec![gzip], false).await;
        for _ in 0..2 {
            let response = send(&pool, &uri).await.unwrap();
            assert_eq!(read_all(response.into_body()).await.unwrap(), "abc");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn switching_protocols_and_http_1_0_are_not_reused() {
        let switching =
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n";
        let old = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok";
        for answer in [&switching[..], &old[..]] {
            let (uri, accepted, _) = upstream(vec![answer], false).await;
            let pool = pool();
            for _ in 0..2 {
                let response = send(&pool, &uri).await.unwrap();
                read_all(response.into_body()).await.unwrap();
                assert_eq!(pool.idle(), 0);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        }
    }

    #[tokio::test]
    async fn bytes_past_an_answer_are_never_the_next_answer() {
        // In the same write as the answer (a length body, a chunked one): the
        // connection is closed, the next request goes on a new one.
        let length = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
            HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale";
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale";
        let fresh = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh";
        for first in [&length[..], &chunked[..]] {
            let (uri, accepted, _) = upstream(vec![first, fresh], false).await;
            let pool = pool();
            let response = send(&pool, &uri).await.unwrap();
            assert_eq!(read_all(response.into_body()).await.unwrap(), "ok");
            assert_eq!(pool.idle(), 0);
            let response = send(&pool, &uri).await.unwrap();
            assert_eq!(read_all(response.into_body()).await.unwrap(), "fresh");
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        }

        // After it, while the connection is idle: found when it is taken.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (go, went) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (mut first, _) = listener.accept().await.unwrap();
            let _ = first.read(&mut buf).await;
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = went.await;
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")
                .await
                .unwrap();
            let (mut second, _) = listener.accept().await.unwrap();
            let _ = second.read(&mut buf).await;
            second.write_all(fresh).await.unwrap();
            // Both held open until the test ends.
            let _ = first.read(&mut buf).await;
        });
        let pool = pool();
        let response = send(&pool, &uri).await.unwrap();
        assert_eq!(read_all(response.into_body()).await.unwrap(), "ok");
        assert_eq!(pool.idle(), 1);
        go.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while pool
            .shared
            .idle
            .inspect(|conns, _| conns.iter().all(|(s, _)| is_open(s)))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the stale bytes arrived"
            );
            tokio::task::yield_now().await;
        }
        let response = send(&pool, &uri).await.unwrap();
        assert_eq!(read_all(response.into_body()).await.unwrap(), "fresh");
    }

    #[tokio::test]
    async fn a_request_written_on_a_reused_connection_is_not_sent_again() {
        // The upstream reads the second request, then closes without an
        // answer: it may have acted on it, so it is an error, not a retry.
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (uri, accepted, seen) = upstream(vec![ok, b""], false).await;
        let pool = pool();
        let response = send(&pool, &uri).await.unwrap();
        assert_eq!(read_all(response.into_body()).await.unwrap(), "ok");
        let Err(error) = send(&pool, &uri).await else {
            panic!("an answer from an upstream that closed");
        };
        assert!(
            crate::support::http_client::error_chain(&error).contains("closed before"),
            "{error:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let requests = String::from_utf8_lossy(&seen.lock().unwrap())
            .matches("POST ")
            .count();
        assert_eq!(requests, 2);
    }

    #[tokio::test]
    async fn interim_answers_count_towards_the_head_limit() {
        let mut flood = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_HEAD / 25 + 1);
        flood.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let (uri, _, _) = upstream(vec![leak(flood)], false).await;
        let Err(error) = send(&pool(), &uri).await else {
            panic!("an answer after {} bytes of interim answers", MAX_HEAD);
        };
        assert!(
            crate::support::http_client::error_chain(&error).contains("too large"),
            "{error:?}"
        );
        // A head of too many headers, or too long.
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"content-length: 0\r\n\r\n");
        let mut long = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        long.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        for answer in [many, long] {
            let (uri, _, _) = upstream(vec![leak(answer)], false).await;
            assert!(send(&pool(), &uri).await.is_err());
        }
    }

    #[test]
    fn chunk_extensions_and_trailers_are_bounded() {
        let chunked = Framing::Chunked(Chunk::Size);
        // Extensions: each line under MAX_LINE, together over the body's limit.
        let extension = "x".repeat(MAX_LINE / 2);
        let one = format!("1;{extension}\r\na\r\n");
        let under = format!("{}0\r\n\r\n", one.repeat(MAX_CHUNK_EXTENSIONS / one.len()));
        let (body, clean) = decode_all(chunked, under.as_bytes(), 100).unwrap();
        assert!(clean && body.iter().all(|&b| b == b'a'));
        let over = format!(
            "{}0\r\n\r\n",
            one.repeat(MAX_CHUNK_EXTENSIONS / one.len() + 2)
        );
        let error = decode_all(chunked, over.as_bytes(), 100).unwrap_err();
        assert!(error.to_string().contains("extensions"), "{error}");
        // Trailers: too many fields, or too many bytes.
        let fields = format!("0\r\n{}\r\n", "t: 1\r\n".repeat(MAX_HEADERS + 1));
        let field = format!("t: {}\r\n", "v".repeat(MAX_LINE / 2));
        let bytes = format!("0\r\n{}\r\n", field.repeat(MAX_TRAILERS / field.len() + 1));
        for wire in [fields, bytes] {
            let error = decode_all(chunked, wire.as_bytes(), 100).unwrap_err();
            assert!(error.to_string().contains("trailers"), "{error}");
        }
        let few = format!("0\r\n{}\r\n", "t: 1\r\n".repeat(MAX_HEADERS));
        assert!(decode_all(chunked, few.as_bytes(), 100).unwrap().1);
    }

    #[tokio::test]
    async fn a_huge_chunk_or_event_is_passed_on_through_a_small_buffer() {
        use http_body_util::BodyExt;
        // One 1 MiB chunk (one SSE event), after a head of 32 KiB whose last
        // read also brought the body's first bytes.
        let event = {
            let mut event = b"data: ".to_vec();
            event.resize(1 << 20, b'x');
            event.extend_from_slice(b"\n\n");
            event
        };
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
            "h".repeat(32 * 1024),
            event.len()
        )
        .into_bytes();
        answer.extend_from_slice(&event);
        answer.extend_from_slice(b"\r\n0\r\n\r\n");
        let (uri, _, _) = upstream(vec![leak(answer)], false).await;
        let pool = pool();
        let response = send(&pool, &uri).await.unwrap();
        let mut body = response.into_body();
        let (mut read, mut largest) = (Vec::new(), 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("read in time")
        {
            read.extend_from_slice(&frame.unwrap().into_data().unwrap());
            largest = largest.max(body.buf.capacity());
        }
        assert_eq!(read, event);
        assert!(
            largest <= 4 * READ_SIZE,
            "the read buffer grew to {largest} bytes"
        );
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn the_request_is_written_as_hyper_writes_it() {
        use hyper_util::rt::TokioIo;
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let requests = |uri: &Uri| {
            let host = uri.authority().unwrap().as_str().to_owned();
            let request = |method: &str, body: &'static str| {
                Request::builder()
                    .method(method)
                    .uri("/v1/chat/completions?x=1")
                    .header("authorization", "Bearer k")
                    .header("accept", "*/*")
                    .header("x-many", "1")
                    .header("x-many", "2")
                    .header("host", host.as_str())
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap()
            };
            let mut given = request("POST", "{\"a\":1}");
            given
                .headers_mut()
                .insert("content-length", HeaderValue::from_static("7"));
            vec![
                request("POST", "{\"stream\":true}"),
                request("POST", ""),
                request("GET", ""),
                request("GET", "{}"),
                given,
            ]
        };
        let (mine, _, mine_seen) = upstream(vec![ok], false).await;
        let pool = pool();
        for request in requests(&mine) {
            let response = pool.send(&mine, request).await.unwrap();
            read_all(response.into_body()).await.unwrap();
        }
        let (theirs, _, theirs_seen) = upstream(vec![ok], false).await;
        let address = theirs.authority().unwrap().as_str().to_owned();
        let io = TokioIo::new(TcpStream::connect(address).await.unwrap());
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        for request in requests(&theirs) {
            let response = sender.send_request(request).await.unwrap();
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap();
        }
        let port = |uri: &Uri| uri.port_u16().unwrap().to_string();
        let mine =
            String::from_utf8_lossy(&mine_seen.lock().unwrap()).replace(&port(&mine), "PORT");
        let theirs =
            String::from_utf8_lossy(&theirs_seen.lock().unwrap()).replace(&port(&theirs), "PORT");
        assert_eq!(mine, theirs);
    }

    #[tokio::test]
    async fn the_idle_sweep_closes_old_connections_and_then_ends() {
        let (uri, accepted, _) = upstream(vec![STREAM], false).await;
        let pool = Pool::new(HttpConnector::new(), 2, Duration::from_millis(20));
        let response = send(&pool, &uri).await.unwrap();
        read_all(response.into_body()).await.unwrap();
        assert_eq!(pool.idle(), 1);
        assert!(pool.shared.idle.inspect(|_, sweeping| sweeping));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let swept = pool
                .shared
                .idle
                .inspect(|conns, sweeping| conns.is_empty() && !sweeping);
            if swept {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "swept in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The next request opens a new connection, and the sweep starts again.
        let response = send(&pool, &uri).await.unwrap();
        read_all(response.into_body()).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(pool.shared.idle.inspect(|_, sweeping| sweeping));
    }

    #[tokio::test]
    async fn a_request_that_says_close_does_not_keep_its_connection() {
        let (uri, accepted, _) = upstream(vec![STREAM], false).await;
        let pool = pool();
        for _ in 0..2 {
            let mut request = post(&uri, "{}");
            request
                .headers_mut()
                .insert("connection", HeaderValue::from_static("keep-alive, Close"));
            let response = pool.send(&uri, request).await.unwrap();
            read_all(response.into_body()).await.unwrap();
            assert_eq!(pool.idle(), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read() {
        // A sized answer to a GET without a body (a whole answer, not a stream).
        let hello = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let (uri, accepted, _) = upstream(vec![hello], false).await;
        let pool = pool();
        for _ in 0..3 {
            let get = Request::builder()
                .uri("/")
                .header("host", uri.authority().unwrap().as_str())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = pool.send(&uri, get).await.unwrap();
            assert_eq!(read_all(response.into_body()).await.unwrap(), "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (uri, accepted, _) = upstream(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"],
            false,
        )
        .await;
        let pool = pool();
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(send(&pool, &uri).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        for answer in answers {
            read_all(answer.into_body()).await.unwrap();
        }
        assert_eq!(pool.idle(), 2, "max_idle is 2");
        // The most recently given back is taken first, and they all serve.
        for _ in 0..3 {
            let response = send(&pool, &uri).await.unwrap();
            read_all(response.into_body()).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_answer_to_head_has_no_body_whatever_its_length_says() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        let (uri, accepted, _) = upstream(vec![head], false).await;
        let pool = pool();
        for _ in 0..2 {
            let request = Request::builder()
                .method("HEAD")
                .uri("/")
                .header("host", uri.authority().unwrap().as_str())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = pool.send(&uri, request).await.unwrap();
            assert_eq!(response.headers()["content-length"], "5");
            assert_eq!(read_all(response.into_body()).await.unwrap(), "");
            assert_eq!(pool.idle(), 1, "the connection is kept");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_large_sized_body_is_read_in_larger_pieces() {
        // A whole answer of 200 KiB with its length: read at most
        // MAX_SIZED_READ at a time, all of it, and the connection kept.
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 200 * 1024).into_bytes();
        answer.resize(answer.len() + 200 * 1024, b'j');
        let (uri, accepted, _) = upstream(vec![leak(answer)], false).await;
        let pool = pool();
        for _ in 0..2 {
            let response = send(&pool, &uri).await.unwrap();
            let mut body = response.into_body();
            assert_eq!(body.read_size, MAX_SIZED_READ);
            let (mut read, mut largest) = (0, 0);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while let Some(frame) =
                tokio::time::timeout_at(deadline, http_body_util::BodyExt::frame(&mut body))
                    .await
                    .expect("read in time")
            {
                let data = frame.unwrap().into_data().unwrap();
                assert!(data.iter().all(|&b| b == b'j'));
                largest = largest.max(data.len());
                read += data.len();
            }
            assert_eq!(read, 200 * 1024);
            assert!(largest <= MAX_SIZED_READ, "{largest}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }
}
