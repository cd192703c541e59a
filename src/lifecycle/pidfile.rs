//! Locked PID files (docs/contract.md §4).
//!
//! The process that owns `run/proxy.pid` (or `run/watchdog.pid`) holds an exclusive
//! `flock` on it for its whole life, so "the lock can be taken" means "stale" — no
//! guessing from PIDs. Line 1 is the PID alone (scripts read it); `key=value` lines
//! follow with what identifies the process ([`PidRecord`]).
//!
//! Every write goes to a locked temporary file that is renamed over the path, so a
//! reader never sees half a record and the file is never unlocked while its owner
//! lives. Anyone who locks a file re-checks that the path still names the inode they
//! locked (a rename may have replaced it meanwhile) and retries if not.
//!
//! Renames and removals also take a short lock on the directory, so that an owner
//! leaving (which removes the file only if it is still its own) cannot race a
//! successor's [`replace`] and delete the successor's file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::lifecycle::process::ProcessIdentity;

/// Mode of PID files: readable by scripts and monitoring, writable by the owner.
const PID_FILE_MODE: u32 = 0o644;
/// How many times a lock attempt is retried when the path was swapped under it.
const RETRIES: usize = 20;
/// How long to wait for the short-lived directory lock.
const DIR_LOCK_WAIT: Duration = Duration::from_secs(2);
/// The most of a PID file that is ever read: a record is a few short lines, and a
/// huge file in its place (or a corrupted one) must not cost its size in memory.
pub const MAX_PID_FILE_BYTES: u64 = 4096;

/// Reads at most [`MAX_PID_FILE_BYTES`] of an open PID file as text; a larger file
/// is an error that says so (nothing more of it is read).
fn read_bounded(file: &mut File) -> Result<String, RecordError> {
    let mut bytes = Vec::new();
    file.take(MAX_PID_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| RecordError::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_PID_FILE_BYTES {
        let size = file.metadata().map_or(bytes.len() as u64, |m| m.len());
        return Err(RecordError::TooLarge { size });
    }
    String::from_utf8(bytes).map_err(|_| RecordError::NotText)
}

/// The record in the file at `path`, read with the bound, when it parses.
pub fn read_record(path: &Path) -> Option<PidRecord> {
    let mut file = open_existing(path).ok()??;
    PidRecord::parse(&read_bounded(&mut file).ok()?).ok()
}

/// Why the file at `path` is not a PID record (read with the bound); `None` when
/// it is one or cannot be opened.
pub fn content_problem(path: &Path) -> Option<String> {
    let mut file = open_existing(path).ok()??;
    let problem = match read_bounded(&mut file) {
        Err(problem) => problem,
        Ok(text) => PidRecord::parse(&text).err()?,
    };
    Some(format!("{}: {problem}", path.display()))
}

/// Line 1 of the file at `path` as a PID, read with the bound.
pub fn read_first_pid(path: &Path) -> Option<i32> {
    let mut file = open_existing(path).ok()??;
    read_bounded(&mut file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|&p: &i32| p > 0)
}

/// What a PID file says about its process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: i32,
    /// Clock ticks after boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
    pub exe: PathBuf,
    /// The port the process listens on, once it knows it.
    pub port: Option<u16>,
    /// When the record was first written, RFC 3339 (UTC, seconds).
    pub started_at: String,
    pub home: PathBuf,
}

