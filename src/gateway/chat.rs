//! `POST /v1/chat/completions` and `GET /v1/models` over HTTP: the request goes
//! through [`dispatch`] (shared with the NATS ingress); this file only turns its
//! outcome into an HTTP response (JSON, or SSE that owns the slot).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::admission::Slot;
use super::observe::ExchangeInfo;
use super::{Gateway, dispatch};
use crate::api::metrics::Rejection;
use crate::api::openai::ApiError;
use crate::keys::Caller;
use crate::telemetry::SpanParent;
use crate::upstream::Reply;
use crate::upstream::forward::client_headers;

pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    caller: Option<Extension<Caller>>,
    trace: Option<Extension<SpanParent>>,
    TakenHeaders(headers): TakenHeaders,
    ClientBody(body): ClientBody,
) -> Response {
    let origin = dispatch::Origin::http(caller.map(|c| c.0), "/v1/chat/completions", &headers)
        .traced(trace.map(|Extension(t)| t));
    let dispatched =
        dispatch::chat_with_headers(&gw, body, client_headers(&headers), &origin).await;
    respond_dispatched(dispatched)
}

/// `POST /v1/embeddings`: routed by model like chat, answered as the provider
/// answered (one JSON body).
pub async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    caller: Option<Extension<Caller>>,
    trace: Option<Extension<SpanParent>>,
    TakenHeaders(headers): TakenHeaders,
    ClientBody(body): ClientBody,
) -> Response {
    let origin = dispatch::Origin::http(caller.map(|c| c.0), "/v1/embeddings", &headers)
        .traced(trace.map(|Extension(t)| t));
    let dispatched = dispatch::embeddings(&gw, body, client_headers(&headers), &origin).await;
    respond_dispatched(dispatched)
}

/// `POST /v1/completions` (legacy text completions), streaming included.
pub async fn completions(
    State(gw): State<Arc<Gateway>>,
    caller: Option<Extension<Caller>>,
    trace: Option<Extension<SpanParent>>,
    TakenHeaders(headers): TakenHeaders,
    ClientBody(body): ClientBody,
) -> Response {
    let origin = dispatch::Origin::http(caller.map(|c| c.0), "/v1/completions", &headers)
        .traced(trace.map(|Extension(t)| t));
    let dispatched = dispatch::completions(&gw, body, client_headers(&headers), &origin).await;
    respond_dispatched(dispatched)
}

/// The HTTP response for what [`dispatch`] made of a request.
pub(super) fn respond_dispatched(dispatched: dispatch::Dispatched) -> Response {
    let mut response = match dispatched.outcome {
        Ok((reply, slot)) => respond_reply(reply, slot),
        Err(e) => e.into_response(),
    };
    if let Some(info) = dispatched.info {
        attach(&mut response, info);
    }
    response
}

/// Names the provider that answered, on every proxied answer.
pub const PROVIDER_HEADER: &str = "x-warden-provider";

/// Adds `x-warden-provider` (and a key's `x-ratelimit-*`) and hands the
/// exchange to the observing layer.
pub(super) fn attach(response: &mut Response, info: ExchangeInfo) {
    if let Some(provider) = info.stats.provider.get() {
        response
            .headers_mut()
            .insert(PROVIDER_HEADER, provider.header.clone());
    }
    let rounds = info
        .stats
        .tool_rounds
        .load(std::sync::atomic::Ordering::Relaxed);
    if rounds > 0 {
        response
            .headers_mut()
            .insert(crate::tools::ROUNDS_HEADER, HeaderValue::from(rounds));
    }
    if info
        .stats
        .tool_limit_reached
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        response.headers_mut().insert(
            crate::tools::LIMIT_HEADER,
            HeaderValue::from_static("reached"),
        );
    }
    if let Some(rate) = info.rate_headers() {
        rate_limit_headers(response.headers_mut(), &rate);
    }
    response.extensions_mut().insert(info);
}

/// OpenAI's `x-ratelimit-*` headers, for the limits the key has.
fn rate_limit_headers(headers: &mut HeaderMap, rate: &crate::keys::limits::RateHeaders) {
    each_rate_header(rate, |name, value| {
        headers.insert(name, value);
    });
}

