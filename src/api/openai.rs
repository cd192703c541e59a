//! OpenAI wire shapes the gateway needs to understand: the error object and the
//! few request fields it must read.
//!
//! The gateway deliberately does *not* model whole requests: unknown fields and
//! tool calls must pass through untouched, so it reads what it needs from the
//! request and forwards the original bytes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            code: None,
            param: None,
            retry_after: None,
        }
    }
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or wrong bearer token: send 'Authorization: Bearer <token>' with the token the gateway was given",
        )
        .code("invalid_api_key")
    }
    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than server.max_body_bytes ({limit} bytes)"),
        )
        .code("request_too_large")
    }
    pub fn overloaded(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the gateway is at its limit of {limit} concurrent upstream calls; retry shortly"
            ),
        )
        .code("concurrency_limit")
        .retry_after(1)
    }
    pub fn bad_gateway(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
            .code("upstream_unavailable")
    }
    pub fn gateway_timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, "upstream_error", message)
            .code("upstream_timeout")
    }

    /// The JSON body, for responses and for SSE error frames.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// A Server-Sent Events frame carrying this error, for failures after a stream began.
    pub fn sse_frame(&self) -> String {
        format!("data: {}\n\n", self.body())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The fields of a Chat Completions request that the gateway reads. Everything
/// else stays in the original bytes, which are forwarded unchanged.
#[derive(Deserialize)]
pub struct ChatRequestView<'a> {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(borrow)]
    pub messages: &'a RawValue,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Deserialize, Default, Clone, Copy)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

impl ChatRequestView<'_> {
    /// Parses and validates a request body: 400 on malformed JSON or a missing or
    /// non-array `messages`.
    pub fn parse(body: &[u8]) -> Result<ChatRequestView<'_>, ApiError> {
        let view: ChatRequestView = serde_json::from_slice(body).map_err(|e| {
            let err = if e.to_string().contains("missing field `messages`") {
                ApiError::bad_request("'messages' is a required property").param("messages")
            } else {
                ApiError::bad_request(format!(
                    "request body is not valid JSON for a chat completion: {e}"
                ))
            };
            err.code("invalid_request")
        })?;
        if !view.messages.get().trim_start().starts_with('[') {
            return Err(ApiError::bad_request("'messages' must be an array").param("messages"));
        }
        Ok(view)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.is_some_and(|o| o.include_usage)
    }
}

/// Token counts reported by an upstream.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_messages_is_a_400_naming_the_field() {
        let err = ChatRequestView::parse(br#"{"model":"m"}"#).err().unwrap();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.param, Some("messages"));
    }

    #[test]
    fn malformed_json_is_a_400() {
        let err = ChatRequestView::parse(b"{not json").err().unwrap();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn reads_stream_options() {
        let v = ChatRequestView::parse(
            br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true},"x":1}"#,
        )
        .unwrap();
        assert!(v.stream && v.include_usage());
        assert_eq!(v.model.as_deref(), Some("m"));
    }
}
