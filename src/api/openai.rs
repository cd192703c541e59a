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
    /// The status the upstream itself answered, when this error is the
    /// gateway's rendering of it (a provider's 503 becomes a 502 here); the
    /// `error.type` of the attempt's span.
    pub upstream_status: Option<u16>,
    /// Headers the answer carries besides `Retry-After` (a key's
    /// `x-ratelimit-*` on its refusals).
    pub headers: Vec<(axum::http::HeaderName, HeaderValue)>,
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
            upstream_status: None,
            headers: Vec::new(),
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
    pub fn upstream_status(mut self, status: u16) -> Self {
        self.upstream_status = Some(status);
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
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The fields of a Chat Completions request that the gateway reads. Everything
/// else stays in the original bytes, which are forwarded unchanged.
pub struct ChatRequestView<'a> {
    /// `None` only when the request had none (a configured default may apply).
    pub model: Option<String>,
    pub messages: &'a RawValue,
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Deserialize, Default, Clone, Copy)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The top-level fields as they were sent: `None` when absent, the raw JSON
/// (possibly `null`) when present, so absent and `null` can be told apart.
#[derive(Deserialize)]
struct SentFields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue as Deserialize<'de>>::deserialize(d).map(Some)
}

/// The request-validation errors, one code per kind of mistake, as OpenAI
/// answers them (all 400, type `invalid_request_error`):
///
/// | mistake | `code` | `param` |
/// | --- | --- | --- |
/// | the body is not JSON | `invalid_json` | |
/// | the body is not a JSON object | `invalid_type` | |
/// | a required field is absent (`messages`; `model` without a default model) | `missing_required_parameter` | the field |
/// | a field has the wrong type, `null` for a required field included | `invalid_type` | the field |
/// | `messages` is an empty array | `empty_array` | `messages` |
pub mod invalid {
    use super::ApiError;

    pub fn json(e: impl std::fmt::Display) -> ApiError {
        ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
        .code("invalid_json")
    }
    pub fn not_an_object() -> ApiError {
        ApiError::bad_request("the request body must be a JSON object").code("invalid_type")
    }
    pub fn missing(param: &'static str) -> ApiError {
        ApiError::bad_request(format!("Missing required parameter: '{param}'."))
            .param(param)
            .code("missing_required_parameter")
    }
    pub fn missing_model() -> ApiError {
        ApiError::bad_request(
            "Missing required parameter: 'model'. Send a model (GET /v1/models lists them), \
             or set server.default_model in warden.toml",
        )
        .param("model")
        .code("missing_required_parameter")
    }
    pub fn wrong_type(param: &'static str, expected: &str, got: &str) -> ApiError {
        ApiError::bad_request(format!(
            "Invalid type for '{param}': expected {expected}, but got {got} instead."
        ))
        .param(param)
        .code("invalid_type")
    }
    pub fn empty_array(param: &'static str) -> ApiError {
        ApiError::bad_request(format!(
            "Invalid '{param}': empty array. Expected an array with minimum length 1, \
             but got an empty array instead."
        ))
        .param(param)
        .code("empty_array")
    }
}

/// The JSON type of a raw value, for messages: `null`, `a string`, ...
pub fn json_type(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'n') => "null",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

impl ChatRequestView<'_> {
    /// Parses and validates a request body (see [`invalid`] for the errors).
    pub fn parse(body: &[u8]) -> Result<ChatRequestView<'_>, ApiError> {
        must_be_object(body)?;
        let fields: SentFields = serde_json::from_slice(body).map_err(invalid::json)?;
        let messages = fields
            .messages
            .ok_or_else(|| invalid::missing("messages"))?;
        let raw = messages.get().trim_start();
        if !raw.starts_with('[') {
            return Err(invalid::wrong_type(
                "messages",
                "an array of objects",
                json_type(raw),
            ));
        }
        if raw[1..].trim_start().starts_with(']') {
            return Err(invalid::empty_array("messages"));
        }
        Ok(ChatRequestView {
            model: model_field(fields.model)?,
            messages,
            stream: stream_field(fields.stream)?,
            stream_options: stream_options_field(fields.stream_options)?,
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.is_some_and(|o| o.include_usage)
    }
}

/// The fields the gateway reads of a request routed by model on the other
/// OpenAI routes (`/v1/embeddings`, `/v1/completions`): the same checks as
/// [`ChatRequestView`], with `required` (`input`, `prompt`) in place of `messages`.
#[derive(Debug)]
pub struct RoutedRequestView {
    /// `None` only when the request had none (a configured default may apply).
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
}

#[derive(Deserialize)]
struct RoutedFields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    input: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    prompt: Option<&'a RawValue>,
}

