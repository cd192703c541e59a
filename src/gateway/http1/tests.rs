//! The differential test: one axum router served by hyper's HTTP/1 server and
//! by the gateway's, on two loopback ports; the same raw requests go to both,
//! and the answers (status, headers but `date`, body, interim answers) and
//! whether the connection stays open must be the same.
//!
//! Deliberate differences, not compared:
//! - the refusals (400, 414, 431): hyper's have an empty body; the gateway's
//!   carry a JSON error body (`super::super::malformed`), which the gateway
//!   added to hyper's answers before too, and are always `HTTP/1.1` with
//!   `connection: close` (after an HTTP/1.0 request on the same connection,
//!   hyper's says `HTTP/1.0` and not `connection: close`). Their status is
//!   compared.
//! - a head over [`crate::gateway::MAX_HEAD_BYTES`] is 431 here, always;
//!   hyper reads past its limit by up to one read, so a head a little over
//!   it may instead be parsed and refused for its long target (414).
//! - a body of declared length that the handler dropped unread: hyper keeps
//!   the connection if the rest was in its read buffer or came in one more
//!   read; here, if the rest (up to 64 KiB) has arrived. Alike for the
//!   bodies below, which arrive with their head.
//! - the text of a body error a handler sees (hyper's error type is its own);
//!   the handler here answers any body error alike.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::api::metrics::Metrics;
use crate::gateway::connections::{Limits, Registry, ServiceFuture, TrackedBody, serve_with};

/// Every wait in these tests ends by this.
const DEADLINE: Duration = Duration::from_secs(10);

/// Echoes what the handler saw: method, target, version, headers, body.
async fn echo(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut text = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
    for (name, value) in &parts.headers {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    match body.collect().await {
        Ok(body) => {
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&body.to_bytes()));
            text.into_response()
        }
        Err(_) => (StatusCode::BAD_REQUEST, "body error").into_response(),
    }
}

fn router() -> Router {
    Router::new()
        .route("/echo", any(echo))
        .route(
            "/stream",
            any(|| async {
                let parts =
                    ["one ", "two ", "three"].map(|s| Ok::<_, std::io::Error>(Bytes::from(s)));
                Body::from_stream(futures_util::stream::iter(parts))
            }),
        )
        .route("/empty", any(|| async { StatusCode::NO_CONTENT }))
        .route("/not-modified", any(|| async { StatusCode::NOT_MODIFIED }))
        .route("/ignore", any(|| async { "not read" }))
        .route(
            "/close",
            any(|| async {
                let mut r = "bye".into_response();
                r.headers_mut()
                    .insert("connection", HeaderValue::from_static("close"));
                r
            }),
        )
        .route(
            "/keep",
            any(|| async {
                let mut r = "kept".into_response();
                r.headers_mut()
                    .insert("connection", HeaderValue::from_static("keep-alive"));
                r
            }),
        )
        .route(
            "/multi",
            get(|| async {
                let mut r = "multi".into_response();
                r.headers_mut().append("x-a", HeaderValue::from_static("1"));
                r.headers_mut().append("x-a", HeaderValue::from_static("2"));
                r.headers_mut().insert("x-b", HeaderValue::from_static("3"));
                r
            }),
        )
        .route(
            "/length-then-chunked",
            get(|| async {
                let mut r = "abc".into_response();
                r.headers_mut()
                    .insert("content-length", HeaderValue::from_static("3"));
                r.headers_mut()
                    .insert("transfer-encoding", HeaderValue::from_static("chunked"));
                r
            }),
        )
        .route(
            "/chunked-then-length",
            get(|| async {
                let parts = ["abc"].map(|s| Ok::<_, std::io::Error>(Bytes::from(s)));
                let mut r = Body::from_stream(futures_util::stream::iter(parts)).into_response();
                r.headers_mut()
                    .insert("transfer-encoding", HeaderValue::from_static("chunked"));
                r.headers_mut()
                    .insert("content-length", HeaderValue::from_static("3"));
                r
            }),
        )
        .route("/sentinel", get(|| async { "<<sentinel>>" }))
}

