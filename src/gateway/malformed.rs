//! The HTTP layer's own answers to a request head it cannot accept, before any
//! handler sees a request: 400 (malformed request line or header), 414 (URI
//! too long) and 431 (head larger than [`super::MAX_HEAD_BYTES`], or more than
//! 100 headers). hyper answers these with an empty body; the gateway's server
//! connection ([`super::http1`]) sends the same status line and headers
//! (`connection: close`, `date`) with an OpenAI-shaped JSON error body
//! (docs/contract.md §10: every error names what failed), then closes the
//! connection.

use axum::http::StatusCode;
use bytes::Bytes;

use crate::api::openai::ApiError;

/// The answer to a request head refused with `status` (400, 414 or 431);
/// the connection closes after it.
pub fn automatic(status: StatusCode, max_head_bytes: usize) -> Bytes {
    let date = format!(
        "date: {}",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    let status_line = format!(
        "HTTP/1.1 {} {}",
        status.as_str(),
        status.canonical_reason().unwrap_or("<none>")
    );
    answer(
        status,
        &status_line,
        &["connection: close", &date],
        max_head_bytes,
    )
}

/// `status_line`, `headers` and the JSON error body for `status`.
fn answer(status: StatusCode, status_line: &str, headers: &[&str], max_head_bytes: usize) -> Bytes {
    let error = match status {
        StatusCode::URI_TOO_LONG => ApiError::new(
            status,
            "invalid_request_error",
            "the request URI is longer than the gateway accepts; send parameters in the body",
        )
        .code("uri_too_long"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::new(
            status,
            "invalid_request_error",
            format!(
                "the request head (request line and headers) is larger than {max_head_bytes} bytes; send fewer or shorter headers"
            ),
        )
        .code("request_header_fields_too_large"),
        _ => ApiError::new(
            status,
            "invalid_request_error",
            "the request is not valid HTTP/1.1 (malformed request line or header); the connection is closed",
        )
        .code("malformed_request"),
    };
    let body = error.body().to_string();
    let mut out = String::with_capacity(256 + body.len());
    out.push_str(status_line);
    out.push_str("\r\ncontent-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n", body.len()));
    for line in headers {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_have_a_json_body() {
        for (status, code) in [
            (StatusCode::BAD_REQUEST, "malformed_request"),
            (StatusCode::URI_TOO_LONG, "uri_too_long"),
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_header_fields_too_large",
            ),
        ] {
            let out = automatic(status, 65536);
            let text = std::str::from_utf8(&out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {} ", status.as_str())),
                "{head}"
            );
            assert!(head.contains("\r\nconnection: close"));
            assert!(head.contains("\r\ndate: "));
            assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"]["code"], code);
        }
        let out = automatic(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, 65536);
        assert!(std::str::from_utf8(&out).unwrap().contains("65536"));
    }
}
