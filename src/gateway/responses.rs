//! `POST /v1/responses` (unless `features.enable_responses_api = false`): a
//! Responses API request forwarded to the upstream's `/responses`, streaming
//! relayed as it is; the mock answers it offline. Where prompts are in use, the
//! base instructions from the prompt cache are injected as `instructions` when
//! the client brought none of its own (see [`base_prompt_policy`]); with
//! `responses_always_base_instructions` always, the client's own then kept as a
//! leading developer message.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::admission::Slot;
use super::chat::{ClientBody, respond};
use super::{Gateway, dispatch};
use crate::api::openai::{ApiError, invalid, json_type};
use crate::api::responses::instructions_for;
use crate::upstream::ResponsesCall;
use crate::upstream::forward::client_headers;

pub async fn responses(
    State(gw): State<Arc<Gateway>>,
    caller: Option<axum::extract::Extension<crate::keys::Caller>>,
    trace: Option<axum::Extension<crate::telemetry::SpanParent>>,
    super::chat::TakenHeaders(headers): super::chat::TakenHeaders,
    ClientBody(body): ClientBody,
) -> Response {
    let mut request = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(request)) => request,
        Ok(_) => return invalid::not_an_object().into_response(),
        Err(e) => return invalid::json(e).into_response(),
    };
    // The providers, keys and limits this request is served with, to its end.
    let live = gw.live();
    let model_added = request.get("model").is_none();
    let model = match request.get("model") {
        Some(Value::String(model)) => model.clone(),
        None => match dispatch::default_model(&live) {
            Some(model) => {
                request.insert("model".into(), json!(model));
                model.to_string()
            }
            None => return invalid::missing_model().into_response(),
        },
        Some(other) => {
            return invalid::wrong_type("model", "a string", json_type(&other.to_string()))
                .into_response();
        }
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => {
            return invalid::wrong_type("stream", "a boolean", json_type(&other.to_string()))
                .into_response();
        }
    };
    match request.get("input") {
        None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
        Some(other) => {
            return invalid::wrong_type(
                "input",
                "a string or an array of input items",
                json_type(&other.to_string()),
            )
            .into_response();
        }
    }
    let slot = match Slot::try_take(&gw, &live) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let origin = dispatch::Origin::http(caller.map(|c| c.0), "/v1/responses", &headers)
        .traced(trace.map(|axum::Extension(t)| t));
    let input_bytes = request.get("input").map_or(0, |i| match i {
        Value::String(s) => s.len(),
        other => other.to_string().len(),
    }) + request
        .get("instructions")
        .and_then(Value::as_str)
        .map_or(0, str::len);
    let ticket = match dispatch::admit_key(&gw, &origin, &model, input_bytes, &body).await {
        Ok(ticket) => ticket,
        Err(e) => return e.into_response(),
    };
    let body = match base_prompt_policy(&gw, &live, &request) {
        BasePrompt::Skip if !model_added => body,
        BasePrompt::Skip => {
            Bytes::from(serde_json::to_vec(&Value::Object(request)).expect("JSON serialises"))
        }
        BasePrompt::Add => {
            let base = gw.prompts.get(instructions_for(&model)).await;
            if let Err(e) = inject_instructions(&mut request, &base.text) {
                return e.into_response();
            }
            Bytes::from(serde_json::to_vec(&Value::Object(request)).expect("JSON serialises"))
        }
    };
    let (info, stats) = dispatch::begin(&model, ticket, &origin);
    let call = ResponsesCall {
        body,
        model,
        stream,
        stats,
        headers: client_headers(&headers),
    };
    // Server tools (docs/contract.md §18): the request is served through the
    // Chat loop and answered in the Responses shape; one that continues a
    // stored conversation goes on as it is.
    let with_tools = gw
        .tools
        .as_ref()
        .filter(|_| origin.server_tools && stateless(&call.body));
    let reply = match with_tools {
        Some(tools) => {
            let (tools, model, trace) = (
                tools.clone(),
                dispatch::model_call(&live),
                origin.trace.clone(),
            );
            let owner = origin.caller.name().unwrap_or_default().to_string();
            crate::upstream::responses_over_chat(call, move |chat| {
                crate::tools::run_chat(tools, model, chat, trace, owner)
            })
            .await
        }
        None => live.router.responses(call).await,
    };
    respond(reply, slot, info)
}

/// Whether a Responses request carries its whole conversation (no
/// `previous_response_id` or `conversation` naming one stored upstream).
fn stateless(body: &[u8]) -> bool {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    ["previous_response_id", "conversation"]
        .iter()
        .all(|k| request.get(*k).is_none_or(Value::is_null))
}

