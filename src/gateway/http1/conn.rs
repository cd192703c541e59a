//! One exchange on an HTTP/1 connection: the head that has arrived is parsed,
//! the handler is called, the body is read as the handler asks for it, the
//! answer is written; then the socket, with any bytes of a next request, goes
//! back to the connection's loop (`connections::serve`), which reads the next
//! head as it reads a first one. So between requests a connection holds only
//! its socket: no buffers, no parser state.
//!
//! While the handler runs (and while a streamed answer is sent) and the
//! request body has been read to its end, the socket is watched: a client that
//! hangs up (end of stream or reset) cancels the handler, as hyper's
//! connection does, which is how a disconnect stops a slow upstream call or an
//! agent process.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Method, Request, Version};
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use tokio::net::TcpStream;

use super::body::{Io, RequestBody};
use super::head::{self, Parsed};
use super::response::{self, BodyLength, Encoder, Exchange};
use crate::gateway::connections::{ConnState, Waits};

use crate::gateway::connections::ServiceFuture;

/// The connection's service: the router with the request-level bounds.
pub type Service<'a> = &'a (dyn Fn(Request<RequestBody>) -> ServiceFuture + Send + Sync);

/// Serves the request whose head `bytes` begins with. The socket and the bytes
/// read past the exchange come back when the connection stays open.
pub async fn serve_one(
    stream: TcpStream,
    mut bytes: BytesMut,
    state: &Arc<ConnState>,
    service: Service<'_>,
    waits: &mut Waits<'_, '_>,
    header_timeout: Duration,
) -> Option<(TcpStream, BytesMut)> {
    let parsed = match head::parse(&mut bytes) {
        Ok(parsed) => parsed,
        Err(refused) => {
            if let Some(status) = refused {
                // hyper's automatic answer, with an OpenAI-shaped body.
                state.metrics().malformed_request(status.as_u16());
                let answer =
                    crate::gateway::malformed::automatic(status, crate::gateway::MAX_HEAD_BYTES);
                let mut slices = [IoSlice::new(&answer)];
                let _ = tokio::time::timeout(header_timeout, write_all(&stream, &mut slices)).await;
            }
            return None;
        }
    };
    let Parsed {
        request,
        framing,
        expect_continue,
        keep_alive,
    } = parsed;
    let method = request.method().clone();
    let version = request.version();
    let io = Arc::new(Io::new(stream, bytes, framing, expect_continue));
    let request = request.map(|()| RequestBody::new(io.clone(), framing));
    let future = service(request);
    let mut exchange = Box::pin(exchange(&io, state, future, method, version, keep_alive));
    let mut told = false;
    let kept = loop {
        tokio::select! {
            kept = &mut exchange => break kept,
            () = waits.close.as_mut() => {
                if told || !state.registry.is_draining() {
                    break false; // shed to make room
                }
                // The drain: the exchange finishes (its answer says
                // `connection: close`), then the connection closes.
                told = true;
                waits.rearm_close();
            }
            () = waits.timer.as_mut() => if waits.expired() {
                break false;
            },
        }
    };
    drop(exchange);
    if !kept || state.registry.is_draining() {
        return None;
    }
    let io = Arc::into_inner(io)?;
    let (stream, read) = io.into_parts();
    (read.framing.is_done() && !read.failed).then_some((stream, read.buf))
}

/// What the exchange is waiting for next.
enum Next {
    Frame(Option<Result<http_body::Frame<Bytes>, axum::Error>>),
    /// The body has nothing yet: the head goes out on its own.
    Head,
    HungUp,
}

