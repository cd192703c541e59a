//! What an answer says about itself, for the attempt span: response id, model,
//! finish reasons, usage and (with `capture_content`) its text. Read from a
//! complete JSON body or from a stream's events as they pass, in the shapes
//! the router hands out: Chat Completions (`chat.completion` and its chunks,
//! whatever the provider's own API) and the Responses API (its objects and
//! `response.*` events).

use serde_json::Value;

/// The most bytes of prompt or answer text one span attribute holds (with
/// `capture_content`); the rest is cut at a character boundary.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// At most this many finish reasons are kept (one per choice).
const MAX_FINISH_REASONS: usize = 16;

/// What was learnt about one answer.
#[derive(Debug, Default)]
pub struct Answer {
    pub id: Option<String>,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The answer's text, only gathered with `capture_content`.
    pub text: Option<String>,
}

/// The longest id or model name kept (they come from the provider).
const MAX_NAME_BYTES: usize = 256;

fn short(s: &str) -> String {
    crate::support::redact::truncate(s, MAX_NAME_BYTES).to_string()
}

impl Answer {
    /// Reads one JSON object: a complete answer, a chunk or an event.
    pub fn read(&mut self, value: &Value, capture: bool) {
        // Responses API events carry the response object inside.
        let object = match value.get("response") {
            Some(response) if response.is_object() => response,
            _ => value,
        };
        if self.id.is_none() {
            if let Some(id) = object.get("id").and_then(Value::as_str) {
                self.id = Some(short(id));
            }
        }
        if let Some(model) = object.get("model").and_then(Value::as_str) {
            if self.model.is_none() {
                self.model = Some(short(model));
            }
        }
        if let Some(usage) = object.get("usage").filter(|u| u.is_object()) {
            let number = |a: &str, b: &str| {
                usage
                    .get(a)
                    .or_else(|| usage.get(b))
                    .and_then(Value::as_u64)
            };
            if let Some(n) = number("prompt_tokens", "input_tokens") {
                self.input_tokens = Some(n);
            }
            if let Some(n) = number("completion_tokens", "output_tokens") {
                self.output_tokens = Some(n);
            }
        }
        if let Some(choices) = object.get("choices").and_then(Value::as_array) {
            for choice in choices {
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    if self.finish_reasons.len() < MAX_FINISH_REASONS {
                        self.finish_reasons.push(short(reason));
                    }
                }
                if capture {
                    let message = choice.get("message").or_else(|| choice.get("delta"));
                    if let Some(text) = message
                        .and_then(|m| m.get("content"))
                        .and_then(Value::as_str)
                    {
                        self.push_text(text);
                    }
                }
            }
        }
        // A finished Responses API object: its status is the finish reason.
        if object.get("object").and_then(Value::as_str) == Some("response") {
            let reason = object
                .pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
                .or_else(|| object.get("status").and_then(Value::as_str));
            if let Some(reason) = reason.filter(|r| *r != "in_progress" && *r != "queued") {
                self.finish_reasons = vec![short(reason)];
            }
            if capture && value.get("type").is_none() {
                // A complete (non-streamed) Responses answer: its output text.
                for item in object
                    .get("output")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for part in item
                        .get("content")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            self.push_text(text);
                        }
                    }
                }
            }
        }
        if capture
            && value.get("type").and_then(Value::as_str) == Some("response.output_text.delta")
        {
            if let Some(delta) = value.get("delta").and_then(Value::as_str) {
                self.push_text(delta);
            }
        }
    }

    /// Whether a stream event is worth parsing: the first one (id, model), and
    /// those that carry usage, a finish reason or a final Responses status.
    pub fn wants(&self, data: &str, capture: bool) -> bool {
        capture
            || self.id.is_none()
            || data.contains("\"usage\"")
            || data.contains("\"finish_reason\":\"")
            || data.contains("\"response.completed\"")
            || data.contains("\"response.incomplete\"")
            || data.contains("\"response.failed\"")
    }

    fn push_text(&mut self, text: &str) {
        let kept = self.text.get_or_insert_with(String::new);
        let room = MAX_CONTENT_BYTES.saturating_sub(kept.len());
        kept.push_str(crate::support::redact::truncate(text, room));
    }

    /// `gen_ai.output.messages`: the answer as one assistant message.
    pub fn output_messages(&self) -> Option<String> {
        let text = self.text.as_deref()?;
        let mut message = serde_json::json!({
            "role": "assistant",
            "parts": [{"type": "text", "content": text}],
        });
        if let Some(reason) = self.finish_reasons.first() {
            message["finish_reason"] = Value::String(reason.clone());
        }
        Some(Value::Array(vec![message]).to_string())
    }
}

