//! The usage ledger: one row per metered request in the SQLite table `usage`
//! (`data/usage.db`, WAL), a file a person can open with `sqlite3`.
//!
//! Requests never touch the database: they hand their row to [`Ledger::push`],
//! and one background thread writes what has queued up in one transaction,
//! every [`WRITE_EVERY`] or sooner when many rows wait. When the file cannot
//! be written, rows wait in memory (at most [`MAX_BACKLOG`]) and the thread
//! tries again; [`Ledger::flush`] waits until everything queued is written
//! (the drain calls it, so every answered request has its row).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
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

/// The table, one column per field of a row, and one index, on `time`: rows
/// arrive in time order, so it grows at its end only. Per-key reads group
/// over a time range instead of using an index led by `key`: such an index
/// takes each row at one of as many places as there are keys, and with a
/// thousand keys rewrote a thousand pages a batch (ledgers written before
/// lose it when opened for writing).
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
CREATE INDEX IF NOT EXISTS usage_time ON usage (time);
DROP INDEX IF EXISTS usage_key_time;";

/// One ledger row. Built on the request path without formatting or copying
/// what it can share: the time is a number (written as RFC 3339 text by the
/// ledger's thread), the key's name and the provider's are shared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// When the request ended, Unix milliseconds (the `time` column: RFC 3339).
    pub time_ms: u64,
    pub request_id: Option<String>,
    pub key: Arc<str>,
    pub ingress: &'static str,
    pub route: Cow<'static, str>,
    pub model: Option<String>,
    pub provider: Option<Arc<str>>,
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
    /// Rows queued and being written, as of the last change to the queue (set
    /// under its lock): what admission reads without taking the lock.
    waiting: AtomicUsize,
}

impl Queue {
    fn waiting(&self) -> usize {
        self.rows.len() + self.writing
    }
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
            waiting: AtomicUsize::new(0),
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
        if q.waiting() >= self.shared.max_backlog {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.rows.push_back(row);
        self.shared.waiting.store(q.waiting(), Ordering::Relaxed);
        if q.rows.len() >= BATCH {
            self.shared.work.notify_one();
        }
        true
    }

    /// Whether the backlog is at its bound (then `fail_closed` applies); reads
    /// no lock, so admission does not wait on the writer.
    pub fn full(&self) -> bool {
        self.shared.waiting.load(Ordering::Relaxed) >= self.shared.max_backlog
    }

    /// Rows waiting in memory at most.
    pub fn max_backlog(&self) -> usize {
        self.shared.max_backlog
    }

