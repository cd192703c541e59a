//! Legacy text completions (`POST /v1/completions`) <-> Chat Completions, both
//! ways (pure). A provider that speaks Chat Completions (`api = "chat"`) gets the
//! request as it was sent; the others (the mock, `responses`, `anthropic`) are
//! asked in Chat Completions, through these translations:
//!
//! - the request: the one prompt (a string, or a list of one string) becomes
//!   one user message; `max_tokens` defaults to 16, as OpenAI's does; the
//!   sampling fields carry over;
//! - what a chat has no way to honour is refused with a 400 naming the field:
//!   `suffix`, `echo`, `logprobs`, `best_of` > 1, several prompts, token prompts;
//! - the answer: a `chat.completion` becomes a `text_completion`, and each
//!   chunk of a stream a `text_completion` chunk (the role-only first chunk is
//!   dropped; the usage chunk and error events pass as they are).

use serde_json::{Map, Value, json};

use super::openai::ApiError;

/// `max_tokens` when the request names none (OpenAI's default for this API).
pub const DEFAULT_MAX_TOKENS: u64 = 16;

/// The fields copied from a completions request to the chat request as they are.
const CARRIED: [&str; 13] = [
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "seed",
];

fn refused(param: &'static str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "'{param}' is not supported for this model: {why} (its provider is asked in \
         Chat Completions, which has no equivalent); route the model to a provider with \
         api = \"chat\" to use it"
    ))
    .param(param)
    .code("unsupported_parameter")
}

/// The Chat Completions request for a legacy completions request.
pub fn completions_to_chat(request: &Value) -> Result<Value, ApiError> {
    let object = request
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let prompt = match object.get("prompt") {
        Some(Value::String(prompt)) => prompt.clone(),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(prompt)] => prompt.clone(),
            [] => return Err(super::openai::invalid::empty_array("prompt")),
            [_] => return Err(refused("prompt", "a prompt given as tokens")),
            _ => return Err(refused("prompt", "several prompts in one request")),
        },
        None | Some(Value::Null) => return Err(super::openai::invalid::missing("prompt")),
        Some(_) => {
            return Err(super::openai::invalid::wrong_type(
                "prompt",
                "a string or a list of one string",
                "another type",
            ));
        }
    };
    let set = |name: &str| object.get(name).is_some_and(|v| !v.is_null());
    if object
        .get("suffix")
        .is_some_and(|v| !v.is_null() && v != "")
    {
        return Err(refused("suffix", "text to insert before"));
    }
    if object.get("echo").is_some_and(|v| v == true) {
        return Err(refused("echo", "the prompt echoed back"));
    }
    if set("logprobs") {
        return Err(refused("logprobs", "log probabilities of tokens"));
    }
    if object
        .get("best_of")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(refused("best_of", "the best of several completions"));
    }
    let mut chat = Map::new();
    for field in CARRIED {
        if let Some(value) = object.get(field).filter(|v| !v.is_null()) {
            chat.insert(field.to_string(), value.clone());
        }
    }
    chat.entry("max_tokens")
        .or_insert_with(|| json!(DEFAULT_MAX_TOKENS));
    chat.insert(
        "messages".into(),
        json!([{"role": "user", "content": prompt}]),
    );
    Ok(Value::Object(chat))
}

/// `chatcmpl-…` ids become `cmpl-…`, as the completions API names its own.
fn completion_id(id: &Value) -> Value {
    match id.as_str() {
        Some(id) => json!(
            id.strip_prefix("chatcmpl-")
                .map_or_else(|| id.to_string(), |rest| format!("cmpl-{rest}"))
        ),
        None => Value::Null,
    }
}

/// A `text_completion` for a `chat.completion`.
pub fn chat_to_completion(chat: &Value) -> Value {
    let choices: Vec<Value> = chat["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|choice| {
            json!({
                "text": choice["message"]["content"].as_str().unwrap_or(""),
                "index": choice["index"].as_u64().unwrap_or(0),
                "logprobs": null,
                "finish_reason": choice["finish_reason"],
            })
        })
        .collect();
    let mut out = json!({
        "id": completion_id(&chat["id"]),
        "object": "text_completion",
        "created": chat["created"],
        "model": chat["model"],
        "choices": choices,
    });
    if chat["usage"].is_object() {
        out["usage"] = chat["usage"].clone();
    }
    out
}

