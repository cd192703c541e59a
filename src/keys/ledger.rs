//! The usage ledger: one row per metered request in the SQLite table `usage`
//! (`data/usage.db`, WAL), a file a person can open with `sqlite3`.
//!
//! Requests never touch the database: they hand their row to [`Ledger::push`],
//! and one background thread writes what has queued up in one transaction,
//! every [`WRITE_EVERY`] or sooner when many rows wait. When the file cannot
//! be written, rows wait in memory (at most [`MAX_BACKLOG`]) and the thread
//! tries again; [`Ledger::flush`] waits until everything queued is written
//! (the drain calls it, so every answered request has its row).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Rows waiting in memory at most, unless `keys.ledger_backlog` says
/// otherwise; past this, `keys.fail_closed` applies.
pub const MAX_BACKLOG: usize = 100_000;
/// How often queued rows are written.
pub const WRITE_EVERY: Duration = Duration::from_millis(200);
/// Rows per transaction at most.
const BATCH: usize = 5_000;
/// A backlog at least this long (or a tenth of the bound, when less) is "behind".
const BEHIND: usize = 10_000;

/// The table, one column per field of a row.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS usage (
    time          TEXT    NOT NULL, -- RFC 3339 UTC, milliseconds: when the request ended
    request_id    TEXT,             -- x-request-id
    key           TEXT    NOT NULL, -- the key's name; '-' for the operator's token
    ingress       TEXT    NOT NULL, -- http | nats
    route         TEXT    NOT NULL, -- e.g. /v1/chat/completions
    model         TEXT,             -- as the client named it
    provider      TEXT,             -- the provider that answered
    status        INTEGER NOT NULL, -- HTTP status (499: the client went away)
    input_tokens  INTEGER NOT NULL, -- cached ones included
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_usd      REAL    NOT NULL, -- from [prices]
    duration_ms   REAL    NOT NULL,
    ttft_ms       REAL,             -- time to the first streamed event
    trace_id      TEXT,
    estimated     INTEGER NOT NULL DEFAULT 0 -- 1: tokens estimated (no usage reported)
);
CREATE INDEX IF NOT EXISTS usage_key_time ON usage (key, time);
CREATE INDEX IF NOT EXISTS usage_time ON usage (time);";

/// One ledger row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub time: String,
    pub request_id: Option<String>,
    pub key: String,
    pub ingress: &'static str,
    pub route: String,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: f64,
    pub duration_ms: f64,
    pub ttft_ms: Option<f64>,
    pub trace_id: Option<String>,
    pub estimated: bool,
}

/// `/health`'s word for the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerState {
    Ok,
    Behind,
    Failing,
}

impl LedgerState {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerState::Ok => "ok",
            LedgerState::Behind => "behind",
            LedgerState::Failing => "failing",
        }
    }
}

struct Queue {
    rows: VecDeque<Row>,
    /// Rows taken by the writer and not yet committed.
    writing: usize,
    stop: bool,
}

struct Shared {
    path: PathBuf,
    /// Rows waiting (queued and being written) at most.
    max_backlog: usize,
    queue: Mutex<Queue>,
    /// Wakes the writer.
    work: Condvar,
    /// Tells flushers the queue emptied.
    idle: Condvar,
    failing: AtomicU8,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// The ledger of one proxy: a queue and its writer thread.
pub struct Ledger {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ledger {
    /// Starts the writer for the database at `path` (created when missing).
    pub fn start(path: PathBuf) -> Ledger {
        Ledger::start_bounded(path, MAX_BACKLOG)
    }

