//! A Responses API upstream for tests: `POST /v1/responses` answering fixed
//! JSON or SSE (text, tool call, `response.failed`, a broken connection),
//! recording every request body it received. Plus helpers shared by the
//! Responses and prompt tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::PATIENCE;
use super::prompt_server::{PromptServer, serve};
use super::upstream::async_stream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// "Hello from responses", as JSON or (when asked to stream) as SSE.
    Text,
    /// Like `Text`, but the stream pauses after "Hello" until `release()`.
    GatedText,
    /// Like `Text`, but after the response headers the body stays silent (a
    /// model thinking) until `release()`.
    SilentThenText,
    /// A `get_weather` call with arguments `{"city":"Paris"}`, streamed in two pieces.
    ToolCall,
    /// Streams "partial", then `response.failed`.
    Failed,
    /// Streams "partial", then the connection breaks.
    DropMidStream,
}

pub const TEXT: &str = "Hello from responses";
pub const ARGUMENTS: &str = r#"{"city":"Paris"}"#;

pub struct ResponsesState {
    answer: Answer,
    pub hits: AtomicUsize,
    /// Every request body received, parsed.
    pub bodies: Mutex<Vec<Value>>,
    /// The headers of every request received.
    pub headers: Mutex<Vec<axum::http::HeaderMap>>,
    /// Notified when a gated stream paused.
    pub arrived: Notify,
    gate: Notify,
}

pub struct ResponsesUpstream {
    pub addr: SocketAddr,
    pub state: Arc<ResponsesState>,
}

fn usage() -> Value {
    json!({"input_tokens": 11, "output_tokens": 3, "total_tokens": 14})
}

fn message_item() -> Value {
    json!({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
           "content": [{"type": "output_text", "text": TEXT, "annotations": []}]})
}

fn call_item() -> Value {
    json!({"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
           "arguments": ARGUMENTS, "status": "completed"})
}

/// The whole (non-streaming) answer.
pub fn response_object(model: &str, item: Value) -> Value {
    json!({"id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
           "model": model, "output": [item], "usage": usage()})
}

fn event(v: Value) -> Bytes {
    Bytes::from(format!(
        "event: {}\ndata: {v}\n\n",
        v["type"].as_str().unwrap()
    ))
}

fn sse(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

fn text_delta(delta: &str) -> Bytes {
    event(
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                 "content_index": 0, "delta": delta}),
    )
}

fn created() -> Bytes {
    event(json!({"type": "response.created",
                 "response": {"id": "resp_1", "object": "response", "status": "in_progress"}}))
}