/// The `text_completion` chunk for one `chat.completion.chunk`; `None` for a
/// chunk that carries nothing a completions client reads (the role-only one).
/// Anything that is not a chunk (an error event) passes unchanged.
pub fn chunk_to_completion(chunk: &Value) -> Option<Value> {
    let Some(choices) = chunk["choices"].as_array() else {
        return Some(chunk.clone());
    };
    let choices: Vec<Value> = choices
        .iter()
        .filter_map(|choice| {
            let text = choice["delta"]["content"].as_str().unwrap_or("");
            let finish = &choice["finish_reason"];
            (!text.is_empty() || !finish.is_null()).then(|| {
                json!({
                    "text": text,
                    "index": choice["index"].as_u64().unwrap_or(0),
                    "logprobs": null,
                    "finish_reason": finish,
                })
            })
        })
        .collect();
    let usage = chunk["usage"].is_object();
    if choices.is_empty() && !usage {
        return None;
    }
    let mut out = json!({
        "id": completion_id(&chunk["id"]),
        "object": "text_completion",
        "created": chunk["created"],
        "model": chunk["model"],
        "choices": choices,
    });
    if usage {
        out["usage"] = chunk["usage"].clone();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_becomes_one_user_message_with_max_tokens_16() {
        let chat = completions_to_chat(
            &json!({"model": "m", "prompt": "Say hi", "temperature": 0.5, "stream": true, "foo": 1}),
        )
        .unwrap();
        assert_eq!(
            chat,
            json!({"model": "m", "temperature": 0.5, "stream": true, "max_tokens": 16,
                   "messages": [{"role": "user", "content": "Say hi"}]})
        );
        let chat = completions_to_chat(&json!({"prompt": ["one"], "max_tokens": 3})).unwrap();
        assert_eq!(chat["max_tokens"], 3);
        assert_eq!(chat["messages"][0]["content"], "one");
    }

    #[test]
    fn what_a_chat_cannot_honour_is_a_400_naming_the_field() {
        for (request, field) in [
            (json!({"prompt": "x", "suffix": "y"}), "suffix"),
            (json!({"prompt": "x", "echo": true}), "echo"),
            (json!({"prompt": "x", "logprobs": 2}), "logprobs"),
            (json!({"prompt": "x", "best_of": 3}), "best_of"),
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": [[1, 2]]}), "prompt"),
            (json!({"prompt": 5}), "prompt"),
            (json!({}), "prompt"),
        ] {
            let e = completions_to_chat(&request).unwrap_err();
            assert_eq!(e.status, 400, "{request}");
            assert_eq!(e.param, Some(field), "{request}");
            assert!(e.message.contains(field), "{}", e.message);
        }
        // The harmless values of those fields are accepted.
        for request in [
            json!({"prompt": "x", "suffix": null, "echo": false, "logprobs": null, "best_of": 1}),
            json!({"prompt": "x", "suffix": ""}),
        ] {
            assert!(completions_to_chat(&request).is_ok(), "{request}");
        }
    }

    #[test]
    fn answers_and_chunks_become_text_completions() {
        let chat = json!({"id": "chatcmpl-7", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}});
        let out = chat_to_completion(&chat);
        assert_eq!(out["id"], "cmpl-7");
        assert_eq!(out["object"], "text_completion");
        assert_eq!(out["choices"][0]["text"], "hello");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(out["usage"]["total_tokens"], 3);

        let role = json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]});
        assert_eq!(chunk_to_completion(&role), None);
        let text = json!({"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {"content": " hi"}, "finish_reason": null}]});
        assert_eq!(
            chunk_to_completion(&text).unwrap()["choices"][0]["text"],
            " hi"
        );
        let usage = json!({"id": "chatcmpl-7", "choices": [], "usage": {"prompt_tokens": 1}});
        assert_eq!(
            chunk_to_completion(&usage).unwrap()["usage"]["prompt_tokens"],
            1
        );
        let error = json!({"error": {"message": "x"}});
        assert_eq!(chunk_to_completion(&error), Some(error.clone()));
    }
}
