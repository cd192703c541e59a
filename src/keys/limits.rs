//! Per-key counters: requests and tokens over the last minute (counted by the
//! second and by the tenth of a second, so their memory is bounded by the
//! number of keys, not by the traffic), calls in flight, and budget spend per
//! period with reservations.
//!
//! They live behind the [`Counters`] trait so that where they are kept can
//! change (today: this process's memory, [`LocalCounters`]) without touching
//! admission. Every check and its commit happen under one lock per key, so a
//! burst of concurrent requests cannot pass a check that only one of them fits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use super::period::Period;

/// Milliseconds since the Unix epoch: the counters' clock.
pub type Millis = u64;

const MINUTE: Millis = 60_000;
/// Requests admitted within one second share one entry of the rpm window, so
/// it holds at most 60 entries whatever the traffic.
const REQUEST_BUCKET: Millis = 1_000;
/// Token counts within this many milliseconds share one entry of the tpm
/// window, so it holds at most 600 entries whatever the traffic.
const TOKEN_BUCKET: Millis = 100;

/// What a key may do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u64>,
    pub budget: Option<Budget>,
    pub period: Period,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Tokens(u64),
    /// Millionths of a dollar.
    Micros(u64),
}

/// What one request asks for before its call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    /// Its input estimate (charged to the token window at once).
    pub input_tokens: u64,
    /// Input estimate plus the output reserved.
    pub tokens: u64,
    /// The same, priced, in millionths of a dollar.
    pub micros: u64,
}

/// What one request used, once it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    pub tokens: u64,
    pub micros: u64,
}

/// What admission granted: given back at settlement.
#[derive(Clone, Debug, Default)]
pub struct Grant {
    pub reserved: Want,
    pub headers: RateHeaders,
    /// The shared counters' hold of this request (0: none; see `shared`).
    pub hold: u64,
}

/// The `x-ratelimit-*` figures after an admission (for the limits a key has).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// limit, remaining, milliseconds until the window frees one.
    pub requests: Option<(u64, u64, Millis)>,
    pub tokens: Option<(u64, u64, Millis)>,
}

/// Why admission said no.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// rpm, tpm or max_parallel: retry after this many seconds.
    Rate {
        what: &'static str,
        retry_after: u64,
    },
    /// The budget is spent for the period; `None` for a `total` budget.
    Quota { retry_after: Option<u64> },
    /// The shared counters are out of reach past `keys.shared_grace` and
    /// `keys.fail_closed` is on.
    Unavailable,
}

/// One key's counters, found by name once (when `keys.toml` is loaded) so that
/// a request's admission and settlement need no lookup: a name always has
/// the same cell, whatever load of `keys.toml` it comes from.
#[derive(Clone, Default)]
pub struct Cell(Arc<Mutex<KeyCounters>>);

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cell")
    }
}

/// Where the counters are kept.
pub trait Counters: Send + Sync + 'static {
    /// The counters of the key named `key`.
    fn cell(&self, key: &str) -> Cell;
    /// Checks every limit and, only if all pass, takes a slot and reserves.
    fn admit(&self, key: &Cell, limits: &Limits, want: Want, now: Millis)
    -> Result<Grant, Refusal>;
    /// Gives the slot and the reservation back and adds what was used.
    fn settle(&self, key: &Cell, limits: &Limits, grant: &Grant, used: Spend, now: Millis);
    /// Spent in the period holding `now` (settled only).
    fn spent(&self, key: &str, period: Period, now: Millis) -> Spend;
    /// Sets what was spent since `period_start` before this process began.
    fn preload(&self, key: &str, period_start: u64, spend: Spend);
    /// Calls in flight for `key`.
    fn in_flight(&self, key: &str) -> u64;
    /// The `x-ratelimit-*` figures of `key` now, without admitting anything
    /// (what a refusal carries).
    fn headers(&self, _key: &Cell, _limits: &Limits, _now: Millis) -> RateHeaders {
        RateHeaders::default()
    }
}

/// The counters of one process, in memory.
#[derive(Default)]
pub struct LocalCounters {
    keys: RwLock<HashMap<String, Arc<Mutex<KeyCounters>>>>,
}

/// Counts over the last minute, in buckets: an entry (its bucket's start,
/// its count) counts until a minute after its bucket's start, so a count
/// added at `now` counts for between `MINUTE - bucket` and `MINUTE`.
#[derive(Default)]
struct Window {
    /// Oldest first; at most one entry per bucket.
    counts: VecDeque<(Millis, u64)>,
    total: u64,
}

