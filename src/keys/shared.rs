//! One limit per key across every proxy on a NATS server (`keys.shared = true`
//! with `[nats]`; docs/keys.md "Across hosts").
//!
//! - Keys live in the JetStream KV bucket [`KEYS_BUCKET`] (one entry per key
//!   name, the same fields as `keys.toml`, never a secret). `proxy keys` writes
//!   it; every proxy watches it and merges it over its own `keys.toml`.
//! - A key's counters live in one entry of [`LIMITS_BUCKET`]: the sliding
//!   minute of requests and tokens (100 ms buckets), the period's spend, and
//!   one *hold* per request in flight (its reservation, its owner and a
//!   deadline). Admission reads the entry (from this proxy's cache when it has
//!   the last revision), checks every limit, and writes it back with
//!   compare-and-set on the revision: of two proxies racing for the last unit,
//!   one write fails and that proxy reads again and re-checks. So admission is
//!   one KV round trip when nobody else wrote the key since this proxy did.
//! - Holds expire: each carries a deadline [`HOLD_TTL`] ahead, which the proxy
//!   owning it pushes forward every [`RENEW_EVERY`] while the request runs.
//!   Readers ignore and drop expired holds, so a proxy that dies (SIGKILL,
//!   power loss) gives its slots and reservations back within [`HOLD_TTL`].
//!   Deadlines are wall-clock times: the hosts' clocks must agree within a few
//!   seconds (NTP).
//! - NATS unreachable: admission goes on from the last state this proxy saw
//!   (its own admissions added) for `keys.shared_grace` seconds; then
//!   `keys.fail_closed = true` refuses metered requests with 503, `false` goes
//!   on counting alone. Settlements wait (up to [`SETTLE_PATIENCE`]) for NATS
//!   to come back, so spend made during an outage is counted once it returns.
//! - Every ledger row is also published to the stream [`USAGE_STREAM`], from a
//!   bounded queue ([`USAGE_BACKLOG`] rows), so `proxy usage --nats` reports
//!   over every host.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Keys;
use super::file::{KeyEntry, KeyFile};
use super::ledger::Row;
use super::limits::{Budget, Grant, Limits, Millis, RateHeaders, Refusal, Spend, Want};
use super::period::Period;
use crate::home::config::Config;

/// The keys, one entry per key name.
pub const KEYS_BUCKET: &str = "WARDEN_KEYS";
/// The counters, one entry per key name.
pub const LIMITS_BUCKET: &str = "WARDEN_LIMITS";
/// Every proxy's ledger rows, on subjects `WARDEN_USAGE.<proxy>`.
pub const USAGE_STREAM: &str = "WARDEN_USAGE";
/// The stream keeps at most this many bytes (oldest rows go first).
pub const USAGE_MAX_BYTES: i64 = 1 << 30;
/// A hold (slot and reservation of a request in flight) not renewed for this
/// long is ignored: what a dead proxy held comes back within it.
pub const HOLD_TTL: Millis = 20_000;
/// How often a proxy pushes its holds' deadlines forward.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Compare-and-set attempts per admission before a 429 (`contention`).
pub const MAX_CAS: usize = 32;
/// Requests in flight per key, all proxies together, at most (the entry's size bound).
pub const MAX_HOLDS: usize = 10_000;
/// One KV operation at most.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// A settlement waits this long at most for NATS to come back.
pub const SETTLE_PATIENCE: Duration = Duration::from_secs(120);
/// Ledger rows waiting to be published, at most (beyond, dropped and counted).
pub const USAGE_BACKLOG: usize = 100_000;

const MINUTE: Millis = 60_000;
const BUCKET: Millis = 100;

/// How to reach NATS (`[nats]`).
#[derive(Clone, Debug)]
pub struct NatsAccess {
    pub url: String,
    pub token: Option<String>,
    pub credentials_file: String,
}

impl NatsAccess {
    pub fn of(config: &Config) -> NatsAccess {
        NatsAccess {
            url: config.nats.url.clone(),
            token: config.nats_token(),
            credentials_file: config.nats.credentials_file.clone(),
        }
    }

