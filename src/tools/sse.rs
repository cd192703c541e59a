//! Chat Completions answers as SSE, for a streaming client of the tool loop:
//! the last answer as the chunks that would have carried it, and a whole
//! streamed answer read back as one `chat.completion`.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use crate::api::openai::ApiError;
use crate::api::sse::SseParser;
use crate::upstream::FrameStream;

/// An SSE comment: keeps a client's connection alive while tools run.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// A `chat.completion` as chunk frames ending in `[DONE]`; a usage chunk when
/// the client asked for one (`stream_options.include_usage`).
pub fn completion_chunks(completion: &Value, include_usage: bool) -> Vec<Bytes> {
    let base = |choices: Value| {
        json!({
            "id": completion["id"],
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": completion["model"],
            "choices": choices,
        })
    };
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut frames = Vec::with_capacity(4);
    let mut first = json!({"role": "assistant", "content": message["content"]});
    if let Some(calls) = message["tool_calls"].as_array() {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                c["index"] = json!(i);
                c
            })
            .collect();
        first["tool_calls"] = Value::Array(calls);
    }
    if message.get("refusal").is_some_and(|r| !r.is_null()) {
        first["refusal"] = message["refusal"].clone();
    }
    let data = |v: Value| Bytes::from(format!("data: {v}\n\n"));
    frames.push(data(base(
        json!([{"index": 0, "delta": first, "finish_reason": null}]),
    )));
    frames.push(data(base(
        json!([{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]),
    )));
    if include_usage && completion.get("usage").is_some_and(|u| !u.is_null()) {
        let mut usage = base(json!([]));
        usage["usage"] = completion["usage"].clone();
        frames.push(data(usage));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    frames
}

/// Reads a streamed Chat Completions answer to its end and puts it together
/// as one `chat.completion` (content, tool calls, finish reason, usage).
pub async fn collect(mut frames: FrameStream) -> Result<Value, ApiError> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    while let Some(frame) = frames.next().await {
        events.extend(parser.feed(&frame));
    }
    events.extend(parser.finish());
    let mut head = Map::new();
    let mut content = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = Value::Null;
    let mut usage = Value::Null;
    for event in events {
        if event.data.trim() == "[DONE]" {
            continue;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        if let Some(error) = chunk.get("error") {
            return Err(ApiError::bad_gateway(format!(
                "the upstream's stream ended with an error: {}",
                crate::support::redact::truncate(&error.to_string(), 500)
            )));
        }
        for key in ["id", "created", "model"] {
            if let Some(v) = chunk.get(key) {
                head.entry(key).or_insert_with(|| v.clone());
            }
        }
        if chunk.get("usage").is_some_and(|u| !u.is_null()) {
            usage = chunk["usage"].clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str() {
            content.push_str(text);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap_or(0) as usize;
            if i >= super::MAX_CALLS_PER_ANSWER * 4 {
                continue;
            }
            while calls.len() <= i {
                calls.push(json!({"id": "", "type": "function",
                                  "function": {"name": "", "arguments": ""}}));
            }
            let slot = &mut calls[i];
            if let Some(id) = call["id"].as_str() {
                slot["id"] = json!(id);
            }
            if let Some(name) = call["function"]["name"].as_str() {
                let name = format!("{}{name}", slot["function"]["name"].as_str().unwrap_or(""));
                slot["function"]["name"] = json!(name);
            }
            if let Some(args) = call["function"]["arguments"].as_str() {
                let args = format!(
                    "{}{args}",
                    slot["function"]["arguments"].as_str().unwrap_or("")
                );
                slot["function"]["arguments"] = json!(args);
            }
        }
    }
    let mut message = json!({"role": "assistant", "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { json!(content) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut completion = Value::Object(head);
    completion["object"] = json!("chat.completion");
    completion["choices"] = json!([{"index": 0, "message": message, "finish_reason": finish}]);
    completion["usage"] = usage;
    Ok(completion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_and_back_give_the_same_answer() {
        let completion = json!({"id": "c1", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        let frames = completion_chunks(&completion, true);
        assert_eq!(frames.len(), 4);
        let stream: FrameStream = Box::pin(futures_util::stream::iter(frames));
        let back = collect(stream).await.unwrap();
        assert_eq!(
            back["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(back["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(back["usage"]["total_tokens"], 7);
    }
}
