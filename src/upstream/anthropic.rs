//! An Anthropic Messages API provider (`api = "anthropic"`): clients speak Chat
//! Completions, the provider receives `POST {url}/messages` with the key as
//! `x-api-key` and `anthropic-version: 2023-06-01`, and its answer is
//! translated back ([`crate::api::anthropic`]).
//!
//! - Non-streaming: the Messages object becomes a `chat.completion`.
//! - Streaming: the provider's events are parsed as they arrive ([`SseParser`])
//!   and translated at once ([`MessagesToChat`]): exactly one `finish_reason` (or
//!   one error frame), the usage chunk when asked, then `[DONE]`. An in-band
//!   `error` event (e.g. `overloaded_error`) before any content is the stream's
//!   first frame, so routing treats it as a failed attempt.
//! - Errors: Anthropic's error types map to statuses (`overloaded_error` is 529,
//!   retried and failed over like any 5xx; `rate_limit_error` 429; …).
//! - Responses API requests (`POST /v1/responses`) are refused with a 400 that
//!   says so: there is no Responses → Messages translation.
//!
//! Sending, retries and timeouts are those of every HTTP upstream ([`super::http`]).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::http::{ChunkStream, HttpUpstream, UpstreamUrl};
use super::{ChatCall, ExchangeStats, FrameStream, Reply, unix_now};
use crate::api::anthropic::{MessagesToChat, chat_to_messages, messages_to_chat, provider_error};
use crate::api::openai::{ApiError, Usage};
use crate::api::sse::{SseEvent, SseParser};

pub struct AnthropicUpstream {
    http: HttpUpstream,
    messages_url: UpstreamUrl,
}

impl AnthropicUpstream {
    /// `http` must send the key the Anthropic way ([`HttpUpstream::anthropic_auth`]).
    pub fn new(http: HttpUpstream) -> AnthropicUpstream {
        AnthropicUpstream {
            messages_url: http.url("/messages"),
            http,
        }
    }

    /// A Chat Completions request, answered through the Messages API.
    pub async fn chat(&self, call: ChatCall) -> Result<Reply, ApiError> {
        let mut chat: Value = serde_json::from_slice(&call.body).map_err(|e| {
            ApiError::bad_request(format!("request body is not valid JSON: {e}"))
                .code("invalid_request")
        })?;
        if chat.get("model").is_none_or(Value::is_null) {
            chat["model"] = Value::String(call.model.clone());
        }
        let request = chat_to_messages(&chat).map_err(ApiError::from)?;
        let body = Bytes::from(serde_json::to_vec(&request).expect("JSON serialises"));
        let response = self
            .http
            .send(&self.messages_url, &body, &call.stats, &call.headers)
            .await?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = super::retry::retry_after(response.headers());
            let body = self
                .http
                .read_body(response, &call.stats)
                .await
                .unwrap_or_default();
            let mut err = provider_error(status.as_u16(), &body, self.http.display_url());
            if let Some(after) = retry_after {
                err = err.retry_after(after.as_secs().max(1));
            }
            tracing::warn!(status = err.status.as_u16(), error = %err.message, "anthropic provider refused");
            return Err(err);
        }
        if call.stream {
            let chunks = super::bounded::limit_events(
                self.http.chunks(response, call.stats.clone()),
                self.http.max_event_bytes(),
                self.http.display_url().to_string(),
            );
            let id = format!(
                "chatcmpl-{:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            );
            let translator = MessagesToChat::new(&call.model, &id, unix_now(), call.include_usage);
            return Ok(Reply::Stream(translate_stream(
                chunks, translator, call.stats,
            )));
        }
        let body = self.http.read_body(response, &call.stats).await?;
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|v| v["type"] == "message")
            .ok_or_else(|| {
                ApiError::bad_gateway(format!(
                    "upstream {} answered something that is not a Messages API object",
                    self.http.display_url()
                ))
            })?;
        let completion = messages_to_chat(&message, &call.model);
        if let (Some(prompt), Some(completion)) = (
            completion["usage"]["prompt_tokens"].as_u64(),
            completion["usage"]["completion_tokens"].as_u64(),
        ) {
            call.stats.set_usage(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
            });
        }
        Ok(Reply::Complete(Bytes::from(completion.to_string())))
    }
}

