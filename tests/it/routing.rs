//! Providers and routing (docs/contract.md §11): routing by model, failover before the
//! first byte, passive health (cooldown, half-open probe), the provider header,
//! `/health` and `/metrics` per provider, the model catalog. Upstreams are real
//! axum servers whose behaviour a test sets and changes: healthy, failing,
//! rate-limiting with `Retry-After`, hanging, gated, streaming an error first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::support::gateway::InProcess;
use crate::support::http::{Served, model_ids, post_chat};
use crate::support::prompt_server::serve;
use crate::support::responses_upstream::{health, metrics_text, until};
use crate::support::upstream::closed_port_url;
use crate::support::{Proxy, TestHome, assert_openai_error, client, sse_data};

/// What a test upstream answers to `POST /chat/completions`.
#[derive(Clone, Debug)]
enum Mode {
    /// 200: a completion (or a short stream) saying "from NAME".
    Healthy,
    /// This status with an OpenAI error body.
    Status(u16),
    /// 429, with `Retry-After: N` when given; several queued values are used in turn.
    RateLimited(Option<u64>),
    /// Waits for a permit (`release`), then answers like `Healthy`.
    Gated,
    /// Waits for a permit, then 429 with the next queued `Retry-After`.
    GatedRateLimited,
    /// Never answers.
    Hang,
    /// 200 SSE whose first event is an error (the quota error some providers send).
    ErrorFirst,
    /// 200 SSE: one content chunk, then an error event.
    ErrorAfterContent,
}

struct Scripted {
    name: String,
    mode: Mutex<Mode>,
    hits: AtomicUsize,
    /// The `model` of each request received.
    models: Mutex<Vec<String>>,
    retry_afters: Mutex<VecDeque<u64>>,
    arrived: Notify,
    gate: Semaphore,
}

/// One test upstream on its own port.
struct TestUpstream {
    url: String,
    state: Arc<Scripted>,
}

impl TestUpstream {
    fn start(name: &str, mode: Mode) -> TestUpstream {
        let state = Arc::new(Scripted {
            name: name.to_string(),
            mode: Mutex::new(mode),
            hits: AtomicUsize::new(0),
            models: Mutex::new(Vec::new()),
            retry_afters: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            gate: Semaphore::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .route("/v1/models", get(model_list))
            .with_state(state.clone());
        let addr = serve(app);
        TestUpstream {
            url: format!("http://{addr}/v1"),
            state,
        }
    }
    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
    fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }
    fn queue_retry_after(&self, secs: u64) {
        self.state.retry_afters.lock().unwrap().push_back(secs);
    }
    fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }
    fn models_seen(&self) -> Vec<String> {
        self.state.models.lock().unwrap().clone()
    }
    /// Waits until `n` requests have arrived in total.
    async fn wait_hits(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.hits() < n {
            let notified = self.state.arrived.notified();
            if self.hits() >= n {
                break;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "{} got {} requests, waited for {n}",
                self.state.name,
                self.hits()
            );
        }
    }
}

fn completion(name: &str) -> String {
    json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("from {name}")},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
    .to_string()
}

fn chunk(text: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    )
}

fn sse(text: String) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(text))
        .unwrap()
}

fn healthy(state: &Scripted, stream: bool) -> Response {
    if stream {
        return sse(format!(
            "{}data: [DONE]\n\n",
            chunk(&format!("from {}", state.name))
        ));
    }
    (
        [("content-type", "application/json")],
        completion(&state.name),
    )
        .into_response()
}

fn rate_limited(retry_after: Option<u64>) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        [("content-type", "application/json")],
        r#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":null}}"#,
    )
        .into_response();
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert("retry-after", secs.to_string().parse().unwrap());
    }
    r
}

