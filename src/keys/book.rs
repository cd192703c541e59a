//! What each key spent on each model today, this month and in its budget
//! period, kept in memory for the status page (`/ui`): updated when a request
//! is settled or refused, read without touching the ledger. At start it is
//! filled from the ledger once (off the request path), so a restart does not
//! zero the page.
//!
//! Bounded: at most [`MAX_ENTRIES`] (key, model) pairs; past that, a key's
//! further models are counted under [`OTHER_MODELS`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::period::Period;

const DAY: u64 = 86_400;

/// (key, model) pairs kept at most.
pub const MAX_ENTRIES: usize = 4096;

/// The model name the figures of models past [`MAX_ENTRIES`] are counted under.
pub const OTHER_MODELS: &str = "(other models)";

/// Requests, tokens and cost over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Figures {
    /// Answered requests.
    pub requests: u64,
    /// Requests refused at admission (403, 429, 503).
    pub refused: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// Millionths of a dollar.
    pub cost_micros: u64,
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        self.requests += other.requests;
        self.refused += other.refused;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cost_micros += other.cost_micros;
    }
}

/// The three windows of one (key, model).
#[derive(Clone, Copy, Debug, Default)]
pub struct Windows {
    /// The UTC day, month and key's budget period the figures below belong to
    /// (their first Unix second).
    day_start: u64,
    month_start: u64,
    period_start: u64,
    /// The budget period the starts above were found for (`None`: not yet).
    rolled: Option<Period>,
    pub today: Figures,
    pub month: Figures,
    pub period: Figures,
}

impl Windows {
    /// Starts new windows where `now` is past them.
    fn roll(&mut self, period: Period, now: u64) {
        // Every window begins at a UTC midnight: within the same day and
        // period, none has ended.
        if self.rolled == Some(period) && now.wrapping_sub(self.day_start) < DAY {
            return;
        }
        self.rolled = Some(period);
        let day = Period::Day.start(now);
        if day != self.day_start {
            self.day_start = day;
            self.today = Figures::default();
        }
        let month = Period::Month.start(now);
        if month != self.month_start {
            self.month_start = month;
            self.month = Figures::default();
        }
        let start = period.start(now);
        if start != self.period_start {
            self.period_start = start;
            self.period = Figures::default();
        }
    }
}

impl Windows {
    fn record(&mut self, period: Period, now: u64, figures: &Figures) {
        self.roll(period, now);
        self.today.add(figures);
        self.month.add(figures);
        self.period.add(figures);
    }
}

/// Which windows a ledger aggregate read at start belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Today,
    Month,
    Period,
}

/// One key's figures per model.
#[derive(Default)]
struct KeyBook {
    period: Period,
    models: HashMap<String, Windows>,
}

/// One key's figures, found by name once (when `keys.toml` is loaded) so that
/// recording a request needs no lookup by key name.
#[derive(Clone)]
pub struct Page(Arc<Mutex<KeyBook>>);

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Page")
    }
}

/// The figures per (key, model): one lock per key (as the limits' counters),
/// and no allocation once a (key, model) pair has its entry.
#[derive(Default)]
pub struct Book {
    keys: RwLock<HashMap<String, Arc<Mutex<KeyBook>>>>,
    /// (key, model) pairs kept, all keys together.
    entries: AtomicUsize,
}

impl Book {
    fn key(&self, key: &str) -> Arc<Mutex<KeyBook>> {
        if let Some(k) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return k.clone();
        }
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// The figures of the key named `key` (the same page for a name, always).
    pub fn page(&self, key: &str) -> Page {
        Page(self.key(key))
    }

    fn with_entry<T>(
        &self,
        key: &str,
        model: &str,
        period: Period,
        f: impl FnOnce(&mut Windows) -> T,
    ) -> T {
        self.with_entry_of(&self.key(key), model, period, f)
    }

    fn with_entry_of<T>(
        &self,
        book: &Mutex<KeyBook>,
        model: &str,
        period: Period,
        f: impl FnOnce(&mut Windows) -> T,
    ) -> T {
        let mut book = book.lock().unwrap_or_else(|p| p.into_inner());
        book.period = period;
        if let Some(windows) = book.models.get_mut(model) {
            return f(windows);
        }
        let model = if self.entries.load(Ordering::Relaxed) < MAX_ENTRIES {
            model
        } else {
            OTHER_MODELS
        };
        let windows = book.models.entry(model.to_string()).or_insert_with(|| {
            self.entries.fetch_add(1, Ordering::Relaxed);
            Windows::default()
        });
        f(windows)
    }

