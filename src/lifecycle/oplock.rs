//! One operation at a time per home: `run/operation.lock`.
//!
//! Every command that starts, stops or replaces the proxy — `daemon start|stop|restart`,
//! a watchdog restart, `doctor --yes` stopping an orphan — holds an exclusive `flock`
//! on this file while it works, so two operators can never interleave (two restarts
//! both handing the socket on, a stop between a restart's spawn and its hand-off).
//! A command that finds it held waits, saying who holds it, up to a bound, then gives
//! up with an error naming the holder. Reading state (`daemon status`, `preflight`,
//! `doctor --dry-run`) needs no lock.
//!
//! The file is never removed (removing a lock file races with its next user). Its
//! content only describes the holder for messages — PID, operation, since when — and
//! is read with a small bound; the lock itself is the truth. The kernel releases it
//! when the holder exits, however it exits, and the descriptor is close-on-exec, so
//! a proxy started under the lock does not inherit it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::home::Home;
use crate::lifecycle::process;

/// The lock file's name in `run/`.
pub const LOCK_FILE: &str = "operation.lock";
/// How often a waiting operation tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(20);
/// The most of the lock file that is read to describe its holder.
const MAX_HOLDER_BYTES: u64 = 1024;

/// Who holds the lock, as far as its content tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<i32>,
    pub operation: Option<String>,
    pub since: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid.filter(|&p| process::is_alive(p)) {
            Some(pid) => write!(f, "PID {pid}")?,
            None => f.write_str("a process that has not said who it is yet")?,
        }
        match (&self.operation, &self.since) {
            (Some(op), Some(since)) => write!(f, " (`{op}`, since {since})"),
            (Some(op), None) => write!(f, " (`{op}`)"),
            _ => Ok(()),
        }
    }
}

impl Holder {
    fn parse(text: &str) -> Holder {
        let mut lines = text.lines();
        let pid = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .filter(|&p: &i32| p > 0);
        let mut holder = Holder {
            pid,
            ..Holder::default()
        };
        for line in lines {
            match line.split_once('=') {
                Some(("operation", v)) => holder.operation = Some(v.to_string()),
                Some(("since", v)) => holder.since = Some(v.to_string()),
                _ => {}
            }
        }
        holder
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum OpLockError {
    #[error("cannot use the operation lock {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "another operation on this home holds {} ({holder}); gave up waiting after {} s; \
         try again once it has finished (`daemon logs daemon` shows what it did)",
        path.display(),
        waited.as_secs()
    )]
    TimedOut {
        path: PathBuf,
        holder: Holder,
        waited: Duration,
    },
}

/// The held lock; released on drop (or when the process exits).
#[derive(Debug)]
pub struct OperationLock {
    _file: Flock<File>,
    /// Whether another operation held the lock when this one first asked.
    pub waited: bool,
}

/// The lock file of `home`.
pub fn path(home: &Home) -> PathBuf {
    home.run_dir().join(LOCK_FILE)
}

fn open(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Who holds the lock now (its content, read with a bound).
pub fn holder(home: &Home) -> Holder {
    let mut text = String::new();
    if let Ok(file) = File::open(path(home)) {
        let _ = file.take(MAX_HOLDER_BYTES).read_to_string(&mut text);
    }
    Holder::parse(&text)
}

/// One attempt: `Ok(Some(lock))`, or `Ok(None)` while another process holds it.
pub fn try_lock(home: &Home, operation: &str) -> Result<Option<OperationLock>, OpLockError> {
    let path = path(home);
    let io_err = |source: io::Error| OpLockError::Io {
        path: path.clone(),
        source,
    };
    let file = open(&path).map_err(io_err)?;
    let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(io_err(e.into())),
    };
    // Describe ourselves for whoever waits next (best effort: the lock is what counts).
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = locked.set_len(0).and_then(|()| {
        write!(
            &mut *locked,
            "{}\noperation={operation}\nsince={since}\n",
            std::process::id()
        )
    });
    Ok(Some(OperationLock {
        _file: locked,
        waited: false,
    }))
}

/// Takes the lock, waiting up to `wait` while another operation holds it.
/// `on_wait` is called once, with the holder, when this has to wait.
pub async fn acquire(
    home: &Home,
    operation: &str,
    wait: Duration,
    on_wait: &mut (dyn FnMut(&Holder) + Send),
) -> Result<OperationLock, OpLockError> {
    let mut waiter = Waiter::new(home, operation, wait);
    loop {
        if let Some(lock) = waiter.attempt(on_wait)? {
            return Ok(lock);
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// [`acquire`] for code that runs on a blocking thread.
pub fn acquire_blocking(
    home: &Home,
    operation: &str,
    wait: Duration,
    on_wait: &mut dyn FnMut(&Holder),
) -> Result<OperationLock, OpLockError> {
    let mut waiter = Waiter::new(home, operation, wait);
    loop {
        if let Some(lock) = waiter.attempt(on_wait)? {
            return Ok(lock);
        }
        std::thread::sleep(RETRY_EVERY);
    }
}

/// The waiting both [`acquire`]s share; they differ only in how they sleep
/// between attempts.
struct Waiter<'a> {
    home: &'a Home,
    operation: &'a str,
    wait: Duration,
    started: Instant,
    /// Whether `on_wait` was called (then the lock, once taken, says it waited).
    said: bool,
}

impl<'a> Waiter<'a> {
    fn new(home: &'a Home, operation: &'a str, wait: Duration) -> Waiter<'a> {
        Waiter {
            home,
            operation,
            wait,
            started: Instant::now(),
            said: false,
        }
    }

    /// One try: the lock, `None` to try again after [`RETRY_EVERY`], or the
    /// error once `wait` has passed.
    fn attempt(
        &mut self,
        on_wait: &mut dyn FnMut(&Holder),
    ) -> Result<Option<OperationLock>, OpLockError> {
        if let Some(mut lock) = try_lock(self.home, self.operation)? {
            lock.waited = self.said;
            return Ok(Some(lock));
        }
        if !self.said {
            self.said = true;
            on_wait(&holder(self.home));
        }
        if self.started.elapsed() >= self.wait {
            return Err(OpLockError::TimedOut {
                path: path(self.home),
                holder: holder(self.home),
                waited: self.started.elapsed(),
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_waiter_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        std::fs::create_dir_all(home.run_dir()).unwrap();
        let first = try_lock(&home, "daemon restart").unwrap().expect("free");
        assert!(!first.waited);
        assert!(try_lock(&home, "daemon stop").unwrap().is_none());
        let who = holder(&home);
        assert_eq!(who.pid, Some(std::process::id() as i32));
        assert_eq!(who.operation.as_deref(), Some("daemon restart"));
        let said = who.to_string();
        assert!(
            said.starts_with(&format!(
                "PID {} (`daemon restart`, since ",
                std::process::id()
            )),
            "{said}"
        );
        let mut seen = Vec::new();
        let err = acquire_blocking(&home, "daemon stop", Duration::from_millis(100), &mut |h| {
            seen.push(h.clone())
        })
        .unwrap_err();
        assert_eq!(seen.len(), 1, "told once");
        let msg = err.to_string();
        assert!(
            msg.contains("run/operation.lock") && msg.contains("gave up waiting"),
            "{msg}"
        );
        drop(first);
        let second = acquire_blocking(&home, "daemon stop", Duration::ZERO, &mut |_| {}).unwrap();
        assert!(!second.waited);
        assert_eq!(holder(&home).operation.as_deref(), Some("daemon stop"));
    }
}