    pub fn backlog(&self) -> usize {
        self.queue().waiting()
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
    let mut conn: Option<Db> = None;
    let mut last_error: Option<String> = None;
    // The rows being written; its buffer becomes the queue's next one, so
    // taking a batch under the lock moves no rows (and the requests pushing
    // rows do not wait for it).
    let mut batch: VecDeque<Row> = VecDeque::new();
    loop {
        {
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
            if q.rows.len() <= BATCH {
                std::mem::swap(&mut q.rows, &mut batch);
            } else {
                batch.extend(q.rows.drain(..BATCH));
            }
            q.writing = batch.len();
        }
        if batch.is_empty() {
            continue;
        }
        let rows = batch.make_contiguous();
        let result = match conn.as_mut() {
            Some(db) => insert(&mut db.conn, &mut db.inserts, rows),
            None => open(&shared.path).and_then(|c| {
                let db = conn.insert(Db {
                    inserts: Inserts::default(),
                    conn: c,
                });
                insert(&mut db.conn, &mut db.inserts, rows)
            }),
        };
        if result.is_ok() {
            shared
                .written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // Freed here, before the lock.
            batch.clear();
        }
        let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.writing = 0;
        shared.waiting.store(q.waiting(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                if shared.failing.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!(path = %shared.path.display(), "usage ledger writable again");
                }
                last_error = None;
            }
            Err(e) => {
                // Back at the front, in order; retried after a pause.
                for row in batch.drain(..).rev() {
                    q.rows.push_front(row);
                }
                while q.rows.len() > shared.max_backlog {
                    q.rows.pop_back();
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                shared.waiting.store(q.waiting(), Ordering::Relaxed);
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
    let mut inserts = Inserts::default();
    let written = insert(&mut conn, &mut inserts, rows);
    // The statements go before the connection is handed on.
    drop(inserts);
    written.map(|()| conn)
}

/// Rows per `INSERT` statement in a batch: SQLite opens the table and its
/// indexes once per statement, so one statement for many rows costs less per
/// row than one each. A batch is written 32 rows to a statement, and what is
/// left by statements of 16, 8, 4, 2 and 1 rows (at most five more).
const ROWS_PER_INSERT: usize = 32;

/// The statement sizes, largest first.
const INSERT_SIZES: [usize; 6] = [ROWS_PER_INSERT, 16, 8, 4, 2, 1];

/// The `INSERT` of `n` rows, 16 parameters a row. `OR FAIL`: a statement of
/// many rows that may abort halfway needs a statement journal (a copy of each
/// page it changes, to undo its own rows); one that fails stops where it is.
/// Either way a failed batch's transaction is rolled back as a whole.
fn insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT OR FAIL INTO usage (time, request_id, key, ingress, route, model, provider, status, \
         input_tokens, output_tokens, cached_tokens, cost_usd, duration_ms, ttft_ms, trace_id, estimated) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    }
    sql
}

/// The writer's connection and the statements it prepared. Fields drop in
/// the order they are declared: the statements are finalized before the
/// connection closes.
struct Db {
    inserts: Inserts,
    conn: rusqlite::Connection,
}

/// The prepared `INSERT`s of one connection, one per size of
/// [`INSERT_SIZES`], prepared when first needed. They bind each row's text
/// without copying it (SQLite reads it in place during the statement's step),
/// which rusqlite's statements cannot: a copy, with its allocation, of each
/// of a row's seven texts was a third of a row's cost.
#[derive(Default)]
struct Inserts {
    by_size: [Option<Insert>; INSERT_SIZES.len()],
}

/// One prepared `INSERT` of `rows` rows.
struct Insert {
    stmt: std::ptr::NonNull<rusqlite::ffi::sqlite3_stmt>,
    rows: usize,
    /// What each parameter holds, as last bound: a parameter that would be
    /// bound to what it already holds is left as it is (SQLite keeps
    /// bindings from one step to the next). Many of a row's values are the
    /// same as those of the row bound there before (the ingress, route and
    /// provider, a status of 200, no trace id, no time to first event, the
    /// times' buffer below): each bind costs 40 to 100 instructions.
    bound: Vec<Bound>,
    /// The rows' times as text; a fixed place, so the parameters that hold
    /// them need binding once.
    times: Box<[[u8; RFC3339_MILLIS_LEN]]>,
}

/// A parameter's value as bound. A text is known by where it is and its
/// length only: see [`Insert::execute`] for why that is enough.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    Unset,
    Null,
    Text(usize, usize),
    Int(i64),
    /// An `f64`'s bits.
    Real(u64),
}

impl Bound {
    fn text(text: Option<&str>) -> Bound {
        match text {
            None => Bound::Null,
            // An empty text gets a pointer to a real (empty, NUL-terminated) string.
            Some("") => Bound::Text(c"".as_ptr() as usize, 0),
            Some(text) => Bound::Text(text.as_ptr() as usize, text.len()),
        }
    }

