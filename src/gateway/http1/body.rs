//! The request body, read from the socket only as the handler polls it.
//!
//! Why the socket is shared ([`Io`]) instead of handed to a reading task: the
//! body is read by whoever polls it (the handler, or the upstream client it
//! passes the body to), so nothing reads ahead of what the handler takes and
//! no buffer is held for a body that is not being read. The connection reads
//! from the same socket only once the body has ended (to notice a hang-up, or
//! keep the bytes of a pipelined request), so the two never read at once.
//!
//! `Expect: 100-continue` is answered when the body is first polled, as hyper
//! does: a handler that answers without reading the body never invites it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::net::TcpStream;

use crate::upstream::framing::{Decoded, Framing, Spent, decode};

/// What one read of a body asks for at most: enough that a large body is read
/// in few system calls, freed as the handler consumes it.
const READ_SIZE: usize = 16 * 1024;

/// The most of a body the handler did not read that is read and dropped
/// (if it has arrived), before the connection is closed instead.
const DRAIN_MAX: usize = 64 * 1024;

/// hyper's interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One connection's socket, shared by the connection and the request body.
pub struct Io {
    pub stream: TcpStream,
    read: Mutex<ReadSide>,
}

/// The reading side of the connection.
pub struct ReadSide {
    /// Bytes read and not yet taken: the rest of the body, then maybe the
    /// start of a pipelined request.
    pub buf: BytesMut,
    pub framing: Framing,
    spent: Spent,
    /// `Expect: 100-continue` not yet answered: how much of it is sent.
    continue_sent: Option<usize>,
    /// The response head is out: `100 Continue` is no longer sent.
    pub answered: bool,
    /// The body could not be read (bad framing, a read error, the client
    /// closed early): the connection cannot be reused.
    pub failed: bool,
    /// The connection's task, woken when the body ends.
    waker: Option<Waker>,
}

