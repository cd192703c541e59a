//! The prompt cache (docs/contract.md §3): the instructions sent to a Responses API upstream.
//!
//! Each `[[prompts.source]]` is served through a fallback chain, first match wins:
//!
//! 1. `cache`: the cached copy, while younger than `prompts.ttl`;
//! 2. `remote`: a fetch (up to `prompts.attempts` tries, exponential backoff with
//!    jitter, each bounded by `prompts.fetch_timeout`), revalidated with
//!    `If-None-Match` / `If-Modified-Since` when a copy exists;
//! 3. `stale-cache`: the expired copy;
//! 4. `file`: the source's local `file`;
//! 5. `builtin`: a short default written for this toolkit.
//!
//! [`PromptStore::get`] never fails and never waits on the network when it has
//! something to serve: an expired copy is served at once while one background task
//! refreshes it. Only a prompt with no copy at all, never fetched before, waits for
//! its first fetch; after a failed fetch the fallback is served and the fetch is
//! retried in the background at most every [`RETRY_AFTER_FAILURE`]. Concurrent
//! callers share one fetch per prompt.
//!
//! On disk (`cache/prompts/`): `<name>.md` holds the text and `metadata.json` holds,
//! per prompt, `fetched_at` (RFC 3339), the text's `sha256`, the `url` and the
//! `etag` / `last_modified` validators. Every write is atomic. A copy is used only
//! when its metadata parses, names the configured URL, matches the file's digest
//! and passes the source's `sha256` allow-list; anything else is a miss (reported
//! as a `problem` by [`PromptStore::status`] and [`disk_status`]), never a crash.
//! Fetched content failing the allow-list is refused, logged and never cached.
//! The allow-list pins remote content only: the operator's local `file` is trusted.

pub mod command;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::home::Home;
use crate::home::atomic_file;
use crate::home::config::{BASE_PROMPT, CODEX_PROMPT, PromptSource, PromptsConfig};
use crate::support::http_client::error_chain;

/// The metadata file beside the cached prompts.
pub const METADATA_FILE: &str = "metadata.json";
/// Fetched prompts larger than this are refused.
pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;
/// After a failed fetch, how long fallbacks are served before the next background try.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);
/// First backoff between fetch attempts; doubles per attempt up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// A `fetched_at` further in the future than this is not trusted to be fresh.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Which link of the fallback chain served a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptSourceKind {
    Cache,
    Remote,
    StaleCache,
    File,
    Builtin,
}

impl PromptSourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptSourceKind::Cache => "cache",
            PromptSourceKind::Remote => "remote",
            PromptSourceKind::StaleCache => "stale-cache",
            PromptSourceKind::File => "file",
            PromptSourceKind::Builtin => "builtin",
        }
    }
}

impl fmt::Display for PromptSourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A served prompt.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub text: Arc<str>,
    pub source: PromptSourceKind,
    /// Seconds since the text was fetched (or last revalidated); `None` for
    /// `file` and `builtin`.
    pub age_secs: Option<f64>,
    /// True when the text was fetched within `ttl`.
    pub fresh: bool,
}

/// One prompt's state, for `/health` and `proxy prompts status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptStatus {
    pub name: String,
    /// What a request would be served now.
    pub source: PromptSourceKind,
    pub age_secs: Option<f64>,
    pub fresh: bool,
    pub url: String,
    /// The cached text's SHA-256, when a copy is cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When the cached copy was fetched (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
    /// Why the cache or the last fetch could not be used, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The result of refreshing one prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefreshOutcome {
    pub name: String,
    #[serde(flatten)]
    pub result: RefreshResult,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum RefreshResult {
    /// Not fetched: the cached copy is younger than `ttl` (and `force` was off).
    StillFresh {
        age_secs: f64,
    },
    /// New content was fetched and cached.
    Updated {
        sha256: String,
        bytes: usize,
    },
    /// The server answered 304: the cached copy's `fetched_at` was renewed.
    NotModified,
    Failed {
        error: String,
    },
}

impl RefreshOutcome {
    pub fn is_ok(&self) -> bool {
        !matches!(self.result, RefreshResult::Failed { .. })
    }
}

/// Per-prompt fetch counters for the metrics endpoint. Every HTTP try counts as an
/// attempt; every try that did not yield usable content counts as a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchCounters {
    pub name: String,
    pub attempts: u64,
    pub failures: u64,
}

/// Whether the configured proxy sends prompts anywhere: with a Responses API
/// upstream (its `instructions`), or when `/v1/responses` is told to add the
/// base instructions to every request (`responses_always_base_instructions`).
/// The built-in mock upstream never does. When this is false the
/// proxy neither fetches prompts nor reports them in `/health` and `/metrics`.
pub fn prompts_in_use(config: &crate::home::config::Config) -> bool {
    let f = &config.features;
    !config.upstream.is_mock()
        && (config.upstream.api == crate::home::config::UpstreamApi::Responses
            || (f.enable_responses_api
                && f.responses_always_base_instructions
                && !f.responses_no_base_instructions))
}

/// The built-in text for a prompt name: the last link of the fallback chain.
pub fn builtin_prompt(name: &str) -> &'static str {
    match name {
        BASE_PROMPT => BUILTIN_BASE,
        CODEX_PROMPT => BUILTIN_CODEX,
        _ => BUILTIN_GENERIC,
    }
}

const BUILTIN_BASE: &str = "\
You are a coding assistant. Help the user with software engineering tasks: \
reading and explaining code, writing and fixing it, and reasoning about designs.

- Read the request and any code carefully before answering; answer what was asked.
- Be precise and concise. Prefer complete, working code over descriptions of code.
- Follow the conventions of the code you are given (language, style, structure).
- When a tool is available and helps, use it; report what it returned honestly.
- If you are unsure or lack information, say so and say what would settle it; never invent APIs, files or results.
";

const BUILTIN_CODEX: &str = "\
You are a coding agent working in the user's repository. Your goal is to complete \
the task the user gives you, end to end, with small, correct changes.

- Inspect the relevant files before changing them; keep changes minimal and focused.
- Match the existing style and conventions; do not reformat unrelated code.
- Use the tools you are given to read files, run commands and apply patches; check \
their output rather than assuming success.
- Run the project's tests or build when you can, and fix what you broke.
- Finish with a short summary: what you changed, where, and anything left undone.
- If something is ambiguous or cannot be done safely, say so instead of guessing.
";

const BUILTIN_GENERIC: &str = "\
You are a helpful assistant. Answer accurately and concisely. If you do not know \
something or the request is ambiguous, say so rather than guessing.
";

/// The prompt cache shared by every request handler (cheap to clone).
#[derive(Clone)]
pub struct PromptStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PromptStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptStore")
            .field("dir", &self.inner.dir)
            .field("prompts", &self.names())
            .finish_non_exhaustive()
    }
}

struct Inner {
    dir: PathBuf,
    ttl: Duration,
    fetch_timeout: Duration,
    attempts: u32,
    /// In configuration order.
    entries: Vec<Arc<Entry>>,
    by_name: HashMap<String, usize>,
    client: Result<reqwest::Client, FetchError>,
    /// Serialises read-modify-write cycles of `metadata.json` within this process.
    metadata_lock: Mutex<()>,
}