    /// A connection; `retry`: retries the first connect forever (the proxy),
    /// else fails at once (the commands).
    pub async fn connect(
        &self,
        name: &str,
        retry: bool,
        events: Option<Weak<Shared>>,
    ) -> Result<async_nats::Client, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .reconnect_delay_callback(|n| {
                Duration::from_millis(100u64.saturating_mul(1 << n.min(5)))
                    .min(Duration::from_secs(2))
            })
            .connection_timeout(Duration::from_secs(5));
        if retry {
            options = options.retry_on_initial_connect();
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if !self.credentials_file.is_empty() {
            options = options
                .credentials_file(&self.credentials_file)
                .await
                .map_err(|e| format!("nats.credentials_file {:?}: {e}", self.credentials_file))?;
        }
        if let Some(shared) = events {
            options = options.event_callback(move |event| {
                let shared = shared.clone();
                async move {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    match event {
                        async_nats::Event::Connected if shared.conn().is_some() => shared.mark_up(),
                        async_nats::Event::Disconnected => shared.mark_down(),
                        _ => {}
                    }
                }
            });
        }
        let servers: Vec<async_nats::ServerAddr> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>().map_err(|e| {
                    format!(
                        "nats.url {:?} is not a NATS address: {e}",
                        crate::support::redact::url(u)
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        options.connect(servers.as_slice()).await.map_err(|e| {
            format!(
                "cannot connect to NATS at {}: {e}",
                crate::support::redact::url(&self.url)
            )
        })
    }
}

/// The buckets and the stream, on one connection.
#[derive(Clone)]
pub struct Conn {
    client: async_nats::Client,
    keys: kv::Store,
    limits: kv::Store,
    js: jetstream::Context,
}

impl Conn {
    /// Opens (creating when missing) the buckets and the usage stream.
    pub async fn open(client: async_nats::Client) -> Result<Conn, String> {
        let js = jetstream::new(client.clone());
        let keys = bucket(&js, KEYS_BUCKET).await?;
        let limits = bucket(&js, LIMITS_BUCKET).await?;
        js.get_or_create_stream(jetstream::stream::Config {
            name: USAGE_STREAM.into(),
            subjects: vec![format!("{USAGE_STREAM}.>")],
            max_bytes: USAGE_MAX_BYTES,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot open the JetStream stream {USAGE_STREAM}: {e}"))?;
        Ok(Conn {
            client,
            keys,
            limits,
            js,
        })
    }

    /// Writes one key's entry to the keys bucket.
    pub async fn put_key(&self, entry: &KeyEntry) -> Result<(), String> {
        let value = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
        tokio::time::timeout(OP_TIMEOUT, self.keys.put(kv_key(&entry.name), value.into()))
            .await
            .map_err(|_| {
                format!(
                    "writing the key {:?} to {KEYS_BUCKET} timed out",
                    entry.name
                )
            })?
            .map_err(|e| {
                format!(
                    "cannot write the key {:?} to {KEYS_BUCKET}: {e}",
                    entry.name
                )
            })?;
        Ok(())
    }

    /// Every key in the keys bucket.
    pub async fn all_keys(&self) -> Result<Vec<KeyEntry>, String> {
        let mut names = self
            .keys
            .keys()
            .await
            .map_err(|e| format!("cannot list {KEYS_BUCKET}: {e}"))?;
        let mut out = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| format!("cannot list {KEYS_BUCKET}: {e}"))?;
            if let Ok(Some(value)) = self.keys.get(&name).await {
                if let Ok(entry) = serde_json::from_slice::<KeyEntry>(&value) {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// Every row of the usage stream.
    pub async fn usage_rows(&self) -> Result<Vec<Row>, String> {
        let fail =
            |e: &dyn std::fmt::Display| format!("cannot read the stream {USAGE_STREAM}: {e}");
        let mut stream = self
            .js
            .get_stream(USAGE_STREAM)
            .await
            .map_err(|e| fail(&e))?;
        let total = stream.info().await.map_err(|e| fail(&e))?.state.messages;
        let mut rows = Vec::new();
        if total == 0 {
            return Ok(rows);
        }
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(&e))?;
        let mut messages = consumer.messages().await.map_err(|e| fail(&e))?;
        loop {
            let next = tokio::time::timeout(OP_TIMEOUT, messages.next()).await;
            let Ok(Some(Ok(message))) = next else { break };
            if let Some(row) = row_of_json(&message.payload) {
                rows.push(row);
            }
            let pending = message.info().map_or(0, |i| i.pending);
            if pending == 0 {
                break;
            }
        }
        Ok(rows)
    }
}

async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The KV bucket's stream, as `create_key_value` makes it (which asks for the
    // account's limits in a form nats-server 2.9 does not answer).
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot open the JetStream KV bucket {name}: {e}"))?;
    js.get_key_value(name)
        .await
        .map_err(|e| format!("cannot open the JetStream KV bucket {name}: {e}"))
}

/// `limits` with every check out of reach: records an admission without refusing it.
fn unlimited(limits: &Limits) -> Limits {
    const FAR: u64 = u64::MAX / 4;
    Limits {
        rpm: limits.rpm.map(|_| FAR),
        tpm: limits.tpm.map(|_| FAR),
        max_parallel: None,
        budget: limits.budget.map(|b| match b {
            Budget::Tokens(_) => Budget::Tokens(FAR),
            Budget::Micros(_) => Budget::Micros(FAR),
        }),
        period: limits.period,
    }
}

/// A key name as a KV key (names may hold '@', which KV keys may not).
fn kv_key(name: &str) -> String {
    format!("k.{}", hex::encode(name.as_bytes()))
}

/// One request in flight somewhere: its reservation and until when it counts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
struct Hold {
    #[serde(default)]
    tokens: u64,
    #[serde(default)]
    micros: u64,
    until: Millis,
}

/// A key's counters, as stored in [`LIMITS_BUCKET`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct State {
    /// (100 ms bucket start, admissions).
    #[serde(default)]
    requests: Vec<(Millis, u64)>,
    /// (100 ms bucket start, tokens).
    #[serde(default)]
    tokens: Vec<(Millis, u64)>,
    #[serde(default)]
    period_start: u64,
    #[serde(default)]
    spent_tokens: u64,
    #[serde(default)]
    spent_micros: u64,
    /// "PROXY.N" -> hold.
    #[serde(default)]
    holds: BTreeMap<String, Hold>,
}

fn add(window: &mut Vec<(Millis, u64)>, now: Millis, n: u64) {
    if n == 0 {
        return;
    }
    let bucket = now - now % BUCKET;
    match window.last_mut() {
        Some((t, count)) if *t == bucket => *count += n,
        _ => window.push((bucket, n)),
    }
}

fn secs_until(at: Millis, now: Millis) -> u64 {
    at.saturating_sub(now).div_ceil(1000).max(1)
}

/// Seconds from `now` (at least 1) until enough of `window` has left it for
/// `fits` to hold of what is left: when a refused request can be admitted.
/// The entries are taken oldest first (proxies' clocks may put them out of
/// order).
fn retry_after(window: &[(Millis, u64)], now: Millis, fits: impl Fn(u64) -> bool) -> u64 {
    let mut entries = window.to_vec();
    entries.sort_unstable_by_key(|&(t, _)| t);
    let mut left = State::window(&entries);
    for (t, n) in entries {
        left -= n;
        if fits(left) {
            return secs_until(t + MINUTE, now);
        }
    }
    // Nothing fits even in an empty window (a limit of 0).
    secs_until(now + MINUTE, now)
}

impl State {
    fn prune(&mut self, period: Period, now: Millis) {
        self.requests.retain(|&(t, _)| t + MINUTE > now);
        self.tokens.retain(|&(t, _)| t + MINUTE > now);
        self.holds.retain(|_, h| h.until > now);
        let start = period.start(now / 1000);
        if start != self.period_start {
            self.period_start = start;
            self.spent_tokens = 0;
            self.spent_micros = 0;
        }
    }

    fn window(w: &[(Millis, u64)]) -> u64 {
        w.iter().map(|&(_, n)| n).sum()
    }

    /// Checks every limit and, when all pass, takes a hold named `hold` (when
    /// the key has a limit on requests in flight or a budget).
    fn admit(
        &mut self,
        limits: &Limits,
        want: Want,
        now: Millis,
        hold: Option<&str>,
    ) -> Result<Grant, Refusal> {
        self.prune(limits.period, now);
        if let Some(max) = limits.max_parallel {
            if self.holds.len() as u64 >= max {
                return Err(Refusal::Rate {
                    what: "max_parallel",
                    retry_after: 1,
                });
            }
        }
        if hold.is_some() && self.holds.len() >= MAX_HOLDS {
            return Err(Refusal::Rate {
                what: "in_flight",
                retry_after: 1,
            });
        }
        let requests = State::window(&self.requests);
        if let Some(rpm) = limits.rpm {
            if requests >= rpm {
                return Err(Refusal::Rate {
                    what: "rpm",
                    retry_after: retry_after(&self.requests, now, |left| left < rpm),
                });
            }
        }
        let tokens = State::window(&self.tokens);
        if let Some(tpm) = limits.tpm {
            let fits =
                |window: u64| window < tpm && (window == 0 || window + want.input_tokens <= tpm);
            if !fits(tokens) {
                return Err(Refusal::Rate {
                    what: "tpm",
                    retry_after: retry_after(&self.tokens, now, fits),
                });
            }
        }
        let reserved_tokens: u64 = self.holds.values().map(|h| h.tokens).sum();
        let reserved_micros: u64 = self.holds.values().map(|h| h.micros).sum();
        let fits = match limits.budget {
            None => true,
            Some(Budget::Tokens(b)) => self.spent_tokens + reserved_tokens + want.tokens <= b,
            Some(Budget::Micros(b)) => self.spent_micros + reserved_micros + want.micros <= b,
        };
        if !fits {
            let retry_after = limits
                .period
                .end(now / 1000)
                .map(|end| end.saturating_sub(now / 1000).max(1));
            return Err(Refusal::Quota { retry_after });
        }
        if limits.rpm.is_some() {
            add(&mut self.requests, now, 1);
        }
        if limits.tpm.is_some() {
            add(&mut self.tokens, now, want.input_tokens);
        }
        let reserved = if limits.budget.is_some() {
            want
        } else {
            Want {
                input_tokens: want.input_tokens,
                ..Want::default()
            }
        };
        if let Some(name) = hold {
            self.holds.insert(
                name.to_string(),
                Hold {
                    tokens: reserved.tokens,
                    micros: reserved.micros,
                    until: now + HOLD_TTL,
                },
            );
        }
        let headers = self.headers(limits, now);
        Ok(Grant {
            reserved,
            headers,
            hold: 0,
        })
    }

    /// The `x-ratelimit-*` figures for the limits the key has.
    fn headers(&self, limits: &Limits, now: Millis) -> RateHeaders {
        let reset = |w: &[(Millis, u64)]| {
            w.first()
                .map_or(0, |&(t, _)| (t + MINUTE).saturating_sub(now))
        };
        RateHeaders {
            requests: limits.rpm.map(|rpm| {
                (
                    rpm,
                    rpm.saturating_sub(State::window(&self.requests)),
                    reset(&self.requests),
                )
            }),
            tokens: limits.tpm.map(|tpm| {
                (
                    tpm,
                    tpm.saturating_sub(State::window(&self.tokens)),
                    reset(&self.tokens),
                )
            }),
        }
    }
}

/// Settlements not yet written to a key's entry: the key's next write (an
/// admission's, or a flush [`SETTLE_BATCH`] later) carries them, so a busy
/// key costs one write per request, not two.
#[derive(Clone, Debug, Default)]
struct Pending {
    holds: Vec<String>,
    spent_tokens: u64,
    spent_micros: u64,
    /// Tokens used beyond the input counted at admission (the tpm window).
    window_tokens: u64,
    tpm: bool,
    period: Period,
    now: Millis,
}

impl Pending {
    fn apply(&self, s: &mut State) {
        s.prune(self.period, self.now);
        for h in &self.holds {
            s.holds.remove(h);
        }
        s.spent_tokens += self.spent_tokens;
        s.spent_micros += self.spent_micros;
        if self.tpm {
            add(&mut s.tokens, self.now, self.window_tokens);
        }
    }

    fn merge(&mut self, other: Pending) {
        for h in other.holds {
            if self.holds.len() >= MAX_HOLDS {
                // It expires on its own.
                self.holds.remove(0);
            }
            self.holds.push(h);
        }
        self.spent_tokens += other.spent_tokens;
        self.spent_micros += other.spent_micros;
        self.window_tokens += other.window_tokens;
        self.tpm |= other.tpm;
        self.period = other.period;
        self.now = self.now.max(other.now);
    }
}

/// How long a settlement waits for an admission of the same key to carry it.
pub const SETTLE_BATCH: Duration = Duration::from_millis(20);

/// `/health`'s word for the shared counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedState {
    /// NATS answers: one limit across every proxy.
    Ok,
    /// NATS away for less than `keys.shared_grace`: served from the last known state.
    Grace,
    /// Away for longer: `keys.fail_closed` decides.
    Failing,
}

impl SharedState {
    pub fn as_str(self) -> &'static str {
        match self {
            SharedState::Ok => "ok",
            SharedState::Grace => "grace",
            SharedState::Failing => "failing",
        }
    }
}

enum Op {
    /// NATS did not answer (or answered an error): go on without it.
    Down,
}

/// The shared keys and counters of one proxy.
pub struct Shared {
    access: NatsAccess,
    grace: Duration,
    fail_closed: bool,
    /// This proxy's name in holds and usage subjects.
    proxy: String,
    conn: RwLock<Option<Conn>>,
    /// Last known (revision, state) per key name; revision 0: not in the bucket.
    cache: Mutex<HashMap<String, (u64, State)>>,
    /// One compare-and-set at a time per key from this proxy: its own
    /// requests queue here instead of conflicting with each other.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Settlements not yet written, per key name.
    pending: Mutex<HashMap<String, Pending>>,
    /// Holds this proxy owns, per key name: renewed while their requests run.
    mine: Mutex<HashMap<String, Vec<String>>>,
    /// When NATS was last found away (`None`: it answers).
    down_since: Mutex<Option<Instant>>,
    next_hold: AtomicU64,
    /// The keys bucket as last seen; and `keys.toml` as last read.
    bucket_keys: RwLock<BTreeMap<String, KeyEntry>>,
    local_file: Mutex<KeyFile>,
    usage: Mutex<VecDeque<Vec<u8>>>,
    usage_ready: tokio::sync::Notify,
    usage_dropped: AtomicU64,
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl Shared {
    /// `Some` when `keys.shared` is on and `[nats]` is set.
    pub fn from_config(config: &Config) -> Option<Arc<Shared>> {
        if !config.keys.shared || !config.nats.enabled() {
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Some(Arc::new(Shared {
            access: NatsAccess::of(config),
            grace: Duration::from_secs(config.keys.shared_grace),
            fail_closed: config.keys.fail_closed,
            proxy: format!("{:x}-{:x}", std::process::id(), nanos),
            conn: RwLock::new(None),
            cache: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            mine: Mutex::new(HashMap::new()),
            down_since: Mutex::new(Some(Instant::now())),
            next_hold: AtomicU64::new(1),
            bucket_keys: RwLock::new(BTreeMap::new()),
            local_file: Mutex::new(KeyFile::default()),
            usage: Mutex::new(VecDeque::new()),
            usage_ready: tokio::sync::Notify::new(),
            usage_dropped: AtomicU64::new(0),
            runtime: OnceLock::new(),
        }))
    }

    fn conn(&self) -> Option<Conn> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The connection, when it is up.
    fn up(&self) -> Option<Conn> {
        self.conn()
            .filter(|c| c.client.connection_state() == async_nats::connection::State::Connected)
    }

    fn mark_down(&self) {
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_none() {
            tracing::warn!(
                grace_secs = self.grace.as_secs(),
                "shared key counters: NATS is away; serving from the last known state"
            );
            *down = Some(Instant::now());
        }
    }

    fn mark_up(&self) {
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if down.take().is_some() {
            tracing::info!("shared key counters: NATS answers again");
        }
    }

    pub fn state(&self) -> SharedState {
        if self.conn().is_some_and(|c| {
            c.client.connection_state() != async_nats::connection::State::Connected
        }) {
            self.mark_down();
        }
        match *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) {
            None => SharedState::Ok,
            Some(t) if t.elapsed() < self.grace => SharedState::Grace,
            Some(_) => SharedState::Failing,
        }
    }

    /// Rows waiting to be published; rows dropped because the queue was full.
    pub fn usage_backlog(&self) -> (usize, u64) {
        (
            self.usage.lock().unwrap_or_else(|p| p.into_inner()).len(),
            self.usage_dropped.load(Ordering::Relaxed),
        )
    }

    /// `keys.toml` (`file`) with the bucket's keys over it: a key in both is
    /// the bucket's.
    pub fn merge(&self, file: KeyFile) -> KeyFile {
        *self.local_file.lock().unwrap_or_else(|p| p.into_inner()) = file.clone();
        let bucket = self.bucket_keys.read().unwrap_or_else(|p| p.into_inner());
        if bucket.is_empty() {
            return file;
        }
        let mut keys: Vec<KeyEntry> = file
            .keys
            .into_iter()
            .filter(|k| !bucket.contains_key(&k.name))
            .collect();
        keys.extend(bucket.values().cloned());
        KeyFile { keys }
    }

    fn local_file(&self) -> KeyFile {
        self.local_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn needs_counters(limits: &Limits) -> bool {
        limits.rpm.is_some()
            || limits.tpm.is_some()
            || limits.max_parallel.is_some()
            || limits.budget.is_some()
    }

    fn needs_hold(limits: &Limits) -> bool {
        limits.max_parallel.is_some() || limits.budget.is_some()
    }

    fn hold_name(&self, n: u64) -> String {
        format!("{}.{n}", self.proxy)
    }

    /// Admission across every proxy: one compare-and-set on the key's entry.
    pub async fn admit(
        &self,
        key: &str,
        limits: &Limits,
        want: Want,
        now: Millis,
    ) -> Result<Grant, Refusal> {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        if !Self::needs_counters(limits) {
            return Ok(Grant {
                reserved: Want {
                    input_tokens: want.input_tokens,
                    ..Want::default()
                },
                ..Grant::default()
            });
        }
        let hold = Self::needs_hold(limits).then(|| self.next_hold.fetch_add(1, Ordering::Relaxed));
        let hold_name = hold.map(|n| self.hold_name(n));
        let result = match self.up() {
            Some(conn) => {
                // Err: NATS did not answer; served below from the last known state.
                self.cas(&conn, key, false, |s| {
                    s.admit(limits, want, now, hold_name.as_deref())
                })
                .await
                .ok()
            }
            None => None,
        };
        let result = match result {
            Some(result) => result,
            None => {
                if self.state() == SharedState::Failing && self.fail_closed {
                    return Err(Refusal::Unavailable);
                }
                // From the last known state (with this proxy's settlements
                // not yet written), counted here alone.
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                let (_, state) = cache.entry(key.to_string()).or_default();
                let mut view = state.clone();
                if let Some(p) = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(key)
                {
                    p.apply(&mut view);
                }
                let granted = view.admit(limits, want, now, hold_name.as_deref());
                if granted.is_ok() {
                    // Recorded in the last known state too, past its limits.
                    let _ = state.admit(&unlimited(limits), want, now, hold_name.as_deref());
                }
                granted
            }
        };
        let mut grant = result?;
        if let (Some(n), Some(name)) = (hold, hold_name) {
            grant.hold = n;
            self.mine
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.to_string())
                .or_default()
                .push(name);
        }
        Ok(grant)
    }

    /// Applies `f` to the key's state and writes it with compare-and-set:
    /// from the cached revision first, re-read on a conflict (or before
    /// trusting a refusal made from the cache).
    async fn cas<T>(
        &self,
        conn: &Conn,
        key: &str,
        flush_only: bool,
        mut f: impl FnMut(&mut State) -> Result<T, Refusal>,
    ) -> Result<Result<T, Refusal>, Op> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        let _turn = lock.lock().await;
        // The settlements waiting for this key go with this write.
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if flush_only && pending.is_none() {
            return Ok(f(&mut State::default()));
        }
        let give_back = |pending: Option<Pending>| {
            if let Some(p) = pending {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key.to_string())
                    .or_default()
                    .merge(p);
            }
        };
        let kv_name = kv_key(key);
        let mut cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        for _ in 0..MAX_CAS {
            let fresh = cached.is_none();
            let (revision, mut base) = match cached.take() {
                Some(c) => c,
                None => match self.read(conn, &kv_name).await {
                    Ok(read) => read,
                    Err(down) => {
                        give_back(pending);
                        return Err(down);
                    }
                },
            };
            if let Some(p) = &pending {
                p.apply(&mut base);
            }
            let mut next = base.clone();
            let (outcome, write) = match f(&mut next) {
                Ok(value) => (Ok(value), next),
                // A refusal from the cache is checked again on a fresh read.
                Err(_) if !fresh => continue,
                Err(refusal) if pending.is_none() => {
                    self.remember(key, revision, base);
                    return Ok(Err(refusal));
                }
                // Refused, but the settlements are written all the same.
                Err(refusal) => (Err(refusal), base),
            };
            let bytes: bytes::Bytes = serde_json::to_vec(&write).unwrap_or_default().into();
            let written = async {
                if revision == 0 {
                    conn.limits
                        .create(&kv_name, bytes)
                        .await
                        .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists)
                } else {
                    conn.limits
                        .update(&kv_name, bytes, revision)
                        .await
                        .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision)
                }
            };
            match tokio::time::timeout(OP_TIMEOUT, written).await {
                Ok(Ok(new_revision)) => {
                    self.remember(key, new_revision, write);
                    self.mark_up();
                    return Ok(outcome);
                }
                // Someone else wrote it first: read again, check again.
                Ok(Err(true)) => continue,
                Ok(Err(false)) | Err(_) => {
                    self.mark_down();
                    give_back(pending);
                    return Err(Op::Down);
                }
            }
        }
        give_back(pending);
        Ok(Err(Refusal::Rate {
            what: "contention",
            retry_after: 1,
        }))
    }

    async fn read(&self, conn: &Conn, kv_name: &str) -> Result<(u64, State), Op> {
        match tokio::time::timeout(OP_TIMEOUT, conn.limits.entry(kv_name)).await {
            Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put => Ok((
                entry.revision,
                serde_json::from_slice(&entry.value).unwrap_or_default(),
            )),
            // Absent, or deleted/purged (then its revision is the one to update).
            Ok(Ok(Some(entry))) => Ok((entry.revision, State::default())),
            Ok(Ok(None)) => Ok((0, State::default())),
            Ok(Err(_)) | Err(_) => {
                self.mark_down();
                Err(Op::Down)
            }
        }
    }

    fn remember(&self, key: &str, revision: u64, state: State) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), (revision, state));
    }

    /// Gives the hold back and adds what was used, in the background (the
    /// request's answer never waits on NATS); waits for NATS when it is away.
    pub fn settle(
        self: &Arc<Self>,
        key: &str,
        limits: &Limits,
        grant: &Grant,
        used: Spend,
        now: Millis,
    ) {
        if !Self::needs_counters(limits) {
            return;
        }
        let hold = (grant.hold != 0).then(|| self.hold_name(grant.hold));
        if let Some(name) = &hold {
            let mut mine = self.mine.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = mine.get_mut(key) {
                list.retain(|h| h != name);
                if list.is_empty() {
                    mine.remove(key);
                }
            }
        }
        // Nothing to write back: the request counted at admission.
        if hold.is_none() && limits.tpm.is_none() && limits.budget.is_none() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .merge(Pending {
                holds: hold.into_iter().collect(),
                spent_tokens: used.tokens,
                spent_micros: used.micros,
                window_tokens: used.tokens.saturating_sub(grant.reserved.input_tokens),
                tpm: limits.tpm.is_some(),
                period: limits.period,
                now,
            });
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        let shared = self.clone();
        let key = key.to_string();
        runtime.spawn(async move {
            // An admission of the same key within this window carries it.
            tokio::time::sleep(SETTLE_BATCH).await;
            let patience = Instant::now() + SETTLE_PATIENCE;
            while Instant::now() < patience {
                if let Some(conn) = shared.up() {
                    if matches!(shared.cas(&conn, &key, true, |_| Ok(())).await, Ok(Ok(()))) {
                        return;
                    }
                }
                // NATS away (or the key contended past MAX_CAS): try again shortly.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            tracing::error!(key = %key, "shared key counters: settlements could not be written to NATS for 2 minutes; they go with the key's next write");
        });
    }

    /// The `x-ratelimit-*` figures of `key` as last seen (what a refusal carries).
    pub fn headers(&self, key: &str, limits: &Limits, now: Millis) -> RateHeaders {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (_, state) = cache.entry(key.to_string()).or_default();
        state.prune(limits.period, now);
        state.headers(limits, now)
    }

    /// Spent this period, as last seen.
    pub fn spent(&self, key: &str, period: Period, now: Millis) -> Spend {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get_mut(key) {
            Some((_, state)) => {
                state.prune(period, now);
                Spend {
                    tokens: state.spent_tokens,
                    micros: state.spent_micros,
                }
            }
            None => Spend::default(),
        }
    }

    /// Queues a ledger row for the usage stream (never waits).
    pub fn publish(&self, row: &Row) {
        let payload = row_to_json(row);
        {
            let mut q = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= USAGE_BACKLOG {
                q.pop_front();
                self.usage_dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(payload);
        }
        self.usage_ready.notify_one();
    }

    /// Pushes this proxy's holds' deadlines forward.
    async fn renew(&self, conn: &Conn) {
        let mine: Vec<(String, Vec<String>)> = self
            .mine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, holds) in mine {
            let until = super::now_millis() + HOLD_TTL;
            let _ = self
                .cas(conn, &key, false, |s| {
                    for h in &holds {
                        if let Some(hold) = s.holds.get_mut(h) {
                            hold.until = hold.until.max(until);
                        }
                    }
                    Ok(())
                })
                .await;
        }
    }
}

