//! Chat Completions ⇄ Responses API translation (pure, no I/O).
//!
//! With `upstream.api = "responses"` clients keep speaking Chat Completions while
//! the upstream receives Responses API requests, the way ChatMock fronts Codex:
//! [`chat_to_responses`] builds the request, [`responses_to_chat`] turns a
//! non-streaming answer back, and [`StreamTranslator`] turns the upstream's SSE
//! events into Chat Completions chunks one event at a time.
//!
//! Chat fields without a Responses equivalent that clients commonly send anyway
//! (`stop`, `logprobs`, `presence_penalty`, `frequency_penalty`, `seed`, ...)
//! are dropped; fields whose loss would change the answer's shape (`n` > 1) are
//! refused with a message naming the field.

use serde_json::{Map, Value, json};

use super::translate::{
    self, ChatChunks, ChatData, ChatTurn, ChunkPiece, TranslateError, now_unix, part_text,
    part_type,
};
use crate::home::config;

/// Switches that change the translated request.
#[derive(Clone, Debug, Default)]
pub struct TranslateOptions {
    /// Adds a `{"type":"web_search"}` tool (`features.enable_web_search`).
    pub enable_web_search: bool,
}

/// Reasoning efforts accepted as a model-name suffix, e.g. `gpt-5-high`.
pub const REASONING_EFFORTS: [&str; 4] = ["minimal", "low", "medium", "high"];

/// Splits a `-minimal/-low/-medium/-high` suffix off a model name:
/// `"gpt-5-codex-high"` → `("gpt-5-codex", Some("high"))`.
pub fn split_reasoning_suffix(model: &str) -> (&str, Option<&'static str>) {
    for effort in REASONING_EFFORTS {
        if let Some(base) = model
            .strip_suffix(effort)
            .and_then(|m| m.strip_suffix('-'))
            .filter(|base| !base.is_empty())
        {
            return (base, Some(effort));
        }
    }
    (model, None)
}

/// The prompt (by name, see [`config::BASE_PROMPT`]) a model receives as
/// `instructions`: the codex prompt for `*codex*` models, the base prompt otherwise.
pub fn instructions_for(model: &str) -> &'static str {
    if model.to_ascii_lowercase().contains("codex") {
        config::CODEX_PROMPT
    } else {
        config::BASE_PROMPT
    }
}

/// Translates a Chat Completions request body into a Responses API request.
///
/// `Err` is a client error (HTTP 400) naming the offending field, e.g.
/// `messages[2].tool_call_id: missing (required for role "tool")`.
pub fn chat_to_responses(
    chat: &Value,
    instructions: &str,
    opts: &TranslateOptions,
) -> Result<Value, TranslateError> {
    let chat = translate::object(chat)?;
    let (model, suffix_effort) = split_reasoning_suffix(translate::model(chat)?);

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    if !instructions.is_empty() {
        out.insert("instructions".into(), json!(instructions));
    }
    out.insert("input".into(), Value::Array(translate_messages(chat)?));

    let mut tools = match chat.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, t)| translate_tool(t, i))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(TranslateError::wrong("tools", "an array")),
    };
    if opts.enable_web_search
        && !tools.iter().any(|t| {
            t["type"]
                .as_str()
                .is_some_and(|ty| ty.starts_with("web_search"))
        })
    {
        tools.push(json!({"type": "web_search"}));
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = chat.get("tool_choice").filter(|v| !v.is_null()) {
        out.insert("tool_choice".into(), translate_tool_choice(choice)?);
    }
    if let Some(v) = chat.get("parallel_tool_calls").filter(|v| !v.is_null()) {
        if !v.is_boolean() {
            return Err(TranslateError::wrong("parallel_tool_calls", "a boolean"));
        }
        out.insert("parallel_tool_calls".into(), v.clone());
    }

    // `max_completion_tokens` supersedes the deprecated `max_tokens`.
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = chat.get(key).filter(|v| !v.is_null()) {
            if v.as_u64().is_none() {
                return Err(TranslateError::wrong(key, "a non-negative integer"));
            }
            out.insert("max_output_tokens".into(), v.clone());
            break;
        }
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = chat.get(key).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(TranslateError::wrong(key, "a number"));
            }
            out.insert(key.into(), v.clone());
        }
    }
    translate::one_choice(chat, "a Responses API upstream")?;

    // Reasoning: an explicit `reasoning_effort` (or `reasoning` object) wins over
    // the model-name suffix.
    let mut reasoning = match chat.get("reasoning") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(r)) => r.clone(),
        Some(_) => return Err(TranslateError::wrong("reasoning", "an object")),
    };
    if let Some(v) = chat.get("reasoning_effort").filter(|v| !v.is_null()) {
        let effort = v
            .as_str()
            .ok_or_else(|| TranslateError::wrong("reasoning_effort", "a string"))?;
        reasoning.insert("effort".into(), json!(effort));
    }
    if let Some(effort) = suffix_effort {
        reasoning.entry("effort").or_insert(json!(effort));
    }
    if !reasoning.is_empty() {
        out.insert("reasoning".into(), Value::Object(reasoning));
    }

    if let Some(format) = chat.get("response_format").filter(|v| !v.is_null()) {
        out.insert(
            "text".into(),
            json!({"format": translate_response_format(format)?}),
        );
    }
    if let Some(v) = translate::stream_flag(chat)? {
        out.insert("stream".into(), v.clone());
    }
    for key in ["user", "metadata", "service_tier"] {
        if let Some(v) = chat.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("store".into(), json!(false));
    Ok(Value::Object(out))
}

fn translate_messages(chat: &Map<String, Value>) -> Result<Vec<Value>, TranslateError> {
    let turns = translate::chat_turns(chat)?;
    let mut input = Vec::with_capacity(turns.len());
    for turn in turns {
        match turn {
            ChatTurn::System { content, at } => {
                let parts = text_parts(content, "input_text", &at)?;
                input.push(json!({"type": "message", "role": "developer", "content": parts}));
            }
            ChatTurn::User { content, at } => {
                let parts = user_parts(content, &at)?;
                input.push(json!({"type": "message", "role": "user", "content": parts}));
            }
            ChatTurn::Assistant {
                content,
                tool_calls,
                at,
            } => {
                let parts = text_parts(content, "output_text", &at)?;
                if !parts.is_empty() {
                    input.push(json!({"type": "message", "role": "assistant", "content": parts}));
                }
                for call in tool_calls {
                    let arguments = match call.arguments {
                        Value::Null => "{}".to_string(),
                        Value::String(s) => s.clone(),
                        // Some clients send the arguments as an object; the wire form is a string.
                        other => other.to_string(),
                    };
                    input.push(json!({"type": "function_call", "call_id": call.id,
                        "name": call.name, "arguments": arguments}));
                }
            }
            ChatTurn::Tool {
                call_id,
                content,
                at,
            } => {
                let output = translate::plain_text(content, &at)?;
                input.push(
                    json!({"type": "function_call_output", "call_id": call_id, "output": output}),
                );
            }
        }
    }
    Ok(input)
}

/// Text-only content (string or array of `text` parts) as `kind` parts.
fn text_parts(content: &Value, kind: &str, at: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": kind, "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let at = format!("{at}[{j}]");
                match part_type(part, &at)? {
                    "text" => Ok(json!({"type": kind, "text": part_text(part, &at)?})),
                    "refusal" if kind == "output_text" => {
                        let refusal = translate::str_at(part, "refusal", &at)?;
                        Ok(json!({"type": "refusal", "refusal": refusal}))
                    }
                    other => Err(TranslateError::unsupported(
                        format!("{at}.type"),
                        format!("{other:?} is not allowed here (only \"text\")"),
                    )),
                }
            })
            .collect(),
        _ => Err(TranslateError::wrong(
            at,
            "a string, an array of parts or null",
        )),
    }
}

/// User content: text and image parts.
fn user_parts(content: &Value, at: &str) -> Result<Vec<Value>, TranslateError> {
    let Value::Array(parts) = content else {
        return text_parts(content, "input_text", at);
    };
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| {
            let at = format!("{at}[{j}]");
            match part_type(part, &at)? {
                "text" => Ok(json!({"type": "input_text", "text": part_text(part, &at)?})),
                "image_url" => {
                    let (url, detail) = translate::image_url(part, &at)?;
                    let mut item = json!({"type": "input_image", "image_url": url});
                    if let Some(detail) = detail {
                        item["detail"] = json!(detail);
                    }
                    Ok(item)
                }
                other => Err(TranslateError::unsupported(
                    format!("{at}.type"),
                    format!("{other:?} is not supported (use \"text\" or \"image_url\")"),
                )),
            }
        })
        .collect()
}

