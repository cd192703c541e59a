//! Requests to a running gateway (the `proxy` binary or [`super::gateway::InProcess`]).

use std::time::Duration;

use serde_json::Value;

use super::{PATIENCE, Proxy, client};

/// Something serving the API at a base URL (`http://127.0.0.1:PORT`).
pub trait Served {
    fn url(&self) -> &str;
}

impl Served for Proxy {
    fn url(&self) -> &str {
        &self.url
    }
}

pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn health(server: &impl Served) -> Value {
    get_json(&format!("{}/health", server.url())).await
}

pub async fn metrics_text(server: &impl Served) -> String {
    get_text(&format!("{}/metrics", server.url())).await
}

/// The ids `GET /v1/models` lists, in order.
pub async fn model_ids(server: &impl Served) -> Vec<String> {
    let list = get_json(&format!("{}/v1/models", server.url())).await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// POSTs `body` as JSON to `path`.
pub async fn post(server: &impl Served, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", server.url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// POSTs `body` to `/v1/chat/completions`.
pub async fn post_chat(server: &impl Served, body: &Value) -> reqwest::Response {
    post(server, "/v1/chat/completions", body).await
}

/// Polls `check` (async) until it returns true, bounded by PATIENCE.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads a streamed body until its text contains `needle` (bounded by the
/// client's timeout); returns what was read so far.
pub async fn read_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = response.chunk().await.unwrap();
        let chunk = chunk.unwrap_or_else(|| panic!("the body ended before {needle:?}: {text}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// Reads the rest of a streamed body onto `text`.
pub async fn read_to_end(response: &mut reqwest::Response, mut text: String) -> String {
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}
