//! The request head: parsed with `httparse` (as hyper parses it), and checked
//! by hyper's rules (RFC 9112 §6.3), so a head hyper would refuse is refused
//! here with the same status.
//!
//! Why the header values are slices of one buffer: the head was read into a
//! buffer the size of what arrived ([`crate::gateway::connections`] reads it),
//! so keeping that one allocation while the request's headers live costs what
//! the client sent, no more; copying each value would instead cost one
//! allocation per header on every request. Bytes past the head (the start of
//! the body, or a pipelined request) are copied out, so they do not keep that
//! buffer once the headers are gone.

use std::mem::MaybeUninit;

use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header,
};
use bytes::BytesMut;

use crate::upstream::framing::{Chunk, Framing};

/// The most headers a request head may have (hyper's default; more: 431).
pub const MAX_HEADERS: usize = 100;

/// hyper's longest request target (more: 414).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// A request head, ready to serve.
pub struct Parsed {
    pub request: Request<()>,
    /// How the body is delimited (`Framing::Done`: there is none).
    pub framing: Framing,
    /// `Expect: 100-continue`, with a body to come.
    pub expect_continue: bool,
    /// The client lets the connection stay open after this exchange.
    pub keep_alive: bool,
}

/// Why a head was refused: the automatic answer's status, or `None` when
/// hyper closes without one.
pub type Refused = Option<StatusCode>;

/// Parses the head at the start of `buf` (which must hold a whole one), leaving
/// in `buf` only the bytes after it.
pub fn parse(buf: &mut BytesMut) -> Result<Parsed, Refused> {
    let bytes = std::mem::take(buf).freeze();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, &bytes, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        // The caller found the end of the head; httparse disagrees (a bare
        // `\n\n` inside something it cannot parse): malformed.
        Ok(httparse::Status::Partial) => return Err(Some(StatusCode::BAD_REQUEST)),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        Err(httparse::Error::Status) => return Err(None),
        Err(_) => return Err(Some(StatusCode::BAD_REQUEST)),
    };
    if bytes.len() > len {
        *buf = BytesMut::from(&bytes[len..]);
    }
    let path = req.path.unwrap_or_default();
    if path.len() > MAX_URI_LEN {
        return Err(Some(StatusCode::URI_TOO_LONG));
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Some(StatusCode::BAD_REQUEST))?;
    let is_http_11 = req.version == Some(1);
    let uri = Uri::from_maybe_shared(bytes.slice_ref(path.as_bytes()))
        .map_err(|_| Some(StatusCode::BAD_REQUEST))?;

    let mut keep_alive = is_http_11;
    let mut framing = Framing::Done;
    let mut expect_continue = false;
    let mut length: Option<u64> = None;
    let (mut is_cl, mut is_te, mut is_te_chunked, mut saw_close) = (false, false, false, false);
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Some(StatusCode::BAD_REQUEST))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(h.value))
            .map_err(|_| Some(StatusCode::BAD_REQUEST))?;
        match name {
            header::TRANSFER_ENCODING => {
                if !is_http_11 {
                    return Err(Some(StatusCode::BAD_REQUEST));
                }
                is_te = true;
                if is_cl && length.take().is_some() {
                    headers.remove(header::CONTENT_LENGTH);
                }
                is_te_chunked = is_chunked(&value);
                if is_te_chunked {
                    framing = Framing::Chunked(Chunk::Size);
                }
            }
            header::CONTENT_LENGTH => {
                is_cl = true;
                if is_te {
                    continue;
                }
                let len = digits(value.as_bytes()).ok_or(Some(StatusCode::BAD_REQUEST))?;
                if let Some(prev) = length {
                    if prev != len {
                        return Err(Some(StatusCode::BAD_REQUEST));
                    }
                    continue;
                }
                if len > u64::MAX - 2 {
                    return Err(Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
                }
                framing = if len == 0 {
                    Framing::Done
                } else {
                    Framing::Length(len)
                };
                length = Some(len);
            }
            header::CONNECTION => {
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        headers.append(name, value);
    }
    if is_te && !is_te_chunked {
        return Err(Some(StatusCode::BAD_REQUEST));
    }
    if is_te && is_cl {
        keep_alive = false;
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if is_http_11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *request.headers_mut() = headers;
    Ok(Parsed {
        request,
        expect_continue: expect_continue && is_http_11 && !framing.is_done(),
        framing,
        keep_alive,
    })
}

/// A `Content-Length` value: digits only (no sign, no spaces), no overflow.
pub fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Whether the last transfer coding is `chunked`.
pub fn is_chunked(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// Whether a comma-separated header value holds `token` (any case).
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}
