//! The Anthropic Messages API both ways (docs/contract.md §12): `POST /v1/messages` for
//! Anthropic clients, served by any provider (the mock here), and Claude as a
//! provider (`api = "anthropic"`) behind a fake Anthropic upstream written here.

use serde_json::{Value, json};

use crate::support::{Proxy, TestHome, client};

/// The proxy on the mock, with `env`.
fn mock_proxy(env: &[(&str, &str)]) -> (TestHome, Proxy) {
    let home = TestHome::new();
    let proxy = Proxy::start(&home, &[], env);
    (home, proxy)
}

/// Asserts Anthropic's error shape `{"type":"error","error":{"type","message"}}`.
fn assert_anthropic_error(body: &Value, kind: &str) {
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The `(event name, data)` pairs of an Anthropic event stream.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|frame| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in frame.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
                }
            }
            assert_eq!(data["type"], name.as_str(), "event name matches data.type");
            (name, data)
        })
        .collect()
}

/// Waits for the access-log line of a successful `route` request that
/// counted `completion_tokens`.
fn assert_logged(home: &TestHome, route: &str, completion_tokens: u64) {
    let route = format!("route=\"{route}\"");
    let tokens = format!("completion_tokens={completion_tokens}");
    crate::support::eventually("the access-log line", || {
        home.read("logs/proxy.log")
            .lines()
            .any(|l| l.contains(&route) && l.contains("status=200") && l.contains(&tokens))
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_on_the_mock_answer_in_anthropic_shape() {
    let (_home, proxy) = mock_proxy(&[]);
    let r = client()
        .post(format!("{}/v1/messages", proxy.url))
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-x", "max_tokens": 64,
            "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello brave world"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-x");
    assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{body}");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "hello brave world"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    // The mock counts words: "be brief" + "hello brave world".
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 5, "output_tokens": 3})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_stream_the_anthropic_event_sequence() {
    let (home, proxy) = mock_proxy(&[]);
    let r = client()
        .post(format!("{}/v1/messages?beta=true", proxy.url))
        .json(
            &json!({"model": "claude-x", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": "one two three"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = events(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0].1["message"]["model"], "claude-x");
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(
        events[7].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"input_tokens": 3, "output_tokens": 3}})
    );
    // Observed like any chat request: one access-log line with the tokens.
    assert_logged(&home, "/v1/messages", 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_errors_are_in_anthropic_shape() {
    let home = TestHome::new();
    home.config("[server]\nmax_body_bytes = 2048\n");
    let proxy = Proxy::start(&home, &[], &[]);
    let url = format!("{}/v1/messages", proxy.url);
    let cases = [
        (b"{not json".to_vec(), 400, "invalid_request_error"),
        (br#"{"model":"m"}"#.to_vec(), 400, "invalid_request_error"),
        (
            br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#.to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}]}"#
                .to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(4096))
                .into_bytes(),
            413,
            "request_too_large",
        ),
    ];
    for (body, status, kind) in cases {
        let r = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        assert_anthropic_error(&r.json().await.unwrap(), kind);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_accept_the_token_as_x_api_key_or_bearer() {
    let (_home, proxy) = mock_proxy(&[("WARDEN_AUTH_TOKEN", "tok-17")]);
    let url = format!("{}/v1/messages", proxy.url);
    let request =
        json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    for (header, value, want) in [
        ("x-api-key", "tok-17", 200),
        ("authorization", "Bearer tok-17", 200),
        ("x-api-key", "wrong", 401),
        ("authorization", "Bearer wrong", 401),
        ("x-other", "tok-17", 401),
    ] {
        let r = client()
            .post(&url)
            .header(header, value)
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{header}: {value}");
        let body: Value = r.json().await.unwrap();
        if want == 401 {
            assert_anthropic_error(&body, "authentication_error");
            assert!(
                !body.to_string().contains("tok-17"),
                "never echoes the token"
            );
        } else {
            assert_eq!(body["content"][0]["text"], "hi");
        }
    }
    // `x-api-key` is for the Anthropic routes only: the OpenAI routes keep Bearer.
    let r = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .header("x-api-key", "tok-17")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn count_tokens_estimates_without_calling_a_provider() {
    let (_home, proxy) = mock_proxy(&[]);
    let r = client()
        .post(format!("{}/v1/messages/count_tokens", proxy.url))
        .json(&json!({"model": "m", "system": "abcd",
            "messages": [{"role": "user", "content": "efghijkl"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // "abcd" + "user" + "efghijkl" = 16 characters, about 4 per token.
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"input_tokens": 4}));
    let r = client()
        .post(format!("{}/v1/messages/count_tokens", proxy.url))
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_anthropic_error(&r.json().await.unwrap(), "invalid_request_error");
}

// ---------------------------------------------------------------------------
// Claude as a provider: a fake Anthropic upstream
// ---------------------------------------------------------------------------

/// What the fake Anthropic upstream answers to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Script {
    /// "Hello from Claude" (JSON, or the full event sequence when asked to stream).
    Text,
    /// A `get_weather` tool call with input `{"city":"Paris"}`.
    ToolUse,
    /// HTTP 529 with an `overloaded_error` body.
    Overloaded,
    /// HTTP 400 with an `invalid_request_error` body.
    Invalid,
    /// A stream: `message_start`, "par", then an in-band `error` event.
    InBandError,
    /// A stream: `message_start`, `ping`, then an `overloaded_error` event before any content.
    OverloadedInBand,
}

const CLAUDE_TEXT: &str = "Hello from Claude";

struct FakeState {
    /// Answers in order; the last one repeats.
    scripts: Vec<Script>,
    /// Every request: (path, selected headers, body).
    requests: std::sync::Mutex<Vec<(String, axum::http::HeaderMap, Value)>>,
}

pub(crate) struct FakeAnthropic {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<FakeState>,
}

fn event_bytes(v: Value) -> axum::body::Bytes {
    axum::body::Bytes::from(format!(
        "event: {}\ndata: {v}\n\n",
        v["type"].as_str().unwrap()
    ))
}

fn message_start() -> Value {
    json!({"type": "message_start", "message": {"id": "msg_fake1", "type": "message",
        "role": "assistant", "model": "claude-test", "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1}}})
}

async fn fake_messages(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<FakeState>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream = body["stream"] == true;
    let script = {
        let mut requests = state.requests.lock().unwrap();
        requests.push((uri.path().to_string(), headers, body));
        let n = requests.len() - 1;
        state.scripts[n.min(state.scripts.len() - 1)]
    };
    let sse = |events: Vec<Value>| {
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(axum::body::Body::from_stream(futures_util::stream::iter(
                events
                    .into_iter()
                    .map(|e| Ok::<_, std::io::Error>(event_bytes(e))),
            )))
            .unwrap()
    };
    let error = |status: u16, kind: &str, message: &str| {
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
        )
            .into_response()
    };
    match (script, stream) {
        (Script::Overloaded, _) => error(529, "overloaded_error", "Overloaded"),
        (Script::Invalid, _) => error(400, "invalid_request_error", "max_tokens: too large"),
        (Script::Text, false) => axum::Json(json!({"id": "msg_fake1", "type": "message",
            "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": CLAUDE_TEXT}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 4}}))
        .into_response(),
        (Script::ToolUse, false) => axum::Json(json!({"id": "msg_fake2", "type": "message",
            "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 9}}))
        .into_response(),
        (Script::Text, true) => sse(vec![
            message_start(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from Claude"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 4}}),
            json!({"type": "message_stop"}),
        ]),
        (Script::ToolUse, true) => sse(vec![
            message_start(),
            json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "ty\": \"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ]),
        (Script::OverloadedInBand, _) => sse(vec![
            message_start(),
            json!({"type": "ping"}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ]),
        (Script::InBandError, _) => sse(vec![
            message_start(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "par"}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ]),
    }
}

impl FakeAnthropic {
    pub(crate) fn start(scripts: &[Script]) -> FakeAnthropic {
        let state = std::sync::Arc::new(FakeState {
            scripts: scripts.to_vec(),
            requests: std::sync::Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(axum::routing::post(fake_messages))
            .with_state(state.clone());
        FakeAnthropic {
            addr: crate::support::prompt_server::serve(app),
            state,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub(crate) fn requests(&self) -> Vec<(String, axum::http::HeaderMap, Value)> {
        self.state.requests.lock().unwrap().clone()
    }

    fn last_body(&self) -> Value {
        self.requests().last().expect("a request arrived").2.clone()
    }
}

const KEY: &str = "sk-ant-test-key";

/// A proxy whose upstream is the fake, `api = "anthropic"`, `attempts` tries.
fn anthropic_proxy(fake: &FakeAnthropic, attempts: u32) -> (TestHome, Proxy) {
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\napi = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nattempts = {attempts}\nidle_timeout = 10\n\n[features]\nenable_responses_api = true\n",
        fake.url()
    ));
    let proxy = Proxy::start(&home, &[], &[("ANTHROPIC_API_KEY", KEY)]);
    (home, proxy)
}

async fn chat_post(proxy: &Proxy, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_through_an_anthropic_provider_sends_messages_with_its_headers() {
    let fake = FakeAnthropic::start(&[Script::Text]);
    let (_home, proxy) = anthropic_proxy(&fake, 1);
    let r = chat_post(
        &proxy,
        &json!({"model": "claude-test", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"}], "stop": "END"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], "claude-test");
    assert_eq!(reply["choices"][0]["message"]["content"], CLAUDE_TEXT);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16})
    );

    let requests = fake.requests();
    let (path, headers, body) = &requests[0];
    assert_eq!(path, "/v1/messages");
    assert_eq!(headers["x-api-key"], KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert!(
        headers.get("authorization").is_none(),
        "no Bearer to Anthropic"
    );
    assert_eq!(
        *body,
        json!({"model": "claude-test", "max_tokens": 4096, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stop_sequences": ["END"]})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_from_an_anthropic_provider_has_one_finish_and_usage() {
    let fake = FakeAnthropic::start(&[Script::Text]);
    let (home, proxy) = anthropic_proxy(&fake, 1);
    let r = chat_post(
        &proxy,
        &json!({"model": "claude-test", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let data = crate::support::sse_data(&r.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, CLAUDE_TEXT);
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16})
    );
    assert_eq!(fake.last_body()["stream"], true);
    assert_eq!(fake.last_body()["max_tokens"], 100);
    crate::support::eventually("the access-log line with the tokens", || {
        home.read("logs/proxy.log")
            .lines()
            .any(|l| l.contains("prompt_tokens=12") && l.contains("completion_tokens=4"))
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_use_round_trip_through_an_anthropic_provider() {
    let fake = FakeAnthropic::start(&[Script::ToolUse, Script::ToolUse, Script::Text]);
    let (_home, proxy) = anthropic_proxy(&fake, 1);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let question = json!({"role": "user", "content": "weather in Paris?"});

    // Non-streaming: the call comes back whole.
    let reply: Value = chat_post(
        &proxy,
        &json!({"model": "claude-test", "messages": [question], "tools": tools, "tool_choice": "required"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Let me check.");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let sent = fake.last_body();
    assert_eq!(
        sent["tools"],
        json!([{"name": "get_weather", "description": "weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));

    // Streaming: the arguments arrive as deltas and add up.
    let r = chat_post(
        &proxy,
        &json!({"model": "claude-test", "stream": true, "messages": [question], "tools": tools}),
    )
    .await;
    let data = crate::support::sse_data(&r.text().await.unwrap());
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // The result goes back: the call becomes a tool_use block, the result a
    // tool_result block in the next user turn.
    let reply: Value = chat_post(
        &proxy,
        &json!({"model": "claude-test", "tools": tools, "messages": [question,
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny, 21 C"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], CLAUDE_TEXT);
    assert_round_trip_reached_claude(&fake);
}

/// The third request of a tool round trip, as the provider got it: the call a
/// `tool_use` block, its result a `tool_result` block in the next user turn.
fn assert_round_trip_reached_claude(fake: &FakeAnthropic) {
    assert_eq!(
        fake.last_body()["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01",
                "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                "content": "sunny, 21 C"}]}
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn images_reach_an_anthropic_provider_as_base64_and_url_sources() {
    let fake = FakeAnthropic::start(&[Script::Text]);
    let (_home, proxy) = anthropic_proxy(&fake, 1);
    let r = chat_post(
        &proxy,
        &json!({"model": "claude-test", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.jpg"}}]}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        fake.last_body()["messages"][0]["content"],
        json!([
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.jpg"}}
        ])
    );
    // A data URL that is not base64 is the client's error, named, and never sent.
    let r = chat_post(
        &proxy,
        &json!({"model": "claude-test", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    crate::support::assert_openai_error(&body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[0].content[0].image_url.url"),
        "{body}"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn overloaded_is_retried_like_a_5xx_and_errors_keep_their_meaning() {
    let hi = json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]});
    // 529 overloaded, then an answer: the retry makes it whole.
    let fake = FakeAnthropic::start(&[Script::Overloaded, Script::Text]);
    let (_home, proxy) = anthropic_proxy(&fake, 2);
    let r = chat_post(&proxy, &hi).await;
    assert_eq!(r.status(), 200);
    assert_eq!(fake.requests().len(), 2);

    // Overloaded on every attempt: a 502 (what routing fails over on).
    let fake = FakeAnthropic::start(&[Script::Overloaded]);
    let (_home, proxy) = anthropic_proxy(&fake, 2);
    let r = chat_post(&proxy, &hi).await;
    assert_eq!(r.status(), 502);
    crate::support::assert_openai_error(&r.json().await.unwrap());
    assert_eq!(fake.requests().len(), 2);

    // invalid_request_error: a 400 with the provider's message, not retried.
    let fake = FakeAnthropic::start(&[Script::Invalid]);
    let (_home, proxy) = anthropic_proxy(&fake, 3);
    let r = chat_post(&proxy, &hi).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    crate::support::assert_openai_error(&body);
    assert_eq!(body["error"]["code"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens: too large"),
        "{body}"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_band_stream_error_ends_the_chat_stream_with_one_error_frame() {
    let fake = FakeAnthropic::start(&[Script::InBandError]);
    let (_home, proxy) = anthropic_proxy(&fake, 1);
    let r = chat_post(
        &proxy,
        &json!({"model": "claude-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let data = crate::support::sse_data(&r.text().await.unwrap());
    assert_eq!(data.len(), 3, "{data:?}");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "par");
    let error: Value = serde_json::from_str(&data[1]).unwrap();
    crate::support::assert_openai_error(&error);
    assert_eq!(error["error"]["code"], "overloaded_error");
    assert_eq!(data[2], "[DONE]");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_in_front_of_an_anthropic_provider() {
    // Anthropic in, Anthropic out, through Chat in between.
    let fake = FakeAnthropic::start(&[Script::ToolUse]);
    let (_home, proxy) = anthropic_proxy(&fake, 1);
    let r = client()
        .post(format!("{}/v1/messages", proxy.url))
        .json(
            &json!({"model": "claude-test", "max_tokens": 200, "stream": true,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "weather?"}]}),
        )
        .send()
        .await
        .unwrap();
    let events = events(&r.text().await.unwrap());
    let start = events
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .unwrap();
    assert_eq!(
        start.1["content_block"],
        json!({"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}})
    );
    let json: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"city": "Paris"})
    );
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(fake.last_body()["max_tokens"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn overloaded_claude_fails_over_to_the_next_provider() {
    // The primary is an Anthropic provider that is overloaded (529, then an
    // in-band overloaded error as a stream's first event); the backup serves.
    let primary = FakeAnthropic::start(&[Script::Overloaded]);
    let stream_primary = FakeAnthropic::start(&[Script::OverloadedInBand]);
    for (what, fake, stream) in [("529", &primary, false), ("in-band", &stream_primary, true)] {
        let home = TestHome::new();
        home.config(&format!(
            "[[providers]]\nname = \"claude\"\nurl = \"{}\"\napi = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nmodels = [\"*\"]\npriority = 0\nattempts = 1\n\n\
             [[providers]]\nname = \"backup\"\nurl = \"mock\"\nmodels = [\"*\"]\npriority = 1\n",
            fake.url()
        ));
        let proxy = Proxy::start(&home, &[], &[("ANTHROPIC_API_KEY", KEY)]);
        let r = chat_post(
            &proxy,
            &json!({"model": "claude-test", "stream": stream,
                "messages": [{"role": "user", "content": "from the backup"}]}),
        )
        .await;
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(r.headers()["x-warden-provider"], "backup", "{what}");
        let text = r.text().await.unwrap();
        assert!(text.contains("backup"), "{what}: {text}");
        assert!(!text.contains("Overloaded"), "{what}: {text}");
        assert_eq!(fake.requests().len(), 1, "{what}");
    }
}

// ---------------------------------------------------------------------------
// The Responses API (what Codex CLI speaks) through an Anthropic provider
// ---------------------------------------------------------------------------

async fn responses_post(proxy: &Proxy, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/responses", proxy.url))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A Responses event stream: its events, each checked to carry the next
/// `sequence_number` from 0.
fn responses_events(body: &str) -> Vec<(String, Value)> {
    let events = events(body);
    for (n, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], n, "{name}: {data}");
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_through_an_anthropic_provider_answer_in_the_responses_shape() {
    let fake = FakeAnthropic::start(&[Script::Text]);
    let (home, proxy) = anthropic_proxy(&fake, 1);

    // Non-streaming: a `response` object; the provider got a Messages request.
    let r = responses_post(
        &proxy,
        &json!({"model": "claude-test", "instructions": "be brief", "max_output_tokens": 300,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "response", "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "claude-test");
    assert!(body["id"].as_str().unwrap().starts_with("resp_"), "{body}");
    assert_eq!(body["output"][0]["type"], "message");
    assert_eq!(body["output"][0]["content"][0]["text"], CLAUDE_TEXT);
    assert_eq!(body["usage"]["input_tokens"], 12);
    assert_eq!(body["usage"]["output_tokens"], 4);
    let (path, headers, sent) = fake.requests().last().unwrap().clone();
    assert_eq!(path, "/v1/messages");
    assert_eq!(headers["x-api-key"], KEY);
    assert_eq!(sent["system"], "be brief");
    assert_eq!(sent["max_tokens"], 300);
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    );

    // Streaming: the Responses event sequence, numbered, ending in
    // response.completed with the whole response and its usage.
    let r = responses_post(
        &proxy,
        &json!({"model": "claude-test", "stream": true, "input": "hi"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = responses_events(&r.text().await.unwrap());
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(events[6].1["text"], CLAUDE_TEXT);
    let done = &events[9].1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["id"], events[0].1["response"]["id"]);
    assert_eq!(done["output"][0]["content"][0]["text"], CLAUDE_TEXT);
    assert_eq!(done["usage"]["input_tokens"], 12);
    assert_eq!(done["usage"]["output_tokens"], 4);
    assert_eq!(fake.last_body()["stream"], true);
    // Observed like any Responses request: the tokens reach the access log.
    assert_logged(&home, "/v1/responses", 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_tool_call_round_trip_through_an_anthropic_provider() {
    let fake = FakeAnthropic::start(&[Script::ToolUse, Script::ToolUse, Script::Text]);
    let (_home, proxy) = anthropic_proxy(&fake, 1);
    let tools = json!([{"type": "function", "name": "get_weather", "description": "weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "web_search"}]);
    let question = json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]});

    // Non-streaming: the words and the call come back as two output items.
    let body: Value = responses_post(
        &proxy,
        &json!({"model": "claude-test", "input": [question], "tools": tools, "tool_choice": "required"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["output"][0]["content"][0]["text"], "Let me check.");
    let call = &body["output"][1];
    assert_eq!(call["type"], "function_call", "{body}");
    assert_eq!(call["call_id"], "toolu_01");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    let sent = fake.last_body();
    assert_eq!(
        sent["tools"],
        json!([{"name": "get_weather", "description": "weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]),
        "the hosted web_search tool is left out"
    );
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));

    // Streaming: the call as an item whose arguments arrive as deltas.
    let r = responses_post(
        &proxy,
        &json!({"model": "claude-test", "stream": true, "input": [question], "tools": tools}),
    )
    .await;
    let events = responses_events(&r.text().await.unwrap());
    let added = events
        .iter()
        .find(|(n, d)| n == "response.output_item.added" && d["item"]["type"] == "function_call")
        .expect("the call's item");
    assert_eq!(added.1["item"]["call_id"], "toolu_01");
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&deltas).unwrap(),
        json!({"city": "Paris"})
    );
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(done["response"]["output"][0]["type"], "function_call");
    assert_eq!(done["response"]["output"][0]["arguments"], deltas);

    // The output goes back as Codex sends it: the call becomes a tool_use
    // block, its output a tool_result block in the next user turn.
    let body: Value = responses_post(
        &proxy,
        &json!({"model": "claude-test", "tools": tools, "input": [question,
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "toolu_01", "name": "get_weather", "arguments": deltas},
            {"type": "function_call_output", "call_id": "toolu_01", "output": "sunny, 21 C"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["output"][0]["content"][0]["text"], CLAUDE_TEXT);
    assert_round_trip_reached_claude(&fake);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_band_error_ends_a_responses_stream_with_one_response_failed() {
    let fake = FakeAnthropic::start(&[Script::InBandError]);
    let (_home, proxy) = anthropic_proxy(&fake, 1);
    let r = responses_post(
        &proxy,
        &json!({"model": "claude-test", "stream": true, "input": "hi"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let events = responses_events(&r.text().await.unwrap());
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.failed"
        ]
    );
    assert_eq!(events[4].1["delta"], "par");
    let failed = &events[5].1["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "overloaded_error");
    assert_eq!(failed["error"]["message"], "Overloaded");

    // A Responses request the translation cannot carry is a 400 naming the field.
    let r = responses_post(
        &proxy,
        &json!({"model": "claude-test", "input": "hi", "previous_response_id": "resp_1"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    crate::support::assert_openai_error(&body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("previous_response_id: "),
        "{body}"
    );
    assert_eq!(fake.requests().len(), 1, "nothing reached the provider");
}

#[tokio::test(flavor = "multi_thread")]
async fn overloaded_claude_fails_over_for_responses_too() {
    // An in-band overloaded error before any content is the Responses stream's
    // first event (response.failed): routing moves on to the backup.
    let fake = FakeAnthropic::start(&[Script::OverloadedInBand]);
    let home = TestHome::new();
    home.config(&format!(
        "[[providers]]\nname = \"claude\"\nurl = \"{}\"\napi = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nmodels = [\"*\"]\npriority = 0\nattempts = 1\n\n\
         [[providers]]\nname = \"backup\"\nurl = \"mock\"\nmodels = [\"*\"]\npriority = 1\n",
        fake.url()
    ));
    let proxy = Proxy::start(&home, &[], &[("ANTHROPIC_API_KEY", KEY)]);
    let r = responses_post(
        &proxy,
        &json!({"model": "claude-test", "stream": true, "input": "from the backup"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-warden-provider"], "backup");
    let text = r.text().await.unwrap();
    assert!(text.contains("from the backup"), "{text}");
    assert!(!text.contains("Overloaded"), "{text}");
    assert_eq!(fake.requests().len(), 1);
}
