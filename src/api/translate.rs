//! What the pure translations ([`super::responses`], [`super::anthropic`]) share:
//! their error type, the reading of a Chat Completions request's conversation
//! and tools, and the SSE frame helpers.
//!
//! Every error names the offending field by its path in the client's request
//! (`messages[2].tool_calls[0].function.name`, `input[3].call_id`,
//! `messages.0.content.1.source.data`), so the 400 a client gets says what to fix.

use serde_json::{Map, Value, json};

use super::openai::ApiError;

/// Why a request could not be translated: a client error (HTTP 400) naming
/// the field at fault and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// A required field is absent.
    #[error("{at}: missing")]
    Missing { at: String },
    /// A required field is absent or of the wrong JSON type.
    #[error("{at}: missing or not {expected}")]
    MissingOrNot { at: String, expected: &'static str },
    /// A field is present with the wrong JSON type.
    #[error("{at}: must be {expected}")]
    Wrong { at: String, expected: &'static str },
    /// A field's value is not one this translation can carry; `problem` says
    /// why and, where there is one, what to send instead.
    #[error("{at}: {problem}")]
    Unsupported { at: String, problem: String },
}

impl TranslateError {
    pub fn missing(at: impl Into<String>) -> TranslateError {
        TranslateError::Missing { at: at.into() }
    }
    pub fn missing_or_not(at: impl Into<String>, expected: &'static str) -> TranslateError {
        TranslateError::MissingOrNot {
            at: at.into(),
            expected,
        }
    }
    pub fn wrong(at: impl Into<String>, expected: &'static str) -> TranslateError {
        TranslateError::Wrong {
            at: at.into(),
            expected,
        }
    }
    pub fn unsupported(at: impl Into<String>, problem: impl Into<String>) -> TranslateError {
        TranslateError::Unsupported {
            at: at.into(),
            problem: problem.into(),
        }
    }
}

/// A translation error is the client's mistake: a 400 `invalid_request`.
impl From<TranslateError> for ApiError {
    fn from(e: TranslateError) -> ApiError {
        ApiError::bad_request(e.to_string()).code("invalid_request")
    }
}

/// `value[key]` as a string, or the error naming `{at}.{key}`.
pub fn str_at<'a>(value: &'a Value, key: &str, at: &str) -> Result<&'a str, TranslateError> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::missing_or_not(format!("{at}.{key}"), "a string"))
}

/// A content part's `type`.
pub fn part_type<'a>(part: &'a Value, at: &str) -> Result<&'a str, TranslateError> {
    str_at(part, "type", at)
}

/// A content part's `text`.
pub fn part_text<'a>(part: &'a Value, at: &str) -> Result<&'a str, TranslateError> {
    str_at(part, "text", at)
}

/// The request body as an object.
pub fn object(body: &Value) -> Result<&Map<String, Value>, TranslateError> {
    body.as_object().ok_or(TranslateError::NotAnObject)
}

/// The request's `model`, required and a string.
pub fn model(request: &Map<String, Value>) -> Result<&str, TranslateError> {
    request
        .get("model")
        .ok_or_else(|| TranslateError::missing("model"))?
        .as_str()
        .ok_or_else(|| TranslateError::wrong("model", "a string"))
}

/// Text-only Chat content (a string, or `text` parts) as one string. An
/// assistant's `refusal` part is still what it said.
pub fn plain_text(content: &Value, at: &str) -> Result<String, TranslateError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let at = format!("{at}[{j}]");
                match part_type(part, &at)? {
                    "text" => text.push_str(part_text(part, &at)?),
                    "refusal" => text.push_str(part["refusal"].as_str().unwrap_or("")),
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{at}.type"),
                            format!("{other:?} is not allowed here (only \"text\")"),
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(TranslateError::wrong(
            at,
            "a string, an array of parts or null",
        )),
    }
}

/// A Chat `image_url` part's URL and `detail`.
pub fn image_url<'a>(
    part: &'a Value,
    at: &str,
) -> Result<(&'a str, Option<&'a str>), TranslateError> {
    match &part["image_url"] {
        Value::String(url) => Ok((url.as_str(), None)),
        Value::Object(img) => Ok((
            str_at(&part["image_url"], "url", &format!("{at}.image_url"))?,
            img.get("detail").and_then(Value::as_str),
        )),
        _ => Err(TranslateError::missing_or_not(
            format!("{at}.image_url"),
            "an object",
        )),
    }
}

