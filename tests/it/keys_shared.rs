//! One limit per key across hosts (docs/contract.md §14, "Across hosts"): three
//! proxies sharing a real nats-server with JetStream (`keys.shared = true`)
//! enforce one rpm, one budget and one revocation between them; a proxy
//! killed mid-request gives its slot back, one still running keeps it; NATS stopping follows
//! `keys.shared_grace` and `keys.fail_closed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warden::keys::shared::{HOLD_TTL, RENEW_EVERY};

use crate::support::gateway::InProcess;
use crate::support::http::{Served, health};
use crate::support::nats::NatsServer;
use crate::support::upstream::{Behaviour, Upstream};
use crate::support::{PATIENCE, Proxy, TestHome, client, run, text};

fn shared_home(nats: &NatsServer, upstream: &str, keys_extra: &str) -> TestHome {
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nmax_concurrent = 1000\n\n[upstream]\nurl = \"{upstream}\"\nattempts = 1\n\n[nats]\nurl = \"{}\"\n\n[keys]\nshared = true\n{keys_extra}",
        nats.url()
    ));
    home
}

/// `proxy keys create NAME ARGS --json` (writes the bucket): the secret.
fn create_key(home: &TestHome, name: &str, args: &[&str]) -> String {
    let mut all = vec!["keys", "create", name, "--json"];
    all.extend_from_slice(args);
    let out = run("proxy", home, &all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["key"].as_str().unwrap().to_string()
}

/// Waits until `/health` shows `keys.shared == state` and `count` active keys.
async fn wait_shared(server: &impl Served, state: &str, count: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let report = health(server).await;
        if report["keys"]["shared"] == state && report["keys"]["count"] == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "keys.shared never became {state} with {count} keys: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn chat_body() -> Value {
    json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hello there"}],
           "max_tokens": 16})
}

async fn chat(url: &str, key: &str) -> reqwest::Response {
    client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body())
        .send()
        .await
        .unwrap()
}

/// Three in-process proxies on one NATS server and one upstream.
fn three(nats: &NatsServer, upstream: &Upstream) -> (Vec<TestHome>, Vec<InProcess>) {
    let homes: Vec<TestHome> = (0..3)
        .map(|_| shared_home(nats, &upstream.url(), ""))
        .collect();
    let gws = homes.iter().map(|h| InProcess::start(h, &[])).collect();
    (homes, gws)
}

