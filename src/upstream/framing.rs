//! HTTP/1.1 message bodies as they arrive (RFC 9112 §6, §7): a body of a
//! declared length, a chunked one, or one that lasts until the connection
//! closes. Shared by the two places that read HTTP/1 bodies off a socket
//! themselves: the upstream streams' client ([`super::streams`]) and the
//! gateway's own client-facing server (`gateway::http1`), so both decode
//! chunks, and bound what a peer can make them read and drop, the same way.

use std::io;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bytes::{Bytes, BytesMut};

use super::streams::MAX_HEADERS;

/// The longest chunk-size line or trailer line.
pub(crate) const MAX_LINE: usize = 4 * 1024;
/// The chunk extensions of one body, all together (hyper's limit): they are
/// read and dropped, so without a limit a peer could send kilobytes of
/// them for every byte of the body.
pub(crate) const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// The trailer section of one body (hyper's limit), read and dropped; at most
/// [`MAX_HEADERS`] fields.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;

pub(crate) fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// How an answer's body ends, and how far it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `content-length`: this many bytes are still to come.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked(Chunk),
    /// Neither: the body ends when the upstream closes the connection.
    UntilClose,
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section (after the last, empty chunk).
    Trailers,
}

impl Framing {
    /// RFC 9112 §6.3, for answers to requests other than `HEAD` and `CONNECT`.
    pub(crate) fn of(status: StatusCode, headers: &HeaderMap) -> io::Result<Framing> {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Done);
        }
        let encodings = headers.get_all(axum::http::header::TRANSFER_ENCODING);
        if encodings.iter().next().is_some() {
            let last_is_chunked = encodings
                .iter()
                .next_back()
                .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(if last_is_chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            });
        }
        let mut lengths = headers.get_all(axum::http::header::CONTENT_LENGTH).iter();
        let Some(first) = lengths.next() else {
            return Ok(Framing::UntilClose);
        };
        let length = parse_length(first)?;
        if lengths.any(|other| parse_length(other).ok() != Some(length)) {
            return Err(invalid("conflicting content-length"));
        }
        Ok(if length == 0 {
            Framing::Done
        } else {
            Framing::Length(length)
        })
    }

    pub(crate) fn is_done(&self) -> bool {
        *self == Framing::Done
    }
}

pub(crate) fn parse_length(value: &HeaderValue) -> io::Result<u64> {
    let text = value
        .to_str()
        .map_err(|_| invalid("invalid content-length"))?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("invalid content-length"));
    }
    text.parse().map_err(|_| invalid("invalid content-length"))
}

/// What [`decode`] found in the buffer.
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body has ended.
    End,
    /// More bytes are needed (the upstream closed: `UntilClose` ends).
    NeedMore,
}

/// What a chunked body has spent so far of its [`MAX_CHUNK_EXTENSIONS`] and
/// [`MAX_TRAILERS`].
#[derive(Debug, Default)]
pub(crate) struct Spent {
    extensions: usize,
    trailers: usize,
    trailer_fields: usize,
}

/// Takes what it can of the body from `buf`, advancing `framing`.
pub(crate) fn decode(
    framing: &mut Framing,
    buf: &mut BytesMut,
    spent: &mut Spent,
) -> io::Result<Decoded> {
    loop {
        match framing {
            Framing::Done => return Ok(Decoded::End),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *framing = Framing::Done;
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            Framing::UntilClose => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                return Ok(Decoded::Data(buf.split().freeze()));
            }
            Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *framing = Framing::Chunked(Chunk::DataEnd);
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                if !line.is_empty() {
                    return Err(invalid("invalid chunk end"));
                }
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                let size = chunk_size(&line)?;
                spent.extensions += line
                    .iter()
                    .position(|&b| b == b';')
                    .map_or(0, |at| line.len() - at);
                if spent.extensions > MAX_CHUNK_EXTENSIONS {
                    return Err(invalid("chunk extensions too large"));
                }
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Trailers) => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Decoded::NeedMore);
                };
                if line.is_empty() {
                    *framing = Framing::Done;
                } else {
                    spent.trailers += line.len() + 2;
                    spent.trailer_fields += 1;
                    if spent.trailers > MAX_TRAILERS || spent.trailer_fields > MAX_HEADERS {
                        return Err(invalid("trailers too large"));
                    }
                }
            }
        }
    }
}

/// The next line of `buf` without its CRLF; `None`: not all there yet.
///
/// A bare LF or CR is refused, as hyper refuses it: a peer that ends a chunk
/// line (or hides one in an extension) with a bare LF would otherwise have
/// its body end at one place here and another in a proxy in front that reads
/// lines by CRLF, and the rest would be taken as a smuggled request.
fn take_line(buf: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            if end == 0 || buf[end - 1] != b'\r' {
                return Err(invalid("chunk line ended by a bare LF"));
            }
            let mut line = buf.split_to(end + 1);
            line.truncate(end - 1);
            if line.contains(&b'\r') {
                return Err(invalid("bare CR in a chunk line"));
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(invalid("chunk size or trailer line too long")),
        None => Ok(None),
    }
}

/// A chunk-size line's size (hex digits first, then maybe spaces or tabs, then
/// maybe `;` extensions).
pub(crate) fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let mut digits = line.split(|&b| b == b';').next().unwrap_or_default();
    while let [rest @ .., b' ' | b'\t'] = digits {
        digits = rest;
    }
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("invalid chunk size line"));
    }
    let mut size = 0u64;
    for &b in digits {
        let digit = (b as char)
            .to_digit(16)
            .ok_or_else(|| invalid("invalid chunk size line"))?;
        size = size * 16 + u64::from(digit);
    }
    Ok(size)
}