async fn answer(State(st): State<Arc<Scripted>>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = request["stream"].as_bool().unwrap_or(false);
    st.models
        .lock()
        .unwrap()
        .push(request["model"].as_str().unwrap_or("").to_string());
    st.hits.fetch_add(1, Ordering::SeqCst);
    st.arrived.notify_waiters();
    let mode = st.mode.lock().unwrap().clone();
    let next_retry_after = || st.retry_afters.lock().unwrap().pop_front();
    match mode {
        Mode::Healthy => healthy(&st, stream),
        Mode::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            [("content-type", "application/json")],
            format!(
                r#"{{"error":{{"message":"{} says {code}","type":"x","param":null,"code":null}}}}"#,
                st.name
            ),
        )
            .into_response(),
        Mode::RateLimited(secs) => rate_limited(next_retry_after().or(secs)),
        Mode::Gated => {
            st.gate.acquire().await.unwrap().forget();
            healthy(&st, stream)
        }
        Mode::GatedRateLimited => {
            st.gate.acquire().await.unwrap().forget();
            rate_limited(next_retry_after())
        }
        Mode::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::ErrorFirst => sse(
            "data: {\"error\":{\"message\":\"insufficient_quota\",\"type\":\"insufficient_quota\"}}\n\ndata: [DONE]\n\n"
                .to_string(),
        ),
        Mode::ErrorAfterContent => sse(format!(
            "{}data: {{\"error\":{{\"message\":\"overloaded mid-answer\"}}}}\n\ndata: [DONE]\n\n",
            chunk("partial")
        )),
    }
}

async fn model_list(State(st): State<Arc<Scripted>>) -> Response {
    (
        [("content-type", "application/json")],
        json!({"object": "list", "data": [
            {"id": format!("{}-model", st.name), "object": "model", "created": 1, "owned_by": st.name}
        ]})
        .to_string(),
    )
        .into_response()
}

/// A `[[providers]]` entry.
fn provider(name: &str, url: &str, models: &str, priority: u32, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nurl = \"{url}\"\nmodels = {models}\npriority = {priority}\n{extra}\n"
    )
}

