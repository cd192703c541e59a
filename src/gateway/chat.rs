//! `POST /v1/chat/completions` and `GET /v1/models`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::Gateway;
use super::admission::Slot;
use super::observe::ExchangeInfo;
use crate::api::metrics::Rejection;
use crate::api::openai::{ApiError, ChatRequestView};
use crate::upstream::{ChatCall, ExchangeStats, Reply, configured_models};

/// Names the provider that answered, on every proxied answer.
pub const PROVIDER_HEADER: &str = "x-warden-provider";

pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_rejection(&gw, rejection).into_response(),
    };
    let view = match ChatRequestView::parse(&body) {
        Ok(view) => view,
        Err(e) => return e.into_response(),
    };
    let model = view
        .model
        .clone()
        .or_else(|| gw.config.upstream.models.first().cloned())
        .unwrap_or_default();
    let (stream, include_usage) = (view.stream, view.include_usage());
    let slot = match Slot::try_take(&gw) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let stats = Arc::new(ExchangeStats::default());
    let info = ExchangeInfo {
        model: model.clone(),
        stats: stats.clone(),
    };
    let call = ChatCall {
        body,
        model,
        stream,
        include_usage,
        stats,
    };
    respond(gw.router.chat(call).await, slot, info)
}

/// The HTTP response for an upstream's reply. A stream's body owns the slot:
/// it is released when the stream ends or the client disconnects (dropping the
/// body cancels the upstream call).
pub(super) fn respond(reply: Result<Reply, ApiError>, slot: Slot, info: ExchangeInfo) -> Response {
    let mut response = match reply {
        Ok(Reply::Complete(json)) => {
            drop(slot);
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                json,
            )
                .into_response()
        }
        Ok(Reply::Stream(frames)) => {
            let frames = frames.map(move |frame| {
                let _slot = &slot;
                Ok::<_, Infallible>(frame)
            });
            sse_response(Body::from_stream(frames))
        }
        Err(e) => e.into_response(),
    };
    if let Some(provider) = info.stats.provider.get() {
        response
            .headers_mut()
            .insert(PROVIDER_HEADER, provider.header.clone());
    }
    response.extensions_mut().insert(info);
    response
}

fn sse_response(body: Body) -> Response {
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

pub(super) fn body_rejection(gw: &Gateway, rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        gw.metrics.rejected(Rejection::BodyTooLarge);
        ApiError::payload_too_large(gw.config.server.max_body_bytes)
    } else {
        ApiError::bad_request(format!("cannot read the request body: {rejection}"))
    }
}

pub async fn models(State(gw): State<Arc<Gateway>>) -> Response {
    let json = match gw.router.models().await {
        Some(body) => body,
        None => Bytes::from(configured_models(&gw.config).to_string()),
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response()
}
