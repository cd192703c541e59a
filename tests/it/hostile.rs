//! Hostile clients and broken upstreams (docs/contract.md §10): every resource either can
//! make the proxy hold is bounded, no secret reaches an output, and no client
//! string forges a log line or grows a metric.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::http::{get_text, metrics_text, post_chat};
use crate::support::upstream::closed_port_url;
use crate::support::{PATIENCE, Proxy, TestHome, assert_openai_error, client, run, text};

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
    // The same for a streamed answer (its upstream connections are its own).
    let reply = post_chat(
        &proxy,
        &json!({"model": "gpt-5", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(reply.status(), 502);
    let body = reply.text().await.unwrap();
    assert!(!body.contains("s3cr3tpw"), "{body}");
    let health = get_text(&format!("{}/health", proxy.url)).await;
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
        // The file is named once, not once per layer of the error.
        let file = home.path().join(".env").display().to_string();
        assert!(
            !shown.contains(&format!("{file}: {file}")),
            "{binary}: {shown}"
        );
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
    let metrics = metrics_text(&proxy).await;
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

/// Reads `n` whole responses (each with a `Content-Length`); returns their status lines.
fn read_responses(stream: &mut TcpStream, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while got.len() < n {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if buf.len() >= end + 4 + length {
                got.push(head.lines().next().unwrap_or_default().to_string());
                buf.drain(..end + 4 + length);
                continue;
            }
        }
        let read = stream.read(&mut chunk).expect("a response within PATIENCE");
        assert!(read > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..read]);
    }
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    got
}

#[test]
fn a_keep_alive_connection_serves_on_after_idle_spells() {
    // An HTTP/1 connection idle between requests holds only its socket and
    // reads its next request head afresh: after idle spells, each request is
    // answered on the same connection, a pipelined pair and a head split
    // across an idle spell too.
    let home = home_with("keepalive_timeout = 600\nheader_timeout = 600");
    let proxy = Proxy::start(&home, &[], &[]);
    let mut stream = connect(&proxy);
    let request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    let idle = || std::thread::sleep(Duration::from_millis(2500));
    stream.write_all(request).unwrap();
    assert_eq!(read_responses(&mut stream, 1), ["HTTP/1.1 200 OK"]);
    idle();
    stream.write_all(request).unwrap();
    assert_eq!(read_responses(&mut stream, 1), ["HTTP/1.1 200 OK"]);
    idle();
    stream
        .write_all(&[&request[..], &request[..]].concat())
        .unwrap();
    assert_eq!(
        read_responses(&mut stream, 2),
        ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"]
    );
    idle();
    stream.write_all(b"GET /health/live HTTP/1.1\r\n").unwrap();
    idle();
    stream.write_all(b"Host: x\r\n\r\n").unwrap();
    assert_eq!(read_responses(&mut stream, 1), ["HTTP/1.1 200 OK"]);
    idle();
    // A POST with a body, then a malformed head: answered 400 as on a fresh connection.
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(&[head.as_bytes(), &body[..]].concat())
        .unwrap();
    assert_eq!(read_responses(&mut stream, 1), ["HTTP/1.1 200 OK"]);
    idle();
    stream.write_all(b"NOT HTTP\r\n\r\n").unwrap();
    let reply = read_until_closed(&mut stream);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
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

/// One figure of `GET /metrics` (a line `name value`).
fn metric(proxy: &Proxy, name: &str) -> f64 {
    let text = scrape(proxy, "/metrics");
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: the peak).
fn proc_status_bytes(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}

/// A small chat request on its own connection, through the mock: the status line.
fn normal_chat(proxy: &Proxy) -> String {
    let body = r#"{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}"#;
    let mut stream = connect(proxy);
    stream
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let reply = read_until_closed(&mut stream);
    reply.lines().next().unwrap_or_default().to_string()
}

#[test]
fn stalled_bodies_are_bounded_together_by_max_body_memory() {
    // Twenty clients announce 10 MB bodies (under max_body_bytes), send 5 MiB
    // each and stall: 100 MiB offered, 16 MiB of room.
    const BUDGET: u64 = 16 << 20;
    let home = home_with(&format!("max_body_memory = {BUDGET}\nbody_timeout = 5"));
    let proxy = Proxy::start(&home, &[], &[]);
    assert_eq!(normal_chat(&proxy), "HTTP/1.1 200 OK");
    let before = proc_status_bytes(proxy.pid(), "VmHWM");
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let mut stream = connect(&proxy);
            stream.set_write_timeout(Some(PATIENCE)).unwrap();
            std::thread::spawn(move || {
                stream
                    .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n")
                    .unwrap();
                let piece = vec![b' '; 64 << 10];
                for _ in 0..80 {
                    // A body the proxy has no room for blocks here until it is
                    // refused and the connection closed.
                    if stream.write_all(&piece).is_err() {
                        break;
                    }
                }
                // Every connection is closed by body_timeout (408 for a body
                // that had room, 503 for one that waited for it; a refused
                // client still sending may see a reset instead of the answer).
                read_until_closed(&mut stream)
            })
        })
        .collect();
    let replies: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for reply in &replies {
        assert!(
            reply.is_empty()
                || reply.starts_with("HTTP/1.1 408")
                || reply.starts_with("HTTP/1.1 503"),
            "{reply}"
        );
    }
    let peak = proc_status_bytes(proxy.pid(), "VmHWM").saturating_sub(before);
    assert!(
        peak < BUDGET + (16 << 20),
        "100 MiB of stalled bodies took the proxy's peak RSS up by {} MiB (budget {} MiB)",
        peak >> 20,
        BUDGET >> 20
    );
    // Everything was given back, and a normal request is served.
    assert_eq!(metric(&proxy, "warden_request_body_bytes"), 0.0);
    assert_eq!(normal_chat(&proxy), "HTTP/1.1 200 OK");
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

/// `GET path` on a connection of its own (`Connection: close`): the body.
fn scrape(proxy: &Proxy, path: &str) -> String {
    let mut stream = connect(proxy);
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let reply = read_until_closed(&mut stream);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

#[test]
fn idle_connections_cost_little_memory() {
    // 1,000 client sockets here: raise this process's own soft limit first.
    warden::gateway::connections::raise_fd_limit();
    let home = home_with("header_timeout = 600\nkeepalive_timeout = 600");
    let proxy = Proxy::start(&home, &[], &[]);
    scrape(&proxy, "/health/live");
    let before = rss(proxy.pid());
    // 500 clients that send nothing, 500 that send half a request head.
    let mut held: Vec<TcpStream> = (0..500).map(|_| connect(&proxy)).collect();
    for _ in 0..500 {
        let mut s = connect(&proxy);
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            .unwrap();
        held.push(s);
    }
    // Connections are accepted in order: once this one is served, all are held.
    let text = scrape(&proxy, "/metrics");
    let open: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("warden_client_connections "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(open >= 1001.0, "{text}");
    let grown = rss(proxy.pid()).saturating_sub(before);
    // Before the first head is complete a connection holds no HTTP machinery
    // (hyper's 16 KiB of buffers and its state): about 2.4 KiB each in a debug
    // build (2.4 MiB here), where it was 8 (idle) to 20 (slow) KiB: 14 MiB.
    assert!(
        grown < 6 << 20,
        "1,000 idle and slow connections grew RSS by {} KiB",
        grown >> 10
    );
    drop(held);
}

#[test]
fn the_metrics_count_open_and_shed_client_connections() {
    let home = home_with("max_connections = 4\nkeepalive_timeout = 600\nheader_timeout = 600");
    let proxy = Proxy::start(&home, &[], &[]);
    // Three clients that send nothing; connections are accepted in order, so
    // all three are open when the scrape's own connection is.
    let mut silent: Vec<TcpStream> = (0..3).map(|_| connect(&proxy)).collect();
    let text = scrape(&proxy, "/metrics");
    assert!(text.contains("\nwarden_client_connections 4\n"), "{text}");
    assert!(
        text.contains("\nwarden_client_connections_shed_total 0\n"),
        "{text}"
    );
    assert!(
        text.contains("\nwarden_client_connections_refused_total 0\n"),
        "{text}"
    );
    // Past the cap of 4, each newcomer closes the longest-idle connection.
    silent.extend((0..2).map(|_| connect(&proxy)));
    let json: Value = serde_json::from_str(&scrape(&proxy, "/metrics?format=json")).unwrap();
    let value = |name: &str| {
        json["metrics"][name]["samples"][0]["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(value("warden_client_connections"), 4.0, "{json}");
    // The first scrape's connection may already have closed on its own: 2 or 3.
    assert!(value("warden_client_connections_shed") >= 2.0, "{json}");
    assert_eq!(
        read_until_closed(&mut silent[0]),
        "",
        "the longest-idle one was shed"
    );
}

#[test]
fn hypers_own_answers_to_a_malformed_head_have_an_openai_error_body() {
    let home = TestHome::new();
    let proxy = Proxy::start(&home, &[], &[]);
    let huge_header = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    for (request, status, code) in [
        (
            "NOT HTTP AT ALL\r\n\r\n".to_string(),
            "400",
            "malformed_request",
        ),
        (
            "GET /v1/models HTTP/1.1\r\nBad Header\r\n\r\n".to_string(),
            "400",
            "malformed_request",
        ),
        (
            huge_header.clone(),
            "431",
            "request_header_fields_too_large",
        ),
    ] {
        let mut stream = connect(&proxy);
        // The server may answer and close before reading all of a huge head.
        let _ = stream.write_all(request.as_bytes());
        let reply = read_until_closed(&mut stream);
        assert!(reply.starts_with(&format!("HTTP/1.1 {status} ")), "{reply}");
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_openai_error(&body);
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    // A connection's first head is read by the gateway, later ones by hyper,
    // whose limit is its read buffer (64 KiB, passed by at most one read):
    // both answer a head over the limit alike.
    let mut stream = connect(&proxy);
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_response_head(&mut stream).starts_with("HTTP/1.1 200"));
    let huger = huge_header.replace(&"a".repeat(1024), &"a".repeat(3 * 1024));
    let _ = stream.write_all(huger.as_bytes());
    let reply = read_until_closed(&mut stream);
    // (The first answer's body may still be ahead of it.)
    let second = reply
        .find("HTTP/1.1 431 ")
        .unwrap_or_else(|| panic!("{reply}"));
    let (_, body) = reply[second..].split_once("\r\n\r\n").unwrap();
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body["error"]["code"], "request_header_fields_too_large",
        "{body}"
    );
    let text = scrape(&proxy, "/metrics");
    assert!(
        text.contains("warden_client_malformed_requests_total{status=\"400\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("warden_client_malformed_requests_total{status=\"431\"} 2"),
        "{text}"
    );
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

// ---------------------------------------------------------------------------
// hostile upstreams: raw TCP servers written here, answering whatever they like

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP "upstream" on loopback: reads each request (head and
/// `Content-Length` body), then lets `answer` write anything at all.
async fn raw_upstream<F, Fut>(answer: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let hits = counted.clone();
            tokio::spawn(async move {
                if read_request(&mut stream).await {
                    hits.fetch_add(1, Ordering::SeqCst);
                    answer(stream).await;
                }
            });
        }
    });
    (format!("http://{addr}/v1"), hits)
}

/// Reads one request; false if the connection closed first.
async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.is_ok()
}

/// Writes `total` bytes of `fill` in 64 KiB pieces, stopping when the reader
/// goes away (the proxy closing at its cap): bounded either way.
async fn flood(stream: &mut tokio::net::TcpStream, total: usize, fill: u8) -> usize {
    let piece = vec![fill; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        if stream.write_all(&piece).await.is_err() {
            break;
        }
        sent += piece.len();
    }
    sent
}

const CHUNK: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";

fn sse_head() -> &'static [u8] {
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
}

fn proxy_for(url: &str, extra: &str) -> (TestHome, Proxy) {
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{url}\"\nattempts = 1\n{extra}\n"
    ));
    let proxy = Proxy::start(&home, &[], &[]);
    (home, proxy)
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-5", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The `data:` payloads of an SSE body, each of which must be whole JSON or `[DONE]`.
fn whole_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|frame| {
            let data = frame
                .trim()
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an event: {frame:?}"));
            if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(data).unwrap_or_else(|e| panic!("torn event {data:?}: {e}"))
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_with_no_room_in_max_body_memory_waits_then_is_503_with_retry_after() {
    // The upstream holds every request until the gate opens: the first body
    // stays counted while its upstream call is in flight.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let (url, hits) = raw_upstream(move |mut stream| {
        let gate = held.clone();
        async move {
            let _ = gate.acquire().await;
            let body = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-5","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
            let _ = stream
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    })
    .await;
    let (_home, proxy) = proxy_for(
        &url,
        "[server]\nmax_body_bytes = 100000\nmax_body_memory = 100000\nbody_timeout = 2",
    );
    let big =
        json!({"model": "gpt-5", "messages": [{"role": "user", "content": "x".repeat(99_000)}]});
    let big_len = serde_json::to_vec(&big).unwrap().len();
    let first = tokio::spawn({
        let url = proxy.url.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&big)
                .send()
                .await
                .unwrap()
        }
    });
    crate::support::http::until("the first request reaches the upstream", || {
        let hits = hits.clone();
        async move { hits.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let text = metrics_text(&proxy).await;
    assert!(
        text.lines()
            .any(|l| l == format!("warden_request_body_bytes {big_len}")),
        "{text}"
    );
    // Under 1 KB left: a 2 KB body waits for room, and is refused at body_timeout.
    let second =
        json!({"model": "gpt-5", "messages": [{"role": "user", "content": "y".repeat(2000)}]});
    let reply = post_chat(&proxy, &second).await;
    assert_eq!(reply.status(), 503);
    assert_eq!(reply.headers()["retry-after"], "1");
    let body: Value = reply.json().await.unwrap();
    assert_openai_error(&body);
    assert_eq!(body["error"]["code"], "body_memory_full", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("server.max_body_memory (100000 bytes)"),
        "{message}"
    );
    assert!(
        metrics_text(&proxy)
            .await
            .contains("warden_http_requests_rejected_total{reason=\"body_memory\"} 1\n")
    );
    // The first answer completes, its bytes go back, and the next one fits.
    gate.add_permits(100);
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(post_chat(&proxy, &second).await.status(), 200);
    assert!(
        metrics_text(&proxy)
            .await
            .contains("\nwarden_request_body_bytes 0\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_answer_is_502_and_read_no_further_than_the_cap() {
    // Declared 300 MB: refused from the head. Undeclared: read up to the cap only.
    let (declared, _) = raw_upstream(|mut s| async move {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 314572800\r\n\r\n";
        s.write_all(head.as_bytes()).await.ok();
        flood(&mut s, 300 << 20, b' ').await;
    })
    .await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let (undeclared, _) = raw_upstream(move |mut s| {
        let counter = counter.clone();
        async move {
            s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            )
            .await
            .ok();
            counter.store(flood(&mut s, 300 << 20, b' ').await, Ordering::SeqCst);
        }
    })
    .await;
    for url in [declared, undeclared] {
        let (_home, proxy) = proxy_for(&url, "max_response_bytes = 1048576");
        let reply = post_chat(&proxy, &chat(false)).await;
        assert_eq!(reply.status(), 502);
        let body: Value = reply.json().await.unwrap();
        assert_openai_error(&body);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_response_bytes"),
            "{body}"
        );
    }
    // The flood stopped once the proxy hung up: far short of 300 MB.
    crate::support::eventually("the flood to stop", || sent.load(Ordering::SeqCst) > 0);
    assert!(
        sent.load(Ordering::SeqCst) < 100 << 20,
        "{}",
        sent.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_max_event_bytes_ends_the_stream_with_one_error_event() {
    let (url, _) = raw_upstream(|mut s| async move {
        s.write_all(sse_head()).await.ok();
        s.write_all(CHUNK.as_bytes()).await.ok();
        s.write_all(b"data: {\"x\":\"").await.ok();
        flood(&mut s, 300 << 20, b'x').await;
    })
    .await;
    for api in ["chat", "responses"] {
        let (_home, proxy) = proxy_for(&url, &format!("api = \"{api}\"\nmax_event_bytes = 65536"));
        let reply = post_chat(&proxy, &chat(true)).await;
        assert_eq!(reply.status(), 200, "{api}");
        let body = reply.text().await.unwrap();
        let events = whole_events(&body);
        let errors: Vec<_> = events.iter().filter(|e| e.get("error").is_some()).collect();
        assert_eq!(errors.len(), 1, "{api}: {body}");
        assert!(
            errors[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_event_bytes"),
            "{api}: {body}"
        );
        assert!(body.len() < 1 << 20, "{api}: {} bytes relayed", body.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_upstream_is_cut_off_at_the_total_deadline() {
    let (url, _) = raw_upstream(|mut s| async move {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n";
        s.write_all(head.as_bytes()).await.ok();
        // One byte every 100 ms: each resets the idle timer, never the deadline.
        for _ in 0..100_000 {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (_home, proxy) = proxy_for(
        &url,
        "timeout = 2\nidle_timeout = 1\nfirst_byte_timeout = 30",
    );
    let reply = post_chat(&proxy, &chat(false)).await;
    assert_eq!(reply.status(), 504);
    let body: Value = reply.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream.timeout"),
        "{body}"
    );
    let reply = post_chat(&proxy, &chat(true)).await;
    let body = reply.text().await.unwrap();
    let events = whole_events(&body);
    assert_eq!(events.len(), 1, "{body}");
    assert!(
        events[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream.timeout"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn non_conforming_answers_are_502() {
    for (what, answer) in [
        (
            "invalid JSON",
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\nnot json{",
        ),
        (
            "status 999",
            "HTTP/1.1 999 Odd\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        ),
    ] {
        let (url, _) = raw_upstream(move |mut s| async move {
            s.write_all(answer.as_bytes()).await.ok();
        })
        .await;
        let (_home, proxy) = proxy_for(&url, "");
        let reply = post_chat(&proxy, &chat(false)).await;
        assert_eq!(reply.status(), 502, "{what}");
        assert_openai_error(&reply.json().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_is_502_and_never_followed_by_either_http_stack() {
    let (elsewhere, elsewhere_hits) = raw_upstream(|mut s| async move {
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .ok();
    })
    .await;
    let location = format!("{elsewhere}/chat/completions");
    let (url, hits) = raw_upstream(move |mut s| {
        let location = location.clone();
        async move {
            let answer = format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n");
            s.write_all(answer.as_bytes()).await.ok();
        }
    })
    .await;
    // hyper's direct path (plain http), then reqwest (an HTTP proxy configured:
    // the raw server plays the proxy and answers the redirect itself).
    let home = TestHome::new();
    home.config(&format!("[upstream]\nurl = \"{url}\"\nattempts = 1\n"));
    let direct = Proxy::start(&home, &[], &[]);
    let reply = post_chat(&direct, &chat(false)).await;
    assert_eq!(reply.status(), 502);
    let body: Value = reply.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("redirect"),
        "{body}"
    );
    drop(direct);
    let proxy_url = url.trim_end_matches("/v1").to_string();
    let home = TestHome::new();
    home.config("[upstream]\nurl = \"http://127.0.0.1:9/v1\"\nattempts = 1\n");
    let via_reqwest = Proxy::start(&home, &[], &[("HTTP_PROXY", &proxy_url)]);
    let reply = post_chat(&via_reqwest, &chat(false)).await;
    assert_eq!(reply.status(), 502);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "both stacks asked the redirecting server"
    );
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the prompt went to another host"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_mid_event_ends_with_one_whole_error_event() {
    let (url, _) = raw_upstream(|mut s| async move {
        s.write_all(sse_head()).await.ok();
        s.write_all(CHUNK.as_bytes()).await.ok();
        s.write_all(b"data: {\"cho").await.ok();
        // Then the connection closes.
    })
    .await;
    let (_home, proxy) = proxy_for(&url, "");
    let body = post_chat(&proxy, &chat(true)).await.text().await.unwrap();
    assert!(!body.contains("{\"cho"), "{body}");
    let events = whole_events(&body);
    assert_eq!(events.len(), 2, "{body}");
    assert_eq!(events[0]["choices"][0]["delta"]["content"], "hi");
    assert_openai_error(&events[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_stream_without_done_is_an_error_in_the_log_and_for_the_client() {
    let (url, _) = raw_upstream(|mut s| async move {
        s.write_all(sse_head()).await.ok();
        s.write_all(CHUNK.as_bytes()).await.ok();
        s.shutdown().await.ok();
    })
    .await;
    let (home, mut proxy) = proxy_for(&url, "");
    let body = post_chat(&proxy, &chat(true)).await.text().await.unwrap();
    let events = whole_events(&body);
    assert_eq!(events.len(), 2, "{body}");
    assert!(
        events[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[DONE]"),
        "{body}"
    );
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.wait().success());
    let log = home.read("logs/proxy.log");
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("without [DONE]")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cr_and_crlf_event_endings_are_relayed_whole() {
    let event = CHUNK.trim_end();
    for ending in ["\r", "\r\n"] {
        let stream =
            format!("{event}{ending}{ending}: ping{ending}{ending}data: [DONE]{ending}{ending}");
        let (url, _) = raw_upstream(move |mut s| {
            let stream = stream.clone();
            async move {
                s.write_all(sse_head()).await.ok();
                // One byte at a time: every event boundary straddles two reads.
                for byte in stream.as_bytes() {
                    s.write_all(&[*byte]).await.ok();
                    s.flush().await.ok();
                }
            }
        })
        .await;
        let (_home, proxy) = proxy_for(&url, "");
        let body = post_chat(&proxy, &chat(true)).await.bytes().await.unwrap();
        let mut parser = warden::api::sse::SseParser::new();
        let mut events = parser.feed(&body);
        events.extend(parser.finish());
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(
            data,
            [event.strip_prefix("data: ").unwrap(), "[DONE]"],
            "ending {ending:?}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_both_chunked_and_sized_closes_its_upstream_connection() {
    // The first connection's answer is chunked and also declares a length
    // (RFC 9112 §6.3: read chunked, then close), and every request that comes
    // after it on that connection gets an answer of another length; a new
    // connection gets its own answer.
    fn stream(word: &str) -> String {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"finish_reason\":null}}]}}\n\ndata: [DONE]\n\n"
        )
    }
    fn chunked(body: &str, extra_head: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{extra_head}\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
    }
    fn stale() -> String {
        let body = stream("stale");
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let (url, hits) = raw_upstream(move |mut s| {
        let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                let answer = chunked(&stream("first"), "content-length: 5\r\n");
                s.write_all(answer.as_bytes()).await.ok();
                while read_request(&mut s).await {
                    s.write_all(stale().as_bytes()).await.ok();
                }
            } else {
                s.write_all(chunked(&stream("fresh"), "").as_bytes())
                    .await
                    .ok();
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            }
        }
    })
    .await;
    let (_home, proxy) = proxy_for(&url, "");
    let first = post_chat(&proxy, &chat(true)).await.text().await.unwrap();
    assert_eq!(
        whole_events(&first)[0]["choices"][0]["delta"]["content"],
        "first",
        "{first}"
    );
    let second = post_chat(&proxy, &chat(true)).await.text().await.unwrap();
    assert!(!second.contains("stale"), "{second}");
    assert_eq!(
        whole_events(&second)[0]["choices"][0]["delta"]["content"],
        "fresh",
        "{second}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}
