//! What a CLI prints, turned into answer events as each line arrives.
//!
//! - [`Format::ClaudeStream`]: Claude Code's `--output-format stream-json`
//!   (also cursor-agent's and a custom `format = "stream-json"` command's):
//!   `stream_event` text deltas when partial messages are on, else the
//!   `assistant` messages' text; the `result` event's usage and verdict.
//! - [`Format::Codex`]: `codex exec --json`: `item.completed` agent messages,
//!   `turn.completed` usage, `turn.failed` / `error`.
//! - [`Format::Gemini`]: Gemini CLI's `--output-format stream-json`:
//!   assistant `message` chunks, the `result` event's stats.
//! - [`Format::Text`]: every byte printed is answer text.
//!
//! Lines that are not JSON objects, and event types not listed, are skipped.

use serde_json::Value;

/// How a CLI's output is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    ClaudeStream,
    Codex,
    Gemini,
    Text,
}

/// What one line (or, for text, one chunk) of output meant.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Answer text.
    Text(String),
    /// `(prompt, completion)` tokens.
    Usage(u64, u64),
    /// The CLI reported a failure.
    Failed(String),
    /// The CLI's final event: nothing more is needed.
    Done,
}

/// The parser of one process's output.
pub struct Parser {
    format: Format,
    /// Text came as partial-message deltas (so the whole messages repeat it).
    saw_deltas: bool,
    /// Some answer text was produced.
    saw_text: bool,
}

impl Parser {
    pub fn new(format: Format) -> Parser {
        Parser {
            format,
            saw_deltas: false,
            saw_text: false,
        }
    }

    pub fn is_text(&self) -> bool {
        self.format == Format::Text
    }

    /// One complete line of JSON output (without its newline).
    pub fn line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        let Ok(event) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if !event.is_object() {
            return;
        }
        let before = out.len();
        match self.format {
            Format::ClaudeStream => self.claude(&event, out),
            Format::Codex => codex(&event, out),
            Format::Gemini => gemini(&event, out),
            Format::Text => {}
        }
        if out[before..].iter().any(|e| matches!(e, Event::Text(_))) {
            self.saw_text = true;
        }
    }

    fn claude(&mut self, event: &Value, out: &mut Vec<Event>) {
        match event["type"].as_str().unwrap_or("") {
            "stream_event" => {
                let inner = &event["event"];
                if inner["type"] == "content_block_delta" && inner["delta"]["type"] == "text_delta"
                {
                    if let Some(text) = inner["delta"]["text"].as_str() {
                        self.saw_deltas = true;
                        push_text(out, text);
                    }
                }
            }
            "assistant" if !self.saw_deltas => {
                if let Some(blocks) = event["message"]["content"].as_array() {
                    for block in blocks {
                        if block["type"] == "text" {
                            if let Some(text) = block["text"].as_str() {
                                push_text(out, text);
                            }
                        }
                    }
                } else if let Some(text) = event["message"]["content"].as_str() {
                    push_text(out, text);
                }
            }
            "result" => {
                let usage = &event["usage"];
                if usage.is_object() {
                    let prompt = [
                        "input_tokens",
                        "cache_read_input_tokens",
                        "cache_creation_input_tokens",
                    ]
                    .iter()
                    .filter_map(|k| usage[*k].as_u64())
                    .sum();
                    out.push(Event::Usage(
                        prompt,
                        usage["output_tokens"].as_u64().unwrap_or(0),
                    ));
                }
                let failed = event["is_error"] == true
                    || event["subtype"].as_str().is_some_and(|s| s != "success");
                if failed {
                    let why = event["result"]
                        .as_str()
                        .filter(|r| !r.is_empty())
                        .or_else(|| event["subtype"].as_str())
                        .unwrap_or("the CLI reported an error");
                    out.push(Event::Failed(why.to_string()));
                } else if !self.saw_text {
                    if let Some(text) = event["result"].as_str() {
                        push_text(out, text);
                    }
                }
                out.push(Event::Done);
            }
            "error" => out.push(Event::Failed(error_message(event))),
            _ => {}
        }
    }
}

fn push_text(out: &mut Vec<Event>, text: &str) {
    if !text.is_empty() {
        out.push(Event::Text(text.to_string()));
    }
}

/// `error.message`, `message`, or the event itself.
fn error_message(event: &Value) -> String {
    event["error"]["message"]
        .as_str()
        .or_else(|| event["message"].as_str())
        .or_else(|| event["error"].as_str())
        .map_or_else(|| event.to_string(), str::to_string)
}