    fn real(value: Option<f64>) -> Bound {
        value.map_or(Bound::Null, |v| Bound::Real(v.to_bits()))
    }
}

impl Drop for Insert {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared by `Insert::prepare` and is
        // finalized once, here; its connection is still open (see `Db` and
        // `in_memory`: statements drop before their connection).
        unsafe {
            rusqlite::ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// The error SQLite reports for `rc` on `conn`.
fn sqlite_error(conn: &rusqlite::Connection, rc: std::ffi::c_int) -> rusqlite::Error {
    // SAFETY: the handle is the open connection's; `sqlite3_errmsg` returns a
    // NUL-terminated string owned by SQLite, copied before anything else runs
    // on the connection.
    let message = unsafe {
        let text = rusqlite::ffi::sqlite3_errmsg(conn.handle());
        (!text.is_null()).then(|| {
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned()
        })
    };
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), message)
}

impl Insert {
    fn prepare(conn: &rusqlite::Connection, rows: usize) -> rusqlite::Result<Insert> {
        let sql = insert_sql(rows);
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `sql` is valid for its length and outlives the call; SQLite
        // writes the new statement (or null) into `stmt`.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_prepare_v3(
                conn.handle(),
                sql.as_ptr().cast(),
                sql.len() as std::ffi::c_int,
                rusqlite::ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        match std::ptr::NonNull::new(stmt) {
            Some(stmt) if rc == rusqlite::ffi::SQLITE_OK => Ok(Insert {
                stmt,
                rows,
                bound: vec![Bound::Unset; rows * COLUMNS],
                times: vec![[0u8; RFC3339_MILLIS_LEN]; rows].into_boxed_slice(),
            }),
            Some(stmt) => {
                // SAFETY: a statement SQLite made despite the error; finalized once.
                unsafe { rusqlite::ffi::sqlite3_finalize(stmt.as_ptr()) };
                Err(sqlite_error(conn, rc))
            }
            None => Err(sqlite_error(conn, rc)),
        }
    }

    /// Inserts `rows` (exactly `self.rows` of them).
    fn execute(&mut self, conn: &rusqlite::Connection, rows: &[Row]) -> rusqlite::Result<()> {
        assert_eq!(rows.len(), self.rows, "an INSERT of {} rows", self.rows);
        for (time, r) in self.times.iter_mut().zip(rows) {
            write_rfc3339_millis(r.time_ms, time);
        }
        let stmt = self.stmt.as_ptr();
        // SAFETY: every text bound points into `rows` or `self.times`. SQLite
        // reads a bound text during a step only (reset, finalize and
        // rebinding a parameter do not read the text a binding points to),
        // and this function is the only one that steps the statement, after
        // making every parameter hold the row's value: it is bound anew, or
        // it already holds that value. A text parameter is left as it is only
        // when it points at the very bytes the row's text is (the same place
        // and length), which `rows` or `self.times` hold until this function
        // returns; so every pointer SQLite reads during the step is into
        // them, and the pointers the bindings keep after it returns are never
        // read. (Clearing them, 16 a row, cost about 240 instructions a row.)
        // The times are ASCII (`write_rfc3339_millis`), valid UTF-8.
        unsafe {
            let mut rc = rusqlite::ffi::SQLITE_OK;
            let rows = rows
                .iter()
                .zip(self.times.iter())
                .zip(self.bound.chunks_exact_mut(COLUMNS));
            'rows: for (i, ((r, time), held)) in rows.enumerate() {
                let values = row_values(r, Bound::Text(time.as_ptr() as usize, time.len()));
                for (j, (held, value)) in held.iter_mut().zip(values).enumerate() {
                    if *held == value {
                        continue;
                    }
                    rc = bind(stmt, (i * COLUMNS + j + 1) as std::ffi::c_int, value);
                    if rc != rusqlite::ffi::SQLITE_OK {
                        *held = Bound::Unset;
                        break 'rows;
                    }
                    *held = value;
                }
            }
            if rc == rusqlite::ffi::SQLITE_OK {
                rc = rusqlite::ffi::sqlite3_step(stmt);
            }
            let error = (rc != rusqlite::ffi::SQLITE_DONE).then(|| sqlite_error(conn, rc));
            rusqlite::ffi::sqlite3_reset(stmt);
            error.map_or(Ok(()), Err)
        }
    }
}

/// Columns of the `usage` table, parameters of a row.
const COLUMNS: usize = 16;

/// The 16 parameters of `r`, in the order of the columns of [`insert_sql`],
/// its time being the text `time` (written by [`write_rfc3339_millis`]).
fn row_values(r: &Row, time: Bound) -> [Bound; COLUMNS] {
    [
        time,
        Bound::text(r.request_id.as_deref()),
        Bound::text(Some(&r.key)),
        Bound::text(Some(r.ingress)),
        Bound::text(Some(&r.route)),
        Bound::text(r.model.as_deref()),
        Bound::text(r.provider.as_deref()),
        Bound::Int(i64::from(r.status)),
        Bound::Int(r.input_tokens as i64),
        Bound::Int(r.output_tokens as i64),
        Bound::Int(r.cached_tokens as i64),
        Bound::real(Some(r.cost_usd)),
        Bound::real(Some(r.duration_ms)),
        Bound::real(r.ttft_ms),
        Bound::text(r.trace_id.as_deref()),
        Bound::Int(i64::from(r.estimated)),
    ]
}

