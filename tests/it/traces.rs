//! Traces (docs/contract.md §15) against a real OTLP/HTTP collector started by each test
//! (`support::otlp`): the span tree and its attributes for every provider kind,
//! route and ingress, W3C trace context in and out, and what a collector that
//! is down or slow costs (nothing, but counted drops). Each test that proves a
//! peer gateway's bug absent says which in its name.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::{Served, metrics_text, until};
use crate::support::nats::NatsServer;
use crate::support::otlp::{
    CLIENT, CONSUMER, Collector, Mode, SERVER, STATUS_ERROR, Span, parse_traceparent,
};
use crate::support::upstream::{Behaviour, Upstream};
use crate::support::{Proxy, TestHome, client};

/// A fresh (trace id, span id) pair, as a caller would make.
fn caller_ids() -> (String, String) {
    (
        format!("{:032x}", fastrand::u128(1..)),
        format!("{:016x}", fastrand::u64(1..)),
    )
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-5", "stream": stream,
        "messages": [{"role": "user", "content": "secret-prompt-text-7f3a"}]})
}

/// A gateway with `toml` plus a `[telemetry]` sending to `collector`.
fn traced(toml: &str, collector: &Collector, telemetry: &str) -> (TestHome, InProcess) {
    let home = TestHome::new();
    home.config(&format!(
        "{toml}\n[telemetry]\notlp_endpoint = \"{}\"\n{telemetry}\n",
        collector.endpoint()
    ));
    let gw = InProcess::start(&home, &[]);
    (home, gw)
}

fn upstream_toml(url: &str) -> String {
    format!("[upstream]\nurl = \"{url}\"\nattempts = 1\n")
}

/// POSTs `body` to `path` with the caller's `traceparent`, when given.
async fn post_traced(
    server: &impl Served,
    path: &str,
    body: &Value,
    traceparent: Option<&str>,
) -> reqwest::Response {
    let mut request = client().post(format!("{}{path}", server.url())).json(body);
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    request.send().await.unwrap()
}

fn one(spans: &[Span], kind: i32) -> Span {
    let of_kind: Vec<&Span> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(of_kind.len(), 1, "one span of kind {kind}: {spans:#?}");
    of_kind[0].clone()
}

