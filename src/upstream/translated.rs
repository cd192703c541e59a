//! Streams answered in translation: what the Responses, Anthropic and
//! Responses-over-Chat paths share.
//!
//! [`translate_stream`] reads an upstream's SSE as it arrives, hands each event
//! to a [`Translate`] (one of the pure translators in [`crate::api`]) and sends
//! what it returns at once. Whatever happens, the client's stream ends with the
//! translator's one terminal outcome: a broken upstream becomes its error
//! frame ([`Translate::abort`]), an early end its `finish`. Once the translator
//! is done, the upstream is dropped (nothing after the end is read).
//!
//! [`responses_over_chat`] serves a Responses API request through a provider
//! that speaks Chat Completions (today: `api = "anthropic"`, whose Chat path
//! then speaks Messages): the request is translated to Chat
//! ([`responses_request_to_chat`]), answered by the provider's own Chat path
//! (its errors, retries, usage and routing unchanged), and the answer turned
//! back into a `response` object or the Responses event sequence
//! ([`ChatToResponses`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::http::ChunkStream;
use super::{ChatCall, ExchangeStats, FrameStream, Reply, ResponsesCall, unix_now};
use crate::api::anthropic::MessagesToChat;
use crate::api::openai::{ApiError, Usage};
use crate::api::responses::{
    ChatToResponses, ResponseShell, StreamTranslator, chat_to_response, responses_request_to_chat,
};
use crate::api::sse::{SseEvent, SseParser};

/// The event's JSON, with `type` taken from the `event:` field when the data
/// lacks it. `None` for `[DONE]` and for data that is not a JSON object.
pub(super) fn event_json(event: &SseEvent) -> Option<Value> {
    let mut value: Value = serde_json::from_str(&event.data).ok()?;
    let object = value.as_object_mut()?;
    if !object.contains_key("type") {
        if let Some(name) = &event.event {
            object.insert("type".into(), Value::String(name.clone()));
        }
    }
    Some(value)
}

/// A stream translator as [`translate_stream`] drives it. Every `String` it
/// returns is one or more complete SSE frames.
pub(super) trait Translate: Send + 'static {
    /// The frames for one upstream event.
    fn translate_event(&mut self, event: &SseEvent) -> Vec<String>;
    /// The upstream's stream ended.
    fn finish(&mut self) -> Vec<String>;
    /// The upstream's stream broke (or stalled) with this error.
    fn abort(&mut self, message: &str, code: Option<&str>) -> Vec<String>;
    /// The terminal frames were produced: nothing more is read.
    fn is_done(&self) -> bool;
    /// `(prompt, completion)` tokens, once the upstream reported them.
    fn usage(&self) -> Option<(u64, u64)> {
        None
    }
}

impl Translate for StreamTranslator {
    fn translate_event(&mut self, event: &SseEvent) -> Vec<String> {
        let Some(event) = event_json(event) else {
            return Vec::new();
        };
        if event["type"] == "response.failed" {
            tracing::warn!(
                error = event["response"]["error"]["message"].as_str().unwrap_or(""),
                "upstream response failed mid-stream"
            );
        }
        self.on_event(&event)
    }
    fn finish(&mut self) -> Vec<String> {
        StreamTranslator::finish(self)
    }
    fn abort(&mut self, message: &str, code: Option<&str>) -> Vec<String> {
        StreamTranslator::abort(self, message, code)
    }
    fn is_done(&self) -> bool {
        StreamTranslator::is_done(self)
    }
    fn usage(&self) -> Option<(u64, u64)> {
        StreamTranslator::usage(self)
    }
}

impl Translate for MessagesToChat {
    fn translate_event(&mut self, event: &SseEvent) -> Vec<String> {
        let Some(event) = event_json(event) else {
            return Vec::new();
        };
        if event["type"] == "error" {
            tracing::warn!(
                error = event["error"]["message"].as_str().unwrap_or(""),
                kind = event["error"]["type"].as_str().unwrap_or(""),
                "anthropic provider sent an error event mid-stream"
            );
        }
        self.on_event(&event)
    }
    fn finish(&mut self) -> Vec<String> {
        MessagesToChat::finish(self)
    }
    fn abort(&mut self, message: &str, code: Option<&str>) -> Vec<String> {
        MessagesToChat::abort(self, message, code)
    }
    fn is_done(&self) -> bool {
        MessagesToChat::is_done(self)
    }
    fn usage(&self) -> Option<(u64, u64)> {
        MessagesToChat::usage(self)
    }
}