struct Entry {
    source: PromptSource,
    /// The in-memory copy: what the hot path reads.
    memory: RwLock<Option<Cached>>,
    /// Set once the disk copy was loaded into `memory`.
    loaded: OnceLock<()>,
    /// Held for the whole of a fetch: the single flight.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Incremented after every completed fetch, so waiters can tell one happened.
    fetch_generation: AtomicU64,
    /// A background refresh is scheduled or running.
    refreshing: AtomicBool,
    state: Mutex<EntryState>,
    attempts: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct EntryState {
    /// When the last fetch failed (cleared by a success).
    last_failure: Option<Instant>,
    /// Why the cache or the last fetch was unusable.
    problem: Option<String>,
    /// The local file's text, with when it was read (re-read after a while).
    file: Option<(Instant, Result<Arc<str>, LocalFileError>)>,
}

#[derive(Clone, Debug)]
struct Cached {
    text: Arc<str>,
    sha256: String,
    fetched_at: SystemTime,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Cached {
    fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.fetched_at)
            .unwrap_or_default()
    }

    fn is_fresh(&self, ttl: Duration) -> bool {
        let from_the_future = self
            .fetched_at
            .duration_since(SystemTime::now())
            .is_ok_and(|ahead| ahead > CLOCK_SKEW);
        !from_the_future && self.age() < ttl
    }
}

/// What `metadata.json` records for one prompt.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MetaEntry {
    fetched_at: String,
    sha256: String,
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
}

/// Why no usable copy was found on disk.
#[derive(Debug)]
enum Miss {
    /// Nothing cached for this prompt.
    Absent,
    /// Something is cached but unusable; the message says what and where.
    Invalid(String),
}