impl PidRecord {
    /// The identity to verify before signalling this process.
    pub fn identity(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.start_time,
            exe: self.exe.clone(),
        }
    }

    /// A record for the calling process.
    pub fn for_current_process(home: &Path, port: Option<u16>) -> io::Result<PidRecord> {
        let me = ProcessIdentity::current()?;
        Ok(PidRecord {
            pid: me.pid,
            start_time: me.start_time,
            exe: me.exe,
            port,
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            home: home.to_path_buf(),
        })
    }

    /// Parses a PID file. Unknown keys are ignored (newer versions may add some);
    /// `start_time`, `exe`, `started_at` and `home` are required.
    pub fn parse(content: &str) -> Result<PidRecord, RecordError> {
        let mut lines = content.lines();
        let first = lines.next().unwrap_or("").trim();
        let pid: i32 = match first.parse() {
            Ok(pid) if pid > 0 => pid,
            _ => {
                return Err(RecordError::NotAPid {
                    found: first.to_string(),
                });
            }
        };
        let (mut start_time, mut exe, mut port, mut started_at, mut home) =
            (None, None, None, None, None);
        for (n, line) in lines.enumerate() {
            let n = n + 2;
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| RecordError::NotAPair {
                line: n,
                found: line.to_string(),
            })?;
            let bad = |expected: &'static str| RecordError::BadValue {
                line: n,
                key: key.to_string(),
                expected,
                found: value.to_string(),
            };
            match key {
                "start_time" => start_time = Some(value.parse().map_err(|_| bad("a number"))?),
                "exe" => exe = Some(PathBuf::from(value)),
                "port" if value.is_empty() => port = None,
                "port" => port = Some(value.parse().map_err(|_| bad("a port number"))?),
                "started_at" => started_at = Some(value.to_string()),
                "home" => home = Some(PathBuf::from(value)),
                _ => {}
            }
        }
        let missing = |key: &'static str| RecordError::Missing { key };
        Ok(PidRecord {
            pid,
            start_time: start_time.ok_or_else(|| missing("start_time"))?,
            exe: exe.ok_or_else(|| missing("exe"))?,
            port,
            started_at: started_at.ok_or_else(|| missing("started_at"))?,
            home: home.ok_or_else(|| missing("home"))?,
        })
    }

    /// The file content: the PID alone on line 1, then `key=value` lines.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\nstart_time={}\nexe={}\n",
            self.pid,
            self.start_time,
            self.exe.display()
        );
        if let Some(port) = self.port {
            out.push_str(&format!("port={port}\n"));
        }
        out.push_str(&format!(
            "started_at={}\nhome={}\n",
            self.started_at,
            self.home.display()
        ));
        out
    }

    fn describe(&self) -> String {
        let port = self.port.map(|p| format!(", port {p}")).unwrap_or_default();
        format!(
            "PID {} ({}{port}, since {})",
            self.pid,
            self.exe.display(),
            self.started_at
        )
    }
}

/// Why a PID file's content is not a full record (line numbers are 1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read it: {0}")]
    Read(String),
    #[error(
        "it is {size} bytes, not a PID file (those are at most {} KiB; only that much was read)",
        MAX_PID_FILE_BYTES / 1024
    )]
    TooLarge { size: u64 },
    #[error("it is not text")]
    NotText,
    #[error("line 1 should be a PID (a positive number), found {found:?}")]
    NotAPid { found: String },
    #[error("line {line} should be key=value, found {found:?}")]
    NotAPair { line: usize, found: String },
    #[error("line {line}: {key} should be {expected}, found {found:?}")]
    BadValue {
        line: usize,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("the {key}= line is missing")]
    Missing { key: &'static str },
}

/// Why a PID file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("{}", held_message(path, holder))]
    Held {
        path: PathBuf,
        /// The record of the live holder, when its content parses.
        holder: Option<PidRecord>,
    },
    #[error("cannot write the PID file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn held_message(path: &Path, holder: &Option<PidRecord>) -> String {
    match holder {
        Some(r) => format!(
            "{} is locked by running {}: another instance owns it; stop that one first",
            path.display(),
            r.describe()
        ),
        None => format!(
            "{} is locked by a running process whose record cannot be read; \
             find it with `fuser {}` and stop it first",
            path.display(),
            path.display()
        ),
    }
}

/// What a PID file says, judged by its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidState {
    /// No file.
    Absent,
    /// The lock is held and the record parses.
    Running(PidRecord),
    /// The lock is held, but the content is not a full record (written by something
    /// else, or an older version). `pid` is line 1 when that parses.
    Busy { pid: Option<i32>, problem: String },
    /// The lock can be taken: its owner is gone. `None` when the content is unreadable.
    Stale(Option<PidRecord>),
}

