//! Process identity and safe signalling (docs/contract.md §4), Linux `/proc` only.
//!
//! A PID alone does not name a process: once it exits, the kernel may hand the same
//! number to an unrelated program. warden therefore remembers a [`ProcessIdentity`]
//! (PID + start time) for every process it starts, and [`signal`] checks
//! that identity before sending anything. Where the kernel has pidfds (Linux ≥ 5.3)
//! the check is repeated *after* the pidfd is opened: the pidfd pins the process, so
//! the signal cannot reach a successor that got the PID in between.
//!
//! Nothing here ever signals a PID that does not match the identity it was given, and
//! PIDs ≤ 0 (process groups, "everyone") are refused outright.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::home::Home;

/// How long [`terminate`] waits for a process to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Poll interval of the `/proc` fallback of [`wait_exit`].
const PROC_POLL: Duration = Duration::from_millis(20);
/// Poll interval of the `/proc` fallback of [`wait_exit_async`].
const ASYNC_PROC_POLL: Duration = Duration::from_millis(250);

/// Who a process is: its PID plus what makes it unique over time.
///
/// Two identities are equal when PID and start time are: a PID is reused only after
/// its process has exited, and the kernel never starts two processes with one PID in
/// the same clock tick. The executable's path is kept for messages only — it is not
/// part of the identity, because replacing the binary on disk (installing over it,
/// `cargo install`, moving the old file aside) changes what `/proc/PID/exe` reads
/// while the process stays the same one (docs/contract.md §17).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot when the process started.
    pub start_time: u64,
    /// `readlink /proc/PID/exe`, without the ` (deleted)` the kernel appends when the
    /// binary was replaced on disk. For messages only; see the type's comment.
    pub exe: PathBuf,
}

impl PartialEq for ProcessIdentity {
    fn eq(&self, other: &ProcessIdentity) -> bool {
        self.pid == other.pid && self.start_time == other.start_time
    }
}

impl Eq for ProcessIdentity {}

/// Why a signal was not sent (or did not have its effect).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("PID {pid} is not running (it has exited); nothing to signal")]
    NotRunning { pid: i32 },
    #[error("{}", mismatch_message(*pid, expected_exe, found_exe, *expected_start_time, *found_start_time))]
    IdentityMismatch {
        pid: i32,
        expected_exe: PathBuf,
        found_exe: PathBuf,
        expected_start_time: u64,
        found_start_time: u64,
    },
    #[error(
        "not permitted to {action} PID {pid}: {source}; it runs as another user, so run this as that user (or root)"
    )]
    Permission {
        pid: i32,
        action: &'static str,
        source: io::Error,
    },
    #[error("cannot {action} PID {pid}: {source}")]
    Io {
        pid: i32,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "PID {pid} was sent SIGKILL but is still there after {waited:?}; it is probably stuck in the kernel (state D): look at /proc/{pid}/stack and the host's I/O"
    )]
    DidNotExit { pid: i32, waited: Duration },
}

fn mismatch_message(
    pid: i32,
    expected_exe: &Path,
    found_exe: &Path,
    expected_start: u64,
    found_start: u64,
) -> String {
    if expected_exe == found_exe {
        format!(
            "PID {pid} now belongs to another {} (started {} after boot; ours started {}), \
             not the process we started; leaving it alone",
            found_exe.display(),
            ticks_to_human(found_start),
            ticks_to_human(expected_start),
        )
    } else {
        format!(
            "PID {pid} now belongs to {}, not the {} we started; leaving it alone",
            found_exe.display(),
            expected_exe.display(),
        )
    }
}

fn ticks_to_human(ticks: u64) -> String {
    match clock_ticks_per_second() {
        Some(hz) => format!("{:.2} s", ticks as f64 / hz as f64),
        None => format!("{ticks} clock ticks"),
    }
}

fn clock_ticks_per_second() -> Option<u64> {
    use nix::unistd::{SysconfVar, sysconf};
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
}

/// What [`terminate`] had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// It exited within the grace period after SIGTERM.
    Exited,
    /// It needed SIGKILL (or `grace` was zero).
    Killed,
    /// It was not running (any more) when we looked: no signal was sent.
    AlreadyGone,
}

impl std::fmt::Display for Termination {
    /// The one wording `daemon`, `watchdog` and `doctor` use for how a process ended.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Termination::Exited => "exited after SIGTERM",
            Termination::Killed => "was killed with SIGKILL",
            Termination::AlreadyGone => "had already exited (nothing was signalled)",
        })
    }
}

/// How one process was ended: `PID 42 exited after SIGTERM (0.1 s)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub pid: i32,
    pub how: Termination,
    pub took: Duration,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PID {} {} ({:.1} s)",
            self.pid,
            self.how,
            self.took.as_secs_f64()
        )
    }
}

