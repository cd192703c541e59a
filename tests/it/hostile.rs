//! Hostile clients and broken upstreams (SPEC §10): every resource either can
//! make the proxy hold is bounded, no secret reaches an output, and no client
//! string forges a log line or grows a metric.

use serde_json::{Value, json};

use crate::support::upstream::closed_port_url;
use crate::support::{Proxy, TestHome, client, run, text};

async fn post_chat(proxy: &Proxy, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .json(body)
        .send()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// secrets

#[tokio::test(flavor = "multi_thread")]
async fn a_password_in_the_upstream_url_is_shown_nowhere() {
    let home = TestHome::new();
    let url = closed_port_url().replace("http://", "http://alice:s3cr3tpw@");
    home.config(&format!("[upstream]\nurl = \"{url}\"\nattempts = 1\n"));
    let mut proxy = Proxy::start(&home, &[], &[]);
    let reply = post_chat(
        &proxy,
        &json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(reply.status(), 502);
    let body = reply.text().await.unwrap();
    assert!(!body.contains("s3cr3tpw"), "{body}");
    assert!(body.contains("***@127.0.0.1"), "{body}");
    let health = client()
        .get(format!("{}/health", proxy.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!health.contains("s3cr3tpw"), "{health}");
    assert!(health.contains("http://***@127.0.0.1"), "{health}");
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.wait().success());
    let log = home.read("logs/proxy.log") + &proxy.stderr_text();
    assert!(log.contains("warden proxy started"), "{log}");
    assert!(!log.contains("s3cr3tpw"), "{log}");
    let out = run("preflight", &home, &["--json"]);
    let shown = text(&out.stdout) + &text(&out.stderr);
    assert!(!shown.contains("s3cr3tpw"), "{shown}");
}

#[test]
fn a_malformed_dotenv_line_is_named_by_number_and_key_never_its_value() {
    let home = TestHome::new();
    home.write(".env", "GOOD=1\nOPENAI_API_KEY=\"sk-live-t0ken\n");
    for (binary, args) in [
        ("proxy", &["--port", "0"][..]),
        ("daemon", &["start"][..]),
        ("watchdog", &["--once"][..]),
        ("preflight", &[][..]),
    ] {
        let out = run(binary, &home, args);
        let shown = text(&out.stdout) + &text(&out.stderr);
        assert!(!out.status.success(), "{binary}: {shown}");
        assert!(!shown.contains("sk-live-t0ken"), "{binary}: {shown}");
        assert!(shown.contains("line 2"), "{binary}: {shown}");
    }
    for log in ["logs/watchdog.log", "logs/proxy.log", "logs/daemon.log"] {
        assert!(!home.read(log).contains("sk-live-t0ken"), "{log}");
    }
}

// ---------------------------------------------------------------------------
// configuration ranges

#[test]
fn a_number_out_of_range_fails_preflight_and_the_proxy_exits_2_naming_the_key() {
    let home = TestHome::new();
    home.config("[server]\nmax_concurrent = 2305843009213693952\n");
    let out = run("proxy", &home, &["--port", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("server.max_concurrent"),
        "{}",
        text(&out.stderr)
    );
    let out = run("preflight", &home, &["--only", "config"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("server.max_concurrent"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_host_that_is_not_an_address_fails_at_load() {
    let home = TestHome::new();
    home.config("[server]\nhost = \"not an address\"\n");
    let out = run("proxy", &home, &["--port", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("server.host"));
}

// ---------------------------------------------------------------------------
// client strings in logs and metrics

#[tokio::test(flavor = "multi_thread")]
async fn a_model_name_cannot_forge_a_log_line_or_grow_the_metrics() {
    let home = TestHome::new();
    let mut proxy = Proxy::start(&home, &[], &[]);
    let forged = "gpt-5\n2026-01-01T00:00:00.000000Z  INFO warden proxy stopped";
    let huge = "m".repeat(2 << 20);
    for model in [forged, huge.as_str()] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let reply = post_chat(&proxy, &body).await;
        assert!(reply.status().is_success() || reply.status().is_client_error());
        reply.bytes().await.unwrap();
    }
    let metrics = client()
        .get(format!("{}/metrics", proxy.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.len() < 64 * 1024, "{} bytes", metrics.len());
    assert!(!metrics.contains("mmmmmmmm"), "a 2 MB label");
    assert!(!metrics.contains("proxy stopped"), "a label with a newline");
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.wait().success());
    let log = home.read("logs/proxy.log");
    let stopped = log
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .skip(2)
                .take(3)
                .eq(["warden", "proxy", "stopped"])
        })
        .count();
    assert_eq!(stopped, 1, "one real stop marker, no forged one:\n{log}");
    assert!(log.lines().all(|l| l.len() < 4096), "a line echoing 2 MB");
}
