//! Admission: who may use the API (a client key or the operator's token,
//! see [`crate::keys`]), and how many upstream calls may be in flight.
//!
//! The concurrency limit rejects at once with 429 and `Retry-After` instead of
//! queueing: an unbounded queue is how a gateway's memory grows under a burst.
//! The permit lives in a [`Slot`] that the response body owns, so a streamed
//! answer holds its slot until the stream ends or the client goes away.

use std::sync::Arc;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tokio::sync::OwnedSemaphorePermit;

use super::Gateway;
use crate::api::metrics::{Metrics, Rejection};
use crate::api::openai::ApiError;
use crate::keys::Caller;

/// Who is calling: a client key (`Authorization: Bearer wk-…`), the
/// operator's token, or anyone while neither is required. A refused caller
/// gets 401 `invalid_api_key`; an identified one is handed to the handler as a
/// [`Caller`] extension (none: [`Caller::Open`]). With `anthropic` (the
/// `/v1/messages` routes) the key or token may come as `x-api-key` (what the
/// Anthropic SDKs and Claude Code send) or as Bearer, and a 401 is in
/// Anthropic's shape.
///
/// A tower layer rather than `axum::middleware::from_fn`: no copy of the
/// inner service and no boxed future per request.
#[derive(Clone)]
pub struct AuthLayer {
    pub gw: Arc<Gateway>,
    pub anthropic: bool,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            layer: self.clone(),
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> tower::Service<Request> for Authenticate<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let anthropic = self.layer.anthropic;
        match identify(&self.layer.gw, request, anthropic) {
            Ok(request) => Either::Left(self.inner.call(request)),
            Err(e) if anthropic => {
                Either::Right(ready(Ok(super::messages::error_response(&ApiError {
                    kind: "authentication_error",
                    ..e
                }))))
            }
            Err(e) => Either::Right(ready(Ok(e.into_response()))),
        }
    }
}

fn identify(gw: &Gateway, mut request: Request, x_api_key: bool) -> Result<Request, ApiError> {
    let live = gw.live();
    match gw.keys.identify(
        presented(request.headers(), x_api_key),
        live.auth_token.as_deref(),
    ) {
        Ok(Caller::Open) => Ok(request),
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            Ok(request)
        }
        Err(failure) => {
            gw.metrics.rejected(Rejection::Auth);
            Err(super::dispatch::denied(failure.denied()))
        }
    }
}

/// The credentials a request presents: `Authorization: Bearer …`, else (on
/// the Anthropic routes) `x-api-key`.
pub fn presented(headers: &axum::http::HeaderMap, x_api_key: bool) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials)
        .or_else(|| {
            if !x_api_key {
                return None;
            }
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .filter(|s| !s.is_empty())
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
pub fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
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
        use crate::keys::constant_time_eq;
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