/// The two servers' addresses: hyper's, then the gateway's.
struct Servers {
    hyper: std::net::SocketAddr,
    ours: std::net::SocketAddr,
}

async fn start(app: Router) -> Servers {
    let hyper_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let servers = Servers {
        hyper: hyper_listener.local_addr().unwrap(),
        ours: ours_listener.local_addr().unwrap(),
    };
    let hyper_app = app.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = hyper_listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(hyper_app.clone());
            let mut builder = hyper::server::conn::http1::Builder::new();
            // As the gateway configured it before it served HTTP/1 itself.
            builder.max_buf_size(crate::gateway::MAX_HEAD_BYTES);
            tokio::spawn(async move {
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let registry = Registry::new(Arc::new(Metrics::new()));
    let limits = Limits {
        header_timeout: DEADLINE,
        body_timeout: DEADLINE,
        keepalive_timeout: DEADLINE,
        max_connections: 1000,
        max_body_bytes: 1 << 20,
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = ours_listener.accept().await else {
                return;
            };
            let state = registry.admit(limits.max_connections).unwrap();
            let app = app.clone();
            tokio::spawn(async move {
                let conn = state.clone();
                let call =
                    move |request: axum::http::Request<super::body::RequestBody>| -> ServiceFuture {
                        conn.begin();
                        let conn = conn.clone();
                        let routed = app.clone().oneshot(request.map(Body::new));
                        Box::pin(async move {
                            let Ok(response) = routed.await;
                            Ok(response.map(|b| TrackedBody::new(b, conn)))
                        })
                    };
                serve_with(stream, state, limits, &call, None).await;
            });
        }
    });
    servers
}

/// One answer as read off the wire.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status_line: String,
    /// In order, `date` left out.
    headers: Vec<(String, String)>,
    /// As it came (chunked framing included).
    body: String,
}

/// What a connection did with a case.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    answers: Vec<Answer>,
    /// The connection answered a further request after these.
    open: bool,
}

/// Reads into `buf` until `done` says the bytes are enough; `false`: the
/// connection closed (or failed) first.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Ok(_) => false,
        Err(_) => panic!("no answer within {DEADLINE:?}"),
    }
}

/// Reads one answer (interim ones are answers too). `head_only`: the answer to
/// a HEAD request. `None`: the connection ended first.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Option<Answer> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(buf).expect("a valid answer head");
        let httparse::Status::Complete(head_len) = parsed else {
            if !read_more(stream, buf).await {
                return None;
            }
            continue;
        };
        let code = response.code.unwrap_or(0);
        let status_line = format!(
            "HTTP/1.{} {} {}",
            response.version.unwrap_or(9),
            code,
            response.reason.unwrap_or("")
        );
        let list: Vec<(String, String)> = response
            .headers
            .iter()
            .filter(|h| !h.name.eq_ignore_ascii_case("date"))
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let find = |name: &str| {
            list.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        // The gateway's refusals have a body, even to a HEAD request.
        let refusal = matches!(code, 400 | 414 | 431)
            && find("connection").as_deref() == Some("close")
            && find("content-type").as_deref() == Some("application/json");
        let no_body = (head_only && !refusal) || code < 200 || code == 204 || code == 304;
        buf.drain(..head_len);
        let body_len = if no_body {
            Some(0)
        } else if find("transfer-encoding").is_some() {
            None
        } else {
            find("content-length").map(|v| v.parse::<usize>().unwrap())
        };
        let body = match body_len {
            Some(n) => {
                while buf.len() < n {
                    if !read_more(stream, buf).await {
                        break;
                    }
                }
                buf.drain(..n.min(buf.len())).collect()
            }
            None if find("transfer-encoding").is_some() => loop {
                if let Some(end) = chunked_end(buf) {
                    break buf.drain(..end).collect();
                }
                if !read_more(stream, buf).await {
                    break std::mem::take(buf);
                }
            },
            None => {
                while read_more(stream, buf).await {}
                std::mem::take(buf)
            }
        };
        let body: Vec<u8> = body;
        return Some(Answer {
            status_line,
            headers: list,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
}

/// Where a chunked body (without trailers) ends in `buf`, if it does.
fn chunked_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size = usize::from_str_radix(std::str::from_utf8(&buf[at..line_end]).ok()?, 16).ok()?;
        if size == 0 {
            return (buf.len() >= line_end + 4).then_some(line_end + 4);
        }
        at = line_end + 2 + size + 2;
        if at > buf.len() {
            return None;
        }
    }
}