/// Binds `value` as the parameter `index` (1-based); a text in place, read
/// where it is until the parameter is bound again (`SQLITE_STATIC`).
///
/// # Safety
/// `stmt` is a live statement; a text's bytes stay where they are for as
/// long as SQLite may read them (see [`Insert::execute`]).
unsafe fn bind(
    stmt: *mut rusqlite::ffi::sqlite3_stmt,
    index: std::ffi::c_int,
    value: Bound,
) -> std::ffi::c_int {
    use rusqlite::ffi::{sqlite3_bind_double, sqlite3_bind_int64, sqlite3_bind_null};
    // SAFETY: as the caller promised.
    unsafe {
        match value {
            Bound::Unset | Bound::Null => sqlite3_bind_null(stmt, index),
            Bound::Text(ptr, len) => {
                let Ok(len) = std::ffi::c_int::try_from(len) else {
                    return rusqlite::ffi::SQLITE_TOOBIG;
                };
                rusqlite::ffi::sqlite3_bind_text(
                    stmt,
                    index,
                    ptr as *const std::ffi::c_char,
                    len,
                    rusqlite::ffi::SQLITE_STATIC(),
                )
            }
            Bound::Int(n) => sqlite3_bind_int64(stmt, index, n),
            Bound::Real(bits) => sqlite3_bind_double(stmt, index, f64::from_bits(bits)),
        }
    }
}

/// Writes `rows` in one transaction: statements of 32 rows, then the rest by
/// statements of 16, 8, 4, 2 and 1.
fn insert(
    conn: &mut rusqlite::Connection,
    inserts: &mut Inserts,
    rows: &[Row],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut rest = rows;
    for (slot, size) in inserts.by_size.iter_mut().zip(INSERT_SIZES) {
        while rest.len() >= size {
            let insert = match slot {
                Some(insert) => insert,
                None => slot.insert(Insert::prepare(&tx, size)?),
            };
            let (chunk, after) = rest.split_at(size);
            insert.execute(&tx, chunk)?;
            rest = after;
        }
    }
    tx.commit()
}

/// Tokens and USD spent by each key since `since` (RFC 3339): one read of
/// that time range for every key.
pub fn spent_by_key_since(
    conn: &rusqlite::Connection,
    since: &str,
) -> rusqlite::Result<std::collections::HashMap<String, (u64, f64)>> {
    let mut stmt = conn.prepare(
        "SELECT key, COALESCE(SUM(input_tokens + output_tokens), 0), COALESCE(SUM(cost_usd), 0)
         FROM usage WHERE time >= ?1 GROUP BY key",
    )?;
    stmt.query_map(rusqlite::params![since], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (r.get::<_, i64>(1)? as u64, r.get::<_, f64>(2)?),
        ))
    })?
    .collect()
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

/// The last time each key was used (keys never used are absent).
pub fn last_used_by_key(
    conn: &rusqlite::Connection,
) -> rusqlite::Result<std::collections::HashMap<String, String>> {
    let mut stmt = conn.prepare("SELECT key, MAX(time) FROM usage GROUP BY key")?;
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect()
}

/// RFC 3339 with milliseconds, UTC, for a Unix time in milliseconds.
pub fn rfc3339_millis(ms: u64) -> String {
    let mut buf = [0u8; RFC3339_MILLIS_LEN];
    format_rfc3339_millis(ms, &mut buf).to_string()
}

/// The length of `2026-12-07T17:11:39.123Z`.
const RFC3339_MILLIS_LEN: usize = 24;

/// [`rfc3339_millis`] into `buf`, without `fmt` or an allocation (each row's
/// time is written this way). Years past 9999 are written as 9999-12-31T23:59:59.999Z.
pub fn format_rfc3339_millis(ms: u64, buf: &mut [u8; RFC3339_MILLIS_LEN]) -> &str {
    write_rfc3339_millis(ms, buf);
    // Only ASCII digits and separators were written.
    std::str::from_utf8(buf).unwrap_or("1970-01-01T00:00:00.000Z")
}