/// Owns a PID file for the life of the process: holds its lock, and removes the file
/// on drop if the path still refers to the file it wrote.
#[derive(Debug)]
pub struct PidFileGuard {
    path: PathBuf,
    record: PidRecord,
    /// The locked file the path refers to (as far as we know).
    current: Flock<File>,
    /// The file the path referred to before our last rename, kept locked so that a
    /// process that opened it just before the rename finds it held.
    previous: Option<Flock<File>>,
    dev: u64,
    ino: u64,
}

impl PidFileGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&self) -> &PidRecord {
        &self.record
    }

    /// Whether the path still names the file this guard wrote (no successor has
    /// taken it over).
    pub fn is_current(&self) -> bool {
        same_inode_as_path(&self.path, self.dev, self.ino).unwrap_or(false)
    }

    /// Rewrites the record with a new port, atomically. Fails without writing if the
    /// path no longer refers to our file (a successor took it over).
    pub fn update_port(&mut self, port: Option<u16>) -> io::Result<()> {
        let mut record = self.record.clone();
        record.port = port;
        let _dir = lock_dir(&self.path)?;
        match same_inode_as_path(&self.path, self.dev, self.ino) {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let now = read_record(&self.path)
                    .map(|r| format!("now belongs to {}", r.describe()))
                    .unwrap_or_else(|| "was removed or replaced".into());
                return Err(io::Error::other(format!(
                    "{} {now}; not overwriting it with PID {}'s record",
                    self.path.display(),
                    record.pid
                )));
            }
        }
        let (file, dev, ino) = write_locked(&self.path, &record)?;
        let old = std::mem::replace(&mut self.current, file);
        self.previous = Some(old);
        (self.dev, self.ino, self.record) = (dev, ino, record);
        Ok(())
    }
}