impl PromptStore {
    /// A store for the configured sources. Nothing is read or fetched yet: call
    /// [`PromptStore::warm`] at startup, or let the first [`PromptStore::get`] do it.
    pub fn new(home: &Home, cfg: &PromptsConfig) -> PromptStore {
        let fetch_timeout = Duration::from_secs(cfg.fetch_timeout.max(1));
        let client = crate::support::http_client::client_builder()
            .connect_timeout(fetch_timeout)
            .build()
            .map_err(|e| FetchError::Client(error_chain(&e)));
        let entries: Vec<Arc<Entry>> = cfg
            .sources
            .iter()
            .map(|source| {
                Arc::new(Entry {
                    source: source.clone(),
                    memory: RwLock::new(None),
                    loaded: OnceLock::new(),
                    fetch_lock: tokio::sync::Mutex::new(()),
                    fetch_generation: AtomicU64::new(0),
                    refreshing: AtomicBool::new(false),
                    state: Mutex::new(EntryState::default()),
                    attempts: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                })
            })
            .collect();
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.source.name.clone(), i))
            .collect();
        PromptStore {
            inner: Arc::new(Inner {
                dir: home.prompts_cache_dir(),
                ttl: Duration::from_secs(cfg.ttl),
                fetch_timeout,
                attempts: cfg.attempts.max(1),
                entries,
                by_name,
                client,
                metadata_lock: Mutex::new(()),
            }),
        }
    }

    /// The prompt called `name`, from the first link of the fallback chain that
    /// has it. Never fails: an unconfigured name gets a built-in text.
    pub async fn get(&self, name: &str) -> Prompt {
        let Some(entry) = self.entry(name) else {
            tracing::debug!(
                prompt = name,
                "no [[prompts.source]] has this name; serving the built-in text"
            );
            return builtin(name);
        };
        self.inner.ensure_loaded(entry);
        if let Some(prompt) = self.serve_memory(entry) {
            return prompt;
        }
        // No copy at all. After a failed fetch, serve the fallback now and retry
        // in the background; only the very first fetch is waited for.
        if entry.state().last_failure.is_some() {
            self.spawn_refresh(entry);
            return self.inner.fallback(entry);
        }
        let generation = entry.fetch_generation.load(Ordering::Acquire);
        let _flight = entry.fetch_lock.lock().await;
        if entry.fetch_generation.load(Ordering::Acquire) != generation {
            // Another caller fetched while this one waited: use its result.
            return self
                .serve_memory(entry)
                .unwrap_or_else(|| self.inner.fallback(entry));
        }
        match self.inner.fetch(entry, false).await {
            Ok(result) => match entry.memory().as_ref() {
                Some(c) => Prompt {
                    text: c.text.clone(),
                    source: match result {
                        // Another process had just refreshed the disk copy.
                        RefreshResult::StillFresh { .. } => PromptSourceKind::Cache,
                        _ => PromptSourceKind::Remote,
                    },
                    age_secs: Some(c.age().as_secs_f64()),
                    fresh: c.is_fresh(self.inner.ttl),
                },
                None => self.inner.fallback(entry),
            },
            Err(_) => self.inner.fallback(entry),
        }
    }

    /// The cached copy, fresh or stale (then a background refresh is started).
    fn serve_memory(&self, entry: &Arc<Entry>) -> Option<Prompt> {
        let (text, age, fresh) = {
            let memory = entry.memory();
            let c = memory.as_ref()?;
            (c.text.clone(), c.age(), c.is_fresh(self.inner.ttl))
        };
        if !fresh {
            self.spawn_refresh(entry);
        }
        Some(Prompt {
            text,
            source: if fresh {
                PromptSourceKind::Cache
            } else {
                PromptSourceKind::StaleCache
            },
            age_secs: Some(age.as_secs_f64()),
            fresh,
        })
    }

    /// Starts one background refresh of `entry` unless one is already scheduled
    /// or the last fetch failed less than [`RETRY_AFTER_FAILURE`] ago.
    fn spawn_refresh(&self, entry: &Arc<Entry>) {
        if entry
            .state()
            .last_failure
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
        {
            return;
        }
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            entry.refreshing.store(false, Ordering::Release);
            return;
        };
        let inner = self.inner.clone();
        let entry = entry.clone();
        runtime.spawn(async move {
            // Cleared even if the task is cancelled at runtime shutdown.
            struct Done(Arc<Entry>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.refreshing.store(false, Ordering::Release);
                }
            }
            let done = Done(entry);
            let entry = &done.0;
            let generation = entry.fetch_generation.load(Ordering::Acquire);
            let _flight = entry.fetch_lock.lock().await;
            if entry.fetch_generation.load(Ordering::Acquire) != generation {
                return; // someone refreshed meanwhile
            }
            if entry
                .state()
                .last_failure
                .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
            {
                return; // a fetch failed while this task waited for the lock
            }
            if entry
                .memory()
                .as_ref()
                .is_some_and(|c| c.is_fresh(inner.ttl))
            {
                return;
            }
            let _ = inner.fetch(entry, false).await;
        });
    }

    /// Loads every cached copy from disk and starts background fetches for the
    /// prompts without a fresh copy. Returns without waiting for the network.
    pub async fn warm(&self) {
        let inner = self.inner.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            for entry in &inner.entries {
                inner.ensure_loaded(entry);
            }
        })
        .await;
        if let Err(e) = loaded {
            tracing::warn!(error = %e, "loading the prompt cache failed");
        }
        for entry in &self.inner.entries {
            let fresh = entry
                .memory()
                .as_ref()
                .is_some_and(|c| c.is_fresh(self.inner.ttl));
            if !fresh {
                self.spawn_refresh(entry);
            }
        }
    }

    /// Fetches every prompt whose copy is not fresh (all of them when `force`,
    /// then without conditional headers), concurrently, waiting for the results.
    pub async fn refresh(&self, force: bool) -> Vec<RefreshOutcome> {
        let jobs = self.inner.entries.iter().map(|entry| async move {
            self.inner.ensure_loaded(entry);
            let _flight = entry.fetch_lock.lock().await;
            let still_fresh = entry
                .memory()
                .as_ref()
                .filter(|c| c.is_fresh(self.inner.ttl))
                .map(|c| c.age().as_secs_f64());
            let result = match still_fresh {
                Some(age_secs) if !force => RefreshResult::StillFresh { age_secs },
                _ => match self.inner.fetch(entry, force).await {
                    Ok(result) => result,
                    Err(error) => RefreshResult::Failed {
                        error: error.to_string(),
                    },
                },
            };
            RefreshOutcome {
                name: entry.source.name.clone(),
                result,
            }
        });
        futures_util::future::join_all(jobs).await
    }

    /// Deletes every cached prompt and `metadata.json`, in memory and on disk.
    /// Returns how many files were removed.
    pub fn clear(&self) -> io::Result<usize> {
        let removed = {
            let _meta = lock(&self.inner.metadata_lock);
            clear_dir(&self.inner.dir)?
        };
        for entry in &self.inner.entries {
            *entry.memory.write().unwrap_or_else(|e| e.into_inner()) = None;
            let mut state = entry.state();
            state.last_failure = None;
            state.problem = None;
        }
        Ok(removed)
    }

    /// What each configured prompt would be served from now, without I/O on
    /// the network (the local fallback file may be read).
    pub fn status(&self) -> Vec<PromptStatus> {
        self.inner
            .entries
            .iter()
            .map(|entry| {
                self.inner.ensure_loaded(entry);
                let problem = entry.state().problem.clone();
                let url = entry.source.url.clone();
                if let Some(c) = entry.memory().as_ref() {
                    let fresh = c.is_fresh(self.inner.ttl);
                    return PromptStatus {
                        name: entry.source.name.clone(),
                        source: if fresh {
                            PromptSourceKind::Cache
                        } else {
                            PromptSourceKind::StaleCache
                        },
                        age_secs: Some(c.age().as_secs_f64()),
                        fresh,
                        url,
                        sha256: Some(c.sha256.clone()),
                        fetched_at: Some(rfc3339(c.fetched_at)),
                        problem,
                    };
                }
                let source = self.inner.fallback(entry).source;
                PromptStatus {
                    name: entry.source.name.clone(),
                    source,
                    age_secs: None,
                    fresh: false,
                    url,
                    sha256: None,
                    fetched_at: None,
                    problem: entry.state().problem.clone(),
                }
            })
            .collect()
    }

    /// Fetch attempts and failures per prompt since this store was created.
    pub fn fetch_counters(&self) -> Vec<FetchCounters> {
        self.inner
            .entries
            .iter()
            .map(|e| FetchCounters {
                name: e.source.name.clone(),
                attempts: e.attempts.load(Ordering::Relaxed),
                failures: e.failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The configured prompt names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .entries
            .iter()
            .map(|e| e.source.name.clone())
            .collect()
    }

    fn entry(&self, name: &str) -> Option<&Arc<Entry>> {
        self.inner
            .by_name
            .get(name)
            .map(|&i| &self.inner.entries[i])
    }
}

impl Entry {
    fn memory(&self) -> std::sync::RwLockReadGuard<'_, Option<Cached>> {
        self.memory.read().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EntryState> {
        lock(&self.state)
    }

    fn set_memory(&self, cached: Cached) {
        *self.memory.write().unwrap_or_else(|e| e.into_inner()) = Some(cached);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn builtin(name: &str) -> Prompt {
    Prompt {
        text: Arc::from(builtin_prompt(name)),
        source: PromptSourceKind::Builtin,
        age_secs: None,
        fresh: false,
    }
}

/// One HTTP try's result.
enum Fetched {
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
    },
    NotModified {
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// Why a prompt could not be fetched, or was refused: its text is the prompt's
/// `problem` (in `/health`, `proxy prompts`) and the `error` of a failed refresh.
#[derive(Clone, Debug, thiserror::Error)]
enum FetchError {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("GET {url}: no complete answer within prompts.fetch_timeout ({secs}s)")]
    Timeout { url: String, secs: u64 },
    /// `reason` is reqwest's error chain, without the URL.
    #[error("GET {url}: {reason}")]
    Send { url: String, reason: String },
    #[error("GET {url}: reading the body: {reason}")]
    Body { url: String, reason: String },
    #[error("GET {url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("GET {url}: the body exceeds {MAX_PROMPT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("GET {url}: 304 Not Modified, but no copy is cached")]
    NotModifiedWithoutCopy { url: String },
    #[error(
        "GET {url}: content has SHA-256 {sha256}, which is not in prompts.source {name:?}'s sha256 allow-list; refused and not cached"
    )]
    DigestRefused {
        url: String,
        sha256: String,
        name: String,
    },
    #[error("GET {url}: the body is not UTF-8 text")]
    NotUtf8 { url: String },
    #[error("GET {url}: the body is empty")]
    Empty { url: String },
}

impl FetchError {
    /// Worth another attempt: network errors, timeouts, 5xx, 408, 429.
    fn retryable(&self) -> bool {
        match self {
            FetchError::Timeout { .. } | FetchError::Send { .. } | FetchError::Body { .. } => true,
            FetchError::Status { status, .. } => {
                status.is_server_error()
                    || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || *status == reqwest::StatusCode::REQUEST_TIMEOUT
            }
            _ => false,
        }
    }
}

impl Inner {
    fn ensure_loaded(&self, entry: &Entry) {
        entry.loaded.get_or_init(|| match load_cached(&self.dir, &entry.source) {
            Ok(cached) => entry.set_memory(cached),
            Err(Miss::Absent) => {}
            Err(Miss::Invalid(problem)) => {
                tracing::warn!(prompt = %entry.source.name, %problem, "ignoring the cached prompt");
                entry.state().problem = Some(problem);
            }
        });
    }

    /// The local file, else the built-in text.
    fn fallback(&self, entry: &Entry) -> Prompt {
        let Some(path) = &entry.source.file else {
            return builtin(&entry.source.name);
        };
        let mut state = entry.state();
        let stale = state
            .file
            .as_ref()
            .is_none_or(|(read_at, _)| read_at.elapsed() >= RETRY_AFTER_FAILURE);
        if stale {
            let text = read_local_file(path);
            if let Err(e) = &text {
                tracing::warn!(prompt = %entry.source.name, error = %e, "local prompt file unusable");
            }
            state.file = Some((Instant::now(), text));
        }
        match &state.file {
            Some((_, Ok(text))) => Prompt {
                text: text.clone(),
                source: PromptSourceKind::File,
                age_secs: None,
                fresh: false,
            },
            _ => builtin(&entry.source.name),
        }
    }

    /// Fetches `entry` with retries and stores the result. The caller holds
    /// `entry.fetch_lock`. `Err` says what failed on the last try.
    async fn fetch(&self, entry: &Entry, force: bool) -> Result<RefreshResult, FetchError> {
        let result = self.fetch_inner(entry, force).await;
        {
            let mut state = entry.state();
            match &result {
                Ok(_) => {
                    state.last_failure = None;
                    state.problem = None;
                }
                Err(e) => {
                    state.last_failure = Some(Instant::now());
                    state.problem = Some(e.to_string());
                }
            }
        }
        entry.fetch_generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    async fn fetch_inner(&self, entry: &Entry, force: bool) -> Result<RefreshResult, FetchError> {
        let src = &entry.source;
        let client = self.client.as_ref().map_err(Clone::clone)?;
        // Another process (e.g. `proxy prompts refresh`) may have refreshed the disk copy.
        if let Some(on_disk) = (!force).then(|| load_cached(&self.dir, src).ok()).flatten() {
            let newer = entry
                .memory()
                .as_ref()
                .is_none_or(|c| on_disk.fetched_at > c.fetched_at);
            if newer && on_disk.is_fresh(self.ttl) {
                let age_secs = on_disk.age().as_secs_f64();
                entry.set_memory(on_disk);
                return Ok(RefreshResult::StillFresh { age_secs });
            }
        }
        let validators = if force {
            None
        } else {
            entry
                .memory()
                .as_ref()
                .map(|c| (c.etag.clone(), c.last_modified.clone()))
        };
        let mut last_error = None;
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                tokio::time::sleep(backoff(attempt - 1)).await;
            }
            entry.attempts.fetch_add(1, Ordering::Relaxed);
            let outcome = tokio::time::timeout(
                self.fetch_timeout,
                fetch_once(client, &src.url, &validators),
            )
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Timeout {
                    url: src.url.clone(),
                    secs: self.fetch_timeout.as_secs(),
                })
            })
            .and_then(|fetched| self.accept(entry, fetched));
            match outcome {
                Ok(result) => return Ok(result),
                Err(e) => {
                    entry.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        prompt = %src.name, attempt, attempts = self.attempts,
                        error = %e, "prompt fetch failed"
                    );
                    let retryable = e.retryable();
                    last_error = Some(e);
                    if !retryable {
                        break;
                    }
                }
            }
        }
        Err(last_error.expect("prompts.attempts is at least 1, so one try failed"))
    }

    /// Validates a fetched answer and records it in memory and on disk.
    fn accept(&self, entry: &Entry, fetched: Fetched) -> Result<RefreshResult, FetchError> {
        let src = &entry.source;
        let url = || src.url.clone();
        match fetched {
            Fetched::NotModified {
                etag,
                last_modified,
            } => {
                let mut cached = entry
                    .memory()
                    .clone()
                    .ok_or_else(|| FetchError::NotModifiedWithoutCopy { url: url() })?;
                cached.fetched_at = SystemTime::now();
                cached.etag = etag.or(cached.etag);
                cached.last_modified = last_modified.or(cached.last_modified);
                self.persist(src, &cached, false);
                entry.set_memory(cached);
                Ok(RefreshResult::NotModified)
            }
            Fetched::Body {
                bytes,
                etag,
                last_modified,
            } => {
                let sha256 = hex::encode(Sha256::digest(&bytes));
                if !digest_allowed(src, &sha256) {
                    return Err(FetchError::DigestRefused {
                        url: url(),
                        sha256,
                        name: src.name.clone(),
                    });
                }
                let text =
                    String::from_utf8(bytes).map_err(|_| FetchError::NotUtf8 { url: url() })?;
                if text.trim().is_empty() {
                    return Err(FetchError::Empty { url: url() });
                }
                let len = text.len();
                let cached = Cached {
                    text: Arc::from(text),
                    sha256: sha256.clone(),
                    fetched_at: SystemTime::now(),
                    etag,
                    last_modified,
                };
                self.persist(src, &cached, true);
                entry.set_memory(cached);
                Ok(RefreshResult::Updated { sha256, bytes: len })
            }
        }
    }

    /// Writes the copy to disk; a failure is logged and the copy still served
    /// from memory.
    fn persist(&self, src: &PromptSource, cached: &Cached, with_text: bool) {
        let result = (|| -> Result<(), SaveError> {
            if with_text {
                let path = self.dir.join(format!("{}.md", src.name));
                atomic_file::write(&path, cached.text.as_bytes(), None)
                    .map_err(|source| SaveError { path, source })?;
            }
            let _meta = lock(&self.metadata_lock);
            let path = self.dir.join(METADATA_FILE);
            let mut doc = match read_metadata(&self.dir) {
                Ok(doc) => doc,
                Err(Miss::Absent) => BTreeMap::new(),
                Err(Miss::Invalid(problem)) => {
                    tracing::warn!(%problem, "replacing the unreadable prompt metadata");
                    BTreeMap::new()
                }
            };
            let meta = MetaEntry {
                fetched_at: rfc3339(cached.fetched_at),
                sha256: cached.sha256.clone(),
                url: src.url.clone(),
                etag: cached.etag.clone(),
                last_modified: cached.last_modified.clone(),
            };
            doc.insert(
                src.name.clone(),
                serde_json::to_value(meta).expect("metadata serialises"),
            );
            let json = serde_json::json!({ "version": 1, "prompts": doc });
            let mut bytes = serde_json::to_vec_pretty(&json).expect("metadata serialises");
            bytes.push(b'\n');
            atomic_file::write(&path, &bytes, None).map_err(|source| SaveError { path, source })
        })();
        if let Err(e) = result {
            tracing::warn!(prompt = %src.name, error = %e, "prompt cache not saved; serving it from memory");
        }
    }
}

