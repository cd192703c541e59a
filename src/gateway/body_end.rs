//! A response body that says, exactly once, when it is over.
//!
//! Two layers need the moment an answer ends, which for a stream is long after
//! the handler returned: the connection (a connection with no answer in progress
//! is idle again, so the keep-alive timeout and the shedding of idle connections
//! apply) and the access log (a request is over when its body is, and one the
//! client abandoned is logged as 499). Both wrap the body in [`EndingBody`]: its
//! [`OnEnd`] runs at the body's last frame, or when the body is dropped before
//! it (the client went away), whichever comes first.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

/// What to do when a response body is over.
pub trait OnEnd: Send + Unpin + 'static {
    /// Called once; `completed` is false when the body was dropped unfinished.
    fn ended(self, completed: bool);
}

/// `inner`, calling `on_end` once when it is over.
pub struct EndingBody<E: OnEnd> {
    /// The response body as the handler made it.
    inner: Body,
    /// Taken by the first end (`None` afterwards).
    on_end: Option<E>,
    /// The `Content-Length` the answer declared: once that much is sent, the
    /// answer is whole even if hyper never polls the body to its end.
    declared: Option<u64>,
    sent: u64,
}

impl<E: OnEnd> EndingBody<E> {
    pub fn new(inner: Body, on_end: E) -> EndingBody<E> {
        EndingBody {
            inner,
            on_end: Some(on_end),
            declared: None,
            sent: 0,
        }
    }

    /// The answer declared this `Content-Length`.
    pub fn declared(mut self, length: Option<u64>) -> EndingBody<E> {
        self.declared = length;
        self
    }

    fn end(&mut self, completed: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end.ended(completed);
        }
    }
}

impl<E: OnEnd> http_body::Body for EndingBody<E> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.end(true),
            Poll::Ready(Some(Ok(frame))) if self.declared.is_some() => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
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

impl<E: OnEnd> Drop for EndingBody<E> {
    fn drop(&mut self) {
        // A body with nothing left to send (an empty or fully known one that
        // hyper did not poll to its end) was sent whole.
        let completed = http_body::Body::is_end_stream(&self.inner)
            || self.declared.is_some_and(|d| d == self.sent);
        self.end(completed);
    }
}