/// What a PID that a record or file names really is now, in words:
/// `PID 42 no longer runs`, `PID 42 is now another program (`sleep 300`)`, or
/// `PID 42 is still the process the record describes`. Only `/proc` is read.
pub fn describe_pid(pid: i32, recorded: Option<&ProcessIdentity>) -> String {
    if !is_alive(pid) {
        return format!("PID {pid} no longer runs");
    }
    if recorded.is_some_and(|r| r.pid == pid && r.matches_live()) {
        return format!("PID {pid} is still the process the record describes");
    }
    match cmdline(pid) {
        Some(cmd) => {
            let short: String = cmd.chars().take(100).collect();
            let more = if short.len() < cmd.len() { "…" } else { "" };
            format!("PID {pid} is now another program (`{short}{more}`)")
        }
        None => format!("PID {pid} is now another program"),
    }
}

/// Refuses PIDs that `kill(2)` would interpret as a process group or "every process".
fn check_pid(pid: i32) -> io::Result<()> {
    if pid <= 0 {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pid} is not a process ID (PIDs are positive); refusing to use it"),
        ))
    } else {
        Ok(())
    }
}

/// The parts of `/proc/PID/stat` we need.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    state: char,
    start_time: u64,
}

/// Parses `/proc/PID/stat`. `comm` (field 2) is in parentheses and may itself contain
/// spaces and `)`, so fields are counted from the *last* `)`.
fn parse_stat(content: &str) -> Option<Stat> {
    let after_comm = &content[content.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    // `fields` starts at field 3 (state); start_time is field 22.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat { state, start_time })
}

fn read_stat(pid: i32) -> io::Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let content = std::fs::read_to_string(&path).map_err(|e| with_context(e, &path))?;
    parse_stat(&content).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse {path}: {content:?}"),
        )
    })
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn is_gone_state(state: char) -> bool {
    // Z: zombie (exited, not reaped); X: dead (being torn down).
    matches!(state, 'Z' | 'X' | 'x')
}

fn read_exe(pid: i32) -> io::Result<PathBuf> {
    let link = format!("/proc/{pid}/exe");
    let exe = std::fs::read_link(&link).map_err(|e| with_context(e, &link))?;
    let bytes = exe.as_os_str().as_bytes();
    Ok(match bytes.strip_suffix(b" (deleted)") {
        Some(stripped) => PathBuf::from(OsString::from_vec(stripped.to_vec())),
        None => exe,
    })
}

impl ProcessIdentity {
    /// Reads the identity of a live process. A zombie (exited, not yet reaped) is
    /// reported as `NotFound`, like a process that does not exist.
    pub fn of(pid: i32) -> io::Result<ProcessIdentity> {
        check_pid(pid)?;
        let before = read_stat(pid)?;
        if is_gone_state(before.state) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("PID {pid} has exited (zombie, not yet reaped by its parent)"),
            ));
        }
        let exe = read_exe(pid)?;
        // The PID could have been recycled between the two reads; the start time
        // tells, and then the exe we read may belong to the newcomer.
        let after = read_stat(pid)?;
        if after.start_time != before.start_time || is_gone_state(after.state) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("PID {pid} exited while it was being inspected"),
            ));
        }
        Ok(ProcessIdentity {
            pid,
            start_time: before.start_time,
            exe,
        })
    }

    /// The identity of the calling process.
    pub fn current() -> io::Result<ProcessIdentity> {
        ProcessIdentity::of(std::process::id() as i32)
    }

    /// True when a live (non-zombie) process has this PID and start time.
    pub fn matches_live(&self) -> bool {
        ProcessIdentity::of(self.pid).is_ok_and(|live| live == *self)
    }
}

