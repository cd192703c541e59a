//! Every other `/v1/` path (audio, images, files, batches, moderations,
//! uploads, …): passed through to a provider with `passthrough = true`
//! (docs/contract.md §16; the sending side is [`crate::upstream::passthrough`]).
//!
//! How the provider is chosen: by the request's `model` when it names one (in
//! a JSON body, or in the `model` field of a multipart form, as the audio API
//! sends it), with aliases and `PROVIDER/MODEL` resolved and rewritten; else
//! the first such provider by priority. A JSON body is read whole (it is at
//! most `server.max_body_bytes`, like any request's); any other body is
//! streamed to the provider as it arrives, counted against `max_body_bytes`
//! (past it: 413), with only the start of a multipart form read ahead
//! ([`MULTIPART_PEEK`]) to find its `model`. The request is admitted, observed
//! and routed through [`dispatch::admit`] and the router's one dispatch path,
//! like every other route.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};

use super::chat::attach;
use super::{Gateway, dispatch};
use crate::api::metrics::Rejection;
use crate::api::openai::ApiError;
use crate::upstream::forward::client_headers;
use crate::upstream::passthrough::{PassBody, PassCall};
use crate::upstream::router::{no_passthrough, with_model};

/// How much of a multipart body is read ahead, at most, to find its `model`
/// field; a file part before it also ends the search (the file is not held).
pub const MULTIPART_PEEK: usize = 64 * 1024;

pub async fn passthrough(
    State(gw): State<Arc<Gateway>>,
    caller: Option<axum::extract::Extension<crate::keys::Caller>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let origin = dispatch::Origin::http(caller.map(|c| c.0), "/v1/*", &parts.headers).traced(
        parts
            .extensions
            .get::<crate::telemetry::SpanParent>()
            .cloned(),
    );
    let path = parts.uri.path().to_string();
    // The ledger records the route the client called, bounded.
    let origin = dispatch::Origin {
        path: Some(crate::support::redact::truncate(&path, 256).to_string()),
        ..origin
    };
    let rest = parts
        .uri
        .path_and_query()
        .map_or(path.as_str(), |pq| pq.as_str());
    let rest = rest.strip_prefix("/v1").unwrap_or(rest).to_string();
    // The providers, keys and limits this request is served with, to its end.
    let live = gw.live();
    if !live.router.passes_through() {
        return no_passthrough(&path).into_response();
    }
    let mut headers = client_headers(&parts.headers);
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let declared_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let max = gw.config.server.max_body_bytes;
    let lease = parts
        .extensions
        .get::<Arc<super::body_budget::Lease>>()
        .cloned();
    let upload = Upload::new(max, lease);
    let empty = http_body::Body::is_end_stream(&body) || parts.method == Method::GET;
    let mut model: Option<String> = None;
    let mut multipart: Option<Multipart> = None;
    let pass_body = if empty {
        PassBody::Empty
    } else if content_type.starts_with("application/json") {
        let bytes = match super::chat::ClientBody::read(&gw, body).await {
            Ok(bytes) => bytes,
            Err(e) => return e.into_response(),
        };
        model = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_string));
        PassBody::Whole(bytes)
    } else if let Some(boundary) = multipart_boundary(&content_type, &parts.headers) {
        let mut stream = upload.count(body.into_data_stream());
        let (prefix, found) = match peek_model(&mut stream, &boundary).await {
            Ok(peeked) => peeked,
            Err(e) => return upload.error(&gw, e).into_response(),
        };
        if let Some(range) = &found {
            model = std::str::from_utf8(&prefix[range.clone()])
                .ok()
                .map(|m| m.trim().to_string());
        }
        multipart = Some(Multipart {
            prefix,
            model_at: found,
            rest: Box::pin(stream),
        });
        PassBody::Empty
    } else {
        if let Some(length) = declared_length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        PassBody::streamed(reqwest::Body::wrap_stream(
            upload.count(body.into_data_stream()),
        ))
    };
    let (candidates, rewrite) = match live.router.route_passthrough(model.as_deref(), &path) {
        Ok(route) => route,
        Err(e) => return e.into_response(),
    };
    let pass_body = match (pass_body, multipart) {
        (_, Some(form)) => {
            let (body, length) = form.into_body(rewrite.as_deref(), declared_length);
            if let Some(length) = length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            body
        }
        (PassBody::Whole(bytes), None) => match &rewrite {
            Some(to) => match with_model(&bytes, to) {
                Ok(bytes) => PassBody::Whole(bytes),
                Err(e) => return e.into_response(),
            },
            None => PassBody::Whole(bytes),
        },
        (other, None) => other,
    };
    let routed = rewrite.or(model).unwrap_or_else(|| "-".to_string());
    // The input estimate: a JSON body's bytes; a streamed upload's declared length.
    let (input_bytes, json_body): (usize, &[u8]) = match &pass_body {
        PassBody::Whole(bytes) => (bytes.len(), bytes),
        _ => (declared_length.unwrap_or(0) as usize, &[]),
    };
    let (slot, info, stats) =
        match dispatch::admit(&gw, &live, &origin, &routed, input_bytes, json_body).await {
            Ok(admitted) => admitted,
            Err(e) => return e.into_response(),
        };
    let call = PassCall {
        method: parts.method,
        path_and_query: rest,
        headers,
        body: pass_body,
        stats,
    };
    let mut response = match live.router.passthrough(&routed, candidates, call).await {
        Ok(passed) => {
            let (parts, body) = passed.response.into_parts();
            let body = body.into_data_stream().map(move |chunk| {
                let _slot = &slot;
                chunk
            });
            Response::from_parts(parts, Body::from_stream(body))
        }
        Err(e) => upload.error(&gw, e).into_response(),
    };
    attach(&mut response, info);
    response
}

