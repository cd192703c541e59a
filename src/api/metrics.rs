//! Prometheus metrics and the request counters `/health` reports.
//!
//! Everything is recorded with atomics (prometheus-client's counters and gauges;
//! its histograms take a short per-histogram lock), so the hot path never waits on
//! a global lock. `/metrics` renders the registry as Prometheus text;
//! `/metrics?format=json` converts that same text to JSON, so the two can never
//! disagree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value, json};

/// The routes the gateway labels metrics with; anything else is `other`, which
/// keeps label cardinality bounded whatever clients send.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => ROUTES[0],
        "/v1/models" => ROUTES[1],
        "/v1/responses" => ROUTES[2],
        "/v1/messages" => ROUTES[3],
        "/v1/messages/count_tokens" => ROUTES[4],
        "/health" => ROUTES[5],
        "/health/live" => ROUTES[6],
        "/health/ready" => ROUTES[7],
        "/metrics" => ROUTES[8],
        "/v1/embeddings" => ROUTES[9],
        "/v1/completions" => ROUTES[10],
        p if p.starts_with("/v1/models/") => ROUTES[11],
        // Every other API path is passed through (one label, whatever the path).
        p if p.starts_with("/v1/") => ROUTES[12],
        _ => ROUTES[13],
    }
}

/// Every `route` label [`route_label`] hands out, in one place (a static, so
/// each has one address): a label from here is recognised by its address
/// ([`route_index`]).
static ROUTES: [&str; ROUTE_COUNT] = [
    "/v1/chat/completions",
    "/v1/models",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/models/{id}",
    "/v1/*",
    "other",
];

const ROUTE_COUNT: usize = 14;

/// The index in [`ROUTES`] of a label that came from there (compared by
/// address, so a lookup costs a few comparisons and no hashing).
fn route_index(route: &'static str) -> Option<usize> {
    ROUTES
        .iter()
        .position(|r| std::ptr::eq(r.as_ptr(), route.as_ptr()) && r.len() == route.len())
}

/// At most this many distinct model names get their own label; the rest are `other`.
const MAX_MODEL_LABELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelTokenLabel {
    model: String,
    kind: &'static str,
}

/// The status of an answer the HTTP layer gave itself (400, 414 or 431: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NatsLabel {
    route: &'static str,
    outcome: &'static str,
}

