//! hyper answers a request head it cannot accept on its own, before any
//! service sees a request: 400 (malformed request line or header), 414 (URI
//! too long) and 431 (head larger than the read buffer), each with an empty
//! body, then it closes the connection. hyper has no hook for that answer, so
//! [`super::connections::WatchedIo`] recognises it on its way to the socket and
//! sends this module's rewrite instead: the same status line and headers, plus
//! an OpenAI-shaped JSON error body (docs/contract.md §10: every error names what failed).
//!
//! The first request head of a connection is read by the gateway itself
//! (`connections::serve`), so its 431 is [`head_too_large`], built here too.
//!
//! Recognised only when it cannot be one of the gateway's own answers: no
//! request is in progress on the connection, the status is 400/414/431 and the
//! head declares `content-length: 0` (every answer of the gateway's own has a
//! JSON body).

use axum::http::StatusCode;
use bytes::Bytes;

use crate::api::openai::ApiError;

/// The rewrite of hyper's automatic answer `head`, with its status; `None`
/// when `head` is anything else.
pub fn rewrite(head: &[u8], max_head_bytes: usize) -> Option<(StatusCode, Bytes)> {
    let status = match head.strip_prefix(b"HTTP/1.1 ")?.get(..4)? {
        b"400 " => StatusCode::BAD_REQUEST,
        b"414 " => StatusCode::URI_TOO_LONG,
        b"431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let text = std::str::from_utf8(head.strip_suffix(b"\r\n\r\n")?).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut others = Vec::new();
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty_body = value.trim() == "0";
        } else {
            others.push(line);
        }
    }
    if !empty_body {
        return None;
    }
    Some((status, answer(status, status_line, &others, max_head_bytes)))
}

/// The 431 answer to a first request head longer than `max_head_bytes`, which
/// the gateway gives itself before hyper reads anything (the connection closes).
pub fn head_too_large(max_head_bytes: usize) -> Bytes {
    let date = format!(
        "date: {}",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    answer(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "HTTP/1.1 431 Request Header Fields Too Large",
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
    fn hypers_empty_answers_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 13:00:00 GMT\r\n\r\n";
        let (status, out) = rewrite(head, 65536).expect("recognised");
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let text = std::str::from_utf8(&out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "request_header_fields_too_large");
        assert!(json["error"]["message"].as_str().unwrap().contains("65536"));
    }

    #[test]
    fn anything_else_is_left_alone() {
        for head in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 57\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"data: x\n\n",
            b"",
        ] {
            assert!(rewrite(head, 1).is_none(), "{:?}", String::from_utf8_lossy(head));
        }
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", 1).is_some());
    }
}