/// Sends `wire`, reads `expect` final answers (`true`: to a HEAD request),
/// then asks once more to learn whether the connection stayed open.
async fn run(addr: std::net::SocketAddr, wire: &[u8], expect: &[bool]) -> Transcript {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(wire).await;
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let mut finals = 0;
    while finals < expect.len() {
        let Some(answer) = read_answer(&mut stream, &mut buf, expect[finals]).await else {
            return Transcript {
                answers,
                open: false,
            };
        };
        if !answer
            .status_line
            .split(' ')
            .nth(1)
            .is_some_and(|c| c.starts_with('1'))
        {
            finals += 1;
        }
        answers.push(answer);
    }
    let sentinel = b"GET /sentinel HTTP/1.1\r\nhost: x\r\n\r\n";
    let open = stream.write_all(sentinel).await.is_ok()
        && read_answer(&mut stream, &mut buf, false)
            .await
            .is_some_and(|a| a.body == "<<sentinel>>");
    Transcript { answers, open }
}

/// Whether the two transcripts agree (refusals: status and close only).
fn same(hyper: &Transcript, ours: &Transcript) -> bool {
    if hyper.open != ours.open || hyper.answers.len() != ours.answers.len() {
        return false;
    }
    hyper.answers.iter().zip(&ours.answers).all(|(h, o)| {
        let code = |a: &Answer| a.status_line.split(' ').nth(1).unwrap_or("").to_string();
        let refusal = ["400", "414", "431"].contains(&code(h).as_str())
            && h.body.is_empty()
            && h.headers.contains(&("content-length".into(), "0".into()))
            && o.headers
                .contains(&("content-type".into(), "application/json".into()));
        if refusal {
            let too_long = |c: String| c == "414" || c == "431";
            (code(h) == code(o) || too_long(code(h)) && too_long(code(o)))
                && o.status_line.starts_with("HTTP/1.1 ")
                && o.headers.contains(&("connection".into(), "close".into()))
        } else {
            h == o
        }
    })
}

async fn compare(servers: &Servers, name: &str, wire: &[u8], expect: &[bool]) {
    let hyper = run(servers.hyper, wire, expect).await;
    let ours = run(servers.ours, wire, expect).await;
    assert!(
        same(&hyper, &ours),
        "{name}: {:?}\nhyper: {hyper:#?}\nours:  {ours:#?}",
        String::from_utf8_lossy(wire)
    );
}

