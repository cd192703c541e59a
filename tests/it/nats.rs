//! The NATS ingress (docs/contract.md §13) against a real nats-server: request/reply,
//! streaming, discovery, error replies, the 429 beyond the cap, JetStream jobs
//! surviving a killed proxy, reconnects, and the drain on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::gateway::InProcess;
use crate::support::http::{Served, health, metrics_text};
use crate::support::nats::NatsServer;
use crate::support::upstream::{Behaviour, COMPLETION, Upstream};
use crate::support::{PATIENCE, Proxy, TestHome, assert_openai_error, client};

fn home_with(nats: &NatsServer, upstream: &str, extra: &str) -> TestHome {
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{upstream}\"\nattempts = 1\n\n[nats]\nurl = \"{}\"\n{extra}",
        nats.url()
    ));
    home
}

/// Waits until `/health` says `nats.state == state`.
async fn wait_nats_state(proxy: &impl Served, state: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let report = health(proxy).await;
        if report["nats"]["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nats.state never became {state}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request with a deadline, retried while no proxy has subscribed yet.
async fn request(nc: &async_nats::Client, subject: &str, body: Value) -> async_nats::Message {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout(
            PATIENCE,
            nc.request(subject.to_string(), Bytes::from(body.to_string())),
        )
        .await
        {
            Ok(Ok(message)) => return message,
            Ok(Err(e)) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => panic!("request on {subject} failed: {e}"),
            Err(_) => panic!("no reply on {subject} within {PATIENCE:?}"),
        }
    }
}

fn header<'a>(message: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-5", "stream": stream, "messages": [{"role": "user", "content": "hello over nats"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn request_reply_streaming_models_and_discovery() {
    let nats = NatsServer::start();
    let home = home_with(&nats, "mock", "jetstream = true\n");
    let proxy = Proxy::start(&home, &[], &[]);
    wait_nats_state(&proxy, "connected").await;
    let nc = nats.client().await;

    // Non-streaming: one reply, the chat.completion JSON.
    let reply = request(&nc, "warden.chat", chat(false)).await;
    assert!(header(&reply, "Nats-Service-Error").is_none());
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "hello over nats");

    // Streaming: one message per chunk with Warden-Seq 1, 2, …, then done.
    let inbox = nc.new_inbox();
    let mut replies = nc.subscribe(inbox.clone()).await.unwrap();
    nc.publish_with_reply("warden.chat", inbox, Bytes::from(chat(true).to_string()))
        .await
        .unwrap();
    let mut text = String::new();
    let mut seq = 0;
    loop {
        let message = tokio::time::timeout(PATIENCE, replies.next())
            .await
            .expect("stream message in time")
            .expect("subscription open");
        if header(&message, "Warden-Status") == Some("done") {
            assert!(message.payload.is_empty());
            break;
        }
        seq += 1;
        assert_eq!(
            header(&message, "Warden-Seq"),
            Some(seq.to_string().as_str())
        );
        let chunk: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    }
    assert!(seq >= 2, "several chunks expected, got {seq}");
    assert_eq!(text, "hello over nats");

    // Models: the same list object as GET /v1/models.
    let reply = request(&nc, "warden.models", json!({})).await;
    let list: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "gpt-5");

    // Discovery: $SRV.PING / INFO / STATS answer for the service.
    let ping = request(&nc, "$SRV.PING.warden", json!({})).await;
    let ping: Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(ping["name"], "warden", "{ping}");
    let info = request(&nc, "$SRV.INFO.warden", json!({})).await;
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert!(
        subjects.contains(&"warden.chat") && subjects.contains(&"warden.models"),
        "{info}"
    );
    assert!(info["endpoints"][0]["queue_group"] == "warden", "{info}");
    let stats = request(&nc, "$SRV.STATS.warden", json!({})).await;
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    assert!(
        stats["endpoints"][0]["data"]["requests_total"]
            .as_u64()
            .unwrap()
            >= 3,
        "{stats}"
    );

    // Health and metrics count NATS requests like HTTP ones.
    let report = health(&proxy).await;
    assert_eq!(report["nats"]["state"], "connected");
    assert_eq!(report["nats"]["in_flight"], 0);
    assert!(
        report["requests"]["success"].as_u64().unwrap() >= 3,
        "{report}"
    );
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains(
            "warden_nats_requests_total{route=\"/v1/chat/completions\",outcome=\"ok\"} 2"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("warden_nats_connected 1"), "{metrics}");
    // The access log names the ingress (written in batches: wait for it).
    crate::support::eventually("a NATS access line", || {
        home.read("logs/proxy.log").contains("ingress=\"nats\"")
    });
    let log = home.read("logs/proxy.log");
    assert!(log.contains("ingress=\"nats\""), "{log}");
    // Connecting is said once, by warden (async-nats's own lines, one per
    // connection, are below the log level).
    assert_eq!(log.matches("NATS connected").count(), 1, "{log}");
    assert!(!log.contains("connected successfully"), "{log}");

    let js = async_nats::jetstream::new(nc.clone());
    wait_stream(&js).await;
    // A streamed job: chunks with Warden-Seq, then done, on the reply subject.
    let mut chunks = nc.subscribe("answers.stream").await.unwrap();
    nc.flush().await.unwrap();
    job(&js, "answers.stream", chat(true)).await;
    let mut seq = 0;
    loop {
        let m = tokio::time::timeout(PATIENCE, chunks.next())
            .await
            .expect("stream message in time")
            .unwrap();
        if header(&m, "Warden-Status") == Some("done") {
            break;
        }
        seq += 1;
        assert_eq!(
            header(&m, "Warden-Seq"),
            Some(seq.to_string().as_str()),
            "{m:?}"
        );
    }
    assert!(seq >= 1);
    wait_jobs_done(&js).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_is_off_by_default_and_touches_no_network() {
    let home = TestHome::new();
    let proxy = InProcess::start(&home, &[]);
    let report = health(&proxy).await;
    assert_eq!(
        report["nats"],
        json!({"state": "off", "in_flight": 0, "subscribed": false})
    );
    assert_eq!(report["status"], "pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_service_errors_with_the_openai_body() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Always(503));
    let home = home_with(&nats, &upstream.url(), "");
    let proxy = InProcess::start(&home, &[]);
    wait_nats_state(&proxy, "connected").await;
    let nc = nats.client().await;
    for (body, code) in [
        (json!({"model": "gpt-5"}), "400"),
        (json!("not an object"), "400"),
        (chat(false), "502"),
    ] {
        let reply = request(&nc, "warden.chat", body.clone()).await;
        assert_eq!(
            header(&reply, "Nats-Service-Error-Code"),
            Some(code),
            "{body}"
        );
        assert!(
            !header(&reply, "Nats-Service-Error")
                .unwrap_or("")
                .is_empty()
        );
        let error: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_openai_error(&error);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_max_concurrent_an_immediate_429_not_a_queue() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Gated);
    let home = home_with(&nats, &upstream.url(), "max_concurrent = 1\n");
    let proxy = InProcess::start(&home, &[]);
    wait_nats_state(&proxy, "connected").await;
    let nc = nats.client().await;
    let first = tokio::spawn({
        let nc = nc.clone();
        async move { request(&nc, "warden.chat", chat(false)).await }
    });
    upstream.wait_arrival().await;
    // The cap is taken: the next request is refused at once, while the first waits.
    let refused = request(&nc, "warden.chat", chat(false)).await;
    assert_eq!(header(&refused, "Nats-Service-Error-Code"), Some("429"));
    let error: Value = serde_json::from_slice(&refused.payload).unwrap();
    assert_openai_error(&error);
    assert_eq!(error["error"]["code"], "concurrency_limit");
    assert_eq!(health(&proxy).await["nats"]["in_flight"], 1);
    upstream.state.release();
    let first = first.await.unwrap();
    let body: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(body["object"], "chat.completion");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_nats_request_in_flight_then_exits() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::Gated);
    let home = home_with(&nats, &upstream.url(), "");
    let mut proxy = Proxy::start(&home, &[], &[]);
    wait_nats_state(&proxy, "connected").await;
    let nc = nats.client().await;
    let pending = tokio::spawn({
        let nc = nc.clone();
        async move { request(&nc, "warden.chat", chat(false)).await }
    });
    upstream.wait_arrival().await;
    proxy.signal(Signal::SIGTERM);
    // Draining: the service stops answering discovery (a ping caught mid-stop
    // may go unanswered: a second without an answer counts as stopped), and the
    // request in flight still finishes.
    let deadline = Instant::now() + PATIENCE;
    let ping = || {
        tokio::time::timeout(
            Duration::from_secs(1),
            nc.request("$SRV.PING.warden", Bytes::new()),
        )
    };
    while matches!(ping().await, Ok(Ok(_))) {
        assert!(
            Instant::now() < deadline,
            "the service still answers pings while draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    upstream.state.release();
    let reply = pending.await.unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(proxy.wait().success());
}

/// A flush waits for the server: with NATS away, SIGTERM must still end the
/// proxy at once (not at graceful_timeout, nor by `daemon stop`'s SIGKILL).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_promptly_while_the_nats_server_is_away() {
    let mut nats = NatsServer::start();
    let home = TestHome::new();
    // Far beyond PATIENCE: a drain that waits for NATS fails the wait below.
    home.config(&format!(
        "[server]\ngraceful_timeout = 3600\n\n[nats]\nurl = \"{}\"\n",
        nats.url()
    ));
    let mut proxy = Proxy::start(&home, &[], &[]);
    wait_nats_state(&proxy, "connected").await;
    nats.stop();
    wait_nats_state(&proxy, "reconnecting").await;
    proxy.signal(Signal::SIGTERM);
    assert!(proxy.wait().success());
    let log = home.read("logs/proxy.log");
    assert!(log.contains("NATS ingress drained"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_the_nats_server_restarts() {
    let mut nats = NatsServer::start();
    let home = home_with(&nats, "mock", "");
    let proxy = InProcess::start(&home, &[]);
    wait_nats_state(&proxy, "connected").await;
    {
        let nc = nats.client().await;
        let reply = request(&nc, "warden.chat", chat(false)).await;
        assert!(header(&reply, "Nats-Service-Error").is_none());
    }
    nats.stop();
    wait_nats_state(&proxy, "reconnecting").await;
    // HTTP keeps serving and stays ready; /health warns.
    let ready = client()
        .get(format!("{}/health/ready", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(health(&proxy).await["status"], "warn");
    nats.restart();
    wait_nats_state(&proxy, "connected").await;
    let nc = nats.client().await;
    let reply = request(&nc, "warden.chat", chat(false)).await;
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("warden_nats_reconnects_total 1"),
        "{metrics}"
    );
}

async fn ready_status(proxy: &impl Served, query: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}/health/ready{query}", proxy.url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_nats_required_readiness_follows_the_connection_but_not_for_the_daemon() {
    let mut nats = NatsServer::start();
    let home = home_with(&nats, "mock", "required = true\n");
    let proxy = InProcess::start(&home, &[]);
    wait_nats_state(&proxy, "connected").await;
    assert_eq!(ready_status(&proxy, "").await.0, 200);

    nats.stop();
    wait_nats_state(&proxy, "reconnecting").await;
    let (code, body) = ready_status(&proxy, "").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("nats.required"),
        "{body}"
    );
    // What the daemon, the watchdog and a restart probe: the process alone.
    assert_eq!(ready_status(&proxy, "?nats=ignore").await.0, 200);
    // HTTP itself still serves.
    let r = client()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    nats.restart();
    wait_nats_state(&proxy, "connected").await;
    assert_eq!(ready_status(&proxy, "").await.0, 200);
}

#[test]
fn daemon_start_does_not_wait_for_a_required_nats_that_is_away() {
    let mut nats = NatsServer::start();
    let extra = format!(
        "required = true\n\n[server]\nport = {}\n",
        crate::support::free_port()
    );
    let home = home_with(&nats, "mock", &extra);
    // A failed assertion must not leave the proxy running.
    let _guard = crate::daemon::StopOnDrop(&home);
    nats.stop(); // the configured server is away for the whole test
    let out = crate::support::run("daemon", &home, &["start"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = crate::support::run("daemon", &home, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true, "{status}");
    assert_ne!(status["health"]["nats"]["state"], "connected", "{status}");
    // The human status says where NATS stands: "running" alone would hide
    // that readiness is 503 for load balancers.
    let out = crate::support::run("daemon", &home, &["status"]);
    let shown = crate::support::text(&out.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("  nats      ") && !l.contains(" connected,")),
        "{shown}"
    );
    // preflight's hint does not promise HTTP that readiness withholds.
    let out = crate::support::run("preflight", &home, &["--only", "upstream", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "upstream")
        .cloned()
        .unwrap();
    let hint = check["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("503") && !hint.contains("still serves HTTP"),
        "{report}"
    );
    let out = crate::support::run("daemon", &home, &["stop"]);
    assert_eq!(out.status.code(), Some(0));
    // Stopped by SIGTERM, not by the SIGKILL after daemon.stop_timeout.
    let said = crate::support::text(&out.stdout);
    assert!(said.contains("after SIGTERM"), "{said}");
}

/// `daemon restart` of a lone proxy: the successor's endpoints are on the NATS
/// server before the old proxy unsubscribes, so no request meanwhile finds no
/// responder (before, every request did until the successor had connected).
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_leaves_no_moment_without_a_nats_responder() {
    let nats = NatsServer::start();
    let extra = format!("\n[server]\nport = {}\n", crate::support::free_port());
    let home = Arc::new(home_with(&nats, "mock", &extra));
    let _guard = crate::daemon::StopOnDrop(&home);
    let daemon = |args: &'static [&'static str]| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || crate::support::run("daemon", &home, args))
    };
    let out = daemon(&["start"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        crate::support::text(&out.stderr)
    );
    let nc = nats.client().await;
    request(&nc, "warden.chat", chat(false)).await; // subscribed
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (nc, stop) = (nc.clone(), stop.clone());
        async move {
            let (mut answered, mut no_responders, mut lost) = (0, 0, Vec::new());
            let body = Bytes::from(chat(false).to_string());
            while !stop.load(Ordering::Relaxed) {
                let asked = nc.request("warden.chat", body.clone());
                match tokio::time::timeout(PATIENCE, asked).await {
                    Ok(Ok(_)) => answered += 1,
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        no_responders += 1
                    }
                    // Taken by a proxy and never answered (a timeout), or worse.
                    other => lost.push(format!("{other:?}")),
                }
            }
            (answered, no_responders, lost)
        }
    });
    for _ in 0..2 {
        let out = daemon(&["restart"]).await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            crate::support::text(&out.stderr)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (answered, no_responders, lost) = load.await.unwrap();
    assert!(answered > 0);
    assert_eq!(no_responders, 0, "{answered} answered");
    // The drain leaves one window: async-nats removes a drained subscription at
    // its next poll after the unsubscribe is sent, not at the server's PONG, so a
    // request the server routed in that round trip can still be dropped (measured:
    // 1 in 23 restarts, against 52 in 20 before the drain). More than one per
    // restart is the old behaviour back.
    assert!(lost.len() <= 2, "{answered} answered, lost: {lost:?}");
}

/// An upstream that holds its first request for ever (reporting it) and
/// answers every later one at once: a proxy can be killed mid-request.
struct HoldFirst {
    url: String,
    hits: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
}

impl HoldFirst {
    async fn start() -> HoldFirst {
        let hits = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(Notify::new());
        let app = Router::new().route(
            "/v1/chat/completions",
            post({
                let (hits, arrived) = (hits.clone(), arrived.clone());
                move || {
                    let (hits, arrived) = (hits.clone(), arrived.clone());
                    async move {
                        if hits.fetch_add(1, Ordering::SeqCst) == 0 {
                            arrived.notify_one();
                            std::future::pending::<()>().await;
                        }
                        ([("content-type", "application/json")], COMPLETION)
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HoldFirst { url, hits, arrived }
    }
}

async fn job(js: &async_nats::jetstream::Context, reply_to: &str, body: Value) {
    let mut headers = HeaderMap::new();
    headers.insert("Warden-Reply-To", reply_to);
    js.publish_with_headers("warden.jobs.chat", headers, Bytes::from(body.to_string()))
        .await
        .unwrap()
        .await
        .expect("the job stream stores the job");
}

/// Waits until the work-queue stream holds no job (all acked or terminated).
async fn wait_jobs_done(js: &async_nats::jetstream::Context) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stream = js.get_stream("WARDEN").await.unwrap();
        let info = stream.info().await.unwrap();
        if info.state.messages == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "jobs left in the stream: {:?}",
            info.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jetstream_job_survives_its_proxy_being_killed_and_is_answered_once() {
    let nats = NatsServer::start();
    let upstream = HoldFirst::start().await;
    let extra = "jetstream = true\nack_wait = 2\n";
    let (home_a, home_b) = (
        home_with(&nats, &upstream.url, extra),
        home_with(&nats, &upstream.url, extra),
    );
    let mut a = Proxy::start(&home_a, &[], &[]);
    let mut b = Proxy::start(&home_b, &[], &[]);
    wait_nats_state(&a, "connected").await;
    wait_nats_state(&b, "connected").await;
    let nc = nats.client().await;
    let js = async_nats::jetstream::new(nc.clone());
    // The proxies create the stream; wait for it.
    let deadline = Instant::now() + PATIENCE;
    while js.get_stream("WARDEN").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no proxy created the WARDEN stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut replies = nc.subscribe("answers.1").await.unwrap();
    nc.flush().await.unwrap();
    job(&js, "answers.1", chat(false)).await;
    tokio::time::timeout(PATIENCE, upstream.arrived.notified())
        .await
        .expect("the job reached the upstream");
    // Kill whichever proxy holds the job, mid-request.
    let holder_is_a = health(&a).await["nats"]["in_flight"] == 1;
    let (holder, other) = if holder_is_a {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    holder.signal(Signal::SIGKILL);
    holder.wait();
    // After ack_wait the job goes to the other proxy, which answers it.
    let reply = tokio::time::timeout(PATIENCE, replies.next())
        .await
        .expect("the job was answered after the holder died")
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    wait_jobs_done(&js).await;
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 2);
    // Exactly once: nothing else arrives on the reply subject.
    nc.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), replies.next())
            .await
            .is_err(),
        "a second reply arrived"
    );
    // A bad job is answered with an error and terminated, not redelivered.
    let mut bad = nc.subscribe("answers.2").await.unwrap();
    nc.flush().await.unwrap();
    job(&js, "answers.2", json!({"model": "gpt-5"})).await;
    let reply = tokio::time::timeout(PATIENCE, bad.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), Some("400"));
    wait_jobs_done(&js).await;
    let report = health(other).await;
    assert_eq!(report["nats"]["in_flight"], 0, "{report}");
}

#[test]
fn preflight_and_doctor_explain_a_nats_they_cannot_reach() {
    let port = crate::support::free_port();
    let home = TestHome::new();
    home.config(&format!("[nats]\nurl = \"nats://127.0.0.1:{port}\"\n"));
    let out = crate::support::run("preflight", &home, &["--only", "upstream", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let upstream_check = |report: &Value| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "upstream")
            .cloned()
            .unwrap()
    };
    let check = upstream_check(&report);
    // A warning: the proxy serves HTTP without NATS and keeps reconnecting.
    assert_eq!(check["status"], "warn", "{report}");
    let message = check["message"].as_str().unwrap();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(
        check["hint"].as_str().unwrap().contains("nats.url"),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(0));

    let out = crate::support::run("doctor", &home, &["--dry-run"]);
    let text = crate::support::text(&out.stdout) + &crate::support::text(&out.stderr);
    assert!(
        text.contains("NATS server of nats.url cannot be reached"),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");

    // Reachable: both say so.
    let nats = NatsServer::start();
    home.config(&format!(
        "[nats]\nurl = \"{}\"\njetstream = true\n",
        nats.url()
    ));
    let out = crate::support::run("preflight", &home, &["--only", "upstream", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(upstream_check(&report)["status"], "pass", "{report}");
    assert!(report["summary"]["pass"] == 1, "{report}");
}

/// Containers: `logs.target = "stdout"` puts the proxy log on standard output
/// (what `kubectl logs` shows), and nothing in `logs/proxy.log`.
#[test]
fn logs_go_to_stdout_for_containers() {
    use std::io::BufRead;
    let home = TestHome::new();
    home.config("[logs]\ntarget = \"stdout\"\nformat = \"json\"\n");
    let mut child = crate::support::bin("proxy")
        .arg("--home")
        .arg(home.path())
        .args(["--port", "0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let started = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the start marker on stdout");
        if line.contains("warden proxy started") {
            break line;
        }
    };
    let event: Value = serde_json::from_str(&started).expect("a JSON log line");
    assert_eq!(event["level"], "INFO", "{event}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let stopped = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the stop marker on stdout");
        if line.contains("warden proxy stopped") {
            break line;
        }
    };
    assert!(stopped.starts_with('{'), "{stopped}");
    assert!(child.wait().unwrap().success());
    assert!(!home.read("logs/proxy.log").contains("warden proxy started"));
}

/// Waits until a proxy created the job stream.
async fn wait_stream(js: &async_nats::jetstream::Context) {
    let deadline = Instant::now() + PATIENCE;
    while js.get_stream("WARDEN").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no proxy created the WARDEN stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jetstream_job_is_nakked_on_upstream_failure_then_answered_once() {
    let nats = NatsServer::start();
    let upstream = Upstream::start(Behaviour::FailThenRecover { n: 1, status: 503 });
    let home = home_with(&nats, &upstream.url(), "jetstream = true\n");
    let proxy = InProcess::start(&home, &[]);
    wait_nats_state(&proxy, "connected").await;
    let nc = nats.client().await;
    let js = async_nats::jetstream::new(nc.clone());
    wait_stream(&js).await;
    let mut replies = nc.subscribe("answers.retry").await.unwrap();
    nc.flush().await.unwrap();
    job(&js, "answers.retry", chat(false)).await;
    // The first delivery meets a 503: nak with a delay, no reply; the second succeeds.
    let reply = tokio::time::timeout(PATIENCE, replies.next())
        .await
        .expect("the job was answered")
        .unwrap();
    assert!(header(&reply, "Nats-Service-Error").is_none(), "{reply:?}");
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    wait_jobs_done(&js).await;
    assert_eq!(upstream.state.hits(), 2);

    wait_jobs_done(&js).await;
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains(
            "warden_nats_requests_total{route=\"/v1/chat/completions\",outcome=\"failed\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_over_request_reply_and_as_jetstream_jobs() {
    let nats = NatsServer::start();
    let home = home_with(&nats, "mock", "jetstream = true\n");
    let proxy = Proxy::start(&home, &[], &[]);
    wait_nats_state(&proxy, "connected").await;
    let nc = nats.client().await;
    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8});

    // Request/reply: the embeddings list, as over HTTP.
    let reply = request(&nc, "warden.embeddings", body.clone()).await;
    assert!(header(&reply, "Nats-Service-Error").is_none());
    let list: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(list["object"], "list", "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"][1]["embedding"].as_array().unwrap().len(), 8);
    let http: Value = client()
        .post(format!("{}/v1/embeddings", proxy.url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        http["data"], list["data"],
        "the same vectors on both ingresses"
    );

    // A bad request: an error reply naming the field, with the HTTP status.
    let reply = request(&nc, "warden.embeddings", json!({"model": "m"})).await;
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), Some("400"));
    let error: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(error["error"]["param"], "input");

    // The service lists the endpoint.
    let info = request(&nc, "$SRV.INFO.warden", json!({})).await;
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    assert!(
        info["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["subject"] == "warden.embeddings"),
        "{info}"
    );

    // A JetStream job on warden.jobs.embeddings is answered on its reply subject.
    let js = async_nats::jetstream::new(nc.clone());
    let deadline = Instant::now() + PATIENCE;
    while js.get_stream("WARDEN").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy created no WARDEN stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut replies = nc.subscribe("answers.embeddings").await.unwrap();
    nc.flush().await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Warden-Reply-To", "answers.embeddings");
    js.publish_with_headers(
        "warden.jobs.embeddings",
        headers,
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
    .await
    .expect("the job stream stores the job");
    let reply = tokio::time::timeout(PATIENCE, replies.next())
        .await
        .expect("the embeddings job was answered")
        .unwrap();
    let answered: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(answered["data"], list["data"]);
    wait_jobs_done(&js).await;
}