/// The names of OpenAI's rate headers: limit, remaining and reset, for
/// requests and for tokens (built once: a metered answer carries up to six).
static RATE_NAMES: [[axum::http::HeaderName; 3]; 2] = [
    [
        axum::http::HeaderName::from_static("x-ratelimit-limit-requests"),
        axum::http::HeaderName::from_static("x-ratelimit-remaining-requests"),
        axum::http::HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        axum::http::HeaderName::from_static("x-ratelimit-limit-tokens"),
        axum::http::HeaderName::from_static("x-ratelimit-remaining-tokens"),
        axum::http::HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// The `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers for
/// the limits a key has (none for a limit it has not).
pub(super) fn rate_limit_pairs(
    rate: &crate::keys::limits::RateHeaders,
) -> Vec<(axum::http::HeaderName, HeaderValue)> {
    let mut pairs = Vec::with_capacity(6);
    each_rate_header(rate, |name, value| pairs.push((name, value)));
    pairs
}

/// Calls `f` with each of [`rate_limit_pairs`], in order. The values (up to
/// six) are written into one buffer on the stack, moved into a single
/// allocation that each value shares: one allocation a request instead of one
/// per value.
fn each_rate_header(
    rate: &crate::keys::limits::RateHeaders,
    mut f: impl FnMut(axum::http::HeaderName, HeaderValue),
) {
    let mut text = RateText::default();
    // Where each value ends in `text`, per family (requests, tokens).
    let mut ends = [[0usize; 3]; 2];
    let families = [rate.requests, rate.tokens];
    for (family, figures) in families.iter().enumerate() {
        let Some((limit, remaining, reset_ms)) = *figures else {
            continue;
        };
        text.push_number(limit);
        ends[family][0] = text.len;
        text.push_number(remaining);
        ends[family][1] = text.len;
        text.push_reset(reset_ms);
        ends[family][2] = text.len;
    }
    if text.len == 0 {
        return;
    }
    let shared = Bytes::from_owner(text);
    let mut at = 0;
    for ((names, figures), ends) in RATE_NAMES.iter().zip(families).zip(ends) {
        if figures.is_none() {
            continue;
        }
        for (name, end) in names.iter().zip(ends) {
            let value = HeaderValue::from_maybe_shared(shared.slice(at..end))
                .unwrap_or_else(|_| HeaderValue::from_static("0"));
            f(name.clone(), value);
            at = end;
        }
    }
}

/// "00" to "99", one after the other.
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        pairs[i * 2] = b'0' + (i / 10) as u8;
        pairs[i * 2 + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// The text of a request's rate headers, digits written by hand (no `fmt`):
/// six values of at most 22 bytes.
struct RateText {
    buf: [u8; 6 * 22],
    len: usize,
}

impl Default for RateText {
    fn default() -> RateText {
        RateText {
            buf: [0; 6 * 22],
            len: 0,
        }
    }
}

impl AsRef<[u8]> for RateText {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl RateText {
    /// Appends `n` in decimal, two digits at a time.
    fn push_number(&mut self, n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = n;
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            at -= 2;
            digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
        }
        if n >= 10 {
            let pair = n as usize * 2;
            at -= 2;
            digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
        } else {
            at -= 1;
            digits[at] = b'0' + n as u8;
        }
        self.push(&digits[at..]);
    }

    /// Appends `reset_ms` as OpenAI writes a reset: seconds with the
    /// fraction it needs ("60s", "0.25s").
    fn push_reset(&mut self, reset_ms: crate::keys::limits::Millis) {
        self.push_number(reset_ms / 1000);
        let millis = reset_ms % 1000;
        if millis != 0 {
            let digits = [
                b'.',
                b'0' + (millis / 100) as u8,
                b'0' + (millis / 10 % 10) as u8,
                b'0' + (millis % 10) as u8,
            ];
            let kept = digits.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
            self.push(&digits[..kept]);
        }
        self.push(b"s");
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// `reset_ms` as a header value on its own (what [`each_rate_header`] writes).
#[cfg(test)]
fn reset_value(reset_ms: crate::keys::limits::Millis) -> HeaderValue {
    let mut text = RateText::default();
    text.push_reset(reset_ms);
    HeaderValue::from_bytes(text.as_ref()).unwrap()
}

/// The headers a proxied answer has room for from the start.
const RESPONSE_HEADERS: usize = 12;

/// The HTTP response for an upstream's reply. A stream's body owns the slot:
/// it is released when the stream ends or the client disconnects (dropping the
/// body cancels the upstream call).
pub(super) fn respond(reply: Result<Reply, ApiError>, slot: Slot, info: ExchangeInfo) -> Response {
    let mut response = match reply {
        Ok(reply) => respond_reply(reply, slot),
        Err(e) => e.into_response(),
    };
    attach(&mut response, info);
    response
}

fn respond_reply(reply: Reply, slot: Slot) -> Response {
    match reply {
        Reply::Complete(json) => {
            drop(slot);
            let mut response = Response::new(Body::from(json));
            // Room for what `attach` and the layers add (a key's six rate
            // headers among them) without growing the map.
            let headers = response.headers_mut();
            headers.reserve(RESPONSE_HEADERS);
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Reply::Stream(frames) => {
            let frames = frames.map(move |frame| {
                let _slot = &slot;
                Ok::<_, Infallible>(frame)
            });
            sse_response(Body::from_stream(frames))
        }
    }
}

/// An SSE response: the event-stream type, and no caching or proxy buffering on
/// the way to the client.
pub(super) fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The request's headers, moved out of the request instead of copied (as
/// axum's `HeaderMap` extractor does): for a handler that reads its body
/// next, so nothing after it needs them on the request.
pub struct TakenHeaders(pub HeaderMap);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TakenHeaders {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Infallible> {
        Ok(TakenHeaders(std::mem::take(&mut parts.headers)))
    }
}

/// A request body, read within `server.max_body_bytes` and `server.body_timeout`.
/// Refused (counted, and answered 413, 408 or 400 in OpenAI's shape) otherwise;
/// a handler that answers in another shape takes `Result<ClientBody, ApiError>`.
pub struct ClientBody(pub Bytes);

impl FromRequest<Arc<Gateway>> for ClientBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, gw: &Arc<Gateway>) -> Result<Self, ApiError> {
        Bytes::from_request(request, gw)
            .await
            .map(ClientBody)
            .map_err(|rejection| body_rejection(gw, rejection))
    }
}

impl ClientBody {
    /// Reads a body taken from a request by hand, with the same limits and
    /// errors as the extractor.
    pub async fn read(gw: &Gateway, body: Body) -> Result<Bytes, ApiError> {
        let max = gw.config.server.max_body_bytes;
        axum::body::to_bytes(body, max).await.map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(cause) = source {
                if cause.is::<http_body_util::LengthLimitError>() {
                    gw.metrics.rejected(Rejection::BodyTooLarge);
                    return ApiError::payload_too_large(max);
                }
                source = cause.source();
            }
            if let Some(full) = super::body_budget::BodyMemoryFull::caused(&e) {
                gw.metrics.rejected(Rejection::BodyMemory);
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    full.to_string(),
                )
                .code("body_memory_full")
                .retry_after(1);
            }
            if let Some(secs) = super::connections::BodyTimedOut::caused(&e) {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    format!(
                        "the request body did not arrive within server.body_timeout ({secs} s)"
                    ),
                )
                .code("request_timeout");
            }
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        })
    }
}