impl Window {
    fn prune(&mut self, now: Millis) {
        while let Some(&(t, n)) = self.counts.front() {
            if t + MINUTE > now {
                break;
            }
            self.total -= n;
            self.counts.pop_front();
        }
    }

    fn add(&mut self, bucket: Millis, now: Millis, n: u64) {
        if n == 0 {
            return;
        }
        let start = now - now % bucket;
        match self.counts.back_mut() {
            // `>=`: a clock that stepped back counts in the newest bucket
            // (a little longer), keeping the entries in order.
            Some((t, count)) if *t >= start => *count += n,
            _ => self.counts.push_back((start, n)),
        }
        self.total += n;
    }

    /// Milliseconds until the oldest entry leaves the window (0: empty).
    fn reset(&self, now: Millis) -> Millis {
        self.counts
            .front()
            .map_or(0, |&(t, _)| (t + MINUTE).saturating_sub(now))
    }

    /// When, as seconds from `now` (at least 1), enough entries have left
    /// the window for `fits` to hold of what is left: the earliest time a
    /// refused request can be admitted (entries leave only as time passes).
    fn retry_after(&self, now: Millis, fits: impl Fn(u64) -> bool) -> u64 {
        let mut left = self.total;
        for &(t, n) in &self.counts {
            left -= n;
            if fits(left) {
                return secs_until(t + MINUTE, now);
            }
        }
        // Nothing fits even in an empty window (a limit of 0).
        secs_until(now + MINUTE, now)
    }
}

#[derive(Default)]
struct KeyCounters {
    /// Requests admitted in the last minute, by the second (tracked only
    /// with an rpm).
    requests: Window,
    /// Tokens in the last minute, by the tenth of a second (tracked only
    /// with a tpm: up to 600 entries a key).
    tokens: Window,
    in_flight: u64,
    /// Unix second the spend below belongs to.
    period_start: u64,
    /// The period `period_start` was found for, and the Unix second it ends
    /// (0: to be found again): until then a request needs no calendar sums.
    period: Period,
    period_end: u64,
    spent: Spend,
    reserved_tokens: u64,
    reserved_micros: u64,
}

impl KeyCounters {
    fn prune(&mut self, now: Millis) {
        self.requests.prune(now);
        self.tokens.prune(now);
    }

    fn add_tokens(&mut self, now: Millis, n: u64) {
        self.tokens.add(TOKEN_BUCKET, now, n);
    }

    /// The `x-ratelimit-*` figures for the limits a key has.
    fn headers(&self, limits: &Limits, now: Millis) -> RateHeaders {
        RateHeaders {
            requests: limits.rpm.map(|rpm| {
                (
                    rpm,
                    rpm.saturating_sub(self.requests.total),
                    self.requests.reset(now),
                )
            }),
            tokens: limits.tpm.map(|tpm| {
                (
                    tpm,
                    tpm.saturating_sub(self.tokens.total),
                    self.tokens.reset(now),
                )
            }),
        }
    }

    /// Starts a new period when `now` is past the current one (spend resets).
    fn roll(&mut self, period: Period, now: Millis) {
        let secs = now / 1000;
        if period == self.period && (self.period_start..self.period_end).contains(&secs) {
            return;
        }
        let start = period.start(secs);
        self.period = period;
        self.period_end = period.end(secs).unwrap_or(u64::MAX);
        if start != self.period_start {
            self.period_start = start;
            self.spent = Spend::default();
        }
    }
}

fn secs_until(at: Millis, now: Millis) -> u64 {
    at.saturating_sub(now).div_ceil(1000).max(1)
}

impl LocalCounters {
    pub fn new() -> LocalCounters {
        LocalCounters::default()
    }

    fn entry(&self, key: &str) -> Arc<Mutex<KeyCounters>> {
        if let Some(c) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return c.clone();
        }
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn with<T>(&self, key: &str, f: impl FnOnce(&mut KeyCounters) -> T) -> T {
        with(&Cell(self.entry(key)), f)
    }
}

fn with<T>(cell: &Cell, f: impl FnOnce(&mut KeyCounters) -> T) -> T {
    let mut c = cell.0.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut c)
}

impl Counters for LocalCounters {
    fn cell(&self, key: &str) -> Cell {
        Cell(self.entry(key))
    }

