//! Reload (docs/contract.md §17) of what a running proxy changes live: traces,
//! `[prices]`, `[keys]` settings and the log's format and level, each applied to
//! the next request by SIGHUP or `daemon reload` (exit 0), with a request in
//! flight finishing as it began, and each reload's log line naming what changed.
//! Real `proxy` processes, a real OTLP collector, a real SQLite ledger.

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::http::{Served, read_to_end, read_until};
use crate::support::otlp::{Collector, Mode, SERVER, parse_traceparent};
use crate::support::upstream::{Behaviour, Upstream};
use crate::support::{PATIENCE, Proxy, TestHome, client, eventually, run, text};

const RELOADED: &str = "configuration reloaded and applied to new requests";

/// Sends SIGHUP and waits for the `n`-th reload to be logged; returns its line.
fn sighup(proxy: &Proxy, home: &TestHome, n: usize) -> String {
    proxy.signal(Signal::SIGHUP);
    reloaded(home, n)
}

/// The `n`-th "configuration reloaded" line of the log, once it is there.
fn reloaded(home: &TestHome, n: usize) -> String {
    eventually(&format!("reload #{n} to be logged"), || {
        home.read("logs/proxy.log").matches(RELOADED).count() >= n
    });
    home.read("logs/proxy.log")
        .lines()
        .filter(|line| line.contains(RELOADED))
        .nth(n - 1)
        .unwrap()
        .to_string()
}

fn upstream_toml(url: &str) -> String {
    format!("[upstream]\nurl = \"{url}\"\nattempts = 1\n")
}

fn telemetry_toml(collector: &Collector) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{}\"\n",
        collector.endpoint()
    )
}

