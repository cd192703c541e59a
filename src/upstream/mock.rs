//! The built-in offline upstream: deterministic, instant, no network.
//!
//! It echoes the last user message, streams it word by word and reports usage
//! (one token per whitespace-separated word), so the whole toolkit can be tried,
//! tested and benchmarked on a machine with no model and no key. Its Responses
//! API is in [`super::mock_responses`].

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChatCall, FrameStream, Reply, ResponsesCall, unix_now};
use crate::api::openai::{ApiError, Usage};

#[derive(Default)]
pub struct MockUpstream {
    counter: AtomicU64,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Value,
}

/// The text of a message's `content`: a string, or the text parts of an array.
pub(super) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

pub(super) fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Splits text into stream pieces: each word with the whitespace before it.
pub(super) fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && in_word {
            out.push(&text[start..i]);
            start = i;
            in_word = false;
        } else if !c.is_whitespace() {
            in_word = true;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

impl MockUpstream {
    pub fn new() -> MockUpstream {
        MockUpstream::default()
    }

    /// A `POST /v1/responses` request, answered offline.
    pub fn responses(&self, call: ResponsesCall) -> Result<Reply, ApiError> {
        super::mock_responses::respond(&self.counter, call)
    }

    pub fn chat(&self, call: ChatCall) -> Result<Reply, ApiError> {
        #[derive(Deserialize)]
        struct Req {
            messages: Vec<Message>,
        }
        let req: Req = serde_json::from_slice(&call.body).map_err(|e| {
            ApiError::bad_request(format!("'messages' is not a list of messages: {e}"))
                .param("messages")
        })?;
        let prompt_tokens: u64 = req
            .messages
            .iter()
            .map(|m| count_words(&content_text(&m.content)))
            .sum();
        let reply = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| content_text(&m.content))
            .unwrap_or_default();
        let usage = Usage {
            prompt_tokens,
            completion_tokens: count_words(&reply),
            cached_tokens: 0,
        };
        call.stats.set_usage(usage);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("chatcmpl-mock-{n}");
        let created = unix_now();
        let usage_json = json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        });
        if !call.stream {
            let body = json!({
                "id": id, "object": "chat.completion", "created": created, "model": call.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": usage_json,
            });
            return Ok(Reply::Complete(Bytes::from(body.to_string())));
        }
        let chunk = |delta: Value, finish: Value| {
            let c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": call.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            Bytes::from(format!("data: {c}\n\n"))
        };
        let mut frames = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        frames.extend(
            pieces(&reply)
                .into_iter()
                .map(|p| chunk(json!({"content": p}), Value::Null)),
        );
        frames.push(chunk(json!({}), json!("stop")));
        if call.include_usage {
            let c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": call.model,
                "choices": [], "usage": usage_json,
            });
            frames.push(Bytes::from(format!("data: {c}\n\n")));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let stream: FrameStream = Box::pin(futures_util::stream::iter(frames));
        Ok(Reply::Stream(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_keep_the_text() {
        let text = "Hello  brave\nnew world ";
        assert_eq!(pieces(text).concat(), text);
        assert_eq!(
            pieces(text),
            vec!["Hello", "  brave", "\nnew", " world", " "]
        );
        assert!(pieces("").is_empty());
    }

    #[test]
    fn content_parts_are_joined() {
        let v = json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(&v), "a b");
    }
}
