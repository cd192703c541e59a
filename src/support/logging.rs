//! Log files under `logs/`: one line per event, text or JSON (`logs.format`).
//!
//! Writes never make a request wait on the disk: a formatted line is appended to
//! an in-memory batch (one short lock, no system call), and one writer thread
//! writes each batch with a single `write`. The returned guard writes what is
//! left on drop, so binaries hold it until exit.
//! When stderr is a terminal the same lines are mirrored there, which is what a
//! person running `proxy` in the foreground wants; a detached process (stderr
//! redirected to the log by `daemon`) does not duplicate its lines.

use std::cell::Cell;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Json, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::home::config::{LogFormat, LogTarget};
use crate::home::{Home, LogKind};

/// Installs the global subscriber for a binary writing to `logs/<kind>.log`, or
/// to standard output with `target = Stdout` (containers: `kubectl logs` shows
/// it; the same batched writer, on a duplicate of fd 1). `verbose` lowers the
/// level to debug; `RUST_LOG` overrides both. [`reconfigure`] changes the
/// format and the level later (a reload); the destination stays.
pub fn init(
    home: &Home,
    kind: LogKind,
    format: LogFormat,
    target: LogTarget,
    verbose: bool,
) -> std::io::Result<LogGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let file = match target {
        LogTarget::File => {
            std::fs::create_dir_all(home.logs_dir())?;
            let path = home.log_file(kind);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?
        }
        LogTarget::Stdout => {
            use std::os::fd::AsFd;
            File::from(std::io::stdout().as_fd().try_clone_to_owned()?)
        }
    };
    let (writer, guard) = batched(file)?;
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let (filter, filter_handle) =
        tracing_subscriber::reload::Layer::new(from_env.unwrap_or_else(|| level_filter(verbose)));
    // On a terminal the file's lines are mirrored to stderr; stdout needs no mirror.
    let mirror = target == LogTarget::File && std::io::stderr().is_terminal();
    let stderr = std::io::stderr.with_filter(move |_| mirror);
    let json = Arc::new(AtomicBool::new(format == LogFormat::Json));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .fmt_fields(PlainFields)
        .event_format(Switch {
            json: json.clone(),
            direct: Some(Direct {
                batch: writer.clone(),
                mirror,
            }),
            text: tracing_subscriber::fmt::format()
                .with_timer(LogTime)
                .with_ansi(false)
                .with_target(false),
            json_format: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_timer(LogTime)
                .with_ansi(false)
                .with_target(false),
        })
        .with_writer(writer.and(stderr));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init();
    // A second init in the same process (tests) keeps the first subscriber.
    if installed.is_ok() {
        let _ = CONTROL.set(Control {
            filter: filter_handle,
            fixed_by_env: fixed,
            json,
        });
    }
    Ok(guard)
}

/// The level of `verbose`: libraries speak at warn and above, as their info
/// lines repeat ours (async-nats logs "event: connected" and "connected
/// successfully" per connection, where the proxy logs "NATS connected" once).
fn level_filter(verbose: bool) -> EnvFilter {
    let level = if verbose { "debug" } else { "info" };
    EnvFilter::new(format!(
        "{level},hyper=warn,reqwest=warn,h2=warn,rustls=warn,async_nats=warn"
    ))
}