/// One message of a Chat conversation, checked, with its path for errors.
#[derive(Debug)]
pub enum ChatTurn<'a> {
    /// `system` or `developer`.
    System {
        content: &'a Value,
        at: String,
    },
    User {
        content: &'a Value,
        at: String,
    },
    Assistant {
        content: &'a Value,
        tool_calls: Vec<ToolCall<'a>>,
        at: String,
    },
    /// A tool's result (`role: "tool"`).
    Tool {
        call_id: &'a str,
        content: &'a Value,
        at: String,
    },
}

/// A tool call an assistant made, as a Chat history carries it.
#[derive(Debug)]
pub struct ToolCall<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// `function.arguments`: a JSON string usually, an object from some clients.
    pub arguments: &'a Value,
    /// The call's path, e.g. `messages[3].tool_calls[0]`.
    pub at: String,
}

/// The `messages` of a Chat request, each checked for a known role and the
/// fields that role needs.
pub fn chat_turns(chat: &Map<String, Value>) -> Result<Vec<ChatTurn<'_>>, TranslateError> {
    let messages = chat
        .get("messages")
        .ok_or_else(|| TranslateError::missing("messages"))?
        .as_array()
        .ok_or_else(|| TranslateError::wrong("messages", "an array"))?;
    let mut turns = Vec::with_capacity(messages.len());
    for (i, msg) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        if !msg.is_object() {
            return Err(TranslateError::wrong(at, "an object"));
        }
        let role = str_at(msg, "role", &at)?;
        let content = msg.get("content").unwrap_or(&Value::Null);
        let content_at = format!("{at}.content");
        turns.push(match role {
            "system" | "developer" => ChatTurn::System {
                content,
                at: content_at,
            },
            "user" => ChatTurn::User {
                content,
                at: content_at,
            },
            "assistant" => {
                let tool_calls = match msg.get("tool_calls") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(calls)) => calls
                        .iter()
                        .enumerate()
                        .map(|(j, call)| tool_call(call, format!("{at}.tool_calls[{j}]")))
                        .collect::<Result<_, _>>()?,
                    Some(_) => {
                        return Err(TranslateError::wrong(
                            format!("{at}.tool_calls"),
                            "an array",
                        ));
                    }
                };
                ChatTurn::Assistant {
                    content,
                    tool_calls,
                    at: content_at,
                }
            }
            "tool" => ChatTurn::Tool {
                call_id: msg
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        TranslateError::unsupported(
                            format!("{at}.tool_call_id"),
                            "missing or not a string (required for role \"tool\")",
                        )
                    })?,
                content,
                at: content_at,
            },
            "function" => {
                return Err(TranslateError::unsupported(
                    format!("{at}.role"),
                    "\"function\" is the deprecated form; send tool results with role \"tool\"",
                ));
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("{at}.role"),
                    format!("unknown role {other:?}"),
                ));
            }
        });
    }
    Ok(turns)
}

fn tool_call(call: &Value, at: String) -> Result<ToolCall<'_>, TranslateError> {
    let id = str_at(call, "id", &at)?;
    let function = call
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| TranslateError::missing_or_not(format!("{at}.function"), "an object"))?;
    let name = str_at(function, "name", &format!("{at}.function"))?;
    Ok(ToolCall {
        id,
        name,
        arguments: function.get("arguments").unwrap_or(&Value::Null),
        at,
    })
}

/// A Chat `{"type":"function","function":{...}}` tool, read.
#[derive(Debug)]
pub struct FunctionTool<'a> {
    pub name: &'a str,
    pub description: Option<&'a Value>,
    pub parameters: Option<&'a Value>,
    pub strict: Option<&'a Value>,
}

/// `tools[i]`: `Ok(None)` when its type is not `function` (the caller decides
/// whether such a tool passes through or is refused).
pub fn function_tool(
    tool: &Value,
    i: usize,
) -> Result<(&str, Option<FunctionTool<'_>>), TranslateError> {
    let at = format!("tools[{i}]");
    let ty = part_type(tool, &at)?;
    if ty != "function" {
        return Ok((ty, None));
    }
    let f = tool
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| TranslateError::missing_or_not(format!("{at}.function"), "an object"))?;
    let present = |key: &str| f.get(key).filter(|v| !v.is_null());
    Ok((
        ty,
        Some(FunctionTool {
            name: str_at(f, "name", &format!("{at}.function"))?,
            description: present("description"),
            parameters: present("parameters"),
            strict: present("strict"),
        }),
    ))
}

