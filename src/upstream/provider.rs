//! One provider: a named upstream of some kind ([`Upstream`]), the models it
//! serves, its place in the routing order, and its passive health.
//!
//! Health is learned from real traffic only (no background probes):
//!
//! - `failures` consecutive failures (connect error, timeout, 5xx, an error as
//!   the first event of a stream) put the provider in cooldown for `cooldown`
//!   seconds; a 429 cools it at once, with or without `Retry-After`.
//! - A `Retry-After` longer than `cooldown` wins, and a cooldown deadline is
//!   only ever moved later, never shortened by a later, shorter answer.
//! - When the cooldown has passed, exactly one request is let through as a probe
//!   (half-open); every other request treats the provider as cooling until the
//!   probe's outcome is known. A success closes it, a failure cools it again.
//!
//! Everything on the request path is a few relaxed atomics; the mutex only
//! guards the last error text, written on failure and read by `/health`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::Upstream;
use crate::api::metrics::ProviderMetrics;
use crate::home::config::ProviderSettings;

/// Nanoseconds on a monotonic clock, never 0 (0 means "no deadline").
fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// How the router may use a provider right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Healthy: go ahead.
    Open,
    /// The cooldown is over and this request is the one probe.
    Probe,
    /// Cooling (or another request is probing): skip it, for about this long.
    Cooling(Duration),
    /// At its own `max_concurrent`: skip it.
    Full,
}

/// Why an attempt failed, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 429: cools the provider at once.
    RateLimited,
    /// Connect error, 5xx, broken answer, error as the first stream event.
    Failed,
    /// No answer in time.
    Timeout,
}

/// What `/health` shows for one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHealth {
    pub cooling: bool,
    pub in_flight: u32,
    pub failures: u32,
    pub cooldown_until: Option<SystemTime>,
    pub last_error: Option<String>,
}

pub struct Provider {
    pub name: Arc<str>,
    /// `x-warden-provider: NAME`, made once.
    pub header: axum::http::HeaderValue,
    pub settings: ProviderSettings,
    pub upstream: Upstream,
    /// Its series in `/metrics`.
    pub metrics: ProviderMetrics,
    in_flight: AtomicU32,
    failures: AtomicU32,
    /// [`now_nanos`] until which it is skipped; 0 = not cooling.
    cooldown_until: AtomicU64,
    probing: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// What its `GET /models` reported (only with `models = []`).
    discovered: RwLock<Arc<[String]>>,
    /// Host and port of its URL, for attempt spans (`None` for the mock).
    pub server: Option<(String, u16)>,
}

impl Provider {
    pub fn new(
        settings: ProviderSettings,
        upstream: Upstream,
        metrics: ProviderMetrics,
    ) -> Provider {
        Provider {
            name: Arc::from(settings.name.as_str()),
            header: axum::http::HeaderValue::from_str(&settings.name)
                .unwrap_or(axum::http::HeaderValue::from_static("invalid-name")),
            upstream,
            metrics,
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            cooldown_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            last_error: Mutex::new(None),
            discovered: RwLock::new(Arc::from(Vec::new())),
            server: if settings.is_mock() {
                None
            } else {
                crate::telemetry::server_of(&settings.url)
            },
            settings,
        }
    }

    /// `gen_ai.provider.name`: the well-known name of its API.
    pub fn genai_system(&self) -> crate::telemetry::GenAiSystem {
        use crate::home::config::UpstreamApi;
        use crate::telemetry::GenAiSystem;
        match self.upstream {
            super::Upstream::Mock(_) => GenAiSystem::Mock,
            _ if self.settings.api == UpstreamApi::Anthropic => GenAiSystem::Anthropic,
            _ if self.settings.api == UpstreamApi::Command => GenAiSystem::Command,
            _ => GenAiSystem::OpenAi,
        }
    }

    /// Whether a model name is one this provider declares (`*` = any; a
    /// trailing `*` is a prefix), or, with `models = []`, one it reported.
    pub fn serves(&self, model: &str) -> bool {
        if self.discovers() {
            return self
                .discovered
                .read()
                .is_ok_and(|ids| ids.iter().any(|id| id == model));
        }
        self.settings
            .models
            .iter()
            .any(|pattern| pattern_matches(pattern, model))
    }

    /// `models = []`: its models are what its `GET /models` reports.
    pub fn discovers(&self) -> bool {
        self.settings.models.is_empty()
    }

    /// The model ids it reported (empty unless it discovers).
    pub fn discovered(&self) -> Vec<String> {
        self.discovered
            .read()
            .map(|ids| ids.to_vec())
            .unwrap_or_default()
    }

