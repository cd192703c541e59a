//! Pass-through of every other `/v1/` path to providers with `passthrough =
//! true` (docs/contract.md §16): a multipart audio upload routed by its `model` field and
//! its streamed answer relayed, JSON bodies routed by model with failover,
//! query strings, the provider's key in place of the client's, headers, the
//! upload limit, the 404 naming the setting, and a 50 MB download through a
//! proxy process whose RSS never grows by more than a few MiB.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::{Served, metrics_text};
use crate::support::prompt_server::serve;
use crate::support::{PATIENCE, Proxy, TestHome, assert_openai_error, client};

/// What a fake provider saw and how it behaves.
#[derive(Clone)]
struct Fake {
    name: &'static str,
    fail: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    /// Headers and the path (with query) of each request.
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    /// The bodies it received (multipart and JSON ones).
    bodies: Arc<Mutex<Vec<Bytes>>>,
    /// `POST /v1/uploads/held`: told when a body is in, answers once let go.
    arrived: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Notify>,
}

const BIG: u64 = 50 * 1024 * 1024;

async fn record(fake: &Fake, request: Request) -> Bytes {
    fake.hits.fetch_add(1, Ordering::SeqCst);
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    fake.seen
        .lock()
        .unwrap()
        .push((path, request.headers().clone()));
    let body = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    fake.bodies.lock().unwrap().push(body.clone());
    body
}

