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
use crate::keys::{Caller, Metered, Ticket};
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

/// Where a request came from and who sent it: what admission by key and the
/// ledger row need.
#[derive(Clone, Debug)]
pub struct Origin {
    pub caller: Caller,
    pub ingress: Ingress,
    /// The HTTP route (the equivalent one for NATS).
    pub route: &'static str,
    /// The request's own path where `route` is a pattern (pass-through's
    /// `/v1/*`): what the ledger records.
    pub path: Option<String>,
    pub request_id: Option<String>,
    /// The request's span when traces are on: each provider attempt is a
    /// child span of it.
    pub trace: Option<SpanParent>,
    /// Whether the declared server tools are offered (`x-warden-tools: none`
    /// opts out, docs/contract.md §18).
    pub server_tools: bool,
}

impl Origin {
    /// An HTTP request to `route`: the caller the authenticating layer found.
    pub fn http(caller: Option<Caller>, route: &'static str, headers: &HeaderMap) -> Origin {
        Origin {
            caller: caller.unwrap_or(Caller::Open),
            ingress: Ingress::Http,
            route,
            path: None,
            request_id: headers
                .get(crate::upstream::forward::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(|v| crate::support::redact::truncate(v, 128).to_string()),
            trace: None,
            server_tools: !crate::tools::Tools::opted_out(
                headers
                    .get(crate::tools::OPT_OUT_HEADER)
                    .and_then(|v| v.to_str().ok()),
            ),
        }
    }

    /// The same origin, traced under `trace` (the request's span, when on).
    pub fn traced(mut self, trace: Option<SpanParent>) -> Origin {
        self.trace = trace;
        self
    }
}

/// Admission by key: `Ok(None)` when nothing is metered (keys off, or the
/// operator while keys are off). Refusals are 403 `model_not_allowed`, 429
/// `rate_limit_exceeded` / `insufficient_quota`, or 503 when the ledger is
/// past its backlog and `keys.fail_closed`.
pub async fn admit_key(
    gw: &Gateway,
    origin: &Origin,
    model: &str,
    input_bytes: usize,
    body: &[u8],
) -> Result<Option<Ticket>, ApiError> {
    if matches!(origin.caller, Caller::Open) {
        return Ok(None);
    }
    // Boxed: the key's admission future is large (shared counters, the
    // ledger), and an unboxed one would make every request's future as large.
    Box::pin(gw.keys.admit(
        &origin.caller,
        Metered {
            ingress: origin.ingress.as_str(),
            route: match &origin.path {
                Some(path) => std::borrow::Cow::Owned(path.clone()),
                None => std::borrow::Cow::Borrowed(origin.route),
            },
            model: model.to_string(),
            input_estimate: crate::keys::estimate_tokens(input_bytes),
            max_output: max_output(body),
            request_id: origin.request_id.clone(),
            trace_id: origin.trace.as_ref().map(SpanParent::trace_id),
        },
    ))
    .await
    .map_err(denied)
}

/// A key's refusal in OpenAI's error shape.
pub fn denied(d: crate::keys::Denied) -> ApiError {
    let status =
        axum::http::StatusCode::from_u16(d.status).unwrap_or(axum::http::StatusCode::FORBIDDEN);
    let mut e = ApiError::new(status, d.kind, d.message).code(d.code);
    if d.code == "model_not_allowed" {
        e = e.param("model");
    }
    e.retry_after = d.retry_after;
    if let Some(rate) = &d.rate {
        e.headers = super::chat::rate_limit_pairs(rate);
    }
    e
}

/// The request's own output limit: `max_tokens`, `max_completion_tokens` or
/// `max_output_tokens`.
fn max_output(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Limits {
        max_tokens: Option<u64>,
        max_completion_tokens: Option<u64>,
        max_output_tokens: Option<u64>,
    }
    let l: Limits = serde_json::from_slice(body).ok()?;
    l.max_completion_tokens
        .or(l.max_tokens)
        .or(l.max_output_tokens)
}

/// Parses, admits and routes one Chat Completions request body; the
/// origin's `trace` is the request's span when traces are on.
pub async fn chat(gw: &Gateway, body: Bytes, origin: &Origin) -> Dispatched {
    chat_with_headers(gw, body, HeaderMap::new(), origin).await
}

/// [`chat`], with the client's headers that go upstream
/// ([`crate::upstream::forward::client_headers`]).
pub async fn chat_with_headers(
    gw: &Gateway,
    body: Bytes,
    headers: HeaderMap,
    origin: &Origin,
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
    let input_bytes = view.messages.get().len();
    // The providers, keys and limits this request is served with, to its end.
    let live = gw.live();
    let (model, body) = match model_and_body(&live, view.model, body) {
        Ok(resolved) => resolved,
        Err(e) => return failed(e),
    };
    let (slot, info, stats) = match admit(gw, &live, origin, &model, input_bytes, &body).await {
        Ok(admitted) => admitted,
        Err(e) => return failed(e),
    };
    let call = ChatCall {
        body,
        model,
        stream,
        include_usage,
        stats,
        headers: std::sync::Arc::new(headers),
    };
    let reply = match gw.tools.as_ref().filter(|_| origin.server_tools) {
        Some(tools) => {
            // Boxed, as the server-tool loop's future is large (see `admit_key`).
            Box::pin(crate::tools::run_chat(
                tools.clone(),
                model_call(&live),
                call,
                origin.trace.clone(),
                origin.caller.name().unwrap_or_default().to_string(),
            ))
            .await
        }
        None => live.router.chat(call).await,
    };
    Dispatched {
        info: Some(info),
        outcome: reply.map(|reply| (reply, slot)),
    }
}

/// One model call of the server-tool loop (docs/contract.md §18): routed by
/// the providers the request started with.
pub fn model_call(live: &std::sync::Arc<super::Live>) -> crate::tools::ModelCall {
    let live = live.clone();
    std::sync::Arc::new(move |call| {
        let live = live.clone();
        Box::pin(async move { live.router.chat(call).await })
    })
}

/// Parses, admits and routes one embeddings request body (HTTP or NATS).
pub async fn embeddings(
    gw: &Gateway,
    body: Bytes,
    headers: HeaderMap,
    origin: &Origin,
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
    let input_bytes = body.len();
    let (slot, info, stats) = match admit(gw, &live, origin, &model, input_bytes, &body).await {
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
    origin: &Origin,
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
    let input_bytes = body.len();
    let (slot, info, stats) = match admit(gw, &live, origin, &model, input_bytes, &body).await {
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
/// the `server.max_concurrent` slot (429 beyond), the caller's key (its
/// models, rate limits and budget, [`admit_key`]; `input_bytes` of the
/// request estimate its input tokens), and the exchange the access log, the
/// metrics, the ledger and the upstream call share. What every route must pass
/// before an upstream call is added here. The origin's `trace` (the request's
/// span, when traces are on) makes each provider attempt a child span of it.
pub async fn admit(
    gw: &Gateway,
    live: &super::Live,
    origin: &Origin,
    model: &str,
    input_bytes: usize,
    body: &[u8],
) -> Result<(Slot, ExchangeInfo, std::sync::Arc<ExchangeStats>), ApiError> {
    // The slot first: a request refused for concurrency reserves nothing.
    let slot = Slot::try_take(gw, live)?;
    let ticket = admit_key(gw, origin, model, input_bytes, body).await?;
    let (info, stats) = begin(model, ticket, origin);
    Ok((slot, info, stats))
}

/// The exchange of an admitted request: metered by its `ticket`, traced under
/// the origin's span, its attempt spans naming the caller's key.
pub fn begin(
    model: &str,
    ticket: Option<Ticket>,
    origin: &Origin,
) -> (ExchangeInfo, std::sync::Arc<ExchangeStats>) {
    let (info, stats) = ExchangeInfo::begin_metered(model, ticket);
    if let Some(trace) = &origin.trace {
        let _ = stats.trace.set(trace.clone());
    }
    if let Some(name) = origin.caller.shared_name() {
        let _ = stats.key_name.set(name);
    }
    (info, stats)
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
