//! The response head, written as hyper writes it, and the body's framing as
//! hyper chooses it: a body of known size gets `content-length`; one of
//! unknown size is chunked on HTTP/1.1 and delimited by the connection's
//! close on HTTP/1.0; an answer to `HEAD`, a 204 and a 304 have no body.
//! Header names are written as the `HeaderMap` holds them (lower case), in its
//! order, with `date` last unless the handler set one.
//!
//! Why a head of its own buffer: it is built for one write and freed after it,
//! so a connection holds no write buffer between responses, nor while a
//! stream waits for its next event.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header::{self, Entry};
use axum::http::response::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Version};

use super::head::{has_token, is_chunked};

/// How the body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// Exactly this many bytes (0: no body at all).
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, size unknown).
    CloseDelimited,
}

/// What the handler's body says of its size.
#[derive(Debug, Clone, Copy)]
pub enum BodyLength {
    /// Nothing to send (`is_end_stream`).
    Empty,
    Known(u64),
    Unknown,
}

/// The exchange as the head is written.
pub struct Exchange<'a> {
    pub method: &'a Method,
    /// The request's version (an HTTP/1.0 client is answered in HTTP/1.0).
    pub version: Version,
    /// Whether the connection may stay open; cleared here when the answer
    /// closes it.
    pub keep_alive: &'a mut bool,
}

fn can_chunk(method: &Method, status: StatusCode) -> bool {
    !(method == Method::HEAD
        || method == Method::CONNECT && status.is_success()
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

fn can_have_content_length(method: &Method, status: StatusCode) -> bool {
    !(status.is_informational()
        || method == Method::CONNECT && status.is_success()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

/// Writes the head of `parts` (its headers are taken) to `dst`; the body's
/// encoding. `None`: the handler's headers frame the body both by
/// `content-length` and `transfer-encoding`; as hyper, nothing is sent and the
/// connection closes (an answer with both would desync whoever reads it).
pub fn encode(
    parts: &mut Parts,
    body: BodyLength,
    ex: Exchange<'_>,
    dst: &mut Vec<u8>,
) -> Option<Encoder> {
    let mut response_version = parts.version;
    // hyper's `enforce_version`.
    if ex.version == Version::HTTP_10 {
        let outgoing_keep_alive = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "keep-alive"));
        if !outgoing_keep_alive {
            if response_version == Version::HTTP_10 {
                *ex.keep_alive = false;
            } else if *ex.keep_alive {
                parts
                    .headers
                    .append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
            }
        }
        response_version = Version::HTTP_10;
    } else if !*ex.keep_alive {
        match parts.headers.entry(header::CONNECTION) {
            Entry::Occupied(mut entry) => {
                if !entry.iter().any(|v| has_token(v, "close")) {
                    entry.append(HeaderValue::from_static("close"));
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(HeaderValue::from_static("close"));
            }
        }
    }
    let status = parts.status;
    let method = ex.method;
    let mut is_last = !*ex.keep_alive;

    dst.reserve(64 + parts.headers.len() * 32);
    if response_version == Version::HTTP_11 && status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if response_version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }

    let mut encoder = Encoder::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut must_write_chunked = false;
    let mut prev_len: Option<u64> = None;
    // Whether the current special header's line is open (values are joined).
    let mut open = false;
    let mut cur = None;
    for (name, value) in parts.headers.drain() {
        if let Some(n) = name {
            if open {
                dst.extend_from_slice(if must_write_chunked {
                    b", chunked\r\n"
                } else {
                    b"\r\n"
                });
            }
            open = false;
            cur = Some(n);
        }
        let Some(name) = cur.as_ref() else { continue };
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len && !open {
                    return None;
                }
                match body {
                    BodyLength::Known(n) => {
                        if !open {
                            encoder = Encoder::Length(n);
                            dst.extend_from_slice(b"content-length: ");
                            dst.extend_from_slice(value.as_bytes());
                            wrote_len = true;
                            open = true;
                        }
                        continue;
                    }
                    BodyLength::Unknown => {
                        let Some(len) = super::head::digits(value.as_bytes()) else {
                            continue;
                        };
                        if prev_len.is_some() {
                            continue;
                        }
                        encoder = Encoder::Length(len);
                        dst.extend_from_slice(b"content-length: ");
                        dst.extend_from_slice(value.as_bytes());
                        wrote_len = true;
                        open = true;
                        prev_len = Some(len);
                        continue;
                    }
                    BodyLength::Empty => {
                        if method != Method::HEAD {
                            continue;
                        }
                    }
                }
                wrote_len = true;
            }
            header::TRANSFER_ENCODING => {
                if wrote_len && !open {
                    return None;
                }
                if response_version == Version::HTTP_10 || !can_chunk(method, status) {
                    continue;
                }
                wrote_len = true;
                must_write_chunked = !is_chunked(&value);
                if open {
                    dst.extend_from_slice(b", ");
                } else {
                    encoder = Encoder::Chunked;
                    open = true;
                    dst.extend_from_slice(b"transfer-encoding: ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            header::CONNECTION => {
                if !is_last && has_token(&value, "close") {
                    is_last = true;
                }
                if open {
                    dst.extend_from_slice(b", ");
                } else {
                    open = true;
                    dst.extend_from_slice(b"connection: ");
                }
                dst.extend_from_slice(value.as_bytes());
                continue;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if open {
        dst.extend_from_slice(if must_write_chunked {
            b", chunked\r\n"
        } else {
            b"\r\n"
        });
    }
    if !wrote_len {
        encoder = match body {
            BodyLength::Unknown => {
                if response_version == Version::HTTP_10 || !can_chunk(method, status) {
                    Encoder::CloseDelimited
                } else {
                    dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Encoder::Chunked
                }
            }
            BodyLength::Empty | BodyLength::Known(0) => {
                if can_have_content_length(method, status) && method != Method::HEAD {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoder::Length(0)
            }
            BodyLength::Known(n) => {
                if can_have_content_length(method, status) {
                    dst.extend_from_slice(b"content-length: ");
                    let _ = write!(dst, "{n}");
                    dst.extend_from_slice(b"\r\n");
                    Encoder::Length(n)
                } else {
                    Encoder::Length(0)
                }
            }
        };
    }
    if !can_chunk(method, status) {
        encoder = Encoder::Length(0);
    }
    if wrote_date {
        dst.extend_from_slice(b"\r\n");
    } else {
        dst.extend_from_slice(b"date: ");
        date(dst);
        dst.extend_from_slice(b"\r\n\r\n");
    }
    if is_last || encoder == Encoder::CloseDelimited {
        *ex.keep_alive = false;
    }
    Some(encoder)
}

thread_local! {
    /// The `date` value of the current second (formatting it per response
    /// would cost more than the rest of the head).
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn date(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = secs;
            } else {
                dst.extend_from_slice(text.as_bytes());
                return;
            }
        }
        dst.extend_from_slice(&cached.1);
    });
}
