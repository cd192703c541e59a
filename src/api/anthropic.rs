//! Chat Completions ⇄ Anthropic Messages translation (pure, no I/O).
//!
//! Both directions live here, so one set of table-driven tests pins the mapping:
//!
//! - **Claude as a provider** (`api = "anthropic"`): clients speak Chat
//!   Completions, the provider receives Messages requests.
//!   [`chat_to_messages`] builds the request, [`messages_to_chat`] turns a
//!   non-streaming answer back, [`MessagesToChat`] turns the provider's event
//!   stream (`message_start` … `message_stop`, with `ping` and in-band `error`)
//!   into Chat Completions chunks, and [`provider_error`] maps Anthropic error
//!   types to statuses (`overloaded_error` is 529: retried and failed over like
//!   any 5xx).
//! - **Anthropic clients in front** (`POST /v1/messages`): [`messages_request_to_chat`]
//!   turns their request into a Chat Completions request that any provider
//!   serves, [`chat_to_messages_response`] turns the `chat.completion` back,
//!   [`ChatToMessages`] turns Chat chunks into Anthropic's event sequence, and
//!   [`error_body`] writes errors in Anthropic's shape.
//!
//! Lossy spots, on purpose: system and developer messages anywhere in a Chat
//! conversation become the one top-level `system`; OpenAI's `temperature`
//! (0–2) is clamped to Anthropic's 0–1; Chat fields Messages has no equivalent
//! for (`response_format`, `logprobs`, `seed`, penalties, reasoning efforts) are
//! dropped; `n` > 1 is refused. Inbound, Anthropic server tools (a `tools[]`
//! entry with a `type` such as `web_search_20250305`) have no Chat equivalent and
//! are dropped, `top_k` and `thinking` are dropped, and thinking blocks in the
//! history are left out.

use serde_json::{Map, Value, json};

use super::translate::{
    self, ChatChunks, ChatData, ChatTurn, ChunkPiece, ToolCall, TranslateError, event_frame,
    now_unix, part_text, part_type,
};
use crate::api::openai::ApiError;
use axum::http::StatusCode;

/// `max_tokens` is required by the Messages API: this is sent when the Chat
/// request has neither `max_completion_tokens` nor `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The `anthropic-version` header sent to providers.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

// ---------------------------------------------------------------------------
// Claude as a provider: Chat Completions request → Messages request
// ---------------------------------------------------------------------------

/// Translates a Chat Completions request body into a Messages API request.
///
/// `Err` is a client error (HTTP 400) naming the offending field, e.g.
/// `messages[2].tool_calls[0].function.arguments: not a JSON object`.
pub fn chat_to_messages(chat: &Value) -> Result<Value, TranslateError> {
    let chat = translate::object(chat)?;
    let model = translate::model(chat)?;

    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for turn in translate::chat_turns(chat)? {
        let (role, blocks) = match turn {
            ChatTurn::System { content, at } => {
                let text = translate::plain_text(content, &at)?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            ChatTurn::User { content, at } => ("user", user_blocks(content, &at)?),
            ChatTurn::Assistant {
                content,
                tool_calls,
                at,
            } => {
                let mut blocks = Vec::new();
                let text = translate::plain_text(content, &at)?;
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in tool_calls {
                    blocks.push(tool_use_block(&call)?);
                }
                ("assistant", blocks)
            }
            ChatTurn::Tool {
                call_id,
                content,
                at,
            } => {
                let text = translate::plain_text(content, &at)?;
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": call_id, "content": text})],
                )
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Messages alternates user and assistant: consecutive turns of one role
        // (tool results, then the user's next words) become one turn.
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let mut max_tokens = DEFAULT_MAX_TOKENS;
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = chat.get(key).filter(|v| !v.is_null()) {
            max_tokens = v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| TranslateError::wrong(key, "a positive integer"))?;
            break;
        }
    }
    out.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    out.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );

    match chat.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) if tools.is_empty() => {}
        Some(Value::Array(tools)) => {
            let tools = tools
                .iter()
                .enumerate()
                .map(|(i, t)| anthropic_tool(t, i))
                .collect::<Result<Vec<_>, _>>()?;
            out.insert("tools".into(), Value::Array(tools));
        }
        Some(_) => return Err(TranslateError::wrong("tools", "an array")),
    }
    let mut tool_choice = match chat.get("tool_choice").filter(|v| !v.is_null()) {
        None => None,
        Some(choice) => Some(anthropic_tool_choice(choice)?),
    };
    if chat.get("parallel_tool_calls") == Some(&json!(false)) && out.contains_key("tools") {
        tool_choice
            .get_or_insert_with(|| json!({"type": "auto"}))
            .as_object_mut()
            .expect("tool_choice is an object")
            .insert("disable_parallel_tool_use".into(), json!(true));
    }
    if let Some(choice) = tool_choice {
        out.insert("tool_choice".into(), choice);
    }

    match chat.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            if !stops.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(stops.clone()));
            }
        }
        Some(_) => {
            return Err(TranslateError::wrong(
                "stop",
                "a string or an array of strings",
            ));
        }
    }
    if let Some(v) = chat.get("temperature").filter(|v| !v.is_null()) {
        let t = v
            .as_f64()
            .ok_or_else(|| TranslateError::wrong("temperature", "a number"))?;
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(v) = chat.get("top_p").filter(|v| !v.is_null()) {
        if !v.is_number() {
            return Err(TranslateError::wrong("top_p", "a number"));
        }
        out.insert("top_p".into(), v.clone());
    }
    translate::one_choice(chat, "an Anthropic provider")?;
    if let Some(v) = translate::stream_flag(chat)? {
        out.insert("stream".into(), v.clone());
    }
    if let Some(user) = chat.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok(Value::Object(out))
}

/// A user's content as Messages blocks: text and images.
fn user_blocks(content: &Value, at: &str) -> Result<Vec<Value>, TranslateError> {
    let parts = match content {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::String(s) => return Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts,
        _ => {
            return Err(TranslateError::wrong(
                at,
                "a string, an array of parts or null",
            ));
        }
    };
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| {
            let at = format!("{at}[{j}]");
            match part_type(part, &at)? {
                "text" => Ok(json!({"type": "text", "text": part_text(part, &at)?})),
                "image_url" => {
                    let (url, _detail) = translate::image_url(part, &at)?;
                    Ok(json!({"type": "image", "source": image_source(url, &at)?}))
                }
                other => Err(TranslateError::unsupported(
                    format!("{at}.type"),
                    format!("{other:?} is not supported (use \"text\" or \"image_url\")"),
                )),
            }
        })
        .collect()
}

