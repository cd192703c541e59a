//! Operational endpoints: `/health`, `/health/live`, `/health/ready`, `/metrics`.
//! None of them requires the bearer token (probes and scrapers have none), and
//! none of them shows a secret.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Gateway;
use crate::api::health::{
    HealthReport, HealthStatus, KeysHealth, MemoryInfo, NatsHealth, PromptHealth, ProviderReport,
    RequestCounts, UpstreamInfo,
};
use crate::support::memory::rss_bytes;
use crate::support::time::now_rfc3339;

/// The `prompts` map of `/health`: empty unless the upstream uses prompts.
fn prompt_report(gw: &Gateway) -> BTreeMap<String, PromptHealth> {
    if !gw.uses_prompts() {
        return BTreeMap::new();
    }
    gw.prompts
        .status()
        .into_iter()
        .map(|s| {
            let health = PromptHealth {
                source: s.source.as_str().to_string(),
                age_secs: s.age_secs.map(|a| (a * 10.0).round() / 10.0),
                fresh: s.fresh,
            };
            (s.name, health)
        })
        .collect()
}

/// Sets the per-prompt gauges just before a scrape.
fn record_prompt_metrics(gw: &Gateway) {
    if !gw.uses_prompts() {
        return;
    }
    let counters = gw.prompts.fetch_counters();
    for status in gw.prompts.status() {
        let (attempts, failures) = counters
            .iter()
            .find(|c| c.name == status.name)
            .map_or((0, 0), |c| (c.attempts, c.failures));
        gw.metrics
            .prompt_state(&status.name, status.age_secs, attempts, failures);
    }
}

/// The `providers` map of `/health`.
fn provider_report(gw: &Gateway) -> BTreeMap<String, ProviderReport> {
    gw.live()
        .router
        .providers()
        .iter()
        .map(|p| {
            let h = p.health();
            let report = ProviderReport {
                state: if h.cooling { "cooling" } else { "healthy" }.to_string(),
                in_flight: h.in_flight,
                failures: h.failures,
                cooldown_until: h
                    .cooldown_until
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                last_error: h.last_error,
            };
            (p.name.to_string(), report)
        })
        .collect()
}

pub fn report(gw: &Gateway) -> HealthReport {
    let s = &gw.metrics.stats;
    let (success, error) = (
        s.success.load(Ordering::Relaxed),
        s.error.load(Ordering::Relaxed),
    );
    let last_ms = s.last_request_ms.load(Ordering::Relaxed);
    let last_request_at = (last_ms > 0).then(|| {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(last_ms);
        humantime::format_rfc3339_seconds(when).to_string()
    });
    let prompts = prompt_report(gw);
    let ready = gw.is_ready();
    let nats_state = gw.nats.state();
    let mut status = HealthReport::derive_status(ready, &prompts);
    // Upstream trouble never makes the proxy itself `fail` (a watchdog would
    // restart a healthy proxy for it): some models unreachable is a warning.
    let cooling_models = gw.live().router.cooling_models();
    if status == HealthStatus::Pass && !cooling_models.is_empty() {
        status = HealthStatus::Warn;
    }
    if status == HealthStatus::Pass
        && !matches!(
            nats_state,
            crate::gateway::nats::NatsState::Off | crate::gateway::nats::NatsState::Connected
        )
    {
        // Configured but away: HTTP still serves (readiness unchanged), but say so.
        status = HealthStatus::Warn;
    }
    let keys = gw.keys.health().map(|(count, ledger)| {
        if status == HealthStatus::Pass && ledger != crate::keys::ledger::LedgerState::Ok {
            status = HealthStatus::Warn;
        }
        let shared = gw.keys.shared_state();
        if status == HealthStatus::Pass
            && shared.is_some_and(|s| s != crate::keys::shared::SharedState::Ok)
        {
            status = HealthStatus::Warn;
        }
        KeysHealth {
            count,
            ledger: ledger.as_str().to_string(),
            shared: shared.map(|s| s.as_str().to_string()),
        }
    });
    HealthReport {
        status,
        version: crate::VERSION.to_string(),
        pid: std::process::id(),
        uptime_secs: (gw.metrics.uptime().as_secs_f64() * 1000.0).round() / 1000.0,
        timestamp: now_rfc3339(),
        ready,
        upstream: UpstreamInfo {
            url: crate::support::redact::url(&gw.live().config.upstream.url),
            api: gw.live().config.upstream.api.as_str().to_string(),
        },
        requests: RequestCounts {
            total: s.total.load(Ordering::Relaxed),
            success,
            error,
            success_rate: if success + error == 0 {
                1.0
            } else {
                success as f64 / (success + error) as f64
            },
            in_flight: s.in_flight.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            last_request_at,
        },
        prompts,
        providers: provider_report(gw),
        memory: MemoryInfo {
            rss_bytes: rss_bytes().unwrap_or(0),
        },
        cooling_models,
        nats: NatsHealth {
            state: nats_state.as_str().to_string(),
            in_flight: gw.nats.in_flight(),
            subscribed: gw.nats.subscribed()
                && nats_state == crate::gateway::nats::NatsState::Connected,
        },
        keys,
    }
}

