//! The gateway's own HTTP/1.1 server connection, in place of hyper's.
//!
//! Why: hyper 1.x's server connection allocates an 8 KiB read buffer (which
//! lives as long as the request's headers, slices of it), a second one when it
//! reads for a client hang-up while the handler runs, and an 8 KiB write
//! buffer for the whole connection; none of these sizes can be configured. A
//! long stream held all three. Here the head is parsed from a buffer the size
//! of what arrived, the body is read only as the handler asks for it, and the
//! answer is written from a buffer built for one write: a stream holds its
//! socket, its request's headers and what the handler holds.
//!
//! What it does as hyper does, and the differential test (`tests`) checks
//! against hyper's own server: the head's parsing and its limits (100
//! headers, [`crate::gateway::MAX_HEAD_BYTES`]), the refusals (400, 414, 431,
//! with the JSON body of [`super::malformed`]), `Content-Length` and chunked
//! bodies with hyper's checks, `Expect: 100-continue` answered when the body
//! is first read, the response's framing, `date` and `connection` headers,
//! keep-alive, pipelining, HTTP/1.0, and the cancelling of a handler whose
//! client hung up.
//!
//! - [`head`]: the request head and its checks.
//! - [`body`]: the request body, read from the shared socket.
//! - [`response`]: the response head and the body's framing.
//! - [`conn`]: one exchange, from head to the end of the answer.

pub mod body;
mod conn;
mod head;
mod response;
#[cfg(test)]
mod tests;

pub use conn::{Service, serve_one};