/// An image URL as a Messages image source: `data:<type>;base64,<data>` becomes
/// a `base64` source, `http(s)://` a `url` source.
fn image_source(url: &str, at: &str) -> Result<Value, TranslateError> {
    let field = || format!("{at}.image_url.url");
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| TranslateError::unsupported(field(), "a data URL without ','"))?;
        let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
            TranslateError::unsupported(
                field(),
                "only base64 data URLs are supported (data:<type>;base64,...)",
            )
        })?;
        return Ok(json!({"type": "base64", "media_type": media_type, "data": data}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "url", "url": url}));
    }
    Err(TranslateError::wrong(field(), "a data: or http(s):// URL"))
}

fn tool_use_block(call: &ToolCall<'_>) -> Result<Value, TranslateError> {
    let not_an_object = || {
        TranslateError::unsupported(
            format!("{}.function.arguments", call.at),
            "not a JSON object",
        )
    };
    let input = match call.arguments {
        Value::Null => json!({}),
        Value::String(s) if s.trim().is_empty() => json!({}),
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(not_an_object)?,
        v @ Value::Object(_) => v.clone(),
        _ => return Err(not_an_object()),
    };
    Ok(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}))
}

fn anthropic_tool(tool: &Value, i: usize) -> Result<Value, TranslateError> {
    let (ty, f) = translate::function_tool(tool, i)?;
    let Some(f) = f else {
        return Err(TranslateError::unsupported(
            format!("tools[{i}].type"),
            format!("{ty:?} is not supported by an Anthropic provider (only \"function\")"),
        ));
    };
    let mut out = json!({"name": f.name});
    if let Some(d) = f.description {
        out["description"] = d.clone();
    }
    out["input_schema"] = f
        .parameters
        .filter(|v| v.is_object())
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    Ok(out)
}

fn anthropic_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "required" => Ok(json!({"type": "any"})),
            "none" => Ok(json!({"type": "none"})),
            _ => Err(TranslateError::unsupported(
                "tool_choice",
                format!("{s:?} must be \"auto\", \"none\", \"required\" or an object"),
            )),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Ok(json!({"type": "tool", "name": translate::tool_choice_name(o)?}))
        }
        _ => Err(TranslateError::wrong(
            "tool_choice",
            "a string or {\"type\":\"function\",...}",
        )),
    }
}

// ---------------------------------------------------------------------------
// Claude as a provider: Messages response → chat.completion
// ---------------------------------------------------------------------------

/// A Messages `stop_reason` as a Chat `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and an absent reason.
        _ => "stop",
    }
}

/// A Chat `finish_reason` as a Messages `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Chat `usage` from Messages `usage`: cache reads and writes count as prompt
/// tokens (Anthropic reports them apart from `input_tokens`).
pub fn chat_usage(usage: &Value) -> Option<Value> {
    if usage.get("input_tokens").is_none() && usage.get("output_tokens").is_none() {
        return None;
    }
    let output = usage["output_tokens"].as_u64().unwrap_or(0);
    let cached = usage["cache_read_input_tokens"].as_u64().unwrap_or(0);
    let input = usage["input_tokens"].as_u64().unwrap_or(0)
        + usage["cache_creation_input_tokens"].as_u64().unwrap_or(0)
        + cached;
    let mut out = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
    if cached > 0 {
        out["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    Some(out)
}

/// `msg_abc` → `chatcmpl-abc`.
fn chat_id(message_id: &str) -> String {
    format!(
        "chatcmpl-{}",
        message_id.strip_prefix("msg_").unwrap_or(message_id)
    )
}

/// Translates a non-streaming Messages answer into a `chat.completion`.
pub fn messages_to_chat(resp: &Value, model: &str) -> Value {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in resp["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": block["id"].as_str().unwrap_or(""),
                "type": "function",
                "function": {
                    "name": block["name"].as_str().unwrap_or(""),
                    "arguments": if block["input"].is_null() { "{}".to_string() } else { block["input"].to_string() },
                },
            })),
            _ => {} // thinking, redacted_thinking, server tool blocks
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
    });
    let reason = finish_reason(resp["stop_reason"].as_str());
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let mut out = json!({
        "id": chat_id(resp["id"].as_str().unwrap_or("")),
        "object": "chat.completion",
        "created": now_unix(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
    });
    if let Some(usage) = chat_usage(&resp["usage"]) {
        out["usage"] = usage;
    }
    out
}

// ---------------------------------------------------------------------------
// Errors, both ways
// ---------------------------------------------------------------------------

/// The status a provider's error type stands for (the type wins over the HTTP
/// status, which proxies in between sometimes rewrite).
pub fn error_type_status(kind: &str) -> Option<StatusCode> {
    Some(match kind {
        "invalid_request_error" => StatusCode::BAD_REQUEST,
        "authentication_error" => StatusCode::UNAUTHORIZED,
        "permission_error" => StatusCode::FORBIDDEN,
        "not_found_error" => StatusCode::NOT_FOUND,
        "request_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
        "api_error" => StatusCode::INTERNAL_SERVER_ERROR,
        "timeout_error" => StatusCode::GATEWAY_TIMEOUT,
        // Anthropic's own "overloaded" status: a 5xx, so it is retried and
        // routing fails over.
        "overloaded_error" => StatusCode::from_u16(529).expect("529 is a valid status"),
        _ => return None,
    })
}

/// The `(type, message)` of an Anthropic error body
/// `{"type":"error","error":{"type","message"}}` (or a bare `{"type","message"}`).
pub fn parse_error(body: &Value) -> Option<(&str, &str)> {
    let error = if body["error"].is_object() {
        &body["error"]
    } else {
        body
    };
    Some((
        error["type"].as_str()?,
        error["message"].as_str().unwrap_or(""),
    ))
}

/// A provider's error answer (`status`, body) as the client's OpenAI-shaped
/// error. The status is the one the error type stands for.
pub fn provider_error(status: u16, body: &[u8], display_url: &str) -> ApiError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (kind, message) = parsed
        .as_ref()
        .and_then(parse_error)
        .map_or((None, None), |(k, m)| (Some(k), Some(m)));
    let status = kind
        .and_then(error_type_status)
        .or_else(|| StatusCode::from_u16(status).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let message = match message.filter(|m| !m.is_empty()) {
        Some(m) => format!("upstream {display_url}: {m}"),
        None => format!("upstream {display_url} answered {status}"),
    };
    let openai_kind = match kind {
        Some("invalid_request_error") | Some("not_found_error") | Some("request_too_large") => {
            "invalid_request_error"
        }
        Some("authentication_error") => "authentication_error",
        Some("permission_error") => "permission_error",
        Some("rate_limit_error") => "rate_limit_error",
        _ => "upstream_error",
    };
    let mut err = ApiError::new(status, openai_kind, message);
    if let Some(code) = kind.and_then(static_error_type) {
        err = err.code(code);
    }
    err
}