    /// [`Ledger::start`], with at most `max_backlog` rows waiting in memory.
    pub fn start_bounded(path: PathBuf, max_backlog: usize) -> Ledger {
        let shared = Arc::new(Shared {
            path,
            max_backlog: max_backlog.max(1),
            queue: Mutex::new(Queue {
                rows: VecDeque::new(),
                writing: 0,
                stop: false,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            failing: AtomicU8::new(0),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("warden-ledger".into())
            .spawn(move || writer(&for_thread))
            .ok();
        if thread.is_none() {
            shared.failing.store(1, Ordering::Relaxed);
        }
        Ledger {
            shared,
            thread: Mutex::new(thread),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a row; `false` (and the row counted as dropped) past the bound.
    pub fn push(&self, row: Row) -> bool {
        let mut q = self.queue();
        if q.rows.len() + q.writing >= self.shared.max_backlog {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.rows.push_back(row);
        if q.rows.len() >= BATCH {
            self.shared.work.notify_one();
        }
        true
    }

    /// Whether the backlog is at its bound (then `fail_closed` applies).
    pub fn full(&self) -> bool {
        self.backlog() >= self.shared.max_backlog
    }

    /// Rows waiting in memory at most.
    pub fn max_backlog(&self) -> usize {
        self.shared.max_backlog
    }

    pub fn backlog(&self) -> usize {
        let q = self.queue();
        q.rows.len() + q.writing
    }

    pub fn state(&self) -> LedgerState {
        if self.shared.failing.load(Ordering::Relaxed) != 0 {
            LedgerState::Failing
        } else if self.backlog() >= BEHIND.min(self.shared.max_backlog.div_ceil(10)) {
            LedgerState::Behind
        } else {
            LedgerState::Ok
        }
    }

    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes everything queued now; waits at most `timeout`. `true` when
    /// nothing is left waiting.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.queue();
        self.shared.work.notify_one();
        while !q.rows.is_empty() || q.writing > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.shared.work.notify_one();
            q = self
                .shared
                .idle
                .wait_timeout(q, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let wait = if self.state() == LedgerState::Failing {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        if !self.flush(wait) {
            tracing::error!(
                rows = self.backlog(),
                path = %self.shared.path.display(),
                "usage ledger: rows could not be written before exit"
            );
        }
        self.queue().stop = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// Opens (creating when missing) the ledger at `path` with its schema, in WAL mode.
pub fn open(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens an existing ledger read-only; `Ok(None)` when there is none yet.
pub fn open_read(path: &Path) -> rusqlite::Result<Option<rusqlite::Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(Some(conn))
}

fn writer(shared: &Shared) {
    let mut conn: Option<rusqlite::Connection> = None;
    let mut last_error: Option<String> = None;
    loop {
        let batch: Vec<Row> = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.rows.is_empty() {
                shared.idle.notify_all();
                if q.stop {
                    return;
                }
                q = shared
                    .work
                    .wait_timeout(q, WRITE_EVERY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let n = q.rows.len().min(BATCH);
            q.writing = n;
            q.rows.drain(..n).collect()
        };
        if batch.is_empty() {
            continue;
        }
        let result = match conn.as_mut() {
            Some(c) => insert(c, &batch),
            None => open(&shared.path).and_then(|mut c| {
                let r = insert(&mut c, &batch);
                conn = Some(c);
                r
            }),
        };
        let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.writing = 0;
        match result {
            Ok(()) => {
                shared
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if shared.failing.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!(path = %shared.path.display(), "usage ledger writable again");
                }
                last_error = None;
            }
            Err(e) => {
                // Back at the front, in order; retried after a pause.
                for row in batch.into_iter().rev() {
                    q.rows.push_front(row);
                }
                while q.rows.len() > shared.max_backlog {
                    q.rows.pop_back();
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                shared.failing.store(1, Ordering::Relaxed);
                conn = None;
                let message = e.to_string();
                if last_error.as_deref() != Some(&message) {
                    tracing::error!(
                        path = %shared.path.display(),
                        error = %message,
                        waiting = q.rows.len(),
                        "usage ledger cannot be written: rows wait in memory (run `doctor`)"
                    );
                    last_error = Some(message);
                }
                if q.stop {
                    shared.idle.notify_all();
                    return;
                }
                let _ = shared
                    .work
                    .wait_timeout(q, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

/// A ledger in memory holding `rows` (`proxy usage --nats`).
pub fn in_memory(rows: &[Row]) -> rusqlite::Result<rusqlite::Connection> {
    let mut conn = rusqlite::Connection::open_in_memory()?;
    conn.execute_batch(SCHEMA)?;
    insert(&mut conn, rows)?;
    Ok(conn)
}

fn insert(conn: &mut rusqlite::Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO usage (time, request_id, key, ingress, route, model, provider, status,
             input_tokens, output_tokens, cached_tokens, cost_usd, duration_ms, ttft_ms, trace_id, estimated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        for r in rows {
            stmt.execute(rusqlite::params![
                r.time,
                r.request_id,
                r.key,
                r.ingress,
                r.route,
                r.model,
                r.provider,
                r.status,
                r.input_tokens as i64,
                r.output_tokens as i64,
                r.cached_tokens as i64,
                r.cost_usd,
                r.duration_ms,
                r.ttft_ms,
                r.trace_id,
                r.estimated,
            ])?;
        }
    }
    tx.commit()
}

/// Tokens and USD spent per key since `since` (RFC 3339), answered requests only.
pub fn spent_since(
    conn: &rusqlite::Connection,
    key: &str,
    since: &str,
) -> rusqlite::Result<(u64, f64)> {
    conn.query_row(
        "SELECT COALESCE(SUM(input_tokens + output_tokens), 0), COALESCE(SUM(cost_usd), 0)
         FROM usage WHERE key = ?1 AND time >= ?2",
        rusqlite::params![key, since],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, f64>(1)?)),
    )
}

/// A row of a request refused at admission: warden's own 403, 429 or 503
/// (no provider was asked).
pub const REFUSED: &str = "(provider IS NULL AND status IN (403, 429, 503))";

/// Per (key, model) since `since` (RFC 3339): answered and refused requests,
/// tokens and cost; at most `limit` pairs.
pub fn aggregate_since(
    conn: &rusqlite::Connection,
    since: &str,
    limit: usize,
) -> rusqlite::Result<Vec<(String, String, super::book::Figures)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT key, COALESCE(model, ''),
                SUM(CASE WHEN {REFUSED} THEN 0 ELSE 1 END),
                SUM(CASE WHEN {REFUSED} THEN 1 ELSE 0 END),
                SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(cost_usd)
         FROM usage WHERE time >= ?1 GROUP BY key, model LIMIT ?2"
    ))?;
    stmt.query_map(rusqlite::params![since, limit as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            super::book::Figures {
                requests: r.get::<_, i64>(2)? as u64,
                refused: r.get::<_, i64>(3)? as u64,
                input_tokens: r.get::<_, i64>(4)? as u64,
                output_tokens: r.get::<_, i64>(5)? as u64,
                cached_tokens: r.get::<_, i64>(6)? as u64,
                cost_micros: (r.get::<_, f64>(7)? * 1e6).round() as u64,
            },
        ))
    })?
    .collect()
}

/// The last time `key` was used, when it was.
pub fn last_used(conn: &rusqlite::Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT MAX(time) FROM usage WHERE key = ?1",
        rusqlite::params![key],
        |r| r.get(0),
    )
}

/// RFC 3339 with milliseconds, UTC, for a Unix time in milliseconds.
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// RFC 3339 (seconds) of a Unix second.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_written_in_batches_and_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/usage.db");
        let ledger = Ledger::start(path.clone());
        for i in 0..10 {
            assert!(ledger.push(Row {
                time: rfc3339_millis(1_000 + i),
                key: "alice".into(),
                ingress: "http",
                route: "/v1/chat/completions".into(),
                status: 200,
                input_tokens: 3,
                output_tokens: 4,
                ..Row::default()
            }));
        }
        assert!(ledger.flush(Duration::from_secs(10)));
        assert_eq!(ledger.state(), LedgerState::Ok);
        let conn = open_read(&path).unwrap().unwrap();
        assert_eq!(
            spent_since(&conn, "alice", "1970-01-01T00:00:00Z").unwrap(),
            (70, 0.0)
        );
    }

    #[test]
    fn a_ledger_held_up_says_behind_then_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        // Another connection holds the database's write lock: the writer waits
        // (its busy timeout) and rows pile up without a failure.
        let blocker = open(&path).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let ledger = Ledger::start_bounded(path.clone(), 100);
        for i in 0..20 {
            assert!(ledger.push(Row {
                time: rfc3339_millis(1_000 + i),
                key: "k".into(),
                ingress: "http",
                route: "/v1/chat/completions".into(),
                status: 200,
                ..Row::default()
            }));
        }
        // A tenth of the bound (10) is behind; the writer has not failed.
        assert_eq!(ledger.state(), LedgerState::Behind);
        blocker.execute_batch("COMMIT").unwrap();
        assert!(ledger.flush(Duration::from_secs(30)));
        assert_eq!(ledger.state(), LedgerState::Ok);
        assert_eq!(ledger.written(), 20);
    }

    #[test]
    fn the_backlog_bound_counts_rows_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        std::fs::create_dir(&path).unwrap();
        let ledger = Ledger::start_bounded(path, 10);
        let pushed = (0..25).filter(|_| ledger.push(Row::default())).count();
        assert_eq!(pushed, 10);
        assert!(ledger.full());
        assert_eq!(ledger.dropped(), 15);
        // However the writer is placed (rows taken out to write, or put back),
        // never more than the bound waits.
        assert!(!ledger.flush(Duration::from_millis(300)));
        assert_eq!(ledger.backlog(), 10);
    }

    #[test]
    fn an_unwritable_ledger_keeps_rows_in_memory_and_says_failing() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: never openable as a database.
        let path = dir.path().join("usage.db");
        std::fs::create_dir(&path).unwrap();
        let ledger = Ledger::start(path);
        ledger.push(Row::default());
        assert!(!ledger.flush(Duration::from_millis(500)));
        assert_eq!(ledger.state(), LedgerState::Failing);
        assert_eq!(ledger.backlog(), 1);
    }
}