/// `gen_ai.input.messages` for a request body: its `messages` (Chat
/// Completions), or its `instructions` and `input` (Responses API), as
/// `[{"role", "parts": [{"type": "text", "content"}]}]`, text cut at
/// [`MAX_CONTENT_BYTES`] over all messages.
pub fn input_messages(body: &[u8]) -> Option<String> {
    let request: Value = serde_json::from_slice(body).ok()?;
    let mut budget = MAX_CONTENT_BYTES;
    let mut out = Vec::new();
    let mut add = |role: &str, text: &str, out: &mut Vec<Value>| {
        let kept = crate::support::redact::truncate(text, budget);
        budget -= kept.len();
        out.push(serde_json::json!({
            "role": role,
            "parts": [{"type": "text", "content": kept}],
        }));
    };
    if let Some(instructions) = request.get("instructions").and_then(Value::as_str) {
        add("system", instructions, &mut out);
    }
    let items = request
        .get("messages")
        .or_else(|| request.get("input"))
        .or_else(|| request.get("prompt"));
    match items {
        Some(Value::String(text)) => add("user", text, &mut out),
        Some(Value::Array(items)) => {
            for item in items {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                let text = message_text(item.get("content").unwrap_or(&Value::Null));
                if let Some(text) = text {
                    add(role, &text, &mut out);
                }
            }
        }
        _ => {}
    }
    Some(Value::Array(out).to_string())
}

/// The text of a message's `content`: a string, or its text parts joined.
fn message_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chat_completion_and_its_chunks_give_the_same_figures() {
        let mut whole = Answer::default();
        whole.read(
            &json!({"id": "chatcmpl-1", "model": "gpt-5-2025", "object": "chat.completion",
                "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
            true,
        );
        let mut streamed = Answer::default();
        for chunk in [
            json!({"id": "chatcmpl-1", "model": "gpt-5-2025", "choices": [{"delta": {"content": "h"}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "model": "gpt-5-2025", "choices": [{"delta": {"content": "i"}, "finish_reason": "stop"}]}),
            json!({"id": "chatcmpl-1", "model": "gpt-5-2025", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
        ] {
            streamed.read(&chunk, true);
        }
        for a in [&whole, &streamed] {
            assert_eq!(a.id.as_deref(), Some("chatcmpl-1"));
            assert_eq!(a.model.as_deref(), Some("gpt-5-2025"));
            assert_eq!(a.finish_reasons, ["stop"]);
            assert_eq!((a.input_tokens, a.output_tokens), (Some(3), Some(1)));
            assert_eq!(a.text.as_deref(), Some("hi"));
        }
    }

    #[test]
    fn a_responses_stream_gives_id_model_status_and_usage() {
        let mut a = Answer::default();
        for event in [
            json!({"type": "response.created", "response": {"id": "resp_1", "object": "response", "model": "gpt-5", "status": "in_progress"}}),
            json!({"type": "response.output_text.delta", "delta": "yo"}),
            json!({"type": "response.completed", "response": {"id": "resp_1", "object": "response", "model": "gpt-5", "status": "completed",
                "usage": {"input_tokens": 5, "output_tokens": 2}}}),
        ] {
            a.read(&event, false);
        }
        assert_eq!(a.id.as_deref(), Some("resp_1"));
        assert_eq!(a.finish_reasons, ["completed"]);
        assert_eq!((a.input_tokens, a.output_tokens), (Some(5), Some(2)));
        assert_eq!(a.text, None, "no text without capture_content");
    }

    #[test]
    fn captured_input_is_bounded_and_valid_json() {
        let long = "é".repeat(MAX_CONTENT_BYTES);
        let body = json!({"messages": [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": long}]}]});
        let text = input_messages(body.to_string().as_bytes()).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[0]["role"], "system");
        assert_eq!(parsed[0]["parts"][0]["content"], "be brief");
        let kept = parsed[1]["parts"][0]["content"].as_str().unwrap();
        assert!(kept.len() <= MAX_CONTENT_BYTES - "be brief".len());
    }
}
