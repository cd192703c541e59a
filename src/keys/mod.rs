//! Keys, limits, budgets and usage (docs/contract.md §14): who is calling, what they may
//! use, how much they may spend, and what they spent.
//!
//! - [`file`]: `keys.toml`, the SHA-256 of each secret and its limits.
//! - [`limits`]: the counters behind rpm, tpm, max_parallel and budgets, behind
//!   the [`Counters`](limits::Counters) trait (in memory today).
//! - [`ledger`]: the SQLite usage ledger, written off the request path.
//! - [`command`]: `proxy keys …` and `proxy usage …`.
//!
//! The gateway asks [`Keys::identify`] who a request is from (a key, the
//! operator's token, or nobody when keys are off) and [`Keys::admit`] whether
//! it may go ahead; admission returns a [`Ticket`] that settles the request's
//! reservation and writes its ledger row when the answer ends, or when it is
//! dropped unfinished (a cancelled or panicked request gives its slot back too).
//! With no key ever created and `require = "auto"`, identification is one
//! lock-free check and admission returns at once: keys off cost nothing.

pub mod book;
pub mod command;
pub mod file;
pub mod ledger;
pub mod limits;
pub mod period;
pub mod shared;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::home::config::{Config, pattern_matches};
use crate::home::keys_config::{Prices, Require, price_of};
use file::{KeyEntry, KeyFile, KeyFileError};
use ledger::{Ledger, LedgerState, Row};
use limits::{
    Budget, Counters, Grant, Limits, LocalCounters, Millis, RateHeaders, Refusal, Spend, Want,
};

/// How often `keys.toml` is checked for a change.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// The name the operator's token is recorded under.
pub const OPERATOR: &str = "-";

/// One key as the proxy holds it.
#[derive(Debug)]
pub struct KeyState {
    pub entry: KeyEntry,
    pub limits: Limits,
    digest: [u8; 32],
    expires_at: Option<SystemTime>,
    /// The name, shared by the key's ledger rows.
    name: Arc<str>,
    /// The name's `/metrics` figures, counters and status-page figures (the
    /// same ones through reloads), so that a request looks up nothing by name.
    stats: Arc<KeyStats>,
    counters: limits::Cell,
    page: book::Page,
}

impl KeyState {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The keys in force: looked up by the SHA-256 of the presented secret.
#[derive(Default)]
struct Table {
    by_digest: HashMap<[u8; 32], Arc<KeyState>, std::hash::BuildHasherDefault<DigestHasher>>,
    /// keys.toml holds at least one key (revoked ones count).
    any: bool,
    active: usize,
}

/// Hashes a SHA-256 digest by its first 8 bytes, which are as uniform as a
/// hash could make them (SipHash over 32 bytes would cost more than the rest of
/// the lookup). The table is built from `keys.toml`, never from what clients
/// send: a client's digest only probes it.
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_ne_bytes(first);
    }

    /// The length a slice's hash starts with (always 32 here).
    fn write_usize(&mut self, _: usize) {}
}

/// Who sent a request.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Keys are not in force and no operator token is set: anyone.
    Open,
    Operator,
    Key(Arc<KeyState>),
}

impl Caller {
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Open => None,
            Caller::Operator => Some(OPERATOR),
            Caller::Key(k) => Some(k.name()),
        }
    }

    /// [`Caller::name`], shared rather than copied (a request's figures
    /// carry it without an allocation of their own).
    pub fn shared_name(&self) -> Option<Arc<str>> {
        static OPERATOR_NAME: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from(OPERATOR));
        match self {
            Caller::Open => None,
            Caller::Operator => Some(OPERATOR_NAME.clone()),
            Caller::Key(k) => Some(k.name.clone()),
        }
    }
}

/// Why a request was refused at the door (401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Unknown,
    Revoked,
    Expired,
}

impl AuthFailure {
    /// A 401 `invalid_api_key` that says what to do.
    pub fn denied(self) -> Denied {
        let why = match self {
            AuthFailure::Missing => "no API key was sent",
            AuthFailure::Unknown => "the API key is not known to this gateway",
            AuthFailure::Revoked => "the API key was revoked",
            AuthFailure::Expired => "the API key has expired",
        };
        Denied::new(
            401,
            "invalid_request_error",
            "invalid_api_key",
            format!(
                "{why}: send your key as 'Authorization: Bearer wk-…' (or 'x-api-key: wk-…' to \
                 /v1/messages); the gateway's operator creates keys with `proxy keys create NAME`"
            ),
        )
    }
}

