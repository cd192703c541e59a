//! `POST /v1/completions`, the legacy text completions API (docs/contract.md §16): sent as
//! it is to a Chat Completions provider (streams relayed chunk by chunk), and
//! answered in translation by the mock, a Responses provider and an Anthropic
//! provider, with what a translation cannot honour refused naming the field.
//! (Chat Completions itself is `completions.rs`.)

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::gateway::InProcess;
use crate::support::http::Served;
use crate::support::prompt_server::{PromptMode, PromptServer, serve};
use crate::support::responses_upstream::{Answer, ResponsesUpstream, TEXT, responses_config};
use crate::support::{PATIENCE, TestHome, assert_openai_error, client, sse_data};

fn start(config: &str) -> (TestHome, InProcess) {
    let home = TestHome::new();
    home.config(config);
    let proxy = InProcess::start(&home, &[]);
    (home, proxy)
}

async fn complete(proxy: &impl Served, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/completions", proxy.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The text of a streamed completions answer, and whether it ended with `[DONE]`.
fn streamed_text(body: &str) -> (String, bool) {
    let data = sse_data(body);
    let done = data.last().is_some_and(|d| d == "[DONE]");
    let mut text = String::new();
    for d in data.iter().filter(|d| *d != "[DONE]") {
        let chunk: Value = serde_json::from_str(d).unwrap();
        assert_eq!(chunk["object"], "text_completion", "{chunk}");
        if let Some(piece) = chunk["choices"][0]["text"].as_str() {
            text.push_str(piece);
        }
    }
    (text, done)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mock_answers_in_translation_whole_and_streamed() {
    let (_home, proxy) = start("");
    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": "Say this is a test"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-warden-provider"], "default");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "text_completion", "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"), "{body}");
    assert_eq!(body["choices"][0]["text"], "Say this is a test");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 5);

    // A one-item list is one prompt; streamed, with the usage chunk when asked.
    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": ["stream me please"], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    let (streamed, done) = streamed_text(&text);
    assert_eq!(streamed, "stream me please");
    assert!(done, "{text}");
    assert!(text.contains("\"usage\""), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_translation_cannot_honour_is_a_400_naming_the_field() {
    let (_home, proxy) = start("");
    for (body, field) in [
        (
            json!({"model": "m", "prompt": "x", "suffix": "y"}),
            "suffix",
        ),
        (json!({"model": "m", "prompt": "x", "echo": true}), "echo"),
        (
            json!({"model": "m", "prompt": "x", "logprobs": 3}),
            "logprobs",
        ),
        (
            json!({"model": "m", "prompt": "x", "best_of": 2}),
            "best_of",
        ),
        (json!({"model": "m", "prompt": ["a", "b"]}), "prompt"),
        (json!({"model": "m", "prompt": [[1, 2]]}), "prompt"),
        (json!({"model": "m"}), "prompt"),
    ] {
        let r = complete(&proxy, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let error: Value = r.json().await.unwrap();
        assert_openai_error(&error);
        assert_eq!(error["error"]["param"], field, "{body}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
}

/// A fake Chat Completions server's `POST /v1/completions`: records the body;
/// answers a `text_completion`, or (asked to stream) one chunk, then waits
/// for `gate`, then a second chunk and `[DONE]`.
#[derive(Clone)]
struct LegacyServer {
    bodies: Arc<Mutex<Vec<Value>>>,
    gate: Arc<Notify>,
}

async fn legacy(State(server): State<LegacyServer>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    server.bodies.lock().unwrap().push(body.clone());
    let chunk = |text: &str, finish: Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "cmpl-up", "object": "text_completion", "created": 1, "model": "davinci-002",
                   "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
        ))
    };
    if body["stream"] == true {
        let gate = server.gate.clone();
        let first = chunk("first", Value::Null);
        let second = chunk(" second", json!("stop"));
        let frames = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
            .chain(futures_util::stream::once(async move {
                gate.notified().await;
                Ok(second)
            }))
            .chain(futures_util::stream::once(async {
                Ok(Bytes::from_static(b"data: [DONE]\n\n"))
            }));
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(frames))
            .unwrap();
    }
    axum::Json(
        json!({"id": "cmpl-up", "object": "text_completion", "created": 1,
        "model": "davinci-002", "choices": [{"text": "as the upstream said", "index": 0,
        "logprobs": {"tokens": ["as"]}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}}),
    )
    .into_response()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_provider_gets_the_request_as_sent_and_its_stream_is_relayed_chunk_by_chunk() {
    let server = LegacyServer {
        bodies: Arc::new(Mutex::new(Vec::new())),
        gate: Arc::new(Notify::new()),
    };
    let app = Router::new()
        .route("/v1/completions", post(legacy))
        .with_state(server.clone());
    let addr = serve(app);
    let (_home, proxy) = start(&format!(
        "[[providers]]\nname = \"openai\"\nurl = \"http://{addr}/v1\"\n\n[aliases]\ninstruct = \"gpt-3.5-turbo-instruct\"\n"
    ));
    // Fields a translation would refuse go through as they are (with the
    // alias resolved), and the answer comes back as it is.
    let sent = json!({"model": "instruct", "prompt": ["a", "b"], "echo": true, "logprobs": 1,
                      "suffix": "!", "best_of": 2});
    let r = complete(&proxy, sent.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-warden-provider"], "openai");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["logprobs"]["tokens"][0], "as", "{body}");
    let mut expected = sent.clone();
    expected["model"] = json!("gpt-3.5-turbo-instruct");
    assert_eq!(server.bodies.lock().unwrap()[0], expected);

    // A stream: the first chunk reaches the client while the upstream still
    // holds the second.
    let r = complete(
        &proxy,
        json!({"model": "davinci-002", "prompt": "x", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("first") {
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .expect("the first chunk arrived while the upstream held the rest")
            .expect("the stream is open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("second"), "{seen}");
    server.gate.notify_one();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.next()).await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let (text, done) = streamed_text(&seen);
    assert_eq!(text, "first second");
    assert!(done, "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_responses_provider_answers_in_translation() {
    let prompts = PromptServer::start(PromptMode::Up);
    let upstream = ResponsesUpstream::start(Answer::Text);
    let (_home, proxy) = start(&responses_config(&upstream.url(), &prompts, ""));
    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": "hi", "max_tokens": 7}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "text_completion", "{body}");
    assert_eq!(body["choices"][0]["text"], TEXT);
    // The prompt became one user message; max_tokens carried over.
    let sent = upstream.last_body();
    assert_eq!(sent["max_output_tokens"], 7, "{sent}");
    assert!(sent["input"].to_string().contains("hi"), "{sent}");

    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": "hi", "stream": true}),
    )
    .await;
    let (text, done) = streamed_text(&r.text().await.unwrap());
    assert_eq!(text, TEXT);
    assert!(done);
    // max_tokens defaults to 16, as OpenAI's does.
    assert_eq!(upstream.last_body()["max_output_tokens"], 16);
}

/// A fake Anthropic Messages server: one message, or its event stream.
async fn messages(body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["messages"][0]["role"], "user", "{body}");
    if body["stream"] == true {
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "claude-test", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "from"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " claude"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 2}}),
            json!({"type": "message_stop"}),
        ];
        let text: String = events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect();
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from(text))
            .unwrap();
    }
    axum::Json(
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": "from claude"}], "stop_reason": "end_turn",
        "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 2}}),
    )
    .into_response()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_provider_answers_in_translation() {
    let addr = serve(Router::new().route("/v1/messages", post(messages)));
    let (_home, proxy) = start(&format!(
        "[[providers]]\nname = \"claude\"\nurl = \"http://{addr}/v1\"\napi = \"anthropic\"\n"
    ));
    let r = complete(&proxy, json!({"model": "claude-test", "prompt": "hi"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-warden-provider"], "claude");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["text"], "from claude", "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2, "{body}");
    let r = complete(
        &proxy,
        json!({"model": "claude-test", "prompt": "hi", "stream": true}),
    )
    .await;
    let (text, done) = streamed_text(&r.text().await.unwrap());
    assert_eq!(text, "from claude");
    assert!(done);
    // Refused here too.
    let r = complete(
        &proxy,
        json!({"model": "claude-test", "prompt": "hi", "echo": true}),
    )
    .await;
    assert_eq!(r.status(), 400);
}
