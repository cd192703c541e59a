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

use super::http::{ChunkStream, HttpUpstream};
use super::{
    ChatCall, CompletionsCall, ExchangeStats, FrameStream, Reply, ResponsesCall, unix_now,
};
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
    /// Cached input tokens (within the prompt tokens), once reported.
    fn cached(&self) -> u64 {
        0
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
    fn cached(&self) -> u64 {
        StreamTranslator::cached(self)
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
    fn cached(&self) -> u64 {
        MessagesToChat::cached(self)
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

/// A client's request body for translation: a JSON object, its `model` the
/// routed one when it names none.
pub(super) fn request_json(body: &[u8], model: &str) -> Result<Value, ApiError> {
    let invalid = |what: String| ApiError::bad_request(what).code("invalid_request");
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("request body is not valid JSON: {e}")))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| invalid("the request body must be a JSON object".into()))?;
    if object.get("model").is_none_or(Value::is_null) {
        object.insert("model".into(), Value::String(model.to_string()));
    }
    Ok(value)
}

/// A fresh id: `prefix` and 32 random hex digits.
pub(super) fn fresh_id(prefix: &str) -> String {
    format!(
        "{prefix}{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// A provider's streamed answer as chunks, each SSE event bounded by the
/// provider's `max_event_bytes` (a longer one ends the stream with an error).
pub(super) fn event_chunks(
    http: &HttpUpstream,
    response: super::http::Answer,
    stats: &Arc<ExchangeStats>,
) -> ChunkStream {
    super::bounded::limit_events(
        http.chunks(response, stats.clone()),
        http.max_event_bytes(),
        http.display_url().to_string(),
    )
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
                    cached_tokens: self.translator.cached(),
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
                    let between_events = !st.parser.mid_event();
                    let events = st.parser.feed(&chunk);
                    if between_events
                        && events.is_empty()
                        && !st.parser.mid_event()
                        && chunk.starts_with(b":")
                    {
                        // Comments alone (the server-tool loop's keep-alives
                        // and count) go on to the client as they are.
                        out.push_str(&String::from_utf8_lossy(&chunk));
                    }
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
pub async fn responses_over_chat<F, Fut>(call: ResponsesCall, chat: F) -> Result<Reply, ApiError>
where
    F: FnOnce(ChatCall) -> Fut,
    Fut: Future<Output = Result<Reply, ApiError>>,
{
    let request = request_json(&call.body, &call.model)?;
    let translated = responses_request_to_chat(&request)?;
    let id = fresh_id("resp_");
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
        headers: Arc::new(call.headers),
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

/// Chat chunk frames in, legacy `text_completion` chunks out (the usage was
/// already counted by the Chat path underneath).
struct ChatToCompletions {
    done: bool,
}

impl Translate for ChatToCompletions {
    fn translate_event(&mut self, event: &SseEvent) -> Vec<String> {
        if event.data.trim() == "[DONE]" {
            self.done = true;
            return vec!["data: [DONE]\n\n".to_string()];
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
            return Vec::new();
        };
        crate::api::completions::chunk_to_completion(&chunk)
            .map(|out| format!("data: {out}\n\n"))
            .into_iter()
            .collect()
    }
    fn finish(&mut self) -> Vec<String> {
        Vec::new()
    }
    fn abort(&mut self, message: &str, code: Option<&str>) -> Vec<String> {
        self.done = true;
        let error = serde_json::json!({"error": {"message": message, "type": "upstream_error",
            "param": null, "code": code}});
        vec![format!("data: {error}\n\n")]
    }
    fn is_done(&self) -> bool {
        self.done
    }
}

/// Serves a legacy completions request through `chat`, a provider's Chat
/// Completions path ([`crate::api::completions`]): refused with a 400 naming
/// the field where the translation cannot honour it.
pub(super) async fn completions_over_chat<F, Fut>(
    call: CompletionsCall,
    chat: F,
) -> Result<Reply, ApiError>
where
    F: FnOnce(ChatCall) -> Fut,
    Fut: Future<Output = Result<Reply, ApiError>>,
{
    let request = request_json(&call.body, &call.model)?;
    let translated = crate::api::completions::completions_to_chat(&request)?;
    let body = Bytes::from(serde_json::to_vec(&translated).expect("JSON serialises"));
    let stats = call.stats.clone();
    let reply = chat(ChatCall {
        body,
        model: call.model,
        stream: call.stream,
        include_usage: call.include_usage,
        stats: call.stats,
        headers: Arc::new(call.headers),
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
                         the completions API's shape",
                    )
                })?;
            Reply::Complete(Bytes::from(
                crate::api::completions::chat_to_completion(&completion).to_string(),
            ))
        }
        Reply::Stream(frames) => Reply::Stream(translate_stream(
            Box::pin(frames.map(Ok)),
            ChatToCompletions { done: false },
            stats,
            String::new(),
            None,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::responses::ToolNames;
    use serde_json::json;

    /// Drives `translator` over a stream that sends `first`, then breaks.
    async fn run_broken<T: Translate>(
        first: &'static [u8],
        translator: T,
    ) -> (String, Arc<ExchangeStats>) {
        let stats = Arc::new(ExchangeStats::default());
        let chunks: ChunkStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(first)),
            Err(ApiError::bad_gateway("connection reset")),
        ]));
        let frames = translate_stream(chunks, translator, stats.clone(), String::new(), None);
        let frames: Vec<Bytes> = frames.collect().await;
        let text = frames
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect();
        (text, stats)
    }

    /// A Chat stream: what came through, then one error frame and one `[DONE]`, last.
    fn assert_chat_ends_with_one_error(text: &str) {
        assert!(text.contains("\"content\":\"hi\""), "{text}");
        assert!(text.contains("connection reset"), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(text.matches("[DONE]").count(), 1, "{text}");
    }

    #[tokio::test]
    async fn a_broken_stream_ends_with_one_terminal_frame_whatever_the_translator() {
        // Responses upstream → Chat chunks.
        let (text, _) = run_broken(
            b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\ndata: {\"type\":\"resp",
            StreamTranslator::new("m", "chatcmpl-1", 1, false),
        )
        .await;
        assert_chat_ends_with_one_error(&text);

        // Anthropic provider → Chat chunks, the usage seen so far recorded.
        let (text, stats) = run_broken(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":2}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\ndata: {\"ty",
            MessagesToChat::new("m", "chatcmpl-1", 1, false),
        )
        .await;
        assert_chat_ends_with_one_error(&text);
        assert_eq!(stats.usage().prompt_tokens, 2);

        // Chat chunks → Responses events: one response.failed, last.
        let shell = ResponseShell::new("resp_1", 1, "m", &serde_json::Map::new());
        let (text, _) = run_broken(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            ChatToResponses::new(shell, ToolNames::default()),
        )
        .await;
        assert!(text.contains("\"delta\":\"hi\""), "{text}");
        assert_eq!(text.matches("event: response.failed").count(), 1, "{text}");
        let last = text.rsplit("event: ").next().unwrap();
        assert!(
            last.starts_with("response.failed") && last.contains("connection reset"),
            "{text}"
        );
        assert!(!text.contains("response.completed"), "{text}");
    }

    #[tokio::test]
    async fn the_first_frames_go_out_at_once_then_keep_alives_while_the_upstream_is_silent() {
        let silent: ChunkStream = Box::pin(futures_util::stream::pending());
        let stats = Arc::new(ExchangeStats::default());
        let mut translator = StreamTranslator::new("m", "chatcmpl-1", 1, false);
        let first = translator.start().concat();
        let every = Some(Duration::from_millis(5));
        let mut frames = translate_stream(silent, translator, stats, first, every);
        let first = frames.next().await.unwrap();
        let first: Value = serde_json::from_str(
            std::str::from_utf8(&first)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap()
                .trim(),
        )
        .unwrap();
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        for _ in 0..3 {
            assert_eq!(frames.next().await.unwrap(), KEEPALIVE_FRAME.as_bytes());
        }
    }

    #[tokio::test]
    async fn comments_between_events_go_on_and_a_colon_inside_an_event_does_not() {
        let chunks: Vec<Result<Bytes, ApiError>> = vec![
            Ok(Bytes::from_static(b": keep-alive\n\n")),
            Ok(Bytes::from_static(
                b"data: {\"choices\":[{\"delta\":{\"content\"",
            )),
            // The same event goes on: not a comment.
            Ok(Bytes::from_static(b":\"hi\"}}]}\n\n")),
            Ok(Bytes::from_static(b": x-warden-tool-rounds 2\n\n")),
            Ok(Bytes::from_static(b"data: [DONE]\n\n")),
        ];
        let shell = ResponseShell::new("resp_1", 1, "m", &serde_json::Map::new());
        let frames = translate_stream(
            Box::pin(futures_util::stream::iter(chunks)),
            ChatToResponses::new(shell, ToolNames::default()),
            Arc::new(ExchangeStats::default()),
            String::new(),
            None,
        );
        let text: String = frames
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert!(text.starts_with(": keep-alive\n\n"), "{text}");
        assert!(text.contains("\n\n: x-warden-tool-rounds 2\n\n"), "{text}");
        assert!(!text.contains(":\"hi\"}}]}"), "{text}");
        assert!(text.contains("\"delta\":\"hi\""), "{text}");
    }

    #[test]
    fn event_names_fill_in_a_missing_type() {
        let ev = SseEvent {
            event: Some("ping".into()),
            data: "{}".into(),
        };
        assert_eq!(event_json(&ev).unwrap()["type"], "ping");
        let named = SseEvent {
            event: Some("ping".into()),
            data: "{\"type\":\"error\"}".into(),
        };
        assert_eq!(
            event_json(&named).unwrap()["type"],
            "error",
            "the data's own type wins"
        );
    }

    #[test]
    fn request_bodies_must_be_objects_and_get_the_routed_model() {
        assert_eq!(request_json(b"{}", "m").unwrap(), json!({"model": "m"}));
        assert_eq!(
            request_json(br#"{"model":"x"}"#, "m").unwrap(),
            json!({"model": "x"})
        );
        for bad in [&b"[]"[..], b"5", b"{"] {
            assert_eq!(request_json(bad, "m").unwrap_err().status, 400);
        }
        assert!(fresh_id("resp_").starts_with("resp_"));
        assert_eq!(fresh_id("resp_").len(), 5 + 32);
    }
}