/// A request refused by its key: what the gateway answers (OpenAI's error
/// shape: status, `type`, `code`, message, `Retry-After`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// The key's `x-ratelimit-*` figures at the refusal (for the limits it has).
    pub rate: Option<Box<RateHeaders>>,
}

impl Denied {
    fn new(status: u16, kind: &'static str, code: &'static str, message: String) -> Denied {
        Denied {
            status,
            kind,
            code,
            message,
            retry_after: None,
            rate: None,
        }
    }
}

/// Per key name: what `/metrics` shows. One entry per key name ever loaded.
#[derive(Default, Debug)]
pub struct KeyStats {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    pub cost_micros: AtomicU64,
}

/// The `[keys]` and `[prices]` settings a reload changes for new requests (an
/// admitted request keeps the ones it was admitted with, to its ledger row).
#[derive(Debug)]
pub struct Settings {
    require: Require,
    /// `keys.toml`, resolved against the home.
    path: PathBuf,
    prices: Prices,
    default_reservation: u64,
    fail_closed: bool,
}

impl Settings {
    fn of(config: &Config) -> Settings {
        Settings {
            require: config.keys.require,
            path: config.home.resolve_path(&config.keys.file),
            prices: config.prices.clone(),
            default_reservation: config.keys.default_reservation,
            fail_closed: config.keys.fail_closed,
        }
    }

    /// The price of `tokens` of `model` in millionths of a dollar.
    fn micros(&self, model: &str, input: u64, cached: u64, output: u64) -> u64 {
        let Some(p) = price_of(&self.prices, model) else {
            return 0;
        };
        let uncached = input.saturating_sub(cached) as f64;
        let cached_price = p.cached_input.unwrap_or(p.input);
        (uncached * p.input + cached as f64 * cached_price + output as f64 * p.output).round()
            as u64
    }
}

