//! NATS ingress vs HTTP ingress on the same proxy and the same built-in mock
//! upstream: a closed loop of N requests in flight for a fixed time, per
//! ingress; prints one Markdown table row per run (req/s, p50, p99).
//! Also a raw NATS round trip (a trivial responder in this process) so the
//! NATS server's own share of the latency is visible.
//!
//! Driven by `benches/nats.sh`, which starts nats-server and the proxy:
//!   nats_bench --http URL --nats URL --inflight "1 64" --secs 10

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

const BODY: &str =
    r#"{"model":"gpt-5","messages":[{"role":"user","content":"hello from the benchmark"}]}"#;

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Http,
    Nats,
    NatsEcho,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Http => "HTTP POST /v1/chat/completions",
            Target::Nats => "NATS request warden.chat",
            Target::NatsEcho => "NATS round trip, trivial responder (baseline)",
        }
    }
}

struct Args {
    http: String,
    nats: String,
    inflight: Vec<usize>,
    secs: u64,
}

fn args() -> Args {
    let mut a = Args {
        http: "http://127.0.0.1:8000".into(),
        nats: "nats://127.0.0.1:4222".into(),
        inflight: vec![1, 64],
        secs: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--http" => a.http = value,
            "--nats" => a.nats = value,
            "--inflight" => {
                a.inflight = value
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            }
            "--secs" => a.secs = value.parse().unwrap_or(10),
            // `cargo bench` passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    a
}

async fn one(
    target: Target,
    http: &reqwest::Client,
    url: &str,
    nc: &async_nats::Client,
) -> Result<(), String> {
    match target {
        Target::Http => {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(BODY)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            r.bytes().await.map_err(|e| e.to_string())?;
        }
        Target::Nats => {
            let m = nc
                .request("warden.chat", Bytes::from_static(BODY.as_bytes()))
                .await
                .map_err(|e| e.to_string())?;
            if m.headers
                .as_ref()
                .is_some_and(|h| h.get("Nats-Service-Error").is_some())
            {
                return Err(String::from_utf8_lossy(&m.payload).into_owned());
            }
        }
        Target::NatsEcho => {
            nc.request("bench.echo", Bytes::from_static(BODY.as_bytes()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Runs `inflight` workers for `secs`; returns (requests/s, p50 µs, p99 µs, errors).
async fn run(
    target: Target,
    inflight: usize,
    secs: u64,
    http: &reqwest::Client,
    url: &str,
    nc: &async_nats::Client,
) -> (f64, f64, f64, usize) {
    // Warm-up: connections open, caches filled.
    for _ in 0..inflight.max(20) {
        let _ = one(target, http, url, nc).await;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..inflight {
        let (http, url, nc) = (http.clone(), url.to_string(), nc.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                match one(target, &http, &url, &nc).await {
                    Ok(()) => latencies.push(t.elapsed().as_micros() as u32),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("{}: {e}", target.label());
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.expect("worker");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            0.0
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64
        }
    };
    (all.len() as f64 / elapsed, pct(0.50), pct(0.99), errors)
}

#[tokio::main]
async fn main() {
    let a = args();
    let url = format!("{}/v1/chat/completions", a.http.trim_end_matches('/'));
    let http = warden::support::http_client::client_builder()
        .pool_max_idle_per_host(256)
        .no_proxy()
        .build()
        .expect("client");
    let nc = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(&a.nats)
        .await
        .expect("connect to NATS");
    // The baseline responder: replies with a fixed body, on its own connection.
    let responder = async_nats::connect(&a.nats).await.expect("connect");
    let mut sub = responder.subscribe("bench.echo").await.expect("subscribe");
    let echo = Arc::new(responder);
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = echo.publish(reply, Bytes::from_static(b"{}")).await;
            }
        }
    });
    println!("| ingress | in flight | requests/s | p50 | p99 | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut p50 = std::collections::HashMap::new();
    for &inflight in &a.inflight {
        for target in [Target::Http, Target::Nats, Target::NatsEcho] {
            let (rps, p50_us, p99_us, errors) =
                run(target, inflight, a.secs, &http, &url, &nc).await;
            p50.insert((target.label(), inflight), p50_us);
            println!(
                "| {} | {inflight} | {rps:.0} | {:.3} ms | {:.3} ms | {errors} |",
                target.label(),
                p50_us / 1000.0,
                p99_us / 1000.0
            );
        }
    }
    println!();
    for &inflight in &a.inflight {
        let h = p50[&(Target::Http.label(), inflight)];
        let n = p50[&(Target::Nats.label(), inflight)];
        println!(
            "- {inflight} in flight: the NATS ingress adds {:+.3} ms at p50 over the HTTP ingress",
            (n - h) / 1000.0
        );
    }
}