/// Hand-written cases: (name, wire, one `bool` per final answer: a HEAD's).
fn corpus() -> Vec<(&'static str, Vec<u8>, Vec<bool>)> {
    let long_uri = format!(
        "GET /echo?{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(66_000)
    );
    let many_headers = format!(
        "GET /echo HTTP/1.1\r\nhost: x\r\n{}\r\n",
        (0..101)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let hundred_headers = format!(
        "GET /echo HTTP/1.1\r\n{}\r\n",
        (0..100)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let big_body = "b".repeat(100_000);
    let cases: Vec<(&'static str, String, Vec<bool>)> = vec![
        ("get", "GET /echo HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("query and headers", "GET /echo?a=1&b=%20 HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: Value  \r\nx-empty:\r\nx-dup: 1\r\nx-dup: 2\r\n\r\n".into(), vec![false]),
        ("absolute form", "GET http://example.com/echo?q HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("post with length", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello".into(), vec![false]),
        ("post length zero", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".into(), vec![false]),
        ("big body", format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{big_body}", big_body.len()), vec![false]),
        ("chunked", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n".into(), vec![false]),
        ("chunked with trailers", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n".into(), vec![false]),
        ("chunked upper hex", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n".into(), vec![false]),
        ("gzip, chunked", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("te not chunked", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n".into(), vec![false]),
        ("bad chunk size", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".into(), vec![false]),
        ("bad chunk end", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n".into(), vec![false]),
        ("chunk size bare lf", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("chunk data bare lf", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n".into(), vec![false]),
        ("last chunk bare lf", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\n\n".into(), vec![false]),
        ("lf in chunk extension", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;a\nxx\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("cr in chunk extension", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;a\rxx\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("space before chunk size", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("space after chunk size", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3 \t;e\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("space inside chunk size", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1 0\r\n0123456789abcdef\r\n0\r\n\r\n".into(), vec![false]),
        ("negative chunk size", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("0x chunk size", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("chunk size overflow", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("chunked not last", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("chunked then gzip lines", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("smuggle via bare lf ext", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2;\nxx\r\n45\r\n0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\nhost: x\r\n\r\n0\r\n\r\n".into(), vec![false]),
        ("pipelined after te and cl", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 30\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("pipelined after short cl", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nabcGET /echo HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false, false]),
        ("te with spaces and case", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding:  Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("te empty", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding:\r\n\r\n".into(), vec![false]),
        ("cl with space inside", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1 2\r\n\r\nabcdefghijkl".into(), vec![false]),
        ("cl empty", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length:\r\n\r\n".into(), vec![false]),
        ("expect, chunked not read", "POST /ignore HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("trailer bare cr", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: a\rb\r\n\r\n".into(), vec![false]),
        ("te and cl", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("cl after te", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("same cl twice", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc".into(), vec![false]),
        ("differing cl", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".into(), vec![false]),
        ("signed cl", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: +3\r\n\r\nabc".into(), vec![false]),
        ("cl list", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 3\r\n\r\nabc".into(), vec![false]),
        ("huge cl", "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999999999999999\r\n\r\n".into(), vec![false]),
        ("te on 1.0", "POST /echo HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), vec![false]),
        ("http 1.0", "GET /echo HTTP/1.0\r\n\r\n".into(), vec![false]),
        ("http 1.0 keep-alive", "GET /echo HTTP/1.0\r\nconnection: keep-alive\r\n\r\n".into(), vec![false]),
        ("http 1.0 stream", "GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n".into(), vec![false]),
        ("http 1.0 keep-alive answer", "GET /keep HTTP/1.0\r\n\r\n".into(), vec![false]),
        ("http 1.0 post", "POST /echo HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi".into(), vec![false]),
        ("connection close", "GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(), vec![false]),
        ("connection Close, upper", "GET /echo HTTP/1.1\r\nhost: x\r\nConnection: keep-alive, CLOSE\r\n\r\n".into(), vec![false]),
        ("close then keep-alive", "GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n".into(), vec![false]),
        ("answer closes", "GET /close HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("answer keeps", "GET /keep HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("stream", "GET /stream HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("head", "HEAD /echo HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![true]),
        ("head stream", "HEAD /stream HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![true]),
        ("204", "GET /empty HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("304", "GET /not-modified HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("answer with length then chunked", "GET /length-then-chunked HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("answer with chunked then length", "GET /chunked-then-length HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("multi headers", "GET /multi HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("404", "GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("405", "DELETE /multi HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("custom method", "PURGE /echo HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("pipelined", "GET /echo HTTP/1.1\r\nhost: x\r\n\r\nPOST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabcGET /stream HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false, false, false]),
        ("pipelined chunked", "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\nGET /echo?2 HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false, false]),
        ("pipelined after close", "GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nGET /echo?2 HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("pipelined then malformed", "GET /echo HTTP/1.1\r\nhost: x\r\n\r\nBAD\r\n\r\n".into(), vec![false, false]),
        ("body not read", "POST /ignore HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello".into(), vec![false]),
        ("big body not read", format!("POST /ignore HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{big_body}", big_body.len()), vec![false]),
        ("chunked body not read", "POST /ignore HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(), vec![false]),
        ("expect with body", "POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\nhello".into(), vec![false]),
        ("expect, body not read", "POST /ignore HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\nhello".into(), vec![false]),
        ("expect without body", "GET /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n\r\n".into(), vec![false]),
        ("expect other", "POST /echo HTTP/1.1\r\nhost: x\r\nexpect: something\r\ncontent-length: 1\r\n\r\nx".into(), vec![false]),
        ("leading blank lines", "\r\n\r\nGET /echo HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("bare lf", "GET /echo HTTP/1.1\nhost: x\n\n".into(), vec![false]),
        ("not http", "NOT HTTP AT ALL\r\n\r\n".into(), vec![false]),
        ("bad header", "GET /echo HTTP/1.1\r\nBad Header\r\n\r\n".into(), vec![false]),
        ("space before colon", "GET /echo HTTP/1.1\r\nhost : x\r\n\r\n".into(), vec![false]),
        ("control in value", "GET /echo HTTP/1.1\r\nx-a: a\x01b\r\n\r\n".into(), vec![false]),
        ("obs-fold", "GET /echo HTTP/1.1\r\nx-a: a\r\n b\r\n\r\n".into(), vec![false]),
        ("http 2.0 line", "GET /echo HTTP/2.0\r\n\r\n".into(), vec![false]),
        ("http 1.2", "GET /echo HTTP/1.2\r\n\r\n".into(), vec![false]),
        ("bad method", "G(T /echo HTTP/1.1\r\n\r\n".into(), vec![false]),
        ("bad target", "GET /e cho HTTP/1.1\r\n\r\n".into(), vec![false]),
        ("star target", "OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n".into(), vec![false]),
        ("uri too long", long_uri, vec![false]),
        ("101 headers", many_headers, vec![false]),
        ("100 headers", hundred_headers, vec![false]),
        ("utf-8 value", "GET /echo HTTP/1.1\r\nx-a: caf\u{e9}\r\n\r\n".into(), vec![false]),
    ];
    cases
        .into_iter()
        .map(|(name, wire, expect)| (name, wire.into_bytes(), expect))
        .collect()
}

#[tokio::test]
async fn the_corpus_is_answered_as_hyper_answers_it() {
    let servers = start(router()).await;
    for (name, wire, expect) in corpus() {
        compare(&servers, name, &wire, &expect).await;
    }
}

#[tokio::test]
async fn a_body_sent_only_after_100_continue_is_read_as_hyper_reads_it() {
    let servers = start(router()).await;
    for addr in [servers.hyper, servers.ours] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let interim = read_answer(&mut stream, &mut buf, false).await.unwrap();
        assert_eq!(interim.status_line, "HTTP/1.1 100 Continue");
        stream.write_all(b"hello").await.unwrap();
        let answer = read_answer(&mut stream, &mut buf, false).await.unwrap();
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
        assert!(answer.body.ends_with("\n\nhello"), "{answer:?}");
    }
}

/// Told when the handler starts, and when it is dropped.
#[derive(Clone, Default)]
struct Hang {
    started: Arc<tokio::sync::Notify>,
    dropped: Arc<tokio::sync::Notify>,
}

/// Reads the body (a body still unread is not watched for a hang-up, by
/// hyper either), then waits forever.
async fn hang(axum::extract::State(hang): axum::extract::State<Hang>, body: Bytes) -> &'static str {
    let _ = body;
    struct Guard(Arc<tokio::sync::Notify>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    let _guard = Guard(hang.dropped.clone());
    hang.started.notify_one();
    std::future::pending::<()>().await;
    "never"
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_the_handler_on_both() {
    let state = Hang::default();
    let app = Router::new()
        .route("/hang", any(hang))
        .with_state(state.clone());
    let servers = start(app).await;
    for addr in [servers.hyper, servers.ours] {
        for extra in [
            "\r\n",
            "content-length: 3\r\n\r\nabc",
            "transfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let wire = format!("POST /hang HTTP/1.1\r\nhost: x\r\n{extra}");
            stream.write_all(wire.as_bytes()).await.unwrap();
            tokio::time::timeout(DEADLINE, state.started.notified())
                .await
                .expect("the handler started");
            drop(stream);
            tokio::time::timeout(DEADLINE, state.dropped.notified())
                .await
                .unwrap_or_else(|_| {
                    panic!("{addr} {extra:?}: the handler was not dropped when the client hung up")
                });
        }
    }
}

/// One generated request: its wire form and whether it is a HEAD request.
fn request() -> impl Strategy<Value = (String, bool)> {
    let method = prop::sample::select(vec!["GET", "POST", "HEAD", "PUT"]);
    let path = prop::sample::select(vec![
        "/echo",
        "/echo?q=1%20&r",
        "/stream",
        "/ignore",
        "/empty",
        "/close",
        "/keep",
        "/nowhere",
    ]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
    let connection = prop::sample::select(vec![
        "",
        "connection: close\r\n",
        "connection: keep-alive\r\n",
        "Connection: Keep-Alive, Upgrade\r\n",
    ]);
    let expect = prop::sample::select(vec!["", "expect: 100-continue\r\n"]);
    let extra = prop::sample::select(vec![
        "",
        "x-a: b\r\n",
        "X-Upper: V a l\r\nx-a: 1\r\nx-a: 2\r\n",
        "x-tab:\tv\t\r\n",
        "bad header\r\n",
        "x-ctl: a\x01\r\n",
    ]);
    let body = prop::sample::select(vec!["", "x", "hello world"]);
    let framing = 0..8u8;
    (method, path, version, connection, expect, extra, body, framing).prop_map(
        |(method, path, version, connection, expect, extra, body, framing)| {
            let n = body.len();
            let framing = match framing {
                0 if body.is_empty() => "\r\n".to_string(),
                0 | 1 => format!("content-length: {n}\r\n\r\n{body}"),
                2 | 3 => {
                    let chunks = if body.is_empty() {
                        String::new()
                    } else if framing == 2 {
                        format!("{n:x}\r\n{body}\r\n")
                    } else {
                        let (a, b) = body.split_at(n / 2 + 1);
                        let b = if b.is_empty() {
                            String::new()
                        } else {
                            format!("{:X};ext=\"v\"\r\n{b}\r\n", b.len())
                        };
                        format!("{:x}\r\n{a}\r\n{b}", a.len())
                    };
                    format!("transfer-encoding: chunked\r\n\r\n{chunks}0\r\n\r\n")
                }
                4 => format!("content-length: {n}\r\ncontent-length: {n}\r\n\r\n{body}"),
                5 => format!("content-length: {n}\r\ncontent-length: {}\r\n\r\n{body}", n + 1),
                6 => format!(
                    "content-length: {n}\r\ntransfer-encoding: chunked\r\n\r\n{n:x}\r\n{body}\r\n0\r\n\r\n"
                ),
                _ => format!("transfer-encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n"),
            };
            (
                format!("{method} {path} {version}\r\nhost: x\r\n{connection}{expect}{extra}{framing}"),
                method == "HEAD",
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn generated_requests_are_answered_as_hyper_answers_them(
        requests in prop::collection::vec(request(), 1..4)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let servers = start(router()).await;
            let wire: String = requests.iter().map(|(w, _)| w.as_str()).collect();
            let heads: Vec<bool> = requests.iter().map(|(_, h)| *h).collect();
            // Answers after a closing one never come: read what comes.
            let hyper = run(servers.hyper, wire.as_bytes(), &heads).await;
            let ours = run(servers.ours, wire.as_bytes(), &heads).await;
            prop_assert!(same(&hyper, &ours), "{wire:?}\nhyper: {hyper:#?}\nours:  {ours:#?}");
            Ok(())
        })?;
    }
}