/// What a reload may change in the installed subscriber.
struct Control {
    filter: tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    /// `RUST_LOG` set the level: `features.verbose` does not change it.
    fixed_by_env: bool,
    json: Arc<AtomicBool>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Applies a reloaded `logs.format` and `features.verbose` to the lines logged
/// from now on (no-op before [`init`]). The level is `RUST_LOG`'s when that is
/// set. A line costs one more atomic load for this; the level is an
/// [`EnvFilter`] behind tracing's reload layer.
pub fn reconfigure(format: LogFormat, verbose: bool) {
    let Some(control) = CONTROL.get() else {
        return;
    };
    control
        .json
        .store(format == LogFormat::Json, Ordering::Relaxed);
    if !control.fixed_by_env {
        if let Err(e) = control.filter.reload(level_filter(verbose)) {
            tracing::warn!(error = %e, "cannot change the log level");
        }
    }
}

/// Text or JSON lines, as [`reconfigure`] last said.
struct Switch {
    json: Arc<AtomicBool>,
    text: Format<Full, LogTime>,
    json_format: Format<Json, LogTime>,
    /// Where [`info_line`] writes a text line itself: the same destinations as
    /// the layer's writer (the batched file, and stderr when `mirror`).
    direct: Option<Direct>,
}

struct Direct {
    batch: BatchWriter,
    mirror: bool,
}

impl<S, N> FormatEvent<S, N> for Switch
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.json.load(Ordering::Relaxed) {
            self.json_format.format_event(ctx, writer, event)
        } else {
            self.text.format_event(ctx, writer, event)
        }
    }
}

/// The logs' timestamps, `2026-01-01T00:00:00.123456Z`: exactly what
/// tracing-subscriber's `SystemTime` writes, but the date and time of day are
/// worked out once per second (per thread) instead of once per line; a line
/// then costs a clock read and six digits.
pub struct LogTime;

/// Seconds since the epoch of 10000-01-01: from there on, tracing-subscriber's
/// own formatting (a `+` and five digits of year).
const YEAR_10000: u64 = 253_402_300_800;

impl FormatTime for LogTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let now = std::time::SystemTime::now();
        let since = match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) if since.as_secs() < YEAR_10000 => since,
            _ => return tracing_subscriber::fmt::time::SystemTime.format_time(w),
        };
        thread_local! {
            static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
        }
        let secs = since.as_secs();
        let prefix = SECOND.with(|cached| match cached.get() {
            (at, prefix) if at == secs => prefix,
            _ => {
                let prefix = date_time(secs);
                cached.set((secs, prefix));
                prefix
            }
        });
        let mut out = [0u8; 27];
        out[..19].copy_from_slice(&prefix);
        out[19] = b'.';
        let mut micros = since.subsec_micros();
        for digit in out[20..26].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out[26] = b'Z';
        w.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of `secs` since the epoch, before year 10000
/// (the civil-from-days algorithm of Howard Hinnant's `chrono`-compatible
/// date algorithms).
fn date_time(secs: u64) -> [u8; 19] {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for digit in out[at..at + width].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    out
}

/// Field formatting for the text log, with exactly the output of
/// tracing-subscriber's `DefaultFields` without ANSI (`name=value`, the value in
/// its `Debug` form, the message as is): the default visitor runs every field
/// name and `=` through its no-op ANSI styling, which was ~4% of a proxied
/// request's instructions. Messages and errors still go through the default
/// visitor (it escapes control characters in them).
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut visitor = PlainVisitor::new(writer);
        fields.record(&mut visitor);
        visitor.line.result
    }
}

struct PlainVisitor<'w> {
    line: Line<Writer<'w>>,
}

impl<'w> PlainVisitor<'w> {
    fn new(writer: Writer<'w>) -> PlainVisitor<'w> {
        PlainVisitor {
            line: Line {
                writer,
                is_empty: true,
                result: Ok(()),
            },
        }
    }
}

/// The fields of one text log line, written as tracing-subscriber's
/// `DefaultFields` writes them (see [`PlainFields`]): shared by the visitor
/// and by [`info_line`] (which writes straight into its line's `String`), so
/// both write the same text.
pub struct Line<W: std::fmt::Write> {
    writer: W,
    is_empty: bool,
    result: std::fmt::Result,
}

impl<W: std::fmt::Write> Line<W> {
    /// The separating space before every field but the first.
    fn pad(&mut self) {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
    }