/// A prompt's copy or the metadata could not be written to the cache folder.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
struct SaveError {
    path: PathBuf,
    source: std::io::Error,
}

/// Exponential backoff with jitter: attempt 1 waits 125–250 ms, then doubling,
/// capped at [`BACKOFF_MAX`].
fn backoff(retry: u32) -> Duration {
    crate::support::backoff::exponential_jitter(BACKOFF_BASE, retry, BACKOFF_MAX)
}

async fn fetch_once(
    client: &reqwest::Client,
    url: &str,
    validators: &Option<(Option<String>, Option<String>)>,
) -> Result<Fetched, FetchError> {
    use reqwest::header;
    let mut request = client.get(url);
    if let Some((etag, last_modified)) = validators {
        if let Some(etag) = etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(last_modified) = last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, last_modified);
        }
    }
    let mut response = request.send().await.map_err(|e| FetchError::Send {
        url: url.to_string(),
        reason: crate::support::http_client::describe(e),
    })?;
    let status = response.status();
    let header_string = |name: header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header_string(header::ETAG);
    let last_modified = header_string(header::LAST_MODIFIED);
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified {
            etag,
            last_modified,
        });
    }
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status,
        });
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| FetchError::Body {
        url: url.to_string(),
        reason: crate::support::http_client::describe(e),
    })? {
        if bytes.len() + chunk.len() > MAX_PROMPT_BYTES {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body {
        bytes,
        etag,
        last_modified,
    })
}

fn digest_allowed(src: &PromptSource, sha256: &str) -> bool {
    src.sha256.is_empty() || src.sha256.iter().any(|d| d.eq_ignore_ascii_case(sha256))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Why a prompt's local `file` cannot stand in (the built-in text then does).
#[derive(Debug, thiserror::Error)]
enum LocalFileError {
    #[error("cannot read the local prompt file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the local prompt file {} is empty", path.display())]
    Empty { path: PathBuf },
}

fn read_local_file(path: &Path) -> Result<Arc<str>, LocalFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(LocalFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Arc::from(text))
}