/// Writes [`rfc3339_millis`] into `buf`: ASCII only (the ledger binds these
/// bytes as the row's text without checking them again).
fn write_rfc3339_millis(ms: u64, buf: &mut [u8; RFC3339_MILLIS_LEN]) {
    // 10000-01-01T00:00:00Z, less a millisecond.
    let ms = ms.min(253_402_300_799_999);
    let secs = ms / 1000;
    let (year, month, day) = super::period::civil_from_days((secs / 86_400) as i64);
    let (year, month, day) = (year as u64, u64::from(month), u64::from(day));
    let of_day = secs % 86_400;
    let two = |buf: &mut [u8; RFC3339_MILLIS_LEN], at: usize, n: u64| {
        buf[at] = b'0' + (n / 10) as u8;
        buf[at + 1] = b'0' + (n % 10) as u8;
    };
    two(buf, 0, year / 100);
    two(buf, 2, year % 100);
    buf[4] = b'-';
    two(buf, 5, month);
    buf[7] = b'-';
    two(buf, 8, day);
    buf[10] = b'T';
    two(buf, 11, of_day / 3600);
    buf[13] = b':';
    two(buf, 14, of_day / 60 % 60);
    buf[16] = b':';
    two(buf, 17, of_day % 60);
    buf[19] = b'.';
    let millis = ms % 1000;
    buf[20] = b'0' + (millis / 100) as u8;
    two(buf, 21, millis % 100);
    buf[23] = b'Z';
}

