//! `POST /v1/responses` (only with `features.enable_responses_api`): a Responses
//! API request forwarded to the upstream's `/responses`, streaming relayed as
//! it is. The base instructions from the prompt cache are injected as
//! `instructions` (the client's own instructions, if any, are kept as a leading
//! developer message), unless `features.responses_no_base_instructions`, which
//! forwards the client's own `instructions` untouched.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::Gateway;
use super::admission::Slot;
use super::chat::{body_rejection, respond};
use super::observe::ExchangeInfo;
use crate::api::openai::ApiError;
use crate::api::responses::instructions_for;
use crate::upstream::{ExchangeStats, ResponsesCall};

pub async fn responses(
    State(gw): State<Arc<Gateway>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_rejection(&gw, rejection).into_response(),
    };
    let mut request = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(request)) => request,
        Ok(_) => {
            return ApiError::bad_request("the request body must be a JSON object")
                .code("invalid_request")
                .into_response();
        }
        Err(e) => {
            return ApiError::bad_request(format!(
                "request body is not valid JSON for a response: {e}"
            ))
            .code("invalid_request")
            .into_response();
        }
    };
    let model = match request.get("model") {
        Some(Value::String(model)) => model.clone(),
        None | Some(Value::Null) => {
            let model = gw
                .config
                .upstream
                .models
                .first()
                .cloned()
                .unwrap_or_default();
            request.insert("model".into(), json!(model));
            model
        }
        Some(_) => {
            return ApiError::bad_request("'model' must be a string")
                .param("model")
                .into_response();
        }
    };
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let slot = match Slot::try_take(&gw) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let body = if gw.config.features.responses_no_base_instructions {
        body
    } else {
        let base = gw.prompts.get(instructions_for(&model)).await;
        if let Err(e) = inject_instructions(&mut request, &base.text) {
            return e.into_response();
        }
        Bytes::from(serde_json::to_vec(&Value::Object(request)).expect("JSON serialises"))
    };
    let stats = Arc::new(ExchangeStats::default());
    let info = ExchangeInfo {
        model: model.clone(),
        stats: stats.clone(),
    };
    let call = ResponsesCall {
        body,
        model,
        stream,
        stats,
    };
    respond(gw.router.responses(call).await, slot, info)
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
