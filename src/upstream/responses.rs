//! A Responses API upstream (`upstream.api = "responses"`), the way ChatMock
//! fronts Codex: clients speak Chat Completions, the upstream receives a
//! Responses request (`POST {base}/responses`) whose `instructions` come from the
//! prompt cache, and its answer is translated back.
//!
//! - Non-streaming: the `response` object becomes a `chat.completion` (an
//!   upstream that streams anyway is read to its `response.completed`).
//! - Streaming: the upstream's SSE is parsed incrementally ([`SseParser`]) and
//!   each event translated at once ([`StreamTranslator`]) into
//!   `chat.completion.chunk` frames, sent as they arrive. The client gets exactly
//!   one `finish_reason` (or one error frame), the usage chunk when it asked for
//!   it, then `[DONE]`. A broken or stalled upstream stream ends with an error
//!   frame and `[DONE]`, never a hang.
//!
//! Sending, retries and timeouts are the same as for the Chat Completions
//! upstream ([`super::http`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use super::http::{HttpUpstream, UpstreamUrl};
use super::translated::{event_chunks, event_json, fresh_id, request_json, translate_stream};
use super::{ChatCall, Reply, unix_now};
use crate::api::metrics::Metrics;
use crate::api::openai::{ApiError, Usage};
use crate::api::responses::{
    StreamTranslator, TranslateOptions, chat_to_responses, instructions_for, responses_to_chat,
};
use crate::api::sse::SseParser;
use crate::home::config::{Config, ProviderSettings};
use crate::prompts::PromptStore;

pub struct ResponsesUpstream {
    http: HttpUpstream,
    responses_url: UpstreamUrl,
    prompts: PromptStore,
    options: TranslateOptions,
}

impl ResponsesUpstream {
    pub fn new(
        provider: &ProviderSettings,
        config: &Config,
        metrics: Arc<Metrics>,
        prompts: PromptStore,
    ) -> Result<ResponsesUpstream, super::UpstreamError> {
        let http = HttpUpstream::new(provider, config, metrics)?;
        Ok(ResponsesUpstream {
            responses_url: http.url("/responses"),
            http,
            prompts,
            options: TranslateOptions {
                enable_web_search: config.features.enable_web_search,
            },
        })
    }

    /// The shared HTTP side, for `/v1/responses` passthrough.
    pub fn http(&self) -> &HttpUpstream {
        &self.http
    }

    /// A Chat Completions request, answered through the Responses API.
    pub async fn chat(&self, call: ChatCall) -> Result<Reply, ApiError> {
        let chat = request_json(&call.body, &call.model)?;
        let prompt = self.prompts.get(instructions_for(&call.model)).await;
        let request =
            chat_to_responses(&chat, &prompt.text, &self.options).map_err(ApiError::from)?;
        let body = Bytes::from(serde_json::to_vec(&request).expect("JSON serialises"));
        let response = self
            .http
            .send(&self.responses_url, &body, &call.stats, &call.headers)
            .await?;
        if !response.status().is_success() {
            return Err(self.http.passthrough_error(response).await);
        }
        if call.stream {
            let chunks = event_chunks(&self.http, response, &call.stats);
            let id = fresh_id("chatcmpl-");
            let mut translator =
                StreamTranslator::new(&call.model, &id, unix_now(), call.include_usage);
            let first = translator.start().concat();
            return Ok(Reply::Stream(translate_stream(
                chunks,
                translator,
                call.stats,
                first,
                Some(KEEPALIVE),
            )));
        }
        let streamed = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let body = self.http.read_body(response, &call.stats).await?;
        let resp = if streamed {
            final_response(&body, self.http.display_url())?
        } else {
            serde_json::from_slice::<Value>(&body)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    ApiError::bad_gateway(format!(
                        "upstream {} answered something that is not a Responses API object",
                        self.http.display_url()
                    ))
                })?
        };
        if resp["status"] == "failed" {
            return Err(failed(&resp["error"], self.http.display_url()));
        }
        let completion = responses_to_chat(&resp, &call.model);
        if let Some(usage) = responses_usage_of(&resp) {
            call.stats.set_usage(usage);
        }
        Ok(Reply::Complete(Bytes::from(completion.to_string())))
    }
}

/// Token counts from a Responses object or stream event (`usage` or
/// `response.usage`, with `input_tokens` / `output_tokens`).
fn responses_usage_of(value: &Value) -> Option<Usage> {
    let usage = if value["response"]["usage"].is_object() {
        &value["response"]["usage"]
    } else {
        &value["usage"]
    };
    Some(Usage {
        prompt_tokens: usage["input_tokens"].as_u64()?,
        completion_tokens: usage["output_tokens"].as_u64()?,
        cached_tokens: usage["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    })
}

/// [`responses_usage_of`] on raw JSON, for the passthrough relay of `/v1/responses`.
pub fn responses_usage(json: &[u8]) -> Option<Usage> {
    responses_usage_of(&serde_json::from_slice(json).ok()?)
}

/// A `response.failed` (or `error`) as the client's error.
fn failed(error: &Value, display_url: &str) -> ApiError {
    let message = error["message"].as_str().map_or_else(
        || format!("upstream {display_url} reported that the response failed"),
        |m| format!("upstream {display_url} reported: {m}"),
    );
    tracing::warn!(error = %message, "upstream response failed");
    ApiError::bad_gateway(message)
}

/// The final `response` object of a whole SSE body (an upstream that streams
/// although the request said `stream: false`).
fn final_response(body: &[u8], display_url: &str) -> Result<Value, ApiError> {
    let mut parser = SseParser::new();
    let mut events = parser.feed(body);
    events.extend(parser.finish());
    for event in events.iter().filter_map(event_json) {
        match event["type"].as_str().unwrap_or("") {
            "response.completed" | "response.incomplete" => return Ok(event["response"].clone()),
            "response.failed" => return Err(failed(&event["response"]["error"], display_url)),
            "error" if event["error"].is_object() => {
                return Err(failed(&event["error"], display_url));
            }
            "error" => return Err(failed(&event, display_url)),
            _ => {}
        }
    }
    Err(ApiError::bad_gateway(format!(
        "upstream {display_url} closed the stream before response.completed"
    )))
}

/// While the upstream sends nothing the client can use (a reasoning model
/// thinking), a translated stream sends an SSE comment this often, so clients
/// and intermediaries with read timeouts keep the connection.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_from_events_and_objects() {
        let event = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 4}}});
        let want = Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_tokens: 0,
        };
        assert_eq!(responses_usage(event.to_string().as_bytes()), Some(want));
        let object =
            json!({"object": "response", "usage": {"input_tokens": 3, "output_tokens": 4}});
        assert_eq!(responses_usage(object.to_string().as_bytes()), Some(want));
        assert_eq!(responses_usage(br#"{"usage":null}"#), None);
    }

    #[test]
    fn final_response_of_a_streamed_body() {
        let body =
            b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{}}\n\n\
event: response.completed\ndata: {\"response\":{\"id\":\"resp_1\",\"status\":\"completed\"}}\n\n";
        let resp = final_response(body, "u").unwrap();
        assert_eq!(resp["id"], "resp_1");
        let failed = b"data: {\"type\":\"response.failed\",\"response\":{\"error\":{\"message\":\"boom\"}}}\n\n";
        let err = final_response(failed, "u").unwrap_err();
        assert!(err.message.contains("boom"), "{}", err.message);
        assert!(final_response(b"data: {\"type\":\"response.created\"}\n\n", "u").is_err());
    }
}