    fn admit(
        &self,
        key: &Cell,
        limits: &Limits,
        want: Want,
        now: Millis,
    ) -> Result<Grant, Refusal> {
        with(key, |c| {
            c.prune(now);
            c.roll(limits.period, now);
            if let Some(max) = limits.max_parallel {
                if c.in_flight >= max {
                    return Err(Refusal::Rate {
                        what: "max_parallel",
                        retry_after: 1,
                    });
                }
            }
            if let Some(rpm) = limits.rpm {
                if c.requests.total >= rpm {
                    return Err(Refusal::Rate {
                        what: "rpm",
                        retry_after: c.requests.retry_after(now, |left| left < rpm),
                    });
                }
            }
            if let Some(tpm) = limits.tpm {
                // A request fits when the window is empty (however large its
                // estimate) or its estimate fits under the limit.
                let fits = |window: u64| {
                    window < tpm && (window == 0 || window + want.input_tokens <= tpm)
                };
                if !fits(c.tokens.total) {
                    return Err(Refusal::Rate {
                        what: "tpm",
                        retry_after: c.tokens.retry_after(now, fits),
                    });
                }
            }
            let fits = match limits.budget {
                None => true,
                Some(Budget::Tokens(b)) => c.spent.tokens + c.reserved_tokens + want.tokens <= b,
                Some(Budget::Micros(b)) => c.spent.micros + c.reserved_micros + want.micros <= b,
            };
            if !fits {
                let retry_after = limits
                    .period
                    .end(now / 1000)
                    .map(|end| end.saturating_sub(now / 1000).max(1));
                return Err(Refusal::Quota { retry_after });
            }
            // Every check passed: commit, under the same lock.
            c.in_flight += 1;
            if limits.rpm.is_some() {
                c.requests.add(REQUEST_BUCKET, now, 1);
            }
            if limits.tpm.is_some() {
                c.add_tokens(now, want.input_tokens);
            }
            if limits.budget.is_some() {
                c.reserved_tokens += want.tokens;
                c.reserved_micros += want.micros;
            }
            let reserved = if limits.budget.is_some() {
                want
            } else {
                Want {
                    input_tokens: want.input_tokens,
                    ..Want::default()
                }
            };
            let headers = c.headers(limits, now);
            Ok(Grant {
                reserved,
                headers,
                hold: 0,
            })
        })
    }

    fn settle(&self, key: &Cell, limits: &Limits, grant: &Grant, used: Spend, now: Millis) {
        with(key, |c| {
            c.prune(now);
            c.roll(limits.period, now);
            c.in_flight = c.in_flight.saturating_sub(1);
            c.reserved_tokens = c.reserved_tokens.saturating_sub(grant.reserved.tokens);
            c.reserved_micros = c.reserved_micros.saturating_sub(grant.reserved.micros);
            c.spent.tokens += used.tokens;
            c.spent.micros += used.micros;
            if limits.tpm.is_some() {
                c.add_tokens(now, used.tokens.saturating_sub(grant.reserved.input_tokens));
            }
        });
    }

    fn spent(&self, key: &str, period: Period, now: Millis) -> Spend {
        self.with(key, |c| {
            c.roll(period, now);
            c.spent
        })
    }

    fn preload(&self, key: &str, period_start: u64, spend: Spend) {
        self.with(key, |c| {
            c.period_start = period_start;
            c.period_end = 0;
            c.spent = spend;
        });
    }

    fn in_flight(&self, key: &str) -> u64 {
        self.with(key, |c| c.in_flight)
    }

