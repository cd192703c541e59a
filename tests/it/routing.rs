//! Providers and routing (SPEC §11): routing by model, failover before the
//! first byte, passive health (cooldown, half-open probe), the provider header,
//! `/health` and `/metrics` per provider, the model catalog. Upstreams are real
//! axum servers: healthy, failing, rate-limiting with `Retry-After`.

use serde_json::{Value, json};

use crate::support::upstream::{Behaviour, Upstream};
use crate::support::{Proxy, TestHome, client};

fn chat_body(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn post_chat(proxy: &Proxy, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .json(body)
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

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_section_alone_is_the_provider_named_default() {
    let upstream = Upstream::start(Behaviour::Fast);
    let home = TestHome::new();
    home.config(&format!("[upstream]\nurl = \"{}\"\n", upstream.url()));
    let proxy = Proxy::start(&home, &[], &[]);
    let r = post_chat(&proxy, &chat_body("any-model-at-all", "hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(provider_of(&r), "default");
    // The mock is a provider too.
    let mock_home = TestHome::new();
    let mock = Proxy::start(&mock_home, &[], &[]);
    let r = post_chat(&mock, &chat_body("gpt-5", "hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(provider_of(&r), "default");
}