impl Drop for PidFileGuard {
    fn drop(&mut self) {
        // Failing to get the directory lock leaves the file behind: stale (its lock
        // is released below) and therefore harmless, unlike removing a successor's.
        let Ok(_dir) = lock_dir(&self.path) else {
            return;
        };
        if let Ok(true) = same_inode_as_path(&self.path, self.dev, self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
        // Locks are released when `current` and `previous` drop, after the unlink.
    }
}

/// Takes the PID file at `path` for `record`'s process: fails with
/// [`PidFileError::Held`] while a live process holds it; replaces a stale one.
pub fn acquire(path: &Path, record: &PidRecord) -> Result<PidFileGuard, PidFileError> {
    let io_err = |source: io::Error| PidFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    create_parent(path).map_err(io_err)?;
    for _ in 0..RETRIES {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PID_FILE_MODE)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .and_then(|f| regular_file(f, path))
            .map_err(|e| io_err(with_path(e, "open", path)))?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => {
                let holder = read_record(path);
                return Err(PidFileError::Held {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Err((_, e)) => return Err(io_err(with_path(e.into(), "lock", path))),
        };
        // A previous owner may have removed the file, or a competitor renamed its
        // own over it, between our open and our lock: then this lock means nothing.
        let meta = locked.metadata().map_err(io_err)?;
        if !same_inode_as_path(path, meta.dev(), meta.ino()).map_err(io_err)? {
            continue;
        }
        let _dir = lock_dir(path).map_err(io_err)?;
        let (current, dev, ino) = write_locked(path, record).map_err(io_err)?;
        return Ok(PidFileGuard {
            path: path.to_path_buf(),
            record: record.clone(),
            current,
            previous: Some(locked),
            dev,
            ino,
        });
    }
    Err(io_err(io::Error::other(format!(
        "{} kept changing while we tried to lock it ({RETRIES} attempts); \
         is another process rewriting it in a loop?",
        path.display()
    ))))
}

/// The hand-off used by a zero-downtime restart: writes `record` (the new process's)
/// locked over the PID file even though the old process still holds its lock. The
/// old guard's drop will then leave the new file alone.
pub fn replace(path: &Path, record: &PidRecord) -> io::Result<PidFileGuard> {
    create_parent(path)?;
    let _dir = lock_dir(path)?;
    let (current, dev, ino) = write_locked(path, record)?;
    Ok(PidFileGuard {
        path: path.to_path_buf(),
        record: record.clone(),
        current,
        previous: None,
        dev,
        ino,
    })
}

/// Looks at a PID file without blocking, without creating it and without keeping
/// any lock.
pub fn inspect(path: &Path) -> io::Result<PidState> {
    for attempt in 0..RETRIES {
        let Some(file) = open_existing(path)? else {
            return Ok(PidState::Absent);
        };
        let (mut file, held) = match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // Released right away: we only wanted to know whether we could.
            Ok(locked) => match locked.unlock() {
                Ok(file) => (file, false),
                Err((_, e)) => return Err(with_path(e.into(), "unlock", path)),
            },
            Err((file, Errno::EWOULDBLOCK)) => (file, true),
            Err((_, e)) => return Err(with_path(e.into(), "lock", path)),
        };
        let meta = file.metadata()?;
        if !same_inode_as_path(path, meta.dev(), meta.ino())? {
            continue; // replaced while we looked: look again
        }
        let content = read_bounded(&mut file);
        if held && content.as_deref().is_ok_and(str::is_empty) && attempt + 1 < RETRIES {
            // `acquire` creates and locks the file a moment before it renames the
            // full record over it: look again rather than call that "foreign".
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let parsed = content
            .as_deref()
            .map_err(|e| e.clone())
            .and_then(PidRecord::parse);
        let content = content.unwrap_or_default();
        return Ok(match (held, parsed) {
            (false, parsed) => PidState::Stale(parsed.ok()),
            (true, Ok(record)) => PidState::Running(record),
            (true, Err(problem)) => PidState::Busy {
                pid: content
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .filter(|&p: &i32| p > 0),
                problem: format!("{}: {problem}", path.display()),
            },
        });
    }
    Err(io::Error::other(format!(
        "{} kept changing while we looked at it ({RETRIES} attempts)",
        path.display()
    )))
}

/// Removes the PID file if, and only if, its lock can be taken (its owner is gone).
/// Returns whether a file was removed. A held file is never touched.
pub fn remove_stale(path: &Path) -> io::Result<bool> {
    let Some(file) = open_existing(path)? else {
        return Ok(false);
    };
    let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
        Err((_, e)) => return Err(with_path(e.into(), "lock", path)),
    };
    let meta = locked.metadata()?;
    let _dir = lock_dir(path)?;
    // Someone may have taken the path over since we opened it.
    if !same_inode_as_path(path, meta.dev(), meta.ino())? {
        return Ok(false);
    }
    std::fs::remove_file(path).map_err(|e| with_path(e, "remove", path))?;
    drop(locked);
    Ok(true)
}

/// Opens an existing PID file read-only, without blocking (a FIFO in its place must
/// not hang `doctor`); `None` when there is none.
fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => regular_file(f, path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(with_path(e, "open", path)),
    }
}

fn regular_file(file: File, path: &Path) -> io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file; a PID file cannot live there (move it away)",
                path.display()
            ),
        ))
    }
}

fn with_path(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {action} {}: {e}", path.display()))
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn create_parent(path: &Path) -> io::Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| with_path(e, "create directory", dir))
}

/// Whether `path` currently names the inode `(dev, ino)`; `false` when it is gone.
fn same_inode_as_path(path: &Path, dev: u64, ino: u64) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.dev() == dev && m.ino() == ino),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(with_path(e, "stat", path)),
    }
}

/// A short exclusive lock on the PID file's directory, serialising renames over the
/// path with the owner's "remove if still mine". Waits at most [`DIR_LOCK_WAIT`].
fn lock_dir(path: &Path) -> io::Result<Flock<File>> {
    let dir = parent_dir(path);
    let deadline = Instant::now() + DIR_LOCK_WAIT;
    let mut file = File::open(dir).map_err(|e| with_path(e, "open directory", dir))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "directory {} stayed locked for {DIR_LOCK_WAIT:?}; \
                         another process holds a lock on it (see `fuser {}`)",
                        dir.display(),
                        dir.display()
                    ),
                ));
            }
            Err((_, e)) => return Err(with_path(e.into(), "lock directory", dir)),
        }
    }
}