/// Anthropic's error types as `'static` strings (codes in OpenAI's shape).
fn static_error_type(kind: &str) -> Option<&'static str> {
    [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    ]
    .into_iter()
    .find(|k| *k == kind)
}

/// Anthropic's error type for a status: what `POST /v1/messages` answers.
pub fn error_type_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body in Anthropic's shape: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The gateway's OpenAI-shaped error in Anthropic's shape (same status).
pub fn error_from_api(err: &ApiError) -> Value {
    let kind = match err.code {
        Some(code) if static_error_type(code).is_some() => code,
        _ => error_type_for(err.status),
    };
    error_body(kind, &err.message)
}

// ---------------------------------------------------------------------------
// Claude as a provider: Messages events → Chat chunks
// ---------------------------------------------------------------------------

/// Turns a Messages event stream into Chat Completions chunk frames.
///
/// Every returned `String` is one complete SSE frame. Exactly one terminal
/// outcome per stream: one chunk with a `finish_reason` (then the usage chunk
/// when asked, then `data: [DONE]`), or one error frame then `[DONE]`. Events
/// after that are ignored. `ping` produces nothing.
#[derive(Debug)]
pub struct MessagesToChat {
    /// The Chat stream written.
    out: ChatChunks,
    /// For each content block index: the Chat tool call index of a `tool_use` block.
    tool_blocks: Vec<(u64, usize)>,
    tool_count: usize,
    stop_reason: Option<String>,
    usage: Value,
}

impl MessagesToChat {
    pub fn new(model: &str, id: &str, created: u64, include_usage: bool) -> MessagesToChat {
        MessagesToChat {
            out: ChatChunks::new(model, id, created, include_usage),
            tool_blocks: Vec::new(),
            tool_count: 0,
            stop_reason: None,
            usage: json!({}),
        }
    }

    /// `(prompt_tokens, completion_tokens)` as far as reported.
    pub fn usage(&self) -> Option<(u64, u64)> {
        let u = chat_usage(&self.usage)?;
        Some((
            u["prompt_tokens"].as_u64()?,
            u["completion_tokens"].as_u64()?,
        ))
    }

    /// Input tokens read from the cache (`cache_read_input_tokens`), as far as reported.
    pub fn cached(&self) -> u64 {
        self.usage["cache_read_input_tokens"].as_u64().unwrap_or(0)
    }

    pub fn is_done(&self) -> bool {
        self.out.is_done()
    }

    /// Translates one event (the parsed `data:` JSON of one SSE frame).
    pub fn on_event(&mut self, event: &Value) -> Vec<String> {
        if self.out.is_done() {
            return Vec::new();
        }
        match event["type"].as_str().unwrap_or("") {
            "message_start" => {
                self.merge_usage(&event["message"]["usage"]);
                if let Some(id) = event["message"]["id"].as_str() {
                    self.out.id_if_unset(|| chat_id(id));
                }
                // Nothing yet: the role goes out with the first content, so an
                // in-band error before any content is the stream's first frame
                // (which routing treats as a failed attempt and fails over).
                Vec::new()
            }
            "content_block_start" => {
                let block = &event["content_block"];
                let index = event["index"].as_u64().unwrap_or(0);
                match block["type"].as_str() {
                    Some("text") => match block["text"].as_str() {
                        Some(t) if !t.is_empty() => self.out.delta(json!({"content": t})),
                        _ => Vec::new(),
                    },
                    Some("tool_use") => {
                        let call = self.tool_count;
                        self.tool_count += 1;
                        self.tool_blocks.push((index, call));
                        let mut frames = self.out.delta(json!({"tool_calls": [{
                            "index": call,
                            "id": block["id"].as_str().unwrap_or(""),
                            "type": "function",
                            "function": {"name": block["name"].as_str().unwrap_or(""), "arguments": ""},
                        }]}));
                        // Usually `{}` with the input following as deltas; a
                        // provider that sends it whole here still gets it through.
                        if block["input"].as_object().is_some_and(|o| !o.is_empty()) {
                            frames.extend(self.out.arguments(call, &block["input"].to_string()));
                        }
                        frames
                    }
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => match delta["text"].as_str() {
                        Some(t) if !t.is_empty() => self.out.delta(json!({"content": t})),
                        _ => Vec::new(),
                    },
                    Some("input_json_delta") => {
                        let index = event["index"].as_u64().unwrap_or(0);
                        let partial = delta["partial_json"].as_str().unwrap_or("");
                        match self.tool_blocks.iter().find(|(b, _)| *b == index) {
                            Some(&(_, call)) if !partial.is_empty() => {
                                self.out.arguments(call, partial)
                            }
                            _ => Vec::new(),
                        }
                    }
                    _ => Vec::new(), // thinking_delta, signature_delta, citations
                }
            }
            "message_delta" => {
                if let Some(reason) = event["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(reason.to_string());
                }
                self.merge_usage(&event["usage"]);
                Vec::new()
            }
            "message_stop" => {
                let reason = if self.tool_count > 0 && self.stop_reason.is_none() {
                    "tool_calls"
                } else {
                    finish_reason(self.stop_reason.as_deref())
                };
                self.out.finish(reason, chat_usage(&self.usage))
            }
            "error" => {
                let (kind, message) = parse_error(event).unwrap_or(("api_error", ""));
                let message = if message.is_empty() {
                    "the upstream sent an error event without a message"
                } else {
                    message
                };
                self.out.fail(message, Some(kind), None)
            }
            _ => Vec::new(), // ping, content_block_stop, unknown future events
        }
    }

    /// Call when the provider's stream ends: without `message_stop` this emits
    /// an error frame and `[DONE]`; otherwise nothing.
    pub fn finish(&mut self) -> Vec<String> {
        self.out.fail(
            "upstream closed the stream before message_stop",
            Some("upstream_stream_incomplete"),
            None,
        )
    }

    /// Ends the stream with an error frame and `[DONE]` (a broken or stalled
    /// connection); nothing when it already ended.
    pub fn abort(&mut self, message: &str, code: Option<&str>) -> Vec<String> {
        self.out
            .fail(message, Some(code.unwrap_or("upstream_error")), None)
    }

