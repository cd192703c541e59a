//! Pass-through (docs/contract.md §16): every `/v1/` path the gateway does not serve itself
//! (audio, images, files, batches, moderations, uploads, …) goes to a provider
//! with `passthrough = true`, as `{url}/X?Q`, with the provider's key in place
//! of the client's.
//!
//! Nothing is held whole: the request body is streamed to the provider as it
//! arrives (the gateway counts it against `server.max_body_bytes`), and the
//! answer is streamed back as it arrives, with the provider's idle timeout
//! between chunks and `upstream.timeout` for the whole exchange (a download has
//! no size limit; its time is bounded). A body the gateway did read whole (a
//! JSON body naming a model) can be sent again, so such a request fails over
//! like any other; a streamed one gets one attempt.
//!
//! The answer's status and headers pass as they are, except the hop-by-hop
//! ones ([`HOP_BY_HOP`]); a redirect or a status outside 100–599 is a 502 as on
//! every route.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Method, Response};
use bytes::Bytes;
use futures_util::StreamExt;

use super::ExchangeStats;
use super::router::Answer;

/// Headers that describe one connection, not the message: never relayed
/// (RFC 9110 §7.6.1), nor any header the `Connection` header names.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The request body of a pass-through call.
#[derive(Clone)]
pub enum PassBody {
    /// No body (a `GET`, a `DELETE`).
    Empty,
    /// Read whole (a JSON body, at most `server.max_body_bytes`): can be sent
    /// again on failover.
    Whole(Bytes),
    /// Streamed from the client as it arrives: one attempt takes it.
    Streamed(Arc<Mutex<Option<reqwest::Body>>>),
}

impl PassBody {
    /// A streamed body, to be taken by the one attempt that sends it.
    pub fn streamed(body: reqwest::Body) -> PassBody {
        PassBody::Streamed(Arc::new(Mutex::new(Some(body))))
    }

    /// Whether the body can be sent more than once.
    pub fn repeatable(&self) -> bool {
        !matches!(self, PassBody::Streamed(_))
    }

    /// The body for one attempt; `None` when a streamed body was already taken.
    pub(super) fn take(&self) -> Option<Option<reqwest::Body>> {
        match self {
            PassBody::Empty => Some(None),
            PassBody::Whole(bytes) => Some(Some(reqwest::Body::from(bytes.clone()))),
            PassBody::Streamed(body) => body
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .map(Some),
        }
    }
}

/// One pass-through request as the gateway hands it to the router.
#[derive(Clone)]
pub struct PassCall {
    pub method: Method,
    /// What follows `/v1` in the client's request: `/audio/transcriptions?x=1`.
    pub path_and_query: String,
    /// What goes upstream of the client's headers: the allow-list of
    /// [`super::forward`], and the body's `content-type` and `content-length`,
    /// and `accept`.
    pub headers: HeaderMap,
    pub body: PassBody,
    pub stats: Arc<ExchangeStats>,
}

/// A provider's answer, streamed back as it arrives.
pub struct Passed {
    pub response: Response<Body>,
}

impl Answer for Passed {
    fn hold(self, in_flight: super::provider::InFlight) -> Passed {
        let (parts, body) = self.response.into_parts();
        let body = body.into_data_stream().map(move |chunk| {
            let _held = &in_flight;
            chunk
        });
        Passed {
            response: Response::from_parts(parts, Body::from_stream(body)),
        }
    }
}

/// The answer's headers without the hop-by-hop ones.
pub fn relayed_headers(headers: &reqwest::header::HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = headers
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) || named_by_connection.iter().any(|n| n == lower) {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(name.as_str().as_bytes()) {
            out.append(name, value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_not_relayed() {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in [
            ("content-type", "audio/mpeg"),
            ("content-length", "5"),
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-private", "1"),
            ("openai-processing-ms", "12"),
        ] {
            headers.append(
                reqwest::header::HeaderName::from_static(name),
                reqwest::header::HeaderValue::from_static(value),
            );
        }
        let out = relayed_headers(&headers);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-length", "content-type", "openai-processing-ms"]
        );
    }

    #[test]
    fn a_streamed_body_is_taken_once_a_whole_one_every_time() {
        let whole = PassBody::Whole(Bytes::from_static(b"{}"));
        assert!(whole.take().is_some() && whole.take().is_some());
        let streamed = PassBody::streamed(reqwest::Body::from("x"));
        assert!(!streamed.repeatable());
        assert!(streamed.take().is_some());
        assert!(streamed.take().is_none());
    }
}
