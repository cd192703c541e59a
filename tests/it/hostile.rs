//! Hostile clients and broken upstreams (SPEC §10): every resource either can
//! make the proxy hold is bounded, no secret reaches an output, and no client
//! string forges a log line or grows a metric.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};

use crate::support::upstream::closed_port_url;
use crate::support::{PATIENCE, Proxy, TestHome, assert_openai_error, client, run, text};

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

// ---------------------------------------------------------------------------
// hostile clients: raw sockets

/// The proxy's `host:port`.
fn addr_of(proxy: &Proxy) -> String {
    proxy.url.trim_start_matches("http://").to_string()
}

fn connect(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(addr_of(proxy)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Reads until the server closes the connection (EOF or reset); panics if it
/// is still open after PATIENCE. Returns what was read.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection is still open after {PATIENCE:?}")
            }
            Err(_) => break, // reset: closed too
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response head (and whatever body came with it in the same reads).
fn read_response_head(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).expect("a response within PATIENCE");
        assert!(
            n > 0,
            "closed before a response: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn home_with(server: &str) -> TestHome {
    let home = TestHome::new();
    home.config(&format!("[server]\n{server}\n"));
    home
}

#[test]
fn a_partial_request_head_is_closed_after_header_timeout() {
    let home = home_with("header_timeout = 1");
    let proxy = Proxy::start(&home, &[], &[]);
    let mut partial = connect(&proxy);
    partial
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut silent = connect(&proxy);
    assert_eq!(read_until_closed(&mut partial), "");
    assert_eq!(read_until_closed(&mut silent), "");
    // The proxy still serves.
    let mut fresh = connect(&proxy);
    fresh
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_response_head(&mut fresh).starts_with("HTTP/1.1 200"));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let home = home_with("keepalive_timeout = 1\nheader_timeout = 30");
    let proxy = Proxy::start(&home, &[], &[]);
    let mut stream = connect(&proxy);
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_response_head(&mut stream).starts_with("HTTP/1.1 200"));
    read_until_closed(&mut stream);
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408() {
    let home = home_with("body_timeout = 1");
    let proxy = Proxy::start(&home, &[], &[]);
    let mut stream = connect(&proxy);
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
        )
        .unwrap();
    let reply = read_until_closed(&mut stream);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let body: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_openai_error(&body);
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
}

#[test]
fn a_declared_length_over_the_limit_is_413_at_once_without_100_continue() {
    let home = home_with("max_body_bytes = 1000");
    let proxy = Proxy::start(&home, &[], &[]);
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut stream = connect(&proxy);
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{expect}Content-Length: 1000000000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        // No body byte is sent: the answer must come from the head alone.
        let reply = read_until_closed(&mut stream);
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
        assert!(!reply.contains("100 Continue"), "{reply}");
        let body: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_openai_error(&body);
    }
}

#[test]
fn past_max_connections_the_longest_idle_is_closed_and_new_clients_are_served() {
    let home = home_with("max_connections = 8\nkeepalive_timeout = 600\nheader_timeout = 600");
    let proxy = Proxy::start(&home, &[], &[]);
    // Eight idle keep-alive connections, oldest first.
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(&proxy);
            s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert!(read_response_head(&mut s).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    // A flood of 40 more, bounded: each new one makes room by closing an idle one.
    let mut flood = Vec::new();
    for _ in 0..40 {
        let mut s = connect(&proxy);
        s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(read_response_head(&mut s).starts_with("HTTP/1.1 200"));
        flood.push(s);
    }
    // The first idle one was closed to make room.
    read_until_closed(&mut idle[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive() {
    let home = TestHome::new();
    let proxy = Proxy::start(&home, &[], &[("WARDEN_AUTH_TOKEN", "tok")]);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let reply = client()
            .get(format!("{}/v1/models", proxy.url))
            .header("Authorization", format!("{scheme} tok"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{scheme}");
    }
}