/// The keys, counters and ledger of one proxy.
pub struct Keys {
    /// What a reload replaces (see [`Keys::reconfigure`]).
    settings: RwLock<Arc<Settings>>,
    table: RwLock<Arc<Table>>,
    /// Keys in force (a key is required): mirrors the table, read lock-free.
    enforced: AtomicBool,
    counters: Arc<dyn Counters>,
    /// `keys.shared`: keys and counters in NATS JetStream KV, across hosts.
    shared: Option<Arc<shared::Shared>>,
    ledger_backlog: usize,
    ledger_path: PathBuf,
    /// Started once, when keys first come into force; read lock-free.
    ledger: std::sync::OnceLock<Ledger>,
    stats: RwLock<HashMap<String, Arc<KeyStats>>>,
    /// [`OPERATOR`], shared by the operator's ledger rows.
    operator_name: Arc<str>,
    /// Per key and model: today, this month, this budget period (for `/ui`).
    book: book::Book,
    /// (mtime, size, inode) of keys.toml when last read.
    seen: std::sync::Mutex<Option<(SystemTime, u64, u64)>>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fingerprint(path: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl Keys {
    /// The keys of `config`'s home; a `keys.toml` that cannot be used is an
    /// error naming the file, the key and the line.
    pub fn load(config: &Config) -> Result<Arc<Keys>, KeyFileError> {
        let settings = Settings::of(config);
        let keys = Keys {
            seen: std::sync::Mutex::new(fingerprint(&settings.path)),
            table: RwLock::new(Arc::new(Table::default())),
            enforced: AtomicBool::new(config.keys.require == Require::Always),
            counters: Arc::new(LocalCounters::new()),
            shared: shared::Shared::from_config(config),
            ledger_backlog: config.keys.ledger_backlog,
            ledger_path: config.home.resolve_path(&config.keys.ledger),
            ledger: std::sync::OnceLock::new(),
            stats: RwLock::new(HashMap::new()),
            operator_name: OPERATOR.into(),
            book: book::Book::default(),
            settings: RwLock::new(Arc::new(settings)),
        };
        let file = KeyFile::load(&keys.settings().path)?;
        keys.install(file.unwrap_or_default());
        Ok(Arc::new(keys))
    }

    /// The settings new requests are admitted with.
    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks the key file `config` names, as a reload must before it applies
    /// anything: an error names the file, the key and the line.
    pub fn check(config: &Config) -> Result<(), KeyFileError> {
        KeyFile::load(&config.home.resolve_path(&config.keys.file)).map(drop)
    }

    /// Applies `config`'s `[keys]` (`file`, `require`, `default_reservation`,
    /// `fail_closed`) and `[prices]` to new requests, and re-reads the key file
    /// (see [`Keys::check`]). Requests already admitted keep what they were
    /// admitted with. The ledger, its backlog and `shared` are fixed at start.
    pub fn reconfigure(&self, config: &Config) {
        let next = Settings::of(config);
        let moved = next.path != self.settings().path;
        let require = next.require;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        if moved {
            // Another file: read it now whatever its fingerprint (no file has
            // this one; a missing file's is `None`).
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((UNIX_EPOCH, u64::MAX, u64::MAX));
        }
        if !self.reload_if_changed() {
            // The same keys under a new `require`.
            let enforced = self.enforced_by(require, &self.table());
            if enforced {
                self.start_ledger();
            }
            self.enforced.store(enforced, Ordering::Release);
        }
    }

    fn enforced_by(&self, require: Require, table: &Table) -> bool {
        match require {
            Require::Always => true,
            Require::Never => false,
            Require::Auto => table.any,
        }
    }

    /// Keys in force: every request needs a key (or the operator's token).
    pub fn enforced(&self) -> bool {
        self.enforced.load(Ordering::Acquire)
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn install(&self, file: KeyFile) {
        let file = match &self.shared {
            Some(shared) => shared.merge(file),
            None => file,
        };
        let mut table = Table {
            any: !file.keys.is_empty(),
            ..Table::default()
        };
        let now = SystemTime::now();
        for entry in file.keys {
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&entry.sha256, &mut digest).is_err() {
                continue;
            }
            let limits = Limits {
                rpm: entry.rpm,
                tpm: entry.tpm,
                max_parallel: entry.max_parallel,
                budget: match (entry.budget_tokens, entry.budget_usd) {
                    (Some(t), _) => Some(Budget::Tokens(t)),
                    (None, Some(usd)) => Some(Budget::Micros((usd * 1e6).round() as u64)),
                    (None, None) => None,
                },
                period: entry.period,
            };
            let expires_at = entry.expires_at();
            if entry.revoked.is_none() && expires_at.is_none_or(|t| t > now) {
                table.active += 1;
            }
            let stats = self.stats_of(&entry.name);
            table.by_digest.insert(
                digest,
                Arc::new(KeyState {
                    name: entry.name.as_str().into(),
                    counters: self.counters.cell(&entry.name),
                    page: self.book.page(&entry.name),
                    entry,
                    limits,
                    digest,
                    expires_at,
                    stats,
                }),
            );
        }
        let enforced = self.enforced_by(self.settings().require, &table);
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        // After the table is in place: the ledger's preload reads each key's
        // budget period from it.
        if enforced {
            self.start_ledger();
        }
        self.enforced.store(enforced, Ordering::Release);
    }

    /// The ledger starts when keys first come into force, and loads what each
    /// key spent this period before this process began.
    fn start_ledger(&self) {
        if self.ledger.get().is_some() {
            return;
        }
        let mut started = false;
        self.ledger.get_or_init(|| {
            started = true;
            Ledger::start_bounded(self.ledger_path.clone(), self.ledger_backlog)
        });
        if started {
            self.preload_spend();
            self.preload_book();
        }
    }

    /// Fills the page's figures with what the ledger holds for today, this
    /// month and each key's period: a few grouped reads, once, at start.
    fn preload_book(&self) {
        let conn = match ledger::open_read(&self.ledger_path) {
            Ok(Some(conn)) => conn,
            _ => return,
        };
        let now = now_millis() / 1000;
        let periods: HashMap<String, period::Period> = self
            .table()
            .by_digest
            .values()
            .map(|k| (k.name().to_string(), k.limits.period))
            .collect();
        let period_of = |key: &str| periods.get(key).copied().unwrap_or_default();
        let mut reads = vec![
            (book::Window::Today, period::Period::Day, None),
            (book::Window::Month, period::Period::Month, None),
        ];
        for p in [
            period::Period::Day,
            period::Period::Week,
            period::Period::Month,
            period::Period::Total,
        ] {
            reads.push((book::Window::Period, p, Some(p)));
        }
        for (window, span, only) in reads {
            let since = ledger::rfc3339(span.start(now));
            let rows = match ledger::aggregate_since(&conn, &since, book::MAX_ENTRIES) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read usage from the ledger for the status page");
                    return;
                }
            };
            for (key, model, figures) in rows {
                let period = period_of(&key);
                if only.is_some_and(|p| p != period) {
                    continue;
                }
                self.book
                    .preload(&key, &model, period, now, window, figures);
            }
        }
    }

