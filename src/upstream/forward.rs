//! Which client request headers go upstream, and the request id.
//!
//! An allow-list, never a deny-list: a header reaches the upstream only when it
//! is named here. `Authorization`, `Cookie`, `Proxy-Authorization`, hop-by-hop
//! headers (`Connection`, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`,
//! `Upgrade`), `Host`, `Content-Length` and `Accept-Encoding` never are: the
//! gateway sends its own. The list is what OpenAI clients use to tie requests
//! together (Codex CLI's session and turn metadata, the SDKs' beta opt-ins):
//!
//! - exact names: [`FORWARDED`];
//! - any name starting with [`FORWARDED_PREFIXES`] (`x-codex-`).
//!
//! Bounded: at most [`MAX_FORWARDED`] headers, each value at most
//! [`MAX_VALUE_BYTES`] bytes (longer ones are dropped, not cut).

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// Client headers forwarded upstream as they are (lower case, as HTTP/2 and
/// `http::HeaderName` spell them).
pub const FORWARDED: [&str; 13] = [
    "x-request-id",
    "x-client-request-id",
    "session_id",
    "session-id",
    "thread_id",
    "thread-id",
    "conversation_id",
    "conversation-id",
    "originator",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "idempotency-key",
];

/// Name prefixes forwarded: Codex CLI's `x-codex-*` metadata.
pub const FORWARDED_PREFIXES: [&str; 1] = ["x-codex-"];

/// At most this many client headers are forwarded.
pub const MAX_FORWARDED: usize = 32;

/// A longer client header value is not forwarded.
pub const MAX_VALUE_BYTES: usize = 8192;

/// The request id header: kept from the client when it sent a usable one, else
/// generated; on every answer and forwarded upstream.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent `x-request-id` kept as it is.
pub const MAX_REQUEST_ID_BYTES: usize = 200;

/// Whether a client header of this name goes upstream.
pub fn is_forwarded(name: &HeaderName) -> bool {
    let name = name.as_str();
    FORWARDED.contains(&name) || FORWARDED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The client's headers that go upstream (see the module documentation).
pub fn client_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        if out.len() >= MAX_FORWARDED {
            break;
        }
        if value.len() <= MAX_VALUE_BYTES && is_forwarded(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Makes sure `headers` carries one usable `x-request-id` and returns it: the
/// client's own when it is 1–200 visible ASCII characters, else a new
/// `req_<32 hex digits>`.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(&REQUEST_ID) {
        let usable = !value.is_empty()
            && value.len() <= MAX_REQUEST_ID_BYTES
            && value.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if usable {
            return value.clone();
        }
    }
    // `req_` and 32 lower-case hex digits, written by hand (no formatter).
    let mut id = *b"req_00000000000000000000000000000000";
    let mut n = fastrand::u128(..);
    for digit in id[4..].iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
    let value = HeaderValue::from_bytes(&id).expect("hex digits are a valid header value");
    headers.insert(REQUEST_ID, value.clone());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allow_list_goes_upstream() {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer secret"),
            ("cookie", "a=b"),
            ("proxy-authorization", "x"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("host", "h"),
            ("accept-encoding", "zstd"),
            ("x-api-key", "k"),
            ("session-id", "s1"),
            ("session_id", "s2"),
            ("originator", "codex_exec"),
            ("x-codex-turn-metadata", "{}"),
            ("x-client-request-id", "c1"),
            ("openai-beta", "responses=experimental"),
        ] {
            incoming.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        incoming.append(
            "x-codex-big",
            HeaderValue::from_str(&"x".repeat(MAX_VALUE_BYTES + 1)).unwrap(),
        );
        let out = client_headers(&incoming);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "openai-beta",
                "originator",
                "session-id",
                "session_id",
                "x-client-request-id",
                "x-codex-turn-metadata"
            ]
        );
    }

    #[test]
    fn at_most_max_forwarded_headers() {
        let mut incoming = HeaderMap::new();
        for i in 0..MAX_FORWARDED + 10 {
            incoming.append(
                HeaderName::from_bytes(format!("x-codex-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert_eq!(client_headers(&incoming).len(), MAX_FORWARDED);
    }

    #[test]
    fn request_id_is_kept_when_usable_else_generated() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(ensure_request_id(&mut headers), "abc-123");

        for bad in ["", "has space", &"x".repeat(MAX_REQUEST_ID_BYTES + 1)] {
            let mut headers = HeaderMap::new();
            headers.insert(REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = ensure_request_id(&mut headers);
            let id = id.to_str().unwrap();
            assert!(id.starts_with("req_") && id.len() == 36, "{bad:?}");
            assert!(
                id[4..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{id}"
            );
            assert_eq!(headers[REQUEST_ID], id);
        }
        let mut headers = HeaderMap::new();
        let a = ensure_request_id(&mut headers);
        let b = ensure_request_id(&mut HeaderMap::new());
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
    }
}