/// The outcome label of a NATS request, from the status the gateway answered
/// with (the same status an HTTP client would have seen).
pub fn nats_outcome(status: u16) -> &'static str {
    match status {
        200..=399 => "ok",
        429 => "rejected",
        499 => "abandoned",
        400..=499 => "bad_request",
        _ => "failed",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolOutcomeLabel {
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

/// One provider's metric handles, made once when the router is built: each
/// is the registered series itself, so recording is an atomic add.
#[derive(Clone, Debug)]
pub struct ProviderMetrics {
    /// Attempts sent to the provider.
    pub requests: Counter,
    /// Attempts that failed (connect, timeout, 429, 5xx, an error as first event).
    pub errors: Counter,
    /// Requests that moved on from this provider to another attempt.
    pub failovers: Counter,
    /// Times the provider entered cooldown.
    pub cooldowns: Counter,
    /// Time per attempt, until the answer (or the first event of a stream).
    pub latency: Histogram,
    /// Time from an attempt's start to a stream's first event (streams only).
    pub time_to_first_token: Histogram,
}

impl Default for ProviderMetrics {
    /// Detached handles (registered nowhere), for tests.
    fn default() -> Self {
        ProviderMetrics {
            requests: Counter::default(),
            errors: Counter::default(),
            failovers: Counter::default(),
            cooldowns: Counter::default(),
            latency: latency_histogram(),
            time_to_first_token: ttft_histogram(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PromptLabel {
    prompt: String,
}

/// Why a request was turned away before reaching the upstream.
#[derive(Clone, Copy, Debug)]
pub enum Rejection {
    Concurrency,
    Auth,
    BodyTooLarge,
    /// `server.max_body_memory` had no room for a body within `body_timeout`.
    BodyMemory,
}

impl Rejection {
    fn label(self) -> &'static str {
        match self {
            Rejection::Concurrency => "concurrency",
            Rejection::Auth => "auth",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::BodyMemory => "body_memory",
        }
    }
}

/// How one upstream call attempt ended, the `outcome` label of
/// `warden_upstream_attempts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Final response headers arrived (any status the client gets as it is).
    Ok,
    /// Failed (unreachable, 5xx, 429) and will be tried again.
    Retried,
    /// The last attempt failed: the client gets 502 (or the upstream's 429).
    Failed,
    /// No response headers within `upstream.first_byte_timeout`: 504, no retry.
    Timeout,
}

impl AttemptOutcome {
    const ALL: [AttemptOutcome; 4] = [
        AttemptOutcome::Ok,
        AttemptOutcome::Retried,
        AttemptOutcome::Failed,
        AttemptOutcome::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Retried => "retried",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Timeout => "timeout",
        }
    }
}

/// Latency buckets from 50 µs to 10 min: fine enough to see gateway overhead,
/// wide enough for slow model answers.
const LATENCY_BUCKETS: [f64; 20] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

fn latency_buckets() -> impl Iterator<Item = f64> {
    LATENCY_BUCKETS.into_iter()
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The OpenTelemetry GenAI buckets of `gen_ai.server.time_to_first_token`.
pub const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn ttft_histogram() -> Histogram {
    Histogram::new(TTFT_BUCKETS)
}

/// One model's counters; token series are created on first use, as before.
struct ModelCounters {
    requests: Counter,
    prompt: OnceLock<Counter>,
    completion: OnceLock<Counter>,
}

/// Request counters for `/health` (cheap atomics, read without locks).
#[derive(Default)]
pub struct RequestStats {
    pub total: AtomicU64,
    pub success: AtomicU64,
    pub error: AtomicU64,
    pub in_flight: AtomicU64,
    pub rejected: AtomicU64,
    /// Unix time in milliseconds of the last API request, 0 for none.
    pub last_request_ms: AtomicU64,
}

pub struct Metrics {
    registry: Registry,
    started: Instant,
    pub stats: RequestStats,
    requests: Family<RouteStatus, Counter>,
    duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    upstream_duration: Histogram,
    overhead: Histogram,
    in_flight: Gauge,
    rejected: Family<ReasonLabel, Counter>,
    model_requests: Family<ModelLabel, Counter>,
    /// The counters of models that have their own label, by name: a request for
    /// a known model then costs one read lock and no allocation (bounded by
    /// MAX_MODEL_LABELS, since only models with their own label are kept).
    model_cache: std::sync::RwLock<HashMap<String, Arc<ModelCounters>>>,
    /// Distinct model labels handed out (bounded by MAX_MODEL_LABELS).
    model_labels: std::sync::atomic::AtomicUsize,
    model_tokens: Family<ModelTokenLabel, Counter>,
    upstream_attempts: Family<OutcomeLabel, Counter>,
    /// `upstream_attempts`' series, by `AttemptOutcome as usize`.
    attempt_counters: [Counter; 4],
    /// Each route's `requests{status="200"}` series and `duration` histogram,
    /// by [`route_index`], once used.
    route_ok: [OnceLock<(Counter, Histogram)>; ROUTE_COUNT],
    uptime: Gauge<f64, std::sync::atomic::AtomicU64>,
    rss: Gauge,
    prompt_age: Family<PromptLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    prompt_fetch_attempts: Family<PromptLabel, Gauge>,
    prompt_fetch_failures: Family<PromptLabel, Gauge>,
    nats_requests: Family<NatsLabel, Counter>,
    nats_connected: Gauge,
    nats_in_flight: Gauge,
    nats_reconnects: Counter,
    provider_requests: Family<ProviderLabel, Counter>,
    provider_errors: Family<ProviderLabel, Counter>,
    provider_failovers: Family<ProviderLabel, Counter>,
    provider_cooldowns: Family<ProviderLabel, Counter>,
    provider_duration: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    provider_ttft: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    /// Spans lost: the export queue was full, or the collector failed or was too slow.
    pub telemetry_spans_dropped: Counter,
    /// Spans the collector accepted.
    pub telemetry_spans_exported: Counter,
    provider_in_flight: Family<ProviderLabel, Gauge>,
    provider_cooling: Family<ProviderLabel, Gauge>,
    client_connections: Gauge,
    request_body_bytes: Gauge,
    client_connections_shed: Counter,
    client_connections_refused: Counter,
    client_malformed: Family<StatusLabel, Counter>,
    /// Server tool calls over NATS (docs/contract.md §18), by declared tool.
    tool_calls: Family<ToolOutcomeLabel, Counter>,
    tool_duration: Family<ToolLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("warden");
        let m = Metrics {
            registry: Registry::default(),
            started: Instant::now(),
            stats: RequestStats::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_duration: latency_histogram(),
            overhead: latency_histogram(),
            in_flight: Gauge::default(),
            rejected: Family::default(),
            model_requests: Family::default(),
            model_cache: Default::default(),
            model_labels: Default::default(),
            model_tokens: Family::default(),
            upstream_attempts: Family::default(),
            attempt_counters: Default::default(),
            route_ok: Default::default(),
            uptime: Gauge::default(),
            rss: Gauge::default(),
            prompt_age: Family::default(),
            prompt_fetch_attempts: Family::default(),
            prompt_fetch_failures: Family::default(),
            nats_requests: Family::default(),
            nats_connected: Gauge::default(),
            nats_in_flight: Gauge::default(),
            nats_reconnects: Counter::default(),
            provider_requests: Family::default(),
            provider_errors: Family::default(),
            provider_failovers: Family::default(),
            provider_cooldowns: Family::default(),
            provider_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            provider_ttft: Family::new_with_constructor(ttft_histogram as fn() -> Histogram),
            telemetry_spans_dropped: Counter::default(),
            telemetry_spans_exported: Counter::default(),
            provider_in_flight: Family::default(),
            provider_cooling: Family::default(),
            client_connections: Gauge::default(),
            request_body_bytes: Gauge::default(),
            client_connections_shed: Counter::default(),
            client_connections_refused: Counter::default(),
            client_malformed: Family::default(),
            tool_calls: Family::default(),
            tool_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        let build_info: Family<Vec<(String, String)>, Gauge> = Family::default();
        build_info
            .get_or_create(&vec![("version".into(), crate::VERSION.into())])
            .set(1);
        registry.register(
            "build_info",
            "Version of the running warden proxy",
            build_info,
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request received to response body finished, by route",
            m.duration.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time spent waiting on the upstream, per request (all attempts)",
            m.upstream_duration.clone(),
        );
        registry.register(
            "gateway_overhead_seconds",
            "Time the gateway itself added to a request (total minus upstream time)",
            m.overhead.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Chat requests currently holding an upstream slot",
            m.in_flight.clone(),
        );
        registry.register(
            "client_connections",
            "Client connections open now (at most server.max_connections)",
            m.client_connections.clone(),
        );
        registry.register(
            "request_body_bytes",
            "Bytes of request bodies held in memory now, all connections together (at most server.max_body_memory)",
            m.request_body_bytes.clone(),
        );
        registry.register(
            "client_connections_shed",
            "Idle (or slow) client connections closed to make room at server.max_connections",
            m.client_connections_shed.clone(),
        );
        registry.register(
            "client_connections_refused",
            "New client connections closed at once: server.max_connections open, none idle",
            m.client_connections_refused.clone(),
        );
        registry.register(
            "client_malformed_requests",
            "Request heads answered by the HTTP layer itself (400 malformed, 414 URI too long, 431 head too large), by status",
            m.client_malformed.clone(),
        );
        registry.register(
            "http_requests_rejected",
            "Requests refused before reaching the upstream, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "model_requests",
            "Chat requests by model",
            m.model_requests.clone(),
        );
        registry.register(
            "model_tokens",
            "Tokens reported by the upstream, by model and kind (prompt, completion)",
            m.model_tokens.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Upstream call attempts by outcome (ok, retried, failed)",
            m.upstream_attempts.clone(),
        );
        registry.register(
            "uptime_seconds",
            "Seconds since the proxy started",
            m.uptime.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of the proxy process",
            m.rss.clone(),
        );
        registry.register(
            "prompt_cache_age_seconds",
            "Age of the prompt text being served, by prompt",
            m.prompt_age.clone(),
        );
        registry.register(
            "prompt_fetch_attempts",
            "Prompt fetch attempts since start, by prompt",
            m.prompt_fetch_attempts.clone(),
        );
        registry.register(
            "prompt_fetch_failures",
            "Failed prompt fetch attempts since start, by prompt",
            m.prompt_fetch_failures.clone(),
        );
        registry.register(
            "nats_requests",
            "Requests that came in over NATS (service and JetStream), by route and outcome \
             (ok, rejected, bad_request, failed, abandoned)",
            m.nats_requests.clone(),
        );
        registry.register(
            "nats_connected",
            "1 while the NATS connection is up, 0 otherwise (0 when NATS is off)",
            m.nats_connected.clone(),
        );
        registry.register(
            "nats_in_flight",
            "NATS requests being handled now (at most nats.max_concurrent)",
            m.nats_in_flight.clone(),
        );
        registry.register(
            "nats_reconnects",
            "Times the NATS connection came back after being lost",
            m.nats_reconnects.clone(),
        );
        registry.register(
            "provider_requests",
            "Upstream attempts sent to each provider",
            m.provider_requests.clone(),
        );
        registry.register(
            "provider_errors",
            "Failed attempts per provider: connect error, timeout, 429, 5xx, error as first event",
            m.provider_errors.clone(),
        );
        registry.register(
            "provider_failovers",
            "Requests that moved on from this provider to another attempt",
            m.provider_failovers.clone(),
        );
        registry.register(
            "provider_cooldowns",
            "Times each provider entered cooldown",
            m.provider_cooldowns.clone(),
        );
        registry.register(
            "provider_request_duration_seconds",
            "Time per attempt at each provider, until its answer (or a stream's first event)",
            m.provider_duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from an attempt's start to the first event of a streamed answer, per provider",
            m.provider_ttft.clone(),
        );
        registry.register(
            "telemetry_spans_dropped",
            "Trace spans lost: the export queue was full, or the collector refused, failed or \
             was too slow (0 while telemetry is off)",
            m.telemetry_spans_dropped.clone(),
        );
        registry.register(
            "telemetry_spans_exported",
            "Trace spans the OTLP collector accepted",
            m.telemetry_spans_exported.clone(),
        );
        registry.register(
            "provider_in_flight",
            "Calls in flight at each provider",
            m.provider_in_flight.clone(),
        );
        registry.register(
            "tool_calls",
            "Server tool calls over NATS by tool and outcome (ok, error, timeout, no_responders, invalid_reply)",
            m.tool_calls.clone(),
        );
        registry.register(
            "tool_call_duration_seconds",
            "Time from a server tool's NATS request to its reply, by tool",
            m.tool_duration.clone(),
        );
        registry.register(
            "provider_cooling",
            "1 while a provider is in cooldown, else 0",
            m.provider_cooling.clone(),
        );
        // Series that exist from the start at 0, so dashboards and alerts see them
        // before the first event.
        let attempt_counters = AttemptOutcome::ALL.map(|outcome| {
            m.upstream_attempts
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.label(),
                })
                .clone()
        });
        for why in [
            Rejection::Concurrency,
            Rejection::Auth,
            Rejection::BodyTooLarge,
            Rejection::BodyMemory,
        ] {
            let _ = m.rejected.get_or_create(&ReasonLabel {
                reason: why.label(),
            });
        }
        Metrics {
            registry,
            attempt_counters,
            ..m
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A request entered an API route.
    pub fn request_started(&self) {
        self.stats.total.fetch_add(1, Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.stats.last_request_ms.store(now_ms, Ordering::Relaxed);
    }

    /// A response finished (or the client went away), for any route.
    pub fn request_finished(&self, route: &'static str, status: u16, elapsed: Duration, api: bool) {
        match route_index(route).filter(|_| status == 200) {
            // The usual answer: its two series, looked up once per route.
            Some(i) => {
                let (ok, duration) = self.route_ok[i].get_or_init(|| {
                    (
                        self.requests
                            .get_or_create(&RouteStatus { route, status })
                            .clone(),
                        self.duration.get_or_create(&RouteLabel { route }).clone(),
                    )
                });
                ok.inc();
                duration.observe(elapsed.as_secs_f64());
            }
            None => {
                self.requests
                    .get_or_create(&RouteStatus { route, status })
                    .inc();
                self.duration
                    .get_or_create(&RouteLabel { route })
                    .observe(elapsed.as_secs_f64());
            }
        }
        if api {
            let counter = if status < 400 {
                &self.stats.success
            } else {
                &self.stats.error
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A NATS request was answered (or abandoned): the `/health` counters as
    /// for HTTP, and the NATS request counter.
    pub fn nats_request_finished(&self, route: &'static str, status: u16) {
        self.nats_requests
            .get_or_create(&NatsLabel {
                route,
                outcome: nats_outcome(status),
            })
            .inc();
        let counter = if status < 400 {
            &self.stats.success
        } else {
            &self.stats.error
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn nats_connected(&self, connected: bool) {
        self.nats_connected.set(i64::from(connected));
    }

    pub fn nats_reconnected(&self) {
        self.nats_reconnects.inc();
    }

    pub fn nats_in_flight(&self, delta: i64) {
        self.nats_in_flight.inc_by(delta);
    }

    pub fn slot_taken(&self) {
        self.in_flight.inc();
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slot_released(&self) {
        self.in_flight.dec();
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Rejection) {
        if matches!(why, Rejection::Concurrency) {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    /// The number of open client connections changed.
    pub fn connections_open(&self, open: usize) {
        self.client_connections.set(open as i64);
    }

    /// Bytes of request bodies held now (set when `/metrics` is read).
    pub fn request_body_bytes(&self, held: usize) {
        self.request_body_bytes.set(held as i64);
    }

    pub fn connection_shed(&self) {
        self.client_connections_shed.inc();
    }

    pub fn connection_refused(&self) {
        self.client_connections_refused.inc();
    }

    /// A request head the HTTP layer could not accept (400, 414 or 431).
    pub fn malformed_request(&self, status: u16) {
        self.client_malformed
            .get_or_create(&StatusLabel { status })
            .inc();
    }

    pub fn upstream_attempt(&self, outcome: AttemptOutcome) {
        // The series of every outcome exists from the start: a handle per
        // outcome, no label lookup per attempt.
        self.attempt_counters[outcome as usize].inc();
    }

    /// Records one exchange's upstream time and the overhead the gateway added.
    pub fn exchange_timing(&self, total: Duration, upstream: Duration) {
        self.upstream_duration.observe(upstream.as_secs_f64());
        self.overhead
            .observe(total.saturating_sub(upstream).as_secs_f64());
    }

    pub fn model_usage(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) {
        let cached = self
            .model_cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(model)
            .cloned();
        let counters = match cached {
            Some(counters) => counters,
            // A name too long for a label or with control characters counts as
            // `other`: labels stay short and printable (docs/contract.md §10).
            None if !crate::support::redact::client(model).is_plain() => {
                return self.model_usage_uncached("other", prompt_tokens, completion_tokens);
            }
            None => match self.model_label(model) {
                Some(counters) => counters,
                None => {
                    return self.model_usage_uncached("other", prompt_tokens, completion_tokens);
                }
            },
        };
        counters.requests.inc();
        for (counter, kind, n) in [
            (&counters.prompt, "prompt", prompt_tokens),
            (&counters.completion, "completion", completion_tokens),
        ] {
            if n > 0 {
                counter
                    .get_or_init(|| {
                        self.model_tokens.get_or_create_owned(&ModelTokenLabel {
                            model: model.to_string(),
                            kind,
                        })
                    })
                    .inc_by(n);
            }
        }
    }

    /// The counters of a model that gets (or already has) its own label, cached;
    /// `None` when the label budget is spent and it counts as `other`.
    fn model_label(&self, model: &str) -> Option<Arc<ModelCounters>> {
        let label = ModelLabel {
            model: model.to_string(),
        };
        let known = self.model_requests.get(&label).is_some();
        if !known && self.model_labels.fetch_add(1, Ordering::Relaxed) >= MAX_MODEL_LABELS {
            return None;
        }
        let counters = Arc::new(ModelCounters {
            requests: self.model_requests.get_or_create_owned(&label),
            prompt: OnceLock::new(),
            completion: OnceLock::new(),
        });
        let mut cache = self
            .model_cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(cache.entry(label.model).or_insert(counters).clone())
    }

    fn model_usage_uncached(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) {
        let label = |model: &str| ModelLabel {
            model: model.to_string(),
        };
        self.model_requests.get_or_create(&label(model)).inc();
        for (kind, n) in [("prompt", prompt_tokens), ("completion", completion_tokens)] {
            if n > 0 {
                self.model_tokens
                    .get_or_create(&ModelTokenLabel {
                        model: model.to_string(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
    }

    /// The handles of one provider's series (they exist at 0 from now on).
    /// Provider names come from the configuration, so the labels are bounded.
    pub fn provider(&self, name: &str) -> ProviderMetrics {
        let label = ProviderLabel {
            provider: name.to_string(),
        };
        let _ = self.provider_in_flight.get_or_create(&label);
        let _ = self.provider_cooling.get_or_create(&label);
        ProviderMetrics {
            requests: self.provider_requests.get_or_create(&label).clone(),
            errors: self.provider_errors.get_or_create(&label).clone(),
            failovers: self.provider_failovers.get_or_create(&label).clone(),
            cooldowns: self.provider_cooldowns.get_or_create(&label).clone(),
            latency: self.provider_duration.get_or_create(&label).clone(),
            time_to_first_token: self.provider_ttft.get_or_create(&label).clone(),
        }
    }

    /// Sets the scrape-time gauges for one provider.
    /// One server tool call finished (`outcome`: ok, error, timeout,
    /// no_responders, invalid_reply). `tool` is a declared name: the series are bounded.
    pub fn tool_call(&self, tool: &str, outcome: &'static str, took: std::time::Duration) {
        self.tool_calls
            .get_or_create(&ToolOutcomeLabel {
                tool: tool.to_string(),
                outcome,
            })
            .inc();
        self.tool_duration
            .get_or_create(&ToolLabel {
                tool: tool.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn provider_state(&self, name: &str, in_flight: u32, cooling: bool) {
        let label = ProviderLabel {
            provider: name.to_string(),
        };
        self.provider_in_flight
            .get_or_create(&label)
            .set(i64::from(in_flight));
        self.provider_cooling
            .get_or_create(&label)
            .set(i64::from(cooling));
    }

    /// Sets the scrape-time gauges for one prompt.
    pub fn prompt_state(&self, name: &str, age_secs: Option<f64>, attempts: u64, failures: u64) {
        let label = PromptLabel {
            prompt: name.to_string(),
        };
        self.prompt_age
            .get_or_create(&label)
            .set(age_secs.unwrap_or(0.0));
        self.prompt_fetch_attempts
            .get_or_create(&label)
            .set(attempts as i64);
        self.prompt_fetch_failures
            .get_or_create(&label)
            .set(failures as i64);
    }

    /// Prometheus text exposition (OpenMetrics-compatible text format).
    pub fn render_text(&self) -> String {
        self.uptime.set(self.uptime().as_secs_f64());
        self.rss
            .set(crate::support::memory::rss_bytes().unwrap_or(0) as i64);
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools that do
    /// not ask for OpenMetrics (`curl`, `promtool check metrics`): counter families
    /// are named with their `_total` suffix and there is no `# EOF` line.
    pub fn render_prometheus_text(&self) -> String {
        openmetrics_to_prometheus(&self.render_text())
    }

    /// The same figures as [`Metrics::render_text`], as JSON.
    pub fn render_json(&self) -> Value {
        exposition_to_json(&self.render_text())
    }
}

/// Rewrites OpenMetrics text as Prometheus 0.0.4 text (see
/// [`Metrics::render_prometheus_text`]).
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(meta.as_deref().unwrap_or(line).trim_end());
        out.push('\n');
    }
    out
}

/// Converts Prometheus text exposition to
/// `{"metrics": {name: {"type","help","samples":[{"name","labels","value"}]}}}`.
pub fn exposition_to_json(text: &str) -> Value {
    fn family<'a>(families: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
        families
            .entry(name.to_string())
            .or_insert_with(|| json!({"type": null, "help": null, "samples": []}))
            .as_object_mut()
            .expect("families are objects")
    }
    let mut families: Map<String, Value> = Map::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (parts.next(), parts.next(), parts.next());
            if let (Some(kind @ ("HELP" | "TYPE")), Some(name)) = (kind, name) {
                current = name.to_string();
                let fam = family(&mut families, name);
                fam.insert(kind.to_lowercase(), json!(value.unwrap_or("")));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Map::new()),
        };
        let value: Value = value
            .parse::<f64>()
            .ok()
            .and_then(|v| serde_json::Number::from_f64(v).map(Value::Number))
            .unwrap_or_else(|| json!(value));
        let owner = if name.starts_with(current.as_str()) {
            current.clone()
        } else {
            name.to_string()
        };
        let fam = family(&mut families, &owner);
        if let Some(Value::Array(samples)) = fam.get_mut("samples") {
            samples.push(json!({"name": name, "labels": labels, "value": value}));
        }
    }
    json!({ "metrics": families })
}

fn parse_labels(text: &str) -> Map<String, Value> {
    let mut labels = Map::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let key = key.trim_start_matches(',').trim().to_string();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, json!(value));
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_same_figures_as_text() {
        let m = Metrics::new();
        m.request_finished("/v1/models", 200, Duration::from_millis(3), true);
        m.request_finished("/v1/models", 200, Duration::from_millis(3), true);
        m.model_usage("gpt-5", 7, 3);
        let text = m.render_text();
        assert!(
            text.contains("warden_http_requests_total{route=\"/v1/models\",status=\"200\"} 2"),
            "{text}"
        );
        let classic = openmetrics_to_prometheus(&text);
        assert!(
            classic.contains("# TYPE warden_http_requests_total counter\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"));
        let json = exposition_to_json(&text);
        let samples = &json["metrics"]["warden_http_requests"]["samples"];
        assert_eq!(samples[0]["value"], json!(2.0));
        assert_eq!(samples[0]["labels"]["route"], json!("/v1/models"));
        let tokens = &json["metrics"]["warden_model_tokens"]["samples"];
        assert_eq!(tokens.as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_route_label_counts_in_one_series_whichever_way_it_is_looked_up() {
        let m = Metrics::new();
        let chat = route_label("/v1/chat/completions");
        assert_eq!(route_index(chat), Some(0));
        // A label equal in text but not from `route_label` takes the lookup path.
        let other: &'static str = Box::leak(String::from("/v1/chat/completions").into_boxed_str());
        assert_eq!(route_index(other), None);
        for route in [chat, chat, other] {
            m.request_finished(route, 200, Duration::from_millis(1), true);
        }
        m.request_finished(chat, 500, Duration::from_millis(1), true);
        m.upstream_attempt(AttemptOutcome::Retried);
        let text = m.render_text();
        for line in [
            "warden_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 3\n",
            "warden_http_requests_total{route=\"/v1/chat/completions\",status=\"500\"} 1\n",
            "warden_http_request_duration_seconds_count{route=\"/v1/chat/completions\"} 4\n",
            "warden_upstream_attempts_total{outcome=\"retried\"} 1\n",
            "warden_upstream_attempts_total{outcome=\"ok\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn model_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..200 {
            m.model_usage(&format!("model-{i}"), 1, 1);
        }
        let text = m.render_text();
        assert_eq!(
            text.matches("warden_model_requests_total{").count(),
            MAX_MODEL_LABELS + 1
        );
    }
}