    pub fn set_discovered(&self, ids: Vec<String>) {
        if let Ok(mut current) = self.discovered.write() {
            *current = Arc::from(ids);
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether it could be admitted now, without claiming anything (used to
    /// rank candidates; [`Provider::admit`] decides).
    pub fn looks_available(&self) -> bool {
        let until = self.cooldown_until.load(Ordering::Acquire);
        (until == 0 || (now_nanos() >= until && !self.probing.load(Ordering::Acquire)))
            && !self.is_full()
    }

    /// At its own `max_concurrent`.
    pub fn is_full(&self) -> bool {
        self.settings
            .max_concurrent
            .is_some_and(|max| self.in_flight() as usize >= max)
    }

    /// Decides whether this request may use the provider; a `Probe` claims the
    /// one half-open slot, which [`Provider::succeeded`], [`Provider::failed`]
    /// or [`Provider::abandon_probe`] gives back.
    pub fn admit(&self) -> Admission {
        let until = self.cooldown_until.load(Ordering::Acquire);
        if until != 0 {
            let now = now_nanos();
            if now < until {
                return Admission::Cooling(Duration::from_nanos(until - now));
            }
            if self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Someone else is probing: wait for their verdict.
                return Admission::Cooling(Duration::from_secs(1));
            }
            return Admission::Probe;
        }
        if self.is_full() {
            return Admission::Full;
        }
        Admission::Open
    }

    /// Counts a call in flight until the guard is dropped (for a stream: when
    /// the stream ends or the client goes away).
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The provider answered (any answer that is not a failure).
    pub fn succeeded(&self, probe: bool) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if probe {
            self.cooldown_until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            tracing::info!(provider = %self.name, "provider recovered: cooldown over");
        }
    }

    /// Records a failure; returns true when it put the provider in cooldown.
    /// `threshold` and `cooldown` come from `[routing]`.
    pub fn failed(
        &self,
        kind: FailureKind,
        retry_after: Option<Duration>,
        message: &str,
        probe: bool,
        threshold: u32,
        cooldown: Duration,
    ) -> bool {
        self.metrics.errors.inc();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(message.to_string());
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let cools = probe || kind == FailureKind::RateLimited || failures >= threshold;
        if cools {
            let length = cooldown.max(retry_after.unwrap_or_default());
            self.cool_for(length, message);
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        cools
    }

    /// Puts the provider in cooldown until at least `now + length`; an
    /// existing later deadline stays.
    fn cool_for(&self, length: Duration, reason: &str) {
        let now = now_nanos();
        let until = now.saturating_add(length.as_nanos() as u64);
        let previous = self.cooldown_until.fetch_max(until, Ordering::AcqRel);
        if previous <= now {
            self.metrics.cooldowns.inc();
            tracing::warn!(
                provider = %self.name,
                cooldown_secs = length.as_secs_f64(),
                reason,
                "provider in cooldown: requests go to the next candidate"
            );
        }
    }

    /// A probe that ended without a verdict (the client went away): the next
    /// request may probe instead.
    pub fn abandon_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// How long until it may be tried again (`None` when it is not cooling).
    pub fn cooling_for(&self) -> Option<Duration> {
        let until = self.cooldown_until.load(Ordering::Acquire);
        let now = now_nanos();
        (until != 0 && now < until).then(|| Duration::from_nanos(until - now))
    }

    pub fn health(&self) -> ProviderHealth {
        let cooling_for = self.cooling_for();
        ProviderHealth {
            cooling: cooling_for.is_some() || self.probing.load(Ordering::Acquire),
            in_flight: self.in_flight(),
            failures: self.failures.load(Ordering::Relaxed),
            cooldown_until: cooling_for.map(|d| SystemTime::now() + d),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .finish()
    }
}

/// One call counted in a provider's `in_flight`.
pub struct InFlight(Arc<Provider>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub use crate::home::config::pattern_matches;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::mock::MockUpstream;

    fn provider() -> Provider {
        let home = crate::home::Home::at("/nonexistent");
        let config = crate::home::config::Config::defaults(&home);
        let settings = config.provider_settings().remove(0);
        Provider::new(
            settings,
            Upstream::Mock(MockUpstream::new()),
            ProviderMetrics::default(),
        )
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("gpt-5-*", "gpt-5-mini"));
        assert!(!pattern_matches("gpt-5-*", "gpt-5"));
        assert!(pattern_matches("gpt-5", "gpt-5"));
        assert!(!pattern_matches("gpt-5", "gpt-5-mini"));
    }

    #[test]
    fn consecutive_failures_cool_and_success_resets() {
        let p = provider();
        let cd = Duration::from_secs(30);
        assert!(!p.failed(FailureKind::Failed, None, "x", false, 3, cd));
        assert!(!p.failed(FailureKind::Failed, None, "x", false, 3, cd));
        p.succeeded(false);
        assert!(!p.failed(FailureKind::Failed, None, "x", false, 3, cd));
        assert!(!p.failed(FailureKind::Failed, None, "x", false, 3, cd));
        assert_eq!(p.admit(), Admission::Open);
        assert!(p.failed(FailureKind::Failed, None, "boom", false, 3, cd));
        assert!(matches!(p.admit(), Admission::Cooling(_)));
        let h = p.health();
        assert!(h.cooling && h.cooldown_until.is_some());
        assert_eq!(h.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn a_shorter_retry_after_never_shortens_the_cooldown() {
        let p = provider();
        let cd = Duration::from_secs(1);
        p.failed(
            FailureKind::RateLimited,
            Some(Duration::from_secs(600)),
            "429",
            false,
            3,
            cd,
        );
        let first = p.cooling_for().unwrap();
        assert!(first > Duration::from_secs(590));
        p.failed(
            FailureKind::RateLimited,
            Some(Duration::from_secs(2)),
            "429",
            false,
            3,
            cd,
        );
        assert!(p.cooling_for().unwrap() > Duration::from_secs(590));
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let p = provider();
        p.failed(
            FailureKind::RateLimited,
            None,
            "429",
            false,
            3,
            Duration::ZERO,
        );
        assert_eq!(p.admit(), Admission::Probe);
        assert!(matches!(p.admit(), Admission::Cooling(_)));
        assert!(!p.looks_available());
        p.succeeded(true);
        assert_eq!(p.admit(), Admission::Open);
    }
}