async fn responses(
    State(st): State<Arc<ResponsesState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    st.hits.fetch_add(1, Ordering::SeqCst);
    st.headers.lock().unwrap().push(headers);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    st.bodies.lock().unwrap().push(request.clone());
    let model = request["model"].as_str().unwrap_or("").to_string();
    let stream = request["stream"] == true;
    let item = match st.answer {
        Answer::ToolCall => call_item(),
        _ => message_item(),
    };
    let whole = response_object(&model, item.clone());
    if !stream {
        return axum::Json(whole).into_response();
    }
    let completed = event(json!({"type": "response.completed", "response": whole}));
    match st.answer {
        Answer::Text | Answer::GatedText | Answer::SilentThenText => {
            let gated = st.answer == Answer::GatedText;
            let silent = st.answer == Answer::SilentThenText;
            let st = st.clone();
            sse(async_stream(move |tx| async move {
                if silent {
                    st.arrived.notify_one();
                    st.gate.notified().await;
                }
                let _ = tx.send(created()).await;
                let _ = tx
                    .send(event(json!({"type": "response.output_item.added", "output_index": 0,
                        "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []}})))
                    .await;
                let _ = tx.send(text_delta("Hello")).await;
                if gated {
                    st.arrived.notify_one();
                    st.gate.notified().await;
                }
                let _ = tx.send(text_delta(" from")).await;
                let _ = tx.send(text_delta(" responses")).await;
                let _ = tx
                    .send(event(
                        json!({"type": "response.output_text.done", "item_id": "msg_1",
                        "output_index": 0, "content_index": 0, "text": TEXT}),
                    ))
                    .await;
                let _ = tx.send(completed).await;
            }))
        }
        Answer::ToolCall => sse(async_stream(move |tx| async move {
            let _ = tx.send(created()).await;
            let mut added = call_item();
            added["arguments"] = json!("");
            added["status"] = json!("in_progress");
            let _ = tx
                .send(event(
                    json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
                ))
                .await;
            for piece in [r#"{"city":"#, r#""Paris"}"#] {
                let _ = tx
                    .send(event(
                        json!({"type": "response.function_call_arguments.delta",
                        "item_id": "fc_1", "output_index": 0, "delta": piece}),
                    ))
                    .await;
            }
            let _ = tx
                .send(event(
                    json!({"type": "response.function_call_arguments.done",
                    "item_id": "fc_1", "output_index": 0, "arguments": ARGUMENTS}),
                ))
                .await;
            let _ = tx
                .send(event(
                    json!({"type": "response.output_item.done", "output_index": 0,
                    "item": call_item()}),
                ))
                .await;
            let _ = tx.send(completed).await;
        })),
        Answer::Failed => sse(async_stream(move |tx| async move {
            let _ = tx.send(created()).await;
            let _ = tx.send(text_delta("partial")).await;
            let _ = tx
                .send(event(json!({"type": "response.failed", "response": {
                    "id": "resp_1", "object": "response", "status": "failed",
                    "error": {"code": "server_error", "message": "the model fell over"}}})))
                .await;
        })),
        Answer::DropMidStream => {
            // Two events; once the test has seen them arrive through the proxy
            // (and calls `release()`), a broken connection.
            let items = futures_util::stream::unfold(0, move |step| {
                let st = st.clone();
                async move {
                    match step {
                        0 => Some((Ok(created()), 1)),
                        1 => Some((Ok(text_delta("partial")), 2)),
                        2 => {
                            st.gate.notified().await;
                            Some((Err(std::io::Error::other("upstream crashed")), 3))
                        }
                        _ => None,
                    }
                }
            });
            sse(Body::from_stream(items))
        }
    }
}

impl ResponsesUpstream {
    pub fn start(answer: Answer) -> ResponsesUpstream {
        let state = Arc::new(ResponsesState {
            answer,
            hits: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            gate: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/responses", routing::post(responses))
            .with_state(state.clone());
        ResponsesUpstream {
            addr: serve(app),
            state,
        }
    }

    /// The base URL to configure as `upstream.url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The last request body received.
    pub fn last_body(&self) -> Value {
        self.state
            .bodies
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }

    /// The headers of the last request received.
    pub fn last_headers(&self) -> axum::http::HeaderMap {
        self.state
            .headers
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }

    /// Lets a paused `GatedText` stream continue (or `DropMidStream` break).
    pub fn release(&self) {
        self.state.gate.notify_one();
    }

    pub async fn wait_arrival(&self) {
        tokio::time::timeout(PATIENCE, self.state.arrived.notified())
            .await
            .expect("the stream reached its pause");
    }
}

/// A `warden.toml` for a Responses upstream at `upstream_url` whose two prompts
/// come from `prompts`, plus `extra` lines (e.g. `[features]`), appended.
pub fn responses_config(upstream_url: &str, prompts: &PromptServer, extra: &str) -> String {
    format!(
        r#"[upstream]
url = "{upstream_url}"
api = "responses"
attempts = 1
idle_timeout = 10

[prompts]
ttl = 86400
fetch_timeout = 3
attempts = 1

[[prompts.source]]
name = "base_instructions"
url = "{base}"

[[prompts.source]]
name = "gpt5_codex_instructions"
url = "{codex}"

{extra}
"#,
        base = prompts.url("base_instructions"),
        codex = prompts.url("gpt5_codex_instructions"),
    )
}

// Moved to `support::http`; named here too for the tests that import them from here.
pub use super::http::{get_json, health, metrics_text, post, until};

/// The JSON chunks of an SSE body, and whether it ended with `[DONE]`.
pub fn chunks_of(text: &str) -> (Vec<Value>, bool) {
    let data = super::sse_data(text);
    let done = data.last().is_some_and(|d| d == "[DONE]");
    let chunks = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    (chunks, done)
}
