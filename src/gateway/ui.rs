//! The status page: `GET /ui` serves one self-contained HTML file (embedded in
//! the binary, no external assets) that refreshes itself from `/health`,
//! `/metrics?format=json`, `GET /ui/history.json` (the recent history ring
//! plus every provider's passive health) and `GET /ui/usage.json` (usage per
//! key name and per model, from memory). Same policy as `/health`: open, and
//! nothing secret is shown (a key by its name only).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Gateway;
use super::history::{CAPACITY, SAMPLE_EVERY};

const PAGE: &str = include_str!("ui.html");

pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src 'self' data:",
                ),
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// `{"interval_secs", "capacity", "samples": [...], "providers": [...],
/// "failures": [...]}` (failures: the recent 5xx answers, newest first, with
/// their trace ids when traces are on).
pub async fn history(State(gw): State<Arc<Gateway>>) -> Response {
    let now = SystemTime::now();
    let providers: Vec<_> = gw
        .live()
        .router
        .providers()
        .iter()
        .map(|p| {
            let h = p.health();
            let cooldown_secs = h.cooldown_until.map(|until| {
                until
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO)
                    .as_secs_f64()
            });
            json!({
                "name": &*p.name,
                "state": if h.cooling { "cooling" } else { "healthy" },
                "in_flight": h.in_flight,
                "failures": h.failures,
                "cooldown_secs": cooldown_secs,
                "last_error": h.last_error,
            })
        })
        .collect();
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(json!({
            "interval_secs": SAMPLE_EVERY.as_secs(),
            "capacity": CAPACITY,
            "samples": gw.history.samples(),
            "providers": providers,
            "failures": gw.history.failures(),
        })),
    )
        .into_response()
}

/// `{"enabled", "keys": [{"name", "period", "today", "period_figures"}],
/// "models": [{"model", "today", "month"}]}`: each figure `requests`,
/// `refused`, `input_tokens`, `output_tokens`, `cached_tokens`, `tokens`,
/// `cost_usd`. From memory (filled from the ledger once at start); keys by
/// name only.
pub async fn usage(State(gw): State<Arc<Gateway>>) -> Response {
    let mut body = gw.keys.usage_summary();
    body["enabled"] = json!(gw.keys.enforced());
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}