    fn merge_usage(&mut self, usage: &Value) {
        if let Some(usage) = usage.as_object() {
            for (k, v) in usage {
                if v.is_u64() {
                    self.usage[k] = v.clone();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Anthropic clients in front: Messages request → Chat Completions request
// ---------------------------------------------------------------------------

/// Translates a Messages API request into a Chat Completions request (which any
/// provider serves). A streamed request asks for the usage chunk, which the
/// final `message_delta` needs.
pub fn messages_request_to_chat(req: &Value) -> Result<Value, TranslateError> {
    let req = translate::object(req)?;
    let messages = req
        .get("messages")
        .ok_or_else(|| TranslateError::unsupported("messages", "Field required"))?
        .as_array()
        .ok_or_else(|| TranslateError::wrong("messages", "an array"))?;
    let mut out_messages = Vec::with_capacity(messages.len() + 1);
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(system) => {
            let text = blocks_text(system, "system")?;
            if !text.is_empty() {
                out_messages.push(json!({"role": "system", "content": text}));
            }
        }
    }
    for (i, msg) in messages.iter().enumerate() {
        let at = format!("messages.{i}");
        let role = translate::str_at(msg, "role", &at)?;
        let content = msg.get("content").unwrap_or(&Value::Null);
        match role {
            "user" => user_to_chat(content, &at, &mut out_messages)?,
            "assistant" => out_messages.push(assistant_to_chat(content, &at)?),
            // Claude Code sends system turns mid-conversation (the
            // `mid-conversation-system` beta): a Chat system message.
            "system" => {
                let text = blocks_text(content, &format!("{at}.content"))?;
                if !text.is_empty() {
                    out_messages.push(json!({"role": "system", "content": text}));
                }
            }
            other => {
                return Err(TranslateError::unsupported(
                    format!("{at}.role"),
                    format!("{other:?} is not \"user\", \"assistant\" or \"system\""),
                ));
            }
        }
    }

    let mut out = Map::new();
    if let Some(model) = req.get("model").filter(|v| !v.is_null()) {
        out.insert("model".into(), model.clone());
    }
    out.insert("messages".into(), Value::Array(out_messages));
    if let Some(v) = req.get("max_tokens").filter(|v| !v.is_null()) {
        if v.as_u64().is_none() {
            return Err(TranslateError::wrong(
                "max_tokens",
                "a non-negative integer",
            ));
        }
        out.insert("max_tokens".into(), v.clone());
    }
    if let Some(Value::Array(stops)) = req.get("stop_sequences") {
        if !stops.is_empty() {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(Value::Array(tools)) = req.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            // Server tools (`web_search_…`, `code_execution_…`) run at Anthropic;
            // a Chat provider cannot run them.
            .filter(|t| matches!(t.get("type").and_then(Value::as_str), None | Some("custom")))
            .enumerate()
            .map(|(i, t)| {
                let name = translate::str_at(t, "name", &format!("tools.{i}"))?;
                let mut function = json!({"name": name});
                if let Some(d) = t.get("description").filter(|v| !v.is_null()) {
                    function["description"] = d.clone();
                }
                function["parameters"] = t
                    .get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                Ok(json!({"type": "function", "function": function}))
            })
            .collect::<Result<_, TranslateError>>()?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = req.get("tool_choice").filter(|v| v.is_object()) {
        let chat_choice = match choice["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = translate::str_at(choice, "name", "tool_choice")?;
                json!({"type": "function", "function": {"name": name}})
            }
            other => {
                return Err(TranslateError::unsupported(
                    "tool_choice.type",
                    format!("unknown type {other:?}"),
                ));
            }
        };
        if out.contains_key("tools") || chat_choice == "none" {
            out.insert("tool_choice".into(), chat_choice);
        }
        if choice["disable_parallel_tool_use"] == true && out.contains_key("tools") {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(out))
}

/// A string or an array of `text` blocks as one string.
fn blocks_text(content: &Value, at: &str) -> Result<String, TranslateError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(part_text(block, &format!("{at}.{j}"))?),
                    // Images in a tool result or system prompt: not representable as text.
                    Some("image") | Some("document") => {}
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("{at}.{j}.type"),
                            format!(
                                "{other:?} is not allowed here (\"text\", \"image\" or \"document\")"
                            ),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(TranslateError::wrong(at, "a string or an array of blocks")),
    }
}

fn image_url_of(block: &Value, at: &str) -> Result<String, TranslateError> {
    let source = &block["source"];
    match source["type"].as_str() {
        Some("base64") => {
            let media_type = translate::str_at(source, "media_type", &format!("{at}.source"))?;
            let data = translate::str_at(source, "data", &format!("{at}.source"))?;
            Ok(format!("data:{media_type};base64,{data}"))
        }
        Some("url") => {
            translate::str_at(source, "url", &format!("{at}.source")).map(str::to_string)
        }
        other => Err(TranslateError::unsupported(
            format!("{at}.source.type"),
            format!("{other:?} is not supported (\"base64\" or \"url\")"),
        )),
    }
}

/// One user turn: its `tool_result` blocks become `tool` messages (first, in
/// order), the rest one user message.
fn user_to_chat(content: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(TranslateError::wrong(
                format!("{at}.content"),
                "a string or an array of blocks",
            ));
        }
    };
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content.{j}");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part_text(block, &at)?;
                parts.push(json!({"type": "text", "text": text}));
            }
            Some("image") => parts.push(json!({"type": "image_url",
                "image_url": {"url": image_url_of(block, &at)?}})),
            Some("tool_result") => {
                let id = translate::str_at(block, "tool_use_id", &at)?;
                let mut text = blocks_text(&block["content"], &format!("{at}.content"))?;
                if block["is_error"] == true {
                    text = format!("[tool error] {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            Some("document") => {
                return Err(TranslateError::unsupported(
                    format!("{at}.type"),
                    "\"document\" blocks are not supported through a Chat provider",
                ));
            }
            // Thinking blocks and cache hints carry nothing a Chat provider reads.
            Some(_) => {}
            None => {
                return Err(TranslateError::missing_or_not(
                    format!("{at}.type"),
                    "a string",
                ));
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let content = if parts.iter().all(|p| p["type"] == "text") {
        json!(
            parts
                .iter()
                .map(|p| p["text"].as_str().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n")
        )
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn assistant_to_chat(content: &Value, at: &str) -> Result<Value, TranslateError> {
    let blocks = match content {
        Value::String(s) => return Ok(json!({"role": "assistant", "content": s})),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(TranslateError::wrong(
                format!("{at}.content"),
                "a string or an array of blocks",
            ));
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content.{j}");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("tool_use") => {
                let id = translate::str_at(block, "id", &at)?;
                let name = translate::str_at(block, "name", &at)?;
                let input = if block["input"].is_null() {
                    json!({})
                } else {
                    block["input"].clone()
                };
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            _ => {} // thinking, redacted_thinking
        }
    }
    let mut msg = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    Ok(msg)
}

// ---------------------------------------------------------------------------
// Anthropic clients in front: chat.completion → Messages response
// ---------------------------------------------------------------------------

/// `chatcmpl-abc` → `msg_abc`.
pub fn message_id(chat_id: &str) -> String {
    format!(
        "msg_{}",
        chat_id.strip_prefix("chatcmpl-").unwrap_or(chat_id)
    )
}

/// Messages `usage` from Chat `usage` (cached prompt tokens reported apart, as
/// Anthropic does).
fn messages_usage(usage: &Value) -> Value {
    let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0);
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
        .min(prompt);
    let mut out = json!({
        "input_tokens": prompt - cached,
        "output_tokens": usage["completion_tokens"].as_u64().unwrap_or(0),
    });
    if cached > 0 {
        out["cache_read_input_tokens"] = json!(cached);
    }
    out
}

/// A tool call's `arguments` string as a `tool_use` input object (an argument
/// string that is not a JSON object is kept under `"arguments"`).
fn tool_input(arguments: &Value) -> Value {
    match arguments {
        Value::String(s) if s.trim().is_empty() => json!({}),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({"arguments": s}),
        },
        Value::Object(_) => arguments.clone(),
        _ => json!({}),
    }
}

/// Translates a `chat.completion` into a Messages response for `model`.
pub fn chat_to_messages_response(chat: &Value, model: &str) -> Value {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    let text = match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<String>(),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        content.push(json!({
            "type": "tool_use",
            "id": call["id"].as_str().unwrap_or(""),
            "name": call["function"]["name"].as_str().unwrap_or(""),
            "input": tool_input(&call["function"]["arguments"]),
        }));
    }
    let reason = if message["tool_calls"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
    {
        "tool_use"
    } else {
        stop_reason(choice["finish_reason"].as_str())
    };
    json!({
        "id": message_id(chat["id"].as_str().unwrap_or("")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": null,
        "usage": messages_usage(&chat["usage"]),
    })
}

// ---------------------------------------------------------------------------
// Anthropic clients in front: Chat chunks → Messages events
// ---------------------------------------------------------------------------

/// The content block currently open in the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    None,
    Text,
    /// A `tool_use` block for the Chat tool call with this index.
    Tool(u64),
}

/// Turns Chat Completions chunks into Anthropic's event sequence:
/// `message_start`, then per block `content_block_start` / `_delta` / `_stop`
/// (text with `text_delta`, tool calls as `tool_use` with `input_json_delta`),
/// then `message_delta` (with `stop_reason` and usage) and `message_stop`. An
/// error frame (or a stream that ends early) becomes one `error` event. Exactly
/// one of the two endings per stream; nothing after it.
#[derive(Debug)]
pub struct ChatToMessages {
    model: String,
    id: String,
    started: bool,
    open: OpenBlock,
    /// Index of the next content block.
    next_block: u64,
    /// Chat tool call index → content block index.
    tools: Vec<(u64, u64)>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    done: bool,
}

impl ChatToMessages {
    /// `id` is the `msg_…` id of the message, `model` the model the client asked for.
    pub fn new(model: &str, id: &str) -> ChatToMessages {
        ChatToMessages {
            model: model.to_string(),
            id: id.to_string(),
            started: false,
            open: OpenBlock::None,
            next_block: 0,
            tools: Vec::new(),
            finish_reason: None,
            usage: None,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// `message_start` (and a `ping`, as Anthropic sends): emitted before the
    /// first upstream chunk so the client sees the answer begin at once.
    pub fn start(&mut self) -> Vec<String> {
        if self.started || self.done {
            return Vec::new();
        }
        self.started = true;
        vec![
            event_frame(&json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }})),
            event_frame(&json!({"type": "ping"})),
        ]
    }

    /// Translates one Chat SSE `data:` payload (`[DONE]` included).
    pub fn on_data(&mut self, data: &str) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        let mut out = self.start();
        match ChatData::read(data) {
            ChatData::Done => out.extend(self.end()),
            ChatData::Other => {}
            ChatData::Error { code, message } => {
                let kind = code
                    .as_deref()
                    .and_then(static_error_type)
                    .unwrap_or("api_error");
                out.extend(self.fail(kind, &message));
            }
            ChatData::Chunk { usage, pieces } => {
                if usage.is_some() {
                    self.usage = usage;
                }
                for piece in pieces {
                    match piece {
                        ChunkPiece::Text(text) => out.extend(self.text(&text)),
                        ChunkPiece::ToolCall(call) => out.extend(self.tool_call(&call)),
                        ChunkPiece::Finish(reason) => self.finish_reason = Some(reason),
                    }
                }
            }
        }
        out
    }

    fn text(&mut self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.open != OpenBlock::Text {
            out.extend(self.open_block(OpenBlock::Text, json!({"type": "text", "text": ""})));
        }
        out.push(self.block_delta(json!({"type": "text_delta", "text": text})));
        out
    }

    fn tool_call(&mut self, call: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let index = call["index"].as_u64().unwrap_or(0);
        if !self.tools.iter().any(|(t, _)| *t == index) {
            let block = json!({"type": "tool_use",
                "id": call["id"].as_str().unwrap_or(""),
                "name": call["function"]["name"].as_str().unwrap_or(""),
                "input": {}});
            out.extend(self.open_block(OpenBlock::Tool(index), block));
            self.tools.push((index, self.next_block - 1));
        }
        let args = call["function"]["arguments"].as_str().unwrap_or("");
        if !args.is_empty() {
            let block = self
                .tools
                .iter()
                .find(|(t, _)| *t == index)
                .map_or(0, |(_, b)| *b);
            out.push(event_frame(
                &json!({"type": "content_block_delta", "index": block,
                "delta": {"type": "input_json_delta", "partial_json": args}}),
            ));
        }
        out
    }

    /// Call when the upstream stream ends. A stream that reported its
    /// `finish_reason` but no `[DONE]` still ends normally; one without is an
    /// `error` event.
    pub fn finish(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        if self.finish_reason.is_some() {
            let mut out = self.start();
            out.extend(self.end());
            return out;
        }
        self.fail(
            "api_error",
            "the upstream closed the stream before the answer was complete",
        )
    }

    fn end(&mut self) -> Vec<String> {
        let mut out = self.close_block();
        let reason = if self.tools.is_empty() {
            stop_reason(self.finish_reason.as_deref())
        } else {
            "tool_use"
        };
        let usage = self
            .usage
            .as_ref()
            .map_or_else(|| json!({"output_tokens": 0}), messages_usage);
        out.push(event_frame(&json!({"type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": null}, "usage": usage})));
        out.push(event_frame(&json!({"type": "message_stop"})));
        self.done = true;
        out
    }

    fn fail(&mut self, kind: &str, message: &str) -> Vec<String> {
        self.done = true;
        vec![event_frame(&error_body(kind, message))]
    }

    fn open_block(&mut self, kind: OpenBlock, block: Value) -> Vec<String> {
        let mut out = self.close_block();
        out.push(event_frame(&json!({"type": "content_block_start",
            "index": self.next_block, "content_block": block})));
        self.next_block += 1;
        self.open = kind;
        out
    }

    fn close_block(&mut self) -> Vec<String> {
        if self.open == OpenBlock::None {
            return Vec::new();
        }
        self.open = OpenBlock::None;
        vec![event_frame(
            &json!({"type": "content_block_stop", "index": self.next_block - 1}),
        )]
    }

    fn block_delta(&self, delta: Value) -> String {
        event_frame(
            &json!({"type": "content_block_delta", "index": self.next_block - 1, "delta": delta}),
        )
    }
}

/// A rough token count for `POST /v1/messages/count_tokens`: about four
/// characters of text (system, messages, tool definitions) per token. It is an
/// estimate: no provider tokenizer is consulted.
pub fn estimate_tokens(req: &Value) -> u64 {
    fn chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(chars).sum(),
            Value::Object(o) => o
                .iter()
                // Base64 image data is not text; Anthropic bills images by size.
                .filter(|(k, _)| k.as_str() != "data")
                .map(|(_, v)| chars(v))
                .sum(),
            _ => 0,
        }
    }
    let n = chars(&req["system"]) + chars(&req["messages"]) + chars(&req["tools"]);
    (n as u64).div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::translate::testing::{events, frames, hello_chunks};

    // ----- Chat request → Messages request -----

    #[test]
    fn chat_request_to_messages_table() {
        // (what, chat request fields, expected Messages request)
        let table: Vec<(&str, Value, Value)> = vec![
            (
                "plain text, default max_tokens",
                json!({"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}),
                json!({"model": "claude-x", "max_tokens": DEFAULT_MAX_TOKENS,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
            ),
            (
                "system and developer anywhere go to the top-level system",
                json!({"model": "m", "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "developer", "content": [{"type": "text", "text": "dev"}]}]}),
                json!({"model": "m", "max_tokens": DEFAULT_MAX_TOKENS, "system": "be brief\n\ndev",
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
            ),
            (
                "tool calls and grouped tool results",
                json!({"model": "m", "messages": [
                    {"role": "user", "content": "weather?"},
                    {"role": "system", "content": "mid"},
                    {"role": "assistant", "content": "checking", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "t", "arguments": ""}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
                    {"role": "user", "content": "thanks"}]}),
                json!({"model": "m", "max_tokens": DEFAULT_MAX_TOKENS, "system": "mid", "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "checking"},
                        {"type": "tool_use", "id": "call_1", "name": "w", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_2", "name": "t", "input": {}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                        {"type": "text", "text": "thanks"}]}]}),
            ),
            (
                "images: data URL to base64, http URL to url",
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "what?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR", "detail": "low"}},
                    {"type": "image_url", "image_url": "https://example.invalid/cat.jpg"}]}]}),
                json!({"model": "m", "max_tokens": DEFAULT_MAX_TOKENS, "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "what?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.jpg"}}]}]}),
            ),
            (
                "tools, tool_choice, parallel, stop, sampling, user, stream",
                json!({"model": "m", "messages": [], "max_tokens": 50, "max_completion_tokens": 70,
                    "tools": [{"type": "function", "function": {"name": "f", "description": "does f",
                        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}},
                        {"type": "function", "function": {"name": "g"}}],
                    "tool_choice": {"type": "function", "function": {"name": "f"}},
                    "parallel_tool_calls": false, "stop": "END", "temperature": 1.5, "top_p": 0.9,
                    "user": "u1", "stream": true, "stream_options": {"include_usage": true},
                    "seed": 1, "response_format": {"type": "json_object"}}),
                json!({"model": "m", "max_tokens": 70, "messages": [],
                    "tools": [{"name": "f", "description": "does f",
                        "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
                        {"name": "g", "input_schema": {"type": "object", "properties": {}}}],
                    "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
                    "stop_sequences": ["END"], "temperature": 1.0, "top_p": 0.9,
                    "metadata": {"user_id": "u1"}, "stream": true}),
            ),
            (
                "tool_choice strings",
                json!({"model": "m", "messages": [], "max_tokens": 5, "stop": ["a", "b"],
                    "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}),
                json!({"model": "m", "max_tokens": 5, "messages": [],
                    "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
                    "tool_choice": {"type": "any"}, "stop_sequences": ["a", "b"]}),
            ),
        ];
        for (what, chat, want) in table {
            assert_eq!(chat_to_messages(&chat).unwrap(), want, "{what}");
        }
        for (choice, want) in [
            ("auto", json!({"type": "auto"})),
            ("none", json!({"type": "none"})),
        ] {
            assert_eq!(anthropic_tool_choice(&json!(choice)).unwrap(), want);
        }
    }

    #[test]
    fn chat_request_errors_name_the_field() {
        let table: Vec<(Value, &str)> = vec![
            (json!([]), "the request body must be a JSON object"),
            (json!({"messages": []}), "model: missing"),
            (json!({"model": "m"}), "messages: missing"),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id: missing or not a string (required for role \"tool\")",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                    {"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]}),
                "messages[0].tool_calls[0].function.arguments: not a JSON object",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]}),
                "messages[0].content[0].image_url.url: only base64 data URLs are supported (data:<type>;base64,...)",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}),
                "messages[0].content[0].image_url.url: must be a data: or http(s):// URL",
            ),
            (
                json!({"model": "m", "messages": [], "tools": [{"type": "web_search"}]}),
                "tools[0].type: \"web_search\" is not supported by an Anthropic provider (only \"function\")",
            ),
            (
                json!({"model": "m", "messages": [], "max_tokens": 0}),
                "max_tokens: must be a positive integer",
            ),
            (
                json!({"model": "m", "messages": [], "n": 3}),
                "n: only 1 choice is supported by an Anthropic provider",
            ),
            (
                json!({"model": "m", "messages": [{"role": "wizard"}]}),
                "messages[0].role: unknown role \"wizard\"",
            ),
        ];
        for (chat, want) in table {
            assert_eq!(
                chat_to_messages(&chat).unwrap_err().to_string(),
                want,
                "{chat}"
            );
        }
    }

    // ----- Messages response → chat.completion -----

    #[test]
    fn messages_response_to_chat_table() {
        let table: Vec<(Value, Value, &str)> = vec![
            (
                json!([{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]),
                json!({"role": "assistant", "content": "Hello"}),
                "end_turn",
            ),
            (
                json!([{"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]),
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1",
                    "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}]}),
                "tool_use",
            ),
            (
                json!([{"type": "text", "text": "trunc"}]),
                json!({"role": "assistant", "content": "trunc"}),
                "max_tokens",
            ),
            (
                json!([{"type": "text", "text": "x"}]),
                json!({"role": "assistant", "content": "x"}),
                "stop_sequence",
            ),
        ];
        for (content, message, reason) in table {
            let resp = json!({"id": "msg_01", "type": "message", "role": "assistant", "content": content,
                "stop_reason": reason, "usage": {"input_tokens": 10, "output_tokens": 3,
                    "cache_read_input_tokens": 4}});
            let chat = messages_to_chat(&resp, "claude-x");
            assert_eq!(chat["id"], "chatcmpl-01");
            assert_eq!(chat["object"], "chat.completion");
            assert_eq!(chat["model"], "claude-x");
            assert_eq!(chat["choices"][0]["message"], message, "{reason}");
            assert_eq!(
                chat["choices"][0]["finish_reason"],
                finish_reason(Some(reason))
            );
            assert_eq!(
                chat["usage"],
                json!({"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17,
                    "prompt_tokens_details": {"cached_tokens": 4}})
            );
        }
        for (reason, want) in [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("max_tokens"), "length"),
            (Some("tool_use"), "tool_calls"),
            (Some("refusal"), "content_filter"),
            (None, "stop"),
        ] {
            assert_eq!(finish_reason(reason), want, "{reason:?}");
        }
    }

    #[test]
    fn provider_errors_map_to_statuses() {
        let table = [
            ("overloaded_error", 529, 529, true),
            ("rate_limit_error", 429, 429, true),
            ("invalid_request_error", 400, 400, false),
            ("authentication_error", 401, 401, false),
            ("permission_error", 403, 403, false),
            ("not_found_error", 404, 404, false),
            ("api_error", 500, 500, true),
            // The type wins over a status a proxy in between rewrote.
            ("overloaded_error", 500, 529, true),
        ];
        for (kind, http, want, retryable) in table {
            let body = error_body(kind, "boom").to_string();
            let err = provider_error(http, body.as_bytes(), "http://u");
            assert_eq!(err.status.as_u16(), want, "{kind}");
            assert_eq!(err.code, Some(kind));
            assert!(err.message.contains("boom"), "{}", err.message);
            let retry = err.status.is_server_error() || err.status.as_u16() == 429;
            assert_eq!(retry, retryable, "{kind}");
        }
        let err = provider_error(503, b"<html>", "http://u");
        assert_eq!(err.status.as_u16(), 503);
        assert_eq!(
            err.message,
            "upstream http://u answered 503 Service Unavailable"
        );
    }

    // ----- Messages events → Chat chunks -----

    fn run(t: &mut MessagesToChat, events: &[Value]) -> Vec<Option<Value>> {
        let mut out = Vec::new();
        for e in events {
            out.extend(t.on_event(e));
        }
        out.extend(t.finish());
        frames(&out)
    }

    fn text_events() -> Vec<Value> {
        vec![
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "content": [], "model": "claude-x", "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 2}}),
            json!({"type": "message_stop"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "late"}}),
        ]
    }

    #[test]
    fn streaming_text_with_ping_and_usage() {
        let mut t = MessagesToChat::new("claude-x", "chatcmpl-1", 42, true);
        let out = run(&mut t, &text_events());
        assert_eq!(out, hello_chunks("claude-x"));
        assert_eq!(t.usage(), Some((7, 2)));
        assert!(t.is_done());
    }

    #[test]
    fn streaming_tool_use_with_split_json() {
        let mut t = MessagesToChat::new("m", "c", 1, false);
        let out = run(
            &mut t,
            &[
                json!({"type": "message_start", "message": {"id": "msg_2", "usage": {"input_tokens": 3}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block":
                    {"type": "tool_use", "id": "toolu_a", "name": "w", "input": {}}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ty\":\"Paris\"}"}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block":
                    {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {"tz": "UTC"}}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
                json!({"type": "message_stop"}),
            ],
        );
        let deltas: Vec<Value> = out
            .iter()
            .flatten()
            .map(|c| {
                assert!(c.get("usage").is_none(), "no usage without include_usage");
                c["choices"][0].clone()
            })
            .collect();
        assert_eq!(
            deltas,
            vec![
                json!({"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                    "function": {"name": "w", "arguments": ""}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "toolu_b", "type": "function",
                    "function": {"name": "now", "arguments": ""}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "{\"tz\":\"UTC\"}"}}]}, "finish_reason": null}),
                json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"}),
            ]
        );
        assert_eq!(out.last(), Some(&None));
        assert_eq!(t.usage(), Some((3, 9)));
    }

    #[test]
    fn streaming_in_band_error_and_early_end() {
        let mut t = MessagesToChat::new("m", "c", 1, true);
        let out = run(
            &mut t,
            &[
                json!({"type": "message_start", "message": {"id": "msg_3", "usage": {"input_tokens": 1}}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "par"}}),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                json!({"type": "message_stop"}),
            ],
        );
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            out[1],
            Some(
                json!({"error": {"message": "Overloaded", "type": "upstream_error", "param": null,
                "code": "overloaded_error"}})
            )
        );
        assert_eq!(out[2], None);
        assert!(
            out.iter()
                .flatten()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );

        // An error before any content is the stream's first frame.
        let mut t = MessagesToChat::new("m", "c", 1, false);
        let out = run(
            &mut t,
            &[
                json!({"type": "message_start", "message": {"id": "msg_4", "usage": {"input_tokens": 1}}}),
                json!({"type": "ping"}),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ],
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out[0].as_ref().unwrap()["error"]["code"],
            "overloaded_error"
        );

        let mut t = MessagesToChat::new("m", "c", 1, false);
        let out = run(&mut t, &text_events()[..4]);
        assert_eq!(
            out[out.len() - 2].as_ref().unwrap()["error"]["message"],
            "upstream closed the stream before message_stop"
        );
        assert_eq!(out.last(), Some(&None));
        assert!(t.finish().is_empty() && t.abort("x", None).is_empty());
    }

    // ----- Messages request → Chat request (inbound) -----

    #[test]
    fn messages_request_to_chat_table() {
        let req = json!({
            "model": "claude-sonnet-4", "max_tokens": 1024,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "system", "content": [{"type": "text", "text": "mid"}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                        "content": [{"type": "text", "text": "boom"}]},
                    {"type": "text", "text": "and this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
            ],
            "tools": [{"name": "w", "description": "weather", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "temperature": 0.5, "top_k": 5,
            "metadata": {"user_id": "u1"}, "stream": true,
        });
        assert_eq!(
            messages_request_to_chat(&req).unwrap(),
            json!({
                "model": "claude-sonnet-4", "max_tokens": 1024,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "weather?"},
                    {"role": "system", "content": "mid"},
                    {"role": "assistant", "content": "checking", "tool_calls": [{"id": "toolu_1",
                        "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                    {"role": "tool", "tool_call_id": "toolu_2", "content": "[tool error] boom"},
                    {"role": "user", "content": [{"type": "text", "text": "and this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
                ],
                "tools": [{"type": "function", "function": {"name": "w", "description": "weather",
                    "parameters": {"type": "object"}}}],
                "tool_choice": "required", "parallel_tool_calls": false,
                "stop": ["END"], "temperature": 0.5, "user": "u1",
                "stream": true, "stream_options": {"include_usage": true},
            })
        );
        let errors: Vec<(Value, &str)> = vec![
            (json!({"model": "m"}), "messages: Field required"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages.0.role: \"tool\" is not \"user\", \"assistant\" or \"system\"",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}),
                "messages.0.content.0.source.type: Some(\"file\") is not supported (\"base64\" or \"url\")",
            ),
        ];
        for (req, want) in errors {
            assert_eq!(
                messages_request_to_chat(&req).unwrap_err().to_string(),
                want
            );
        }
    }

    // ----- chat.completion → Messages response (inbound) -----

    #[test]
    fn chat_response_to_messages_table() {
        let chat = json!({"id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                "finish_reason": "length"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 4}}});
        assert_eq!(
            chat_to_messages_response(&chat, "claude-x"),
            json!({"id": "msg_9", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": "Hi there"}],
                "stop_reason": "max_tokens", "stop_sequence": null,
                "usage": {"input_tokens": 6, "output_tokens": 2, "cache_read_input_tokens": 4}})
        );
        let chat = json!({"id": "chatcmpl-8", "choices": [{"message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "v", "arguments": "oops"}}]},
            "finish_reason": "tool_calls"}]});
        let out = chat_to_messages_response(&chat, "m");
        assert_eq!(
            out["content"],
            json!([{"type": "tool_use", "id": "call_1", "name": "w", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "v", "input": {"arguments": "oops"}}])
        );
        assert_eq!(out["stop_reason"], "tool_use");
        assert_eq!(out["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
        for (finish, want) in [
            (Some("stop"), "end_turn"),
            (Some("length"), "max_tokens"),
            (Some("tool_calls"), "tool_use"),
            (Some("content_filter"), "refusal"),
            (None, "end_turn"),
        ] {
            assert_eq!(stop_reason(finish), want);
        }
    }

    // ----- Chat chunks → Messages events (inbound) -----

    fn chat_chunk(delta: Value, finish: Value) -> String {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    }

    #[test]
    fn chat_chunks_to_events_text_then_tools() {
        let mut t = ChatToMessages::new("claude-x", "msg_1");
        let mut out = t.start();
        for data in [
            chat_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chat_chunk(json!({"content": "Hel"}), Value::Null),
            chat_chunk(json!({"content": "lo"}), Value::Null),
            chat_chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "w", "arguments": ""}}]}), Value::Null),
            chat_chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), Value::Null),
            chat_chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), Value::Null),
            chat_chunk(json!({}), json!("tool_calls")),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}).to_string(),
            "[DONE]".to_string(),
            chat_chunk(json!({"content": "late"}), Value::Null),
        ] {
            out.extend(t.on_data(&data));
        }
        out.extend(t.finish());
        assert_eq!(
            events(&out),
            vec![
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                    "model": "claude-x", "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}}),
                json!({"type": "ping"}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block":
                    {"type": "tool_use", "id": "call_1", "name": "w", "input": {}}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"input_tokens": 5, "output_tokens": 3}}),
                json!({"type": "message_stop"}),
            ]
        );
        assert!(t.is_done());
    }

    #[test]
    fn chat_chunks_to_events_errors_and_endings() {
        // An error frame mid-stream: one error event, nothing after.
        let mut t = ChatToMessages::new("m", "msg_2");
        let mut out = t.on_data(&chat_chunk(json!({"content": "par"}), Value::Null));
        out.extend(t.on_data(
            &json!({"error": {"message": "upstream stalled", "type": "upstream_error", "param": null,
                "code": "upstream_timeout"}})
            .to_string(),
        ));
        out.extend(t.on_data("[DONE]"));
        out.extend(t.finish());
        let ev = events(&out);
        assert_eq!(ev.len(), 5, "{ev:?}");
        assert_eq!(
            ev[4],
            json!({"type": "error", "error": {"type": "api_error", "message": "upstream stalled"}})
        );

        // Finish reason but no [DONE]: still a normal end.
        let mut t = ChatToMessages::new("m", "msg_3");
        let mut out = t.on_data(&chat_chunk(json!({}), json!("stop")));
        out.extend(t.finish());
        let ev = events(&out);
        assert_eq!(ev[ev.len() - 2]["delta"]["stop_reason"], "end_turn");
        assert_eq!(ev[ev.len() - 1]["type"], "message_stop");

        // Nothing at all: an error event.
        let mut t = ChatToMessages::new("m", "msg_4");
        let ev = events(&t.finish());
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["type"], "error");
    }

    #[test]
    fn gateway_errors_in_anthropic_shape() {
        for (status, want) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ] {
            let err = ApiError::new(StatusCode::from_u16(status).unwrap(), "x", "msg");
            assert_eq!(
                error_from_api(&err),
                json!({"type": "error", "error": {"type": want, "message": "msg"}})
            );
        }
    }

    #[test]
    fn token_estimate_counts_text_not_image_data() {
        let req = json!({"system": "abcd", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "efgh"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x".repeat(4000)}}]}]});
        // "abcd" + "user" + "text" + "efgh" + "image" + "base64" + "image/png" = 4+4+4+4+5+6+9 = 36 chars.
        assert_eq!(estimate_tokens(&req), 9);
        assert_eq!(estimate_tokens(&json!({})), 1);
    }
}