/// `primary` (priority 0) and `backup` (priority 1), both for every model, and
/// `extra` configuration lines.
fn primary_then_backup(primary: &TestUpstream, backup: &TestUpstream, extra: &str) -> String {
    format!(
        "{}{}{extra}",
        provider("primary", &primary.url, r#"["*"]"#, 0, ""),
        provider("backup", &backup.url, r#"["*"]"#, 1, ""),
    )
}

/// A gateway (in-process) with this configuration.
fn start(config: &str) -> (TestHome, InProcess) {
    let home = TestHome::new();
    home.config(config);
    let proxy = InProcess::start(&home, &[]);
    (home, proxy)
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

async fn chat(proxy: &impl Served, model: &str) -> reqwest::Response {
    post_chat(proxy, &chat_body(model)).await
}

fn provider_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-warden-provider")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The answer's content, and the provider header.
async fn answered_by(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let provider = provider_of(&r);
    let body: Value = r.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (status, provider, content)
}

async fn provider_health(proxy: &impl Served, name: &str) -> Value {
    health(proxy).await["providers"][name].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_section_alone_is_the_provider_named_default() {
    let up = TestUpstream::start("up", Mode::Healthy);
    let (_home, proxy) = start(&format!("[upstream]\nurl = \"{}\"\n", up.url));
    let r = chat(&proxy, "any-model-at-all").await;
    assert_eq!(r.status(), 200);
    assert_eq!(provider_of(&r), "default");
    let h = health(&proxy).await;
    assert_eq!(h["providers"]["default"]["state"], "healthy");
    // The mock is a provider too.
    let (_home, mock) = start("");
    let r = chat(&mock, "gpt-5").await;
    assert_eq!(r.status(), 200);
    assert_eq!(provider_of(&r), "default");
}

#[tokio::test(flavor = "multi_thread")]
async fn models_route_by_exact_name_prefix_and_priority() {
    let a = TestUpstream::start("a", Mode::Healthy);
    let b = TestUpstream::start("b", Mode::Healthy);
    let c = TestUpstream::start("c", Mode::Healthy);
    let (_home, proxy) = start(&format!(
        "{}{}{}",
        provider("a", &a.url, r#"["gpt-5"]"#, 0, ""),
        provider("b", &b.url, r#"["gpt-5-*"]"#, 0, ""),
        provider("c", &c.url, r#"["*"]"#, 1, ""),
    ));
    assert_eq!(
        answered_by(chat(&proxy, "gpt-5").await).await,
        (200, "a".into(), "from a".into())
    );
    assert_eq!(
        answered_by(chat(&proxy, "gpt-5-mini").await).await,
        (200, "b".into(), "from b".into())
    );
    assert_eq!(
        answered_by(chat(&proxy, "llama-3").await).await,
        (200, "c".into(), "from c".into())
    );
    // The client's bytes went to each as they were.
    assert_eq!(a.models_seen(), ["gpt-5"]);
    assert_eq!(b.models_seen(), ["gpt-5-mini"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_slash_model_and_aliases_send_the_routed_name_upstream() {
    let a = TestUpstream::start("a", Mode::Healthy);
    let b = TestUpstream::start("b", Mode::Healthy);
    let (_home, proxy) = start(&format!(
        "{}{}[aliases]\nfast = \"gpt-5-mini\"\npinned = \"b/exotic\"\n",
        provider("a", &a.url, r#"["*"]"#, 0, ""),
        provider("b", &b.url, r#"["gpt-5-*"]"#, 1, ""),
    ));
    // PROVIDER/MODEL: that provider only, whatever its patterns, MODEL sent upstream.
    let (status, by, _) = answered_by(chat(&proxy, "b/some-model").await).await;
    assert_eq!((status, by.as_str()), (200, "b"));
    assert_eq!(b.models_seen(), ["some-model"]);
    // An alias is routed (a serves "*" first) and sent upstream under its target.
    let (_, by, _) = answered_by(chat(&proxy, "fast").await).await;
    assert_eq!(by, "a");
    assert_eq!(a.models_seen(), ["gpt-5-mini"]);
    // An alias may pin a provider.
    let (_, by, _) = answered_by(chat(&proxy, "pinned").await).await;
    assert_eq!(by, "b");
    assert_eq!(b.models_seen(), ["some-model", "exotic"]);
    // A slash that names no provider is part of the model name.
    let (_, by, _) = answered_by(chat(&proxy, "meta-llama/llama-3").await).await;
    assert_eq!(by, "a");
    assert_eq!(a.models_seen().last().unwrap(), "meta-llama/llama-3");
}

#[tokio::test(flavor = "multi_thread")]
async fn models_lists_the_aliases_and_answers_for_one() {
    let a = TestUpstream::start("a", Mode::Healthy);
    let (_home, proxy) = start(&format!(
        "{}[aliases]\nfast = \"gpt-5-mini\"\ngpt-5 = \"a/gpt-5\"\n",
        provider("a", &a.url, r#"["gpt-5", "gpt-5-*"]"#, 0, ""),
    ));
    // Declared names first, then each alias once (an alias that is also a
    // declared name is not listed twice).
    assert_eq!(model_ids(&proxy).await, ["gpt-5", "fast"]);
    let r = client()
        .get(format!("{}/v1/models/fast", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let model: Value = r.json().await.unwrap();
    assert_eq!(model["id"], "fast");
    assert_eq!(model["object"], "model");
    let r = client()
        .get(format!("{}/v1/models/slow", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The [upstream] shorthand (the mock) lists them too.
    let (_home, mock) = start("[aliases]\nquick = \"gpt-5\"\n");
    let ids = model_ids(&mock).await;
    assert_eq!(ids.last().map(String::as_str), Some("quick"), "{ids:?}");
    assert!(ids.contains(&"gpt-5".to_string()), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_candidate_for_a_model_is_404_model_not_found() {
    let a = TestUpstream::start("a", Mode::Healthy);
    let (_home, proxy) = start(&provider("a", &a.url, r#"["gpt-5"]"#, 0, ""));
    let r = chat(&proxy, "claude-9").await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_openai_error(&body);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-9")
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_before_the_first_byte_on_connect_error_5xx_429_and_timeout() {
    let backup = TestUpstream::start("backup", Mode::Healthy);
    for (what, url, mode) in [
        ("connect error", closed_port_url(), None),
        ("500", String::new(), Some(Mode::Status(500))),
        ("503", String::new(), Some(Mode::Status(503))),
        ("429", String::new(), Some(Mode::RateLimited(Some(1)))),
        ("timeout", String::new(), Some(Mode::Hang)),
    ] {
        let primary = mode.map(|m| TestUpstream::start("primary", m));
        let url = primary.as_ref().map_or(url, |p| p.url.clone());
        let (_home, proxy) = start(&format!(
            "{}{}",
            provider("primary", &url, r#"["*"]"#, 0, "first_byte_timeout = 1"),
            provider("backup", &backup.url, r#"["*"]"#, 1, ""),
        ));
        let r = chat(&proxy, "gpt-5").await;
        assert_eq!(
            answered_by(r).await,
            (200, "backup".into(), "from backup".into()),
            "{what}"
        );
        if let Some(p) = &primary {
            assert_eq!(p.hits(), 1, "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn other_4xx_answers_go_back_to_the_client_without_failover() {
    let primary = TestUpstream::start("primary", Mode::Status(400));
    let backup = TestUpstream::start("backup", Mode::Healthy);
    let (_home, proxy) = start(&primary_then_backup(&primary, &backup, ""));
    let r = chat(&proxy, "gpt-5").await;
    assert_eq!(r.status(), 400);
    assert_eq!(provider_of(&r), "primary");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], "primary says 400");
    assert_eq!(backup.hits(), 0);
    assert_eq!(provider_health(&proxy, "primary").await["failures"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_first_event_is_an_error_fails_over() {
    let primary = TestUpstream::start("primary", Mode::ErrorFirst);
    let backup = TestUpstream::start("backup", Mode::Healthy);
    let (_home, proxy) = start(&primary_then_backup(&primary, &backup, ""));
    let mut body = chat_body("gpt-5");
    body["stream"] = json!(true);
    let r = post_chat(&proxy, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(provider_of(&r), "backup");
    let text = r.text().await.unwrap();
    assert!(text.contains("from backup"), "{text}");
    assert!(!text.contains("insufficient_quota"), "{text}");
    assert_eq!(primary.hits(), 1);
    assert_eq!(provider_health(&proxy, "primary").await["failures"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_first_byte_there_is_no_failover_only_an_error_event() {
    let primary = TestUpstream::start("primary", Mode::ErrorAfterContent);
    let backup = TestUpstream::start("backup", Mode::Healthy);
    let (_home, proxy) = start(&primary_then_backup(&primary, &backup, ""));
    let mut body = chat_body("gpt-5");
    body["stream"] = json!(true);
    let r = post_chat(&proxy, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(provider_of(&r), "primary");
    let data = sse_data(&r.text().await.unwrap());
    assert!(data[0].contains("partial"), "{data:?}");
    assert!(data[1].contains("overloaded mid-answer"), "{data:?}");
    assert_eq!(backup.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn consecutive_failures_cool_a_provider_visibly_until_the_cooldown_ends() {
    let primary = TestUpstream::start("primary", Mode::Status(500));
    let backup = TestUpstream::start("backup", Mode::Healthy);
    // The binary, whose access log this test reads.
    let home = TestHome::new();
    home.config(&primary_then_backup(
        &primary,
        &backup,
        "[routing]\nfailures = 2\ncooldown = 600\n",
    ));
    let proxy = Proxy::start(&home, &[], &[]);
    for n in 1..=2 {
        let (status, by, _) = answered_by(chat(&proxy, "gpt-5").await).await;
        assert_eq!((status, by.as_str()), (200, "backup"));
        assert_eq!(primary.hits(), n);
    }
    let h = provider_health(&proxy, "primary").await;
    assert_eq!(h["state"], "cooling", "{h}");
    assert!(h["cooldown_until"].is_string(), "{h}");
    assert!(h["last_error"].as_str().unwrap().contains("500"), "{h}");
    // Cooling: not asked at all.
    let (_, by, _) = answered_by(chat(&proxy, "gpt-5").await).await;
    assert_eq!(by, "backup");
    assert_eq!(primary.hits(), 2);
    let m = metrics_text(&proxy).await;
    assert!(
        m.contains("warden_provider_cooldowns_total{provider=\"primary\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("warden_provider_failovers_total{provider=\"primary\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("warden_provider_requests_total{provider=\"backup\"} 3"),
        "{m}"
    );
    // The access log names the provider and the failovers (written in
    // batches off the request path: wait for the line).
    crate::support::eventually("the access line of the failover", || {
        home.read("logs/proxy.log")
            .lines()
            .any(|l| l.contains("provider=\"backup\"") && l.contains("failovers=1"))
    });
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_without_retry_after_still_cools_the_provider() {
    let primary = TestUpstream::start("primary", Mode::RateLimited(None));
    let backup = TestUpstream::start("backup", Mode::Healthy);
    let (_home, proxy) = start(&primary_then_backup(
        &primary,
        &backup,
        "[routing]\nfailures = 5\ncooldown = 600\n",
    ));
    let (_, by, _) = answered_by(chat(&proxy, "gpt-5").await).await;
    assert_eq!(by, "backup");
    assert_eq!(provider_health(&proxy, "primary").await["state"], "cooling");
    let (_, by, _) = answered_by(chat(&proxy, "gpt-5").await).await;
    assert_eq!(by, "backup");
    assert_eq!(primary.hits(), 1);
}

/// The cooldown end in `/health`, as seconds from now.
async fn cooling_for(proxy: &impl Served, name: &str) -> i64 {
    let h = provider_health(proxy, name).await;
    let until = h["cooldown_until"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not cooling: {h}"));
    let until = humantime::parse_rfc3339(until).unwrap();
    until
        .duration_since(std::time::SystemTime::now())
        .map_or(0, |d| d.as_secs() as i64)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_shorter_retry_after_never_shortens_the_cooldown() {
    // Two requests in flight at the rate-limited provider: the first answer says
    // Retry-After 500, the slower second one says 2. The provider stays out for 500 s.
    let primary = TestUpstream::start("primary", Mode::GatedRateLimited);
    primary.queue_retry_after(500);
    primary.queue_retry_after(2);
    let backup = TestUpstream::start("backup", Mode::Healthy);
    let (_home, proxy) = start(&primary_then_backup(
        &primary,
        &backup,
        "[routing]\ncooldown = 1\n",
    ));
    let url = proxy.url().to_string();
    let send = move || {
        let url = url.clone();
        tokio::spawn(async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat_body("gpt-5"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let first = send();
    let second = send();
    primary.wait_hits(2).await;
    primary.release(1);
    until("the primary cools", || async {
        provider_health(&proxy, "primary").await["state"] == "cooling"
    })
    .await;
    assert!(cooling_for(&proxy, "primary").await > 400);
    primary.release(1);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
    assert!(cooling_for(&proxy, "primary").await > 400);
    assert_eq!(backup.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_candidate_cooling_is_503_with_retry_after_at_once() {
    let a = TestUpstream::start("a", Mode::RateLimited(Some(300)));
    let b = TestUpstream::start("b", Mode::RateLimited(Some(200)));
    let (_home, proxy) = start(&format!(
        "{}{}",
        provider("a", &a.url, r#"["*"]"#, 0, ""),
        provider("b", &b.url, r#"["*"]"#, 1, ""),
    ));
    // Both tried: the last answer (b's 429) goes back.
    let r = chat(&proxy, "gpt-5").await;
    assert_eq!(r.status(), 429);
    assert_eq!((a.hits(), b.hits()), (1, 1));
    // Both cooling now: 503 without asking anyone, Retry-After = the earliest recovery.
    let r = chat(&proxy, "gpt-5").await;
    assert_eq!(r.status(), 503);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((150..=200).contains(&retry_after), "{retry_after}");
    let body: Value = r.json().await.unwrap();
    assert_openai_error(&body);
    assert_eq!(body["error"]["code"], "providers_cooling");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_cooldown_exactly_one_request_probes() {
    let primary = TestUpstream::start("primary", Mode::Status(500));
    let backup = TestUpstream::start("backup", Mode::Healthy);
    let (_home, proxy) = start(&primary_then_backup(
        &primary,
        &backup,
        "[routing]\nfailures = 1\ncooldown = 1\n",
    ));
    let (_, by, _) = answered_by(chat(&proxy, "gpt-5").await).await;
    assert_eq!(by, "backup");
    primary.set(Mode::Gated);
    until("the cooldown ends", || async {
        provider_health(&proxy, "primary").await["state"] == "healthy"
    })
    .await;
    // Five at once: one probe reaches the primary (held there), the rest go to backup.
    let url = proxy.url().to_string();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = client()
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&chat_body("gpt-5"))
                    .send()
                    .await
                    .unwrap();
                provider_of(&r)
            })
        })
        .collect();
    primary.wait_hits(2).await;
    until("four answered by backup", || async { backup.hits() == 5 }).await;
    assert_eq!(primary.hits(), 2, "one probe, not a stampede");
    primary.release(1);
    let mut by: Vec<String> = Vec::new();
    for r in requests {
        by.push(r.await.unwrap());
    }
    by.sort();
    assert_eq!(by, ["backup", "backup", "backup", "backup", "primary"]);
    let h = provider_health(&proxy, "primary").await;
    assert_eq!(
        (h["state"].as_str(), h["failures"].as_u64()),
        (Some("healthy"), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn within_a_priority_fewer_in_flight_and_weight_decide() {
    let a = TestUpstream::start("a", Mode::Gated);
    let b = TestUpstream::start("b", Mode::Healthy);
    let (_home, proxy) = start(&format!(
        "{}{}",
        provider("a", &a.url, r#"["*"]"#, 0, "weight = 1000"),
        provider("b", &b.url, r#"["*"]"#, 0, "weight = 1"),
    ));
    // Held at a until released: a has one in flight.
    let url = proxy.url().to_string();
    let held = tokio::spawn(async move {
        client()
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat_body("gpt-5"))
            .send()
            .await
            .unwrap()
    });
    // With nothing in flight a's weight (1000:1) all but decides where it lands.
    until("the first request arrives", || async {
        a.hits() + b.hits() == 1
    })
    .await;
    if a.hits() == 0 {
        // It went to b (1 in 1001): nothing is held; the rule below needs a held one.
        assert_eq!(held.await.unwrap().status(), 200);
        return;
    }
    // a has 1 in flight with weight 1000 (0.001 per unit), b 0: b is chosen.
    let (_, by, _) = answered_by(chat(&proxy, "gpt-5").await).await;
    assert_eq!(by, "b");
    a.release(1);
    assert_eq!(provider_of(&held.await.unwrap()), "a");
    // Idle: the weight decides; 200 requests at 1000:1.
    a.set(Mode::Healthy);
    let mut to_a = 0;
    let (one_client, url) = (client(), format!("{}/v1/chat/completions", proxy.url()));
    for _ in 0..200 {
        let r = one_client.post(&url).json(&chat_body("gpt-5")).send().await;
        if answered_by(r.unwrap()).await.1 == "a" {
            to_a += 1;
        }
    }
    assert!(to_a >= 180, "{to_a} of 200 went to the heavier provider");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempt_budget_covers_the_whole_chain() {
    let a = TestUpstream::start("a", Mode::Status(502));
    let b = TestUpstream::start("b", Mode::Status(503));
    let c = TestUpstream::start("c", Mode::Healthy);
    let (_home, proxy) = start(&format!(
        "[upstream]\nattempts = 2\n{}{}{}",
        provider("a", &a.url, r#"["*"]"#, 0, ""),
        provider("b", &b.url, r#"["*"]"#, 1, ""),
        provider("c", &c.url, r#"["*"]"#, 2, ""),
    ));
    let r = chat(&proxy, "gpt-5").await;
    assert_eq!(r.status(), 502);
    assert_eq!(provider_of(&r), "b");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("after 2 attempts"),
        "{body}"
    );
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_covers_the_whole_chain() {
    let a = TestUpstream::start("a", Mode::Hang);
    let b = TestUpstream::start("b", Mode::Hang);
    // Each provider would wait 600 s; the chain may take 1 s in all.
    let (_home, proxy) = start(&format!(
        "[upstream]\nfirst_byte_timeout = 1\n{}{}",
        provider("a", &a.url, r#"["*"]"#, 0, "first_byte_timeout = 600"),
        provider("b", &b.url, r#"["*"]"#, 1, "first_byte_timeout = 600"),
    ));
    let r = chat(&proxy, "gpt-5").await;
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.unwrap();
    assert_openai_error(&body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream.first_byte_timeout"),
        "{body}"
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_at_its_own_max_concurrent_is_skipped() {
    let a = TestUpstream::start("a", Mode::Gated);
    let b = TestUpstream::start("b", Mode::Healthy);
    let (_home, proxy) = start(&format!(
        "{}{}",
        provider("a", &a.url, r#"["*"]"#, 0, "max_concurrent = 1"),
        provider("b", &b.url, r#"["*"]"#, 1, ""),
    ));
    let url = proxy.url().to_string();
    let held = tokio::spawn(async move {
        client()
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat_body("gpt-5"))
            .send()
            .await
            .unwrap()
    });
    a.wait_hits(1).await;
    let (_, by, _) = answered_by(chat(&proxy, "gpt-5").await).await;
    assert_eq!(by, "b");
    assert_eq!(provider_health(&proxy, "a").await["in_flight"], 1);
    a.release(1);
    assert_eq!(provider_of(&held.await.unwrap()), "a");
}

#[test]
fn bad_provider_configs_are_refused_naming_the_key() {
    for (config, key) in [
        (
            "[[providers]]\nname = \"Bad Name\"\nurl = \"mock\"\n",
            "providers[0].name",
        ),
        (
            "[[providers]]\nname = \"a\"\nurl = \"mock\"\n[[providers]]\nname = \"a\"\nurl = \"mock\"\n",
            "providers[1].name",
        ),
        (
            "[[providers]]\nname = \"a\"\nurl = \"ftp://x\"\n",
            "providers[0].url",
        ),
        (
            "[[providers]]\nname = \"a\"\nurl = \"mock\"\nmodels = [\"gp*t\"]\n",
            "providers[0].models",
        ),
        (
            "[[providers]]\nname = \"a\"\nurl = \"mock\"\nweight = 0\n",
            "providers[0].weight",
        ),
        ("[routing]\nfailures = 0\n", "routing.failures"),
        ("[routing]\ncooldown = 0\n", "routing.cooldown"),
        ("[aliases]\nx = \"y\"\ny = \"z\"\n", "aliases.x"),
    ] {
        let home = TestHome::new();
        home.config(config);
        let out = crate::support::run("proxy", &home, &["--port", "0"]);
        let err = crate::support::text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}: {err}");
        assert!(err.contains(key), "{config}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_unites_declared_and_discovered_models_and_outlives_a_down_provider() {
    let a = TestUpstream::start("a", Mode::Healthy);
    let d = TestUpstream::start("d", Mode::Healthy);
    let config = |d_url: &str| {
        format!(
            "{}{}",
            provider("a", &a.url, r#"["gpt-5", "gpt-5-*"]"#, 0, ""),
            provider("d", d_url, "[]", 1, ""),
        )
    };
    let home = TestHome::new();
    home.config(&config(&d.url));
    let proxy = InProcess::start(&home, &[]);
    // d is asked for its list in the background; then it serves what it reported.
    until("d's models are listed", || async {
        model_ids(&proxy).await.contains(&"d-model".to_string())
    })
    .await;
    assert_eq!(model_ids(&proxy).await, ["gpt-5", "d-model"]);
    let (_, by, _) = answered_by(chat(&proxy, "d-model").await).await;
    assert_eq!(by, "d");
    let one: Value = client()
        .get(format!("{}/v1/models/d-model", proxy.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["owned_by"], "d");
    let cached: Value = serde_json::from_str(&home.read("cache/models.json")).unwrap();
    assert_eq!(cached["providers"]["d"], json!(["d-model"]));
    drop(proxy);

    // d is down now: after a restart its models still come from the cache.
    home.config(&config(&crate::support::upstream::closed_port_url()));
    let proxy = InProcess::start(&home, &[]);
    assert_eq!(model_ids(&proxy).await, ["gpt-5", "d-model"]);
    let r = chat(&proxy, "d-model").await;
    assert_eq!(r.status(), 502, "routed to d, which is down");
    drop(proxy);

    // A corrupt cache is ignored by the proxy and deleted by doctor.
    home.write("cache/models.json", "{ not json");
    let out = crate::support::run("doctor", &home, &[]);
    let said = crate::support::text(&out.stdout);
    assert!(said.contains("models.json"), "{said}");
    assert!(!home.file("cache/models.json").exists(), "{said}");
}

/// docs/contract.md §17: while every provider of some `models` entry (or alias)
/// is cooling, `/health` says `warn` (HTTP 200) and names them; readiness stays
/// 200, and the models other providers serve still answer.
#[tokio::test(flavor = "multi_thread")]
async fn health_warns_naming_the_models_whose_every_provider_is_cooling() {
    let a = TestUpstream::start("a", Mode::RateLimited(Some(300)));
    let b = TestUpstream::start("b", Mode::Healthy);
    let (_home, proxy) = start(&format!(
        "{}{}[aliases]\nfast = \"gpt-4o\"\nsmart = \"o4-mini\"\n",
        provider("a", &a.url, r#"["gpt-*"]"#, 0, ""),
        provider("b", &b.url, r#"["o4-*"]"#, 0, ""),
    ));
    let h = health(&proxy).await;
    assert_eq!(h["status"], "pass", "{h}");
    assert_eq!(h["cooling_models"], json!([]), "{h}");

    assert_eq!(chat(&proxy, "gpt-4o").await.status(), 429);
    let r = client()
        .get(format!("{}/health", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "warn is still HTTP 200");
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "warn", "{h}");
    assert_eq!(
        h["cooling_models"],
        json!(["gpt-*", "fast (alias of gpt-4o)"]),
        "{h}"
    );
    let ready = client()
        .get(format!("{}/health/ready", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(chat(&proxy, "gpt-4o").await.status(), 503);
    assert_eq!(chat(&proxy, "o4-mini").await.status(), 200);
}