/// The `prompts` map of `metadata.json`, entries still unparsed (one bad entry
/// spoils only its own prompt).
fn read_metadata(dir: &Path) -> Result<BTreeMap<String, Value>, Miss> {
    let path = dir.join(METADATA_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Miss::Absent),
        Err(e) => {
            return Err(Miss::Invalid(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    #[derive(Deserialize)]
    struct Doc {
        prompts: BTreeMap<String, Value>,
    }
    serde_json::from_slice::<Doc>(&bytes)
        .map(|doc| doc.prompts)
        .map_err(|e| Miss::Invalid(format!("{} is corrupt: {e}", path.display())))
}

/// The usable cached copy of `src`, or why there is none.
fn load_cached(dir: &Path, src: &PromptSource) -> Result<Cached, Miss> {
    let meta_path = dir.join(METADATA_FILE);
    let raw = read_metadata(dir)?.remove(&src.name).ok_or(Miss::Absent)?;
    let meta: MetaEntry = serde_json::from_value(raw).map_err(|e| {
        Miss::Invalid(format!(
            "{}: entry {:?} is corrupt: {e}",
            meta_path.display(),
            src.name
        ))
    })?;
    if meta.url != src.url {
        // Cached from another URL: the operator changed the source.
        return Err(Miss::Absent);
    }
    let fetched_at = humantime::parse_rfc3339_weak(&meta.fetched_at).map_err(|e| {
        Miss::Invalid(format!(
            "{}: {:?}.fetched_at {:?} is not an RFC 3339 time: {e}",
            meta_path.display(),
            src.name,
            meta.fetched_at
        ))
    })?;
    let path = dir.join(format!("{}.md", src.name));
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Miss::Invalid(format!(
                "{} is missing although {} lists it",
                path.display(),
                meta_path.display()
            ))
        } else {
            Miss::Invalid(format!("cannot read {}: {e}", path.display()))
        }
    })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if !sha256.eq_ignore_ascii_case(&meta.sha256) {
        return Err(Miss::Invalid(format!(
            "{} has SHA-256 {sha256} but {} records {}: damaged or edited",
            path.display(),
            meta_path.display(),
            meta.sha256
        )));
    }
    if !digest_allowed(src, &sha256) {
        return Err(Miss::Invalid(format!(
            "{} has SHA-256 {sha256}, which is not in the source's sha256 allow-list",
            path.display()
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| Miss::Invalid(format!("{} is not UTF-8 text", path.display())))?;
    Ok(Cached {
        text: Arc::from(text),
        sha256,
        fetched_at,
        etag: meta.etag,
        last_modified: meta.last_modified,
    })
}

/// Removes the files the cache owns (`*.md`, `metadata.json`, leftover
/// temporary files); anything else in the directory is left alone.
fn clear_dir(dir: &Path) -> io::Result<usize> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot list {}: {e}", dir.display()),
            ));
        }
    };
    let mut removed = 0;
    for item in read {
        let item = item
            .map_err(|e| io::Error::new(e.kind(), format!("cannot list {}: {e}", dir.display())))?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        let ours = name == METADATA_FILE
            || name.ends_with(".md")
            || (name.starts_with('.') && name.ends_with(".tmp"));
        if !ours {
            continue;
        }
        let path = item.path();
        let result = if item.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot remove {}: {e}", path.display()),
                ));
            }
        }
    }
    Ok(removed)
}

/// What each prompt would be served from, judged from the disk alone (no
/// network, no running proxy): what `proxy prompts status` prints when no proxy
/// runs, and what `preflight` and `doctor` inspect.
pub fn disk_status(home: &Home, cfg: &PromptsConfig) -> Vec<PromptStatus> {
    let dir = home.prompts_cache_dir();
    let ttl = Duration::from_secs(cfg.ttl);
    cfg.sources
        .iter()
        .map(|src| {
            let mut status = PromptStatus {
                name: src.name.clone(),
                source: PromptSourceKind::Builtin,
                age_secs: None,
                fresh: false,
                url: src.url.clone(),
                sha256: None,
                fetched_at: None,
                problem: None,
            };
            match load_cached(&dir, src) {
                Ok(c) => {
                    status.fresh = c.is_fresh(ttl);
                    status.source = if status.fresh {
                        PromptSourceKind::Cache
                    } else {
                        PromptSourceKind::StaleCache
                    };
                    status.age_secs = Some(c.age().as_secs_f64());
                    status.sha256 = Some(c.sha256);
                    status.fetched_at = Some(rfc3339(c.fetched_at));
                    return status;
                }
                Err(Miss::Absent) => {}
                Err(Miss::Invalid(problem)) => status.problem = Some(problem),
            }
            if let Some(path) = &src.file {
                match read_local_file(path) {
                    Ok(_) => status.source = PromptSourceKind::File,
                    Err(e) => {
                        status.problem = Some(match status.problem.take() {
                            Some(p) => format!("{p}; {e}"),
                            None => e.to_string(),
                        })
                    }
                }
            }
            status
        })
        .collect()
}

/// What is damaged in the prompt cache on disk, judged without the network: what
/// `doctor` deletes (the cache is only a cache: the fallback chain refills it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheDamage {
    /// `metadata.json` does not parse: no cached prompt can be verified.
    pub metadata: Option<String>,
    /// Prompts whose metadata entry or cached file is unusable: (name, why).
    pub entries: Vec<(String, String)>,
    /// What cannot even be read (permissions, a directory in the way): not for
    /// `doctor` to delete.
    pub unreadable: Option<String>,
}

impl CacheDamage {
    /// True when something should be deleted.
    pub fn needs_repair(&self) -> bool {
        self.metadata.is_some() || !self.entries.is_empty()
    }

    /// The configured prompts a repair deletes (all of them for a corrupt
    /// `metadata.json`).
    pub fn affected(&self, cfg: &PromptsConfig) -> Vec<String> {
        if self.metadata.is_some() {
            cfg.sources.iter().map(|s| s.name.clone()).collect()
        } else {
            self.entries.iter().map(|(name, _)| name.clone()).collect()
        }
    }
}

/// Finds corrupt cache entries and a corrupt `metadata.json` (read-only).
pub fn inspect_cache(home: &Home, cfg: &PromptsConfig) -> CacheDamage {
    let dir = home.prompts_cache_dir();
    let path = dir.join(METADATA_FILE);
    let mut damage = CacheDamage::default();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return damage,
        Err(e) => {
            damage.unreadable = Some(format!("cannot read {}: {e}", path.display()));
            return damage;
        }
    };
    #[derive(Deserialize)]
    struct Doc {
        #[expect(dead_code, reason = "parsed only to check the document's shape")]
        prompts: BTreeMap<String, Value>,
    }
    if let Err(e) = serde_json::from_slice::<Doc>(&bytes) {
        damage.metadata = Some(format!("{} is corrupt: {e}", path.display()));
        return damage;
    }
    for src in &cfg.sources {
        if let Err(Miss::Invalid(problem)) = load_cached(&dir, src) {
            damage.entries.push((src.name.clone(), problem));
        }
    }
    damage
}

