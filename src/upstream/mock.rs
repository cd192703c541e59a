//! The built-in offline upstream: deterministic, instant, no network.
//!
//! It echoes the last user message, streams it word by word and reports usage
//! (one token per whitespace-separated word), so the whole toolkit can be tried,
//! tested and benchmarked on a machine with no model and no key. Its Responses
//! API is in [`super::mock_responses`].
//!
//! It calls tools by one deterministic rule, the same on both APIs, so tool
//! loops (a client's, or the gateway's server tools) can be tried offline: a
//! last user message `call NAME {json}` naming an offered function tool is a
//! call of it with those arguments ([`tool_call`]), and an answer that follows
//! tool results says `NAME returned: OUTPUT` for each.

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
    /// An assistant message's calls (to name the tool a result is for).
    #[serde(default)]
    tool_calls: Value,
    /// A `tool` message's call.
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// The mock's tool rule (both APIs): `text` (the last user message) reading
/// `call NAME REST` with `NAME` among `functions` is a call of `NAME`, its
/// arguments `REST` when that is a JSON object, else `{}`. `forced` (what
/// `tool_choice` names) makes a call of that function whatever the text says.
/// Returns (name, arguments).
pub(super) fn tool_call(
    text: &str,
    functions: &[&str],
    forced: Option<&str>,
) -> Option<(String, String)> {
    let asked = text.trim_start().strip_prefix("call ").and_then(|rest| {
        let rest = rest.trim_start();
        let name = rest.split_whitespace().next()?;
        functions
            .contains(&name)
            .then(|| (name, rest[name.len()..].trim()))
    });
    let (name, rest) = match (asked, forced) {
        (Some((name, rest)), None) => (name, rest),
        (Some((name, rest)), Some(forced)) if name == forced => (name, rest),
        (_, Some(forced)) => (forced, text.trim()),
        (None, None) => return None,
    };
    let arguments = match serde_json::from_str::<Value>(rest) {
        Ok(args @ Value::Object(_)) => args.to_string(),
        _ => "{}".to_string(),
    };
    Some((name.to_string(), arguments))
}

/// What the Chat mock answers: text, or a call of one tool (name, arguments).
enum ChatAnswer {
    Text(String),
    Call(String, String),
}

/// The Chat Completions side of the tool rule: after `tool` messages, what
/// each returned; else a call when [`tool_call`] finds one; else the echo.
fn decide_chat(messages: &[Message], tools: &Value, tool_choice: &Value) -> ChatAnswer {
    let results: Vec<&Message> = messages
        .iter()
        .rev()
        .take_while(|m| m.role == "tool")
        .collect();
    if !results.is_empty() {
        let name_of = |id: Option<&str>| {
            messages
                .iter()
                .filter_map(|m| m.tool_calls.as_array())
                .flatten()
                .find(|c| c.get("id").and_then(Value::as_str) == id)
                .and_then(|c| c.pointer("/function/name"))
                .and_then(Value::as_str)
                .unwrap_or("tool")
        };
        let text = results
            .iter()
            .rev()
            .map(|m| {
                format!(
                    "{} returned: {}",
                    name_of(m.tool_call_id.as_deref()),
                    content_text(&m.content)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        return ChatAnswer::Text(text);
    }
    let text = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| content_text(&m.content))
        .unwrap_or_default();
    // Only function tools are called.
    let functions: Vec<&str> = tools
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == "function")
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
        .collect();
    if functions.is_empty() {
        return ChatAnswer::Text(text);
    }
    let forced = match tool_choice {
        Value::String(choice) if choice == "none" => return ChatAnswer::Text(text),
        Value::String(choice) if choice == "required" => functions.first().copied(),
        Value::Object(choice) if choice.get("type") == Some(&json!("function")) => choice
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .filter(|name| functions.contains(name)),
        _ => None,
    };
    match tool_call(&text, &functions, forced) {
        Some((name, arguments)) => ChatAnswer::Call(name, arguments),
        None => ChatAnswer::Text(text),
    }
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
            #[serde(default)]
            tools: Value,
            #[serde(default)]
            tool_choice: Value,
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
        let answer = decide_chat(&req.messages, &req.tools, &req.tool_choice);
        let completion_tokens = match &answer {
            ChatAnswer::Text(text) => count_words(text),
            ChatAnswer::Call(_, arguments) => count_words(arguments).max(1),
        };
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
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
        let (message, finish) = match &answer {
            ChatAnswer::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
            ChatAnswer::Call(name, arguments) => (
                json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": format!("call_mock_{n}"), "type": "function",
                    "function": {"name": name, "arguments": arguments}}]}),
                "tool_calls",
            ),
        };
        if !call.stream {
            let body = json!({
                "id": id, "object": "chat.completion", "created": created, "model": call.model,
                "choices": [{"index": 0, "message": message,
                             "logprobs": null, "finish_reason": finish}],
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
        let mut frames = Vec::new();
        match &answer {
            ChatAnswer::Text(text) => {
                frames.push(chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                ));
                frames.extend(
                    pieces(text)
                        .into_iter()
                        .map(|p| chunk(json!({"content": p}), Value::Null)),
                );
            }
            ChatAnswer::Call(name, arguments) => {
                frames.push(chunk(
                    json!({"role": "assistant", "content": null, "tool_calls": [{
                        "index": 0, "id": format!("call_mock_{n}"), "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                ));
                frames.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
                    Value::Null,
                ));
            }
        }
        frames.push(chunk(json!({}), json!(finish)));
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

    fn decided(request: Value) -> String {
        #[derive(Deserialize)]
        struct Req {
            messages: Vec<Message>,
            #[serde(default)]
            tools: Value,
            #[serde(default)]
            tool_choice: Value,
        }
        let req: Req = serde_json::from_value(request).unwrap();
        match decide_chat(&req.messages, &req.tools, &req.tool_choice) {
            ChatAnswer::Text(text) => text,
            ChatAnswer::Call(name, arguments) => format!("CALL {name} {arguments}"),
        }
    }

    #[test]
    fn chat_calls_a_tool_only_when_asked_by_name_and_reads_the_results() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
        let user = |text: &str| json!([{"role": "user", "content": text}]);
        assert_eq!(
            decided(
                json!({"messages": user("call get_weather {\"city\": \"Oslo\"}"), "tools": tools})
            ),
            r#"CALL get_weather {"city":"Oslo"}"#
        );
        assert_eq!(
            decided(json!({"messages": user("call get_weather now"), "tools": tools})),
            "CALL get_weather {}"
        );
        // Not offered, tools off, or not asked: echoed.
        for request in [
            json!({"messages": user("call nope {}"), "tools": tools}),
            json!({"messages": user("call get_weather {}"), "tools": tools, "tool_choice": "none"}),
            json!({"messages": user("call get_weather {}")}),
            json!({"messages": user("weather?"), "tools": tools}),
        ] {
            let text = request["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(decided(request), text);
        }
        assert_eq!(
            decided(
                json!({"messages": user("weather?"), "tools": tools, "tool_choice": "required"})
            ),
            "CALL get_weather {}"
        );
        let after = json!([
            {"role": "user", "content": "call get_weather {}"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "{\"temp\":21}"},
            {"role": "tool", "tool_call_id": "b", "content": "noon"},
        ]);
        assert_eq!(
            decided(json!({"messages": after, "tools": tools})),
            "get_weather returned: {\"temp\":21}\nget_time returned: noon"
        );
    }
}