impl Io {
    pub fn new(stream: TcpStream, buf: BytesMut, framing: Framing, expect: bool) -> Io {
        Io {
            stream,
            read: Mutex::new(ReadSide {
                buf,
                framing,
                spent: Spent::default(),
                continue_sent: expect.then_some(0),
                answered: false,
                failed: false,
                waker: None,
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, ReadSide> {
        self.read.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the body has been read to its end; if not, `cx` is woken
    /// when it is.
    pub fn body_ended(&self, cx: &mut Context<'_>) -> bool {
        let mut read = self.lock();
        if read.framing.is_done() || read.failed {
            return read.framing.is_done();
        }
        match &read.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => read.waker = Some(cx.waker().clone()),
        }
        false
    }

    /// The response head is about to be written: `100 Continue` is no longer
    /// sent. A body the handler dropped before its end is drained of what has
    /// arrived; `false`: the connection cannot be reused.
    pub fn answering(&self, body_dropped: bool) -> bool {
        {
            let mut read = self.lock();
            read.answered = true;
            if read.failed {
                return false;
            }
            if !body_dropped || read.framing.is_done() {
                return true;
            }
        }
        self.drain_available()
    }

    pub fn into_parts(self) -> (TcpStream, ReadSide) {
        let read = self
            .read
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        (self.stream, read)
    }

    /// The rest of a body the handler dropped, as far as it has arrived:
    /// `true` if that ended it, so the connection can serve a next request.
    /// A chunked body: as far as hyper would have read it (two chunks, or one
    /// after an unanswered `Expect: 100-continue`). A declared length: what
    /// has arrived, up to [`DRAIN_MAX`] bytes (hyper: what its read buffer
    /// holds, and one read more).
    pub fn drain_available(&self) -> bool {
        let mut read = self.lock();
        let side = &mut *read;
        let expecting = side.continue_sent.take().is_some();
        let mut tried_read = false;
        let mut drained = 0;
        let mut chunk_steps: u8 = if expecting { 1 } else { 2 };
        loop {
            if side.failed {
                return false;
            }
            match decode(&mut side.framing, &mut side.buf, &mut side.spent) {
                Ok(Decoded::End) => return true,
                Ok(Decoded::Data(data)) => {
                    drained += data.len();
                    if side.framing.is_done() {
                        return true;
                    }
                    // As hyper: it has read one chunk ahead of the handler
                    // (none after an unanswered `Expect: 100-continue`) and
                    // decodes one more when the body is dropped; the end of
                    // a chunked body is a step of its own.
                    chunk_steps = chunk_steps.saturating_sub(1);
                    let chunked = matches!(side.framing, Framing::Chunked(_));
                    if (chunked && chunk_steps == 0) || (expecting && !chunked) {
                        return false;
                    }
                    if drained > DRAIN_MAX {
                        return false;
                    }
                    tried_read = false;
                }
                Ok(Decoded::NeedMore) if !tried_read => {
                    tried_read = true;
                    let want = side.want();
                    side.buf.reserve(want);
                    match self.stream.try_read_buf(&mut (&mut side.buf).limit(want)) {
                        Ok(n) if n > 0 => {}
                        _ => return false,
                    }
                }
                Ok(Decoded::NeedMore) => return false,
                Err(_) => {
                    side.failed = true;
                    return false;
                }
            }
        }
    }
}

impl ReadSide {
    /// How much the next read of the body asks for: never past a declared
    /// length (the bytes after it are the next request's).
    fn want(&self) -> usize {
        match self.framing {
            Framing::Length(left) => (left as usize)
                .saturating_sub(self.buf.len())
                .clamp(1, READ_SIZE),
            _ => READ_SIZE,
        }
    }

    fn end(&mut self) {
        if self.buf.is_empty() {
            // Its spare room may be the rest of a large read: not kept for
            // the rest of the exchange.
            self.buf = BytesMut::new();
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The request body the handler reads.
pub struct RequestBody {
    io: Arc<Io>,
    /// Copies of the read side's state, so that `is_end_stream` and
    /// `size_hint` need no lock.
    ended: bool,
    left: Option<u64>,
}

impl RequestBody {
    pub fn new(io: Arc<Io>, framing: Framing) -> RequestBody {
        RequestBody {
            io,
            ended: framing.is_done(),
            left: hint(framing),
        }
    }
}

fn hint(framing: Framing) -> Option<u64> {
    match framing {
        Framing::Length(n) => Some(n),
        Framing::Done => Some(0),
        _ => None,
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("error reading the request body: {0}")]
pub struct BodyError(#[source] pub io::Error);

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let io = self.io.clone();
        let mut read = io.lock();
        let polled = poll_body(&io.stream, &mut read, cx);
        self.left = hint(read.framing);
        match &polled {
            Poll::Ready(None) => {
                self.ended = true;
                read.end();
            }
            Poll::Ready(Some(Err(_))) => {
                read.failed = true;
                self.ended = true;
                read.end();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        }
    }
}

fn poll_body(
    stream: &TcpStream,
    read: &mut ReadSide,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    if read.failed {
        return Poll::Ready(Some(Err(BodyError(io::Error::other(
            "the request body was cut off",
        )))));
    }
    if let Some(sent) = read.continue_sent {
        if read.answered {
            read.continue_sent = None;
        } else {
            let mut sent = sent;
            while sent < CONTINUE.len() {
                match stream.try_write(&CONTINUE[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        read.continue_sent = Some(sent);
                        match stream.poll_write_ready(cx) {
                            Poll::Ready(Ok(())) => continue,
                            Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(BodyError(e)))),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    Err(e) => return Poll::Ready(Some(Err(BodyError(e)))),
                }
            }
            read.continue_sent = None;
        }
    }
    loop {
        match decode(&mut read.framing, &mut read.buf, &mut read.spent) {
            Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(Decoded::End) => return Poll::Ready(None),
            Err(e) => return Poll::Ready(Some(Err(BodyError(e)))),
            Ok(Decoded::NeedMore) => {}
        }
        let want = read.want();
        read.buf.reserve(want);
        match stream.try_read_buf(&mut (&mut read.buf).limit(want)) {
            Ok(0) => {
                return Poll::Ready(Some(Err(BodyError(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before message completed",
                )))));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(BodyError(e)))),
                Poll::Pending => return Poll::Pending,
            },
            Err(e) => return Poll::Ready(Some(Err(BodyError(e)))),
        }
    }
}
