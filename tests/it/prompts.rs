//! The prompt cache as an operator meets it: a prompt server that goes away,
//! a slow one, a corrupt cache, a digest that does not match, `/health` and
//! `/metrics`, and `proxy prompts status|refresh|clear` without a proxy.

use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::Served;
use crate::support::prompt_server::{PromptMode, PromptServer, remote_sha256, remote_text};
use crate::support::responses_upstream::{
    Answer, ResponsesUpstream, TEXT, health, metrics_text, post, responses_config, until,
};
use crate::support::{TestHome, bin, client};

fn chat() -> Value {
    json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]})
}

/// Sends a chat request and returns what the upstream received as `instructions`.
async fn instructions_sent(proxy: &impl Served, upstream: &ResponsesUpstream) -> String {
    let r = post(proxy, "/v1/chat/completions", &chat()).await;
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], TEXT);
    upstream.last_body()["instructions"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn prompt_source(proxy: &impl Served, name: &str) -> String {
    health(proxy).await["prompts"][name]["source"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// `proxy --home HOME prompts ARGS…`: exit code, stdout.
fn prompts_cli(home: &TestHome, args: &[&str]) -> (i32, String) {
    let out = bin("proxy")
        .arg("--home")
        .arg(home.path())
        .arg("prompts")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_prompt_server_gone_and_the_ttl_passed_health_says_stale_cache_and_chat_works() {
    let upstream = ResponsesUpstream::start(Answer::Text);
    let prompts = PromptServer::start(PromptMode::Up);
    let home = TestHome::new();
    home.config(&responses_config(&upstream.url(), &prompts, "").replace("ttl = 86400", "ttl = 1"));
    let proxy = InProcess::start(&home, &[]);
    until("the prompt is fetched", || async {
        prompt_source(&proxy, "base_instructions").await == "cache"
    })
    .await;
    assert_eq!(
        instructions_sent(&proxy, &upstream).await,
        remote_text("base_instructions")
    );

    prompts.set_mode(PromptMode::Down);
    until("the cached copy expires", || async {
        prompt_source(&proxy, "base_instructions").await == "stale-cache"
    })
    .await;
    let r = client()
        .get(format!("{}/health", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "stale prompts are a warning, not a failure"
    );
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "warn", "{h}");
    assert_eq!(h["prompts"]["base_instructions"]["fresh"], false);
    // Chat still works, with the expired copy; its background refresh fails.
    assert_eq!(
        instructions_sent(&proxy, &upstream).await,
        remote_text("base_instructions")
    );
    until("the failed refresh is counted", || async {
        metrics_text(&proxy)
            .await
            .contains("warden_prompt_fetch_failures{prompt=\"base_instructions\"} 1")
    })
    .await;

    // Restarted with the source still gone: served from the disk copy at once.
    drop(proxy);
    let proxy = InProcess::start(&home, &[]);
    assert_eq!(
        prompt_source(&proxy, "base_instructions").await,
        "stale-cache"
    );
    assert_eq!(
        instructions_sent(&proxy, &upstream).await,
        remote_text("base_instructions")
    );
    assert_eq!(health(&proxy).await["status"], "warn");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_cache_is_survived() {
    let upstream = ResponsesUpstream::start(Answer::Text);
    let prompts = PromptServer::start(PromptMode::Down);
    let home = TestHome::new();
    home.config(&responses_config(&upstream.url(), &prompts, ""));
    home.write("cache/prompts/metadata.json", "{\"prompts\": {\"base_instr");
    home.write("cache/prompts/base_instructions.md", "\u{0}\u{1}garbage");

    // Source down too: the built-in text, a warning, and chat works.
    let proxy = InProcess::start(&home, &[]);
    assert_eq!(
        instructions_sent(&proxy, &upstream).await,
        warden::prompts::builtin_prompt("base_instructions")
    );
    let h = health(&proxy).await;
    assert_eq!(
        h["prompts"]["base_instructions"]["source"], "builtin",
        "{h}"
    );
    assert_eq!(h["status"], "warn");
    drop(proxy);

    // Source back: the corrupt copy is replaced by a good one.
    prompts.set_mode(PromptMode::Up);
    let proxy = InProcess::start(&home, &[]);
    assert_eq!(
        instructions_sent(&proxy, &upstream).await,
        remote_text("base_instructions")
    );
    until("the cache is repaired", || async {
        health(&proxy).await["status"] == "pass"
    })
    .await;
    let meta: Value = serde_json::from_str(&home.read("cache/prompts/metadata.json")).unwrap();
    assert_eq!(
        meta["prompts"]["base_instructions"]["sha256"],
        remote_sha256("base_instructions")
    );
    assert_eq!(
        home.read("cache/prompts/base_instructions.md"),
        remote_text("base_instructions")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_with_the_wrong_digest_is_refused_and_never_cached() {
    let upstream = ResponsesUpstream::start(Answer::Text);
    let prompts = PromptServer::start(PromptMode::Up);
    let home = TestHome::new();
    let local = home.file("local-prompt.md");
    std::fs::write(&local, "LOCAL FALLBACK PROMPT\n").unwrap();
    let config = responses_config(&upstream.url(), &prompts, "").replace(
        &format!("url = \"{}\"\n", prompts.url("base_instructions")),
        &format!(
            "url = \"{}\"\nsha256 = [\"{}\"]\nfile = \"{}\"\n",
            prompts.url("base_instructions"),
            "0".repeat(64),
            local.display()
        ),
    );
    assert!(config.contains("sha256"), "{config}");
    home.config(&config);

    let proxy = InProcess::start(&home, &[]);
    assert_eq!(
        instructions_sent(&proxy, &upstream).await,
        "LOCAL FALLBACK PROMPT\n"
    );
    assert!(prompts.hits() >= 1, "it was fetched");
    let h = health(&proxy).await;
    assert_eq!(h["prompts"]["base_instructions"]["source"], "file", "{h}");
    assert!(
        !home.file("cache/prompts/base_instructions.md").exists(),
        "refused content is never cached"
    );
    drop(proxy);

    let (code, out) = prompts_cli(&home, &["refresh", "--json"]);
    assert_eq!(code, 1, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["ok"], false);
    let base = &doc["prompts"][0];
    assert_eq!(base["name"], "base_instructions");
    assert_eq!(base["result"], "failed");
    assert!(
        base["error"].as_str().unwrap().contains("allow-list"),
        "{base}"
    );
    assert_eq!(
        doc["prompts"][1]["result"], "updated",
        "the other prompt is fine"
    );

    // The right digest is accepted.
    home.config(&config.replace(&"0".repeat(64), &remote_sha256("base_instructions")));
    let (code, out) = prompts_cli(&home, &["refresh"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("base_instructions"), "{out}");
    assert!(out.contains("updated"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_prompt_server_does_not_hold_up_readiness() {
    let upstream = ResponsesUpstream::start(Answer::Text);
    let prompts = PromptServer::start(PromptMode::Slow);
    let home = TestHome::new();
    home.config(&responses_config(&upstream.url(), &prompts, ""));
    let proxy = InProcess::start(&home, &[]);
    until("the prompt fetch is under way", || async {
        prompts.hits() >= 1
    })
    .await;
    let r = client()
        .get(format!("{}/health/ready", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "ready while the prompt fetch hangs");
    // Tried and not yet failed: the fetch was still under way after readiness
    // answered (it can only end by prompts.fetch_timeout, 3 s).
    let m = metrics_text(&proxy).await;
    assert!(
        m.contains("warden_prompt_fetch_attempts{prompt=\"base_instructions\"} 1")
            && m.contains("warden_prompt_fetch_failures{prompt=\"base_instructions\"} 0"),
        "{m}"
    );
    let h = health(&proxy).await;
    assert_eq!(
        h["prompts"]["base_instructions"]["source"], "builtin",
        "{h}"
    );
    assert_eq!(h["status"], "warn");
    // A request waits at most for that first fetch, then gets the fallback.
    assert_eq!(
        instructions_sent(&proxy, &upstream).await,
        warden::prompts::builtin_prompt("base_instructions")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_cli_works_without_a_running_proxy() {
    let prompts = PromptServer::start(PromptMode::Up);
    let home = TestHome::new();
    home.config(&responses_config("http://127.0.0.1:9/v1", &prompts, ""));

    let (code, out) = prompts_cli(&home, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["prompts"].as_array().unwrap().len(), 2);
    assert!(
        doc["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["source"] == "builtin"),
        "{doc}"
    );

    let (code, out) = prompts_cli(&home, &["refresh", "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["prompts"][0]["result"], "updated");

    let (code, out) = prompts_cli(&home, &["--json", "status"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    let base = &doc["prompts"][0];
    assert_eq!(base["name"], "base_instructions");
    assert_eq!(base["source"], "cache");
    assert_eq!(base["fresh"], true);
    assert_eq!(base["sha256"], remote_sha256("base_instructions"));
    let (code, out) = prompts_cli(&home, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("base_instructions"), "{out}");
    assert!(out.contains("cache") && out.contains("(fresh)"), "{out}");

    // A failed refresh: exit 1, and the cached copy is kept.
    prompts.set_mode(PromptMode::Down);
    let (code, out) = prompts_cli(&home, &["refresh"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert_eq!(
        home.read("cache/prompts/base_instructions.md"),
        remote_text("base_instructions")
    );

    let (code, out) = prompts_cli(&home, &["clear", "--json"]);
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["removed"], 3, "two prompts and metadata.json");
    assert!(!home.file("cache/prompts/metadata.json").exists());
    let (_, out) = prompts_cli(&home, &["status", "--json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["prompts"][0]["source"], "builtin");
    let (code, out) = prompts_cli(&home, &["clear"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("removed 0 files"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_mock_setup_neither_fetches_nor_reports_prompts() {
    let home = TestHome::new();
    let proxy = InProcess::start(&home, &[]);
    let h = health(&proxy).await;
    assert_eq!(h["prompts"], json!({}));
    assert_eq!(h["status"], "pass");
    assert!(
        !metrics_text(&proxy)
            .await
            .contains("warden_prompt_cache_age_seconds{")
    );
    assert!(!home.file("cache/prompts/metadata.json").exists());
}