/// Checks that `identity` still names a live process, with an error that says why not.
fn verify(identity: &ProcessIdentity) -> Result<(), ProcessError> {
    let pid = identity.pid;
    match ProcessIdentity::of(pid) {
        Ok(found) if found == *identity => Ok(()),
        Ok(found) => Err(ProcessError::IdentityMismatch {
            pid,
            expected_exe: identity.exe.clone(),
            found_exe: found.exe,
            expected_start_time: identity.start_time,
            found_start_time: found.start_time,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ProcessError::NotRunning { pid }),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(ProcessError::Permission {
            pid,
            action: "inspect",
            source: e,
        }),
        Err(e) => Err(ProcessError::Io {
            pid,
            action: "inspect",
            source: e,
        }),
    }
}

/// The command line of `pid`, arguments joined by spaces; `None` when unreadable or
/// empty (kernel threads, zombies).
pub fn cmdline(pid: i32) -> Option<String> {
    let args = cmdline_args(pid)?;
    if args.is_empty() {
        return None;
    }
    Some(
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn cmdline_args(pid: i32) -> Option<Vec<OsString>> {
    check_pid(pid).ok()?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(split_nul(&raw))
}

/// Splits `/proc/PID/cmdline` or `environ`: NUL-terminated strings.
fn split_nul(raw: &[u8]) -> Vec<OsString> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

/// True when a process with this PID exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    check_pid(pid).is_ok() && read_stat(pid).is_ok_and(|s| !is_gone_state(s.state))
}

/// Opens a pidfd for `pid` (`pidfd_open(2)`, Linux ≥ 5.3). Errors keep the errno:
/// `ESRCH` when there is no such process, `ENOSYS` (or `EPERM` from a seccomp
/// filter) when the kernel or sandbox does not offer pidfds.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    check_pid(pid)?;
    // SAFETY: plain syscall with integer arguments; on success it returns a new fd
    // that nothing else owns.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ret` is a freshly created file descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

/// `pidfd_open` is unavailable: old kernel (ENOSYS) or a seccomp profile that denies
/// unknown syscalls (EPERM; `pidfd_open` itself never returns EPERM).
fn pidfd_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM))
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: Signal) -> io::Result<()> {
    // SAFETY: `pidfd` is a valid open pidfd; a null siginfo and zero flags are the
    // documented "behave like kill(2)" form.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens a pidfd for `identity` and re-verifies the identity through it. `Ok(None)`
/// means pidfds are unsupported here.
fn open_verified_pidfd(identity: &ProcessIdentity) -> Result<Option<OwnedFd>, ProcessError> {
    let pid = identity.pid;
    match pidfd_open(pid) {
        Ok(fd) => {
            // The pidfd now pins whatever process has this PID. If that is still
            // ours, a signal through it can never reach a successor.
            verify(identity)?;
            Ok(Some(fd))
        }
        Err(e) if pidfd_unsupported(&e) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(ProcessError::NotRunning { pid }),
        Err(e) => Err(ProcessError::Io {
            pid,
            action: "open a pidfd for",
            source: e,
        }),
    }
}

/// Sends `sig` to the process named by `identity`, after checking that the PID still
/// belongs to it. Uses a pidfd (closing the PID-reuse race); falls back to `kill(2)`
/// only when pidfds are unsupported.
pub fn signal(identity: &ProcessIdentity, sig: Signal) -> Result<(), ProcessError> {
    signal_impl(identity, sig, true)
}

fn signal_impl(
    identity: &ProcessIdentity,
    sig: Signal,
    use_pidfd: bool,
) -> Result<(), ProcessError> {
    let pid = identity.pid;
    if let Err(source) = check_pid(pid) {
        return Err(ProcessError::Io {
            pid,
            action: "signal",
            source,
        });
    }
    verify(identity)?;
    let pidfd = if use_pidfd {
        open_verified_pidfd(identity)?
    } else {
        None
    };
    let sent = match &pidfd {
        Some(fd) => match pidfd_send_signal(fd, sig) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => kill_verified(pid, sig),
            other => other,
        },
        None => kill_verified(pid, sig),
    };
    sent.map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => ProcessError::NotRunning { pid },
        Some(libc::EPERM) => ProcessError::Permission {
            pid,
            action: "signal",
            source: e,
        },
        _ => ProcessError::Io {
            pid,
            action: "signal",
            source: e,
        },
    })
}

/// `kill(2)` for a PID whose identity was verified just before (the fallback path).
fn kill_verified(pid: i32, sig: Signal) -> io::Result<()> {
    check_pid(pid)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(io::Error::from)
}

fn pidfd_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Rounded up, so a sub-millisecond remainder sleeps instead of spinning.
        let ms = PollTimeout::try_from(remaining.as_micros().div_ceil(1000).min(i32::MAX as u128))
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) if remaining.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// Whether the process `identity` names is still there: same PID and start time, not
/// a zombie. Only `/proc/PID/stat` is read, which any user may read, so a process we
/// cannot fully inspect is not mistaken for a gone one.
///
/// A zombie leader is not enough: when the main thread has exited (or was the
/// first to die of a SIGKILL) its state reads `Z` while the other threads still
/// run and still hold the process's files — and its locks, such as the PID file's.
/// The process is gone only once every thread is.
fn still_there(identity: &ProcessIdentity) -> bool {
    check_pid(identity.pid).is_ok()
        && read_stat(identity.pid).is_ok_and(|s| {
            s.start_time == identity.start_time
                && (!is_gone_state(s.state) || other_threads_alive(identity.pid))
        })
}

/// Whether the thread group of `pid` has threads besides its (exited) leader.
fn other_threads_alive(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| t.file_name().to_str() != Some(&pid.to_string()))
                .any(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|c| parse_stat(&c))
                        .is_some_and(|s| !is_gone_state(s.state))
                })
        })
        .unwrap_or(false)
}

