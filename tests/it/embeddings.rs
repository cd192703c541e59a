//! `POST /v1/embeddings` (docs/contract.md §16): the mock's deterministic vectors in every
//! input shape and encoding, routing by model (aliases, `PROVIDER/MODEL`),
//! failover and cooldown, `api = "anthropic"` providers never asked, the byte
//! limit, metrics and NATS. Upstreams are real axum servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::{Served, health, metrics_text};
use crate::support::{Proxy, TestHome, assert_openai_error, client};

/// A fake OpenAI-compatible server: `POST /v1/embeddings` answers a one-vector
/// list whose `model` says which server answered, or `status` when set.
struct FakeEmbeddings {
    url: String,
    hits: Arc<AtomicUsize>,
    /// The `model` of each request received.
    models: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Fake {
    name: String,
    status: Option<u16>,
    hits: Arc<AtomicUsize>,
    models: Arc<Mutex<Vec<String>>>,
}

async fn answer(State(fake): State<Fake>, body: Bytes) -> Response {
    fake.hits.fetch_add(1, Ordering::SeqCst);
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    fake.models
        .lock()
        .unwrap()
        .push(request["model"].as_str().unwrap_or("").to_string());
    if let Some(status) = fake.status {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            r#"{"error":{"message":"down","type":"server_error","param":null,"code":null}}"#,
        )
            .into_response();
    }
    axum::Json(json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
        "model": format!("from {}", fake.name),
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }))
    .into_response()
}

impl FakeEmbeddings {
    /// Serves on its own thread and runtime, so sync tests can use it too.
    fn start(name: &str, status: Option<u16>) -> FakeEmbeddings {
        let fake = Fake {
            name: name.to_string(),
            status,
            hits: Arc::new(AtomicUsize::new(0)),
            models: Arc::new(Mutex::new(Vec::new())),
        };
        let (hits, models) = (fake.hits.clone(), fake.models.clone());
        let app = Router::new()
            .route("/v1/embeddings", post(answer))
            // Anything else (a Messages API call) is counted too.
            .fallback(post(answer))
            .with_state(fake);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        FakeEmbeddings { url, hits, models }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn models(&self) -> Vec<String> {
        self.models.lock().unwrap().clone()
    }
}

fn provider(name: &str, url: &str, api: &str, models: &str, priority: u32) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nurl = \"{url}\"\napi = \"{api}\"\nmodels = {models}\npriority = {priority}\n\n"
    )
}

fn start(config: &str) -> (TestHome, InProcess) {
    let home = TestHome::new();
    home.config(config);
    let proxy = InProcess::start(&home, &[]);
    (home, proxy)
}