async fn chat(server: &impl Served, key: Option<&str>, stream: bool) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&json!({"model": "gpt-5", "stream": stream,
            "messages": [{"role": "user", "content": "hello"}]}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

/// The trace id of the `traceparent` the `i`-th upstream request carried, if any.
fn traced(upstream: &Upstream, i: usize) -> Option<String> {
    let headers = upstream.state.headers.lock().unwrap()[i].clone();
    headers
        .get("traceparent")
        .map(|v| parse_traceparent(v.to_str().unwrap()).0)
}

/// The trace ids of the SERVER spans `collector` received.
fn server_traces(collector: &Collector) -> Vec<String> {
    collector
        .spans()
        .into_iter()
        .filter(|s| s.kind == SERVER)
        .map(|s| s.trace_id)
        .collect()
}

async fn until_spans(what: &str, collector: &Collector, n: usize) {
    crate::support::http::until(what, || async { server_traces(collector).len() >= n }).await;
}

/// A streamed request started before the reload, answered after it.
async fn streamed_across(
    proxy: &Proxy,
    home: &TestHome,
    upstream: &Upstream,
    n: usize,
) -> (String, String) {
    let mut response = chat(proxy, None, true).await;
    assert_eq!(response.status(), 200);
    let first = read_until(&mut response, "data:").await;
    let line = sighup(proxy, home, n);
    upstream.state.release();
    let all = read_to_end(&mut response, first).await;
    assert!(all.contains("[DONE]"), "{all}");
    (all, line)
}

/// A SIGHUP that turns traces on sends the next request's spans to the
/// collector; one that points them elsewhere lets a request in flight end its
/// spans on the collector it began with; one that turns them off stops them
/// (no span, no `traceparent` to the provider). `daemon reload` does it too,
/// and exits 0: nothing needs a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_turns_traces_on_moves_them_and_turns_them_off_for_new_requests() {
    let upstream = Upstream::start(Behaviour::GatedStream);
    let first = Collector::start(Mode::Accept);
    let second = Collector::start(Mode::Accept);
    let home = TestHome::new();
    let plain = upstream_toml(&upstream.url());
    home.config(&plain);
    let proxy = Proxy::start(&home, &[], &[]);

    // Request 0 begins with traces off and ends after a reload turned them on.
    home.config(&format!("{plain}{}", telemetry_toml(&first)));
    let (_, line) = streamed_across(&proxy, &home, &upstream, 1).await;
    assert_eq!(traced(&upstream, 0), None, "begun untraced, stays untraced");
    assert!(
        line.contains("changed: telemetry.otlp_endpoint"),
        "the reload names what changed: {line}"
    );

    // On: request 1 is traced to the first collector, and stays on it although
    // a reload points traces at the second while it streams.
    home.config(&format!("{plain}{}", telemetry_toml(&second)));
    let (_, line) = streamed_across(&proxy, &home, &upstream, 2).await;
    assert!(line.contains("changed: telemetry.otlp_endpoint"), "{line}");
    let one = traced(&upstream, 1).expect("request 1 is traced");
    until_spans("request 1's span at the first collector", &first, 1).await;
    assert_eq!(server_traces(&first), vec![one.clone()]);

    // Request 2: the second collector.
    let mut response = chat(&proxy, None, true).await;
    let first_chunk = read_until(&mut response, "data:").await;
    upstream.state.release();
    read_to_end(&mut response, first_chunk).await;
    let two = traced(&upstream, 2).expect("request 2 is traced");
    until_spans("request 2's span at the second collector", &second, 1).await;
    assert_eq!(server_traces(&second), vec![two]);
    assert_eq!(
        server_traces(&first),
        vec![one],
        "nothing more to the first"
    );

    // Off, through `daemon reload`, with the connections' timeouts and cap:
    // exit 0 (nothing needs a restart), and request 3 has no trace.
    home.config(&format!(
        "{plain}[server]\nkeepalive_timeout = 30\nheader_timeout = 5\nmax_connections = 500\n"
    ));
    let out = run("daemon", &home, &["reload"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(
            "changed: server.header_timeout, server.keepalive_timeout, \
             server.max_connections, telemetry.otlp_endpoint"
        ),
        "{said}"
    );
    let mut response = chat(&proxy, None, true).await;
    let first_chunk = read_until(&mut response, "data:").await;
    upstream.state.release();
    read_to_end(&mut response, first_chunk).await;
    assert_eq!(traced(&upstream, 3), None, "traces are off again");
    assert_eq!(server_traces(&second).len(), 1);
}

/// `proxy keys create NAME --json`: the secret.
fn create_key(home: &TestHome, name: &str) -> String {
    let out = run("proxy", home, &["keys", "create", name, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["key"].as_str().unwrap().to_string()
}

/// The ledger's rows so far: (key, status, cost_usd).
fn ledger(home: &TestHome) -> Vec<(String, i64, f64)> {
    let read = || -> rusqlite::Result<Vec<_>> {
        let conn = rusqlite::Connection::open(home.file("data/usage.db"))?;
        let mut stmt = conn.prepare("SELECT key, status, cost_usd FROM usage ORDER BY rowid")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
    };
    read().unwrap_or_default()
}

fn rows(home: &TestHome, n: usize) -> Vec<(String, i64, f64)> {
    eventually(&format!("{n} ledger rows"), || ledger(home).len() >= n);
    ledger(home)
}

/// `[prices]` and `[keys]` settings apply to the next request (its ledger row is
/// priced with the new price; `require` lets a keyless request in), and the log's
/// format and level change at once: the reload's own line is already JSON, and
/// a debug line appears. A request in flight keeps the price it was admitted
/// with.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_applies_prices_keys_and_log_settings_to_the_next_request() {
    let upstream = Upstream::start(Behaviour::Gated);
    let home = TestHome::new();
    let key = create_key(&home, "alice");
    let plain = upstream_toml(&upstream.url());
    // The upstream reports 5 prompt and 2 completion tokens: 5×1 + 2×2 = 9 µ$.
    let cheap = "[prices]\n\"gpt-5\" = { input = 1.0, output = 2.0 }\n";
    let dear = "[prices]\n\"gpt-5\" = { input = 10.0, output = 20.0 }\n";
    home.config(&format!("{plain}{cheap}"));
    let proxy = Proxy::start(&home, &[], &[]);

    // Request 0 is admitted at the cheap price; the reload to the dear one
    // comes while it waits for the provider.
    let request = tokio::spawn({
        let url = proxy.url.clone();
        let key = key.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::timeout(PATIENCE, upstream.state.arrived.notified())
        .await
        .expect("request 0 reached the provider");
    home.config(&format!("{plain}{dear}"));
    let line = sighup(&proxy, &home, 1);
    assert!(line.contains("changed: prices.gpt-5"), "{line}");
    upstream.state.release();
    assert_eq!(request.await.unwrap(), 200);
    let ledger = rows(&home, 1);
    assert!(
        (ledger[0].2 - 9e-6).abs() < 1e-12,
        "in flight: the price it began with: {ledger:?}"
    );

    // Request 1: the new price.
    let pending = tokio::spawn({
        let url = proxy.url.clone();
        let key = key.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::timeout(PATIENCE, upstream.state.arrived.notified())
        .await
        .expect("request 1 reached the provider");
    upstream.state.release();
    assert_eq!(pending.await.unwrap(), 200);
    let ledger = rows(&home, 2);
    assert!(
        (ledger[1].2 - 9e-5).abs() < 1e-12,
        "the next request: the new price: {ledger:?}"
    );

    // Keys are in force (a key exists): no key, no entry. `require = "never"`
    // lets it in once reloaded, and the log turns JSON at debug level.
    assert_eq!(chat(&proxy, None, false).await.status(), 401);
    let before = home.read("logs/proxy.log");
    assert!(!before.contains("/health"), "no debug line yet: {before}");
    home.config(&format!(
        "{plain}{dear}[keys]\nrequire = \"never\"\n[logs]\nformat = \"json\"\n\
         [features]\nverbose = true\n"
    ));
    let line = sighup(&proxy, &home, 2);
    let doc: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the reload's line is JSON already ({e}): {line}"));
    let message = doc["message"].as_str().unwrap();
    assert!(
        message.contains("changed: features.verbose, keys.require, logs.format"),
        "{message}"
    );
    let response = client()
        .get(format!("{}/health", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually("the debug line of GET /health", || {
        home.read("logs/proxy.log").lines().any(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|doc| doc["level"] == "DEBUG" && doc["route"] == "/health")
        })
    });
    let keyless = tokio::spawn({
        let url = proxy.url.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::timeout(PATIENCE, upstream.state.arrived.notified())
        .await
        .expect("the keyless request reached the provider");
    upstream.state.release();
    assert_eq!(keyless.await.unwrap(), 200, "require = never lets it in");
    assert!(
        !home.read("logs/proxy.log").contains(&key),
        "no secret in the log"
    );
}