/// The refusal for `POST /v1/responses` routed to an Anthropic provider.
pub fn responses_unsupported() -> ApiError {
    ApiError::bad_request(
        "this provider speaks the Anthropic Messages API (api = \"anthropic\"), which does not \
         serve POST /v1/responses; use POST /v1/chat/completions or POST /v1/messages",
    )
    .code("unsupported_upstream")
}

/// The event's JSON, with `type` from the `event:` field when the data lacks it.
fn event_json(event: &SseEvent) -> Option<Value> {
    let mut value: Value = serde_json::from_str(&event.data).ok()?;
    let object = value.as_object_mut()?;
    if !object.contains_key("type") {
        if let Some(name) = &event.event {
            object.insert("type".into(), Value::String(name.clone()));
        }
    }
    Some(value)
}

/// Translates the provider's event stream frame by frame, as it arrives.
fn translate_stream(
    chunks: ChunkStream,
    translator: MessagesToChat,
    stats: Arc<ExchangeStats>,
) -> FrameStream {
    struct State {
        chunks: ChunkStream,
        parser: SseParser,
        translator: MessagesToChat,
        stats: Arc<ExchangeStats>,
    }
    impl State {
        fn translate(&mut self, events: Vec<SseEvent>, out: &mut String) {
            for event in events.iter().filter_map(event_json) {
                if event["type"] == "error" {
                    tracing::warn!(
                        error = event["error"]["message"].as_str().unwrap_or(""),
                        kind = event["error"]["type"].as_str().unwrap_or(""),
                        "anthropic provider sent an error event mid-stream"
                    );
                }
                for frame in self.translator.on_event(&event) {
                    out.push_str(&frame);
                }
            }
            if let Some((prompt_tokens, completion_tokens)) = self.translator.usage() {
                self.stats.set_usage(Usage {
                    prompt_tokens,
                    completion_tokens,
                });
            }
        }
    }
    let state = State {
        chunks,
        parser: SseParser::new(),
        translator,
        stats,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let mut out = String::new();
        while out.is_empty() {
            if st.translator.is_done() {
                return None; // terminal frames sent: drop the upstream
            }
            match st.chunks.next().await {
                Some(Ok(chunk)) => {
                    let events = st.parser.feed(&chunk);
                    st.translate(events, &mut out);
                }
                Some(Err(error)) => {
                    out.extend(st.translator.abort(&error.message, error.code));
                }
                None => {
                    let last = st.parser.finish().into_iter().collect();
                    st.translate(last, &mut out);
                    out.extend(st.translator.finish());
                    if out.is_empty() {
                        return None;
                    }
                }
            }
        }
        Some((Bytes::from(out), st))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broken_stream_ends_with_one_error_and_done() {
        let chunks: ChunkStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(
                b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":2}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\ndata: {\"ty",
            )),
            Err(ApiError::bad_gateway("connection reset")),
        ]));
        let stats = Arc::new(ExchangeStats::default());
        let translator = MessagesToChat::new("m", "chatcmpl-1", 1, false);
        let frames: Vec<Bytes> = translate_stream(chunks, translator, stats.clone())
            .collect()
            .await;
        let text: String = frames
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect();
        assert!(text.contains("\"content\":\"hi\""), "{text}");
        assert!(text.contains("connection reset"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(text.matches("[DONE]").count(), 1);
        assert_eq!(stats.usage().prompt_tokens, 2);
    }

    #[test]
    fn event_names_fill_in_a_missing_type() {
        let ev = SseEvent {
            event: Some("ping".into()),
            data: "{}".into(),
        };
        assert_eq!(event_json(&ev).unwrap()["type"], "ping");
    }
}
