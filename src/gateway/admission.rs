//! Admission: who may use the API, and how many upstream calls may be in flight.
//!
//! The concurrency limit rejects at once with 429 and `Retry-After` instead of
//! queueing: an unbounded queue is how a gateway's memory grows under a burst.
//! The permit lives in a [`Slot`] that the response body owns, so a streamed
//! answer holds its slot until the stream ends or the client goes away.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

use super::Gateway;
use crate::api::metrics::{Metrics, Rejection};
use crate::api::openai::ApiError;

/// 401 unless the request carries the configured bearer token (when one is set).
pub async fn require_bearer(
    State(gw): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &gw.live().auth_token {
        if !bearer_matches(request.headers(), expected) {
            gw.metrics.rejected(Rejection::Auth);
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// For Anthropic clients (`/v1/messages`): the token as `x-api-key` (what the
/// Anthropic SDKs and Claude Code send) or as Bearer; a 401 in Anthropic's shape.
pub async fn require_api_key(
    State(gw): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &gw.live().auth_token {
        let api_key = request
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        if !(api_key.is_some_and(|k| constant_time_eq(k.as_bytes(), expected.as_bytes()))
            || bearer_matches(request.headers(), expected))
        {
            gw.metrics.rejected(Rejection::Auth);
            return super::messages::error_response(&ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong API key: send the gateway's token as 'x-api-key: <token>' \
                 or 'Authorization: Bearer <token>'",
            ));
        }
    }
    next.run(request).await
}

fn bearer_matches(headers: &axum::http::HeaderMap, expected: &str) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials)
        .is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()))
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An upstream slot; releasing it (on drop) updates the in-flight figures.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    /// Takes a slot of `live`'s limit now or fails with 429; never waits.
    pub fn try_take(gw: &Gateway, live: &super::Live) -> Result<Slot, ApiError> {
        match live.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                gw.metrics.slot_taken();
                Ok(Slot {
                    _permit: permit,
                    metrics: gw.metrics.clone(),
                })
            }
            Err(_) => {
                gw.metrics.rejected(Rejection::Concurrency);
                Err(ApiError::overloaded(live.config.server.max_concurrent))
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.slot_released();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR  tok "] {
            assert_eq!(super::bearer_credentials(value), Some("tok"), "{value}");
        }
        assert_eq!(super::bearer_credentials("Basic tok"), None);
        assert_eq!(super::bearer_credentials("Bearertok"), None);
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