fn codex(event: &Value, out: &mut Vec<Event>) {
    match event["type"].as_str().unwrap_or("") {
        "item.completed" => {
            let item = &event["item"];
            let kind = item["type"].as_str().or_else(|| item["item_type"].as_str());
            if matches!(kind, Some("agent_message" | "assistant_message")) {
                if let Some(text) = item["text"].as_str() {
                    push_text(out, text);
                }
            }
        }
        "turn.completed" => {
            let usage = &event["usage"];
            if usage.is_object() {
                out.push(Event::Usage(
                    usage["input_tokens"].as_u64().unwrap_or(0),
                    usage["output_tokens"].as_u64().unwrap_or(0),
                ));
            }
            out.push(Event::Done);
        }
        "turn.failed" | "error" => out.push(Event::Failed(error_message(event))),
        _ => {}
    }
}

fn gemini(event: &Value, out: &mut Vec<Event>) {
    match event["type"].as_str().unwrap_or("") {
        "message" if event["role"] == "assistant" => {
            if let Some(text) = event["content"].as_str() {
                push_text(out, text);
            }
        }
        "result" => {
            let stats = &event["stats"];
            if stats.is_object() {
                out.push(Event::Usage(
                    stats["input_tokens"].as_u64().unwrap_or(0),
                    stats["output_tokens"].as_u64().unwrap_or(0),
                ));
            }
            if event["status"].as_str().is_some_and(|s| s != "success") {
                out.push(Event::Failed(error_message(event)));
            }
            out.push(Event::Done);
        }
        "error" => {
            // Documented as non-fatal warnings: logged, not an answer.
            tracing::debug!(message = %error_message(event), "gemini-cli warning");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: Format, lines: &[&str]) -> Vec<Event> {
        let mut parser = Parser::new(format);
        let mut out = Vec::new();
        for line in lines {
            parser.line(line.as_bytes(), &mut out);
        }
        out
    }

    #[test]
    fn claude_deltas_win_over_the_whole_message_and_the_result_gives_usage() {
        let out = run(
            Format::ClaudeStream,
            &[
                r#"{"type":"system","subtype":"init","model":"m"}"#,
                r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}}"#,
                r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hello"}]}}"#,
                r#"{"type":"result","subtype":"success","is_error":false,"result":"Hello","usage":{"input_tokens":3,"cache_read_input_tokens":4,"output_tokens":2}}"#,
            ],
        );
        assert_eq!(
            out,
            [
                Event::Text("Hel".into()),
                Event::Text("lo".into()),
                Event::Usage(7, 2),
                Event::Done
            ]
        );
    }

    #[test]
    fn claude_without_deltas_uses_messages_and_reports_errors() {
        let out = run(
            Format::ClaudeStream,
            &[
                "not json",
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hi"}]}}"#,
                r#"{"type":"result","subtype":"success","result":"Hi"}"#,
            ],
        );
        assert_eq!(out, [Event::Text("Hi".into()), Event::Done]);
        let out = run(
            Format::ClaudeStream,
            &[
                r#"{"type":"result","subtype":"error_during_execution","is_error":true,"result":"Invalid API key"}"#,
            ],
        );
        assert_eq!(out, [Event::Failed("Invalid API key".into()), Event::Done]);
        // A result alone is the answer.
        let out = run(
            Format::ClaudeStream,
            &[r#"{"type":"result","subtype":"success","result":"ok"}"#],
        );
        assert_eq!(out, [Event::Text("ok".into()), Event::Done]);
    }

    #[test]
    fn codex_and_gemini_events() {
        let out = run(
            Format::Codex,
            &[
                r#"{"type":"thread.started","thread_id":"t"}"#,
                r#"{"type":"item.completed","item":{"id":"i","type":"reasoning","text":"hmm"}}"#,
                r#"{"type":"item.completed","item":{"id":"i","type":"agent_message","text":"Hi"}}"#,
                r#"{"type":"turn.completed","usage":{"input_tokens":5,"cached_input_tokens":0,"output_tokens":1}}"#,
            ],
        );
        assert_eq!(
            out,
            [Event::Text("Hi".into()), Event::Usage(5, 1), Event::Done]
        );
        let out = run(
            Format::Codex,
            &[r#"{"type":"turn.failed","error":{"message":"boom"}}"#],
        );
        assert_eq!(out, [Event::Failed("boom".into())]);
        let out = run(
            Format::Gemini,
            &[
                r#"{"type":"init","model":"g"}"#,
                r#"{"type":"message","role":"user","content":"q"}"#,
                r#"{"type":"message","role":"assistant","content":"A","delta":true}"#,
                r#"{"type":"error","message":"warning"}"#,
                r#"{"type":"result","status":"success","stats":{"input_tokens":4,"output_tokens":1}}"#,
            ],
        );
        assert_eq!(
            out,
            [Event::Text("A".into()), Event::Usage(4, 1), Event::Done]
        );
    }
}