async fn transcriptions(State(fake): State<Fake>, request: Request) -> Response {
    let body = record(&fake, request).await;
    // The transcription streamed back (what `stream=true` answers).
    let events = [
        json!({"type": "transcript.text.delta", "delta": "hello"}),
        json!({"type": "transcript.text.done", "text": format!("hello ({} bytes)", body.len())}),
    ];
    let frames = futures_util::stream::iter(
        events.map(|e| Ok::<_, std::io::Error>(Bytes::from(format!("data: {e}\n\n")))),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("x-upstream-note", "kept")
        .header("keep-alive", "timeout=5")
        .body(Body::from_stream(frames))
        .unwrap()
}

async fn images(State(fake): State<Fake>, request: Request) -> Response {
    record(&fake, request).await;
    if fake.fail.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    axum::Json(
        json!({"created": 1, "data": [{"url": "https://example.invalid/x.png"}], "by": fake.name}),
    )
    .into_response()
}

async fn files(State(fake): State<Fake>, request: Request) -> Response {
    record(&fake, request).await;
    axum::Json(json!({"object": "list", "data": [], "by": fake.name})).into_response()
}

async fn sink(State(fake): State<Fake>, request: Request) -> Response {
    let body = record(&fake, request).await;
    axum::Json(json!({"bytes": body.len()})).into_response()
}

async fn held(State(fake): State<Fake>, request: Request) -> Response {
    let body = record(&fake, request).await;
    fake.arrived.notify_one();
    fake.gate.notified().await;
    axum::Json(json!({"bytes": body.len()})).into_response()
}

/// 50 MB, generated as it is sent (64 KiB at a time).
async fn big() -> Response {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let count = BIG / chunk.len() as u64;
    let frames =
        futures_util::stream::iter(0..count).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", BIG.to_string())
        .body(Body::from_stream(frames))
        .unwrap()
}

fn fake(name: &'static str) -> (Fake, String) {
    let fake = Fake {
        name,
        fail: Arc::new(AtomicBool::new(false)),
        hits: Arc::new(AtomicUsize::new(0)),
        seen: Arc::new(Mutex::new(Vec::new())),
        bodies: Arc::new(Mutex::new(Vec::new())),
        arrived: Arc::new(tokio::sync::Notify::new()),
        gate: Arc::new(tokio::sync::Notify::new()),
    };
    let app = Router::new()
        .route("/v1/uploads/held", post(held))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/images/generations", post(images))
        .route("/v1/files", get(files))
        .route("/v1/uploads/sink", post(sink))
        .route("/v1/files/big/content", get(big))
        .with_state(fake.clone());
    let url = format!("http://{}/v1", serve(app));
    (fake, url)
}

fn provider(name: &str, url: &str, priority: u32, extra: &str) -> String {
    format!("[[providers]]\nname = \"{name}\"\nurl = \"{url}\"\npriority = {priority}\n{extra}\n")
}

fn start(config: &str, env: &[(&str, &str)]) -> (TestHome, InProcess) {
    let home = TestHome::new();
    home.config(config);
    let proxy = InProcess::start(&home, env);
    (home, proxy)
}

fn multipart(model: &str, audio: &[u8]) -> (String, Vec<u8>) {
    let boundary = "wardenTestBoundary7";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\
             Content-Type: audio/mpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_audio_upload_is_routed_by_its_model_field_and_its_answer_streamed_back() {
    let (chat_only, chat_url) = fake("chat-only");
    let (audio, audio_url) = fake("audio");
    let (_home, proxy) = start(
        &format!(
            "{}{}[aliases]\nears = \"whisper-1\"\n",
            // First by priority, but not a pass-through provider.
            provider("chat-only", &chat_url, 0, ""),
            provider(
                "audio",
                &audio_url,
                1,
                "passthrough = true\napi_key_env = \"AUDIO_KEY\"\nmodels = [\"whisper-*\", \"gpt-4o-*\"]"
            ),
        ),
        &[("AUDIO_KEY", "sk-provider-secret")],
    );
    // A megabyte of "audio", sent chunked (no content-length), by an alias.
    let clip: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (content_type, form) = multipart("ears", &clip);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        form.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = client()
        .post(format!(
            "{}/v1/audio/transcriptions?timestamp=word",
            proxy.url()
        ))
        .header("content-type", content_type)
        .header("authorization", "Bearer sk-client-must-not-pass")
        .header("cookie", "session=client")
        .header("x-request-id", "req-audio-1")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-warden-provider"], "audio");
    assert_eq!(r.headers()["x-upstream-note"], "kept");
    assert!(
        r.headers().get("keep-alive").is_none(),
        "hop-by-hop header relayed"
    );
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    // The alias went upstream as its target, every other byte as sent.
    let (_, expected) = multipart("whisper-1", &clip);
    assert!(
        text.contains(&format!("hello ({} bytes)", expected.len())),
        "{text}"
    );
    assert!(text.contains("transcript.text.delta"), "{text}");
    assert_eq!(audio.bodies.lock().unwrap()[0], Bytes::from(expected));
    let (path, headers) = audio.seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/v1/audio/transcriptions?timestamp=word");
    assert_eq!(headers["authorization"], "Bearer sk-provider-secret");
    assert!(headers.get("cookie").is_none());
    assert_eq!(headers["x-request-id"], "req-audio-1");
    assert_eq!(chat_only.hits.load(Ordering::SeqCst), 0);
    // Counted under one route label.
    assert!(metrics_text(&proxy).await.contains("route=\"/v1/*\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_bodies_are_routed_by_model_and_fail_over_and_the_rest_goes_to_the_first_by_priority()
{
    let (first, first_url) = fake("first");
    let (second, second_url) = fake("second");
    let (_home, proxy) = start(
        &format!(
            "{}{}",
            provider(
                "first",
                &first_url,
                0,
                "passthrough = true\nmodels = [\"dall-e-*\"]"
            ),
            provider("second", &second_url, 1, "passthrough = true"),
        ),
        &[],
    );
    let generate = |model: &str| {
        client()
            .post(format!("{}/v1/images/generations", proxy.url()))
            .json(&json!({"model": model, "prompt": "a cat"}))
            .send()
    };
    // By model: dall-e-3 is first's; gpt-image-1 only second serves.
    let r = generate("dall-e-3").await.unwrap();
    assert_eq!(r.headers()["x-warden-provider"], "first");
    let r = generate("gpt-image-1").await.unwrap();
    assert_eq!(r.headers()["x-warden-provider"], "second");
    // PROVIDER/MODEL: the model is rewritten in the body.
    let r = generate("second/dall-e-2").await.unwrap();
    assert_eq!(r.headers()["x-warden-provider"], "second");
    let sent: Value =
        serde_json::from_slice(second.bodies.lock().unwrap().last().unwrap()).unwrap();
    assert_eq!(sent, json!({"model": "dall-e-2", "prompt": "a cat"}));
    // A JSON body can be sent again: a failing provider fails over.
    first.fail.store(true, Ordering::SeqCst);
    let r = generate("dall-e-3").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-warden-provider"], "second");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["by"], "second");
    // No model: the first pass-through provider by priority, query kept.
    first.fail.store(false, Ordering::SeqCst);
    let r = client()
        .get(format!("{}/v1/files?purpose=batch&limit=2", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-warden-provider"], "first");
    assert_eq!(
        first.seen.lock().unwrap().last().unwrap().0,
        "/v1/files?purpose=batch&limit=2"
    );
    // A model no pass-through provider serves: 404.
    let (_home2, strict) = start(
        &provider(
            "first",
            &first_url,
            0,
            "passthrough = true\nmodels = [\"dall-e-*\"]",
        ),
        &[],
    );
    let r = client()
        .post(format!("{}/v1/images/generations", strict.url()))
        .json(&json!({"model": "gpt-image-1", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_passthrough_provider_other_paths_are_404_naming_the_setting() {
    let (up, url) = fake("up");
    let (_home, proxy) = start(&provider("up", &url, 0, ""), &[]);
    let r = client()
        .post(format!("{}/v1/audio/speech", proxy.url()))
        .json(&json!({"model": "tts-1", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let error: Value = r.json().await.unwrap();
    assert_openai_error(&error);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("passthrough = true"),
        "{error}"
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_upload_past_max_body_bytes_is_413() {
    let (up, url) = fake("up");
    let (_home, proxy) = start(
        &format!(
            "[server]\nmax_body_bytes = 100000\n\n{}",
            provider("up", &url, 0, "passthrough = true")
        ),
        &[],
    );
    // Under the limit: passed on whole.
    let r = client()
        .post(format!("{}/v1/uploads/sink", proxy.url()))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 90_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["bytes"], 90_000);
    // Over it, chunked (no length announced): 413 once the count passes it. A
    // raw client, which reads the answer even though the proxy stops reading
    // the body (an HTTP client library may fail on the unread rest first).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = proxy.url().trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut request = format!(
        "POST /v1/uploads/sink HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/octet-stream\r\n\
         transfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..12 {
        request.extend_from_slice(format!("{:x}\r\n", 10_000).as_bytes());
        request.extend_from_slice(&[7u8; 10_000]);
        request.extend_from_slice(b"\r\n");
    }
    socket.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let error: Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_openai_error(&error);
    // The provider never got a whole body over the limit.
    assert!(up.bodies.lock().unwrap().iter().all(|b| b.len() <= 100_000));
}

/// The resident set of a process, from /proc.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_50_mb_download_passes_through_without_raising_the_proxys_rss_by_more_than_a_few_mib() {
    let (_up, url) = fake("files");
    let home = TestHome::new();
    home.config(&provider("files", &url, 0, "passthrough = true"));
    let proxy = Proxy::start(&home, &[], &[]);
    let download = || async {
        let r = client()
            .get(format!("{}/v1/files/big/content", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-warden-provider"], "files");
        let mut body = r.bytes_stream();
        let (mut total, mut peak) = (0u64, 0u64);
        while let Some(chunk) = tokio::time::timeout(PATIENCE, body.next())
            .await
            .expect("the download kept coming")
        {
            total += chunk.unwrap().len() as u64;
            peak = peak.max(rss_bytes(proxy.pid()));
        }
        (total, peak)
    };
    // A small pass-through first warms the proxy (its client pool, buffers).
    let r = client()
        .get(format!("{}/v1/files", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = rss_bytes(proxy.pid());
    let (total, peak) = download().await;
    assert_eq!(total, BIG);
    let grew = peak.saturating_sub(before);
    eprintln!(
        "50 MB pass-through: proxy RSS {} KiB before, peak {} KiB (+{} KiB)",
        before >> 10,
        peak >> 10,
        grew >> 10
    );
    assert!(
        grew < 8 << 20,
        "RSS grew by {} KiB during a 50 MB pass-through (from {} KiB)",
        grew >> 10,
        before >> 10
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_kind_passes_through_with_its_own_way_of_sending_the_key() {
    let (openai, openai_url) = fake("openai");
    let (responses, responses_url) = fake("responses");
    let (claude, claude_url) = fake("claude");
    let (_home, proxy) = start(
        &format!(
            "{}{}{}",
            provider(
                "openai",
                &openai_url,
                0,
                "passthrough = true\napi = \"chat\"\napi_key_env = \"K1\"\nmodels = [\"dall-e-*\"]"
            ),
            provider(
                "responses",
                &responses_url,
                0,
                "passthrough = true\napi = \"responses\"\napi_key_env = \"K2\"\nmodels = [\"gpt-image-*\"]"
            ),
            provider(
                "claude",
                &claude_url,
                0,
                "passthrough = true\napi = \"anthropic\"\napi_key_env = \"K3\"\nmodels = [\"claude-*\"]"
            ),
        ),
        &[("K1", "sk-one"), ("K2", "sk-two"), ("K3", "sk-ant-three")],
    );
    for (model, by) in [
        ("dall-e-3", "openai"),
        ("gpt-image-1", "responses"),
        ("claude-x", "claude"),
    ] {
        let r = client()
            .post(format!("{}/v1/images/generations", proxy.url()))
            .header("authorization", "Bearer sk-client")
            .json(&json!({"model": model, "prompt": "p"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(r.headers()["x-warden-provider"], by);
    }
    let headers = |fake: &Fake| fake.seen.lock().unwrap()[0].1.clone();
    assert_eq!(headers(&openai)["authorization"], "Bearer sk-one");
    assert_eq!(headers(&responses)["authorization"], "Bearer sk-two");
    // The Anthropic way: x-api-key and anthropic-version, no bearer at all.
    let claude_headers = headers(&claude);
    assert_eq!(claude_headers["x-api-key"], "sk-ant-three");
    assert!(claude_headers.get("anthropic-version").is_some());
    assert!(claude_headers.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_upload_gives_its_bytes_back_to_max_body_memory_as_they_are_handed_on() {
    let (up, url) = fake("up");
    // Room for one whole body in memory, no more.
    let (_home, proxy) = start(
        &format!(
            "[server]\nmax_body_bytes = 100000\nmax_body_memory = 100000\nbody_timeout = 5\n\n{}",
            provider("up", &url, 0, "passthrough = true")
        ),
        &[],
    );
    let upload = |path: &'static str| {
        let url = format!("{}/v1/uploads/{path}", proxy.url());
        async move {
            client()
                .post(url)
                .header("content-type", "application/octet-stream")
                .body(vec![1u8; 90_000])
                .send()
                .await
                .unwrap()
        }
    };
    // The first upload is all with the provider, which has not answered yet.
    let first = tokio::spawn(upload("held"));
    tokio::time::timeout(PATIENCE, up.arrived.notified())
        .await
        .expect("the first upload reached the provider");
    // A second one still finds room: the first one's bytes left the proxy.
    let second = upload("sink").await;
    assert_eq!(second.status(), 200);
    up.gate.notify_one();
    let first = tokio::time::timeout(PATIENCE, first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), 200);
}
