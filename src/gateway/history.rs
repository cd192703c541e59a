//! The recent history the status page (`GET /ui`) draws: one sample every
//! [`SAMPLE_EVERY`], the last [`CAPACITY`] of them (15 minutes), in memory only.
//!
//! One background task takes the samples; the request path is not touched (the
//! figures are the counters `/health` and `/metrics` already keep). Memory is
//! bounded: the ring is allocated once at its full size and never grows.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::api::metrics::Metrics;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How many samples are kept: 15 minutes at one per 5 s.
pub const CAPACITY: usize = 180;

/// The latency buckets of `warden_http_request_duration_seconds` (upper bounds,
/// seconds), read back from the exposition; `+Inf` is the last slot.
const MAX_BUCKETS: usize = 32;

/// One point of the history: counters are cumulative (the page takes differences),
/// latencies are estimates over the requests since the previous sample.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub t: u64,
    /// API requests so far.
    pub total: u64,
    /// API requests answered with an error so far.
    pub errors: u64,
    /// Requests rejected (auth, concurrency limit) so far.
    pub rejected: u64,
    pub in_flight: u64,
    /// Median latency of the API requests of this interval, in ms (bucket upper bound).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of this interval, in ms (bucket upper bound).
    pub p99_ms: Option<f64>,
}

/// How many recent failed requests the status page lists.
pub const FAILURES: usize = 20;

/// One recent request answered 5xx (or abandoned after one), for the status
/// page: when, where, which provider, and its trace id when traces are on.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Failure {
    /// Unix time in milliseconds.
    pub t: u64,
    pub route: &'static str,
    pub status: u16,
    pub provider: Option<String>,
    pub trace_id: Option<String>,
}

/// The ring of samples and what the next sample needs from the previous one.
pub struct History {
    inner: Mutex<Inner>,
    /// The last [`FAILURES`] failed requests, oldest first (written on failures only).
    failures: Mutex<VecDeque<Failure>>,
}

struct Inner {
    samples: VecDeque<Sample>,
    /// Cumulative bucket counts at the previous sample: (upper bound, count).
    last_buckets: Vec<(f64, u64)>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            inner: Mutex::new(Inner {
                samples: VecDeque::with_capacity(CAPACITY),
                last_buckets: Vec::with_capacity(MAX_BUCKETS),
            }),
            failures: Mutex::new(VecDeque::with_capacity(FAILURES)),
        }
    }

    /// Records a failed request (the oldest of [`FAILURES`] makes room).
    pub fn failed(&self, failure: Failure) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() == FAILURES {
            failures.pop_front();
        }
        failures.push_back(failure);
    }

    /// The recent failed requests, newest first.
    pub fn failures(&self) -> Vec<Failure> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.iter().rev().cloned().collect()
    }

    /// Takes one sample from the metrics now.
    pub fn sample(&self, metrics: &Metrics) {
        let buckets = api_latency_buckets(&metrics.render_text());
        let s = &metrics.stats;
        let mut sample = Sample {
            t: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            total: s.total.load(Ordering::Relaxed),
            errors: s.error.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            p50_ms: None,
            p99_ms: None,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let delta: Vec<(f64, u64)> = buckets
            .iter()
            .map(|&(le, count)| {
                let before = inner
                    .last_buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0, |&(_, c)| c);
                (le, count.saturating_sub(before))
            })
            .collect();
        sample.p50_ms = quantile_ms(&delta, 0.5);
        sample.p99_ms = quantile_ms(&delta, 0.99);
        inner.last_buckets = buckets;
        self.push_locked(&mut inner, sample);
    }

    fn push_locked(&self, inner: &mut Inner, sample: Sample) {
        if inner.samples.len() == CAPACITY {
            inner.samples.pop_front();
        }
        inner.samples.push_back(sample);
    }

    /// Adds a sample as it is (tests).
    pub fn push(&self, sample: Sample) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.push_locked(&mut inner, sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.samples.iter().copied().collect()
    }

    /// The ring's allocated capacity in samples (never more than allocated at start).
    pub fn allocated(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.samples.capacity()
    }
}

/// Cumulative bucket counts of `warden_http_request_duration_seconds` summed over
/// the API routes (`/v1/...`), by upper bound; `+Inf` as `f64::INFINITY`.
fn api_latency_buckets(exposition: &str) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = Vec::with_capacity(MAX_BUCKETS);
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("warden_http_request_duration_seconds_bucket{") else {
            continue;
        };
        if !rest.contains("route=\"/v1/") {
            continue;
        }
        let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Some(count) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if let Some(slot) = out.iter_mut().find(|(l, _)| *l == le) {
            slot.1 += count as u64;
        } else if out.len() < MAX_BUCKETS {
            out.push((le, count as u64));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The upper bound (ms) of the first bucket holding the `q` quantile of the
/// cumulative counts `buckets`; None without requests. `+Inf` reports the largest finite bound.
fn quantile_ms(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let largest_finite = buckets
        .iter()
        .rev()
        .find(|(le, _)| le.is_finite())
        .map_or(0.0, |(le, _)| *le);
    buckets
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(le, _)| if le.is_finite() { *le } else { largest_finite } * 1000.0)
}

/// Samples `history` every [`SAMPLE_EVERY`] until the gateway is dropped.
pub fn spawn_sampler(gw: std::sync::Weak<super::Gateway>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(gw) = gw.upgrade() else { break };
            gw.history.sample(&gw.metrics);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_its_size_past_capacity() {
        let h = History::new();
        let allocated = h.allocated();
        assert!(allocated >= CAPACITY);
        for i in 0..(CAPACITY * 3 + 7) as u64 {
            h.push(Sample {
                t: i,
                ..Sample::default()
            });
        }
        let samples = h.samples();
        assert_eq!(samples.len(), CAPACITY);
        assert_eq!(samples.last().map(|s| s.t), Some((CAPACITY * 3 + 6) as u64));
        assert_eq!(samples[0].t, (2 * CAPACITY + 7) as u64);
        assert_eq!(h.allocated(), allocated, "the ring never reallocates");
        // docs/gateway.md's bound (Status page): 180 samples of at most 72 bytes, about 13 KiB.
        assert!(std::mem::size_of::<Sample>() <= 72);
        assert!(allocated * std::mem::size_of::<Sample>() <= 16 * 1024);
    }

    #[test]
    fn quantiles_come_from_the_buckets_of_api_routes() {
        let text = "\
warden_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"0.01\"} 50
warden_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"0.1\"} 98
warden_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"1.0\"} 100
warden_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"+Inf\"} 100
warden_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.01\"} 1000
warden_http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"} 1000
";
        let b = api_latency_buckets(text);
        assert_eq!(b.last(), Some(&(f64::INFINITY, 100)));
        assert_eq!(quantile_ms(&b, 0.5), Some(10.0));
        assert_eq!(quantile_ms(&b, 0.99), Some(1000.0));
        assert_eq!(quantile_ms(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None);
    }

    #[test]
    fn sampling_real_metrics_records_counters() {
        let m = Metrics::new();
        m.request_started();
        m.request_finished("/v1/chat/completions", 200, Duration::from_millis(3), true);
        let h = History::new();
        h.sample(&m);
        let s = h.samples()[0];
        assert_eq!(s.total, 1);
        assert_eq!(s.p50_ms, Some(5.0));
        // The next interval has no requests: no latency.
        h.sample(&m);
        assert_eq!(h.samples()[1].p50_ms, None);
    }
}
