//! An Anthropic Messages API provider (`api = "anthropic"`): clients speak Chat
//! Completions, the provider receives `POST {url}/messages` with the key as
//! `x-api-key` and `anthropic-version: 2023-06-01`, and its answer is
//! translated back ([`crate::api::anthropic`]).
//!
//! - Non-streaming: the Messages object becomes a `chat.completion`.
//! - Streaming: the provider's events are parsed as they arrive ([`crate::api::sse::SseParser`])
//!   and translated at once ([`MessagesToChat`], driven by
//!   `translated::translate_stream`): exactly one `finish_reason` (or
//!   one error frame), the usage chunk when asked, then `[DONE]`. An in-band
//!   `error` event (e.g. `overloaded_error`) before any content is the stream's
//!   first frame, so routing treats it as a failed attempt.
//! - Errors: Anthropic's error types map to statuses (`overloaded_error` is 529,
//!   retried and failed over like any 5xx; `rate_limit_error` 429; …).
//! - Responses API requests (`POST /v1/responses`, Codex CLI): translated to
//!   Chat Completions and answered through the same Chat path, so Responses →
//!   Chat → Messages and back (`translated::responses_over_chat`):
//!   a `response` object, or the Responses event sequence, with function and
//!   custom tool calls, usage, and one `response.failed` for an in-band error.
//!
//! Sending, retries and timeouts are those of every HTTP upstream ([`super::http`]).

use bytes::Bytes;
use serde_json::Value;

use super::http::{HttpUpstream, UpstreamUrl};
use super::translated::{
    event_chunks, fresh_id, request_json, responses_over_chat, translate_stream,
};
use super::{ChatCall, Reply, ResponsesCall, unix_now};
use crate::api::anthropic::{MessagesToChat, chat_to_messages, messages_to_chat, provider_error};
use crate::api::openai::{ApiError, Usage};

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

    /// The shared HTTP side.
    pub fn http(&self) -> &HttpUpstream {
        &self.http
    }

    /// A Chat Completions request, answered through the Messages API.
    pub async fn chat(&self, call: ChatCall) -> Result<Reply, ApiError> {
        let chat = request_json(&call.body, &call.model)?;
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
            let mut err = provider_error(status.as_u16(), &body, self.http.display_url())
                .upstream_status(status.as_u16());
            if let Some(after) = retry_after {
                err = err.retry_after(after.as_secs().max(1));
            }
            tracing::warn!(status = err.status.as_u16(), error = %err.message, "anthropic provider refused");
            return Err(err);
        }
        if call.stream {
            let chunks = event_chunks(&self.http, response, &call.stats);
            let id = fresh_id("chatcmpl-");
            let translator = MessagesToChat::new(&call.model, &id, unix_now(), call.include_usage);
            return Ok(Reply::Stream(translate_stream(
                chunks,
                translator,
                call.stats,
                String::new(),
                None,
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
        if let (Some(prompt), Some(output)) = (
            completion["usage"]["prompt_tokens"].as_u64(),
            completion["usage"]["completion_tokens"].as_u64(),
        ) {
            call.stats.set_usage(Usage {
                prompt_tokens: prompt,
                completion_tokens: output,
                cached_tokens: completion["usage"]["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0),
            });
        }
        Ok(Reply::Complete(Bytes::from(completion.to_string())))
    }

    /// A Responses API request (`POST /v1/responses`, what Codex CLI sends),
    /// answered through [`AnthropicUpstream::chat`] in translation.
    pub async fn responses(&self, call: ResponsesCall) -> Result<Reply, ApiError> {
        responses_over_chat(call, |chat| self.chat(chat)).await
    }
}