/// The name in a Chat `tool_choice` that names a function
/// (`{"type":"function","function":{"name"}}`, or the flat `{"type":"function","name"}`).
pub fn tool_choice_name(choice: &Map<String, Value>) -> Result<&str, TranslateError> {
    choice
        .get("function")
        .and_then(|f| f.get("name"))
        .or_else(|| choice.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::missing_or_not("tool_choice.function.name", "a string"))
}

/// `n` must be absent, null or 1: other providers answer one choice.
pub fn one_choice(chat: &Map<String, Value>, provider: &str) -> Result<(), TranslateError> {
    if chat
        .get("n")
        .is_some_and(|n| !n.is_null() && n.as_u64() != Some(1))
    {
        return Err(TranslateError::unsupported(
            "n",
            format!("only 1 choice is supported by {provider}"),
        ));
    }
    Ok(())
}

/// `stream`, when present, must be a boolean.
pub fn stream_flag(chat: &Map<String, Value>) -> Result<Option<&Value>, TranslateError> {
    match chat.get("stream").filter(|v| !v.is_null()) {
        Some(v) if !v.is_boolean() => Err(TranslateError::wrong("stream", "a boolean")),
        other => Ok(other),
    }
}

/// One `data:` payload of a Chat Completions stream, read: what the
/// translations of Chat streams ([`super::anthropic::ChatToMessages`],
/// [`super::responses::ChatToResponses`]) act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatData {
    /// `[DONE]`.
    Done,
    /// An error frame (`{"error": {...}}`).
    Error {
        code: Option<String>,
        message: String,
    },
    /// A chunk: its usage when it carries one, and its pieces in order.
    Chunk {
        usage: Option<Value>,
        pieces: Vec<ChunkPiece>,
    },
    /// Not JSON: nothing a client could use.
    Other,
}

/// What one choice's delta of a chunk says.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkPiece {
    /// Non-empty `content`.
    Text(String),
    /// One entry of `tool_calls` (its `index`, and `id`/`function` as sent).
    ToolCall(Value),
    /// The `finish_reason`.
    Finish(String),
}

impl ChatData {
    pub fn read(data: &str) -> ChatData {
        if data.trim() == "[DONE]" {
            return ChatData::Done;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            return ChatData::Other;
        };
        if chunk["error"].is_object() {
            let error = &chunk["error"];
            return ChatData::Error {
                code: error["code"].as_str().map(str::to_string),
                message: error["message"]
                    .as_str()
                    .unwrap_or("the upstream failed mid-stream")
                    .to_string(),
            };
        }
        // `get_mut`, never `[]` for writing: indexing a non-object to write
        // panics, and a provider's chunk may be any JSON.
        let usage = chunk
            .get_mut("usage")
            .filter(|u| u.is_object())
            .map(Value::take);
        let mut pieces = Vec::new();
        let choices = chunk.get_mut("choices").and_then(Value::as_array_mut);
        for choice in choices.into_iter().flatten() {
            let finish = choice["finish_reason"].as_str().map(str::to_string);
            if let Some(delta) = choice.get_mut("delta") {
                if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                    pieces.push(ChunkPiece::Text(text.to_string()));
                }
                if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    pieces.extend(calls.iter_mut().map(|c| ChunkPiece::ToolCall(c.take())));
                }
            }
            if let Some(reason) = finish {
                pieces.push(ChunkPiece::Finish(reason));
            }
        }
        ChatData::Chunk { usage, pieces }
    }
}

/// Unix time in seconds, for `created` fields.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The frame that ends every Chat Completions stream.
pub const DONE_FRAME: &str = "data: [DONE]\n\n";

