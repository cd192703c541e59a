//! The Anthropic Messages API both ways (SPEC §12): `POST /v1/messages` for
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
    crate::support::eventually("the access-log line", || {
        home.read("logs/proxy.log").lines().any(|l| {
            l.contains("route=\"/v1/messages\"")
                && l.contains("status=200")
                && l.contains("completion_tokens=3")
        })
    });
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
