//! The built-in offline upstream's Responses API (`POST /v1/responses` with
//! `upstream.url = "mock"`): deterministic, instant, no network.
//!
//! What it answers, from the last item of `input`:
//! - a tool result (`function_call_output`): the text `NAME returned: OUTPUT`;
//! - a user message whose text starts with `call NAME`, where `NAME` is one of
//!   the request's `function` tools (and `tool_choice` is not `"none"`): a
//!   `function_call` of `NAME`, its arguments the rest of the text when that is
//!   a JSON object, else `{}`. `tool_choice` naming a function (or `"required"`,
//!   which picks the first function tool) forces the call the same way;
//! - otherwise the user's text, echoed (as the Chat Completions mock does).
//!
//! Usage: one token per whitespace-separated word of the input's text, and of
//! the answer (a call's arguments count as its words, at least one).
//!
//! Streaming sends the full event sequence SDKs and Codex rely on, each event
//! with its `sequence_number`: `response.created` (with an empty `output`),
//! `response.in_progress`, then per output item `response.output_item.added`,
//! either `response.content_part.added`, `response.output_text.delta`…,
//! `response.output_text.done`, `response.content_part.done` (text) or
//! `response.function_call_arguments.delta/done` (a call), then
//! `response.output_item.done`, and finally `response.completed` with the whole
//! response and its usage.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::mock::{content_text, count_words, pieces};
use super::{FrameStream, Reply, ResponsesCall, unix_now};
use crate::api::openai::{ApiError, Usage};
use crate::api::responses::{EventSequence, ResponseShell};

/// What the mock decided to answer.
#[derive(Debug, PartialEq)]
enum Answer {
    Text(String),
    Call { name: String, arguments: String },
}

/// Answers one Responses API request (see the module documentation).
pub fn respond(counter: &AtomicU64, call: ResponsesCall) -> Result<Reply, ApiError> {
    let request = match serde_json::from_slice::<Value>(&call.body) {
        Ok(Value::Object(request)) => request,
        _ => {
            return Err(
                ApiError::bad_request("the request body must be a JSON object")
                    .code("invalid_request"),
            );
        }
    };
    let items = input_items(&request)?;
    let answer = decide(&request, &items);
    let prompt_tokens: u64 = items.iter().map(|item| count_words(&item_text(item))).sum();
    let completion_tokens = match &answer {
        Answer::Text(text) => count_words(text),
        Answer::Call { arguments, .. } => count_words(arguments).max(1),
    };
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        cached_tokens: 0,
    };
    call.stats.set_usage(usage);
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let shell = ResponseShell::new(&format!("resp_mock_{n}"), unix_now(), model, &request);
    let item_id = match &answer {
        Answer::Text(_) => format!("msg_mock_{n}"),
        Answer::Call { .. } => format!("fc_mock_{n}"),
    };
    let call_id = format!("call_mock_{n}");
    let done_item = output_item(&answer, &item_id, &call_id, "completed");
    let usage_json = json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    });
    let completed = shell.object("completed", vec![done_item.clone()], usage_json);
    if !call.stream {
        return Ok(Reply::Complete(Bytes::from(completed.to_string())));
    }

    let mut events = Events::default();
    let in_progress = shell.object("in_progress", Vec::new(), Value::Null);
    events.push("response.created", json!({"response": in_progress}));
    events.push("response.in_progress", json!({"response": in_progress}));
    let added = output_item(&answer, &item_id, &call_id, "in_progress");
    events.push(
        "response.output_item.added",
        json!({"output_index": 0, "item": added}),
    );
    match &answer {
        Answer::Text(text) => {
            let at = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
            let with = |extra: Value| {
                let mut event = at.clone();
                if let (Some(event), Value::Object(extra)) = (event.as_object_mut(), extra) {
                    event.extend(extra);
                }
                event
            };
            events.push(
                "response.content_part.added",
                with(json!({"part": {"type": "output_text", "text": "", "annotations": []}})),
            );
            for piece in pieces(text) {
                events.push(
                    "response.output_text.delta",
                    with(json!({"delta": piece, "logprobs": []})),
                );
            }
            events.push(
                "response.output_text.done",
                with(json!({"text": text, "logprobs": []})),
            );
            events.push(
                "response.content_part.done",
                with(json!({"part": {"type": "output_text", "text": text, "annotations": []}})),
            );
        }
        Answer::Call { name, arguments } => {
            events.push(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": 0, "delta": arguments}),
            );
            events.push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "name": name, "arguments": arguments}),
            );
        }
    }
    events.push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_item}),
    );
    events.push("response.completed", json!({"response": completed}));
    let stream: FrameStream = Box::pin(futures_util::stream::iter(events.frames));
    Ok(Reply::Stream(stream))
}

/// SSE frames with `event:` names and increasing `sequence_number`s.
#[derive(Default)]
struct Events {
    frames: Vec<Bytes>,
    sequence: EventSequence,
}

impl Events {
    fn push(&mut self, kind: &str, data: Value) {
        self.frames
            .push(Bytes::from(self.sequence.frame(kind, data)));
    }
}