fn translate_tool(tool: &Value, i: usize) -> Result<Value, TranslateError> {
    let Some(f) = translate::function_tool(tool, i)?.1 else {
        // Responses-native tools (web_search, file_search, ...) pass through unchanged.
        return Ok(tool.clone());
    };
    let mut out = json!({"type": "function", "name": f.name});
    for (key, value) in [
        ("description", f.description),
        ("parameters", f.parameters),
        ("strict", f.strict),
    ] {
        if let Some(v) = value {
            out[key] = v.clone();
        }
    }
    Ok(out)
}

fn translate_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::String(s) => Err(TranslateError::unsupported(
            "tool_choice",
            format!("{s:?} must be \"auto\", \"none\", \"required\" or an object"),
        )),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Ok(json!({"type": "function", "name": translate::tool_choice_name(o)?}))
        }
        Value::Object(_) => Ok(choice.clone()),
        _ => Err(TranslateError::wrong(
            "tool_choice",
            "a string or an object",
        )),
    }
}

fn translate_response_format(format: &Value) -> Result<Value, TranslateError> {
    match part_type(format, "response_format")? {
        "text" => Ok(json!({"type": "text"})),
        "json_object" => Ok(json!({"type": "json_object"})),
        "json_schema" => {
            let schema = format
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    TranslateError::missing_or_not("response_format.json_schema", "an object")
                })?;
            let mut out = Map::new();
            out.insert("type".into(), json!("json_schema"));
            for (key, value) in schema {
                out.insert(key.clone(), value.clone());
            }
            Ok(Value::Object(out))
        }
        other => Err(TranslateError::unsupported(
            "response_format.type",
            format!("unknown type {other:?}"),
        )),
    }
}

/// A Chat Completions id for a Responses id (`resp_abc` → `chatcmpl-abc`).
pub fn chat_id(response_id: &str) -> String {
    format!(
        "chatcmpl-{}",
        response_id.strip_prefix("resp_").unwrap_or(response_id)
    )
}

/// Chat `usage` from a Responses `usage` object.
fn chat_usage(usage: &Value) -> Option<Value> {
    let input = usage.get("input_tokens")?.as_u64()?;
    let output = usage.get("output_tokens")?.as_u64()?;
    let total = usage
        .get("total_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(input + output);
    let mut out =
        json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": total});
    if let Some(cached) = usage["input_tokens_details"]["cached_tokens"].as_u64() {
        out["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    if let Some(reasoning) = usage["output_tokens_details"]["reasoning_tokens"].as_u64() {
        out["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
    }
    Some(out)
}

/// The finish reason of a response that did not call a tool.
fn stop_reason(resp: &Value) -> &'static str {
    if resp["status"] == "incomplete" {
        match resp["incomplete_details"]["reason"].as_str() {
            Some("max_output_tokens") => return "length",
            Some("content_filter") => return "content_filter",
            _ => {}
        }
    }
    "stop"
}

/// Translates a non-streaming Responses answer into a `chat.completion`.
pub fn responses_to_chat(resp: &Value, model: &str) -> Value {
    let mut text = String::new();
    let mut refusal = String::new();
    let mut tool_calls = Vec::new();
    for item in resp["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    match part["type"].as_str() {
                        Some("output_text") => text.push_str(part["text"].as_str().unwrap_or("")),
                        Some("refusal") => refusal.push_str(part["refusal"].as_str().unwrap_or("")),
                        _ => {}
                    }
                }
            }
            Some("function_call") => tool_calls.push(json!({
                "id": item["call_id"].as_str().or(item["id"].as_str()).unwrap_or(""),
                "type": "function",
                "function": {
                    "name": item["name"].as_str().unwrap_or(""),
                    "arguments": item["arguments"].as_str().unwrap_or("{}"),
                },
            })),
            _ => {}
        }
    }
    let finish_reason = if tool_calls.is_empty() {
        stop_reason(resp)
    } else {
        "tool_calls"
    };
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
    });
    if !refusal.is_empty() {
        message["refusal"] = json!(refusal);
    }
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let mut out = json!({
        "id": chat_id(resp["id"].as_str().unwrap_or("")),
        "object": "chat.completion",
        "created": resp["created_at"].as_u64().unwrap_or_else(now_unix),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    });
    if let Some(usage) = chat_usage(&resp["usage"]) {
        out["usage"] = usage;
    }
    out
}

/// One tool call seen in the stream.
#[derive(Debug)]
struct StreamedCall {
    item_id: Option<String>,
    output_index: Option<u64>,
    /// Whether any part of the arguments was already sent.
    sent_arguments: bool,
}

/// Turns Responses API stream events into Chat Completions chunk frames.
///
/// Every returned `String` is one complete SSE frame (`data: {...}\n\n`). The
/// translator guarantees exactly one terminal outcome per stream: either one
/// chunk with a `finish_reason` (then the usage chunk when asked, then
/// `data: [DONE]`) or one error frame followed by `data: [DONE]`. Events after
/// that are ignored.
#[derive(Debug)]
pub struct StreamTranslator {
    /// The Chat stream written.
    out: ChatChunks,
    calls: Vec<StreamedCall>,
    usage: Option<(u64, u64)>,
    /// Input tokens read from the cache, from the final event.
    cached: u64,
}

impl StreamTranslator {
    /// `id` is the `chatcmpl-...` id every chunk carries, `created` a unix time,
    /// `include_usage` the client's `stream_options.include_usage`.
    pub fn new(model: &str, id: &str, created: u64, include_usage: bool) -> StreamTranslator {
        StreamTranslator {
            out: ChatChunks::new(model, id, created, include_usage),
            calls: Vec::new(),
            usage: None,
            cached: 0,
        }
    }