    /// Per key and per model, today and this period: what `/ui` shows (from
    /// memory; no database read).
    pub fn usage_summary(&self) -> serde_json::Value {
        book::summary(&self.book.snapshot(now_millis() / 1000))
    }

    fn preload_spend(&self) {
        let conn = match ledger::open_read(&self.ledger_path) {
            Ok(Some(conn)) => conn,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(path = %self.ledger_path.display(), error = %e, "usage ledger unreadable: budgets start from zero");
                return;
            }
        };
        let now = now_millis() / 1000;
        // One grouped read per period start (day, week, month, total) in use.
        let mut by_start: HashMap<u64, HashMap<String, (u64, f64)>> = HashMap::new();
        for key in self.table().by_digest.values() {
            if key.limits.budget.is_none() {
                continue;
            }
            let start = key.limits.period.start(now);
            let spent = match by_start.entry(start) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    match ledger::spent_by_key_since(&conn, &ledger::rfc3339(start)) {
                        Ok(spent) => e.insert(spent),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the keys' spend from the usage ledger: budgets start from zero");
                            return;
                        }
                    }
                }
            };
            if let Some(&(tokens, usd)) = spent.get(key.name()) {
                self.counters.preload(
                    key.name(),
                    start,
                    Spend {
                        tokens,
                        micros: (usd * 1e6).round() as u64,
                    },
                );
            }
        }
    }

    /// Re-reads `keys.toml` when it changed (mtime, size or inode); keeps the
    /// keys in force when the new file is not valid, and says why.
    pub fn reload_if_changed(&self) -> bool {
        let path = self.settings().path.clone();
        let now = fingerprint(&path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match KeyFile::load(&path) {
            Ok(file) => {
                let file = file.unwrap_or_default();
                let count = file.keys.len();
                self.install(file);
                tracing::info!(path = %path.display(), keys = count, "keys reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "keys.toml changed but cannot be used: the keys loaded before stay in force");
                false
            }
        }
    }

    /// Follows `keys.toml` while `keys` lives: a change is in force within
    /// [`POLL_EVERY`] plus a read.
    pub fn watch(keys: &Arc<Keys>) {
        if let Some(shared) = &keys.shared {
            // The keys bucket, hold renewal and the usage stream.
            shared::spawn(keys, shared.clone());
        }
        let weak = Arc::downgrade(keys);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(keys) = weak.upgrade() else { return };
                // A read of a small file; off the runtime's worker threads.
                let _ = tokio::task::spawn_blocking(move || keys.reload_if_changed()).await;
            }
        });
    }

    /// Who presented `secret` (`None`: nothing presented); `operator` is the
    /// operator's token in force (`server.auth_token_env`), when set.
    pub fn identify(
        &self,
        secret: Option<&str>,
        operator: Option<&str>,
    ) -> Result<Caller, AuthFailure> {
        let operator = operator.filter(|t| !t.is_empty());
        if let (Some(expected), Some(given)) = (operator, secret) {
            if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Ok(Caller::Operator);
            }
        }
        if !self.enforced() {
            return match (operator, secret) {
                (None, _) => Ok(Caller::Open),
                (Some(_), None) => Err(AuthFailure::Missing),
                (Some(_), Some(_)) => Err(AuthFailure::Unknown),
            };
        }
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return Err(AuthFailure::Missing);
        };
        let digest: [u8; 32] = sha2::Digest::finalize(
            <sha2::Sha256 as sha2::Digest>::new_with_prefix(secret.as_bytes()),
        )
        .into();
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let key = table.by_digest.get(&digest).ok_or(AuthFailure::Unknown)?;
        if !constant_time_eq(&key.digest, &digest) {
            return Err(AuthFailure::Unknown);
        }
        if key.entry.revoked.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if key.expires_at.is_some_and(|t| t <= SystemTime::now()) {
            return Err(AuthFailure::Expired);
        }
        Ok(Caller::Key(key.clone()))
    }

    fn stats_of(&self, name: &str) -> Arc<KeyStats> {
        if let Some(s) = self
            .stats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return s.clone();
        }
        self.stats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Every key name's figures, for `/metrics`.
    pub fn stats(&self) -> Vec<(String, Arc<KeyStats>)> {
        let mut v: Vec<_> = self
            .stats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.ledger.get()
    }

    /// `/health`'s `keys`: active keys and the ledger's state; `None` while
    /// keys are not in force.
    pub fn health(&self) -> Option<(usize, LedgerState)> {
        let ledger = self.ledger()?;
        Some((self.table().active, ledger.state()))
    }

    /// The ledger's file.
    pub fn ledger_path(&self) -> &std::path::Path {
        &self.ledger_path
    }

    /// Writes every queued ledger row; at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.ledger().is_none_or(|l| l.flush(timeout))
    }

    /// May `caller` send this request? `Ok(None)`: nothing to meter (keys off).
    pub async fn admit(
        self: &Arc<Self>,
        caller: &Caller,
        request: Metered,
    ) -> Result<Option<Ticket>, Denied> {
        let key = match caller {
            Caller::Open => return Ok(None),
            Caller::Operator if !self.enforced() => return Ok(None),
            Caller::Operator => None,
            Caller::Key(key) => Some(key.clone()),
        };
        let started = Instant::now();
        // Read once: this request is priced with these to its ledger row.
        let settings = self.settings();
        let Some(key) = key else {
            return Ok(Some(Ticket::new(
                self.clone(),
                settings,
                None,
                Grant::default(),
                request,
                started,
            )));
        };
        let refuse = |mut e: Denied, request: &Metered| {
            self.refused(&key, request, e.status);
            e.rate = Some(Box::new(match &self.shared {
                Some(shared) => shared.headers(key.name(), &key.limits, now_millis()),
                None => self
                    .counters
                    .headers(&key.counters, &key.limits, now_millis()),
            }));
            Err(e)
        };
        if !key.entry.models.is_empty()
            && !key
                .entry
                .models
                .iter()
                .any(|p| pattern_matches(p, &request.model))
        {
            let e = Denied::new(
                403,
                "invalid_request_error",
                "model_not_allowed",
                format!(
                    "the key {:?} may not use the model {:?}; it may use: {}",
                    key.name(),
                    crate::support::redact::truncate(&request.model, 256),
                    key.entry.models.join(", ")
                ),
            );
            return refuse(e, &request);
        }
        if matches!(key.limits.budget, Some(Budget::Micros(_)))
            && price_of(&settings.prices, &request.model).is_none()
        {
            let e = Denied::new(
                403,
                "invalid_request_error",
                "model_not_allowed",
                format!(
                    "the key {:?} has a budget in USD and [prices] in warden.toml has no price for {:?}",
                    key.name(),
                    crate::support::redact::truncate(&request.model, 256)
                ),
            );
            return refuse(e, &request);
        }
        if settings.fail_closed && self.ledger().is_some_and(|l| l.full()) {
            return Err(Denied {
                retry_after: Some(5),
                ..Denied::new(
                    503,
                    "server_error",
                    "ledger_unavailable",
                    "the usage ledger cannot be written and its backlog is full; \
                     requests resume once it is writable (keys.fail_closed = true; run `doctor`)"
                        .into(),
                )
            });
        }
        let output = request.max_output.unwrap_or(settings.default_reservation);
        let want = Want {
            input_tokens: request.input_estimate,
            tokens: request.input_estimate + output,
            micros: settings.micros(&request.model, request.input_estimate, 0, output),
        };
        let admitted = match &self.shared {
            Some(shared) => {
                shared
                    .admit(key.name(), &key.limits, want, now_millis())
                    .await
            }
            None => self
                .counters
                .admit(&key.counters, &key.limits, want, now_millis()),
        };
        match admitted {
            Ok(grant) => Ok(Some(Ticket::new(
                self.clone(),
                settings,
                Some(key),
                grant,
                request,
                started,
            ))),
            Err(Refusal::Rate { what, retry_after }) => {
                let e = Denied {
                    retry_after: Some(retry_after),
                    ..Denied::new(
                        429,
                        "requests",
                        "rate_limit_exceeded",
                        format!(
                            "rate limit reached for the key {:?} ({what}); retry in {retry_after} s",
                            key.name()
                        ),
                    )
                };
                refuse(e, &request)
            }
            Err(Refusal::Unavailable) => Err(Denied {
                retry_after: Some(5),
                ..Denied::new(
                    503,
                    "server_error",
                    "keys_unavailable",
                    "the shared key counters (NATS) are out of reach for longer than \
                     keys.shared_grace and keys.fail_closed = true: metered requests resume \
                     once NATS answers (run `doctor`)"
                        .into(),
                )
            }),
            Err(Refusal::Quota { retry_after }) => {
                let when = match retry_after {
                    Some(s) => format!(
                        "; the {} budget resets in {s} s",
                        key.limits.period.as_str()
                    ),
                    None => "; its budget is for all time (raise it with `proxy keys`)".into(),
                };
                let e = Denied {
                    retry_after,
                    ..Denied::new(
                        429,
                        "insufficient_quota",
                        "insufficient_quota",
                        format!(
                            "the key {:?} has spent its budget (with what requests in flight reserve){when}",
                            key.name()
                        ),
                    )
                };
                refuse(e, &request)
            }
        }
    }

    fn refused(&self, key: &KeyState, request: &Metered, status: u16) {
        key.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.book.record_on(
            &key.page,
            crate::support::redact::truncate(&request.model, 256),
            key.limits.period,
            now_millis() / 1000,
            book::Figures {
                refused: 1,
                ..book::Figures::default()
            },
        );
        if let Some(ledger) = self.ledger() {
            ledger.push(self.published(Row {
                time_ms: now_millis(),
                request_id: request.request_id.clone(),
                key: key.name.clone(),
                ingress: request.ingress,
                route: request.route.clone(),
                model: Some(crate::support::redact::truncate(&request.model, 256).to_string()),
                status,
                trace_id: request.trace_id.clone(),
                ..Row::default()
            }));
        }
    }

    /// `/health`'s `keys.shared`: `None` unless `keys.shared` is on.
    pub fn shared_state(&self) -> Option<shared::SharedState> {
        self.shared.as_ref().map(|s| s.state())
    }

    /// `row`, queued for the usage stream too when shared.
    fn published(&self, row: Row) -> Row {
        if let Some(shared) = &self.shared {
            shared.publish(&row);
        }
        row
    }

    /// Spent this period by `key`.
    pub fn spent(&self, key: &KeyState) -> Spend {
        if let Some(shared) = &self.shared {
            return shared.spent(key.name(), key.limits.period, now_millis());
        }
        self.counters
            .spent(key.name(), key.limits.period, now_millis())
    }
}