fn body_rejection(gw: &Gateway, rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        gw.metrics.rejected(Rejection::BodyTooLarge);
        ApiError::payload_too_large(gw.config.server.max_body_bytes)
    } else if let Some(full) = super::body_budget::BodyMemoryFull::caused(&rejection) {
        gw.metrics.rejected(Rejection::BodyMemory);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            full.to_string(),
        )
        .code("body_memory_full")
        .retry_after(1)
    } else if let Some(secs) = super::connections::BodyTimedOut::caused(&rejection) {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("the request body did not arrive within server.body_timeout ({secs} s)"),
        )
        .code("request_timeout")
    } else {
        ApiError::bad_request(format!("cannot read the request body: {rejection}"))
    }
}

/// `GET /v1/models/{id}`: one entry of the `/v1/models` list.
pub async fn model(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let list = dispatch::models(&gw).await;
    match dispatch::model_in(&list, &id) {
        Ok(model) => axum::Json(model).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn models(State(gw): State<Arc<Gateway>>) -> Response {
    let json = dispatch::models(&gw).await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_reads_as_seconds_with_the_fraction_it_needs() {
        for ms in [
            0, 1, 10, 100, 250, 999, 1000, 1500, 59_999, 60_000, 86_400_123,
        ] {
            assert_eq!(
                reset_value(ms).to_str().unwrap(),
                format!("{}s", ms as f64 / 1000.0),
                "{ms} ms"
            );
        }
        assert_eq!(
            reset_value(u64::MAX / 1000 * 1000 + 5).to_str().unwrap(),
            "18446744073709551.005s"
        );
    }

    #[test]
    fn both_families_of_rate_headers_share_one_buffer_in_order() {
        let rate = crate::keys::limits::RateHeaders {
            requests: Some((u64::MAX, 0, u64::MAX)),
            tokens: Some((1_000_000, 999_999, 1_250)),
        };
        let pairs = pairs_of(&rate);
        assert_eq!(
            pairs,
            [
                ("x-ratelimit-limit-requests", "18446744073709551615"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "18446744073709551.615s"),
                ("x-ratelimit-limit-tokens", "1000000"),
                ("x-ratelimit-remaining-tokens", "999999"),
                ("x-ratelimit-reset-tokens", "1.25s"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        let none = crate::keys::limits::RateHeaders::default();
        assert!(rate_limit_pairs(&none).is_empty());
    }

    /// The rate headers of `rate` as text, in order.
    fn pairs_of(rate: &crate::keys::limits::RateHeaders) -> Vec<(String, String)> {
        rate_limit_pairs(rate)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn rate_headers_name_only_the_limits_a_key_has() {
        let rate = crate::keys::limits::RateHeaders {
            requests: Some((60, 59, 1000)),
            tokens: None,
        };
        let pairs = pairs_of(&rate);
        assert_eq!(
            pairs,
            [
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "59"),
                ("x-ratelimit-reset-requests", "1s"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }
}