    /// `(input_tokens, output_tokens)` from the upstream's final event, once seen.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage
    }

    /// `input_tokens_details.cached_tokens` from the final event (0 until then).
    pub fn cached(&self) -> u64 {
        self.cached
    }

    /// True once the terminal frames (finish or error, then `[DONE]`) were produced.
    pub fn is_done(&self) -> bool {
        self.out.is_done()
    }

    /// The first chunk, `{"role":"assistant","content":""}`, sent as soon as
    /// the upstream accepted the request, so the client has headers and a chunk
    /// while the model is still thinking. Nothing if already sent.
    pub fn start(&mut self) -> Vec<String> {
        if self.out.sent_role() || self.out.is_done() {
            return Vec::new();
        }
        self.out.delta(json!({"content": ""}))
    }

    /// Translates one upstream event (the parsed `data:` JSON of one SSE frame).
    pub fn on_event(&mut self, event: &Value) -> Vec<String> {
        if self.out.is_done() {
            return Vec::new();
        }
        match event["type"].as_str().unwrap_or("") {
            "response.output_text.delta" => match event["delta"].as_str() {
                Some(delta) if !delta.is_empty() => self.out.delta(json!({"content": delta})),
                _ => Vec::new(),
            },
            "response.refusal.delta" => match event["delta"].as_str() {
                Some(delta) if !delta.is_empty() => self.out.delta(json!({"refusal": delta})),
                _ => Vec::new(),
            },
            "response.output_item.added" if event["item"]["type"] == "function_call" => {
                self.start_call(event, &event["item"])
            }
            "response.function_call_arguments.delta" => {
                let delta = event["delta"].as_str().unwrap_or("");
                match self.find_call(event) {
                    Some(index) if !delta.is_empty() => {
                        self.calls[index].sent_arguments = true;
                        self.out.arguments(index, delta)
                    }
                    _ => Vec::new(),
                }
            }
            // Upstreams that send the arguments only whole (in `.done` or in the
            // finished item) still produce them once.
            "response.function_call_arguments.done" => {
                let args = event["arguments"].as_str().unwrap_or("");
                self.whole_arguments(event, args)
            }
            "response.output_item.done" if event["item"]["type"] == "function_call" => {
                let item = &event["item"];
                let mut frames = Vec::new();
                if self.find_call(event).is_none() {
                    frames = self.start_call(event, item);
                }
                frames
                    .extend(self.whole_arguments(event, item["arguments"].as_str().unwrap_or("")));
                frames
            }
            "response.completed" | "response.incomplete" => {
                let response = &event["response"];
                self.usage = response["usage"]["input_tokens"]
                    .as_u64()
                    .zip(response["usage"]["output_tokens"].as_u64());
                self.cached = response["usage"]["input_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0);
                let reason = if self.calls.is_empty() {
                    stop_reason(response)
                } else {
                    "tool_calls"
                };
                self.out.finish(reason, chat_usage(&response["usage"]))
            }
            "response.failed" => {
                let error = &event["response"]["error"];
                let message = error["message"]
                    .as_str()
                    .unwrap_or("the upstream reported response.failed without a message");
                self.out.fail(message, error["code"].as_str(), None)
            }
            "error" => {
                // Some upstreams nest the details under `error`.
                let error = if event["error"].is_object() {
                    &event["error"]
                } else {
                    event
                };
                let message = error["message"]
                    .as_str()
                    .unwrap_or("the upstream sent an error event without a message");
                self.out
                    .fail(message, error["code"].as_str(), error["param"].as_str())
            }
            _ => Vec::new(),
        }
    }

    /// Call when the upstream stream ends. Without a completion event this emits
    /// an error frame and `[DONE]`; otherwise nothing.
    pub fn finish(&mut self) -> Vec<String> {
        self.out.fail(
            "upstream closed the stream before response.completed",
            Some("upstream_stream_incomplete"),
            None,
        )
    }

    /// Ends the stream with an error frame and `[DONE]`, e.g. when the upstream
    /// connection broke or stalled; nothing when the stream already ended.
    pub fn abort(&mut self, message: &str, code: Option<&str>) -> Vec<String> {
        self.out.fail(message, code, None)
    }

    fn find_call(&self, event: &Value) -> Option<usize> {
        if let Some(id) = event["item_id"].as_str().or(event["item"]["id"].as_str()) {
            if let Some(i) = self
                .calls
                .iter()
                .position(|c| c.item_id.as_deref() == Some(id))
            {
                return Some(i);
            }
        }
        let index = event["output_index"].as_u64()?;
        self.calls
            .iter()
            .position(|c| c.output_index == Some(index))
    }

    fn start_call(&mut self, event: &Value, item: &Value) -> Vec<String> {
        let index = self.calls.len();
        self.calls.push(StreamedCall {
            item_id: item["id"].as_str().map(str::to_string),
            output_index: event["output_index"].as_u64(),
            sent_arguments: false,
        });
        let call_id = item["call_id"]
            .as_str()
            .or(item["id"].as_str())
            .unwrap_or("");
        self.out.delta(json!({"tool_calls": [{
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": item["name"].as_str().unwrap_or(""), "arguments": ""},
        }]}))
    }

    fn whole_arguments(&mut self, event: &Value, args: &str) -> Vec<String> {
        match self.find_call(event) {
            Some(index) if !self.calls[index].sent_arguments && !args.is_empty() => {
                self.calls[index].sent_arguments = true;
                self.out.arguments(index, args)
            }
            _ => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Responses clients over a Chat-speaking provider: the other direction
// ---------------------------------------------------------------------------

/// A Responses request read for a provider that speaks Chat Completions (an
/// `api = "anthropic"` provider composes this with its Chat → Messages
/// translation, so there is one mapping per pair of APIs).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The Chat Completions request body.
    pub body: Value,
    /// What the answer's calls must be turned back into.
    pub tools: ToolNames,
}

/// The request's tools that are not plain functions, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolNames {
    /// `custom` (freeform) tools: they went out as function tools with one
    /// string parameter `input`, and calls of them come back as
    /// `custom_tool_call` items.
    pub custom: Vec<String>,
    /// `(tool, namespace)` for the tools of a `namespace` tool: they went out
    /// as plain functions, and calls of them come back with their `namespace`.
    pub namespaced: Vec<(String, String)>,
}

/// Responses-native tools a Chat provider cannot run (OpenAI runs them): left
/// out of the request, as their calls in the history are.
const HOSTED_TOOLS: [&str; 8] = [
    "web_search",
    "web_search_preview",
    "file_search",
    "computer_use_preview",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
];

/// The parameter schema a `custom` tool gets as a function tool.
fn custom_tool_parameters() -> Value {
    json!({"type": "object", "properties": {"input": {"type": "string",
        "description": "the tool's whole input, as free-form text"}}, "required": ["input"]})
}

/// Translates a Responses API request (what Codex CLI sends) into a Chat
/// Completions request: `instructions` and system/developer items become
/// system messages, `function_call` items an assistant's `tool_calls`,
/// `function_call_output` items `tool` messages (images in an output follow as
/// a user message), `input_image` parts `image_url` parts, `max_output_tokens`
/// `max_tokens`. `reasoning` items and the calls of hosted tools are left out.
///
/// `Err` is a client error (HTTP 400) naming the field, e.g.
/// `input[2].call_id: missing or not a string`.
pub fn responses_request_to_chat(request: &Value) -> Result<ChatRequest, TranslateError> {
    let request = translate::object(request)?;
    let model = translate::model(request)?;
    let mut messages = Vec::new();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(TranslateError::wrong("instructions", "a string")),
    }
    for key in ["previous_response_id", "conversation"] {
        if request.get(key).is_some_and(|v| !v.is_null()) {
            return Err(TranslateError::unsupported(
                key,
                "this provider keeps no conversation state; send the whole conversation \
                 in input (with store: false, as Codex does)",
            ));
        }
    }
    match request.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, &format!("input[{i}]"), &mut messages)?;
            }
        }
        Some(_) => {
            return Err(TranslateError::wrong(
                "input",
                "a string or an array of input items",
            ));
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    let mut names = ToolNames::default();
    let mut tools = Vec::new();
    match request.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, tool) in list.iter().enumerate() {
                chat_tool(tool, &format!("tools[{i}]"), None, &mut names, &mut tools)?;
            }
        }
        Some(_) => return Err(TranslateError::wrong("tools", "an array")),
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    match request.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => {
            if out.contains_key("tools") || s == "none" {
                out.insert("tool_choice".into(), json!(s));
            }
        }
        Some(Value::Object(o))
            if matches!(
                o.get("type").and_then(Value::as_str),
                Some("function" | "custom")
            ) =>
        {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| TranslateError::missing_or_not("tool_choice.name", "a string"))?;
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": name}}),
            );
        }
        Some(_) => {
            return Err(TranslateError::unsupported(
                "tool_choice",
                "must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"name\"}",
            ));
        }
    }
    if let Some(v) = request.get("parallel_tool_calls").filter(|v| !v.is_null()) {
        if !v.is_boolean() {
            return Err(TranslateError::wrong("parallel_tool_calls", "a boolean"));
        }
        out.insert("parallel_tool_calls".into(), v.clone());
    }
    if let Some(v) = request.get("max_output_tokens").filter(|v| !v.is_null()) {
        if v.as_u64().is_none() {
            return Err(TranslateError::wrong(
                "max_output_tokens",
                "a non-negative integer",
            ));
        }
        out.insert("max_tokens".into(), v.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = request.get(key).filter(|v| !v.is_null()) {
            if !v.is_number() {
                return Err(TranslateError::wrong(key, "a number"));
            }
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(effort) = request
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str)
    {
        out.insert("reasoning_effort".into(), json!(effort));
    }
    if let Some(format) = request
        .get("text")
        .and_then(|t| t.get("format"))
        .and_then(Value::as_object)
    {
        let mut format = format.clone();
        if format.get("type").and_then(Value::as_str) == Some("json_schema") {
            format.remove("type");
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": format}),
            );
        } else {
            out.insert("response_format".into(), Value::Object(format));
        }
    }
    if let Some(v) = translate::stream_flag(request)? {
        out.insert("stream".into(), v.clone());
        if v == true {
            // The usage of `response.completed` comes from the usage chunk.
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
    }
    if let Some(user) = request
        .get("user")
        .or_else(|| request.get("safety_identifier"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    Ok(ChatRequest {
        body: Value::Object(out),
        tools: names,
    })
}

/// One Responses tool onto the Chat tools: a function as it is, a custom tool
/// as a function of one string, a namespace's tools each (remembering their
/// namespace), a hosted tool not at all.
fn chat_tool(
    tool: &Value,
    at: &str,
    namespace: Option<&str>,
    names: &mut ToolNames,
    tools: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let name = || translate::str_at(tool, "name", at);
    match part_type(tool, at)? {
        "function" => {
            let mut function = json!({"name": name()?});
            for key in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function[key] = v.clone();
                }
            }
            tools.push(json!({"type": "function", "function": function}));
        }
        "custom" => {
            let mut description = tool["description"].as_str().unwrap_or("").to_string();
            if let Some(definition) = tool["format"]["definition"].as_str() {
                // A grammar the input must follow: the model can only read
                // it, so it goes into the description.
                description.push_str("\n\nThe input follows this grammar:\n");
                description.push_str(definition);
            }
            names.custom.push(name()?.to_string());
            tools.push(json!({"type": "function", "function": {"name": name()?,
                "description": description, "parameters": custom_tool_parameters()}}));
        }
        "namespace" if namespace.is_none() => {
            let outer = name()?;
            let inner = tool
                .get("tools")
                .and_then(Value::as_array)
                .ok_or_else(|| TranslateError::missing_or_not(format!("{at}.tools"), "an array"))?;
            for (j, inner_tool) in inner.iter().enumerate() {
                let before = tools.len();
                chat_tool(
                    inner_tool,
                    &format!("{at}.tools[{j}]"),
                    Some(outer),
                    names,
                    tools,
                )?;
                for added in &tools[before..] {
                    if let Some(inner_name) = added["function"]["name"].as_str() {
                        names
                            .namespaced
                            .push((inner_name.to_string(), outer.to_string()));
                    }
                }
            }
        }
        ty if HOSTED_TOOLS.iter().any(|h| ty.starts_with(h)) => {}
        other => {
            return Err(TranslateError::unsupported(
                format!("{at}.type"),
                format!(
                    "{other:?} is not supported by this provider \
                     (\"function\", \"custom\" and \"namespace\" tools are)"
                ),
            ));
        }
    }
    Ok(())
}

/// One `input` item onto the Chat messages.
fn input_item(item: &Value, at: &str, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    if !item.is_object() {
        return Err(TranslateError::wrong(at, "an object"));
    }
    // A message item may leave out `type`.
    let ty = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match ty {
        "message" => {
            let role = translate::str_at(item, "role", at)?;
            let content = item.get("content").unwrap_or(&Value::Null);
            let at = format!("{at}.content");
            match role {
                "system" | "developer" => {
                    let (text, _) = item_parts(content, &at, false)?;
                    messages.push(json!({"role": "system", "content": text}));
                }
                "user" => {
                    // One text part is a plain string; several parts stay
                    // parts (separate text blocks, not glued together).
                    let (text, parts) = item_parts(content, &at, true)?;
                    let content = if parts.len() <= 1 && parts.iter().all(|p| p["type"] == "text") {
                        json!(text)
                    } else {
                        Value::Array(parts)
                    };
                    messages.push(json!({"role": "user", "content": content}));
                }
                "assistant" => {
                    let (text, _) = item_parts(content, &at, false)?;
                    messages.push(json!({"role": "assistant", "content": text}));
                }
                other => {
                    return Err(TranslateError::unsupported(
                        format!("{at}.role"),
                        format!("unknown role {other:?}"),
                    ));
                }
            }
        }
        "function_call" | "custom_tool_call" | "local_shell_call" => {
            let call_id = translate::str_at(item, "call_id", at)?;
            let (name, arguments) = match ty {
                "custom_tool_call" => (
                    translate::str_at(item, "name", at)?,
                    json!({"input": translate::str_at(item, "input", at)?}).to_string(),
                ),
                // A call of the hosted shell made elsewhere: what it ran, as
                // a call the model can read next to its output.
                "local_shell_call" => ("local_shell", item["action"].to_string()),
                _ => (
                    translate::str_at(item, "name", at)?,
                    match item.get("arguments") {
                        None | Some(Value::Null) => "{}".to_string(),
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    },
                ),
            };
            let call = json!({"id": call_id, "type": "function",
                "function": {"name": name, "arguments": arguments}});
            // Calls that follow an assistant's words (or other calls) belong
            // to the same assistant message.
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    if last["content"] == "" {
                        last["content"] = Value::Null;
                    }
                    match last["tool_calls"].as_array_mut() {
                        Some(calls) => calls.push(call),
                        None => last["tool_calls"] = json!([call]),
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" | "custom_tool_call_output" | "local_shell_call_output" => {
            let call_id = translate::str_at(item, "call_id", at)?;
            let output = item.get("output").unwrap_or(&Value::Null);
            let (text, parts) = item_parts(output, &format!("{at}.output"), true)?;
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": text}));
            // A tool message carries text only: the output's images follow
            // as the user's (one user turn with the result, for Anthropic).
            let images: Vec<Value> = parts.into_iter().filter(|p| p["type"] != "text").collect();
            if !images.is_empty() {
                messages.push(json!({"role": "user", "content": images}));
            }
        }
        // Reasoning cannot be handed to another provider; hosted tools' calls
        // ran at OpenAI and carry nothing a Chat provider can read.
        "reasoning"
        | "web_search_call"
        | "file_search_call"
        | "image_generation_call"
        | "code_interpreter_call" => {}
        other => {
            return Err(TranslateError::unsupported(
                format!("{at}.type"),
                format!("{other:?} items are not supported by this provider"),
            ));
        }
    }
    Ok(())
}

/// A message's (or tool output's) content: its text joined, and the Chat
/// parts (text and, when `images`, `image_url`).
fn item_parts(
    content: &Value,
    at: &str,
    images: bool,
) -> Result<(String, Vec<Value>), TranslateError> {
    let parts = match content {
        Value::Null => return Ok((String::new(), Vec::new())),
        Value::String(s) => return Ok((s.clone(), vec![json!({"type": "text", "text": s})])),
        Value::Array(parts) => parts,
        _ => return Err(TranslateError::wrong(at, "a string or an array of parts")),
    };
    let mut text = String::new();
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        match part_type(part, &at)? {
            "input_text" | "output_text" | "text" => {
                let t = part_text(part, &at)?;
                text.push_str(t);
                out.push(json!({"type": "text", "text": t}));
            }
            "refusal" => text.push_str(part["refusal"].as_str().unwrap_or("")),
            "input_image" if images => {
                let url = part
                    .get("image_url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        TranslateError::unsupported(
                            format!("{at}.image_url"),
                            "missing: only images by URL or data URL are supported (not file_id)",
                        )
                    })?;
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").and_then(Value::as_str) {
                    image["detail"] = json!(detail);
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("{at}.type"),
                    format!("{other:?} is not supported here"),
                ));
            }
        }
    }
    Ok((text, out))
}