    fn headers(&self, key: &Cell, limits: &Limits, now: Millis) -> RateHeaders {
        with(key, |c| {
            c.prune(now);
            c.headers(limits, now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_796_000_000_000;

    fn want(tokens: u64) -> Want {
        Want {
            input_tokens: 1,
            tokens,
            micros: 0,
        }
    }

    fn rpm(n: u64) -> Limits {
        Limits {
            rpm: Some(n),
            ..Limits::default()
        }
    }

    /// T0 is the start of a second: requests are counted by the second, each
    /// until a minute after the start of its own.
    #[test]
    fn rpm_counts_the_last_minute_by_the_second() {
        let c = LocalCounters::new();
        let l = rpm(2);
        let g1 = c.admit(&c.cell("k"), &l, want(1), T0).unwrap();
        assert_eq!(g1.headers.requests, Some((2, 1, 60_000)));
        c.admit(&c.cell("k"), &l, want(1), T0 + 10_000).unwrap();
        let refused = c.admit(&c.cell("k"), &l, want(1), T0 + 30_000).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Rate {
                what: "rpm",
                retry_after: 30
            }
        );
        c.admit(&c.cell("k"), &l, want(1), T0 + 60_000).unwrap();
    }

    /// A request admitted late in a second (59.9 s) counts until the start of
    /// that second a minute on (at 119 s): at least 59 s, never 60 or more.
    #[test]
    fn a_request_late_in_a_second_counts_until_that_second_a_minute_on() {
        let c = LocalCounters::new();
        let l = rpm(1);
        let g = c.admit(&c.cell("k"), &l, want(1), T0 + 59_900).unwrap();
        // The reset is when its second leaves the window: 59.1 s from now.
        assert_eq!(g.headers.requests, Some((1, 0, 59_100)));
        for (at, retry_after) in [(59_901, 60), (60_000, 59), (118_001, 1), (118_999, 1)] {
            assert_eq!(
                c.admit(&c.cell("k"), &l, want(1), T0 + at).unwrap_err(),
                Refusal::Rate {
                    what: "rpm",
                    retry_after
                },
                "at {at} ms"
            );
        }
        let g = c.admit(&c.cell("k"), &l, want(1), T0 + 119_000).unwrap();
        assert_eq!(g.headers.requests, Some((1, 0, 60_000)));
    }

    /// Requests within one second share one entry: the window holds at most
    /// 60 entries, whatever the rate; a key without a tpm keeps no tokens.
    #[test]
    fn the_rpm_window_holds_one_entry_per_second() {
        let c = LocalCounters::new();
        let l = rpm(1_000_000);
        let cell = c.cell("k");
        for i in 0..120_000u64 {
            c.admit(&cell, &l, want(1), T0 + i).unwrap();
        }
        let held = with(&cell, |k| (k.requests.counts.len(), k.requests.total));
        // The last 60 seconds (60 to 119): 60,000 requests in 60 entries.
        assert_eq!(held, (60, 60_000));
        // Without a tpm no tokens are counted at all, admitted or settled.
        let g = c.admit(&cell, &l, want(5), T0 + 119_999).unwrap();
        c.settle(
            &cell,
            &l,
            &g,
            Spend {
                tokens: 9,
                micros: 0,
            },
            T0 + 119_999,
        );
        assert_eq!(with(&cell, |k| k.tokens.counts.len()), 0);
        let h = c.headers(&cell, &l, T0 + 119_999);
        assert_eq!(h.requests, Some((1_000_000, 939_999, 1)));
    }

    /// Whenever a request is refused for rpm, a request at Retry-After is
    /// admitted, and not a second before: over an irregular stream of
    /// requests (bursts, pauses, several in one second), with a limit lowered
    /// while requests are counted.
    #[test]
    fn retry_after_for_rpm_is_exactly_when_a_request_fits_again() {
        let c = LocalCounters::new();
        let cell = c.cell("k");
        let mut now = T0 + 123;
        let mut state = 7u64;
        let mut refusals = 0;
        let mut admitted: Vec<Millis> = Vec::new();
        for i in 0..3_000u64 {
            // Lowered from 5 to 3 halfway: more than one second must leave.
            let l = rpm(if i < 1_500 { 5 } else { 3 });
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            now += [0, 1, 150, 999, 1_000, 7_777, 20_000][(state >> 33) as usize % 7];
            match c.admit(&cell, &l, want(1), now) {
                Ok(_) => admitted.push(now),
                Err(Refusal::Rate { what, retry_after }) => {
                    assert_eq!(what, "rpm");
                    assert!((1..=60).contains(&retry_after), "{retry_after}");
                    refusals += 1;
                    // A second earlier is still refused...
                    let before = now + (retry_after - 1) * 1000;
                    assert!(c.admit(&cell, &l, want(1), before).is_err());
                    // ...and at Retry-After the request is admitted.
                    now += retry_after * 1000;
                    c.admit(&cell, &l, want(1), now).unwrap();
                    admitted.push(now);
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(refusals > 100, "{refusals}");
        // No 59 seconds ever held more than the limit (5, then 3).
        for (i, &t) in admitted.iter().enumerate() {
            let within = admitted[i..]
                .iter()
                .take_while(|&&u| u < t + 59_000)
                .count();
            assert!(within <= 5, "{within} requests within 59 s of {t}");
        }
    }

    /// The same for tpm: Retry-After waits until the request's estimate fits,
    /// not only until the oldest tokens leave.
    #[test]
    fn retry_after_for_tpm_waits_until_the_estimate_fits() {
        let c = LocalCounters::new();
        let cell = c.cell("k");
        let l = Limits {
            tpm: Some(100),
            ..Limits::default()
        };
        let want = |n| Want {
            input_tokens: n,
            tokens: n,
            micros: 0,
        };
        c.admit(&cell, &l, want(10), T0).unwrap();
        c.admit(&cell, &l, want(50), T0 + 20_000).unwrap();
        // 60 in the window: 51 more do not fit until the 50 leave (at 80 s),
        // though the first 10 leave at 60 s, when 41 more fit.
        assert_eq!(
            c.admit(&cell, &l, want(51), T0 + 30_000).unwrap_err(),
            Refusal::Rate {
                what: "tpm",
                retry_after: 50
            }
        );
        assert_eq!(
            c.admit(&cell, &l, want(41), T0 + 30_000).unwrap_err(),
            Refusal::Rate {
                what: "tpm",
                retry_after: 30
            }
        );
        assert!(c.admit(&cell, &l, want(51), T0 + 79_999).is_err());
        c.admit(&cell, &l, want(51), T0 + 80_000).unwrap();
        // An empty window admits any estimate; a limit of 0 nothing.
        let cell = c.cell("big");
        c.admit(&cell, &l, want(1_000), T0).unwrap();
        let zero = Limits {
            tpm: Some(0),
            ..Limits::default()
        };
        assert_eq!(
            c.admit(&c.cell("none"), &zero, want(1), T0).unwrap_err(),
            Refusal::Rate {
                what: "tpm",
                retry_after: 60
            }
        );
    }

    #[test]
    fn a_parallel_slot_is_given_back_at_settlement() {
        let c = LocalCounters::new();
        let l = Limits {
            max_parallel: Some(1),
            ..Limits::default()
        };
        let g = c.admit(&c.cell("k"), &l, want(1), T0).unwrap();
        assert!(c.admit(&c.cell("k"), &l, want(1), T0).is_err());
        c.settle(&c.cell("k"), &l, &g, Spend::default(), T0);
        assert_eq!(c.in_flight("k"), 0);
        c.admit(&c.cell("k"), &l, want(1), T0).unwrap();
    }

    #[test]
    fn reservations_count_until_settled_and_are_released() {
        let c = LocalCounters::new();
        let l = Limits {
            budget: Some(Budget::Tokens(100)),
            period: Period::Day,
            ..Limits::default()
        };
        let g1 = c.admit(&c.cell("k"), &l, want(60), T0).unwrap();
        // 60 reserved: another 60 does not fit.
        assert!(matches!(
            c.admit(&c.cell("k"), &l, want(60), T0),
            Err(Refusal::Quota { .. })
        ));
        // Settled at 10 used: the rest of the reservation comes back.
        c.settle(
            &c.cell("k"),
            &l,
            &g1,
            Spend {
                tokens: 10,
                micros: 0,
            },
            T0,
        );
        c.admit(&c.cell("k"), &l, want(90), T0).unwrap();
    }

    #[test]
    fn a_spent_daily_budget_resets_at_utc_midnight() {
        let c = LocalCounters::new();
        let l = Limits {
            budget: Some(Budget::Tokens(10)),
            period: Period::Day,
            ..Limits::default()
        };
        let g = c.admit(&c.cell("k"), &l, want(10), T0).unwrap();
        c.settle(
            &c.cell("k"),
            &l,
            &g,
            Spend {
                tokens: 10,
                micros: 0,
            },
            T0,
        );
        let Err(Refusal::Quota { retry_after }) = c.admit(&c.cell("k"), &l, want(1), T0) else {
            panic!("a spent budget must refuse");
        };
        let midnight = Period::Day.end(T0 / 1000).unwrap() * 1000;
        assert_eq!(retry_after, Some((midnight - T0) / 1000));
        c.admit(&c.cell("k"), &l, want(1), midnight).unwrap();
        assert_eq!(c.spent("k", Period::Day, midnight).tokens, 0);
    }
}