impl RoutedRequestView {
    /// Parses a request body whose field `required` (`"input"` or `"prompt"`)
    /// must be present and not `null`.
    pub fn parse(body: &[u8], required: &'static str) -> Result<RoutedRequestView, ApiError> {
        must_be_object(body)?;
        let fields: RoutedFields = serde_json::from_slice(body).map_err(invalid::json)?;
        let needed = match required {
            "prompt" => fields.prompt,
            _ => fields.input,
        };
        match needed.map(RawValue::get) {
            None => return Err(invalid::missing(required)),
            Some("null") => return Err(invalid::wrong_type(required, "a value", "null")),
            Some(_) => {}
        }
        Ok(RoutedRequestView {
            model: model_field(fields.model)?,
            stream: stream_field(fields.stream)?,
            include_usage: stream_options_field(fields.stream_options)?
                .is_some_and(|o| o.include_usage),
        })
    }
}

/// 400 unless the body is a JSON object (serde would take an array for a
/// struct's fields in order).
fn must_be_object(body: &[u8]) -> Result<(), ApiError> {
    let object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|&b| b == b'{');
    if object {
        return Ok(());
    }
    Err(
        match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => invalid::not_an_object(),
            Err(e) => invalid::json(e),
        },
    )
}

fn model_field(raw: Option<&RawValue>) -> Result<Option<String>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| invalid::wrong_type("model", "a string", json_type(raw.get()))),
    }
}

fn stream_field(raw: Option<&RawValue>) -> Result<bool, ApiError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(false),
        Some(raw) => serde_json::from_str::<bool>(raw)
            .map_err(|_| invalid::wrong_type("stream", "a boolean", json_type(raw))),
    }
}

fn stream_options_field(raw: Option<&RawValue>) -> Result<Option<StreamOptions>, ApiError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(raw) => serde_json::from_str::<StreamOptions>(raw)
            .map(Some)
            .map_err(|_| {
                invalid::wrong_type(
                    "stream_options",
                    "an object with a boolean include_usage",
                    json_type(raw),
                )
            }),
    }
}

/// Token counts reported by an upstream.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Prompt tokens read from the provider's cache (included in
    /// `prompt_tokens`): Chat's `prompt_tokens_details.cached_tokens`.
    #[serde(
        default,
        rename = "prompt_tokens_details",
        deserialize_with = "cached_of_details"
    )]
    pub cached_tokens: u64,
}

/// `cached_tokens` of a `prompt_tokens_details` object (0 when absent or null).
fn cached_of_details<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    struct Details {
        #[serde(default)]
        cached_tokens: Option<u64>,
    }
    Ok(Option::<Details>::deserialize(d)?
        .and_then(|details| details.cached_tokens)
        .unwrap_or(0))
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
    fn one_code_per_kind_of_mistake() {
        let code = |body: &str| {
            let e = ChatRequestView::parse(body.as_bytes()).err().unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            (e.code.unwrap(), e.param)
        };
        assert_eq!(code("{oops"), ("invalid_json", None));
        assert_eq!(code(""), ("invalid_json", None));
        assert_eq!(code("[1]"), ("invalid_type", None));
        assert_eq!(
            code(r#"{"model":"m"}"#),
            ("missing_required_parameter", Some("messages"))
        );
        assert_eq!(
            code(r#"{"model":"m","messages":null}"#),
            ("invalid_type", Some("messages"))
        );
        assert_eq!(
            code(r#"{"model":"m","messages":"hi"}"#),
            ("invalid_type", Some("messages"))
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[ ]}"#),
            ("empty_array", Some("messages"))
        );
        assert_eq!(
            code(r#"{"model":5,"messages":[{}]}"#),
            ("invalid_type", Some("model"))
        );
        assert_eq!(
            code(r#"{"model":null,"messages":[{}]}"#),
            ("invalid_type", Some("model"))
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{}],"stream":"yes"}"#),
            ("invalid_type", Some("stream"))
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{}],"stream_options":{"include_usage":1}}"#),
            ("invalid_type", Some("stream_options"))
        );
        // Absent model: left to the caller (a configured default, or 400).
        let v = ChatRequestView::parse(br#"{"messages":[{}],"stream":null}"#).unwrap();
        assert!(v.model.is_none() && !v.stream);
    }

    #[test]
    fn malformed_json_is_a_400() {
        let err = ChatRequestView::parse(b"{not json").err().unwrap();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn reads_stream_options() {
        let v = ChatRequestView::parse(
            br#"{"model":"m","messages":[{}],"stream":true,"stream_options":{"include_usage":true},"x":1}"#,
        )
        .unwrap();
        assert!(v.stream && v.include_usage());
        assert_eq!(v.model.as_deref(), Some("m"));
    }
}