/// The parts of a `response` object that do not change while it is produced:
/// its id, creation time, model, and what it echoes of the request.
#[derive(Debug, Clone)]
pub struct ResponseShell {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    echo: Map<String, Value>,
}

impl ResponseShell {
    pub fn new(
        id: &str,
        created_at: u64,
        model: &str,
        request: &Map<String, Value>,
    ) -> ResponseShell {
        let echo = [
            "instructions",
            "max_output_tokens",
            "parallel_tool_calls",
            "previous_response_id",
            "store",
            "temperature",
            "tool_choice",
            "tools",
            "top_p",
            "metadata",
        ]
        .into_iter()
        .filter_map(|key| {
            let v = request.get(key).filter(|v| !v.is_null())?;
            Some((key.to_string(), v.clone()))
        })
        .collect();
        ResponseShell {
            id: id.to_string(),
            created_at,
            model: model.to_string(),
            echo,
        }
    }

    /// The `response` object with this `status`, `output` and `usage`.
    pub fn object(&self, status: &str, output: Vec<Value>, usage: Value) -> Value {
        let echo = |key: &str, default: Value| self.echo.get(key).cloned().unwrap_or(default);
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": echo("instructions", Value::Null),
            "max_output_tokens": echo("max_output_tokens", Value::Null),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
            "previous_response_id": echo("previous_response_id", Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "store": echo("store", json!(false)),
            "temperature": echo("temperature", json!(1.0)),
            "text": {"format": {"type": "text"}},
            "tool_choice": echo("tool_choice", json!("auto")),
            "tools": echo("tools", json!([])),
            "top_p": echo("top_p", json!(1.0)),
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": echo("metadata", json!({})),
        })
    }

    /// A finished `response` object: `completed`, or `incomplete` with its
    /// reason when the Chat `finish_reason` says the answer was cut.
    fn finished(&self, finish_reason: Option<&str>, output: Vec<Value>, usage: &Value) -> Value {
        let usage = responses_usage_json(usage);
        match finish_reason {
            Some("length") | Some("content_filter") => {
                let reason = if finish_reason == Some("length") {
                    "max_output_tokens"
                } else {
                    "content_filter"
                };
                let mut object = self.object("incomplete", output, usage);
                object["incomplete_details"] = json!({"reason": reason});
                object
            }
            _ => self.object("completed", output, usage),
        }
    }

    /// A `failed` response object carrying `error`.
    fn failed(&self, code: &str, message: &str, output: Vec<Value>) -> Value {
        let mut object = self.object("failed", output, Value::Null);
        object["error"] = json!({"code": code, "message": message});
        object
    }
}

/// Responses `usage` from Chat `usage` (`null` when there is none).
fn responses_usage_json(usage: &Value) -> Value {
    let Some(input) = usage["prompt_tokens"].as_u64() else {
        return Value::Null;
    };
    let output = usage["completion_tokens"].as_u64().unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens":
            usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens":
            usage["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0)},
        "total_tokens": usage["total_tokens"].as_u64().unwrap_or(input + output),
    })
}

/// A finished `message` output item with its text.
fn message_item(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// A finished call output item: a `function_call` (with its `namespace` when
/// the tool came from one), or a `custom_tool_call` when `name` is one of the
/// request's custom tools.
fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, names: &ToolNames) -> Value {
    if names.custom.iter().any(|c| c == name) {
        // Sent as `{"input": "..."}`; a model that answered otherwise still
        // gets its words through.
        let input = serde_json::from_str::<Value>(arguments)
            .ok()
            .and_then(|v| v["input"].as_str().map(str::to_string))
            .unwrap_or_else(|| arguments.to_string());
        return json!({"id": id, "type": "custom_tool_call", "status": "completed",
            "call_id": call_id, "name": name, "input": input});
    }
    let mut item = json!({"id": id, "type": "function_call", "status": "completed",
        "call_id": call_id, "name": name, "arguments": arguments});
    if let Some((_, namespace)) = names.namespaced.iter().find(|(n, _)| n == name) {
        item["namespace"] = json!(namespace);
    }
    item
}