/// The `traceparent` the `i`-th request to `upstream` carried.
fn sent_traceparent(upstream: &Upstream, i: usize) -> (String, String) {
    let headers = upstream.state.headers.lock().unwrap()[i].clone();
    let value = headers
        .get("traceparent")
        .expect("the provider got a traceparent")
        .to_str()
        .unwrap()
        .to_string();
    parse_traceparent(&value)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_gets_the_attempt_spans_context_not_the_callers() {
    // LiteLLM #39067: the provider received the caller's traceparent, so the
    // provider's spans were siblings of the gateway's instead of children.
    // agentgateway #1164: the caller's context was only a link, so the
    // gateway's spans were a separate root.
    let upstream = Upstream::start(Behaviour::Fast);
    let collector = Collector::start(Mode::Accept);
    let (_home, gw) = traced(&upstream_toml(&upstream.url()), &collector, "");
    let (trace, caller) = caller_ids();
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .header("tracestate", "vendor=abc")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let spans = collector.trace(&trace, 2).await;
    let server = one(&spans, SERVER);
    let attempt = one(&spans, CLIENT);
    assert_eq!(
        server.parent_span_id, caller,
        "the caller's trace is continued"
    );
    assert!(server.links.is_empty(), "continued, not linked");
    assert_eq!(attempt.parent_span_id, server.span_id);
    let (sent_trace, sent_parent) = sent_traceparent(&upstream, 0);
    assert_eq!(sent_trace, trace);
    assert_eq!(
        sent_parent, attempt.span_id,
        "the provider's parent is the attempt"
    );
    assert_ne!(sent_parent, caller);
    let headers = upstream.state.headers.lock().unwrap()[0].clone();
    assert_eq!(
        headers["tracestate"], "vendor=abc",
        "the caller's tracestate goes on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_sample_ratio_exports_nothing_but_still_propagates_unsampled() {
    let upstream = Upstream::start(Behaviour::Fast);
    let collector = Collector::start(Mode::Accept);
    let (_home, gw) = traced(
        &upstream_toml(&upstream.url()),
        &collector,
        "sample_ratio = 0.0",
    );
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
    assert_eq!(response.status(), 200);
    let headers = upstream.state.headers.lock().unwrap()[0].clone();
    let unsampled_tp = headers["traceparent"].to_str().unwrap().to_string();
    assert!(unsampled_tp.ends_with("-00"), "not sampled: {unsampled_tp}");
    // A sampled caller is followed whatever the ratio.
    let (trace, caller) = caller_ids();
    let tp = format!("00-{trace}-{caller}-01");
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), Some(&tp)).await;
    assert_eq!(response.status(), 200);
    let spans = collector.trace(&trace, 2).await;
    assert_eq!(spans.len(), 2);
    // The unsampled request's spans were never exported (they would have come
    // in the same or an earlier batch).
    let (unsampled, _) = parse_traceparent(&unsampled_tp);
    assert!(collector.spans().iter().all(|s| s.trace_id != unsampled));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_is_one_server_span_and_one_client_span_with_genai_attributes() {
    // LiteLLM #4767: INTERNAL spans with names off the specification.
    // Bifrost #1561: eight noise spans per call.
    let upstream = Upstream::start(Behaviour::Fast);
    let collector = Collector::start(Mode::Accept);
    let (_home, gw) = traced(&upstream_toml(&upstream.url()), &collector, "");
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
    assert_eq!(response.status(), 200);
    let (trace, _) = sent_traceparent(&upstream, 0);
    let spans = collector.trace(&trace, 2).await;
    assert_eq!(spans.len(), 2, "exactly two spans: {spans:#?}");
    let server = one(&spans, SERVER);
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert_eq!(
        server.parent_span_id, "",
        "a root without a caller's context"
    );
    assert_eq!(server.attr("http.request.method"), "POST");
    assert_eq!(server.attr("http.route"), "/v1/chat/completions");
    assert_eq!(server.attr("http.response.status_code"), 200);
    assert_eq!(server.service_name, "warden");
    let attempt = one(&spans, CLIENT);
    assert_eq!(attempt.name, "chat gpt-5");
    for (key, value) in [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("openai")),
        ("gen_ai.request.model", json!("gpt-5")),
        ("gen_ai.request.stream", json!(false)),
        ("gen_ai.response.model", json!("up-model")),
        ("gen_ai.response.id", json!("chatcmpl-up")),
        ("gen_ai.response.finish_reasons", json!(["stop"])),
        ("gen_ai.usage.input_tokens", json!(5)),
        ("gen_ai.usage.output_tokens", json!(2)),
        ("server.address", json!("127.0.0.1")),
        ("server.port", json!(upstream.addr.port())),
        ("warden.provider", json!("default")),
        ("warden.attempt", json!(1)),
    ] {
        assert_eq!(attempt.attr(key), value, "{key}: {attempt:#?}");
    }
    assert_eq!(attempt.attr("error.type"), Value::Null);
    assert_ne!(attempt.status_code, STATUS_ERROR);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_span_ends_with_the_stream_with_usage_id_model_and_first_chunk_time() {
    // LiteLLM #31583: streamed requests lacked usage, response id and model on
    // their span. Bifrost #1561: no time to first token.
    let upstream = Upstream::start(Behaviour::GatedStream);
    let collector = Collector::start(Mode::Accept);
    let (_home, gw) = traced(&upstream_toml(&upstream.url()), &collector, "");
    let mut response = post_traced(&gw, "/v1/chat/completions", &chat_body(true), None).await;
    assert_eq!(response.status(), 200);
    let seen = crate::support::http::read_until(&mut response, "first").await;
    upstream.state.release();
    let body = crate::support::http::read_to_end(&mut response, seen).await;
    assert!(body.contains("[DONE]"), "{body}");
    let (trace, _) = sent_traceparent(&upstream, 0);
    let spans = collector.trace(&trace, 2).await;
    let attempt = one(&spans, CLIENT);
    assert_eq!(attempt.attr("gen_ai.request.stream"), true);
    assert_eq!(attempt.attr("gen_ai.response.id"), "c");
    assert_eq!(attempt.attr("gen_ai.response.model"), "up-model");
    assert_eq!(attempt.attr("gen_ai.usage.input_tokens"), 4);
    assert_eq!(attempt.attr("gen_ai.usage.output_tokens"), 2);
    let first = attempt.attr("gen_ai.response.time_to_first_chunk");
    assert!(first.as_f64().is_some_and(|s| s > 0.0), "{attempt:#?}");
    // The same figure is in /metrics per provider, traces or not.
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("warden_time_to_first_token_seconds_count{provider=\"default\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_attempt_that_failed_over_is_its_own_span_with_error_type() {
    let broken = Upstream::start(Behaviour::Always(503));
    let good = Upstream::start(Behaviour::Fast);
    let collector = Collector::start(Mode::Accept);
    let toml = format!(
        "[upstream]\nattempts = 2\n\n[[providers]]\nname = \"broken\"\nurl = \"{}\"\npriority = 0\n\n\
         [[providers]]\nname = \"good\"\nurl = \"{}\"\npriority = 1\n",
        broken.url(),
        good.url()
    );
    let (_home, gw) = traced(&toml, &collector, "");
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
    assert_eq!(response.status(), 200);
    let (trace, second_parent) = sent_traceparent(&good, 0);
    let (first_trace, first_parent) = sent_traceparent(&broken, 0);
    assert_eq!(first_trace, trace, "both attempts are in one trace");
    let spans = collector.trace(&trace, 3).await;
    let server = one(&spans, SERVER);
    let attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == CLIENT).collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    let first = attempts
        .iter()
        .find(|s| s.attr("warden.attempt") == 1)
        .unwrap();
    let second = attempts
        .iter()
        .find(|s| s.attr("warden.attempt") == 2)
        .unwrap();
    assert_eq!(first.attr("warden.provider"), "broken");
    assert_eq!(first.attr("error.type"), "503");
    assert_eq!(first.status_code, STATUS_ERROR);
    assert_eq!(first.span_id, first_parent);
    assert_eq!(second.attr("warden.provider"), "good");
    assert_eq!(second.attr("error.type"), Value::Null);
    assert_eq!(second.span_id, second_parent);
    for attempt in [first, second] {
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(attempt.name, "chat gpt-5");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_route_and_a_responses_provider_are_traced_and_propagated() {
    use crate::support::prompt_server::{PromptMode, PromptServer};
    use crate::support::responses_upstream::{Answer, ResponsesUpstream, responses_config};
    let prompts = PromptServer::start(PromptMode::Up);
    let upstream = ResponsesUpstream::start(Answer::Text);
    let collector = Collector::start(Mode::Accept);
    let (_home, gw) = traced(
        &responses_config(&upstream.url(), &prompts, ""),
        &collector,
        "",
    );
    // A Chat Completions request, translated to the Responses API.
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
    assert_eq!(response.status(), 200);
    // A Responses request on /v1/responses.
    let body = json!({"model": "gpt-5", "input": "hello"});
    let response = post_traced(&gw, "/v1/responses", &body, None).await;
    assert_eq!(response.status(), 200);
    let headers = upstream.state.headers.lock().unwrap().clone();
    assert_eq!(headers.len(), 2);
    for (i, route) in ["/v1/chat/completions", "/v1/responses"]
        .into_iter()
        .enumerate()
    {
        let (trace, parent) =
            parse_traceparent(headers[i].get("traceparent").unwrap().to_str().unwrap());
        let spans = collector.trace(&trace, 2).await;
        let server = one(&spans, SERVER);
        assert_eq!(server.name, format!("POST {route}"));
        let attempt = one(&spans, CLIENT);
        assert_eq!(attempt.span_id, parent, "{route}");
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(attempt.attr("gen_ai.provider.name"), "openai");
        assert_eq!(attempt.attr("gen_ai.usage.input_tokens"), 11, "{route}");
        assert_eq!(attempt.attr("gen_ai.usage.output_tokens"), 3, "{route}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_provider_attempt_is_traced_and_gets_the_traceparent() {
    let fake = crate::anthropic::FakeAnthropic::start(&[crate::anthropic::Script::Text]);
    let collector = Collector::start(Mode::Accept);
    let toml = format!(
        "[upstream]\nurl = \"{}\"\napi = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nattempts = 1\n",
        fake.url()
    );
    let home = TestHome::new();
    home.config(&format!(
        "{toml}\n[telemetry]\notlp_endpoint = \"{}\"\n",
        collector.endpoint()
    ));
    let gw = InProcess::start(&home, &[("ANTHROPIC_API_KEY", "sk-ant-secret-9d2e")]);
    // Both the OpenAI and the Anthropic ingress.
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
    assert_eq!(response.status(), 200);
    let body = json!({"model": "claude-test", "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]});
    let response = post_traced(&gw, "/v1/messages", &body, None).await;
    assert_eq!(response.status(), 200);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for (i, route) in ["/v1/chat/completions", "/v1/messages"]
        .into_iter()
        .enumerate()
    {
        let (trace, parent) =
            parse_traceparent(requests[i].1.get("traceparent").unwrap().to_str().unwrap());
        let spans = collector.trace(&trace, 2).await;
        assert_eq!(one(&spans, SERVER).name, format!("POST {route}"));
        let attempt = one(&spans, CLIENT);
        assert_eq!(attempt.span_id, parent);
        assert_eq!(attempt.attr("gen_ai.provider.name"), "anthropic");
        assert!(
            attempt.attr("gen_ai.response.id").is_string(),
            "{attempt:#?}"
        );
        assert_eq!(
            attempt.attr("gen_ai.response.finish_reasons"),
            json!(["stop"])
        );
        assert_eq!(attempt.attr("gen_ai.usage.input_tokens"), 12);
        assert_eq!(attempt.attr("gen_ai.usage.output_tokens"), 4);
    }
    let exported = collector.raw_bytes();
    assert!(
        !contains(&exported, b"sk-ant-secret-9d2e"),
        "the key is in a span"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_requests_are_a_consumer_span_continuing_the_message_headers() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Fast);
    let collector = Collector::start(Mode::Accept);
    let toml = format!(
        "{}\n[nats]\nurl = \"{}\"\n",
        upstream_toml(&upstream.url()),
        nats.url()
    );
    let (_home, gw) = traced(&toml, &collector, "");
    until("NATS connected", || async {
        crate::support::http::health(&gw).await["nats"]["state"] == "connected"
    })
    .await;
    let nc = nats.client().await;
    let (trace, caller) = caller_ids();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{trace}-{caller}-01").as_str());
    let reply = tokio::time::timeout(
        crate::support::PATIENCE,
        nc.request_with_headers(
            "warden.chat",
            headers,
            Bytes::from(chat_body(false).to_string()),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    let spans = collector.trace(&trace, 2).await;
    let consumer = one(&spans, CONSUMER);
    assert_eq!(consumer.name, "process warden.chat");
    assert_eq!(consumer.parent_span_id, caller);
    assert_eq!(consumer.attr("messaging.system"), "nats");
    let attempt = one(&spans, CLIENT);
    assert_eq!(attempt.parent_span_id, consumer.span_id);
    assert_eq!(sent_traceparent(&upstream, 0), (trace, attempt.span_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_trust_parent_a_new_trace_links_to_the_callers() {
    let upstream = Upstream::start(Behaviour::Fast);
    let collector = Collector::start(Mode::Accept);
    let (_home, gw) = traced(
        &upstream_toml(&upstream.url()),
        &collector,
        "trust_parent = false",
    );
    let (trace, caller) = caller_ids();
    let tp = format!("00-{trace}-{caller}-01");
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), Some(&tp)).await;
    assert_eq!(response.status(), 200);
    let (own_trace, _) = sent_traceparent(&upstream, 0);
    assert_ne!(own_trace, trace, "a trace of its own");
    let spans = collector.trace(&own_trace, 2).await;
    let server = one(&spans, SERVER);
    assert_eq!(server.parent_span_id, "");
    assert_eq!(server.links, vec![(trace, caller)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_and_no_prompt_or_answer_text_in_any_exported_byte() {
    // LiteLLM #13705, #36758: API keys and payloads copied into spans, on
    // retries too.
    let upstream = Upstream::start(Behaviour::FailThenRecover { n: 1, status: 502 });
    let collector = Collector::start(Mode::Accept);
    let url = upstream
        .url()
        .replace("http://", "http://user:url-pass-4b1c@");
    let toml =
        format!("[upstream]\nurl = \"{url}\"\nattempts = 2\napi_key_env = \"OPENAI_API_KEY\"\n");
    let home = TestHome::new();
    home.config(&format!(
        "{toml}\n[telemetry]\notlp_endpoint = \"{}\"\n",
        collector.endpoint()
    ));
    let gw = InProcess::start(
        &home,
        &[
            ("OPENAI_API_KEY", "sk-upstream-secret-51ac"),
            ("WARDEN_AUTH_TOKEN", "client-token-secret-88e0"),
        ],
    );
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth("client-token-secret-88e0")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (trace, _) = sent_traceparent(&upstream, 1);
    let spans = collector.trace(&trace, 3).await;
    assert_eq!(spans.iter().filter(|s| s.kind == CLIENT).count(), 2);
    let exported = collector.raw_bytes();
    for secret in [
        "sk-upstream-secret-51ac",
        "client-token-secret-88e0",
        "url-pass-4b1c",
        "secret-prompt-text-7f3a",
        "from upstream",
    ] {
        assert!(
            !contains(&exported, secret.as_bytes()),
            "{secret} was exported"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_content_exports_the_prompt_and_the_answer() {
    let upstream = Upstream::start(Behaviour::GatedStream);
    let collector = Collector::start(Mode::Accept);
    let (_home, gw) = traced(
        &upstream_toml(&upstream.url()),
        &collector,
        "capture_content = true",
    );
    let mut response = post_traced(&gw, "/v1/chat/completions", &chat_body(true), None).await;
    let seen = crate::support::http::read_until(&mut response, "first").await;
    upstream.state.release();
    crate::support::http::read_to_end(&mut response, seen).await;
    let (trace, _) = sent_traceparent(&upstream, 0);
    let spans = collector.trace(&trace, 2).await;
    let attempt = one(&spans, CLIENT);
    let input: Value =
        serde_json::from_str(attempt.attr("gen_ai.input.messages").as_str().unwrap()).unwrap();
    assert_eq!(input[0]["role"], "user");
    assert_eq!(input[0]["parts"][0]["content"], "secret-prompt-text-7f3a");
    let output: Value =
        serde_json::from_str(attempt.attr("gen_ai.output.messages").as_str().unwrap()).unwrap();
    assert_eq!(output[0]["parts"][0]["content"], "firstsecond");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_counted_drops_and_a_log_line_never_a_request() {
    // LiteLLM PR #41998: tracing switched itself off in silence while
    // requests went on succeeding.
    let upstream = Upstream::start(Behaviour::Fast);
    let down = crate::support::upstream::closed_port_url().replace("/v1", "");
    let home = TestHome::new();
    home.config(&format!(
        "{}\n[telemetry]\notlp_endpoint = \"{down}\"\n",
        upstream_toml(&upstream.url())
    ));
    let proxy = Proxy::start(&home, &[], &[]);
    for _ in 0..5 {
        let response = post_traced(&proxy, "/v1/chat/completions", &chat_body(false), None).await;
        assert_eq!(response.status(), 200);
    }
    until("the dropped spans are counted", || async {
        dropped(&metrics_text(&proxy).await) >= 10
    })
    .await;
    until("the drops are logged", || async {
        home.read("logs/proxy.log")
            .contains("telemetry: trace spans dropped")
    })
    .await;
    let log = home.read("logs/proxy.log");
    // The access log carries the trace id the provider was sent.
    let (trace, _) = sent_traceparent(&upstream, 0);
    assert!(log.contains(&format!("trace_id={trace}")), "{log}");
}

/// `warden_telemetry_spans_dropped_total` in a metrics text.
fn dropped(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("warden_telemetry_spans_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dropped counter in {metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_hangs_never_holds_a_request_and_its_spans_are_dropped() {
    let upstream = Upstream::start(Behaviour::Fast);
    let collector = Collector::start(Mode::Hang);
    let (_home, gw) = traced(&upstream_toml(&upstream.url()), &collector, "");
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
    assert_eq!(response.status(), 200);
    // The export of that request's spans is now stuck in the collector.
    collector.wait_request().await;
    for _ in 0..20 {
        let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
        assert_eq!(response.status(), 200);
    }
    // The stuck export gives up after its timeout: its spans are counted.
    until("the stuck batch is counted as dropped", || async {
        dropped(&metrics_text(&gw).await) >= 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_off_send_no_traceparent_and_export_nothing() {
    let upstream = Upstream::start(Behaviour::Fast);
    let home = TestHome::new();
    home.config(&upstream_toml(&upstream.url()));
    let gw = InProcess::start(&home, &[]);
    let (trace, caller) = caller_ids();
    let tp = format!("00-{trace}-{caller}-01");
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), Some(&tp)).await;
    assert_eq!(response.status(), 200);
    let headers = upstream.state.headers.lock().unwrap()[0].clone();
    assert!(headers.get("traceparent").is_none(), "{headers:?}");
    let metrics = metrics_text(&gw).await;
    assert_eq!(dropped(&metrics), 0);
    assert!(
        metrics.contains("warden_telemetry_spans_exported_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recent_failures_on_ui_carry_their_trace_id() {
    let upstream = Upstream::start(Behaviour::Always(503));
    let collector = Collector::start(Mode::Accept);
    let (_home, gw) = traced(&upstream_toml(&upstream.url()), &collector, "");
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
    assert_eq!(response.status(), 502);
    let (trace, _) = sent_traceparent(&upstream, 0);
    let history = crate::support::http::get_json(&format!("{}/ui/history.json", gw.url)).await;
    let failure = &history["failures"][0];
    assert_eq!(failure["status"], 502, "{history}");
    assert_eq!(failure["trace_id"], trace.as_str());
    assert_eq!(failure["provider"], "default");
    let spans = collector.trace(&trace, 2).await;
    let server = one(&spans, SERVER);
    assert_eq!(server.attr("error.type"), "502");
    assert_eq!(server.status_code, STATUS_ERROR);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_refuses_costs_counted_drops_never_a_request() {
    let upstream = Upstream::start(Behaviour::Fast);
    let collector = Collector::start(Mode::Refuse);
    let (_home, gw) = traced(&upstream_toml(&upstream.url()), &collector, "");
    let response = post_traced(&gw, "/v1/chat/completions", &chat_body(false), None).await;
    assert_eq!(response.status(), 200);
    until("the refused spans are counted", || async {
        dropped(&metrics_text(&gw).await) >= 2
    })
    .await;
    assert!(collector.spans().is_empty());
}

#[test]
fn preflight_warns_when_the_collector_is_unreachable_and_the_checks_stay_ten() {
    let port = crate::support::free_port();
    let home = TestHome::new();
    home.config(&format!(
        "[telemetry]\notlp_endpoint = \"http://user:pw-3c9d@127.0.0.1:{port}\"\n"
    ));
    let out = crate::support::run("preflight", &home, &["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 10, "{report}");
    let upstream = checks.iter().find(|c| c["id"] == "upstream").unwrap();
    assert_eq!(upstream["status"], "warn", "{report}");
    let message = upstream["message"].as_str().unwrap();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(
        upstream["hint"]
            .as_str()
            .unwrap()
            .contains("telemetry.otlp_endpoint")
    );
    assert!(!report.to_string().contains("pw-3c9d"), "{report}");
    // Reachable: no warning from it.
    let collector = Collector::start(Mode::Accept);
    home.config(&format!(
        "[telemetry]\notlp_endpoint = \"{}\"\n",
        collector.endpoint()
    ));
    let out = crate::support::run("preflight", &home, &["--only", "upstream", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let upstream = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "upstream")
        .unwrap();
    assert_eq!(upstream["status"], "pass", "{report}");
    assert!(
        upstream["message"]
            .as_str()
            .unwrap()
            .contains("accepts connections")
    );
}

/// The path and headers of each request a fake provider received.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap)>>>;

/// A provider serving embeddings, legacy completions and a pass-through path,
/// recording the headers of each request by path.
fn openai_api_fake() -> (String, Seen) {
    use axum::routing::{get, post};
    let seen: Seen = Default::default();
    async fn answer(
        axum::extract::State(seen): axum::extract::State<Seen>,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
    ) -> axum::Json<Value> {
        seen.lock().unwrap().push((uri.path().to_string(), headers));
        axum::Json(match uri.path() {
            "/v1/embeddings" => json!({"object": "list", "model": "emb-up",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
                "usage": {"prompt_tokens": 3, "total_tokens": 3}}),
            "/v1/completions" => json!({"id": "cmpl-up", "object": "text_completion",
                "model": "up-model", "choices": [{"index": 0, "text": "done",
                "finish_reason": "length"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}),
            _ => json!({"object": "list", "data": []}),
        })
    }
    let app = axum::Router::new()
        .route("/v1/embeddings", post(answer))
        .route("/v1/completions", post(answer))
        .route("/v1/files", get(answer))
        .with_state(seen.clone());
    let addr = crate::support::prompt_server::serve(app);
    (format!("http://{addr}/v1"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_completions_and_pass_through_are_traced_and_get_the_traceparent() {
    // LiteLLM #14670: no traceparent on embeddings.
    let (url, seen) = openai_api_fake();
    let collector = Collector::start(Mode::Accept);
    let toml = format!(
        "[[providers]]\nname = \"openai\"\nurl = \"{url}\"\nmodels = [\"*\"]\npassthrough = true\n"
    );
    let (_home, gw) = traced(&toml, &collector, "");
    let embed = json!({"model": "emb-1", "input": "secret-prompt-text-7f3a"});
    let response = post_traced(&gw, "/v1/embeddings", &embed, None).await;
    assert_eq!(response.status(), 200);
    let complete = json!({"model": "gpt-5", "prompt": "secret-prompt-text-7f3a"});
    let response = post_traced(&gw, "/v1/completions", &complete, None).await;
    assert_eq!(response.status(), 200);
    let response = client()
        .get(format!("{}/v1/files", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for ((path, headers), (server_name, client_name, operation)) in seen.iter().zip([
        ("POST /v1/embeddings", "embeddings emb-1", "embeddings"),
        (
            "POST /v1/completions",
            "text_completion gpt-5",
            "text_completion",
        ),
        ("GET /v1/*", "passthrough -", "passthrough"),
    ]) {
        let tp = headers
            .get("traceparent")
            .unwrap_or_else(|| panic!("{path} got no traceparent"));
        let (trace, parent) = parse_traceparent(tp.to_str().unwrap());
        let spans = collector.trace(&trace, 2).await;
        let server = one(&spans, SERVER);
        assert_eq!(server.name, server_name);
        let attempt = one(&spans, CLIENT);
        assert_eq!(attempt.span_id, parent, "{path}");
        assert_eq!(attempt.parent_span_id, server.span_id);
        assert_eq!(attempt.name, client_name);
        assert_eq!(attempt.attr("gen_ai.operation.name"), operation);
    }
    let spans = collector.spans();
    let embeddings = spans.iter().find(|s| s.name == "embeddings emb-1").unwrap();
    assert_eq!(embeddings.attr("gen_ai.usage.input_tokens"), 3);
    let completion = spans
        .iter()
        .find(|s| s.name == "text_completion gpt-5")
        .unwrap();
    assert_eq!(
        completion.attr("gen_ai.response.finish_reasons"),
        json!(["length"])
    );
    assert!(!contains(
        &collector.raw_bytes(),
        b"secret-prompt-text-7f3a"
    ));
}