/// Writes `record` to a temporary file beside `path`, locks it, and renames it over
/// `path`: the file appears complete and already locked. Returns the locked file and
/// its (dev, ino). The caller holds the directory lock.
fn write_locked(path: &Path, record: &PidRecord) -> io::Result<(Flock<File>, u64, u64)> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| with_path(e, "create a temporary file in", dir))?;
    let (mut file, tmp_path) = tmp.into_parts();
    file.set_permissions(std::fs::Permissions::from_mode(PID_FILE_MODE))?;
    file.write_all(record.render().as_bytes())?;
    file.sync_all()?;
    let locked = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| with_path(e.into(), "lock", &tmp_path))?;
    let meta = locked.metadata()?;
    tmp_path
        .persist(path)
        .map_err(|e| with_path(e.error, "rename a temporary file over", path))?;
    Ok((locked, meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: i32, port: Option<u16>) -> PidRecord {
        PidRecord {
            pid,
            start_time: 12345,
            exe: "/opt/warden/bin/proxy".into(),
            port,
            started_at: "2026-01-01T00:00:00Z".into(),
            home: "/var/lib/warden".into(),
        }
    }

    fn dir_entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn render_and_parse_round_trip() {
        for r in [record(42, Some(8000)), record(7, None)] {
            let text = r.render();
            assert_eq!(text.lines().next(), Some(r.pid.to_string().as_str()));
            assert_eq!(PidRecord::parse(&text), Ok(r));
        }
        let me = PidRecord::for_current_process(Path::new("/h"), Some(1)).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.identity().matches_live());
        humantime::parse_rfc3339(&me.started_at).unwrap();
        assert_eq!(PidRecord::parse(&me.render()), Ok(me));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let parse = |text: &str| PidRecord::parse(text).map_err(|e| e.to_string());
        let err = parse("abc\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(parse("").unwrap_err().contains("line 1"));
        assert!(parse("-1\n").unwrap_err().contains("line 1"));
        let err = parse("12\nstart_time=x\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("start_time"),
            "{err}"
        );
        let err = parse("12\nstart_time=1\nexe=/x\nstarted_at=t\n").unwrap_err();
        assert!(err.contains("home="), "{err}");
        let err = parse("12\ngarbage\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        // Unknown keys are tolerated.
        let text = format!("{}future=yes\n", record(3, None).render());
        assert_eq!(PidRecord::parse(&text), Ok(record(3, None)));
    }

    #[test]
    fn acquire_locks_and_a_second_acquire_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/proxy.pid");
        let guard = acquire(&path, &record(100, Some(8000))).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            record(100, Some(8000)).render()
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            inspect(&path).unwrap(),
            PidState::Running(record(100, Some(8000)))
        );
        // Same process, new open file description: flock says no.
        let err = acquire(&path, &record(200, None)).unwrap_err();
        match &err {
            PidFileError::Held { path: p, holder } => {
                assert_eq!(p, &path);
                assert_eq!(holder.as_ref().map(|r| r.pid), Some(100));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("PID 100") && msg.contains("run/proxy.pid"),
            "{msg}"
        );
        assert!(
            !remove_stale(&path).unwrap(),
            "a held file is never removed"
        );
        assert!(path.exists());
        // No temporary files left behind.
        assert_eq!(dir_entries(path.parent().unwrap()), 1);
        drop(guard);
        assert!(!path.exists());
        assert_eq!(inspect(&path).unwrap(), PidState::Absent);
        // Free again.
        drop(acquire(&path, &record(300, None)).unwrap());
    }

    #[test]
    fn a_file_nobody_locks_is_stale_and_can_be_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.pid");
        std::fs::write(&path, record(55, Some(1)).render()).unwrap();
        assert_eq!(
            inspect(&path).unwrap(),
            PidState::Stale(Some(record(55, Some(1))))
        );
        std::fs::write(&path, "not a pid file").unwrap();
        assert_eq!(inspect(&path).unwrap(), PidState::Stale(None));
        std::fs::write(&path, "55\n").unwrap();
        assert_eq!(inspect(&path).unwrap(), PidState::Stale(None));
        // acquire replaces a stale file in place.
        let guard = acquire(&path, &record(56, None)).unwrap();
        assert_eq!(inspect(&path).unwrap(), PidState::Running(record(56, None)));
        drop(guard);
        std::fs::write(&path, record(55, None).render()).unwrap();
        assert!(remove_stale(&path).unwrap());
        assert!(!path.exists());
        assert!(!remove_stale(&path).unwrap());
    }

    #[test]
    fn a_held_file_with_foreign_content_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.pid");
        std::fs::write(&path, "4321\n").unwrap();
        let lock = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        match inspect(&path).unwrap() {
            PidState::Busy { pid, problem } => {
                assert_eq!(pid, Some(4321));
                assert!(problem.contains("start_time"), "{problem}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(matches!(
            acquire(&path, &record(1, None)),
            Err(PidFileError::Held { holder: None, .. })
        ));
        assert!(!remove_stale(&path).unwrap());
        drop(lock);
        assert!(remove_stale(&path).unwrap());
    }

    #[test]
    fn a_huge_pid_file_is_read_only_up_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.pid");
        std::fs::write(&path, record(77, None).render()).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(64 * 1024 * 1024).unwrap(); // sparse
        assert_eq!(inspect(&path).unwrap(), PidState::Stale(None));
        assert_eq!(read_record(&path), None);
        let lock = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        match inspect(&path).unwrap() {
            PidState::Busy { pid, problem } => {
                assert_eq!(pid, None);
                assert!(problem.contains("at most 4 KiB"), "{problem}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(lock);
        assert!(remove_stale(&path).unwrap());
    }

    #[test]
    fn a_fifo_in_place_of_the_pid_file_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.pid");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = inspect(&path).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(remove_stale(&path).is_err());
        assert!(acquire(&path, &record(1, None)).is_err());
        assert!(path.exists());
    }

    #[test]
    fn inspect_never_creates_anything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/run/proxy.pid");
        assert_eq!(inspect(&path).unwrap(), PidState::Absent);
        assert!(!remove_stale(&path).unwrap());
        assert_eq!(dir_entries(dir.path()), 0);
    }

    #[test]
    fn replace_hands_over_and_the_old_guard_leaves_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.pid");
        let old = acquire(&path, &record(10, Some(8000))).unwrap();
        let new = replace(&path, &record(11, Some(8000))).unwrap();
        assert_eq!(
            inspect(&path).unwrap(),
            PidState::Running(record(11, Some(8000)))
        );
        drop(old);
        assert_eq!(
            inspect(&path).unwrap(),
            PidState::Running(record(11, Some(8000)))
        );
        assert!(matches!(
            acquire(&path, &record(12, None)),
            Err(PidFileError::Held { holder: Some(r), .. }) if r.pid == 11
        ));
        drop(new);
        assert_eq!(inspect(&path).unwrap(), PidState::Absent);
    }

    #[test]
    fn update_port_rewrites_atomically_but_never_a_successors_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.pid");
        let mut guard = acquire(&path, &record(20, None)).unwrap();
        guard.update_port(Some(9000)).unwrap();
        assert_eq!(guard.record().port, Some(9000));
        assert_eq!(
            inspect(&path).unwrap(),
            PidState::Running(record(20, Some(9000)))
        );
        assert_eq!(dir_entries(dir.path()), 1);
        let successor = replace(&path, &record(21, Some(9001))).unwrap();
        let err = guard.update_port(Some(9002)).unwrap_err().to_string();
        assert!(
            err.contains("PID 21") && err.contains("not overwriting"),
            "{err}"
        );
        assert_eq!(
            inspect(&path).unwrap(),
            PidState::Running(record(21, Some(9001)))
        );
        drop(guard);
        assert!(path.exists());
        drop(successor);
        assert!(!path.exists());
    }
}