/// Translates a `chat.completion` into a `response` object.
pub fn chat_to_response(chat: &Value, shell: &ResponseShell, tools: &ToolNames) -> Value {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let suffix = shell.id.strip_prefix("resp_").unwrap_or(&shell.id);
    let mut output = Vec::new();
    let text = match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        output.push(message_item(&format!("msg_{suffix}"), &text));
    }
    for (i, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let arguments = match &call["function"]["arguments"] {
            Value::String(s) => s.clone(),
            Value::Null => "{}".to_string(),
            other => other.to_string(),
        };
        output.push(call_item(
            &format!("fc_{suffix}_{i}"),
            call["id"].as_str().unwrap_or(""),
            call["function"]["name"].as_str().unwrap_or(""),
            &arguments,
            tools,
        ));
    }
    shell.finished(choice["finish_reason"].as_str(), output, &chat["usage"])
}

/// Numbers Responses stream events: every frame is `event: TYPE` / `data:
/// {"type", ..., "sequence_number"}`, numbered from 0, as OpenAI sends them.
#[derive(Debug, Default)]
pub struct EventSequence {
    next: u64,
}

impl EventSequence {
    pub fn frame(&mut self, kind: &str, data: Value) -> String {
        let mut ordered = Map::new();
        // `type` first, as OpenAI sends it.
        ordered.insert("type".into(), json!(kind));
        if let Value::Object(data) = data {
            ordered.extend(data);
        }
        ordered.insert("sequence_number".into(), json!(self.next));
        self.next += 1;
        format!("event: {kind}\ndata: {}\n\n", Value::Object(ordered))
    }
}

/// One output item while it streams.
#[derive(Debug)]
enum Streaming {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        /// The Chat tool call's `index`.
        chat_index: u64,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Turns Chat Completions chunks into the Responses event sequence, as the
/// mock's Responses stream has it: `response.created`, `response.in_progress`,
/// per output item `response.output_item.added`, then for text
/// `response.content_part.added`, `response.output_text.delta`…,
/// `response.output_text.done`, `response.content_part.done`, for a call
/// `response.function_call_arguments.delta`… and `.done` (a custom tool's call:
/// `response.custom_tool_call_input.delta` and `.done`), then
/// `response.output_item.done`; last `response.completed` (or
/// `response.incomplete` when the answer was cut) with the whole response and
/// its usage.
///
/// An error frame, or a stream that ends before its `finish_reason`, becomes
/// exactly one `response.failed` and nothing after it. An error before any
/// content is the stream's first event (so routing fails over, as it does
/// for Chat streams).
#[derive(Debug)]
pub struct ChatToResponses {
    shell: ResponseShell,
    tools: ToolNames,
    events: EventSequence,
    started: bool,
    /// Output items in order; the text message open while `open_text`.
    items: Vec<Streaming>,
    open_text: Option<usize>,
    finish_reason: Option<String>,
    usage: Value,
    done: bool,
}

impl ChatToResponses {
    pub fn new(shell: ResponseShell, tools: ToolNames) -> ChatToResponses {
        ChatToResponses {
            shell,
            tools,
            events: EventSequence::default(),
            started: false,
            items: Vec::new(),
            open_text: None,
            finish_reason: None,
            usage: Value::Null,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Translates one Chat SSE `data:` payload (`[DONE]` included).
    pub fn on_data(&mut self, data: &str) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        match ChatData::read(data) {
            ChatData::Done => self.end(),
            ChatData::Other => Vec::new(),
            ChatData::Error { code, message } => {
                self.fail(code.as_deref().unwrap_or("upstream_error"), &message)
            }
            ChatData::Chunk { usage, pieces } => {
                let mut out = self.start();
                if let Some(usage) = usage {
                    self.usage = usage;
                }
                for piece in pieces {
                    match piece {
                        ChunkPiece::Text(text) => out.extend(self.text_delta(&text)),
                        ChunkPiece::ToolCall(call) => out.extend(self.call_delta(&call)),
                        ChunkPiece::Finish(reason) => self.finish_reason = Some(reason),
                    }
                }
                out
            }
        }
    }

    /// Call when the Chat stream ends: one that reported its `finish_reason`
    /// but no `[DONE]` still completes; one without is `response.failed`.
    pub fn finish(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        if self.finish_reason.is_some() {
            return self.end();
        }
        self.fail(
            "upstream_stream_incomplete",
            "the upstream closed the stream before the answer was complete",
        )
    }

    /// Ends the stream with `response.failed` (a broken or stalled
    /// upstream); nothing when it already ended.
    pub fn abort(&mut self, message: &str, code: Option<&str>) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.fail(code.unwrap_or("upstream_error"), message)
    }

    fn start(&mut self) -> Vec<String> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        let response = self.shell.object("in_progress", Vec::new(), Value::Null);
        vec![
            self.events
                .frame("response.created", json!({"response": response})),
            self.events
                .frame("response.in_progress", json!({"response": response})),
        ]
    }

    fn suffix(&self) -> &str {
        self.shell
            .id
            .strip_prefix("resp_")
            .unwrap_or(&self.shell.id)
    }