/// LiteLLM #40291/#27736: TPM/RPM in local memory, so the real limit is the
/// limit times the replicas.
#[tokio::test(flavor = "multi_thread")]
async fn shared_rpm_60_admits_at_most_60_of_300_requests_spread_over_three_proxies() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Fast);
    let (homes, gws) = three(&nats, &upstream);
    let secret = create_key(&homes[0], "spread", &["--rpm", "60"]);
    for gw in &gws {
        wait_shared(gw, "ok", 1).await;
    }
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (url, secret) = (gws[i % 3].url.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            chat(&url, &secret).await.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(ok + limited, 300, "{statuses:?}");
    assert!(
        ok <= 60,
        "{ok} admitted of 300 with rpm = 60 over three proxies"
    );
    assert!(ok > 0, "nothing admitted: {statuses:?}");
    assert_eq!(upstream.state.hits(), ok);
    // proxy usage --nats: every host's rows, the local report's columns.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = run("proxy", &homes[1], &["usage", "--nats", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let row = report
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == "spread"))
            .cloned()
            .unwrap_or_default();
        if row["requests"] == ok && row["refused"] == limited {
            for column in ["input_tokens", "cached_tokens", "output_tokens", "cost_usd"] {
                assert!(row.get(column).is_some(), "{row}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "usage --nats: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = run(
        "proxy",
        &homes[2],
        &["usage", "--nats", "--csv", "--by", "model"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("model,requests,refused,"),
        "{}",
        text(&out.stdout)
    );
}

/// Bifrost #3547: budget state per replica lets each replica spend the budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_budget_hit_by_60_concurrent_requests_over_three_proxies_is_not_overspent() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Gated);
    let (homes, gws) = three(&nats, &upstream);
    // Each request reserves 16 output tokens plus its input estimate (11):
    // 27. A budget of 100 fits 3 in flight, whichever proxies they reach.
    let secret = create_key(
        &homes[0],
        "burst",
        &["--budget-tokens", "100", "--period", "day"],
    );
    for gw in &gws {
        wait_shared(gw, "ok", 1).await;
    }
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (url, secret, refused) = (gws[i % 3].url.clone(), secret.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let status = chat(&url, &secret).await.status().as_u16();
            if status == 429 {
                refused.fetch_add(1, Ordering::SeqCst);
            }
            status
        }));
    }
    let deadline = Instant::now() + PATIENCE;
    while upstream.state.hits() + refused.load(Ordering::SeqCst) < 60 {
        assert!(Instant::now() < deadline, "the burst was never decided");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let state = upstream.state.clone();
    let releaser = tokio::spawn(async move {
        loop {
            state.release();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        (ok, statuses.len() - ok),
        (3, 57),
        "60 requests, budget for 3 in flight: {statuses:?}"
    );
    assert_eq!(upstream.state.hits(), 3);
    // 21 spent (the upstream reports 5 + 2 a request), each settled once: one
    // at a time, requests fit while 21 + 7 n + 27 <= 100, so 8 more (7 when an
    // answer reaches the client before its settlement is recorded: its 27
    // reserved still count). Settlements counted twice would fit 3.
    let mut more: u64 = 0;
    loop {
        let status = chat(&gws[0].url, &secret).await.status();
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        more += 1;
        assert!(more <= 8, "more than the budget admitted");
    }
    assert!(
        (7..=8).contains(&more),
        "{more}: settlements counted other than once"
    );
    releaser.abort();
    // Spent (the upstream reports 5 + 2 a request), across the three, as
    // every proxy sees it once the settlements are in the bucket.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = run("proxy", &homes[2], &["keys", "list", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        let out = run("proxy", &homes[2], &["usage", "--nats", "--json"]);
        let usage: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let row = usage[0].clone();
        if row["requests"] == 3 + more && row["refused"] == 58 {
            let spent =
                row["input_tokens"].as_u64().unwrap() + row["output_tokens"].as_u64().unwrap();
            assert_eq!(spent, 7 * (3 + more), "{usage}");
            // Every answer used less than it reserved: the budget bounds the spend.
            assert!(spent <= 100, "{spent} tokens spent of a budget of 100");
            // keys list on a host that served a third of them: the spend of all.
            if list[0]["spent_tokens"] == spent {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "usage --nats: {usage}, keys list: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// LiteLLM's docs: without Redis a revoked key keeps working on other workers.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_through_one_proxy_is_refused_by_the_other_two_within_a_second() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Fast);
    let (homes, gws) = three(&nats, &upstream);
    let secret = create_key(&homes[1], "leaver", &[]);
    for gw in &gws {
        wait_shared(gw, "ok", 1).await;
        assert_eq!(chat(&gw.url, &secret).await.status(), 200);
    }
    let out = run("proxy", &homes[0], &["keys", "revoke", "leaver"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The contract's bound, from the moment the command returned.
    let deadline = Instant::now() + Duration::from_secs(1);
    for gw in &gws[1..] {
        loop {
            let status = chat(&gw.url, &secret).await.status();
            if status == 401 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the revoked key still answered {status} on another proxy after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // keys.toml of the host that did not revoke it has it too, once it lists.
    let out = run("proxy", &homes[2], &["keys", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["revoked"], true, "{list}");
}

/// Bifrost/LiteLLM: a replica that dies holding slots leaks them forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_killed_mid_request_gives_its_slot_and_reservation_back_within_the_ttl() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Gated);
    let doomed_home = shared_home(&nats, &upstream.url(), "");
    let home = shared_home(&nats, &upstream.url(), "");
    // One in flight, and a budget with room for one reservation (27) only.
    let secret = create_key(
        &home,
        "single",
        &[
            "--max-parallel",
            "1",
            "--budget-tokens",
            "40",
            "--period",
            "total",
        ],
    );
    let doomed = Proxy::start(&doomed_home, &[], &[]);
    let gw = InProcess::start(&home, &[]);
    wait_shared(&doomed, "ok", 1).await;
    wait_shared(&gw, "ok", 1).await;
    let url = doomed.url.clone();
    let key = secret.clone();
    let held = tokio::spawn(async move {
        let _ = client()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body())
            .send()
            .await;
    });
    let deadline = Instant::now() + PATIENCE;
    while upstream.state.hits() < 1 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Held on the other proxy: refused here.
    assert_eq!(chat(&gw.url, &secret).await.status(), 429);
    doomed.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let _ = held.await;
    // Within the contract's 30 s, a request fits again.
    loop {
        let (url, key) = (gw.url.clone(), secret.clone());
        let attempt = tokio::spawn(async move { chat(&url, &key).await.status().as_u16() });
        loop {
            if upstream.state.hits() >= 2 {
                let state = upstream.state.clone();
                let releaser = tokio::spawn(async move {
                    loop {
                        state.release();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
                assert_eq!(attempt.await.unwrap(), 200);
                releaser.abort();
                return;
            }
            if attempt.is_finished() {
                assert_eq!(attempt.await.unwrap(), 429);
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "the killed proxy's slot and reservation were not given back within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The other side of the TTL: a request that runs longer than it keeps its
/// slot, because its proxy renews the hold while the request runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_running_past_the_hold_ttl_keeps_its_slot_on_every_proxy() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Gated);
    let (homes, gws) = three(&nats, &upstream);
    let secret = create_key(&homes[0], "long", &["--max-parallel", "1"]);
    for gw in &gws {
        wait_shared(gw, "ok", 1).await;
    }
    let (url, key) = (gws[0].url.clone(), secret.clone());
    let held = tokio::spawn(async move {
        // Longer than the client's usual patience: this answer takes past the TTL.
        let patient = warden::support::http_client::client_builder()
            .timeout(PATIENCE * 3)
            .build()
            .unwrap();
        patient
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    let deadline = Instant::now() + PATIENCE;
    while upstream.state.hits() < 1 {
        assert!(Instant::now() < deadline, "the long request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The hold was written before the request reached the upstream, so by the
    // end of this loop its first deadline has passed: only renewals keep it.
    let running = Instant::now();
    let past = Duration::from_millis(HOLD_TTL) + RENEW_EVERY;
    while running.elapsed() < past {
        for gw in &gws[1..] {
            let status = chat(&gw.url, &secret).await.status();
            assert_eq!(
                status,
                429,
                "the slot of a request running for {:?} was handed out again",
                running.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    upstream.state.release();
    assert_eq!(held.await.unwrap(), 200);
    // Its answer gives the slot back (the settlement reaches the bucket just
    // after the answer): another proxy admits the key again.
    let state = upstream.state.clone();
    let releaser = tokio::spawn(async move {
        loop {
            state.release();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = chat(&gws[2].url, &secret).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            Instant::now() < deadline,
            "the slot never came back after the answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    releaser.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_stopped_serves_from_the_last_state_for_the_grace_then_fail_closed_decides() {
    let mut nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Fast);
    let closed = shared_home(
        &nats,
        &upstream.url(),
        "shared_grace = 4\nfail_closed = true\n",
    );
    let open = shared_home(
        &nats,
        &upstream.url(),
        "shared_grace = 4\nfail_closed = false\n",
    );
    let secret = create_key(&closed, "steady", &["--rpm", "1000"]);
    let gw_closed = InProcess::start(&closed, &[]);
    let gw_open = InProcess::start(&open, &[]);
    for gw in [&gw_closed, &gw_open] {
        wait_shared(gw, "ok", 1).await;
        assert_eq!(chat(&gw.url, &secret).await.status(), 200);
    }
    nats.stop();
    wait_shared(&gw_closed, "grace", 1).await;
    // Within the grace: served from the last known state.
    let status = chat(&gw_closed.url, &secret).await.status();
    let after = health(&gw_closed).await;
    assert!(
        status == 200 || after["keys"]["shared"] == "failing",
        "{status} during the grace: {after}"
    );
    for gw in [&gw_closed, &gw_open] {
        wait_shared(gw, "failing", 1).await;
    }
    let refused = chat(&gw_closed.url, &secret).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "keys_unavailable", "{body}");
    assert_eq!(chat(&gw_open.url, &secret).await.status(), 200);
    // NATS back: one limit again, and requests are served.
    nats.restart();
    for gw in [&gw_closed, &gw_open] {
        wait_shared(gw, "ok", 1).await;
        assert_eq!(chat(&gw.url, &secret).await.status(), 200);
    }
}