/// One `data: JSON` SSE frame.
pub fn data_frame(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// One `event: NAME` / `data: JSON` frame, the name the data's `type`.
pub fn event_frame(data: &Value) -> String {
    let name = data["type"].as_str().unwrap_or("message");
    format!("event: {name}\ndata: {data}\n\n")
}

/// A Chat stream's error frame (`{"error": {...}}`, OpenAI's shape).
pub fn error_frame(message: &str, code: Option<&str>, param: Option<&str>) -> String {
    data_frame(&json!({"error": {
        "message": message,
        "type": "upstream_error",
        "param": param,
        "code": code,
    }}))
}

/// The writing side of a Chat Completions stream, for the translators that
/// produce one (Responses events → Chat, Messages events → Chat): every chunk's
/// common fields, the role on the first delta, `usage: null` on every chunk but
/// the last when usage was asked for, and exactly one ending — the finishing
/// chunk (then the usage chunk when asked, then `[DONE]`) or an error frame then
/// `[DONE]`. Every returned `String` is one complete SSE frame.
#[derive(Debug)]
pub struct ChatChunks {
    /// The `model` every chunk names (what the client asked for).
    model: String,
    /// The `chatcmpl-...` id every chunk carries; may be set before the first chunk.
    id: String,
    /// The `created` unix time every chunk carries.
    created: u64,
    /// The client's `stream_options.include_usage`.
    include_usage: bool,
    /// Whether a chunk carried `role: assistant` yet.
    sent_role: bool,
    /// Whether the stream has ended (finish or error, then `[DONE]`).
    done: bool,
}

impl ChatChunks {
    pub fn new(model: &str, id: &str, created: u64, include_usage: bool) -> ChatChunks {
        ChatChunks {
            model: model.to_string(),
            id: id.to_string(),
            created,
            include_usage,
            sent_role: false,
            done: false,
        }
    }

    /// Sets the id, unless one was given (an upstream's own id, seen late).
    pub fn id_if_unset(&mut self, id: impl FnOnce() -> String) {
        if self.id.is_empty() {
            self.id = id();
        }
    }

    pub fn sent_role(&self) -> bool {
        self.sent_role
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// One chunk of `delta` (with the role on the first one).
    pub fn delta(&mut self, delta: Value) -> Vec<String> {
        self.chunk(delta, None)
    }

    /// One delta of a tool call's arguments.
    pub fn arguments(&mut self, call: usize, args: &str) -> Vec<String> {
        self.delta(json!({"tool_calls": [{"index": call, "function": {"arguments": args}}]}))
    }

    /// The ending: the chunk with `finish_reason`, the usage chunk (Chat's
    /// `usage` object) when asked for, then `[DONE]`.
    pub fn finish(&mut self, reason: &str, usage: Option<Value>) -> Vec<String> {
        let mut frames = self.chunk(json!({}), Some(reason));
        if self.include_usage {
            let mut usage_chunk = self.base_chunk(Vec::new());
            usage_chunk["usage"] = usage.unwrap_or(Value::Null);
            frames.push(data_frame(&usage_chunk));
        }
        frames.push(DONE_FRAME.to_string());
        self.done = true;
        frames
    }

    /// The other ending: an error frame, then `[DONE]`; nothing when the
    /// stream already ended.
    pub fn fail(&mut self, message: &str, code: Option<&str>, param: Option<&str>) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        vec![error_frame(message, code, param), DONE_FRAME.to_string()]
    }

    fn chunk(&mut self, mut delta: Value, finish_reason: Option<&str>) -> Vec<String> {
        if !self.sent_role {
            self.sent_role = true;
            delta["role"] = json!("assistant");
        }
        let choice = json!({"index": 0, "delta": delta, "finish_reason": finish_reason});
        vec![data_frame(&self.base_chunk(vec![choice]))]
    }

    fn base_chunk(&self, choices: Vec<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when usage was asked for.
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

/// Test helpers shared by the translations' tests.
#[cfg(test)]
pub mod testing {
    use serde_json::{Value, json};

    /// What a translator into Chat must write for a streamed "Hel" + "lo" that
    /// stopped with 7 prompt and 2 completion tokens, usage asked for (id
    /// `chatcmpl-1`, created 42): parsed as [`frames`] returns it.
    pub fn hello_chunks(model: &str) -> Vec<Option<Value>> {
        let chunk = |choices: Value, usage: Value| {
            Some(
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 42,
                "model": model, "choices": choices, "usage": usage}),
            )
        };
        vec![
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]),
                Value::Null,
            ),
            chunk(
                json!([{"index": 0, "delta": {"content": "lo"}, "finish_reason": null}]),
                Value::Null,
            ),
            chunk(
                json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
                Value::Null,
            ),
            chunk(
                json!([]),
                json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}),
            ),
            None,
        ]
    }

    /// Parses `data:` frames back: `Some(json)` per data frame, `None` for `[DONE]`.
    pub fn frames(out: &[String]) -> Vec<Option<Value>> {
        out.iter()
            .map(|f| {
                let body = f
                    .strip_prefix("data: ")
                    .and_then(|f| f.strip_suffix("\n\n"))
                    .unwrap_or_else(|| panic!("not one SSE frame: {f:?}"));
                (body != "[DONE]").then(|| serde_json::from_str(body).unwrap())
            })
            .collect()
    }

    /// Parses `event:`/`data:` frames back to their data, checking that the
    /// event name is the data's `type`.
    pub fn events(out: &[String]) -> Vec<Value> {
        out.iter()
            .map(|f| {
                let (name, data) = f
                    .strip_prefix("event: ")
                    .and_then(|f| f.strip_suffix("\n\n"))
                    .and_then(|f| f.split_once("\ndata: "))
                    .unwrap_or_else(|| panic!("not one named SSE frame: {f:?}"));
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], name, "{f}");
                data
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_field_and_the_problem() {
        let table = [
            (
                TranslateError::NotAnObject,
                "the request body must be a JSON object",
            ),
            (TranslateError::missing("model"), "model: missing"),
            (
                TranslateError::missing_or_not("messages[0].role", "a string"),
                "messages[0].role: missing or not a string",
            ),
            (
                TranslateError::wrong("tools", "an array"),
                "tools: must be an array",
            ),
            (
                TranslateError::unsupported("n", "only 1 choice is supported by x"),
                "n: only 1 choice is supported by x",
            ),
        ];
        for (error, want) in table {
            assert_eq!(error.to_string(), want);
        }
        let api = ApiError::from(TranslateError::missing("model"));
        assert_eq!(api.status, 400);
        assert_eq!(api.code, Some("invalid_request"));
    }

    #[test]
    fn chat_stream_data_is_read_into_pieces() {
        let call = json!({"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}});
        let table = [
            ("[DONE]".to_string(), ChatData::Done),
            ("not json".to_string(), ChatData::Other),
            (
                json!({"error": {"message": "boom", "code": "overloaded_error"}}).to_string(),
                ChatData::Error {
                    code: Some("overloaded_error".into()),
                    message: "boom".into(),
                },
            ),
            (
                json!({"choices": [{"delta": {"content": "hi", "tool_calls": [call]},
                    "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 1}})
                .to_string(),
                ChatData::Chunk {
                    usage: Some(json!({"prompt_tokens": 1})),
                    pieces: vec![
                        ChunkPiece::Text("hi".into()),
                        ChunkPiece::ToolCall(call.clone()),
                        ChunkPiece::Finish("tool_calls".into()),
                    ],
                },
            ),
            (
                json!({"choices": [{"delta": {"content": ""}, "finish_reason": null}], "usage": null})
                    .to_string(),
                ChatData::Chunk {
                    usage: None,
                    pieces: Vec::new(),
                },
            ),
        ];
        for (data, want) in table {
            assert_eq!(ChatData::read(&data), want, "{data}");
        }
        // Any JSON at all is read without a panic (found by a property test).
        for odd in [
            "[]",
            "5",
            r#"{"choices": 5}"#,
            r#"{"choices": [[1]]}"#,
            r#"{"choices": [{"delta": []}]}"#,
        ] {
            assert!(
                matches!(ChatData::read(odd), ChatData::Chunk { .. }),
                "{odd}"
            );
        }
    }

    #[test]
    fn chat_turns_check_roles_and_tool_calls() {
        let chat = json!({"messages": [
            {"role": "developer", "content": "d"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
        ]});
        let turns = chat_turns(chat.as_object().unwrap()).unwrap();
        assert!(matches!(turns[0], ChatTurn::System { .. }));
        let ChatTurn::Assistant { tool_calls, .. } = &turns[1] else {
            panic!("{turns:?}")
        };
        assert_eq!((tool_calls[0].id, tool_calls[0].name), ("c1", "f"));
        assert_eq!(tool_calls[0].at, "messages[1].tool_calls[0]");
        assert!(matches!(turns[2], ChatTurn::Tool { call_id: "c1", .. }));

        let err = |messages: Value| {
            chat_turns(json!({"messages": messages}).as_object().unwrap())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(json!([1])), "messages[0]: must be an object");
        assert_eq!(
            err(json!([{}])),
            "messages[0].role: missing or not a string"
        );
        assert_eq!(
            err(json!([{"role": "assistant", "tool_calls": {}}])),
            "messages[0].tool_calls: must be an array"
        );
        assert_eq!(
            err(json!([{"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}])),
            "messages[0].tool_calls[0].function.name: missing or not a string"
        );
    }
}