/// Chat chunk frames in, Responses events out (the usage was already counted
/// by the Chat path underneath).
impl Translate for ChatToResponses {
    fn translate_event(&mut self, event: &SseEvent) -> Vec<String> {
        self.on_data(&event.data)
    }
    fn finish(&mut self) -> Vec<String> {
        ChatToResponses::finish(self)
    }
    fn abort(&mut self, message: &str, code: Option<&str>) -> Vec<String> {
        ChatToResponses::abort(self, message, code)
    }
    fn is_done(&self) -> bool {
        ChatToResponses::is_done(self)
    }
}

/// The SSE comment sent as keep-alive; clients ignore comment lines.
pub(super) const KEEPALIVE_FRAME: &str = ": keep-alive\n\n";

/// Translates the upstream's event stream frame by frame, as it arrives.
/// `first` goes out at once (when not empty); with `keepalive`, an SSE comment
/// goes out whenever nothing else did for that long (a reasoning model
/// thinking), so clients and intermediaries with read timeouts keep the
/// connection. Usage is recorded in `stats` as the translator learns it.
pub(super) fn translate_stream<T: Translate>(
    chunks: ChunkStream,
    translator: T,
    stats: Arc<ExchangeStats>,
    first: String,
    keepalive: Option<Duration>,
) -> FrameStream {
    struct State<T> {
        chunks: ChunkStream,
        parser: SseParser,
        translator: T,
        stats: Arc<ExchangeStats>,
    }
    impl<T: Translate> State<T> {
        fn translate(&mut self, events: Vec<SseEvent>, out: &mut String) {
            for event in &events {
                for frame in self.translator.translate_event(event) {
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
    let rest = futures_util::stream::unfold(state, move |mut st| async move {
        let mut out = String::new();
        while out.is_empty() {
            if st.translator.is_done() {
                // Terminal frames were sent: stop reading (dropping the upstream).
                return None;
            }
            // `next()` is cancel-safe: a keep-alive tick loses no chunk.
            let next = match keepalive {
                Some(every) => match tokio::time::timeout(every, st.chunks.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        out.push_str(KEEPALIVE_FRAME);
                        break;
                    }
                },
                None => st.chunks.next().await,
            };
            match next {
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
    });
    if first.is_empty() {
        return Box::pin(rest);
    }
    Box::pin(futures_util::stream::once(async move { Bytes::from(first) }).chain(rest))
}

/// Serves a Responses API request through `chat`, a provider's Chat
/// Completions path (see the module documentation).
pub(super) async fn responses_over_chat<F, Fut>(
    call: ResponsesCall,
    chat: F,
) -> Result<Reply, ApiError>
where
    F: FnOnce(ChatCall) -> Fut,
    Fut: Future<Output = Result<Reply, ApiError>>,
{
    let request: Value = serde_json::from_slice(&call.body).map_err(|e| {
        ApiError::bad_request(format!("request body is not valid JSON: {e}"))
            .code("invalid_request")
    })?;
    let translated = responses_request_to_chat(&request)?;
    let id = format!("resp_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let shell = ResponseShell::new(
        &id,
        unix_now(),
        &call.model,
        request
            .as_object()
            .expect("the translation accepted an object"),
    );
    let body = Bytes::from(serde_json::to_vec(&translated.body).expect("JSON serialises"));
    let stats = call.stats.clone();
    let reply = chat(ChatCall {
        body,
        model: call.model,
        stream: call.stream,
        include_usage: call.stream,
        stats: call.stats,
        headers: call.headers,
    })
    .await?;
    Ok(match reply {
        Reply::Complete(body) => {
            let completion = serde_json::from_slice::<Value>(&body)
                .ok()
                .filter(|c| c["choices"].is_array())
                .ok_or_else(|| {
                    ApiError::bad_gateway(
                        "the provider's answer is not a chat.completion; cannot answer in \
                         the Responses API's shape",
                    )
                })?;
            Reply::Complete(Bytes::from(
                chat_to_response(&completion, &shell, &translated.tools).to_string(),
            ))
        }
        Reply::Stream(frames) => Reply::Stream(translate_stream(
            Box::pin(frames.map(Ok)),
            ChatToResponses::new(shell, translated.tools),
            stats,
            String::new(),
            None,
        )),
    })
}