/// Whether `/v1/responses` adds the base prompt to a request.
#[derive(Debug, PartialEq, Eq)]
enum BasePrompt {
    Add,
    Skip,
}

/// The prompt policy: only where prompts are in use (never with the mock, so
/// it fetches nothing), never with `responses_no_base_instructions`, and — unless
/// `responses_always_base_instructions` — only when the client brought no
/// instructions of its own (`instructions`, or a leading system/developer
/// message in `input`, as Codex sends its prompt), so prompts are never doubled.
fn base_prompt_policy(
    gw: &Gateway,
    live: &super::Live,
    request: &Map<String, Value>,
) -> BasePrompt {
    let f = &live.config.features;
    if !gw.uses_prompts() || f.responses_no_base_instructions {
        return BasePrompt::Skip;
    }
    if f.responses_always_base_instructions || !brings_own_instructions(request) {
        BasePrompt::Add
    } else {
        BasePrompt::Skip
    }
}

/// A non-empty `instructions`, or `input` that starts with a system or
/// developer message.
fn brings_own_instructions(request: &Map<String, Value>) -> bool {
    let own = request
        .get("instructions")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty());
    let leading = request
        .get("input")
        .and_then(Value::as_array)
        .and_then(|items| items.first())
        .and_then(|item| item.get("role"))
        .and_then(Value::as_str)
        .is_some_and(|role| role == "system" || role == "developer");
    own || leading
}

/// Sets `instructions` to `base`; the client's own instructions become a
/// developer message at the start of `input`, so nothing it asked for is lost.
fn inject_instructions(request: &mut Map<String, Value>, base: &str) -> Result<(), ApiError> {
    let own = match request.remove("instructions") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        None | Some(Value::Null) | Some(Value::String(_)) => None,
        Some(_) => {
            return Err(
                ApiError::bad_request("'instructions' must be a string").param("instructions")
            );
        }
    };
    if let Some(own) = own {
        let developer = json!({"type": "message", "role": "developer",
                               "content": [{"type": "input_text", "text": own}]});
        match request.remove("input") {
            Some(Value::Array(mut items)) => {
                items.insert(0, developer);
                request.insert("input".into(), Value::Array(items));
            }
            Some(Value::String(text)) => {
                let user = json!({"type": "message", "role": "user",
                                  "content": [{"type": "input_text", "text": text}]});
                request.insert("input".into(), json!([developer, user]));
            }
            None | Some(Value::Null) => {
                request.insert("input".into(), json!([developer]));
            }
            Some(_) => {
                return Err(
                    ApiError::bad_request("'input' must be a string or an array").param("input"),
                );
            }
        }
    }
    request.insert("instructions".into(), json!(base));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injected(request: Value) -> Value {
        let Value::Object(mut map) = request else {
            panic!()
        };
        inject_instructions(&mut map, "BASE").unwrap();
        Value::Object(map)
    }

    #[test]
    fn base_instructions_replace_and_keep_the_clients_own() {
        let out = injected(json!({"model": "m", "input": "hi"}));
        assert_eq!(
            out,
            json!({"model": "m", "input": "hi", "instructions": "BASE"})
        );

        let out = injected(json!({"model": "m", "input": "hi", "instructions": "be terse"}));
        assert_eq!(out["instructions"], "BASE");
        assert_eq!(out["input"][0]["role"], "developer");
        assert_eq!(out["input"][0]["content"][0]["text"], "be terse");
        assert_eq!(out["input"][1]["content"][0]["text"], "hi");

        let out =
            injected(json!({"input": [{"role": "user", "content": "x"}], "instructions": "own"}));
        assert_eq!(out["input"].as_array().unwrap().len(), 2);
        assert_eq!(out["input"][1]["content"], "x");
    }

    #[test]
    fn own_instructions_are_an_instructions_field_or_a_leading_system_message() {
        let own = |v: Value| brings_own_instructions(v.as_object().unwrap());
        assert!(own(json!({"instructions": "x", "input": "hi"})));
        assert!(!own(json!({"instructions": " ", "input": "hi"})));
        assert!(!own(json!({"input": "hi"})));
        assert!(own(
            json!({"input": [{"type": "message", "role": "developer", "content": []}]})
        ));
        assert!(own(json!({"input": [{"role": "system", "content": "x"}]})));
        assert!(!own(
            json!({"input": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]})
        ));
    }

    #[test]
    fn bad_shapes_are_400() {
        let Value::Object(mut map) = json!({"instructions": 5}) else {
            panic!()
        };
        assert_eq!(inject_instructions(&mut map, "B").unwrap_err().status, 400);
        let Value::Object(mut map) = json!({"instructions": "x", "input": 5}) else {
            panic!()
        };
        assert_eq!(inject_instructions(&mut map, "B").unwrap_err().status, 400);
    }
}
