//! CORS for browser clients, only when `server.cors_origins` is set (the layer
//! is not even installed otherwise, so `OPTIONS` stays 405).
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   from an allowed origin is answered here, 204, before authentication
//!   (browsers never send credentials on a preflight): it allows `GET`, `POST`
//!   and `OPTIONS`, the request headers the browser asked for, for 600 s. From
//!   another origin it is a 403 in OpenAI's shape.
//! - Any other answer to an allowed origin carries `Access-Control-Allow-Origin`
//!   (the origin itself, or `*` when the list is `["*"]`) and exposes
//!   `x-request-id`, `x-warden-provider` and `retry-after` to scripts.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Gateway;
use crate::api::openai::ApiError;

/// How long a browser may cache a preflight answer, in seconds.
pub const MAX_AGE_SECS: u64 = 600;

const EXPOSED: &str = "x-request-id, x-warden-provider, retry-after";

/// The value of `Access-Control-Allow-Origin` for this request's `Origin`, when allowed.
fn allowed_origin(origins: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    if origins.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let text = origin.to_str().ok()?;
    origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

pub async fn cors(State(gw): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let origins = &gw.config.server.cors_origins;
    let allow = allowed_origin(origins, request.headers());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(allow) = allow else {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "this origin is not allowed by server.cors_origins",
            )
            .code("cors_origin_not_allowed")
            .into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        let asked = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(MAX_AGE_SECS),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        return response;
    }
    let mut response = next.run(request).await;
    if let Some(allow) = allow {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed() {
        let mut headers = HeaderMap::new();
        assert_eq!(allowed_origin(&["*".into()], &headers), None, "no Origin");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://app.test"));
        assert_eq!(
            allowed_origin(&["*".into()], &headers).unwrap(),
            HeaderValue::from_static("*")
        );
        assert_eq!(
            allowed_origin(&["http://app.test".into()], &headers).unwrap(),
            "http://app.test"
        );
        assert_eq!(
            allowed_origin(&["http://other.test".into()], &headers),
            None
        );
    }
}