/// The boundary of a `multipart/form-data` body.
fn multipart_boundary(content_type: &str, headers: &HeaderMap) -> Option<String> {
    if !content_type.starts_with("multipart/form-data") {
        return None;
    }
    // The boundary is case-sensitive: read it from the header as sent.
    let original = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    original.split(';').find_map(|param| {
        let (name, value) = param.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

/// What the start of a multipart body says about its `model` field.
#[derive(Debug, PartialEq)]
enum Peek {
    /// The field's value is at this range of what was read.
    Found(std::ops::Range<usize>),
    /// Read more to know.
    NeedMore,
    /// No `model` before the first file part, or in the whole form.
    Absent,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Looks for the `model` field in the start of a multipart body.
fn find_model(buf: &[u8], boundary: &str) -> Peek {
    let delimiter = format!("--{boundary}");
    let Some(mut at) = find(buf, delimiter.as_bytes(), 0) else {
        return Peek::NeedMore;
    };
    let next = format!("\r\n--{boundary}");
    loop {
        let after = at + delimiter.len();
        if buf.len() < after + 2 {
            return Peek::NeedMore;
        }
        if &buf[after..after + 2] == b"--" {
            return Peek::Absent;
        }
        let Some(headers_end) = find(buf, b"\r\n\r\n", after) else {
            return Peek::NeedMore;
        };
        let headers = buf[after..headers_end].to_ascii_lowercase();
        if find(&headers, b"filename=", 0).is_some() {
            return Peek::Absent;
        }
        let value = headers_end + 4;
        let Some(end) = find(buf, next.as_bytes(), value) else {
            return Peek::NeedMore;
        };
        if find(&headers, b"name=\"model\"", 0).is_some() {
            return Peek::Found(value..end);
        }
        at = end + 2;
    }
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Reads the start of a multipart body until its `model` field is found, a
/// file part begins, [`MULTIPART_PEEK`] bytes were read, or the body ends.
async fn peek_model(
    stream: &mut (impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin),
    boundary: &str,
) -> Result<(Bytes, Option<std::ops::Range<usize>>), ApiError> {
    let mut read = Vec::new();
    loop {
        match find_model(&read, boundary) {
            Peek::Found(range) => return Ok((Bytes::from(read), Some(range))),
            Peek::Absent => return Ok((Bytes::from(read), None)),
            Peek::NeedMore if read.len() >= MULTIPART_PEEK => {
                return Ok((Bytes::from(read), None));
            }
            Peek::NeedMore => {}
        }
        match stream.next().await {
            Some(Ok(chunk)) => read.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )));
            }
            None => return Ok((Bytes::from(read), None)),
        }
    }
}

/// A multipart body whose start was read ahead.
struct Multipart {
    prefix: Bytes,
    model_at: Option<std::ops::Range<usize>>,
    rest: ByteStream,
}

impl Multipart {
    /// The whole body again, streamed, with the `model` value replaced by
    /// `rewrite`; and its length when the client declared one.
    fn into_body(self, rewrite: Option<&str>, declared: Option<u64>) -> (PassBody, Option<u64>) {
        let (prefix, length) = match (rewrite, self.model_at) {
            (Some(to), Some(range)) => {
                let mut changed = Vec::with_capacity(self.prefix.len() + to.len());
                changed.extend_from_slice(&self.prefix[..range.start]);
                changed.extend_from_slice(to.as_bytes());
                changed.extend_from_slice(&self.prefix[range.end..]);
                let length =
                    declared.map(|l| l + to.len() as u64 - (range.end - range.start) as u64);
                (Bytes::from(changed), length)
            }
            _ => (self.prefix, declared),
        };
        let body = futures_util::stream::once(async move { Ok(prefix) }).chain(self.rest);
        (PassBody::streamed(reqwest::Body::wrap_stream(body)), length)
    }
}

/// Counts a streamed upload against `server.max_body_bytes`, gives its bytes
/// back to `server.max_body_memory` as they are handed on, and remembers why it
/// stopped, so the client gets 413, 503 or 408 rather than the provider's error.
#[derive(Clone)]
struct Upload {
    max: u64,
    seen: Arc<AtomicU64>,
    too_large: Arc<AtomicBool>,
    timed_out: Arc<AtomicBool>,
    /// `server.max_body_memory` had no room for it in time: why, for the 503.
    memory_full: Arc<std::sync::OnceLock<String>>,
    /// The request's share of `server.max_body_memory`: a chunk handed on to
    /// the provider is no longer held, so its bytes go back at once.
    lease: Option<Arc<super::body_budget::Lease>>,
}

impl Upload {
    fn new(max: usize, lease: Option<Arc<super::body_budget::Lease>>) -> Upload {
        Upload {
            max: max as u64,
            seen: Arc::new(AtomicU64::new(0)),
            too_large: Arc::new(AtomicBool::new(false)),
            timed_out: Arc::new(AtomicBool::new(false)),
            memory_full: Arc::new(std::sync::OnceLock::new()),
            lease,
        }
    }

    /// The body's chunks, ending with an error past `max` bytes.
    fn count(
        &self,
        body: axum::body::BodyDataStream,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin + 'static {
        let upload = self.clone();
        body.map(move |chunk| match chunk {
            Ok(chunk) => {
                let seen = upload.seen.fetch_add(chunk.len() as u64, Ordering::Relaxed)
                    + chunk.len() as u64;
                if seen > upload.max {
                    upload.too_large.store(true, Ordering::Relaxed);
                    return Err(std::io::Error::other(format!(
                        "request body is larger than server.max_body_bytes ({} bytes)",
                        upload.max
                    )));
                }
                // Handed on (at most a chunk or two wait in the client's
                // buffers): no longer held, so no longer counted.
                if let Some(lease) = &upload.lease {
                    lease.give_back(chunk.len());
                }
                Ok(chunk)
            }
            Err(e) => {
                if let Some(full) = super::body_budget::BodyMemoryFull::caused(&e) {
                    let _ = upload.memory_full.set(full.to_string());
                } else if super::connections::BodyTimedOut::caused(&e).is_some() {
                    upload.timed_out.store(true, Ordering::Relaxed);
                }
                Err(std::io::Error::other(e))
            }
        })
    }

    /// The client's error when the upload is why it failed: 413 (counted as a
    /// refused body), 503 (no room in `server.max_body_memory`) or 408.
    fn error(&self, gw: &Gateway, e: ApiError) -> ApiError {
        if self.too_large.load(Ordering::Relaxed) {
            gw.metrics.rejected(Rejection::BodyTooLarge);
            ApiError::payload_too_large(self.max as usize)
        } else if let Some(full) = self.memory_full.get() {
            gw.metrics.rejected(Rejection::BodyMemory);
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                full.clone(),
            )
            .code("body_memory_full")
            .retry_after(1)
        } else if self.timed_out.load(Ordering::Relaxed) {
            ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body did not arrive within server.body_timeout",
            )
            .code("request_timeout")
        } else {
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\nID3...\r\n--XyZ--\r\n";

    #[test]
    fn the_model_field_is_found_before_the_file() {
        let Peek::Found(range) = find_model(FORM, "XyZ") else {
            panic!("found")
        };
        assert_eq!(&FORM[range], b"whisper-1");
        // Cut anywhere before the value's end: more is needed.
        for cut in 0..60 {
            assert_eq!(find_model(&FORM[..cut], "XyZ"), Peek::NeedMore, "{cut}");
        }
    }

    #[test]
    fn a_file_first_or_no_model_is_absent() {
        let file_first =
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n....";
        assert_eq!(find_model(file_first, "b"), Peek::Absent);
        let no_model =
            b"--b\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--b--\r\n";
        assert_eq!(find_model(no_model, "b"), Peek::Absent);
        // `model_x` is another field.
        let other =
            b"--b\r\nContent-Disposition: form-data; name=\"model_x\"\r\n\r\nm\r\n--b--\r\n";
        assert_eq!(find_model(other, "b"), Peek::Absent);
    }

    #[test]
    fn the_boundary_is_read_as_sent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=\"AbC\""),
        );
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=\"abc\"", &headers).as_deref(),
            Some("AbC")
        );
        assert_eq!(multipart_boundary("application/json", &headers), None);
    }
}