/// A pidfd pinned to `identity`'s process: `Ok(None)` when that process is gone
/// (possibly with its PID reused), `Err` when no pidfd can be opened. A pidfd
/// becomes readable only once the whole thread group has exited.
fn pidfd_if_there(identity: &ProcessIdentity) -> io::Result<Option<OwnedFd>> {
    match pidfd_open(identity.pid) {
        // Checked after opening: the pidfd cannot follow the PID to a successor.
        Ok(fd) => Ok(still_there(identity).then_some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits up to `timeout` for the process named by `identity` to be gone, and returns
/// whether it is. A zombie counts as gone; nothing is reaped here (a caller that
/// started the process reaps its own child). A PID that now belongs to another
/// process (another start time) also means ours is gone.
pub fn wait_exit(identity: &ProcessIdentity, timeout: Duration) -> bool {
    wait_exit_impl(identity, timeout, true)
}

fn wait_exit_impl(identity: &ProcessIdentity, timeout: Duration, use_pidfd: bool) -> bool {
    let deadline = Instant::now() + timeout;
    if use_pidfd {
        match pidfd_if_there(identity) {
            Ok(None) => return true,
            Ok(Some(fd)) => {
                if let Ok(readable) = pidfd_readable(&fd, timeout) {
                    return readable || !still_there(identity);
                }
                // poll failed unexpectedly: fall through to /proc polling.
            }
            // Unsupported (or unexpected): poll /proc instead.
            Err(_) => {}
        }
    }
    loop {
        if !still_there(identity) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(PROC_POLL.min(deadline - now));
    }
}

/// Stops the process named by `identity`: SIGTERM, up to `grace` to exit, then
/// SIGKILL. `grace` of zero sends SIGKILL at once. Every signal is identity-checked,
/// so a process that exits and has its PID recycled meanwhile is `AlreadyGone`, and
/// the newcomer is left alone.
pub fn terminate(identity: &ProcessIdentity, grace: Duration) -> Result<Termination, ProcessError> {
    let gone = |e: &ProcessError| {
        matches!(
            e,
            ProcessError::NotRunning { .. } | ProcessError::IdentityMismatch { .. }
        )
    };
    if !grace.is_zero() {
        match signal(identity, Signal::SIGTERM) {
            Ok(()) => {}
            Err(e) if gone(&e) => {
                if matches!(e, ProcessError::NotRunning { .. }) {
                    wait_exit(identity, KILL_WAIT);
                }
                return Ok(Termination::AlreadyGone);
            }
            Err(e) => return Err(e),
        }
        if wait_exit(identity, grace) {
            return Ok(Termination::Exited);
        }
    }
    match signal(identity, Signal::SIGKILL) {
        Ok(()) => {}
        Err(e) if gone(&e) => {
            // Its leader may read as exited while other threads are still tearing
            // down (and holding its files): wait for the whole process.
            if matches!(e, ProcessError::NotRunning { .. }) && !wait_exit(identity, KILL_WAIT) {
                return Err(ProcessError::DidNotExit {
                    pid: identity.pid,
                    waited: KILL_WAIT,
                });
            }
            return Ok(if grace.is_zero() {
                Termination::AlreadyGone
            } else {
                Termination::Exited
            });
        }
        Err(e) => return Err(e),
    }
    // After SIGKILL: until the pidfd says the whole process is gone, its files
    // (and the locks on them) may still be held.
    if wait_exit(identity, KILL_WAIT) {
        Ok(Termination::Killed)
    } else {
        Err(ProcessError::DidNotExit {
            pid: identity.pid,
            waited: KILL_WAIT,
        })
    }
}

/// Waits, without blocking a thread, until the process named by `identity` is gone
/// (zombies count as gone). Uses pidfd readability through the tokio reactor; where
/// pidfds are unsupported it checks `/proc` every 250 ms.
pub async fn wait_exit_async(identity: &ProcessIdentity) -> io::Result<()> {
    wait_exit_async_impl(identity, true).await
}

async fn wait_exit_async_impl(identity: &ProcessIdentity, use_pidfd: bool) -> io::Result<()> {
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    if use_pidfd {
        let pidfd = match pidfd_if_there(identity) {
            Ok(None) => return Ok(()),
            Ok(Some(fd)) => Some(fd),
            Err(e) if pidfd_unsupported(&e) => None,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot open a pidfd for PID {}: {e}", identity.pid),
                ));
            }
        };
        if let Some(fd) = pidfd {
            // SAFETY: an `OwnedFd` is a valid open descriptor that stays open, and
            // keeps returning the same number, until the `AsyncFd` drops it.
            let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
            let async_fd = registered.map_err(|e| {
                let (_, e) = e.into_parts();
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot watch PID {} with the async reactor: {e}",
                        identity.pid
                    ),
                )
            })?;
            loop {
                let mut guard = async_fd.readable().await?;
                // Readiness can be spurious; ask the pidfd itself.
                if pidfd_readable(guard.get_inner(), Duration::ZERO)? {
                    return Ok(());
                }
                guard.clear_ready();
            }
        }
    }
    while still_there(identity) {
        tokio::time::sleep(ASYNC_PROC_POLL).await;
    }
    Ok(())
}

