//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: the Anthropic
//! Messages API in front of any provider (docs/contract.md §12), so the Anthropic SDKs and
//! Claude Code can use warden.
//!
//! The request is translated to Chat Completions ([`anthropic::messages_request_to_chat`])
//! and goes through the same [`dispatch`] as `/v1/chat/completions` (admission,
//! routing, observation); the answer is translated back: a `chat.completion`
//! becomes a Messages object, Chat chunks become Anthropic's event sequence as
//! they arrive ([`ChatToMessages`]). Every error, the gateway's own included, is
//! in Anthropic's shape `{"type":"error","error":{"type","message"}}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::admission::Slot;
use super::chat::{ClientBody, attach, sse_response};
use super::{Gateway, dispatch};
use crate::api::anthropic::{self, ChatToMessages};
use crate::api::openai::ApiError;
use crate::api::sse::SseParser;
use crate::upstream::forward::client_headers;
use crate::upstream::{FrameStream, Reply};

/// An error as an HTTP response in Anthropic's shape, same status, with
/// `Retry-After` when the error has one.
pub fn error_response(err: &ApiError) -> Response {
    let mut response = (err.status, axum::Json(anthropic::error_from_api(err))).into_response();
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    for (name, value) in &err.headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}

/// The request as a JSON object, or a 400.
fn parse_request(body: Result<ClientBody, ApiError>) -> Result<Value, ApiError> {
    let ClientBody(body) = body?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "request body is not valid JSON for a message: {e}"
        ))),
    }
}

pub async fn messages(
    State(gw): State<Arc<Gateway>>,
    caller: Option<axum::extract::Extension<crate::keys::Caller>>,
    trace: Option<axum::Extension<crate::telemetry::SpanParent>>,
    headers: axum::http::HeaderMap,
    body: Result<ClientBody, ApiError>,
) -> Response {
    let request = match parse_request(body) {
        Ok(request) => request,
        Err(e) => return error_response(&e),
    };
    let model = match &request["model"] {
        Value::String(model) => model.clone(),
        Value::Null => gw
            .config
            .upstream
            .models
            .first()
            .cloned()
            .unwrap_or_default(),
        _ => return error_response(&ApiError::bad_request("model: must be a string")),
    };
    let stream = request["stream"].as_bool().unwrap_or(false);
    let mut chat = match anthropic::messages_request_to_chat(&request) {
        Ok(chat) => chat,
        Err(e) => return error_response(&ApiError::from(e)),
    };
    chat["model"] = json!(model);
    let body = Bytes::from(serde_json::to_vec(&chat).expect("JSON serialises"));
    let origin = dispatch::Origin::http(caller.map(|c| c.0), "/v1/messages", &headers)
        .traced(trace.map(|axum::Extension(t)| t));
    let dispatched =
        dispatch::chat_with_headers(&gw, body, client_headers(&headers), &origin).await;
    let mut response = match dispatched.outcome {
        Ok((reply, slot)) => respond(reply, slot, &model, stream),
        Err(e) => error_response(&e),
    };
    if let Some(info) = dispatched.info {
        attach(&mut response, info);
    }
    response
}

fn respond(reply: Reply, slot: Slot, model: &str, stream: bool) -> Response {
    match (reply, stream) {
        (Reply::Complete(body), false) => {
            drop(slot);
            match serde_json::from_slice::<Value>(&body) {
                Ok(chat) if chat["choices"].is_array() => {
                    axum::Json(anthropic::chat_to_messages_response(&chat, model)).into_response()
                }
                _ => error_response(&ApiError::bad_gateway(
                    "the upstream answered something that is not a chat.completion",
                )),
            }
        }
        (Reply::Complete(body), true) => {
            // An upstream that answered whole although asked to stream: the
            // client still gets the event sequence.
            let frames = completion_as_chunks(&body);
            sse(translate(
                Box::pin(futures_util::stream::iter(frames)),
                model,
                slot,
            ))
        }
        (Reply::Stream(frames), _) => sse(translate(frames, model, slot)),
    }
}

/// A whole `chat.completion` as the Chat chunk frames that would have carried it.
fn completion_as_chunks(body: &[u8]) -> Vec<Bytes> {
    let Ok(chat) = serde_json::from_slice::<Value>(body) else {
        return vec![Bytes::from(
            ApiError::bad_gateway("the upstream answered something that is not a chat.completion")
                .sse_frame(),
        )];
    };
    let choice = &chat["choices"][0];
    let mut delta = json!({"content": choice["message"]["content"]});
    if let Some(calls) = choice["message"]["tool_calls"].as_array() {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                c["index"] = json!(i);
                c
            })
            .collect();
        delta["tool_calls"] = Value::Array(calls);
    }
    let chunk = json!({"choices": [{"index": 0, "delta": delta, "finish_reason": choice["finish_reason"]}],
        "usage": chat["usage"]});
    vec![
        Bytes::from(format!("data: {chunk}\n\n")),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ]
}

fn sse(frames: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Response {
    sse_response(Body::from_stream(frames.map(Ok::<_, Infallible>)))
}

/// Anthropic's keep-alive event.
const PING: &str = "event: ping\ndata: {\"type\":\"ping\"}\n\n";

/// Chat chunk frames → Anthropic events, as they arrive. The stream owns the
/// slot; `message_start` goes out before the first upstream chunk.
fn translate(
    frames: FrameStream,
    model: &str,
    slot: Slot,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    struct State {
        frames: FrameStream,
        parser: SseParser,
        translator: ChatToMessages,
        _slot: Slot,
    }
    let id = format!("msg_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let mut translator = ChatToMessages::new(model, &id);
    let start = translator.start().concat();
    let state = State {
        frames,
        parser: SseParser::new(),
        translator,
        _slot: slot,
    };
    let rest = futures_util::stream::unfold(state, |mut st| async move {
        let mut out = String::new();
        while out.is_empty() {
            if st.translator.is_done() {
                return None; // dropping the upstream stream
            }
            match st.frames.next().await {
                Some(frame) => {
                    let between_events = !st.parser.mid_event();
                    let events = st.parser.feed(&frame);
                    if between_events
                        && events.is_empty()
                        && !st.parser.mid_event()
                        && frame.starts_with(b":")
                    {
                        // A comment alone (the server-tool loop's keep-alive):
                        // Anthropic's own keep-alive event.
                        out.push_str(PING);
                    }
                    for event in events {
                        out.extend(st.translator.on_data(&event.data));
                    }
                }
                None => {
                    if let Some(event) = st.parser.finish() {
                        out.extend(st.translator.on_data(&event.data));
                    }
                    out.extend(st.translator.finish());
                    if out.is_empty() {
                        return None;
                    }
                }
            }
        }
        Some((Bytes::from(out), st))
    });
    futures_util::stream::once(async move { Bytes::from(start) }).chain(rest)
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, an estimate of about
/// four characters per token (see [`anthropic::estimate_tokens`]); no provider
/// is called.
pub async fn count_tokens(body: Result<ClientBody, ApiError>) -> Response {
    let request = match parse_request(body) {
        Ok(request) => request,
        Err(e) => return error_response(&e),
    };
    if !request["messages"].is_array() {
        return error_response(&ApiError::bad_request("messages: Field required"));
    }
    axum::Json(json!({"input_tokens": anthropic::estimate_tokens(&request)})).into_response()
}
