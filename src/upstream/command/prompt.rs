//! A Chat Completions conversation rendered as one prompt for a CLI's stdin.
//!
//! A lone user message is sent as it is. Anything longer is a transcript:
//! each message under its role (`System:`, `User:`, `Assistant:`, `Tool:`),
//! separated by blank lines, so the CLI sees the whole conversation in order.
//! Images are named, not sent (a CLI reads text on stdin).

use serde_json::Value;

use crate::api::openai::ApiError;

/// The prompt for `request` (a Chat Completions body).
pub fn render(request: &Value) -> Result<String, ApiError> {
    let messages = request["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("messages must be a non-empty array")
                .code("invalid_request")
                .param("messages")
        })?;
    if let [only] = messages.as_slice() {
        if only["role"] == "user" {
            return Ok(content_text(&only["content"]));
        }
    }
    let mut out = String::new();
    for message in messages {
        let label = match message["role"].as_str().unwrap_or("user") {
            "system" | "developer" => "System",
            "assistant" => "Assistant",
            "tool" | "function" => "Tool",
            _ => "User",
        };
        let mut text = content_text(&message["content"]);
        if let Some(calls) = message["tool_calls"].as_array() {
            for call in calls {
                let function = &call["function"];
                text.push_str(&format!(
                    "{}[called {} with {}]",
                    if text.is_empty() { "" } else { "\n" },
                    function["name"].as_str().unwrap_or("a tool"),
                    function["arguments"].as_str().unwrap_or("{}")
                ));
            }
        }
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(label);
        out.push_str(": ");
        out.push_str(&text);
    }
    Ok(out)
}

/// A message's `content`: a string, or the text of its parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                let piece = match part["type"].as_str() {
                    Some("text" | "input_text" | "output_text") => {
                        part["text"].as_str().unwrap_or("").to_string()
                    }
                    Some("image_url" | "input_image") => "[image not shown]".to_string(),
                    Some("file" | "input_file") => "[file not shown]".to_string(),
                    _ => continue,
                };
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&piece);
            }
            out
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_user_message_is_the_prompt_itself() {
        let r = json!({"messages": [{"role": "user", "content": "hi there"}]});
        assert_eq!(render(&r).unwrap(), "hi there");
    }

    #[test]
    fn a_conversation_is_a_transcript_in_order() {
        let r = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "content": "42"},
            {"role": "user", "content": "so?"}
        ]});
        assert_eq!(
            render(&r).unwrap(),
            "System: Be brief.\n\nUser: look\n[image not shown]\n\nAssistant: [called f with {\"a\":1}]\n\nTool: 42\n\nUser: so?"
        );
    }

    #[test]
    fn no_messages_is_a_400() {
        for r in [json!({}), json!({"messages": []})] {
            assert_eq!(render(&r).unwrap_err().status, 400);
        }
    }
}