/// Deletes what `damage` names: a corrupt `metadata.json` with the cached files of
/// every configured prompt, or each damaged prompt's file and metadata entry (the
/// other entries are kept, rewritten atomically). Returns the paths removed.
pub fn remove_damaged(
    home: &Home,
    cfg: &PromptsConfig,
    damage: &CacheDamage,
) -> io::Result<Vec<PathBuf>> {
    let dir = home.prompts_cache_dir();
    let meta_path = dir.join(METADATA_FILE);
    let mut removed = Vec::new();
    let mut remove = |path: PathBuf| -> io::Result<()> {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                removed.push(path);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot remove {}: {e}", path.display()),
            )),
        }
    };
    if damage.metadata.is_some() {
        remove(meta_path)?;
    } else if !damage.entries.is_empty() {
        // Re-read: the proxy may have rewritten it since it was inspected.
        let bytes = std::fs::read(&meta_path)?;
        let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is corrupt: {e}", meta_path.display()),
            )
        })?;
        if let Some(prompts) = doc.get_mut("prompts").and_then(Value::as_object_mut) {
            for (name, _) in &damage.entries {
                prompts.remove(name);
            }
        }
        let mut bytes = serde_json::to_vec_pretty(&doc).map_err(io::Error::other)?;
        bytes.push(b'\n');
        atomic_file::write(&meta_path, &bytes, None)?;
    }
    for name in damage.affected(cfg) {
        remove(dir.join(format!("{name}.md")))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use std::sync::atomic::AtomicUsize;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        Up,
        Down,
        /// Never answers (the client must time out).
        Slow,
        /// Answers once the test adds permits to `gate`.
        Gated,
    }

    struct Server {
        mode: Mutex<Mode>,
        hits: AtomicUsize,
        gate: tokio::sync::Semaphore,
        /// The `If-None-Match` header of every request.
        if_none_match: Mutex<Vec<Option<String>>>,
    }

    const TEXT: &str = "You are the remote prompt.\n";

    fn etag_of(text: &str) -> String {
        format!(
            "\"{}\"",
            &hex::encode(Sha256::digest(text.as_bytes()))[..16]
        )
    }

    async fn serve_prompt(
        State(server): State<Arc<Server>>,
        UrlPath(name): UrlPath<String>,
        headers: HeaderMap,
    ) -> Response {
        server.hits.fetch_add(1, Ordering::SeqCst);
        let inm = headers
            .get(header::IF_NONE_MATCH)
            .map(|v| v.to_str().unwrap().to_string());
        lock(&server.if_none_match).push(inm.clone());
        let mode = *lock(&server.mode);
        match mode {
            Mode::Down => return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
            Mode::Slow => std::future::pending::<()>().await,
            Mode::Gated => server.gate.acquire().await.unwrap().forget(),
            Mode::Up => {}
        }
        let text = format!("{TEXT}({name})\n");
        let etag = etag_of(&text);
        if inm.as_deref() == Some(etag.as_str()) {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
        }
        ([(header::ETAG, etag)], text).into_response()
    }

    async fn start_server(mode: Mode) -> (Arc<Server>, String) {
        let server = Arc::new(Server {
            mode: Mutex::new(mode),
            hits: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
            if_none_match: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/{name}", axum::routing::get(serve_prompt))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (server, base)
    }

    impl Server {
        fn set(&self, mode: Mode) {
            *lock(&self.mode) = mode;
        }
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn source(name: &str, base: &str) -> PromptSource {
        PromptSource {
            name: name.into(),
            url: format!("{base}/{name}"),
            sha256: vec![],
            file: None,
        }
    }

    fn config(sources: Vec<PromptSource>) -> PromptsConfig {
        PromptsConfig {
            ttl: 3600,
            fetch_timeout: 5,
            attempts: 1,
            sources,
        }
    }

    fn remote_text(name: &str) -> String {
        format!("{TEXT}({name})\n")
    }

    fn cache_dir(home: &Home) -> PathBuf {
        home.prompts_cache_dir()
    }

    fn read_meta(home: &Home) -> Value {
        serde_json::from_slice(&std::fs::read(cache_dir(home).join(METADATA_FILE)).unwrap())
            .unwrap()
    }

    /// Moves a prompt's `fetched_at` back by `secs` in metadata.json.
    fn age_cache(home: &Home, name: &str, secs: u64) {
        let mut meta = read_meta(home);
        let then = SystemTime::now() - Duration::from_secs(secs);
        meta["prompts"][name]["fetched_at"] = Value::String(rfc3339(then));
        std::fs::write(
            cache_dir(home).join(METADATA_FILE),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn remote_then_cache_then_cache_after_restart() {
        let (server, base) = start_server(Mode::Up).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let cfg = config(vec![source(BASE_PROMPT, &base)]);
        let store = PromptStore::new(&home, &cfg);

        let first = store.get(BASE_PROMPT).await;
        assert_eq!(first.source, PromptSourceKind::Remote);
        assert_eq!(&*first.text, remote_text(BASE_PROMPT));
        assert!(first.fresh);
        let second = store.get(BASE_PROMPT).await;
        assert_eq!(second.source, PromptSourceKind::Cache);
        assert!(second.fresh && second.age_secs.is_some());
        assert_eq!(server.hits(), 1);

        // On disk: the text and its metadata.
        let on_disk =
            std::fs::read_to_string(cache_dir(&home).join("base_instructions.md")).unwrap();
        assert_eq!(on_disk, remote_text(BASE_PROMPT));
        let meta = &read_meta(&home)["prompts"][BASE_PROMPT];
        assert_eq!(
            meta["sha256"],
            hex::encode(Sha256::digest(on_disk.as_bytes()))
        );
        assert_eq!(meta["url"], format!("{base}/{BASE_PROMPT}"));
        assert_eq!(meta["etag"], etag_of(&on_disk));

        // A new process serves the disk copy without fetching.
        let restarted = PromptStore::new(&home, &cfg);
        let status = restarted.status();
        assert_eq!(status[0].source, PromptSourceKind::Cache);
        assert!(status[0].problem.is_none());
        assert_eq!(
            restarted.get(BASE_PROMPT).await.source,
            PromptSourceKind::Cache
        );
        assert_eq!(server.hits(), 1);
        let counters = store.fetch_counters();
        assert_eq!(
            counters,
            vec![FetchCounters {
                name: BASE_PROMPT.into(),
                attempts: 1,
                failures: 0
            }]
        );
    }

    #[tokio::test]
    async fn expired_copy_is_served_stale_when_the_server_is_down() {
        let (server, base) = start_server(Mode::Up).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let mut cfg = config(vec![source(BASE_PROMPT, &base)]);
        cfg.attempts = 2;
        PromptStore::new(&home, &cfg).get(BASE_PROMPT).await;
        server.set(Mode::Down);
        age_cache(&home, BASE_PROMPT, 2 * 86400);

        let store = PromptStore::new(&home, &cfg);
        let prompt = store.get(BASE_PROMPT).await;
        assert_eq!(prompt.source, PromptSourceKind::StaleCache);
        assert_eq!(&*prompt.text, remote_text(BASE_PROMPT));
        assert!(!prompt.fresh);
        assert!(prompt.age_secs.unwrap() >= 2.0 * 86400.0);

        // An explicit refresh reports the failure and keeps the stale copy.
        let outcome = store.refresh(false).await;
        assert_eq!(outcome.len(), 1);
        let RefreshResult::Failed { error } = &outcome[0].result else {
            panic!("expected a failure: {outcome:?}");
        };
        assert!(error.contains("503") && error.contains(&base), "{error}");
        assert_eq!(
            store.get(BASE_PROMPT).await.source,
            PromptSourceKind::StaleCache
        );
        let status = &store.status()[0];
        assert_eq!(status.source, PromptSourceKind::StaleCache);
        assert!(status.problem.as_deref().unwrap().contains("503"));
        let c = &store.fetch_counters()[0];
        assert!(c.attempts >= 2 && c.failures == c.attempts, "{c:?}");
    }

    #[tokio::test]
    async fn a_slow_server_times_out_and_falls_through() {
        let (_server, base) = start_server(Mode::Slow).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let mut cfg = config(vec![source(BASE_PROMPT, &base)]);
        cfg.fetch_timeout = 1;
        let store = PromptStore::new(&home, &cfg);
        let prompt = store.get(BASE_PROMPT).await;
        assert_eq!(prompt.source, PromptSourceKind::Builtin);
        assert_eq!(&*prompt.text, BUILTIN_BASE);
        let problem = store.status()[0].problem.clone().unwrap();
        assert!(problem.contains("fetch_timeout (1s)"), "{problem}");
    }

    #[tokio::test]
    async fn content_outside_the_allow_list_is_refused_and_not_cached() {
        let (server, base) = start_server(Mode::Up).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let mut src = source(BASE_PROMPT, &base);
        src.sha256 = vec!["0".repeat(64)];
        let store = PromptStore::new(&home, &config(vec![src.clone()]));
        let prompt = store.get(BASE_PROMPT).await;
        assert_eq!(prompt.source, PromptSourceKind::Builtin);
        assert!(!cache_dir(&home).join("base_instructions.md").exists());
        assert!(!cache_dir(&home).join(METADATA_FILE).exists());
        let problem = store.status()[0].problem.clone().unwrap();
        assert!(problem.contains("allow-list"), "{problem}");
        assert_eq!(store.fetch_counters()[0].failures, 1);

        // The right digest (any case) is accepted.
        let digest = hex::encode(Sha256::digest(remote_text(BASE_PROMPT).as_bytes()));
        src.sha256 = vec!["0".repeat(64), digest.to_uppercase()];
        let store = PromptStore::new(&home, &config(vec![src]));
        assert_eq!(
            store.get(BASE_PROMPT).await.source,
            PromptSourceKind::Remote
        );
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn revalidation_with_304_renews_fetched_at() {
        let (server, base) = start_server(Mode::Up).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let cfg = config(vec![source(BASE_PROMPT, &base)]);
        PromptStore::new(&home, &cfg).get(BASE_PROMPT).await;
        age_cache(&home, BASE_PROMPT, 7200);

        let store = PromptStore::new(&home, &cfg);
        assert_eq!(store.status()[0].source, PromptSourceKind::StaleCache);
        let outcome = store.refresh(false).await;
        assert_eq!(outcome[0].result, RefreshResult::NotModified);
        assert!(outcome[0].is_ok());
        let etag = etag_of(&remote_text(BASE_PROMPT));
        assert_eq!(*lock(&server.if_none_match), vec![None, Some(etag)]);
        // fetched_at is renewed in memory and on disk.
        assert_eq!(store.get(BASE_PROMPT).await.source, PromptSourceKind::Cache);
        assert_eq!(disk_status(&home, &cfg)[0].source, PromptSourceKind::Cache);

        // Fresh copies are not fetched again unless forced; forcing skips validators.
        let outcome = store.refresh(false).await;
        assert!(matches!(
            outcome[0].result,
            RefreshResult::StillFresh { .. }
        ));
        let outcome = store.refresh(true).await;
        assert!(matches!(outcome[0].result, RefreshResult::Updated { bytes, .. } if bytes > 0));
        assert_eq!(lock(&server.if_none_match).last(), Some(&None));
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test]
    async fn corrupt_metadata_is_a_miss() {
        let (server, base) = start_server(Mode::Down).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let cfg = config(vec![source(BASE_PROMPT, &base)]);
        std::fs::create_dir_all(cache_dir(&home)).unwrap();
        std::fs::write(cache_dir(&home).join(METADATA_FILE), b"{\"prompts\": [tru").unwrap();
        std::fs::write(cache_dir(&home).join("base_instructions.md"), b"old").unwrap();

        let on_disk = &disk_status(&home, &cfg)[0];
        assert_eq!(on_disk.source, PromptSourceKind::Builtin);
        assert!(
            on_disk
                .problem
                .as_deref()
                .unwrap()
                .contains("metadata.json is corrupt")
        );

        let store = PromptStore::new(&home, &cfg);
        assert_eq!(
            store.get(BASE_PROMPT).await.source,
            PromptSourceKind::Builtin
        );
        // A successful fetch replaces the corrupt metadata.
        server.set(Mode::Up);
        assert!(store.refresh(true).await[0].is_ok());
        assert_eq!(read_meta(&home)["version"], 1);
        assert_eq!(disk_status(&home, &cfg)[0].source, PromptSourceKind::Cache);

        // One corrupt entry spoils only its own prompt.
        let mut meta = read_meta(&home);
        meta["prompts"]["other"] = serde_json::json!({"fetched_at": 12});
        std::fs::write(cache_dir(&home).join(METADATA_FILE), meta.to_string()).unwrap();
        let mut cfg2 = cfg.clone();
        cfg2.sources.push(source("other", &base));
        let statuses = disk_status(&home, &cfg2);
        assert_eq!(statuses[0].source, PromptSourceKind::Cache);
        assert_eq!(statuses[1].source, PromptSourceKind::Builtin);
        assert!(
            statuses[1]
                .problem
                .as_deref()
                .unwrap()
                .contains("\"other\" is corrupt")
        );
    }

    #[tokio::test]
    async fn damaged_or_unreadable_prompt_file_is_a_miss() {
        let (server, base) = start_server(Mode::Up).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let cfg = config(vec![source(BASE_PROMPT, &base)]);
        PromptStore::new(&home, &cfg).get(BASE_PROMPT).await;
        let md = cache_dir(&home).join("base_instructions.md");

        // Edited behind our back: the digest no longer matches.
        std::fs::write(&md, "tampered").unwrap();
        let problem = disk_status(&home, &cfg)[0].problem.clone().unwrap();
        assert!(problem.contains("damaged or edited"), "{problem}");
        let store = PromptStore::new(&home, &cfg);
        let prompt = store.get(BASE_PROMPT).await;
        assert_eq!(prompt.source, PromptSourceKind::Remote, "refetched");
        assert_eq!(&*prompt.text, remote_text(BASE_PROMPT));
        assert_eq!(
            std::fs::read_to_string(&md).unwrap(),
            remote_text(BASE_PROMPT)
        );

        // Unreadable (a directory in its place) with the server down: builtin.
        std::fs::remove_file(&md).unwrap();
        std::fs::create_dir(&md).unwrap();
        server.set(Mode::Down);
        let store = PromptStore::new(&home, &cfg);
        assert_eq!(
            store.get(BASE_PROMPT).await.source,
            PromptSourceKind::Builtin
        );
        let problem = disk_status(&home, &cfg)[0].problem.clone().unwrap();
        assert!(problem.contains("cannot read"), "{problem}");
        // `clear` removes it all.
        assert_eq!(store.clear().unwrap(), 2);
        assert_eq!(std::fs::read_dir(cache_dir(&home)).unwrap().count(), 0);
        assert!(disk_status(&home, &cfg)[0].problem.is_none());
    }

    #[tokio::test]
    async fn local_file_then_builtin_fallbacks() {
        let (server, base) = start_server(Mode::Down).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let local = dir.path().join("local.md");
        std::fs::write(&local, "local instructions").unwrap();
        let mut with_file = source(BASE_PROMPT, &base);
        with_file.file = Some(local);
        let mut missing_file = source("custom", &base);
        missing_file.file = Some(dir.path().join("missing.md"));
        let cfg = config(vec![with_file, missing_file, source(CODEX_PROMPT, &base)]);
        let store = PromptStore::new(&home, &cfg);

        let p = store.get(BASE_PROMPT).await;
        assert_eq!(
            (p.source, &*p.text),
            (PromptSourceKind::File, "local instructions")
        );
        assert_eq!((p.age_secs, p.fresh), (None, false));
        let p = store.get("custom").await;
        assert_eq!(
            (p.source, &*p.text),
            (PromptSourceKind::Builtin, BUILTIN_GENERIC)
        );
        let p = store.get(CODEX_PROMPT).await;
        assert_eq!(
            (p.source, &*p.text),
            (PromptSourceKind::Builtin, BUILTIN_CODEX)
        );
        let p = store.get("not-configured").await;
        assert_eq!(p.source, PromptSourceKind::Builtin);
        assert_eq!(server.hits(), 3);

        // Within the retry pause after a failure, gets serve the fallback without fetching.
        for _ in 0..5 {
            assert_eq!(store.get(BASE_PROMPT).await.source, PromptSourceKind::File);
        }
        assert_eq!(server.hits(), 3);

        let sources: Vec<_> = store.status().iter().map(|s| s.source).collect();
        use PromptSourceKind::*;
        assert_eq!(sources, vec![File, Builtin, Builtin]);
        let on_disk = disk_status(&home, &cfg);
        assert_eq!(
            on_disk.iter().map(|s| s.source).collect::<Vec<_>>(),
            sources
        );
        assert!(
            on_disk[1]
                .problem
                .as_deref()
                .unwrap()
                .contains("missing.md")
        );
    }

    #[tokio::test]
    async fn concurrent_gets_share_one_fetch() {
        let (server, base) = start_server(Mode::Gated).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let store = PromptStore::new(&home, &config(vec![source(BASE_PROMPT, &base)]));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.get(BASE_PROMPT).await })
            })
            .collect();
        // Hold the answer until the fetch arrived, so every get is in flight together.
        while server.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        server.gate.add_permits(100);
        let mut sources = Vec::new();
        for task in tasks {
            let prompt = task.await.unwrap();
            assert_eq!(&*prompt.text, remote_text(BASE_PROMPT));
            sources.push(prompt.source);
        }
        assert_eq!(server.hits(), 1);
        assert_eq!(
            sources
                .iter()
                .filter(|s| **s == PromptSourceKind::Remote)
                .count(),
            1
        );
        assert_eq!(store.fetch_counters()[0].attempts, 1);
    }

    #[tokio::test]
    async fn stale_copy_is_refreshed_in_the_background_once() {
        let (server, base) = start_server(Mode::Gated).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let cfg = config(vec![source(BASE_PROMPT, &base)]);
        server.gate.add_permits(1);
        PromptStore::new(&home, &cfg).get(BASE_PROMPT).await;
        age_cache(&home, BASE_PROMPT, 7200);

        let store = PromptStore::new(&home, &cfg);
        // The server is gated: these gets must not wait for the refresh they trigger.
        for _ in 0..10 {
            assert_eq!(
                store.get(BASE_PROMPT).await.source,
                PromptSourceKind::StaleCache
            );
        }
        while server.hits() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.gate.add_permits(100);
        // `refresh` queues behind the background fetch and then finds the copy fresh.
        let outcome = store.refresh(false).await;
        assert!(
            matches!(outcome[0].result, RefreshResult::StillFresh { .. }),
            "{outcome:?}"
        );
        assert_eq!(store.get(BASE_PROMPT).await.source, PromptSourceKind::Cache);
        assert_eq!(server.hits(), 2);
    }

    #[test]
    fn source_kinds_serialise_as_in_the_spec() {
        let kinds = [
            PromptSourceKind::Cache,
            PromptSourceKind::Remote,
            PromptSourceKind::StaleCache,
            PromptSourceKind::File,
            PromptSourceKind::Builtin,
        ];
        let json = serde_json::to_string(&kinds).unwrap();
        assert_eq!(json, r#"["cache","remote","stale-cache","file","builtin"]"#);
        for k in kinds {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        let outcome = RefreshOutcome {
            name: "p".into(),
            result: RefreshResult::Failed { error: "e".into() },
        };
        assert_eq!(
            serde_json::to_value(outcome).unwrap(),
            serde_json::json!({"name": "p", "result": "failed", "error": "e"})
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for retry in 1..40 {
            let d = backoff(retry);
            let full = BACKOFF_BASE
                .saturating_mul(1 << (retry - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
    }

    #[tokio::test]
    async fn damage_is_found_and_removed_entry_by_entry_or_whole() {
        let (_server, base) = start_server(Mode::Up).await;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let cfg = config(vec![
            source(BASE_PROMPT, &base),
            source(CODEX_PROMPT, &base),
        ]);
        let store = PromptStore::new(&home, &cfg);
        store.get(BASE_PROMPT).await;
        store.get(CODEX_PROMPT).await;
        assert_eq!(inspect_cache(&home, &cfg), CacheDamage::default());

        // One edited file: only that prompt is damaged, and only it is removed.
        std::fs::write(cache_dir(&home).join("base_instructions.md"), "edited").unwrap();
        let damage = inspect_cache(&home, &cfg);
        assert!(damage.needs_repair() && damage.metadata.is_none());
        assert_eq!(damage.entries.len(), 1, "{damage:?}");
        assert_eq!(damage.affected(&cfg), [BASE_PROMPT]);
        let removed = remove_damaged(&home, &cfg, &damage).unwrap();
        assert_eq!(removed, [cache_dir(&home).join("base_instructions.md")]);
        assert!(read_meta(&home)["prompts"].get(BASE_PROMPT).is_none());
        assert!(read_meta(&home)["prompts"].get(CODEX_PROMPT).is_some());
        assert!(!inspect_cache(&home, &cfg).needs_repair());
        assert_eq!(disk_status(&home, &cfg)[1].source, PromptSourceKind::Cache);

        // Garbage metadata.json: everything goes.
        std::fs::write(cache_dir(&home).join(METADATA_FILE), "garbage{").unwrap();
        let damage = inspect_cache(&home, &cfg);
        assert!(damage.metadata.as_deref().unwrap().contains("corrupt"));
        assert_eq!(damage.affected(&cfg).len(), 2);
        remove_damaged(&home, &cfg, &damage).unwrap();
        assert_eq!(std::fs::read_dir(cache_dir(&home)).unwrap().count(), 0);
        assert_eq!(inspect_cache(&home, &cfg), CacheDamage::default());
    }
}
