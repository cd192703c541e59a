//! `proxy`: the OpenAI-compatible API, the failure contract, streaming relay,
//! cancellation, graceful drain, logs and metrics.

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::{get_json, metrics_text, model_ids, post_chat, read_to_end, read_until};
use crate::support::upstream::{Behaviour, COMPLETION, Upstream, closed_port_url};
use crate::support::{Proxy, TestHome, assert_openai_error, client, eventually, sse_data};

fn chat_body(text: &str) -> Value {
    json!({"model": "gpt-5", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]})
}

/// A home whose upstream is `url`, with extra `[upstream]` lines.
fn home_with_upstream(url: &str, extra: &str) -> TestHome {
    let home = TestHome::new();
    home.config(&format!("[upstream]\nurl = \"{url}\"\n{extra}\n"));
    home
}

#[tokio::test(flavor = "multi_thread")]
async fn mock_upstream_lists_models_and_echoes() {
    let home = TestHome::new();
    let proxy = InProcess::start(&home, &[]);
    let models = get_json(&format!("{}/v1/models", proxy.url)).await;
    assert_eq!(models["object"], "list");
    assert_eq!(model_ids(&proxy).await, ["gpt-5", "gpt-5-codex"]);

    let reply: Value = post_chat(&proxy, &chat_body("hello brave world"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(
        reply["choices"][0]["message"]["content"],
        "hello brave world"
    );
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert_eq!(reply["usage"]["completion_tokens"], 3);
    assert_eq!(reply["usage"]["prompt_tokens"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn mock_streams_word_by_word_with_usage_only_when_asked() {
    let home = TestHome::new();
    let proxy = InProcess::start(&home, &[]);
    let mut body = chat_body("one two three");
    body["stream"] = json!(true);
    let response = post_chat(&proxy, &body).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"] == "stop")
            .count(),
        1
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage unless include_usage"
    );

    body["stream_options"] = json!({"include_usage": true});
    let data = sse_data(&post_chat(&proxy, &body).await.text().await.unwrap());
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_contract_for_bad_requests() {
    let home = TestHome::new();
    home.config("[server]\nmax_body_bytes = 2000\n");
    home.write(".env", "WARDEN_AUTH_TOKEN=let-me-in\n");
    let proxy = InProcess::start(&home, &[]);
    let url = format!("{}/v1/chat/completions", proxy.url);
    let c = client();
    let authed = |rb: reqwest::RequestBuilder| rb.bearer_auth("let-me-in");

    // 401: missing and wrong bearer.
    let r = c.post(&url).json(&chat_body("hi")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_openai_error(&r.json().await.unwrap());
    let r = c
        .post(&url)
        .bearer_auth("nope")
        .json(&chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // 400: malformed JSON, missing messages.
    let r = authed(c.post(&url))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_openai_error(&r.json().await.unwrap());
    let r = authed(c.post(&url))
        .json(&json!({"model": "gpt-5"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["param"], "messages");
    // 413: over max_body_bytes.
    let r = authed(c.post(&url))
        .json(&chat_body(&"x".repeat(5000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_openai_error(&r.json().await.unwrap());
    // 404: unknown route, in OpenAI's shape.
    let r = authed(c.post(format!("{}/v1/nothing", proxy.url)))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_openai_error(&r.json().await.unwrap());
    // And the right token works; health needs none.
    assert_eq!(
        authed(c.post(&url))
            .json(&chat_body("hi"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/health", proxy.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_concurrency_limit_is_429_with_retry_after_and_the_slot_comes_back() {
    let upstream = Upstream::start(Behaviour::Gated);
    let home = home_with_upstream(&upstream.url(), "");
    home.config(&format!(
        "[server]\nmax_concurrent = 1\n[upstream]\nurl = \"{}\"\n",
        upstream.url()
    ));
    let proxy = InProcess::start(&home, &[]);
    let first = tokio::spawn({
        let url = proxy.url.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat_body("a"))
                .send()
                .await
                .unwrap()
        }
    });
    upstream.wait_arrival().await;
    let r = post_chat(&proxy, &chat_body("b")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_openai_error(&r.json().await.unwrap());
    upstream.state.release();
    assert_eq!(first.await.unwrap().status(), 200);
    // The slot is free again.
    let third = tokio::spawn({
        let url = proxy.url.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat_body("c"))
                .send()
                .await
                .unwrap()
        }
    });
    upstream.wait_arrival().await;
    upstream.state.release();
    assert_eq!(third.await.unwrap().status(), 200);
    let health: Value = client()
        .get(format!("{}/health", proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["requests"]["rejected"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_502_after_all_attempts() {
    let home = home_with_upstream(&closed_port_url(), "attempts = 2");
    let proxy = InProcess::start(&home, &[]);
    let r = post_chat(&proxy, &chat_body("hi")).await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_openai_error(&body);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot reach upstream") && message.contains("2 attempts"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_5xx_is_retried_then_502() {
    let upstream = Upstream::start(Behaviour::Always(503));
    let home = home_with_upstream(&upstream.url(), "attempts = 3");
    let proxy = InProcess::start(&home, &[]);
    let r = post_chat(&proxy, &chat_body("hi")).await;
    assert_eq!(r.status(), 502);
    assert_openai_error(&r.json().await.unwrap());
    assert_eq!(upstream.state.hits(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_then_recovering_upstream_succeeds_through_retries() {
    let upstream = Upstream::start(Behaviour::FailThenRecover { n: 2, status: 503 });
    let home = home_with_upstream(&upstream.url(), "attempts = 3");
    let proxy = InProcess::start(&home, &[]);
    let r = post_chat(&proxy, &chat_body("hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        COMPLETION,
        "the upstream body is relayed unchanged"
    );
    assert_eq!(upstream.state.hits(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_4xx_is_passed_through_without_retry() {
    let upstream = Upstream::start(Behaviour::Always(400));
    let home = home_with_upstream(&upstream.url(), "attempts = 3");
    let proxy = InProcess::start(&home, &[]);
    let r = post_chat(&proxy, &chat_body("hi")).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], "upstream says no");
    assert_eq!(upstream.state.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_upstream_is_504() {
    let upstream = Upstream::start(Behaviour::Hang);
    let home = home_with_upstream(&upstream.url(), "first_byte_timeout = 1\nattempts = 3");
    let proxy = InProcess::start(&home, &[]);
    let r = post_chat(&proxy, &chat_body("hi")).await;
    assert_eq!(r.status(), 504);
    assert_openai_error(&r.json().await.unwrap());
    assert_eq!(
        upstream.state.hits(),
        1,
        "a timed-out request is not retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bytes_pass_through_untouched_with_the_upstream_key() {
    let upstream = Upstream::start(Behaviour::Fast);
    let home = home_with_upstream(&upstream.url(), "api_key_env = \"MY_UPSTREAM_KEY\"");
    let proxy = InProcess::start(&home, &[("MY_UPSTREAM_KEY", "sk-upstream-secret")]);
    let raw = r#"{"model":"gpt-5","messages":[{"role":"user","content":"hi"},{"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},{"role":"tool","tool_call_id":"call_1","content":"42"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"x_custom_field":{"keep":[1,2,3]}}"#;
    let r = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.state.bodies.lock().unwrap()[0], raw.as_bytes());
    let headers = upstream.state.headers.lock().unwrap()[0].clone();
    assert_eq!(headers["authorization"], "Bearer sk-upstream-secret");
    // The upstream's own model list is served.
    assert_eq!(model_ids(&proxy).await, ["up-model"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_sse_is_relayed_chunk_by_chunk() {
    let upstream = Upstream::start(Behaviour::GatedStream);
    let home = home_with_upstream(&upstream.url(), "");
    let proxy = InProcess::start(&home, &[]);
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let mut response = post_chat(&proxy, &body).await;
    assert_eq!(response.status(), 200);
    // The first chunk reaches the client while the upstream is still holding the
    // rest back: nothing buffers the stream. (If it did, this would wait for ever
    // and the PATIENCE bound would fail the test.)
    let first = tokio::time::timeout(crate::support::PATIENCE, response.chunk())
        .await
        .expect("first chunk arrives before the upstream finishes")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    upstream.state.release();
    let mut rest = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        rest.contains("second") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
    // Tokens from the relayed usage chunk are counted.
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains(r#"warden_model_tokens_total{model="gpt-5",kind="completion"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_dropping_mid_stream_ends_the_client_stream_with_an_error() {
    let upstream = Upstream::start(Behaviour::DropMidStream);
    let home = home_with_upstream(&upstream.url(), "");
    let proxy = InProcess::start(&home, &[]);
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let mut response = post_chat(&proxy, &body).await;
    let text = read_until(&mut response, "partial").await;
    upstream.state.release();
    let text = read_to_end(&mut response, text).await;
    let data = sse_data(&text);
    assert!(
        data.first().is_some_and(|d| d.contains("partial")),
        "{text:?}"
    );
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_openai_error(&last);
    assert_eq!(
        upstream.state.hits(),
        1,
        "no retry once bytes reached the client"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_cancels_the_upstream_call_and_frees_the_slot() {
    let upstream = Upstream::start(Behaviour::StallStream);
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nmax_concurrent = 1\n[upstream]\nurl = \"{}\"\n",
        upstream.url()
    ));
    let proxy = InProcess::start(&home, &[]);
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let mut response = post_chat(&proxy, &body).await;
    response.chunk().await.unwrap().unwrap();
    upstream.wait_arrival().await;
    drop(response); // the client goes away mid-stream
    upstream.wait_stream_dropped().await;
    // The slot was released: a new request is admitted (not 429).
    let health_url = format!("{}/health", proxy.url);
    let mut in_flight = 1;
    for _ in 0..500 {
        let h: Value = client()
            .get(&health_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        in_flight = h["requests"]["in_flight"].as_u64().unwrap();
        if in_flight == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight, 0);
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains(r#"route="/v1/chat/completions",status="499""#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_request_completes_across_sigterm() {
    let upstream = Upstream::start(Behaviour::Gated);
    let home = home_with_upstream(&upstream.url(), "");
    let mut proxy = Proxy::start(&home, &[], &[]);
    let pending = tokio::spawn({
        let url = proxy.url.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat_body("a"))
                .send()
                .await
                .unwrap()
        }
    });
    upstream.wait_arrival().await;
    proxy.signal(Signal::SIGTERM);
    // Readiness flips off, and new connections are refused, while the request is in flight.
    let log = home.file("logs/proxy.log");
    eventually("drain logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("draining")
    });
    upstream.state.release();
    let response = pending.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), COMPLETION);
    let status = proxy.wait();
    assert!(
        status.success(),
        "exit 0 after the drain, not {status}; stderr:\n{}",
        proxy.stderr_text()
    );
    let log = home.read("logs/proxy.log");
    assert!(log.contains("warden proxy started"), "{log}");
    assert!(log.contains("warden proxy stopped"), "{log}");
}

#[test]
fn bad_config_exits_nonzero_naming_file_key_and_line() {
    let home = TestHome::new();
    home.config("[server]\nport = 8000\nmax_concurent = 5\n");
    let out = crate::support::bin("proxy")
        .arg("--home")
        .arg(home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warden.toml:3:"), "{err}");
    assert!(err.contains("max_concurent"), "{err}");

    home.config("[upstream]\nattempts = \"three\"\n");
    let out = crate::support::bin("proxy")
        .arg("--home")
        .arg(home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("upstream.attempts") && err.contains(":2:"),
        "{err}"
    );
}

#[test]
fn a_bad_inherited_descriptor_is_a_clear_error_not_a_panic() {
    let home = TestHome::new();
    // -1 once made `BorrowedFd::borrow_raw` panic (exit 101); 987 is not open here.
    for value in ["-1", "987", "three"] {
        let out = crate::support::bin("proxy")
            .arg("--home")
            .arg(home.path())
            .env("WARDEN_LISTEN_FD", value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "WARDEN_LISTEN_FD={value}: {err}"
        );
        assert!(!err.contains("panicked"), "WARDEN_LISTEN_FD={value}: {err}");
        assert!(
            err.contains(value) && err.contains("descriptor"),
            "WARDEN_LISTEN_FD={value}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_report_and_never_show_secrets() {
    let upstream = Upstream::start(Behaviour::FailThenRecover { n: 1, status: 500 });
    let home = home_with_upstream(&upstream.url(), "attempts = 1");
    home.write(
        ".env",
        "OPENAI_API_KEY=sk-very-secret-key\nWARDEN_AUTH_TOKEN=tok-very-secret\n",
    );
    let proxy = Proxy::start(&home, &[], &[]);
    let c = client();
    let url = format!("{}/v1/chat/completions", proxy.url);
    let r = c
        .post(&url)
        .bearer_auth("tok-very-secret")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let r = c
        .post(&url)
        .bearer_auth("tok-very-secret")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = c
        .post(&url)
        .bearer_auth("wrong")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();

    let health: Value = c
        .get(format!("{}/health", proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "pass");
    assert_eq!(health["version"], warden::VERSION);
    assert_eq!(health["pid"], proxy.pid());
    assert_eq!(health["upstream"]["url"], upstream.url());
    assert_eq!(health["requests"]["success"], 1);
    assert_eq!(health["requests"]["error"], 2);
    assert!(health["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    for field in ["uptime_secs", "timestamp", "prompts"] {
        assert!(health.get(field).is_some(), "{field} in {health}");
    }
    let live: Value = c
        .get(format!("{}/health/live", proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live, json!({"status": "pass"}));
    assert_eq!(
        c.get(format!("{}/health/ready", proxy.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let text = c
        .get(format!("{}/metrics", proxy.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "warden_http_requests_total",
        "warden_http_request_duration_seconds_bucket",
        "warden_upstream_request_duration_seconds_bucket",
        "warden_gateway_overhead_seconds_bucket",
        "warden_http_requests_in_flight",
        "warden_http_requests_rejected_total{reason=\"auth\"} 1",
        "warden_model_requests_total{model=\"gpt-5\"}",
        "warden_uptime_seconds",
        "warden_process_resident_memory_bytes",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    let as_json: Value = c
        .get(format!("{}/metrics?format=json", proxy.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let samples = as_json["metrics"]["warden_http_requests_rejected"]["samples"]
        .as_array()
        .unwrap();
    let auth = samples
        .iter()
        .find(|s| s["labels"]["reason"] == "auth")
        .unwrap();
    assert_eq!(auth["value"], json!(1.0));

    // The log is written in batches off the request path: wait for the line.
    eventually("the 502 to be logged", || {
        home.read("logs/proxy.log").contains("status=502")
    });
    let log = home.read("logs/proxy.log");
    for secret in ["sk-very-secret-key", "tok-very-secret"] {
        assert!(!log.contains(secret), "secret in log");
        assert!(!health.to_string().contains(secret), "secret in /health");
        assert!(!text.contains(secret), "secret in /metrics");
    }
}