/// Connects, then follows the keys bucket, renews holds and publishes usage,
/// while `keys` lives.
pub fn spawn(keys: &Arc<Keys>, shared: Arc<Shared>) {
    let _ = shared.runtime.set(tokio::runtime::Handle::current());
    let weak_keys = Arc::downgrade(keys);
    let weak = Arc::downgrade(&shared);
    tokio::spawn(async move {
        let client = match shared
            .access
            .connect(
                &format!("warden-proxy {} (keys)", crate::VERSION),
                true,
                Some(weak.clone()),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "shared keys: cannot connect to NATS; keys.fail_closed applies after keys.shared_grace");
                return;
            }
        };
        drop(shared);
        let mut delay = Duration::from_millis(100);
        let conn = loop {
            let Some(shared) = weak.upgrade() else { return };
            match Conn::open(client.clone()).await {
                Ok(conn) => {
                    *shared.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                    shared.mark_up();
                    break conn;
                }
                Err(e) => tracing::warn!(error = %e, "shared keys: JetStream not ready; retrying"),
            }
            drop(shared);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        };
        tokio::spawn(renewer(weak.clone(), conn.clone()));
        tokio::spawn(publisher(weak.clone(), conn.clone()));
        follow_keys(weak_keys, weak, conn).await;
    });
}

