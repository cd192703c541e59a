//! One dispatch path, two ingresses: a chat request that arrived over HTTP
//! (`POST /v1/chat/completions`) or over NATS (`SUBJECT.chat`, a JetStream job)
//! goes through [`chat`]: parsed, admitted (the `server.max_concurrent` slot),
//! routed to the upstream, and observed with the same [`Record`] (metrics and
//! one access-log line naming the ingress). Each ingress only translates: bytes
//! in, and the [`Reply`] or [`ApiError`] out into its own wire shape.

use axum::http::HeaderMap;
use bytes::Bytes;

use super::Gateway;
use super::admission::Slot;
pub use super::observe::{ExchangeInfo, Ingress, Record};
use crate::api::openai::{ApiError, ChatRequestView};
use crate::telemetry::SpanParent;
use crate::upstream::{ChatCall, Reply, configured_models};

/// What [`chat`] made of one request.
pub struct Dispatched {
    /// The model and figures of the exchange, once the request parsed (for the
    /// access log and per-model metrics, errors included).
    pub info: Option<ExchangeInfo>,
    /// The upstream's reply and the slot it holds: whoever delivers the reply
    /// keeps the slot until the last byte is out (a stream holds it to its end).
    pub outcome: Result<(Reply, Slot), ApiError>,
}

/// Parses, admits and routes one Chat Completions request body; `trace` is
/// the request's span when traces are on.
pub async fn chat(gw: &Gateway, body: Bytes, trace: Option<SpanParent>) -> Dispatched {
    chat_with_headers(gw, body, HeaderMap::new(), trace).await
}

/// [`chat`], with the client's headers that go upstream
/// ([`crate::upstream::forward::client_headers`]).
pub async fn chat_with_headers(
    gw: &Gateway,
    body: Bytes,
    headers: HeaderMap,
    trace: Option<SpanParent>,
) -> Dispatched {
    let failed = |e: ApiError| Dispatched {
        info: None,
        outcome: Err(e),
    };
    if body.len() > gw.config.server.max_body_bytes {
        gw.metrics
            .rejected(crate::api::metrics::Rejection::BodyTooLarge);
        return failed(ApiError::payload_too_large(gw.config.server.max_body_bytes));
    }
    let view = match ChatRequestView::parse(&body) {
        Ok(view) => view,
        Err(e) => return failed(e),
    };
    let (stream, include_usage) = (view.stream, view.include_usage());
    let (model, body) = match view.model {
        Some(model) => (model, body),
        None => match default_model(gw) {
            // The body goes upstream as it is: it must name the model too.
            Some(model) => match with_model(&body, model) {
                Some(patched) => (model.to_string(), patched),
                None => return failed(crate::api::openai::invalid::not_an_object()),
            },
            None => return failed(crate::api::openai::invalid::missing_model()),
        },
    };
    let slot = match Slot::try_take(gw) {
        Ok(slot) => slot,
        Err(e) => return failed(e),
    };
    let (info, stats) = ExchangeInfo::begin(&model);
    if let Some(trace) = trace {
        let _ = stats.trace.set(trace);
    }
    let call = ChatCall {
        body,
        model,
        stream,
        include_usage,
        stats,
        headers,
    };
    Dispatched {
        info: Some(info),
        outcome: gw.router.chat(call).await.map(|reply| (reply, slot)),
    }
}

/// `server.default_model`, when set: what a request without `model` gets.
pub fn default_model(gw: &Gateway) -> Option<&str> {
    Some(gw.config.server.default_model.as_str()).filter(|m| !m.is_empty())
}

/// The request body with `"model": model` added.
fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut request: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).ok()?;
    request.insert("model".into(), model.into());
    serde_json::to_vec(&request).ok().map(Bytes::from)
}

/// The `GET /v1/models/{id}` model object: the entry of the models `list`
/// (what [`models`] serves) whose `id` is `id`; else 404 `model_not_found`.
pub fn model_in(list: &[u8], id: &str) -> Result<serde_json::Value, ApiError> {
    let list: serde_json::Value = serde_json::from_slice(list).unwrap_or_default();
    list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|model| model["id"].as_str() == Some(id))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model '{id}' does not exist; GET /v1/models lists the models"),
            )
            .param("model")
            .code("model_not_found")
        })
}

/// The `GET /v1/models` list object: the upstream's own list when it has one,
/// else the configured models.
pub async fn models(gw: &Gateway) -> Bytes {
    match gw.router.models().await {
        Some(body) => body,
        None => Bytes::from(configured_models(&gw.config).to_string()),
    }
}