/// The handler's answer, written; whether the connection may stay open.
async fn exchange(
    io: &Arc<Io>,
    state: &ConnState,
    future: ServiceFuture,
    method: Method,
    version: Version,
    mut keep_alive: bool,
) -> bool {
    let mut watch = Watch::default();
    let mut future = future;
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = future.as_mut().poll(cx) {
            let Ok(response) = response;
            return Poll::Ready(Some(response));
        }
        if watch.hung_up(io, cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    drop(future);
    let Some(response) = response else {
        return false;
    };
    let (mut parts, mut body) = response.into_parts();
    let length = if body.is_end_stream() {
        BodyLength::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => BodyLength::Known(n),
            None => BodyLength::Unknown,
        }
    };
    if state.registry.is_draining() {
        keep_alive = false;
    }
    // A body the handler dropped before its end: what has arrived is read;
    // if that does not end it, or the body could not be read, the connection
    // closes after this answer, which does not say so (as hyper's does not:
    // it finds out after writing the head).
    let reusable = io.answering(Arc::strong_count(io) == 1);
    let mut head = Vec::new();
    let Some(encoder) = response::encode(
        &mut parts,
        length,
        Exchange {
            method: &method,
            version,
            keep_alive: &mut keep_alive,
        },
        &mut head,
    ) else {
        return false;
    };
    drop(parts);
    keep_alive &= reusable;
    if encoder == Encoder::Length(0) {
        drop(body);
        return write_all(&io.stream, &mut [IoSlice::new(&head)])
            .await
            .is_ok()
            && keep_alive;
    }
    let mut left = match encoder {
        Encoder::Length(n) => n,
        _ => u64::MAX,
    };
    let mut head_pending = true;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Next::Frame(frame));
            }
            if head_pending {
                return Poll::Ready(Next::Head);
            }
            if watch.hung_up(io, cx) {
                return Poll::Ready(Next::HungUp);
            }
            Poll::Pending
        })
        .await;
        let head_slice: &[u8] = if head_pending { &head } else { &[] };
        let written = match next {
            Next::HungUp | Next::Frame(Some(Err(_))) => return false,
            Next::Head => write_all(&io.stream, &mut [IoSlice::new(head_slice)]).await,
            Next::Frame(None) => {
                let end: &[u8] = match encoder {
                    Encoder::Chunked => b"0\r\n\r\n",
                    // Short of its declared length, or delimited by the close.
                    _ if left != 0 => {
                        let _ = write_all(&io.stream, &mut [IoSlice::new(head_slice)]).await;
                        return false;
                    }
                    _ => b"",
                };
                return write_all(
                    &io.stream,
                    &mut [IoSlice::new(head_slice), IoSlice::new(end)],
                )
                .await
                .is_ok()
                    && keep_alive;
            }
            Next::Frame(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    continue; // trailers are not sent (no route sends any)
                };
                if data.is_empty() && !body.is_end_stream() {
                    continue;
                }
                match encoder {
                    Encoder::Length(_) => {
                        if data.len() as u64 > left {
                            data.truncate(left as usize);
                        }
                        left -= data.len() as u64;
                        let done = left == 0;
                        let written = write_all(
                            &io.stream,
                            &mut [IoSlice::new(head_slice), IoSlice::new(&data)],
                        )
                        .await;
                        if done || written.is_err() {
                            drop(body);
                            return written.is_ok() && keep_alive;
                        }
                        written
                    }
                    Encoder::Chunked => {
                        let mut line = [0u8; 18];
                        let size = chunk_size_line(data.len(), &mut line);
                        let end: &[u8] = if body.is_end_stream() {
                            b"\r\n0\r\n\r\n"
                        } else {
                            b"\r\n"
                        };
                        let size: &[u8] = if data.is_empty() { b"" } else { size };
                        let end = if data.is_empty() { &end[2..] } else { end };
                        let written = write_all(
                            &io.stream,
                            &mut [
                                IoSlice::new(head_slice),
                                IoSlice::new(size),
                                IoSlice::new(&data),
                                IoSlice::new(end),
                            ],
                        )
                        .await;
                        if body.is_end_stream() || written.is_err() {
                            drop(body);
                            return written.is_ok() && keep_alive;
                        }
                        written
                    }
                    Encoder::CloseDelimited => {
                        write_all(
                            &io.stream,
                            &mut [IoSlice::new(head_slice), IoSlice::new(&data)],
                        )
                        .await
                    }
                }
            }
        };
        if written.is_err() {
            return false;
        }
        if head_pending {
            // Sent: nothing of the head is held while the body streams.
            head_pending = false;
            head = Vec::new();
        }
    }
}

/// A chunk's size line, `{len:X}\r\n` as hyper writes it, in `buf`.
fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in buf.iter_mut().take(digits).enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789ABCDEF"[nibble];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
}

#[cfg(test)]
#[test]
fn chunk_size_lines_are_upper_case_hex() {
    let mut buf = [0u8; 18];
    for len in [0, 1, 9, 10, 255, 4096, 0xABCDEF, usize::MAX] {
        assert_eq!(
            chunk_size_line(len, &mut buf),
            format!("{len:X}\r\n").as_bytes()
        );
    }
}

/// Watches the socket for a hang-up once the request body has ended.
#[derive(Default)]
struct Watch {
    /// Bytes of a next request arrived: like hyper, the connection stops
    /// reading (they wait in the read side) until this exchange is over.
    stopped: bool,
}

impl Watch {
    /// Whether the client has gone (end of stream, or an error).
    fn hung_up(&mut self, io: &Io, cx: &mut Context<'_>) -> bool {
        if self.stopped || !io.body_ended(cx) {
            return false;
        }
        loop {
            match io.stream.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) => {}
            }
            let mut read = io.lock();
            if !read.buf.is_empty() {
                self.stopped = true;
                return false;
            }
            // Small: the rest of a next request is read with its head.
            let mut chunk = [0u8; 64];
            match io.stream.try_read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => {
                    read.buf.extend_from_slice(&chunk[..n]);
                    self.stopped = true;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            }
        }
    }
}

/// Writes all of `bufs`, waiting while the client is not reading.
async fn write_all(stream: &TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    // Empty slices cost nothing to the kernel, but skip them when done.
    while bufs.iter().any(|b| !b.is_empty()) {
        match stream.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.writable().await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