async fn renewer(weak: Weak<Shared>, conn: Conn) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = weak.upgrade() else { return };
        if shared.up().is_some() {
            shared.renew(&conn).await;
        }
    }
}

async fn publisher(weak: Weak<Shared>, conn: Conn) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let next = shared
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned();
        let Some(payload) = next else {
            // Woken by a row, or checks again after a second (the Weak may be gone).
            let _ =
                tokio::time::timeout(Duration::from_secs(1), shared.usage_ready.notified()).await;
            continue;
        };
        let subject = format!("{USAGE_STREAM}.{}", shared.proxy);
        let sent = async {
            conn.js
                .publish(subject, payload.into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(OP_TIMEOUT, sent).await {
            Ok(Ok(_)) => {
                shared
                    .usage
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop_front();
            }
            _ => {
                drop(shared);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Follows the keys bucket: every change is in force at once.
async fn follow_keys(weak_keys: Weak<Keys>, weak: Weak<Shared>, conn: Conn) {
    let mut seeded = false;
    loop {
        let (Some(keys), Some(shared)) = (weak_keys.upgrade(), weak.upgrade()) else {
            return;
        };
        if !seeded {
            // keys.toml's keys the bucket lacks go into it (the first proxy seeds it).
            for entry in shared.local_file().keys {
                let value = serde_json::to_vec(&entry).unwrap_or_default();
                let _ = conn.keys.create(kv_key(&entry.name), value.into()).await;
            }
            seeded = true;
        }
        let watch = conn.keys.watch_with_history(">").await;
        drop((keys, shared));
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "shared keys: cannot watch {KEYS_BUCKET}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { break };
            let (Some(keys), Some(shared)) = (weak_keys.upgrade(), weak.upgrade()) else {
                return;
            };
            {
                let mut bucket = shared
                    .bucket_keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                let name = entry
                    .key
                    .strip_prefix("k.")
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                match (entry.operation, name) {
                    (kv::Operation::Put, Some(_)) => {
                        match serde_json::from_slice::<KeyEntry>(&entry.value) {
                            // Bounded as keys.toml is.
                            Ok(key)
                                if bucket.len() >= super::file::MAX_KEYS
                                    && !bucket.contains_key(&key.name) =>
                            {
                                tracing::error!(
                                    "shared keys: {KEYS_BUCKET} holds more than {} keys; the rest are ignored",
                                    super::file::MAX_KEYS
                                );
                            }
                            Ok(key) => {
                                bucket.insert(key.name.clone(), key);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "shared keys: an entry of {KEYS_BUCKET} is not a key; ignored")
                            }
                        }
                    }
                    (_, Some(name)) => {
                        bucket.remove(&name);
                    }
                    _ => {}
                }
            }
            if entry.delta == 0 {
                keys.install(shared.local_file());
            }
        }
        // The watch ended (NATS went away): start it again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects for a command (`proxy keys`, `proxy usage --nats`): fails at once.
pub async fn command_conn(config: &Config) -> Result<Conn, String> {
    let client = NatsAccess::of(config)
        .connect(
            &format!("warden-proxy {} (command)", crate::VERSION),
            false,
            None,
        )
        .await?;
    Conn::open(client).await
}

/// Runs `f` on a fresh connection, for a command (no runtime of its own).
fn blocking<T>(
    config: &Config,
    f: impl AsyncFnOnce(Conn) -> Result<T, String>,
) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let conn = tokio::time::timeout(Duration::from_secs(10), command_conn(config))
            .await
            .map_err(|_| {
                format!(
                    "NATS at {} did not answer within 10 s",
                    crate::support::redact::url(&config.nats.url)
                )
            })??;
        f(conn).await
    })
}

/// Every key of the keys bucket (`proxy keys` with `keys.shared`).
pub fn bucket_keys_blocking(config: &Config) -> Result<Vec<KeyEntry>, String> {
    blocking(config, async |conn| conn.all_keys().await)
}

/// Writes one key to the keys bucket (`proxy keys` with `keys.shared`).
pub fn put_key_blocking(config: &Config, entry: &KeyEntry) -> Result<(), String> {
    blocking(config, async |conn| conn.put_key(entry).await)
}

/// What each key spent this period on every host, from its entry of
/// [`LIMITS_BUCKET`] (`proxy keys list` with `keys.shared`): (tokens, USD
/// millionths) per key name that has an entry (a key with no limit has none).
pub fn spent_blocking(
    config: &Config,
    keys: &[(String, Period)],
) -> Result<HashMap<String, (u64, u64)>, String> {
    blocking(config, async |conn| {
        let now = super::now_millis();
        let mut out = HashMap::new();
        for (name, period) in keys {
            let entry = tokio::time::timeout(OP_TIMEOUT, conn.limits.entry(kv_key(name)))
                .await
                .map_err(|_| format!("reading {LIMITS_BUCKET} timed out"))?
                .map_err(|e| format!("cannot read {LIMITS_BUCKET}: {e}"))?;
            if let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) {
                let state: State = serde_json::from_slice(&entry.value).unwrap_or_default();
                let spent = if state.period_start == period.start(now / 1000) {
                    (state.spent_tokens, state.spent_micros)
                } else {
                    (0, 0)
                };
                out.insert(name.clone(), spent);
            }
        }
        Ok(out)
    })
}