/// Processes of the current user whose executable's file name is `proxy_exe_name`
/// and whose effective warden home is `home` — how `doctor` and `preflight` find an
/// orphaned proxy. A process's home is resolved as the proxy itself does (docs/contract.md §1):
/// `--home DIR` / `--home=DIR` on its command line, else `WARDEN_HOME`, else
/// `XDG_STATE_HOME/warden`, else `HOME/.local/state/warden` from its environment.
/// A relative `--home` is resolved against the process's current directory.
/// Processes that cannot be read are skipped; the calling process is never listed.
pub fn find_proxies_of_home(home: &Home, proxy_exe_name: &str) -> Vec<ProcessIdentity> {
    let me = std::process::id() as i32;
    let uid = nix::unistd::getuid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<ProcessIdentity> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid > 0 && pid != me)
        // The cheapest test first: most processes are not a proxy at all.
        .filter(|&pid| runs_program(pid, proxy_exe_name))
        .filter(|&pid| real_uid(pid) == Some(uid))
        .filter_map(|pid| ProcessIdentity::of(pid).ok())
        .filter(|id| process_home(id.pid).is_some_and(|h| h == home.root()))
        .collect();
    found.sort_by_key(|id| id.pid);
    found
}

/// True when `identity` names a live process (same PID and start time) whose
/// effective warden home is `home`, resolved as [`find_proxies_of_home`] does.
/// The start time is read again after the home, so the home read cannot be a
/// successor's that got the PID in between.
pub fn runs_with_home(identity: &ProcessIdentity, home: &Home) -> bool {
    identity.matches_live()
        && process_home(identity.pid).is_some_and(|h| h == home.root())
        && identity.matches_live()
}

/// True when `pid` was started from a program named `name`: the command name
/// the kernel recorded at `exec` (`/proc/PID/comm`, at most 15 bytes), which
/// renaming the file later (an upgrade that moves the old binary aside) does not
/// change, or else its executable's file name (a program started through a link
/// of another name).
fn runs_program(pid: i32, name: &str) -> bool {
    let short: String = name.chars().take(15).collect();
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        if comm.trim_end_matches('\n') == short {
            return true;
        }
    }
    read_exe(pid).is_ok_and(|exe| exe.file_name().is_some_and(|n| n == name))
}

/// The real UID of `pid` (first field of `Uid:` in `/proc/PID/status`).
fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn process_home(pid: i32) -> Option<PathBuf> {
    let args = cmdline_args(pid)?;
    let from_flag = home_flag(&args);
    let dir = match from_flag {
        Some(dir) => dir,
        None => {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            home_from_environ(&split_nul(&env))?
        }
    };
    if dir.is_absolute() {
        Some(dir)
    } else {
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        Some(cwd.join(dir))
    }
}

/// The value of the last `--home DIR` or `--home=DIR` among `args` (after argv[0]).
fn home_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut found = None;
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            break;
        } else if bytes == b"--home" {
            found = iter.next().map(PathBuf::from);
        } else if let Some(value) = bytes.strip_prefix(b"--home=") {
            found = Some(PathBuf::from(OsString::from_vec(value.to_vec())));
        }
    }
    found
}