    /// Writes one field the way `DefaultVisitor` does, on an already padded line,
    /// with control characters escaped.
    fn with_default_visitor(
        &mut self,
        f: impl FnOnce(&mut DefaultVisitor<'_>),
    ) -> std::fmt::Result {
        let mut escaping = Escaping(&mut self.writer);
        let mut inner = DefaultVisitor::new(Writer::new(&mut escaping), true);
        f(&mut inner);
        inner.finish()
    }

    /// `name=text`, where `text` is already what `{:?}` would print and holds no
    /// control character.
    fn plain_field(&mut self, name: &str, text: &str) {
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        self.pad();
        let name = name.strip_prefix("r#").unwrap_or(name);
        let w = &mut self.writer;
        self.result = w
            .write_str(name)
            .and_then(|()| w.write_char('='))
            .and_then(|()| w.write_str(text));
    }

    /// A `u64` field (`name = value`).
    pub fn u64(&mut self, name: &str, value: u64) {
        let mut digits = [0u8; 20];
        self.plain_field(name, decimal(value, &mut digits));
    }

    /// An `f64` field (`name = value`) whose value is `micros / 1000.0` (a
    /// duration in milliseconds to the microsecond), `micros` a whole number:
    /// the same text, without float formatting.
    pub fn millis(&mut self, name: &str, micros: f64) {
        // Below 2^53 a whole number of microseconds over 1000 is printed as
        // its decimal digits: `{:?}` of an f64 is the shortest text that reads
        // back as the same value, and in decimal notation from 1e-4 to 1e16.
        if !(0.0..1e15).contains(&micros) || micros.fract() != 0.0 {
            self.f64(name, micros / 1000.0);
            return;
        }
        let micros = micros as u64;
        let mut digits = [0u8; 20];
        let whole = decimal(micros / 1000, &mut digits);
        let mut text = [0u8; 24];
        text[..whole.len()].copy_from_slice(whole.as_bytes());
        let mut len = whole.len();
        text[len] = b'.';
        let mut fraction = micros % 1000;
        let mut places = [b'0'; 3];
        for place in places.iter_mut().rev() {
            *place = b'0' + (fraction % 10) as u8;
            fraction /= 10;
        }
        // Trailing zeros dropped, one digit kept.
        let keep = places.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
        text[len + 1..len + 1 + keep].copy_from_slice(&places[..keep]);
        len += 1 + keep;
        // Only ASCII digits and a point were written.
        self.plain_field(name, std::str::from_utf8(&text[..len]).unwrap_or("0.0"));
    }

    /// An `f64` field (`name = value`).
    pub fn f64(&mut self, name: &str, value: f64) {
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        self.pad();
        let name = name.strip_prefix("r#").unwrap_or(name);
        // `{:?}` of a float is digits, `.`, `-`, `e`, `inf` or `NaN`: nothing to escape.
        self.result =
            std::fmt::Write::write_fmt(&mut self.writer, format_args!("{name}={value:?}"));
    }

    /// A `&str` field other than the message (`name = value`).
    pub fn str(&mut self, name: &str, value: &str) {
        if !name.starts_with("log.") && is_plain_debug(value) {
            if self.result.is_ok() {
                self.pad();
                let name = name.strip_prefix("r#").unwrap_or(name);
                let w = &mut self.writer;
                self.result = w
                    .write_str(name)
                    .and_then(|()| w.write_str("=\""))
                    .and_then(|()| w.write_str(value))
                    .and_then(|()| w.write_char('"'));
            }
            return;
        }
        self.debug(name, &value);
    }

    /// A field given as `name = %value`.
    pub fn display(&mut self, name: &str, value: &dyn std::fmt::Display) {
        self.debug(name, &tracing::field::display(value));
    }

    /// A field given as `name = %crate::support::redact::client(text)`.
    pub fn client(&mut self, name: &str, text: &str) {
        let shown = crate::support::redact::client(text);
        if shown.is_plain() {
            // Shown unchanged, and with no control character to escape.
            self.plain_field(name, text);
        } else {
            self.display(name, &shown);
        }
    }

    /// A field recorded by its `Debug` form (not the message).
    fn debug(&mut self, name: &str, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        self.pad();
        if self.result.is_err() {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        // Control characters are escaped: a value (a client's string, an
        // upstream's error) can never start a forged line (docs/contract.md §10).
        self.result = std::fmt::Write::write_fmt(
            &mut Escaping(&mut self.writer),
            format_args!("{name}={value:?}"),
        );
    }
}

impl Visit for PlainVisitor<'_> {
    // Numbers and plain strings are written directly: the same text as
    // `name={value:?}`, without the formatting machinery and the control-character
    // scan (a number has none; a plain string is checked for them here). The
    // access log line is mostly such fields.
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.line.u64(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if value < 0 {
            self.record_debug(field, &value);
        } else {
            self.record_u64(field, value.unsigned_abs());
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.line.f64(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.line
            .plain_field(field.name(), if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let line = &mut self.line;
            if line.result.is_ok() {
                line.pad();
                let done = line.with_default_visitor(|inner| inner.record_str(field, value));
                line.result = line.result.and(done);
            }
        } else {
            self.line.str(field.name(), value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let line = &mut self.line;
        if line.result.is_ok() {
            line.pad();
            let done = line.with_default_visitor(|inner| inner.record_error(field, value));
            line.result = line.result.and(done);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() != "message" {
            self.line.debug(field.name(), value);
            return;
        }
        let line = &mut self.line;
        if line.result.is_err() {
            return;
        }
        line.pad();
        if line.result.is_err() {
            return;
        }
        line.result = line.with_default_visitor(|inner| inner.record_debug(field, value));
    }
}

/// Writes one INFO line of the text log, `message` then the fields `fields`
/// adds, exactly as `tracing::info!(fields..., message)` would, without
/// tracing's event machinery (the access log's line per request was 8% of a
/// proxied request's instructions that way). Returns false, having written
/// nothing, when the line must go through tracing instead: JSON lines, or
/// another subscriber than [`init`]'s (tests). The caller checks that the
/// level is enabled for its target (`tracing::enabled!`); `message` holds no
/// control character.
pub fn info_line(message: &'static str, fields: impl FnOnce(&mut Line<&mut String>)) -> bool {
    use std::cell::RefCell;
    thread_local! {
        static BUF: RefCell<String> = const { RefCell::new(String::new()) };
    }
    let mut fields = Some(fields);
    tracing::dispatcher::get_default(|dispatch| {
        let Some(fields) = fields.take() else {
            return false;
        };
        let Some(switch) = dispatch.downcast_ref::<Switch>() else {
            return false;
        };
        let Some(direct) = &switch.direct else {
            return false;
        };
        if switch.json.load(Ordering::Relaxed) {
            return false;
        }
        BUF.with(|buf| {
            let Ok(mut buf) = buf.try_borrow_mut() else {
                return false;
            };
            buf.clear();
            // As `Format<Full, _>` writes it: time, the level padded to 5, the message.
            if LogTime.format_time(&mut Writer::new(&mut *buf)).is_err() {
                buf.push_str("<unknown time>");
            }
            buf.push_str("  INFO ");
            let _ = crate::support::redact::escape_controls(message, &mut *buf);
            let mut line = Line {
                writer: &mut *buf,
                is_empty: false,
                result: Ok(()),
            };
            fields(&mut line);
            buf.push('\n');
            let _ = (&direct.batch).write_all(buf.as_bytes());
            if direct.mirror {
                let _ = std::io::stderr().write_all(buf.as_bytes());
            }
            buf.clear();
            if buf.capacity() > 4096 {
                buf.shrink_to(1024);
            }
            true
        })
    })
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// Whether `{:?}` of `s` is `s` in double quotes: printable ASCII without `"` or
/// `\\` (everything else `Debug` escapes, or the control-character escaping must see).
fn is_plain_debug(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// Writes through to `W` with control characters escaped.
struct Escaping<'a, W: std::fmt::Write>(&'a mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        crate::support::redact::escape_controls(s, self.0)
    }
}

/// Lines waiting for the writer beyond this make the logging thread wait (as a
/// bounded, non-lossy queue would): memory stays bounded if the disk stalls.
const MAX_PENDING: usize = 8 << 20;
/// After writing a batch the writer pauses this long, so under load a batch
/// holds many lines and no thread is woken per line; a line logged while the
/// writer is idle is written at once.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

struct Shared {
    state: Mutex<Pending>,
    /// The writer waits here for lines (or the end).
    wake: Condvar,
    /// Loggers wait here while `MAX_PENDING` is reached.
    room: Condvar,
}

struct Pending {
    lines: Vec<u8>,
    /// The writer is waiting on `wake`: the next line must notify it.
    idle: bool,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` of a batched log file. Each event is formatted first and
/// arrives here as one `write` of whole lines, so batches never split a line.
#[derive(Clone)]
pub struct BatchWriter(Arc<Shared>);

impl Write for &BatchWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let shared = &self.0;
        let mut pending = shared.lock();
        while pending.lines.len() >= MAX_PENDING && !pending.closed {
            pending = shared
                .room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if pending.closed {
            // The guard is gone (the process is ending): nothing writes any more.
            return Ok(data.len());
        }
        pending.lines.extend_from_slice(data);
        let wake = std::mem::take(&mut pending.idle);
        drop(pending);
        if wake {
            shared.wake.notify_one();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Writes the rest of the log and stops its writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A batched writer for `file` and the guard that owns its writer thread.
pub fn batched(file: File) -> std::io::Result<(BatchWriter, LogGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(Pending {
            lines: Vec::new(),
            idle: false,
            closed: false,
        }),
        wake: Condvar::new(),
        room: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || write_batches(&shared, file)
        })?;
    Ok((
        BatchWriter(shared.clone()),
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches(shared: &Shared, mut file: File) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut pending = shared.lock();
            while pending.lines.is_empty() && !pending.closed {
                pending.idle = true;
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.idle = false;
            if pending.lines.is_empty() {
                return; // closed, and everything is written
            }
            std::mem::swap(&mut pending.lines, &mut batch);
            pending.closed
        };
        shared.room.notify_all();
        // A failed write (disk full) loses this batch; there is nowhere better
        // to say so than the log itself.
        let _ = file.write_all(&batch);
        batch.clear();
        if batch.capacity() > 1 << 20 {
            batch.shrink_to(64 << 10);
        }
        if !closed {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// A log writer that keeps what it is given, for a subscriber in a test.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn batched_lines_are_all_written_by_the_time_the_guard_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let file = std::fs::File::create(&path).unwrap();
        let (writer, guard) = super::batched(file).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let writer = &writer;
                s.spawn(move || {
                    for i in 0..1000 {
                        (&mut &*writer)
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<_> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<_> = (0..1000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected, "each thread's lines whole and in order");
        }
    }

    /// Text lines with PlainFields are byte for byte those of DefaultFields.
    #[test]
    fn plain_fields_format_exactly_like_default_fields() {
        fn emit() {
            let err = std::io::Error::other(std::io::Error::other("inner\x1bcause"));
            tracing::info!(
                route = "/v1/chat/completions",
                status = 200u16,
                duration_ms = 0.123456,
                model = %"gpt-5",
                prompt_tokens = 7u64,
                completion_tokens = 0u64,
                "request"
            );
            tracing::warn!(error = %"upstream said \"no\"", "stream ended with an error");
            tracing::info!(
                r#type = "x",
                neg = -5i64,
                yes = true,
                big = 1u128 << 100,
                "a\x1b[31m b\n c"
            );
            tracing::info!(
                empty = "",
                quoted = "a \"b\" c\\d",
                accented = "caf\u{e9}",
                tab = "a\tb",
                zero = 0u64,
                max = u64::MAX,
                min = i64::MIN,
                pos = 42i64,
                no = false,
                ratio = 0.5f64,
                whole = 2.0f64,
                tiny = 1e-9f64,
                nan = f64::NAN,
                "plain fast paths"
            );
            tracing::error!(error = &err as &(dyn std::error::Error + 'static), "failed");
            tracing::info!(only = ?Some("field"));
            tracing::info!("{} formatted {:?}", 1, "two");
            let span = tracing::info_span!("outer", id = 3u8, name = "n");
            let _entered = span.enter();
            tracing::info!(inside = 1.0f64, "in a span");
        }
        let lines = |plain: bool| {
            let buf = Buf::default();
            let writer = buf.clone();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_target(false)
                .without_time()
                .with_writer(move || writer.clone());
            if plain {
                tracing::subscriber::with_default(
                    builder.fmt_fields(super::PlainFields).finish(),
                    emit,
                );
            } else {
                tracing::subscriber::with_default(builder.finish(), emit);
            }
            String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
        };
        let (default, plain) = (lines(false), lines(true));
        assert!(
            default.contains("status=200 duration_ms=0.123456"),
            "{default}"
        );
        // The one intended difference: a newline inside a value is escaped, so no
        // line can be forged (DefaultFields writes it raw).
        assert_eq!(plain, default.replace("b\n c", "b\\n c"));
    }

    /// `info_line` writes what `tracing::info!` with the same fields writes
    /// through the proxy's subscriber; with JSON lines on it writes nothing.
    #[test]
    fn info_line_writes_what_tracing_writes() {
        use tracing_subscriber::layer::SubscriberExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (writer, guard) = super::batched(std::fs::File::create(&path).unwrap()).unwrap();
        let json = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(super::PlainFields)
            .event_format(super::Switch {
                json: json.clone(),
                text: tracing_subscriber::fmt::format()
                    .with_timer(super::LogTime)
                    .with_ansi(false)
                    .with_target(false),
                json_format: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_timer(super::LogTime)
                    .with_ansi(false)
                    .with_target(false),
                direct: Some(super::Direct {
                    batch: writer.clone(),
                    mirror: false,
                }),
            })
            .with_writer(writer);
        let subscriber = tracing_subscriber::registry().with(layer);
        let models = [
            "gpt-5",
            "m\nforged\r\x1b[2K",
            &"x".repeat(300),
            "caf\u{e9} \"q\"",
        ];
        let providers = ["default", "a \"b\"", "tab\there", "-"];
        tracing::subscriber::with_default(subscriber, || {
            for (i, (model, provider)) in models.iter().zip(providers).enumerate() {
                let (status, duration_ms, tokens) = (200 + i as u16, 0.001 * i as f64, i as u64);
                let trace_id = format!("{i:032x}");
                tracing::info!(
                    ingress = "http",
                    route = "/v1/chat/completions",
                    status,
                    duration_ms,
                    model = %crate::support::redact::client(model),
                    provider,
                    failovers = i as u32,
                    prompt_tokens = tokens,
                    completion_tokens = u64::MAX - tokens,
                    trace_id = %trace_id,
                    "request"
                );
                assert!(super::info_line("request", |line| {
                    line.str("ingress", "http");
                    line.str("route", "/v1/chat/completions");
                    line.u64("status", u64::from(status));
                    line.f64("duration_ms", duration_ms);
                    line.client("model", model);
                    line.str("provider", provider);
                    line.u64("failovers", i as u64);
                    line.u64("prompt_tokens", tokens);
                    line.u64("completion_tokens", u64::MAX - tokens);
                    line.display("trace_id", &trace_id);
                }));
                tracing::info!(
                    ingress = "nats",
                    route = "/v1/*",
                    status,
                    duration_ms = 12.5,
                    "request"
                );
                assert!(super::info_line("request", |line| {
                    line.str("ingress", "nats");
                    line.str("route", "/v1/*");
                    line.u64("status", u64::from(status));
                    line.f64("duration_ms", 12.5);
                }));
            }
            json.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(
                !super::info_line("request", |_| {}),
                "JSON lines go through tracing"
            );
        });
        assert!(
            !super::info_line("request", |_| {}),
            "another subscriber: through tracing"
        );
        drop(guard);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 16, "{text}");
        for pair in lines.chunks(2) {
            // The same but for the time (`2026-01-01T00:00:00.123456Z`).
            assert_eq!(pair[0].as_bytes()[26], b'Z', "{}", pair[0]);
            assert_eq!(pair[0][27..], pair[1][27..], "tracing, then info_line");
            assert_eq!(pair[0][..19].len(), pair[1][..19].len());
        }
        assert!(lines[0].contains("  INFO request ingress=\"http\" route=\"/v1/chat/completions\" status=200 duration_ms=0.0 model=gpt-5 provider=\"default\" failovers=0"), "{}", lines[0]);
    }

    #[test]
    fn millis_are_written_as_their_f64_is() {
        let text = |micros: f64, fast: bool| {
            let mut out = String::new();
            let mut line = super::Line {
                writer: &mut out,
                is_empty: true,
                result: Ok(()),
            };
            if fast {
                line.millis("d", micros);
            } else {
                line.f64("d", micros / 1000.0);
            }
            out
        };
        let mut samples = vec![
            0.0, 1.0, 10.0, 100.0, 999.0, 1000.0, 1001.0, 1010.0, 1100.0, 123_456.0,
        ];
        samples.extend([
            9_007_199_254_740_991.0,
            1e15 - 1.0,
            1e15,
            0.5,
            -1.0,
            f64::NAN,
            f64::INFINITY,
        ]);
        let mut n: u64 = 1;
        while n < 1 << 50 {
            samples.extend([n as f64, (n * 7 + 3) as f64, (n * 1000) as f64]);
            n = n * 3 + 1;
        }
        for micros in samples {
            assert_eq!(text(micros, true), text(micros, false), "{micros}");
        }
    }

    #[test]
    fn log_time_writes_what_tracing_subscribers_system_time_writes() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (951_868_799, "2000-02-29T23:59:59"),
            (1_767_225_599, "2025-12-31T23:59:59"),
            (1_796_613_945, "2026-12-07T03:25:45"),
            (4_102_444_800, "2100-01-01T00:00:00"),
            (253_402_300_799, "9999-12-31T23:59:59"),
        ] {
            assert_eq!(std::str::from_utf8(&super::date_time(secs)).unwrap(), text);
        }
        use tracing_subscriber::fmt::format::Writer;
        use tracing_subscriber::fmt::time::FormatTime;
        // Both read the clock: the same second (retried across a second's turn),
        // the same layout.
        for _ in 0..3 {
            let (mut ours, mut theirs) = (String::new(), String::new());
            super::LogTime
                .format_time(&mut Writer::new(&mut ours))
                .unwrap();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
            assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
            if ours[..19] == theirs[..19] {
                return;
            }
        }
        panic!("never the same second");
    }

    #[test]
    fn a_client_value_cannot_forge_a_log_line() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(super::PlainFields)
            .with_writer(move || writer.clone())
            .finish();
        let forged = "m\n2026-01-01T00:00:00Z  INFO warden proxy stopped\r\x1b[2K";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(model = %forged, error = forged, "request");
            tracing::info!("{forged}");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\r') && !text.contains('\x1b'), "{text}");
    }

    #[test]
    fn an_idle_writer_writes_a_line_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let (writer, _guard) = super::batched(std::fs::File::create(&path).unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        (&mut &writer).write_all(b"hello\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::fs::read_to_string(&path).unwrap() != "hello\n" {
            assert!(std::time::Instant::now() < deadline, "line not written");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