/// Every row of the usage stream (`proxy usage --nats`).
pub fn usage_rows_blocking(config: &Config) -> Result<Vec<Row>, String> {
    blocking(config, async |conn| conn.usage_rows().await)
}

fn row_to_json(r: &Row) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "time": super::ledger::rfc3339_millis(r.time_ms), "request_id": r.request_id,
        "key": &*r.key, "ingress": r.ingress, "route": &*r.route, "model": r.model,
        "provider": r.provider.as_deref(), "status": r.status,
        "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
        "cached_tokens": r.cached_tokens, "cost_usd": r.cost_usd, "duration_ms": r.duration_ms,
        "ttft_ms": r.ttft_ms, "trace_id": r.trace_id, "estimated": r.estimated,
    }))
    .unwrap_or_default()
}

fn row_of_json(bytes: &[u8]) -> Option<Row> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let s = |f: &str| v[f].as_str().map(str::to_string);
    let n = |f: &str| v[f].as_u64().unwrap_or(0);
    Some(Row {
        time_ms: super::ledger::parse_rfc3339_millis(v["time"].as_str()?)?,
        request_id: s("request_id"),
        key: s("key")?.into(),
        ingress: match v["ingress"].as_str() {
            Some("nats") => "nats",
            _ => "http",
        },
        route: s("route").unwrap_or_default().into(),
        model: s("model"),
        provider: s("provider").map(Into::into),
        status: n("status") as u16,
        input_tokens: n("input_tokens"),
        output_tokens: n("output_tokens"),
        cached_tokens: n("cached_tokens"),
        cost_usd: v["cost_usd"].as_f64().unwrap_or(0.0),
        duration_ms: v["duration_ms"].as_f64().unwrap_or(0.0),
        ttft_ms: v["ttft_ms"].as_f64(),
        trace_id: s("trace_id"),
        estimated: v["estimated"].as_bool().unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_796_000_000_000;

    #[test]
    fn an_expired_hold_gives_its_slot_and_reservation_back() {
        let limits = Limits {
            max_parallel: Some(1),
            budget: Some(Budget::Tokens(100)),
            period: Period::Day,
            ..Limits::default()
        };
        let want = Want {
            input_tokens: 1,
            tokens: 60,
            micros: 0,
        };
        let mut s = State::default();
        s.admit(&limits, want, T0, Some("dead.1")).unwrap();
        assert!(s.admit(&limits, want, T0 + 1, Some("p.1")).is_err());
        s.admit(&limits, want, T0 + HOLD_TTL, Some("p.1")).unwrap();
    }

    #[test]
    fn a_key_holds_at_most_max_holds_requests_in_flight_across_proxies() {
        let limits = Limits {
            budget: Some(Budget::Tokens(u64::MAX / 4)),
            ..Limits::default()
        };
        let want = Want {
            input_tokens: 1,
            tokens: 1,
            micros: 0,
        };
        let mut s = State::default();
        s.admit(&limits, want, T0, Some("p.0")).unwrap();
        let hold = s.holds["p.0"];
        for n in 1..MAX_HOLDS {
            s.holds.insert(format!("p.{n}"), hold);
        }
        assert_eq!(
            s.admit(&limits, want, T0, Some("p.last")).unwrap_err(),
            Refusal::Rate {
                what: "in_flight",
                retry_after: 1
            }
        );
        // The entry stays small enough for one NATS message (1 MiB by default).
        assert!(serde_json::to_vec(&s).unwrap().len() < 1 << 20);
    }

    #[test]
    fn settlements_waiting_for_a_write_are_applied_once_and_free_their_holds() {
        let limits = Limits {
            max_parallel: Some(2),
            budget: Some(Budget::Tokens(100)),
            period: Period::Day,
            ..Limits::default()
        };
        let want = Want {
            input_tokens: 1,
            tokens: 40,
            micros: 0,
        };
        let mut s = State::default();
        s.admit(&limits, want, T0, Some("p.1")).unwrap();
        s.admit(&limits, want, T0, Some("p.2")).unwrap();
        assert!(s.admit(&limits, want, T0, Some("p.3")).is_err());
        let mut pending = Pending::default();
        for hold in ["p.1", "p.2"] {
            pending.merge(Pending {
                holds: vec![hold.into()],
                spent_tokens: 10,
                period: Period::Day,
                now: T0,
                ..Pending::default()
            });
        }
        pending.apply(&mut s);
        assert_eq!((s.spent_tokens, s.holds.len()), (20, 0));
        // 20 spent + 40 + 40 fit 100; a third does not.
        s.admit(&limits, want, T0, Some("p.3")).unwrap();
        s.admit(&limits, want, T0, Some("p.4")).unwrap();
        assert!(s.admit(&limits, want, T0, Some("p.5")).is_err());
    }

    /// Retry-After waits until enough of the window has left for the request
    /// to fit (a lowered rpm, a large estimate), taking entries oldest first
    /// even when proxies' clocks wrote them out of order.
    #[test]
    fn retry_after_is_when_the_request_fits_again() {
        let mut s = State {
            requests: vec![(T0 + 20_000, 1), (T0, 1), (T0 + 10_000, 1)],
            tokens: vec![(T0, 10), (T0 + 20_000, 50)],
            ..State::default()
        };
        let want = |n| Want {
            input_tokens: n,
            tokens: n,
            micros: 0,
        };
        let rpm = |n| Limits {
            rpm: Some(n),
            ..Limits::default()
        };
        // Three counted; a limit of 2 needs the two oldest gone (at 70 s).
        assert_eq!(
            s.clone()
                .admit(&rpm(2), want(1), T0 + 30_000, None)
                .unwrap_err(),
            Refusal::Rate {
                what: "rpm",
                retry_after: 40
            }
        );
        assert!(
            s.clone()
                .admit(&rpm(2), want(1), T0 + 69_999, None)
                .is_err()
        );
        s.clone()
            .admit(&rpm(2), want(1), T0 + 70_000, None)
            .unwrap();
        // 60 tokens counted against 100: 41 more fit once the 10 leave (60 s),
        // 51 only once the 50 leave too (80 s).
        let tpm = Limits {
            tpm: Some(100),
            ..Limits::default()
        };
        for (n, retry_after) in [(41, 30), (51, 50)] {
            assert_eq!(
                s.clone()
                    .admit(&tpm, want(n), T0 + 30_000, None)
                    .unwrap_err(),
                Refusal::Rate {
                    what: "tpm",
                    retry_after
                }
            );
        }
        s.admit(&tpm, want(51), T0 + 80_000, None).unwrap();
    }

    #[test]
    fn a_ledger_row_survives_the_stream() {
        let row = Row {
            time_ms: crate::keys::ledger::parse_rfc3339_millis("2026-12-07T00:00:00.000Z").unwrap(),
            key: "alice".into(),
            ingress: "nats",
            route: "/v1/chat/completions".into(),
            status: 200,
            input_tokens: 3,
            output_tokens: 4,
            cost_usd: 0.5,
            ..Row::default()
        };
        assert_eq!(row_of_json(&row_to_json(&row)), Some(row));
    }
}