    fn text_delta(&mut self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let index = match self.open_text {
            Some(index) => index,
            None => {
                let index = self.items.len();
                let id = format!("msg_{}_{index}", self.suffix());
                out.push(self.events.frame(
                    "response.output_item.added",
                    json!({
                    "output_index": index,
                    "item": {"id": id, "type": "message", "status": "in_progress",
                        "role": "assistant", "content": []}}),
                ));
                out.push(self.events.frame(
                    "response.content_part.added",
                    json!({
                    "item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
                ));
                self.items.push(Streaming::Message {
                    id,
                    text: String::new(),
                });
                self.open_text = Some(index);
                index
            }
        };
        if let Streaming::Message { id, text: all } = &mut self.items[index] {
            all.push_str(text);
            let id = id.clone();
            out.push(self.events.frame(
                "response.output_text.delta",
                json!({
                "item_id": id, "output_index": index, "content_index": 0,
                "delta": text, "logprobs": []}),
            ));
        }
        out
    }

    fn call_delta(&mut self, call: &Value) -> Vec<String> {
        let chat_index = call["index"].as_u64().unwrap_or(0);
        let mut out = Vec::new();
        let found = self.items.iter().position(
            |item| matches!(item, Streaming::Call { chat_index: i, .. } if *i == chat_index),
        );
        let index = match found {
            Some(index) => index,
            None => {
                // Text after a call is another message item.
                self.open_text = None;
                let index = self.items.len();
                let id = format!("fc_{}_{index}", self.suffix());
                let call_id = call["id"].as_str().unwrap_or("").to_string();
                let name = call["function"]["name"].as_str().unwrap_or("").to_string();
                let mut item = call_item(&id, &call_id, &name, "", &self.tools);
                item["status"] = json!("in_progress");
                out.push(self.events.frame(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                ));
                self.items.push(Streaming::Call {
                    id,
                    chat_index,
                    call_id,
                    name,
                    arguments: String::new(),
                });
                index
            }
        };
        let args = call["function"]["arguments"].as_str().unwrap_or("");
        if let Streaming::Call {
            id,
            name,
            arguments,
            ..
        } = &mut self.items[index]
        {
            arguments.push_str(args);
            // A custom tool's input is inside JSON arguments: it goes out
            // whole when the call is done.
            if !args.is_empty() && !self.tools.custom.contains(name) {
                let id = id.clone();
                out.push(self.events.frame(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": args}),
                ));
            }
        }
        out
    }

    /// Every item's closing events, then `response.completed` (or `.incomplete`).
    fn end(&mut self) -> Vec<String> {
        let mut out = self.start();
        let mut output = Vec::with_capacity(self.items.len());
        for (index, item) in self.items.iter().enumerate() {
            match item {
                Streaming::Message { id, text } => {
                    let at = json!({"item_id": id, "output_index": index, "content_index": 0});
                    let with = |extra: Value| {
                        let mut event = at.clone();
                        if let (Some(event), Value::Object(extra)) = (event.as_object_mut(), extra)
                        {
                            event.extend(extra);
                        }
                        event
                    };
                    out.push(self.events.frame(
                        "response.output_text.done",
                        with(json!({"text": text, "logprobs": []})),
                    ));
                    out.push(self.events.frame(
                        "response.content_part.done",
                        with(json!({"part": {"type": "output_text", "text": text, "annotations": []}})),
                    ));
                    output.push(message_item(id, text));
                }
                Streaming::Call {
                    id,
                    call_id,
                    name,
                    arguments,
                    ..
                } => {
                    let arguments = if arguments.trim().is_empty() {
                        "{}"
                    } else {
                        arguments
                    };
                    let item = call_item(id, call_id, name, arguments, &self.tools);
                    if item["type"] == "custom_tool_call" {
                        let input = &item["input"];
                        out.push(self.events.frame(
                            "response.custom_tool_call_input.delta",
                            json!({"item_id": id, "output_index": index, "delta": input}),
                        ));
                        out.push(self.events.frame(
                            "response.custom_tool_call_input.done",
                            json!({"item_id": id, "output_index": index, "input": input}),
                        ));
                    } else {
                        out.push(self.events.frame(
                            "response.function_call_arguments.done",
                            json!({"item_id": id, "output_index": index, "name": name,
                                "arguments": arguments}),
                        ));
                    }
                    output.push(item);
                }
            }
            out.push(self.events.frame(
                "response.output_item.done",
                json!({"output_index": index, "item": output[index]}),
            ));
        }
        let response = self
            .shell
            .finished(self.finish_reason.as_deref(), output, &self.usage);
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.events.frame(kind, json!({"response": response})));
        self.done = true;
        out
    }

    fn fail(&mut self, code: &str, message: &str) -> Vec<String> {
        self.done = true;
        let response = self.shell.failed(code, message, Vec::new());
        vec![
            self.events
                .frame("response.failed", json!({"response": response})),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::translate::testing::{events, frames, hello_chunks};

    fn translate(chat: Value) -> Value {
        chat_to_responses(&chat, "INSTR", &TranslateOptions::default()).unwrap()
    }

    fn translate_err(chat: Value) -> String {
        chat_to_responses(&chat, "INSTR", &TranslateOptions::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn conversation_with_every_role() {
        let chat = json!({
            "model": "gpt-5",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "dev note"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}},
                    {"type": "image_url", "image_url": "https://example.invalid/cat.png"}
                ]},
                {"role": "assistant", "content": "let me check", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"cat\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_2", "type": "function", "function": {"name": "noargs", "arguments": {"x": 1}}}
                ]},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "o"}, {"type": "text", "text": "k"}]},
                {"role": "user", "content": "thanks"}
            ]
        });
        assert_eq!(
            translate(chat),
            json!({
                "model": "gpt-5",
                "instructions": "INSTR",
                "input": [
                    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
                    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev note"}]},
                    {"type": "message", "role": "user", "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"},
                        {"type": "input_image", "image_url": "https://example.invalid/cat.png"}
                    ]},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me check"}]},
                    {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{\"q\":\"cat\"}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
                    {"type": "function_call", "call_id": "call_2", "name": "noargs", "arguments": "{\"x\":1}"},
                    {"type": "function_call_output", "call_id": "call_2", "output": "ok"},
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]}
                ],
                "store": false
            })
        );
    }

    #[test]
    fn tools_choice_and_sampling() {
        let chat = json!({
            "model": "gpt-5",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "f", "description": "does f",
                    "parameters": {"type": "object", "properties": {}}, "strict": true}},
                {"type": "function", "function": {"name": "g"}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": false,
            "max_tokens": 100,
            "temperature": 0.2,
            "top_p": 0.9,
            "stream": true,
            "stream_options": {"include_usage": true},
            "stop": ["x"]
        });
        let out = translate(chat);
        assert_eq!(
            out["tools"],
            json!([
                {"type": "function", "name": "f", "description": "does f",
                    "parameters": {"type": "object", "properties": {}}, "strict": true},
                {"type": "function", "name": "g"}
            ])
        );
        assert_eq!(out["tool_choice"], json!({"type": "function", "name": "f"}));
        assert_eq!(out["parallel_tool_calls"], json!(false));
        assert_eq!(out["max_output_tokens"], json!(100));
        assert_eq!(out["temperature"], json!(0.2));
        assert_eq!(out["top_p"], json!(0.9));
        assert_eq!(out["stream"], json!(true));
        assert_eq!(out["store"], json!(false));
        assert!(out.get("stream_options").is_none() && out.get("stop").is_none());
        assert!(out.get("reasoning").is_none());

        let out = translate(
            json!({"model": "m", "messages": [], "tool_choice": "required",
            "max_tokens": 5, "max_completion_tokens": 7}),
        );
        assert_eq!(out["tool_choice"], json!("required"));
        assert_eq!(out["max_output_tokens"], json!(7));
    }

    #[test]
    fn reasoning_from_suffix_or_field() {
        let out = translate(json!({"model": "gpt-5-codex-high", "messages": []}));
        assert_eq!(out["model"], json!("gpt-5-codex"));
        assert_eq!(out["reasoning"], json!({"effort": "high"}));
        let out = translate(json!({"model": "gpt-5-minimal", "messages": []}));
        assert_eq!(out["model"], json!("gpt-5"));
        assert_eq!(out["reasoning"], json!({"effort": "minimal"}));
        let out = translate(json!({"model": "gpt-5", "reasoning_effort": "low", "messages": []}));
        assert_eq!(out["reasoning"], json!({"effort": "low"}));
        // The explicit field wins over the suffix.
        let out =
            translate(json!({"model": "gpt-5-high", "reasoning_effort": "low", "messages": []}));
        assert_eq!(
            (out["model"].as_str(), &out["reasoning"]),
            (Some("gpt-5"), &json!({"effort": "low"}))
        );
        // Not a suffix: the whole name is kept.
        assert_eq!(split_reasoning_suffix("gpt-5-mini"), ("gpt-5-mini", None));
        assert_eq!(split_reasoning_suffix("-high"), ("-high", None));
        assert_eq!(split_reasoning_suffix("o3-medium"), ("o3", Some("medium")));
    }

    #[test]
    fn web_search_option_adds_one_tool() {
        let opts = TranslateOptions {
            enable_web_search: true,
        };
        let out = chat_to_responses(&json!({"model": "m", "messages": []}), "", &opts).unwrap();
        assert_eq!(out["tools"], json!([{"type": "web_search"}]));
        assert!(
            out.get("instructions").is_none(),
            "empty instructions are omitted"
        );
        let chat = json!({"model": "m", "messages": [], "tools": [{"type": "web_search_preview"}]});
        let out = chat_to_responses(&chat, "", &opts).unwrap();
        assert_eq!(out["tools"], json!([{"type": "web_search_preview"}]));
    }

    #[test]
    fn response_format_maps_to_text_format() {
        let out = translate(json!({"model": "m", "messages": [], "response_format":
            {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": true}}}));
        assert_eq!(
            out["text"],
            json!({"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}})
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            translate_err(json!([])),
            "the request body must be a JSON object"
        );
        assert_eq!(translate_err(json!({"messages": []})), "model: missing");
        assert_eq!(translate_err(json!({"model": "m"})), "messages: missing");
        let e =
            translate_err(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}));
        assert!(e.starts_with("messages[0].tool_call_id: missing"), "{e}");
        let e = translate_err(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
        );
        assert!(
            e.starts_with("messages[0].content[0].type: \"input_audio\""),
            "{e}"
        );
        let e =
            translate_err(json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}));
        assert_eq!(e, "messages[0].role: unknown role \"wizard\"");
        let e = translate_err(
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]}),
        );
        assert_eq!(
            e,
            "messages[0].tool_calls[0].function: missing or not an object"
        );
        let e = translate_err(
            json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {}}]}),
        );
        assert_eq!(e, "tools[0].function.name: missing or not a string");
        let e = translate_err(json!({"model": "m", "messages": [], "max_tokens": -1}));
        assert_eq!(e, "max_tokens: must be a non-negative integer");
        let e = translate_err(json!({"model": "m", "messages": [], "n": 2}));
        assert!(e.starts_with("n: "), "{e}");
        let e = translate_err(json!({"model": "m", "messages": [], "tool_choice": "sometimes"}));
        assert!(e.starts_with("tool_choice: "), "{e}");
    }

    #[test]
    fn instructions_by_model() {
        assert_eq!(instructions_for("gpt-5-codex"), config::CODEX_PROMPT);
        assert_eq!(instructions_for("GPT-5-Codex-high"), config::CODEX_PROMPT);
        assert_eq!(instructions_for("gpt-5"), config::BASE_PROMPT);
    }

    #[test]
    fn non_streaming_text_answer() {
        let resp = json!({
            "id": "resp_123", "object": "response", "created_at": 1700000000, "status": "completed",
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "id": "msg_1", "role": "assistant", "content": [
                    {"type": "output_text", "text": "Hello", "annotations": []},
                    {"type": "output_text", "text": ", world", "annotations": []}
                ]}
            ],
            "usage": {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14,
                "output_tokens_details": {"reasoning_tokens": 2}}
        });
        assert_eq!(
            responses_to_chat(&resp, "gpt-5"),
            json!({
                "id": "chatcmpl-123", "object": "chat.completion", "created": 1700000000, "model": "gpt-5",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world"},
                    "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                    "completion_tokens_details": {"reasoning_tokens": 2}}
            })
        );
    }

    #[test]
    fn non_streaming_tool_call_and_length() {
        let resp = json!({
            "id": "resp_9", "created_at": 1, "status": "completed",
            "output": [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"}],
            "usage": {"input_tokens": 3, "output_tokens": 2}
        });
        let chat = responses_to_chat(&resp, "m");
        assert_eq!(
            chat["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
            ]}, "finish_reason": "tool_calls"})
        );
        assert_eq!(chat["usage"]["total_tokens"], json!(5));

        let resp = json!({"id": "resp_8", "created_at": 1, "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "trunc"}]}]});
        let chat = responses_to_chat(&resp, "m");
        assert_eq!(chat["choices"][0]["finish_reason"], json!("length"));
        assert_eq!(chat["choices"][0]["message"]["content"], json!("trunc"));
        assert!(chat.get("usage").is_none());
    }

    fn run(t: &mut StreamTranslator, events: &[Value]) -> Vec<Option<Value>> {
        let mut out = Vec::new();
        for e in events {
            out.extend(t.on_event(e));
        }
        out.extend(t.finish());
        frames(&out)
    }

    #[test]
    fn streaming_text_conversation() {
        let mut t = StreamTranslator::new("gpt-5", "chatcmpl-1", 42, true);
        let out = run(
            &mut t,
            &[
                json!({"type": "response.created", "response": {"id": "resp_1"}}),
                json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "id": "msg_1"}}),
                json!({"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hel"}),
                json!({"type": "response.output_text.delta", "item_id": "msg_1", "delta": "lo"}),
                json!({"type": "response.output_text.done", "item_id": "msg_1", "text": "Hello"}),
                json!({"type": "response.completed", "response": {"id": "resp_1", "status": "completed",
                    "usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}}}),
                json!({"type": "response.output_text.delta", "delta": "ignored after completion"}),
            ],
        );
        assert_eq!(out, hello_chunks("gpt-5"));
        assert_eq!(t.usage(), Some((7, 2)));
        assert!(t.is_done());
    }

    #[test]
    fn streaming_tool_call_with_split_arguments() {
        let mut t = StreamTranslator::new("m", "chatcmpl-2", 1, false);
        let out = run(
            &mut t,
            &[
                json!({"type": "response.output_item.added", "output_index": 0,
                    "item": {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather", "arguments": ""}}),
                json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0, "delta": "{\"ci"}),
                json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0, "delta": "ty\":\"Paris\"}"}),
                json!({"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0, "arguments": "{\"city\":\"Paris\"}"}),
                json!({"type": "response.output_item.done", "output_index": 0,
                    "item": {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}),
                // A second call whose arguments arrive only whole.
                json!({"type": "response.output_item.added", "output_index": 1,
                    "item": {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "now"}}),
                json!({"type": "response.output_item.done", "output_index": 1,
                    "item": {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "now", "arguments": "{}"}}),
                json!({"type": "response.completed", "response": {"usage": {"input_tokens": 1, "output_tokens": 1}}}),
            ],
        );
        let deltas: Vec<Value> = out
            .iter()
            .flatten()
            .map(|c| {
                assert!(
                    c.get("usage").is_none(),
                    "no usage fields without include_usage"
                );
                c["choices"][0].clone()
            })
            .collect();
        assert_eq!(
            deltas,
            vec![
                json!({"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                    "function": {"name": "now", "arguments": ""}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"}),
            ]
        );
        assert_eq!(out.last(), Some(&None), "ends with [DONE]");
        assert_eq!(out.iter().filter(|f| f.is_none()).count(), 1);
    }

    #[test]
    fn streaming_response_failed() {
        let mut t = StreamTranslator::new("m", "chatcmpl-3", 1, true);
        let out = run(
            &mut t,
            &[
                json!({"type": "response.output_text.delta", "delta": "par"}),
                json!({"type": "response.failed", "response": {"status": "failed",
                    "error": {"code": "server_error", "message": "model overloaded"}}}),
                json!({"type": "response.completed", "response": {}}),
            ],
        );
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            out[0].as_ref().unwrap()["choices"][0]["delta"]["content"],
            json!("par")
        );
        assert_eq!(
            out[1],
            Some(
                json!({"error": {"message": "model overloaded", "type": "upstream_error", "param": null, "code": "server_error"}})
            )
        );
        assert_eq!(out[2], None);
        assert_eq!(t.usage(), None);
    }

    #[test]
    fn streaming_error_event() {
        let mut t = StreamTranslator::new("m", "chatcmpl-4", 1, false);
        let out = run(
            &mut t,
            &[
                json!({"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": null}),
            ],
        );
        assert_eq!(
            out,
            vec![
                Some(
                    json!({"error": {"message": "slow down", "type": "upstream_error", "param": null, "code": "rate_limit_exceeded"}})
                ),
                None
            ]
        );
    }

    #[test]
    fn stream_ending_without_completion() {
        let mut t = StreamTranslator::new("m", "chatcmpl-5", 1, true);
        let mut out = t.on_event(&json!({"type": "response.output_text.delta", "delta": "hi"}));
        out.extend(t.finish());
        out.extend(t.finish());
        let out = frames(&out);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            out[1].as_ref().unwrap()["error"]["message"],
            json!("upstream closed the stream before response.completed")
        );
        assert_eq!(out[2], None);
        assert!(
            out.iter()
                .flatten()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );
    }

    #[test]
    fn completed_without_output_still_carries_role_and_one_finish() {
        let mut t = StreamTranslator::new("m", "c", 1, false);
        let out = run(
            &mut t,
            &[
                json!({"type": "response.incomplete", "response": {"status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"}}}),
                json!({"type": "response.completed", "response": {}}),
            ],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].as_ref().unwrap()["choices"][0],
            json!({"index": 0, "delta": {"role": "assistant"}, "finish_reason": "length"})
        );
    }

    // -- Responses clients over a Chat provider --------------------------------

    fn to_chat(request: Value) -> ChatRequest {
        responses_request_to_chat(&request).unwrap()
    }

    #[test]
    fn responses_request_to_chat_table() {
        let table = [
            // A string input is one user message; instructions the system message.
            (
                json!({"model": "m", "instructions": "be brief", "input": "hi", "max_output_tokens": 50}),
                json!({"model": "m", "messages": [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"}], "max_tokens": 50}),
            ),
            // Several text parts stay separate parts.
            (
                json!({"model": "m", "input": [{"role": "user", "content": [
                    {"type": "input_text", "text": "<env/>"}, {"type": "input_text", "text": "hi"}]}]}),
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "<env/>"}, {"type": "text", "text": "hi"}]}]}),
            ),
            // Codex's conversation: developer text, user text and image, a call
            // (after the assistant's words), its output, and a reasoning item left out.
            (
                json!({"model": "m", "stream": true, "input": [
                    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"}]},
                    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                    {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{\"cmd\":\"ls\"}"},
                    {"type": "function_call", "call_id": "c2", "name": "shell", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
                    {"type": "function_call_output", "call_id": "c2", "output": [
                        {"type": "input_text", "text": "see"},
                        {"type": "input_image", "image_url": "https://example.invalid/i.png"}]},
                    {"role": "user", "content": "next"}
                ]}),
                json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                    "messages": [
                    {"role": "system", "content": "dev"},
                    {"role": "user", "content": [{"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}}]},
                    {"role": "assistant", "content": "ok", "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{\"cmd\":\"ls\"}"}},
                        {"id": "c2", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
                    {"role": "tool", "tool_call_id": "c2", "content": "see"},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.invalid/i.png"}}]},
                    {"role": "user", "content": "next"}
                ]}),
            ),
            // Tools: function kept, custom as a one-string function, hosted left out.
            (
                json!({"model": "m", "input": [], "tool_choice": {"type": "function", "name": "f"},
                    "parallel_tool_calls": false, "temperature": 0.5, "reasoning": {"effort": "high"},
                    "tools": [
                        {"type": "function", "name": "f", "description": "F", "parameters": {"type": "object"}, "strict": false},
                        {"type": "custom", "name": "apply_patch", "description": "patch",
                            "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}},
                        {"type": "web_search"}, {"type": "local_shell"},
                        {"type": "namespace", "name": "agents", "description": "sub-agents", "tools": [
                            {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}]}]}),
                json!({"model": "m", "messages": [], "tool_choice": {"type": "function", "function": {"name": "f"}},
                    "parallel_tool_calls": false, "temperature": 0.5, "reasoning_effort": "high",
                    "tools": [
                        {"type": "function", "function": {"name": "f", "description": "F", "parameters": {"type": "object"}, "strict": false}},
                        {"type": "function", "function": {"name": "apply_patch",
                            "description": "patch\n\nThe input follows this grammar:\nstart: x",
                            "parameters": custom_tool_parameters()}},
                        {"type": "function", "function": {"name": "close_agent", "parameters": {"type": "object"}}}]}),
            ),
            // A custom tool's call and output in the history.
            (
                json!({"model": "m", "input": [
                    {"type": "custom_tool_call", "call_id": "c", "name": "apply_patch", "input": "*** Begin"},
                    {"type": "custom_tool_call_output", "call_id": "c", "output": "done"},
                    {"type": "local_shell_call", "call_id": "s", "status": "completed",
                        "action": {"type": "exec", "command": ["ls"]}},
                    {"type": "local_shell_call_output", "call_id": "s", "output": "a.txt"}],
                    "text": {"format": {"type": "json_schema", "name": "s", "schema": {}}}}),
                json!({"model": "m", "messages": [
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
                        "function": {"name": "apply_patch", "arguments": "{\"input\":\"*** Begin\"}"}}]},
                    {"role": "tool", "tool_call_id": "c", "content": "done"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "s", "type": "function",
                        "function": {"name": "local_shell", "arguments": "{\"command\":[\"ls\"],\"type\":\"exec\"}"}}]},
                    {"role": "tool", "tool_call_id": "s", "content": "a.txt"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}}),
            ),
        ];
        for (request, want) in table {
            assert_eq!(to_chat(request.clone()).body, want, "{request}");
        }
        let custom =
            to_chat(json!({"model": "m", "tools": [{"type": "custom", "name": "apply_patch"}]}));
        assert_eq!(custom.tools.custom, vec!["apply_patch".to_string()]);
    }

    #[test]
    fn responses_request_errors_name_the_field() {
        let table = [
            (json!([]), "the request body must be a JSON object"),
            (json!({"input": "x"}), "model: missing"),
            (
                json!({"model": "m", "input": 5}),
                "input: must be a string or an array of input items",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
                "input[0].call_id: missing or not a string",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].image_url: missing: only images by URL or data URL are supported (not file_id)",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type: \"item_reference\" items are not supported by this provider",
            ),
            (
                json!({"model": "m", "previous_response_id": "resp_1"}),
                "previous_response_id: this provider keeps no conversation state; send the whole conversation in input (with store: false, as Codex does)",
            ),
            (
                json!({"model": "m", "tools": [{"type": "function"}]}),
                "tools[0].name: missing or not a string",
            ),
            (
                json!({"model": "m", "tools": [{"type": "shell_v9"}]}),
                "tools[0].type: \"shell_v9\" is not supported by this provider (\"function\", \"custom\" and \"namespace\" tools are)",
            ),
            (
                json!({"model": "m", "max_output_tokens": "many"}),
                "max_output_tokens: must be a non-negative integer",
            ),
        ];
        for (request, want) in table {
            assert_eq!(
                responses_request_to_chat(&request).unwrap_err().to_string(),
                want
            );
        }
    }

    fn tool_names() -> ToolNames {
        ToolNames {
            custom: vec!["apply_patch".into()],
            namespaced: vec![("close_agent".into(), "agents".into())],
        }
    }

    fn shell() -> ResponseShell {
        let request = json!({"model": "claude", "instructions": "be brief", "tools": []});
        ResponseShell::new("resp_1", 7, "claude", request.as_object().unwrap())
    }

    #[test]
    fn chat_completion_to_response_table() {
        let usage = json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
            "prompt_tokens_details": {"cached_tokens": 2}});
        let table = [
            (
                json!({"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "usage": usage}),
                "completed",
                json!([{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]}]),
            ),
            (
                json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "apply_patch", "arguments": "{\"input\":\"P\"}"}},
                    {"id": "toolu_3", "type": "function", "function": {"name": "close_agent", "arguments": "{}"}}]},
                    "finish_reason": "tool_calls"}], "usage": usage}),
                "completed",
                json!([
                    {"id": "fc_1_0", "type": "function_call", "status": "completed", "call_id": "toolu_1", "name": "f", "arguments": "{\"a\":1}"},
                    {"id": "fc_1_1", "type": "custom_tool_call", "status": "completed", "call_id": "toolu_2", "name": "apply_patch", "input": "P"},
                    {"id": "fc_1_2", "type": "function_call", "status": "completed", "call_id": "toolu_3", "name": "close_agent", "arguments": "{}", "namespace": "agents"}]),
            ),
            (
                json!({"choices": [{"message": {"content": "cut"}, "finish_reason": "length"}], "usage": usage}),
                "incomplete",
                json!([{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "cut", "annotations": [], "logprobs": []}]}]),
            ),
        ];
        for (chat, status, output) in table {
            let response = chat_to_response(&chat, &shell(), &tool_names());
            assert_eq!(response["status"], status, "{response}");
            assert_eq!(response["output"], output);
            assert_eq!(response["id"], "resp_1");
            assert_eq!(response["instructions"], "be brief");
            assert_eq!(
                response["usage"],
                json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2},
                    "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8})
            );
        }
        let cut = chat_to_response(
            &json!({"choices": [{"message": {"content": "x"}, "finish_reason": "length"}]}),
            &shell(),
            &ToolNames::default(),
        );
        assert_eq!(
            cut["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(cut["usage"], Value::Null);
    }

    fn chat_data(delta: Value, finish: Value) -> String {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    }

    fn responses_run(t: &mut ChatToResponses, data: &[String]) -> Vec<Value> {
        let mut out = Vec::new();
        for d in data {
            out.extend(t.on_data(d));
        }
        out.extend(t.finish());
        let events = events(&out);
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], json!(n), "{e}");
        }
        events
    }

    fn kinds(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn chat_chunks_to_responses_events_text_then_calls() {
        let mut t = ChatToResponses::new(shell(), tool_names());
        let events = responses_run(
            &mut t,
            &[
                chat_data(json!({"role": "assistant", "content": "Hel"}), Value::Null),
                chat_data(json!({"content": "lo"}), Value::Null),
                chat_data(json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                    "function": {"name": "f", "arguments": ""}}]}), Value::Null),
                chat_data(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), Value::Null),
                chat_data(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), Value::Null),
                chat_data(json!({"tool_calls": [{"index": 1, "id": "toolu_2", "type": "function",
                    "function": {"name": "apply_patch", "arguments": "{\"input\":\"P\"}"}}]}), Value::Null),
                chat_data(json!({}), json!("tool_calls")),
                json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}).to_string(),
                "[DONE]".to_string(),
            ],
        );
        assert_eq!(
            kinds(&events),
            vec![
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.output_item.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.custom_tool_call_input.delta",
                "response.custom_tool_call_input.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(events[0]["response"]["status"], "in_progress");
        assert_eq!(events[4]["delta"], "Hel");
        assert_eq!(events[13]["arguments"], "{\"a\":1}");
        assert_eq!(events[16]["input"], "P");
        let done = &events[18]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["call_id"], "toolu_1");
        assert_eq!(done["output"][2]["type"], "custom_tool_call");
        assert_eq!(done["usage"]["input_tokens"], 4);
        assert_eq!(done["usage"]["total_tokens"], 6);
        assert!(t.is_done());
        assert!(
            t.on_data(&chat_data(json!({"content": "late"}), Value::Null))
                .is_empty()
        );
    }

    #[test]
    fn chat_chunks_to_responses_errors_and_endings() {
        // An error before any content: exactly one event, response.failed.
        let mut t = ChatToResponses::new(shell(), ToolNames::default());
        let events = responses_run(
            &mut t,
            &[json!({"error": {"message": "Overloaded", "type": "upstream_error", "code": "overloaded_error"}}).to_string()],
        );
        assert_eq!(kinds(&events), vec!["response.failed"]);
        assert_eq!(
            events[0]["response"]["error"],
            json!({"code": "overloaded_error", "message": "Overloaded"})
        );
        // An error mid-answer: the events so far, then one response.failed.
        let mut t = ChatToResponses::new(shell(), ToolNames::default());
        let events = responses_run(
            &mut t,
            &[
                chat_data(json!({"content": "par"}), Value::Null),
                json!({"error": {"message": "boom", "code": null}}).to_string(),
                chat_data(json!({"content": "late"}), Value::Null),
            ],
        );
        assert_eq!(kinds(&events).last(), Some(&"response.failed"));
        assert_eq!(
            kinds(&events)
                .iter()
                .filter(|k| k.starts_with("response.failed"))
                .count(),
            1
        );
        assert_eq!(
            events.last().unwrap()["response"]["error"]["code"],
            "upstream_error"
        );
        // Ended without a finish_reason: failed; with one but no [DONE]: completed.
        let mut t = ChatToResponses::new(shell(), ToolNames::default());
        let events = responses_run(&mut t, &[chat_data(json!({"content": "x"}), Value::Null)]);
        assert_eq!(events.last().unwrap()["type"], "response.failed");
        let mut t = ChatToResponses::new(shell(), ToolNames::default());
        let events = responses_run(
            &mut t,
            &[chat_data(json!({"content": "x"}), json!("length"))],
        );
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }
}