/// Per key name: requests, refusals, tokens and cost (Prometheus text). One
/// series set per key in keys.toml (and `-`, the operator): bounded by the
/// number of keys.
fn key_metrics(gw: &Gateway) -> String {
    use std::fmt::Write;
    let stats = gw.keys.stats();
    if stats.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let families: [(&str, &str, &str); 4] = [
        (
            "warden_key_requests_total",
            "counter",
            "Requests answered per key name",
        ),
        (
            "warden_key_refused_total",
            "counter",
            "Requests refused by a key's limits (403, 429)",
        ),
        (
            "warden_key_tokens_total",
            "counter",
            "Tokens per key name and direction",
        ),
        (
            "warden_key_cost_usd_total",
            "counter",
            "Cost in USD per key name, from [prices]",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        for (key, s) in &stats {
            let key = key.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = match i {
                0 => writeln!(
                    out,
                    "{name}{{key=\"{key}\"}} {}",
                    s.requests.load(Ordering::Relaxed)
                ),
                1 => writeln!(
                    out,
                    "{name}{{key=\"{key}\"}} {}",
                    s.refused.load(Ordering::Relaxed)
                ),
                2 => writeln!(
                    out,
                    "{name}{{key=\"{key}\",direction=\"input\"}} {}\n{name}{{key=\"{key}\",direction=\"output\"}} {}",
                    s.input_tokens.load(Ordering::Relaxed),
                    s.output_tokens.load(Ordering::Relaxed)
                ),
                _ => writeln!(
                    out,
                    "{name}{{key=\"{key}\"}} {}",
                    s.cost_micros.load(Ordering::Relaxed) as f64 / 1e6
                ),
            };
        }
    }
    out
}

pub async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let report = report(&gw);
    let code = if report.status == HealthStatus::Fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report)).into_response()
}

pub async fn live() -> Response {
    Json(json!({"status": "pass"})).into_response()
}

/// 200 while the proxy serves; 503 while it starts or drains, and, with
/// `nats.required = true`, while NATS is not connected — unless the query says
/// `nats=ignore` (the daemon's, the watchdog's and a restart's probe).
pub async fn ready(
    State(gw): State<Arc<Gateway>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    // `pid`: which process answered (two share the socket during a restart).
    let pid = std::process::id();
    let unready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "fail", "reason": reason, "pid": pid})),
        )
            .into_response()
    };
    if !gw.is_ready() {
        return unready("starting or draining".into());
    }
    let nats = gw.nats.state();
    let ignore_nats = query.get("nats").is_some_and(|v| v == "ignore");
    if gw.config.nats.required && !ignore_nats && nats != crate::gateway::nats::NatsState::Connected
    {
        return unready(format!(
            "NATS is {} and nats.required = true",
            nats.as_str()
        ));
    }
    Json(json!({"status": "pass", "pid": pid})).into_response()
}

/// Prometheus text by default; OpenMetrics when the scraper asks for it (as
/// Prometheus does); JSON with `?format=json`.
pub async fn metrics(
    State(gw): State<Arc<Gateway>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    record_prompt_metrics(&gw);
    gw.metrics.request_body_bytes(gw.body_budget.held());
    for provider in gw.live().router.providers() {
        let h = provider.health();
        gw.metrics
            .provider_state(&provider.name, h.in_flight, h.cooling);
    }
    if query.get("format").map(String::as_str) == Some("json") {
        return Json(gw.metrics.render_json()).into_response();
    }
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let keys = key_metrics(&gw);
    let (content_type, body) = if wants_openmetrics {
        let mut text = gw.metrics.render_text();
        if !keys.is_empty() {
            let at = text.rfind("# EOF").unwrap_or(text.len());
            text.insert_str(at, &keys);
        }
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        let mut text = gw.metrics.render_prometheus_text();
        text.push_str(&keys);
        ("text/plain; version=0.0.4; charset=utf-8", text)
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}
