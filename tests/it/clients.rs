//! What every OpenAI client needs from the default setup: the mock
//! serves the Responses API offline with the full event sequence, no network
//! at all on the mock, `GET /v1/models/{id}`, `x-request-id`, forwarded client
//! headers, request validation and CORS.

use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::prompt_server::{PromptMode, PromptServer};
use crate::support::responses_upstream::{metrics_text, post};
use crate::support::{TestHome, assert_openai_error, client};

/// The `event:` name and JSON of every SSE frame.
fn events_of(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .map(|frame| {
            let mut name = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            let json: Value =
                serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {frame}"));
            (name, json)
        })
        .collect()
}

/// A proxy on the default (mock) upstream whose prompt sources point at a
/// prompt server, so any fetch would be seen.
fn mock_proxy(env: &[(&str, &str)]) -> (PromptServer, TestHome, InProcess) {
    let prompts = PromptServer::start(PromptMode::Up);
    let home = TestHome::new();
    home.config(&format!(
        "[[prompts.source]]\nname = \"base_instructions\"\nurl = \"{}\"\n\
         [[prompts.source]]\nname = \"gpt5_codex_instructions\"\nurl = \"{}\"\n",
        prompts.url("base_instructions"),
        prompts.url("gpt5_codex_instructions")
    ));
    let proxy = InProcess::start(&home, env);
    (prompts, home, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mock_answers_responses_offline_and_fetches_no_prompt() {
    let (prompts, _home, proxy) = mock_proxy(&[]);
    let r = post(
        &proxy,
        "/v1/responses",
        &json!({"model": "gpt-5", "input": "hello brave world"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["object"], "response");
    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["model"], "gpt-5");
    assert_eq!(reply["output"][0]["type"], "message");
    assert_eq!(reply["output"][0]["role"], "assistant");
    assert_eq!(
        reply["output"][0]["content"][0],
        json!({"type": "output_text", "text": "hello brave world", "annotations": [], "logprobs": []})
    );
    assert_eq!(reply["usage"]["input_tokens"], 3);
    assert_eq!(reply["usage"]["output_tokens"], 3);
    assert_eq!(reply["usage"]["total_tokens"], 6);

    // Input as message items.
    let reply: Value = post(
        &proxy,
        "/v1/responses",
        &json!({"model": "gpt-5", "input": [{"role": "developer", "content": "rules"},
                          {"type": "message", "role": "user",
                           "content": [{"type": "input_text", "text": "items work"}]}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(reply["model"], "gpt-5");
    assert_eq!(reply["output"][0]["content"][0]["text"], "items work");

    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("warden_http_requests_total{route=\"/v1/responses\",status=\"200\"} 2"),
        "{metrics}"
    );
    assert_eq!(prompts.hits(), 0, "the mock must not fetch prompts");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mock_streams_the_full_responses_event_sequence() {
    let (prompts, _home, proxy) = mock_proxy(&[]);
    let r = post(
        &proxy,
        "/v1/responses",
        &json!({"model": "gpt-5", "input": "one two three", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = events_of(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(&data["type"], name, "type matches the event name");
        assert_eq!(data["sequence_number"], i, "sequence_number of {name}");
    }
    let created = &events[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(
        created["output"],
        json!([]),
        "an output array from the start"
    );
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "one two three");
    let item_id = &events[2].1["item"]["id"];
    for (name, data) in &events[3..9] {
        assert_eq!(&data["item_id"], item_id, "{name}");
    }
    assert_eq!(&events[9].1["item"]["id"], item_id);
    let completed = &events[10].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["id"], created["id"]);
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        "one two three"
    );
    assert_eq!(completed["usage"]["output_tokens"], 3);
    assert_eq!(prompts.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mock_calls_a_tool_when_asked_and_reads_its_result() {
    let (_prompts, _home, proxy) = mock_proxy(&[]);
    let tools = json!([{"type": "function", "name": "exec_command",
                        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}]);
    let ask = json!({"model": "gpt-5", "tools": tools, "stream": true,
                     "input": "call exec_command {\"cmd\": \"echo hi\"}"});
    let events = events_of(
        &post(&proxy, "/v1/responses", &ask)
            .await
            .text()
            .await
            .unwrap(),
    );
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let item = &events[5].1["item"];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["name"], "exec_command");
    assert_eq!(item["arguments"], r#"{"cmd":"echo hi"}"#);
    let call_id = item["call_id"].as_str().unwrap().to_string();
    assert_eq!(events[6].1["response"]["output"][0], *item);

    // The client runs it and sends the output back: the mock reports it.
    let back = json!({"model": "gpt-5", "tools": tools, "input": [
        {"role": "user", "content": "call exec_command {\"cmd\": \"echo hi\"}"},
        item,
        {"type": "function_call_output", "call_id": call_id, "output": "hi"}]});
    let reply: Value = post(&proxy, "/v1/responses", &back)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply["output"][0]["content"][0]["text"],
        "exec_command returned: hi"
    );

    // Without tools (or with tool_choice "none") the same text is just echoed.
    let mut plain = ask.clone();
    plain["tool_choice"] = json!("none");
    plain["stream"] = json!(false);
    let reply: Value = post(&proxy, "/v1/responses", &plain)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["output"][0]["type"], "message");
}

#[tokio::test(flavor = "multi_thread")]
async fn turning_the_responses_api_off_is_a_404_in_openai_shape_on_the_mock() {
    let (_prompts, _home, proxy) = mock_proxy(&[("WARDEN_ENABLE_RESPONSES_API", "false")]);
    let r = client()
        .post(format!("{}/v1/responses", proxy.url))
        .json(&json!({"model": "gpt-5", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_openai_error(&r.json().await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_has_a_request_id_and_the_clients_own_is_kept() {
    let home = TestHome::new();
    home.write(".env", "WARDEN_AUTH_TOKEN=tok\n");
    let proxy = InProcess::start(&home, &[]);
    let c = client();
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
    };
    // Generated: on a 401, a 404, /health and a 200.
    let mut seen = Vec::new();
    for (method, path, auth) in [
        ("POST", "/v1/chat/completions", false),
        ("GET", "/v1/nothing", true),
        ("GET", "/health", false),
        ("GET", "/v1/models", true),
    ] {
        let mut rb = c.request(method.parse().unwrap(), format!("{}{path}", proxy.url));
        if auth {
            rb = rb.bearer_auth("tok");
        }
        let r = rb.send().await.unwrap();
        let id = id_of(&r).unwrap_or_else(|| panic!("no x-request-id on {path}"));
        assert!(id.starts_with("req_") && id.len() == 36, "{id}");
        seen.push(id);
    }
    seen.dedup();
    assert_eq!(seen.len(), 4, "one id per request: {seen:?}");
    // The client's own: kept; an unusable one is replaced.
    let r = c
        .post(format!("{}/v1/chat/completions", proxy.url))
        .bearer_auth("tok")
        .header("x-request-id", "my-trace-42")
        .json(&json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(id_of(&r).as_deref(), Some("my-trace-42"));
    let r = c
        .get(format!("{}/v1/models", proxy.url))
        .bearer_auth("tok")
        .header("x-request-id", "x".repeat(300))
        .send()
        .await
        .unwrap();
    assert!(id_of(&r).unwrap().starts_with("req_"));
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_headers_reach_the_upstream_and_secrets_do_not() {
    use crate::support::upstream::{Behaviour, Upstream};
    let upstream = Upstream::start(Behaviour::Fast);
    let home = TestHome::new();
    home.config(&format!("[upstream]\nurl = \"{}\"\n", upstream.url()));
    home.write(".env", "OPENAI_API_KEY=sk-upstream\n");
    let proxy = InProcess::start(&home, &[]);
    let sent = [
        ("session-id", "s-1"),
        ("session_id", "s-1"),
        ("thread-id", "t-1"),
        ("originator", "codex_exec"),
        ("x-codex-turn-metadata", "{\"turn_id\":\"1\"}"),
        ("x-codex-beta-features", "remote_compaction_v2"),
        ("x-client-request-id", "c-1"),
        ("openai-beta", "responses=v1"),
        ("x-request-id", "r-1"),
    ];
    let mut rb = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .bearer_auth("client-secret")
        .header("cookie", "session=secret")
        .header("x-api-key", "another-secret")
        .header("accept-encoding", "zstd")
        .json(&json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}));
    for (name, value) in sent {
        rb = rb.header(name, value);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got = upstream
        .state
        .headers
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    for (name, value) in sent {
        assert_eq!(
            got.get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{name}"
        );
    }
    assert_eq!(
        got["authorization"], "Bearer sk-upstream",
        "the gateway's own key"
    );
    for name in ["cookie", "x-api-key", "accept-encoding"] {
        assert!(
            got.get(name).is_none(),
            "{name} must not be forwarded: {got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_is_retrieved_by_id_and_an_unknown_one_is_model_not_found() {
    let home = TestHome::new();
    home.config("[upstream]\nmodels = [\"gpt-5\", \"team/coder\"]\n");
    let proxy = InProcess::start(&home, &[]);
    for id in ["gpt-5", "team/coder"] {
        let r = client()
            .get(format!("{}/v1/models/{id}", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id}");
        let model: Value = r.json().await.unwrap();
        assert_eq!(model["id"], id);
        assert_eq!(model["object"], "model");
        assert!(
            model["created"].is_u64() && model["owned_by"].is_string(),
            "{model}"
        );
    }
    let r = client()
        .get(format!("{}/v1/models/nope", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_openai_error(&body);
    assert_eq!(body["error"]["code"], "model_not_found");
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("warden_http_requests_total{route=\"/v1/models/{id}\",status=\"404\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_is_off_by_default_and_answers_preflights_when_origins_are_set() {
    let preflight = |url: String, origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    // Off: OPTIONS is 405 and answers carry no CORS header.
    let home = TestHome::new();
    let proxy = InProcess::start(&home, &[]);
    let url = format!("{}/v1/chat/completions", proxy.url);
    let r = preflight(url.clone(), "http://app.test").await.unwrap();
    assert_eq!(r.status(), 405);
    let r = client()
        .get(format!("{}/v1/models", proxy.url))
        .header("origin", "http://app.test")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    drop(proxy);

    // On, with a bearer token configured: the preflight needs none.
    let home = TestHome::new();
    home.config("[server]\ncors_origins = [\"http://app.test\"]\n");
    home.write(".env", "WARDEN_AUTH_TOKEN=tok\n");
    let proxy = InProcess::start(&home, &[]);
    let url = format!("{}/v1/chat/completions", proxy.url);
    let r = preflight(url.clone(), "http://app.test").await.unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "http://app.test");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert!(h.get("x-request-id").is_some());
    // Another origin: refused.
    let r = preflight(url.clone(), "http://evil.test").await.unwrap();
    assert_eq!(r.status(), 403);
    assert_openai_error(&r.json().await.unwrap());
    // The actual request: allowed origin, its headers readable by the page.
    let r = client()
        .post(&url)
        .bearer_auth("tok")
        .header("origin", "http://app.test")
        .json(&json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.test"
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
}

#[test]
fn a_bad_cors_origin_is_a_config_error_naming_the_key() {
    let home = TestHome::new();
    home.config("[server]\ncors_origins = [\"app.test/path\"]\n");
    let out = crate::support::run("proxy", &home, &["prompts", "status"]);
    let said = crate::support::text(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("server.cors_origins"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_openais_status_and_one_code_per_kind_of_mistake() {
    let home = TestHome::new();
    let proxy = InProcess::start(&home, &[]);
    let send = |path: &'static str, body: String| {
        let url = format!("{}{path}", proxy.url);
        async move {
            let r = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_openai_error(&body);
            (
                status,
                body["error"]["code"].clone(),
                body["error"]["param"].clone(),
            )
        }
    };
    let chat = "/v1/chat/completions";
    let m = r#"[{"role":"user","content":"hi"}]"#;
    for (body, code, param) in [
        ("{oops".to_string(), "invalid_json", Value::Null),
        ("[1, 2]".to_string(), "invalid_type", Value::Null),
        (
            r#"{"model":"gpt-5"}"#.to_string(),
            "missing_required_parameter",
            json!("messages"),
        ),
        (
            r#"{"model":"gpt-5","messages":null}"#.to_string(),
            "invalid_type",
            json!("messages"),
        ),
        (
            r#"{"model":"gpt-5","messages":{}}"#.to_string(),
            "invalid_type",
            json!("messages"),
        ),
        (
            r#"{"model":"gpt-5","messages":[]}"#.to_string(),
            "empty_array",
            json!("messages"),
        ),
        (
            format!(r#"{{"messages":{m}}}"#),
            "missing_required_parameter",
            json!("model"),
        ),
        (
            format!(r#"{{"model":7,"messages":{m}}}"#),
            "invalid_type",
            json!("model"),
        ),
        (
            format!(r#"{{"model":"gpt-5","messages":{m},"stream":"yes"}}"#),
            "invalid_type",
            json!("stream"),
        ),
    ] {
        assert_eq!(
            send(chat, body.clone()).await,
            (400, json!(code), param),
            "{body}"
        );
    }
    let responses = "/v1/responses";
    for (body, code, param) in [
        ("{oops", "invalid_json", Value::Null),
        (
            r#"{"input":"hi"}"#,
            "missing_required_parameter",
            json!("model"),
        ),
        (
            r#"{"model":[],"input":"hi"}"#,
            "invalid_type",
            json!("model"),
        ),
        (
            r#"{"model":"gpt-5","input":5}"#,
            "invalid_type",
            json!("input"),
        ),
        (
            r#"{"model":"gpt-5","input":"hi","stream":1}"#,
            "invalid_type",
            json!("stream"),
        ),
    ] {
        assert_eq!(
            send(responses, body.to_string()).await,
            (400, json!(code), param),
            "{body}"
        );
    }
    drop(proxy);

    // With server.default_model, a request without a model gets it.
    let home = TestHome::new();
    home.config("[server]\ndefault_model = \"gpt-5-codex\"\n");
    let proxy = InProcess::start(&home, &[]);
    let reply: Value = post(
        &proxy,
        chat,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(reply["model"], "gpt-5-codex", "{reply}");
    let reply: Value = post(&proxy, responses, &json!({"input": "hi"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["model"], "gpt-5-codex", "{reply}");
}