/// Compares without an early exit, so timing does not reveal a secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A request about to be metered.
#[derive(Clone, Debug, Default)]
pub struct Metered {
    pub ingress: &'static str,
    /// The route (pass-through: the request's own path).
    pub route: std::borrow::Cow<'static, str>,
    pub model: String,
    /// Input tokens estimated at 4 bytes of the request's messages a token.
    pub input_estimate: u64,
    /// The request's own output limit (`max_tokens` and the like).
    pub max_output: Option<u64>,
    pub request_id: Option<String>,
    /// The request's trace id when traces are on (for a refusal's row).
    pub trace_id: Option<String>,
}

/// 4 bytes a token, never zero for something sent.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// How a metered request ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub status: u16,
    /// What the provider reported: (input with cached, output, cached).
    pub usage: Option<(u64, u64, u64)>,
    /// Bytes of text (content, tool arguments) streamed to the client.
    pub streamed_bytes: u64,
    pub provider: Option<Arc<str>>,
    pub ttft: Option<Duration>,
    pub trace_id: Option<String>,
}

/// An admitted request: holds its parallel slot and reservation until
/// [`Ticket::finish`], or until dropped (then settled as cut short).
pub struct Ticket {
    keys: Arc<Keys>,
    /// The prices it was admitted with.
    settings: Arc<Settings>,
    key: Option<Arc<KeyState>>,
    grant: Grant,
    request: Metered,
    started: Instant,
    done: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.key.as_ref().map(|k| k.name()))
            .finish()
    }
}