    /// Adds one settled or refused request at `now` (Unix seconds).
    pub fn record(&self, key: &str, model: &str, period: Period, now: u64, figures: Figures) {
        self.with_entry(key, model, period, |w| w.record(period, now, &figures));
    }

    /// [`Book::record`] on a key's page.
    pub fn record_on(&self, page: &Page, model: &str, period: Period, now: u64, figures: Figures) {
        self.with_entry_of(&page.0, model, period, |w| w.record(period, now, &figures));
    }

    /// Sets what the ledger holds for a window before this process began.
    pub fn preload(
        &self,
        key: &str,
        model: &str,
        period: Period,
        now: u64,
        window: Window,
        figures: Figures,
    ) {
        self.with_entry(key, model, period, |w| {
            w.roll(period, now);
            match window {
                Window::Today => w.today.add(&figures),
                Window::Month => w.month.add(&figures),
                Window::Period => w.period.add(&figures),
            }
        });
    }

    /// Every (key, model, its budget period, windows) as of `now`, sorted.
    pub fn snapshot(&self, now: u64) -> Vec<(String, String, Period, Windows)> {
        let keys: Vec<(String, Arc<Mutex<KeyBook>>)> = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (key, book) in keys {
            let mut book = book.lock().unwrap_or_else(|p| p.into_inner());
            let period = book.period;
            for (model, windows) in book.models.iter_mut() {
                windows.roll(period, now);
                out.push((key.clone(), model.clone(), period, *windows));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

/// Per key (today and its period) and per model (today and this month): what
/// `/ui` shows.
pub fn summary(entries: &[(String, String, Period, Windows)]) -> serde_json::Value {
    let mut keys: Vec<(String, Period, Figures, Figures)> = Vec::new();
    let mut models: std::collections::BTreeMap<&str, (Figures, Figures)> = Default::default();
    for (key, model, period, w) in entries {
        match keys.last_mut() {
            Some(last) if &last.0 == key => {
                last.2.add(&w.today);
                last.3.add(&w.period);
            }
            _ => keys.push((key.clone(), *period, w.today, w.period)),
        }
        let m = models.entry(model.as_str()).or_default();
        m.0.add(&w.today);
        m.1.add(&w.month);
    }
    serde_json::json!({
        "keys": keys.iter().map(|(name, period, today, this)| serde_json::json!({
            "name": name, "period": period.as_str(), "today": view(today), "period_figures": view(this),
        })).collect::<Vec<_>>(),
        "models": models.iter().map(|(model, (today, month))| serde_json::json!({
            "model": model, "today": view(today), "month": view(month),
        })).collect::<Vec<_>>(),
    })
}

fn view(f: &Figures) -> serde_json::Value {
    serde_json::json!({
        "requests": f.requests,
        "refused": f.refused,
        "input_tokens": f.input_tokens,
        "output_tokens": f.output_tokens,
        "cached_tokens": f.cached_tokens,
        "tokens": f.input_tokens + f.output_tokens,
        "cost_usd": f.cost_micros as f64 / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_796_000_000;

    fn one(input: u64) -> Figures {
        Figures {
            requests: 1,
            input_tokens: input,
            ..Figures::default()
        }
    }

    #[test]
    fn windows_roll_over_at_their_utc_bounds() {
        let book = Book::default();
        book.record("a", "m", Period::Week, T0, one(5));
        let midnight = Period::Day.end(T0).unwrap();
        book.record("a", "m", Period::Week, midnight, one(7));
        let snap = book.snapshot(midnight);
        let w = &snap[0].3;
        assert_eq!(w.today.input_tokens, 7);
        // The same week, unless that midnight began a new one.
        let same_week = Period::Week.start(T0) == Period::Week.start(midnight);
        assert_eq!(w.period.input_tokens, if same_week { 12 } else { 7 });
    }

    #[test]
    fn models_past_the_bound_are_counted_together() {
        let book = Book::default();
        for i in 0..MAX_ENTRIES + 10 {
            book.record("a", &format!("m{i}"), Period::Month, T0, one(1));
        }
        let snap = book.snapshot(T0);
        assert_eq!(snap.len(), MAX_ENTRIES + 1);
        let other = snap.iter().find(|e| e.1 == OTHER_MODELS).unwrap();
        assert_eq!(other.3.today.requests, 10);
    }
}