async fn embed(proxy: &impl Served, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/embeddings", proxy.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn provider_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-warden-provider")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn floats(embedding: &Value) -> Vec<f32> {
    embedding
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn decode_base64(embedding: &Value) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(embedding.as_str().unwrap())
        .unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mock_answers_deterministic_unit_vectors_in_every_input_shape_and_encoding() {
    let (_home, proxy) = start("");
    // A string: one vector of 1536 dimensions, unit length; usage counts words.
    let r = embed(
        &proxy,
        json!({"model": "text-embedding-3-small", "input": "hello brave world"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(provider_of(&r), "default");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 3);
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    let hello = floats(&body["data"][0]["embedding"]);
    assert_eq!(hello.len(), 1536);
    let norm: f64 = hello
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");

    // A list of strings, tokens, a list of token arrays: one vector each, in order.
    let r = embed(
        &proxy,
        json!({"model": "m", "input": ["hello brave world", "other"]}),
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(
        floats(&body["data"][0]["embedding"]),
        hello,
        "same input, same vector"
    );
    assert_ne!(floats(&body["data"][1]["embedding"]), hello);
    let r = embed(&proxy, json!({"model": "m", "input": [1, 2, 3]})).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let tokens = floats(&body["data"][0]["embedding"]);
    let r = embed(&proxy, json!({"model": "m", "input": [[1, 2, 3], [4]]})).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(floats(&body["data"][0]["embedding"]), tokens);

    // base64: the same numbers, little-endian float32.
    let r = embed(
        &proxy,
        json!({"model": "m", "input": "hello brave world", "encoding_format": "base64"}),
    )
    .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(decode_base64(&body["data"][0]["embedding"]), hello);

    // dimensions: shorter, still unit length.
    let r = embed(
        &proxy,
        json!({"model": "m", "input": "x", "dimensions": 256}),
    )
    .await;
    let body: Value = r.json().await.unwrap();
    let short = floats(&body["data"][0]["embedding"]);
    assert_eq!(short.len(), 256);
    let norm: f64 = short
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");

    // The same input gives the same vector in another process (the binary).
    let home = TestHome::new();
    let other = Proxy::start(&home, &[], &[]);
    let r = embed(&other, json!({"model": "m", "input": "hello brave world"})).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(floats(&body["data"][0]["embedding"]), hello);

    // The route is counted under its own label.
    let metrics = metrics_text(&proxy).await;
    assert!(metrics.contains("route=\"/v1/embeddings\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_embeddings_requests_are_400_naming_the_field_and_big_ones_413() {
    let home = TestHome::new();
    home.config("[server]\nmax_body_bytes = 4096\n");
    let proxy = InProcess::start(&home, &[]);
    for (body, field) in [
        (json!({"model": "m"}), "input"),
        (json!({"model": "m", "input": null}), "input"),
        (json!({"model": "m", "input": 5}), "input"),
        (json!({"model": "m", "input": []}), "input"),
        (
            json!({"model": "m", "input": "x", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": "m", "input": "x", "dimensions": 100000}),
            "dimensions",
        ),
        (
            json!({"model": "m", "input": "x", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!({"model": 5, "input": "x"}), "model"),
        (json!({"input": "x"}), "model"),
    ] {
        let r = embed(&proxy, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let error: Value = r.json().await.unwrap();
        assert_openai_error(&error);
        assert_eq!(error["error"]["param"], field, "{body}: {error}");
    }
    let r = embed(&proxy, json!({"model": "m", "input": "x ".repeat(4000)})).await;
    assert_eq!(r.status(), 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_are_routed_by_model_alias_and_provider_slash_model() {
    let a = FakeEmbeddings::start("a", None);
    let b = FakeEmbeddings::start("b", None);
    let (_home, proxy) = start(&format!(
        "{}{}[aliases]\nsmall = \"text-embedding-3-small\"\n",
        provider("a", &a.url, "chat", r#"["text-embedding-3-*"]"#, 0),
        provider("b", &b.url, "responses", r#"["nomic-*"]"#, 0),
    ));
    let r = embed(&proxy, json!({"model": "small", "input": "x"})).await;
    assert_eq!((r.status().as_u16(), provider_of(&r).as_str()), (200, "a"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["model"], "from a", "the provider's answer, as it is");
    assert_eq!(a.models(), ["text-embedding-3-small"]);
    // A `responses` provider serves embeddings at its /embeddings too.
    let r = embed(&proxy, json!({"model": "nomic-embed", "input": "x"})).await;
    assert_eq!(provider_of(&r), "b");
    let r = embed(&proxy, json!({"model": "b/anything", "input": "x"})).await;
    assert_eq!(provider_of(&r), "b");
    assert_eq!(b.models(), ["nomic-embed", "anything"]);
    // No candidate: 404 model_not_found.
    let r = embed(&proxy, json!({"model": "gpt-5", "input": "x"})).await;
    assert_eq!(r.status(), 404);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_fail_over_before_the_first_byte_and_cool_the_failing_provider() {
    let broken = FakeEmbeddings::start("broken", Some(500));
    let backup = FakeEmbeddings::start("backup", None);
    let (_home, proxy) = start(&format!(
        "{}{}[routing]\nfailures = 2\ncooldown = 600\n",
        provider("broken", &broken.url, "chat", r#"["*"]"#, 0),
        provider("backup", &backup.url, "chat", r#"["*"]"#, 1),
    ));
    for _ in 0..3 {
        let r = embed(&proxy, json!({"model": "e", "input": "x"})).await;
        assert_eq!(
            (r.status().as_u16(), provider_of(&r).as_str()),
            (200, "backup")
        );
    }
    // Two failures cooled it: the third request did not try it.
    assert_eq!(broken.hits(), 2);
    assert_eq!(backup.hits(), 3);
    let report = health(&proxy).await;
    assert_eq!(
        report["providers"]["broken"]["state"], "cooling",
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_providers_are_never_asked_for_embeddings() {
    let claude = FakeEmbeddings::start("claude", None);
    let openai = FakeEmbeddings::start("openai", None);
    let (_home, proxy) = start(&format!(
        "{}{}",
        provider("claude", &claude.url, "anthropic", r#"["*"]"#, 0),
        provider("openai", &openai.url, "chat", r#"["text-embedding-*"]"#, 1),
    ));
    // The anthropic provider is first for every model, but not a candidate here.
    let r = embed(
        &proxy,
        json!({"model": "text-embedding-3-large", "input": "x"}),
    )
    .await;
    assert_eq!(
        (r.status().as_u16(), provider_of(&r).as_str()),
        (200, "openai")
    );
    // A model only the anthropic provider serves: 404 saying why.
    let r = embed(&proxy, json!({"model": "claude-sonnet-4", "input": "x"})).await;
    assert_eq!(r.status(), 404);
    let error: Value = r.json().await.unwrap();
    assert_openai_error(&error);
    assert_eq!(error["error"]["code"], "model_not_found");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("do not serve embeddings") && message.contains("anthropic"),
        "{message}"
    );
    assert_eq!(claude.hits(), 0);
}
