//! Per-key counters: requests and tokens over a sliding minute, calls in
//! flight, and budget spend per period with reservations.
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
/// Token counts within this many milliseconds share one entry of the window,
/// so a window holds at most 600 entries whatever the traffic.
const BUCKET: Millis = 100;

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

#[derive(Default)]
struct KeyCounters {
    /// Admission times within the last minute (tracked only with an rpm).
    requests: VecDeque<Millis>,
    /// (bucket start, tokens) within the last minute.
    tokens: VecDeque<(Millis, u64)>,
    window_tokens: u64,
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
        while self.requests.front().is_some_and(|&t| t + MINUTE <= now) {
            self.requests.pop_front();
        }
        while let Some(&(t, n)) = self.tokens.front() {
            if t + MINUTE > now {
                break;
            }
            self.window_tokens -= n;
            self.tokens.pop_front();
        }
    }

    fn add_tokens(&mut self, now: Millis, n: u64) {
        if n == 0 {
            return;
        }
        let bucket = now - now % BUCKET;
        match self.tokens.back_mut() {
            Some((t, count)) if *t == bucket => *count += n,
            _ => self.tokens.push_back((bucket, n)),
        }
        self.window_tokens += n;
    }

    /// The `x-ratelimit-*` figures for the limits a key has.
    fn headers(&self, limits: &Limits, now: Millis) -> RateHeaders {
        RateHeaders {
            requests: limits.rpm.map(|rpm| {
                let reset = self
                    .requests
                    .front()
                    .map_or(0, |&t| (t + MINUTE).saturating_sub(now));
                (rpm, rpm.saturating_sub(self.requests.len() as u64), reset)
            }),
            tokens: limits.tpm.map(|tpm| {
                let reset = self
                    .tokens
                    .front()
                    .map_or(0, |&(t, _)| (t + MINUTE).saturating_sub(now));
                (tpm, tpm.saturating_sub(self.window_tokens), reset)
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
                if c.requests.len() as u64 >= rpm {
                    let oldest = c.requests.front().copied().unwrap_or(now);
                    return Err(Refusal::Rate {
                        what: "rpm",
                        retry_after: secs_until(oldest + MINUTE, now),
                    });
                }
            }
            if let Some(tpm) = limits.tpm {
                let over = c.window_tokens >= tpm
                    || (c.window_tokens > 0 && c.window_tokens + want.input_tokens > tpm);
                if over {
                    let oldest = c.tokens.front().map_or(now, |&(t, _)| t);
                    return Err(Refusal::Rate {
                        what: "tpm",
                        retry_after: secs_until(oldest + MINUTE, now),
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
                c.requests.push_back(now);
            }
            c.add_tokens(now, want.input_tokens);
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
            c.add_tokens(now, used.tokens.saturating_sub(grant.reserved.input_tokens));
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

    #[test]
    fn rpm_is_a_sliding_minute() {
        let c = LocalCounters::new();
        let l = Limits {
            rpm: Some(2),
            ..Limits::default()
        };
        let g1 = c.admit(&c.cell("k"), &l, want(1), T0).unwrap();
        assert_eq!(g1.headers.requests.map(|r| r.1), Some(1));
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
