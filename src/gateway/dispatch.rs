//! One dispatch path, two ingresses: a chat request that arrived over HTTP
//! (`POST /v1/chat/completions`) or over NATS (`SUBJECT.chat`, a JetStream job)
//! goes through [`chat`]: parsed, admitted (the `server.max_concurrent` slot),
//! routed to the upstream, and observed with the same [`Record`] (metrics and
//! one access-log line naming the ingress). Each ingress only translates: bytes
//! in, and the [`Reply`] or [`ApiError`] out into its own wire shape.
//!
//! The other routes routed by model go through here the same way:
//! [`embeddings`] (HTTP and NATS) and [`completions`]; every one of them,
//! pass-through included, is admitted by [`admit`], the one place a request
//! becomes an exchange about a model.

use axum::http::HeaderMap;
use bytes::Bytes;

use super::Gateway;
use super::admission::Slot;
pub use super::observe::{ExchangeInfo, Ingress, Record};
use crate::api::openai::{ApiError, ChatRequestView, RoutedRequestView};
use crate::telemetry::SpanParent;
use crate::upstream::{
    ChatCall, CompletionsCall, EmbeddingsCall, ExchangeStats, Reply, configured_models,
};

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
    // The providers, keys and limits this request is served with, to its end.
    let live = gw.live();
    let (model, body) = match model_and_body(&live, view.model, body) {
        Ok(resolved) => resolved,
        Err(e) => return failed(e),
    };
    let (slot, info, stats) = match admit(gw, &live, &model, trace) {
        Ok(admitted) => admitted,
        Err(e) => return failed(e),
    };
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
        outcome: live.router.chat(call).await.map(|reply| (reply, slot)),
    }
}

/// Parses, admits and routes one embeddings request body (HTTP or NATS).
pub async fn embeddings(
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
    let view = match RoutedRequestView::parse(&body, "input") {
        Ok(view) => view,
        Err(e) => return failed(e),
    };
    // The providers, keys and limits this request is served with, to its end.
    let live = gw.live();
    let (model, body) = match model_and_body(&live, view.model, body) {
        Ok(resolved) => resolved,
        Err(e) => return failed(e),
    };
    let (slot, info, stats) = match admit(gw, &live, &model, trace) {
        Ok(admitted) => admitted,
        Err(e) => return failed(e),
    };
    let call = EmbeddingsCall {
        body,
        model,
        stats,
        headers,
    };
    Dispatched {
        info: Some(info),
        outcome: live
            .router
            .embeddings(call)
            .await
            .map(|reply| (reply, slot)),
    }
}

/// Parses, admits and routes one legacy completions request body.
pub async fn completions(
    gw: &Gateway,
    body: Bytes,
    headers: HeaderMap,
    trace: Option<SpanParent>,
) -> Dispatched {
    let failed = |e: ApiError| Dispatched {
        info: None,
        outcome: Err(e),
    };
    let view = match RoutedRequestView::parse(&body, "prompt") {
        Ok(view) => view,
        Err(e) => return failed(e),
    };
    // The providers, keys and limits this request is served with, to its end.
    let live = gw.live();
    let (model, body) = match model_and_body(&live, view.model, body) {
        Ok(resolved) => resolved,
        Err(e) => return failed(e),
    };
    let (slot, info, stats) = match admit(gw, &live, &model, trace) {
        Ok(admitted) => admitted,
        Err(e) => return failed(e),
    };
    let call = CompletionsCall {
        body,
        model,
        stream: view.stream,
        include_usage: view.include_usage,
        stats,
        headers,
    };
    Dispatched {
        info: Some(info),
        outcome: live
            .router
            .completions(call)
            .await
            .map(|reply| (reply, slot)),
    }
}

/// Admission of one request about `model`, whatever its route and ingress:
/// the `server.max_concurrent` slot (429 beyond), and the exchange the access
/// log, the metrics and the upstream call share. What every route must pass
/// before an upstream call is added here. `trace` (the request's span, when
/// traces are on) makes each provider attempt a child span of it.
pub fn admit(
    gw: &Gateway,
    live: &super::Live,
    model: &str,
    trace: Option<SpanParent>,
) -> Result<(Slot, ExchangeInfo, std::sync::Arc<ExchangeStats>), ApiError> {
    let slot = Slot::try_take(gw, live)?;
    let (info, stats) = ExchangeInfo::begin(model);
    if let Some(trace) = trace {
        let _ = stats.trace.set(trace);
    }
    Ok((slot, info, stats))
}

/// The model a request is routed by, and its body naming it: the request's
/// own, else `server.default_model` written into the body; else 400.
pub fn model_and_body(
    live: &super::Live,
    model: Option<String>,
    body: Bytes,
) -> Result<(String, Bytes), ApiError> {
    match model {
        Some(model) => Ok((model, body)),
        None => match default_model(live) {
            // The body goes upstream as it is: it must name the model too.
            Some(model) => match with_model(&body, model) {
                Some(patched) => Ok((model.to_string(), patched)),
                None => Err(crate::api::openai::invalid::not_an_object()),
            },
            None => Err(crate::api::openai::invalid::missing_model()),
        },
    }
}

/// `server.default_model`, when set: what a request without `model` gets.
pub fn default_model(live: &super::Live) -> Option<&str> {
    Some(live.config.server.default_model.as_str()).filter(|m| !m.is_empty())
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
/// The `[aliases]` names are listed too (after the models, each once), so a
/// client that checks its model against the list finds an alias it was given.
pub async fn models(gw: &Gateway) -> Bytes {
    let live = gw.live();
    let list = match live.router.models().await {
        Some(body) => body,
        None => Bytes::from(configured_models(&live.config).to_string()),
    };
    with_aliases(list, &live.config.aliases)
}

/// `list` (a models `list` object) with an entry for each alias it lacks.
/// Unchanged when there are no aliases, or when `list` is not a list object.
fn with_aliases(list: Bytes, aliases: &std::collections::BTreeMap<String, String>) -> Bytes {
    if aliases.is_empty() {
        return list;
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&list) else {
        return list;
    };
    let Some(data) = value["data"].as_array_mut() else {
        return list;
    };
    let listed: std::collections::HashSet<String> = data
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    for alias in aliases.keys().filter(|a| !listed.contains(*a)) {
        data.push(serde_json::json!({
            "id": alias, "object": "model", "created": 0, "owned_by": "warden",
        }));
    }
    Bytes::from(value.to_string())
}