fn output_item(answer: &Answer, item_id: &str, call_id: &str, status: &str) -> Value {
    let done = status == "completed";
    match answer {
        Answer::Text(text) => {
            let content = if done {
                json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
            } else {
                json!([])
            };
            json!({"id": item_id, "type": "message", "status": status, "role": "assistant",
                   "content": content})
        }
        Answer::Call { name, arguments } => json!({
            "id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": if done { arguments.as_str() } else { "" },
        }),
    }
}

/// `input` as a list of items: a string is one user message; absent is empty.
fn input_items(request: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    match request.get("input") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"role": "user", "content": text})]),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(_) => Err(
            ApiError::bad_request("'input' must be a string or an array")
                .param("input")
                .code("invalid_type"),
        ),
    }
}

/// The text an input item carries: a message's content, a tool result's output.
fn item_text(item: &Value) -> String {
    match item.get("type").and_then(Value::as_str) {
        Some("function_call_output" | "custom_tool_call_output") => {
            content_text(item.get("output").unwrap_or(&Value::Null))
        }
        Some("function_call") => item["arguments"].as_str().unwrap_or("").to_string(),
        _ => content_text(item.get("content").unwrap_or(&Value::Null)),
    }
}

fn decide(request: &Map<String, Value>, items: &[Value]) -> Answer {
    let Some(last) = items.last() else {
        return Answer::Text(String::new());
    };
    if matches!(
        last.get("type").and_then(Value::as_str),
        Some("function_call_output" | "custom_tool_call_output")
    ) {
        let call_id = last.get("call_id").and_then(Value::as_str);
        let name = items
            .iter()
            .rev()
            .find(|item| {
                item["type"] == "function_call"
                    && item.get("call_id").and_then(Value::as_str) == call_id
            })
            .and_then(|item| item["name"].as_str())
            .unwrap_or("tool");
        return Answer::Text(format!("{name} returned: {}", item_text(last)));
    }
    let text = items
        .iter()
        .rev()
        .find(|item| item.get("role").and_then(Value::as_str) == Some("user"))
        .map(item_text)
        .unwrap_or_default();
    let functions: Vec<&str> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|tool| tool["type"] == "function")
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    let forced = match request.get("tool_choice") {
        Some(Value::String(choice)) if choice == "none" => return Answer::Text(text),
        Some(Value::String(choice)) if choice == "required" => functions.first().copied(),
        Some(Value::Object(choice)) if choice.get("type") == Some(&json!("function")) => choice
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| functions.contains(name)),
        _ => None,
    };
    match super::mock::tool_call(&text, &functions, forced) {
        Some((name, arguments)) => Answer::Call { name, arguments },
        None => Answer::Text(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(request: Value) -> Answer {
        let request = request.as_object().unwrap().clone();
        let items = input_items(&request).unwrap();
        decide(&request, &items)
    }

    fn tools() -> Value {
        json!([{"type": "function", "name": "shell", "parameters": {}},
               {"type": "web_search"},
               {"type": "function", "name": "lookup", "parameters": {}}])
    }

    #[test]
    fn echoes_the_last_user_message() {
        assert_eq!(
            decided(json!({"input": "hello there"})),
            Answer::Text("hello there".into())
        );
        let input = json!([{"role": "developer", "content": "rules"},
                           {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
                           {"role": "assistant", "content": "b"},
                           {"role": "user", "content": [{"type": "input_text", "text": "c d"}]}]);
        assert_eq!(decided(json!({"input": input})), Answer::Text("c d".into()));
        assert_eq!(decided(json!({})), Answer::Text(String::new()));
    }

    #[test]
    fn calls_a_tool_only_when_asked_by_name() {
        let call = decided(json!({"input": "call lookup {\"q\": 1}", "tools": tools()}));
        assert_eq!(
            call,
            Answer::Call {
                name: "lookup".into(),
                arguments: "{\"q\":1}".into()
            }
        );
        let call = decided(json!({"input": "call shell now", "tools": tools()}));
        assert_eq!(
            call,
            Answer::Call {
                name: "shell".into(),
                arguments: "{}".into()
            }
        );
        // Not offered, or tools off: echoed.
        assert_eq!(
            decided(json!({"input": "call nope {}", "tools": tools()})),
            Answer::Text("call nope {}".into())
        );
        assert_eq!(
            decided(json!({"input": "call shell {}", "tools": tools(), "tool_choice": "none"})),
            Answer::Text("call shell {}".into())
        );
        assert_eq!(
            decided(json!({"input": "call shell {}"})),
            Answer::Text("call shell {}".into())
        );
        // Forced by tool_choice.
        assert_eq!(
            decided(json!({"input": "hi", "tools": tools(), "tool_choice": "required"})),
            Answer::Call {
                name: "shell".into(),
                arguments: "{}".into()
            }
        );
        assert_eq!(
            decided(json!({"input": "{\"a\":2}", "tools": tools(),
                           "tool_choice": {"type": "function", "name": "lookup"}})),
            Answer::Call {
                name: "lookup".into(),
                arguments: "{\"a\":2}".into()
            }
        );
    }

    #[test]
    fn a_tool_result_is_reported_back() {
        let input = json!([{"role": "user", "content": "call shell {}"},
                           {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"},
                           {"type": "function_call_output", "call_id": "c1", "output": "42"}]);
        assert_eq!(
            decided(json!({"input": input, "tools": tools()})),
            Answer::Text("shell returned: 42".into())
        );
    }
}