/// The home `Home::resolve(None)` would pick with this environment.
fn home_from_environ(env: &[OsString]) -> Option<PathBuf> {
    let var = |name: &str| {
        let prefix = format!("{name}=");
        env.iter()
            .filter_map(|kv| kv.as_bytes().strip_prefix(prefix.as_bytes()))
            .find(|v| !v.is_empty())
            .map(|v| PathBuf::from(OsString::from_vec(v.to_vec())))
    };
    if let Some(dir) = var("WARDEN_HOME") {
        Some(dir)
    } else if let Some(state) = var("XDG_STATE_HOME") {
        Some(state.join("warden"))
    } else {
        var("HOME").map(|h| h.join(".local/state/warden"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A child we spawned; killed and reaped on drop so no test leaks a process.
    pub(crate) struct Kid(pub Child);

    impl Kid {
        pub fn spawn(cmd: &mut Command) -> Kid {
            // A binary copied by another test may still be open for writing in a
            // concurrently forked child: retry ETXTBSY briefly.
            for _ in 0..50 {
                match cmd.spawn() {
                    Ok(child) => return Kid(child),
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("cannot spawn {cmd:?}: {e}"),
                }
            }
            panic!("cannot spawn {cmd:?}: text file busy");
        }
        pub fn sleep() -> Kid {
            let kid = Kid::spawn(Command::new("sleep").arg("30").stdin(Stdio::null()));
            // spawn() returns once exec has begun, but the kernel fills in the new
            // argument list a moment later: until then /proc/PID/cmdline reads empty.
            let deadline = Instant::now() + Duration::from_secs(10);
            while cmdline(kid.pid()).is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            kid
        }
        pub fn pid(&self) -> i32 {
            self.0.id() as i32
        }
        pub fn identity(&self) -> ProcessIdentity {
            ProcessIdentity::of(self.pid()).unwrap()
        }
    }

    impl Drop for Kid {
        fn drop(&mut self) {
            // std's Child::kill only signals a child that has not been reaped yet.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn state_of(pid: i32) -> char {
        read_stat(pid).unwrap().state
    }

    /// Waits until our child `pid` is a zombie (without reaping it).
    fn wait_zombie(pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while state_of(pid) != 'Z' {
            assert!(
                Instant::now() < deadline,
                "PID {pid} did not become a zombie"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        fields[22 - 3] = "987654".into();
        let line = format!("4242 (a) b ) (c d) {}\n", fields.join(" "));
        assert_eq!(
            parse_stat(&line),
            Some(Stat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (trunc) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn identity_of_self() {
        let me = ProcessIdentity::current().unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.exe, std::env::current_exe().unwrap());
        assert!(me.start_time > 0);
        assert!(me.matches_live());
        assert!(is_alive(me.pid));
        let json = serde_json::to_string(&me).unwrap();
        assert_eq!(serde_json::from_str::<ProcessIdentity>(&json).unwrap(), me);
    }

    #[test]
    fn non_positive_pids_are_refused_everywhere() {
        for pid in [0, -1, i32::MIN] {
            assert!(check_pid(pid).is_err());
            assert_eq!(
                ProcessIdentity::of(pid).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            assert!(pidfd_open(pid).is_err());
            assert!(!is_alive(pid));
            assert_eq!(cmdline(pid), None);
        }
    }

    #[test]
    fn identity_and_cmdline_of_a_child() {
        let kid = Kid::sleep();
        let id = kid.identity();
        assert_eq!(id.pid, kid.pid());
        assert_eq!(id.exe.file_name().unwrap(), "sleep");
        assert!(id.start_time >= ProcessIdentity::current().unwrap().start_time);
        assert!(id.matches_live());
        assert_eq!(cmdline(kid.pid()).as_deref(), Some("sleep 30"));
        assert!(
            !ProcessIdentity {
                start_time: id.start_time + 1,
                ..id.clone()
            }
            .matches_live()
        );
        // The executable's path is not part of the identity: a binary renamed or
        // replaced on disk is still the same process.
        assert!(
            ProcessIdentity {
                exe: "/bin/true".into(),
                ..id.clone()
            }
            .matches_live()
        );
    }

    #[test]
    fn signal_refuses_a_mismatching_identity() {
        let mut kid = Kid::sleep();
        let real = kid.identity();
        let wrong_time = ProcessIdentity {
            start_time: real.start_time + 1,
            ..real.clone()
        };
        let err = signal(&wrong_time, Signal::SIGKILL).unwrap_err();
        assert!(matches!(err, ProcessError::IdentityMismatch { pid, .. } if pid == real.pid));
        assert!(err.to_string().contains("leaving it alone"), "{err}");
        let err = signal_impl(&wrong_time, Signal::SIGKILL, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("PID {} now belongs to another", real.pid)),
            "{msg}"
        );
        assert!(matches!(
            terminate(&wrong_time, Duration::ZERO),
            Ok(Termination::AlreadyGone)
        ));
        // Nothing was sent: the child is still running.
        assert!(kid.0.try_wait().unwrap().is_none());
        assert!(real.matches_live());
    }

    #[test]
    fn signal_reaches_the_right_process_with_and_without_pidfd() {
        use std::os::unix::process::ExitStatusExt;
        for use_pidfd in [true, false] {
            let mut kid = Kid::sleep();
            signal_impl(&kid.identity(), Signal::SIGTERM, use_pidfd).unwrap();
            assert_eq!(kid.0.wait().unwrap().signal(), Some(libc::SIGTERM));
        }
    }

    #[test]
    fn signal_to_an_exited_child_is_not_running() {
        let mut kid = Kid::sleep();
        let id = kid.identity();
        kid.0.kill().unwrap();
        wait_zombie(id.pid);
        assert!(!is_alive(id.pid));
        assert!(!id.matches_live());
        assert!(matches!(
            signal(&id, Signal::SIGTERM),
            Err(ProcessError::NotRunning { .. })
        ));
        kid.0.wait().unwrap();
        assert!(matches!(
            terminate(&id, Duration::from_secs(1)),
            Ok(Termination::AlreadyGone)
        ));
    }

    #[test]
    fn a_pidfd_turns_readable_when_its_process_exits() {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        // Also tells whether the pidfd paths below really ran or fell back to /proc.
        let mut kid = Kid::sleep();
        let fd = match pidfd_open(kid.pid()) {
            Ok(fd) => fd,
            Err(e) if pidfd_unsupported(&e) => {
                eprintln!("pidfd unsupported here ({e}): nothing to check");
                return;
            }
            Err(e) => panic!("pidfd_open on our own child failed: {e}"),
        };
        let readable = |timeout: PollTimeout| {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, timeout).expect("poll a pidfd") == 1
        };
        assert!(
            !readable(PollTimeout::ZERO),
            "readable while the process runs"
        );
        kid.0.kill().unwrap();
        assert!(
            readable(PollTimeout::from(20_000u16)),
            "not readable after exit"
        );
    }

    #[test]
    fn wait_exit_on_a_zombie_child_does_not_reap_it() {
        for use_pidfd in [true, false] {
            // Exits by itself while we wait: the live -> zombie transition.
            let mut kid = Kid::spawn(Command::new("sleep").arg("0.3"));
            let id = kid.identity();
            assert!(!wait_exit_impl(&id, Duration::from_millis(50), use_pidfd));
            let start = Instant::now();
            assert!(wait_exit_impl(&id, Duration::from_secs(20), use_pidfd));
            assert!(start.elapsed() < Duration::from_secs(20));
            // Still a zombie: reaping is the parent's job, and it is ours.
            assert_eq!(state_of(id.pid), 'Z');
            assert!(!is_alive(id.pid));
            assert!(kid.0.try_wait().unwrap().is_some());
        }
    }

    /// A process whose main thread has exited while another thread still runs and
    /// holds a lock: its leader reads as a zombie, yet the process (and its lock)
    /// is still there. `wait_exit` must wait for the whole process.
    #[test]
    fn wait_exit_waits_for_every_thread_not_just_an_exited_leader() {
        use std::io::{BufRead, Write};
        let dir = tempfile::tempdir().unwrap();
        let script = "import ctypes, fcntl, sys, threading, time\n\
            f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n\
            threading.Thread(target=time.sleep, args=(1.0,)).start()\n\
            print('ready', flush=True); sys.stdin.readline()\n\
            ctypes.CDLL(None).pthread_exit(None)\n";
        // Both ways of waiting at once (each with its own process and lock).
        let check = |use_pidfd: bool| {
            let lock_path = dir.path().join(format!("held-{use_pidfd}.lock"));
            let mut kid = Kid::spawn(
                Command::new("python3")
                    .args(["-c", script])
                    .arg(&lock_path)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped()),
            );
            let mut line = String::new();
            std::io::BufReader::new(kid.0.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready", "python3 is needed for this test");
            let id = kid.identity();
            writeln!(kid.0.stdin.as_mut().unwrap()).unwrap();
            wait_zombie(id.pid);
            assert!(wait_exit_impl(&id, Duration::from_secs(20), use_pidfd));
            let file = std::fs::File::open(&lock_path).unwrap();
            assert!(
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
                "wait_exit returned while the process still held its lock (pidfd: {use_pidfd})"
            );
            kid.0.wait().unwrap();
        };
        std::thread::scope(|scope| {
            let with_pidfd = scope.spawn(|| check(true));
            check(false);
            with_pidfd.join().unwrap();
        });
    }

    #[test]
    fn termination_is_worded_once() {
        let ended = Ended {
            pid: 42,
            how: Termination::Exited,
            took: Duration::from_millis(120),
        };
        assert_eq!(ended.to_string(), "PID 42 exited after SIGTERM (0.1 s)");
        assert_eq!(Termination::Killed.to_string(), "was killed with SIGKILL");
        let kid = Kid::sleep();
        let said = describe_pid(kid.pid(), None);
        assert!(
            said.contains("is now another program (`sleep 30`)"),
            "{said}"
        );
        assert!(describe_pid(kid.pid(), Some(&kid.identity())).contains("still the process"));
    }

    #[test]
    fn wait_exit_times_out_on_a_live_process() {
        let kid = Kid::sleep();
        let start = Instant::now();
        assert!(!wait_exit(&kid.identity(), Duration::from_millis(300)));
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(is_alive(kid.pid()));
    }

    #[test]
    fn terminate_a_cooperative_child() {
        let kid = Kid::sleep();
        let r = terminate(&kid.identity(), Duration::from_secs(10)).unwrap();
        assert_eq!(r, Termination::Exited);
    }

    #[test]
    fn terminate_with_zero_grace_kills_at_once() {
        let kid = Kid::sleep();
        let id = kid.identity();
        // SIGKILL without a SIGTERM first: `Killed`, not `Exited`.
        let r = terminate(&id, Duration::ZERO).unwrap();
        assert_eq!(r, Termination::Killed);
        assert!(!id.matches_live());
    }

    /// SIGTERM bit in a `SigIgn:` mask of /proc/PID/status.
    fn ignores_sigterm(pid: i32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let ignored = field("SigIgn:")
            .and_then(|m| u64::from_str_radix(&m, 16).ok())
            .unwrap_or(0);
        field("Name:").as_deref() == Some("sleep") && ignored & (1 << (libc::SIGTERM - 1)) != 0
    }

    #[test]
    fn terminate_kills_a_child_that_ignores_sigterm() {
        let kid = Kid::spawn(
            Command::new("sh")
                .args(["-c", "trap '' TERM; exec sleep 30"])
                .stdin(Stdio::null()),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ignores_sigterm(kid.pid()) {
            assert!(Instant::now() < deadline, "child never ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(5));
        }
        let id = kid.identity();
        let grace = Duration::from_millis(300);
        let start = Instant::now();
        assert_eq!(terminate(&id, grace).unwrap(), Termination::Killed);
        assert!(start.elapsed() >= grace);
        assert!(!id.matches_live());
    }

    #[tokio::test]
    async fn wait_exit_async_notices_an_exit_with_and_without_pidfd() {
        for use_pidfd in [true, false] {
            let mut kid = Kid::sleep();
            let id = kid.identity();
            let waiter = tokio::spawn({
                let id = id.clone();
                async move { wait_exit_async_impl(&id, use_pidfd).await }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!waiter.is_finished());
            kid.0.kill().unwrap();
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("exit noticed")
                .unwrap()
                .unwrap();
            kid.0.wait().unwrap();
            // Already gone: returns at once.
            wait_exit_async(&id).await.unwrap();
        }
    }

    #[test]
    fn home_flag_and_environment_resolution() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            home_flag(&args(&["proxy", "--home", "/h"])),
            Some("/h".into())
        );
        assert_eq!(
            home_flag(&args(&["proxy", "--home=/h", "--port", "1"])),
            Some("/h".into())
        );
        assert_eq!(home_flag(&args(&["proxy", "--homey", "/h"])), None);
        assert_eq!(home_flag(&args(&["proxy", "--", "--home", "/h"])), None);
        assert_eq!(home_flag(&args(&["--home"])), None);
        let env = args(&["HOME=/u", "XDG_STATE_HOME=/s"]);
        assert_eq!(home_from_environ(&env), Some("/s/warden".into()));
        let env = args(&["HOME=/u", "WARDEN_HOME=", "XDG_STATE_HOME="]);
        assert_eq!(
            home_from_environ(&env),
            Some("/u/.local/state/warden".into())
        );
        let env = args(&["WARDEN_HOME=/w", "XDG_STATE_HOME=/s"]);
        assert_eq!(home_from_environ(&env), Some("/w".into()));
        assert_eq!(split_nul(b"a\0b c\0"), args(&["a", "b c"]));
        assert_eq!(
            split_nul(b"proxy\0--home\0\0"),
            args(&["proxy", "--home", ""])
        );
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn finds_proxies_of_a_home_by_flag_or_environment() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let other = dir.path().join("other");
        // A shell binary named "proxy" that waits on stdin: a stand-in that accepts
        // any arguments and has no children of its own.
        let fake = dir.path().join("proxy");
        std::fs::copy("/bin/sh", &fake).unwrap();
        let spawn = |extra: &[&str], env: Option<&Path>| {
            let mut cmd = Command::new(&fake);
            cmd.args(["-c", "read line", "proxy"])
                .args(extra)
                .stdin(Stdio::piped())
                .env_remove("WARDEN_HOME");
            if let Some(env) = env {
                cmd.env("WARDEN_HOME", env);
            }
            Kid::spawn(&mut cmd)
        };
        let root_s = root.to_str().unwrap();
        let by_flag = spawn(&["--home", root_s], None);
        let by_eq = spawn(&[&format!("--home={root_s}/")], Some(&other));
        let by_env = spawn(&[], Some(&root));
        let flag_wins = spawn(&["--home", other.to_str().unwrap()], Some(&root));
        let not_proxy = Kid::spawn(
            Command::new("sh")
                .args(["-c", "read line", "proxy", "--home", root_s])
                .stdin(Stdio::piped()),
        );
        // Wait until every child has exec'd (its exe is no longer the test binary).
        for kid in [&by_flag, &by_eq, &by_env, &flag_wins, &not_proxy] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while ProcessIdentity::of(kid.pid())
                .map(|id| id.exe == std::env::current_exe().unwrap())
                .unwrap_or(true)
            {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let found: Vec<i32> = find_proxies_of_home(&Home::at(&root), "proxy")
            .into_iter()
            .map(|id| id.pid)
            .collect();
        let mut expected = vec![by_flag.pid(), by_eq.pid(), by_env.pid()];
        expected.sort();
        assert_eq!(found, expected);
        assert!(find_proxies_of_home(&Home::at(dir.path().join("nobody")), "proxy").is_empty());
    }
}