impl Ticket {
    fn new(
        keys: Arc<Keys>,
        settings: Arc<Settings>,
        key: Option<Arc<KeyState>>,
        grant: Grant,
        request: Metered,
        started: Instant,
    ) -> Ticket {
        Ticket {
            keys,
            settings,
            key,
            grant,
            request,
            started,
            done: false,
        }
    }

    /// The key's name (`-` for the operator).
    pub fn key_name(&self) -> &str {
        self.key.as_ref().map_or(OPERATOR, |k| k.name())
    }

    /// The `x-ratelimit-*` headers for the key's limits.
    pub fn rate_headers(&self) -> &RateHeaders {
        &self.grant.headers
    }

    /// The request id for the ledger row, when admission did not know it.
    pub fn set_request_id(&mut self, id: &str) {
        if self.request.request_id.is_none() {
            self.request.request_id = Some(id.to_string());
        }
    }

    /// Settles the reservation with what was used and writes the ledger row.
    pub fn finish(mut self, outcome: Outcome) {
        self.settle(outcome);
    }

    fn settle(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let charged = (200..300).contains(&outcome.status) || outcome.status == 499;
        let (input, output, cached, estimated) = match outcome.usage {
            Some((i, o, c)) => (i, o, c, false),
            None if charged => (
                self.request.input_estimate.max(1),
                estimate_tokens(outcome.streamed_bytes as usize),
                0,
                true,
            ),
            None => (0, 0, 0, false),
        };
        let micros = self
            .settings
            .micros(&self.request.model, input, cached, output);
        // One reading of the clock: when the request ended, for the counters,
        // the book and the ledger row alike.
        let now = now_millis();
        if let Some(key) = &self.key {
            let used = Spend {
                tokens: input + output,
                micros,
            };
            match &self.keys.shared {
                Some(shared) => shared.settle(key.name(), &key.limits, &self.grant, used, now),
                None => {
                    self.keys
                        .counters
                        .settle(&key.counters, &key.limits, &self.grant, used, now)
                }
            }
        }
        let operator_stats;
        let stats = match &self.key {
            Some(key) => &key.stats,
            None => {
                operator_stats = self.keys.stats_of(OPERATOR);
                &operator_stats
            }
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.input_tokens.fetch_add(input, Ordering::Relaxed);
        stats.output_tokens.fetch_add(output, Ordering::Relaxed);
        stats.cost_micros.fetch_add(micros, Ordering::Relaxed);
        let figures = book::Figures {
            requests: 1,
            refused: 0,
            input_tokens: input,
            output_tokens: output,
            cached_tokens: cached,
            cost_micros: micros,
        };
        let model = crate::support::redact::truncate(&self.request.model, 256);
        match &self.key {
            Some(key) => {
                self.keys
                    .book
                    .record_on(&key.page, model, key.limits.period, now / 1000, figures)
            }
            None => self.keys.book.record(
                OPERATOR,
                model,
                period::Period::default(),
                now / 1000,
                figures,
            ),
        }
        if let Some(ledger) = self.keys.ledger() {
            // The request's own strings move into the row (no copies).
            let mut model = std::mem::take(&mut self.request.model);
            model.truncate(crate::support::redact::truncate(&model, 256).len());
            let pushed = ledger.push(self.keys.published(Row {
                time_ms: now,
                request_id: self.request.request_id.take(),
                key: match &self.key {
                    Some(key) => key.name.clone(),
                    None => self.keys.operator_name.clone(),
                },
                ingress: self.request.ingress,
                route: std::mem::take(&mut self.request.route),
                model: Some(model),
                provider: outcome.provider,
                status: outcome.status,
                input_tokens: input,
                output_tokens: output,
                cached_tokens: cached,
                cost_usd: micros as f64 / 1e6,
                duration_ms: (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                ttft_ms: outcome.ttft.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
                trace_id: outcome.trace_id.or(self.request.trace_id.take()),
                estimated,
            }));
            // Said once, then at every power of two dropped: a bounded log.
            if !pushed && ledger.dropped().is_power_of_two() {
                tracing::error!(
                    dropped = ledger.dropped(),
                    "usage ledger backlog full ({} rows): rows are dropped (keys.fail_closed = false); run `doctor`",
                    ledger.max_backlog()
                );
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Never finished (the request was cancelled or its task panicked):
        // release the slot and the reservation, charging what was estimated.
        self.settle(Outcome {
            status: 499,
            ..Outcome::default()
        });
    }
}