/// The Unix milliseconds of an RFC 3339 time (`None`: not one).
pub fn parse_rfc3339_millis(text: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// RFC 3339 (seconds) of a Unix second.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches of any size (statements of 32 rows, and the rest by 16, 8, 4,
    /// 2 and 1) write every field of every row, in order; empty texts stay
    /// empty texts and absent ones NULL.
    #[test]
    fn a_batch_writes_every_field_of_every_row_in_order() {
        for n in [0, 1, 2, 3, 31, 32, 33, 63, 70, 100] {
            batch_of(n);
        }
    }

    fn batch_of(n: u64) {
        let rows: Vec<Row> = (0..n)
            .map(|i| Row {
                time_ms: 1_700_000_000_000 + i,
                request_id: (i % 3 != 0).then(|| format!("req-{i}")),
                key: format!("key-{}", i % 7).into(),
                ingress: if i % 2 == 0 { "http" } else { "nats" },
                route: if i % 11 == 3 {
                    "".into()
                } else {
                    format!("/v1/{}", "x".repeat(i as usize)).into()
                },
                model: (i % 5 != 0).then(|| "gpt-5".to_string()),
                provider: (i % 4 != 0).then(|| "openai".into()),
                status: 200 + (i % 3) as u16,
                input_tokens: i,
                output_tokens: 2 * i,
                cached_tokens: i / 2,
                cost_usd: i as f64 / 8.0,
                duration_ms: i as f64 + 0.5,
                ttft_ms: (i % 2 == 0).then_some(i as f64 / 4.0),
                trace_id: (i % 6 == 0).then(|| format!("{i:032x}")),
                estimated: i % 9 == 0,
            })
            .collect();
        let conn = in_memory(&rows).unwrap();
        assert_eq!(read_back(&conn), rows);
    }

    /// What a ledger holds, in the order written.
    fn read_back(conn: &rusqlite::Connection) -> Vec<Row> {
        let mut stmt = conn
            .prepare(
                "SELECT time, request_id, key, ingress, route, model, provider, status,
                        input_tokens, output_tokens, cached_tokens, cost_usd, duration_ms,
                        ttft_ms, trace_id, estimated FROM usage ORDER BY rowid",
            )
            .unwrap();
        stmt.query_map([], |r| {
            let ingress: String = r.get(3)?;
            let time: String = r.get(0)?;
            Ok(Row {
                time_ms: parse_rfc3339_millis(&time).unwrap(),
                request_id: r.get(1)?,
                key: r.get::<_, String>(2)?.into(),
                ingress: if ingress == "http" { "http" } else { "nats" },
                route: r.get::<_, String>(4)?.into(),
                model: r.get(5)?,
                provider: r.get::<_, Option<String>>(6)?.map(Into::into),
                status: r.get(7)?,
                input_tokens: r.get::<_, i64>(8)? as u64,
                output_tokens: r.get::<_, i64>(9)? as u64,
                cached_tokens: r.get::<_, i64>(10)? as u64,
                cost_usd: r.get(11)?,
                duration_ms: r.get(12)?,
                ttft_ms: r.get(13)?,
                trace_id: r.get(14)?,
                estimated: r.get(15)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// A statement keeps the parameters that hold what the next row has
    /// there (SQLite keeps bindings between steps): across batches, with
    /// texts shared by every row, texts rewritten in place (the same place
    /// and length, other bytes) and values that change or stay, every row is
    /// written with its own values.
    #[test]
    fn bindings_kept_from_one_statement_to_the_next_write_each_rows_own_values() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut inserts = Inserts::default();
        let key: Arc<str> = "alice".into();
        let provider: Arc<str> = "openai".into();
        let mut rows: Vec<Row> = (0..45)
            .map(|i| Row {
                time_ms: 1_700_000_000_000 + i,
                request_id: Some(format!("req-{i:04}")),
                key: key.clone(),
                ingress: "http",
                route: "/v1/chat/completions".into(),
                model: Some("gpt-5".to_string()),
                provider: Some(provider.clone()),
                status: 200,
                input_tokens: 3,
                output_tokens: 4,
                ..Row::default()
            })
            .collect();
        let mut expected = Vec::new();
        for round in 0..5u64 {
            for (i, r) in rows.iter_mut().enumerate() {
                r.time_ms += 1_000;
                // In place: the same allocation and length, other bytes.
                let model = r.model.as_mut().unwrap();
                let before = model.as_ptr();
                model.clear();
                model.push_str(&format!("gpt-{round}"));
                assert_eq!(model.as_ptr(), before);
                let id = r.request_id.as_mut().unwrap();
                id.clear();
                id.push_str(&format!("r{round}-{i:03}"));
                r.status = if i % 3 == 0 { 200 } else { 500 + round as u16 };
                r.ttft_ms = (round == 2).then_some(1.5);
                r.trace_id = (round % 2 == 1).then(|| format!("{i:032x}"));
                r.estimated = round == 3;
                r.cost_usd = (round * i as u64) as f64 / 8.0;
                r.route = if round == 4 {
                    format!("/v1/other/{i}").into()
                } else {
                    "/v1/chat/completions".into()
                };
            }
            // 45 rows: a statement of 32, then 8, 4 and 1.
            insert(&mut conn, &mut inserts, &rows).unwrap();
            expected.extend(rows.iter().cloned());
        }
        drop(inserts);
        assert_eq!(read_back(&conn), expected);
    }

    /// The time column is the text humantime writes, for every millisecond
    /// count (days, leap years, centuries) and the largest one.
    #[test]
    fn times_are_written_as_rfc3339_with_milliseconds() {
        let mut ms = 0u64;
        while ms < 8_000_000_000_000 {
            let expected =
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string();
            assert_eq!(rfc3339_millis(ms), expected);
            assert_eq!(parse_rfc3339_millis(&expected), Some(ms));
            ms = ms * 3 / 2 + 86_399_937;
        }
        for day in 0..200_000u64 {
            let ms = day * 86_400_000 + day * 7_919 % 86_400_000;
            let expected =
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                    .to_string();
            assert_eq!(rfc3339_millis(ms), expected);
        }
        assert_eq!(rfc3339_millis(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn rows_are_written_in_batches_and_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/usage.db");
        let ledger = Ledger::start(path.clone());
        for i in 0..10 {
            assert!(ledger.push(Row {
                time_ms: 1_000 + i,
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
            spent_by_key_since(&conn, "1970-01-01T00:00:00Z").unwrap()["alice"],
            (70, 0.0)
        );
        assert_eq!(
            spent_by_key_since(&conn, &rfc3339_millis(1_005)).unwrap()["alice"],
            (35, 0.0)
        );
        assert_eq!(
            last_used_by_key(&conn).unwrap()["alice"],
            rfc3339_millis(1_009)
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
                time_ms: 1_000 + i,
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
