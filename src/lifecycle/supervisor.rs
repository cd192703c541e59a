//! Starting, stopping, restarting and inspecting the proxy of one home: the
//! library behind `daemon` and `watchdog`, so both act in exactly the same way.
//!
//! Safety rules, enforced here for every caller:
//! - a process is only ever signalled after its identity (PID, start time,
//!   executable) was verified against the PID file's record, or against what
//!   `/proc` says is this home's `proxy`, through a pidfd where the kernel has one
//!   (see [`crate::lifecycle::process`]);
//! - a PID file whose lock is free is stale and is never a reason to signal
//!   anything: whatever process has that PID now is not ours;
//! - a process this module spawned and that does not become ready is stopped
//!   again, so a failed start leaves nothing behind.
//!
//! One operation at a time: [`Supervisor::begin`] takes the home's operation lock
//! ([`crate::lifecycle::oplock`]); `start`, `stop` and `restart` need the
//! [`Operation`] it returns, so no caller can change the proxy without it. After
//! the lock, state is read again: what a rival operation did while this one waited
//! is found, said, and not undone.
//!
//! Every proxy of the home is accounted for, not only the one `run/proxy.pid`
//! names: `stop` stops them all (a successor in flight, a predecessor still
//! draining, one that lost its PID file) and never says "stopped" while one still
//! serves; `status` names a proxy that serves without the PID file; a restart whose
//! successor dies hands the PID file back to the old proxy.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::health::{HealthReport, HealthStatus, probe};
use crate::home::config::{Config, Overrides, Settings, base_url_for};
use crate::home::{Home, LogKind};
use crate::lifecycle::handoff::{self, HandoffError};
use crate::lifecycle::oplock::{self, OpLockError, OperationLock};
use crate::lifecycle::pidfile::{self, PidRecord, PidState};
use crate::lifecycle::ports;
use crate::lifecycle::process::{self, Ended, ProcessError, ProcessIdentity};

/// The file name of the proxy executable: how this home's proxies are found.
pub const PROXY_EXE_NAME: &str = "proxy";
/// Added to the longest an operation can take when waiting for the lock.
const LOCK_WAIT_MARGIN: Duration = Duration::from_secs(5);

/// How long a restart waits for its successor's NATS subscription (it takes
/// milliseconds when NATS is up) before it stops the old proxy anyway.
const NATS_HANDOVER: Duration = Duration::from_secs(3);

/// How long an operation waits for the home's operation lock: as long as the
/// longest operation may hold it (a restart: start-up, with NATS the wait for
/// the successor's subscription, the old proxy's drain and two stops), plus 5 s.
pub fn operation_wait(s: &Settings) -> Duration {
    let nats = if s.nats.enabled() {
        NATS_HANDOVER
    } else {
        Duration::ZERO
    };
    Duration::from_secs(
        s.daemon.startup_timeout + s.server.graceful_timeout + 2 * s.daemon.stop_timeout,
    ) + nats
        + LOCK_WAIT_MARGIN
}

/// What became of the old proxy when a restart's successor failed.
#[derive(Debug)]
pub struct OldProxy {
    pub pid: i32,
    /// `Ok`: it holds `run/proxy.pid` (kept or taken back); `Err`: why not.
    pub pid_file: Result<(), HandoffError>,
}

fn old_note(old: &Option<OldProxy>) -> String {
    match old {
        None => String::new(),
        Some(OldProxy {
            pid,
            pid_file: Ok(()),
        }) => format!("; the old proxy (PID {pid}) is still serving and holds run/proxy.pid"),
        Some(OldProxy {
            pid,
            pid_file: Err(why),
        }) => format!(
            "; the old proxy (PID {pid}) is still serving, but could not take run/proxy.pid back ({why}); `daemon stop` stops it"
        ),
    }
}

/// An operation that failed: what, on which PID or path, and the log lines that
/// explain it.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(
        "cannot ask the proxy (PID {pid}) to reload: {source}; send it SIGHUP instead (`kill -HUP {pid}`) and read logs/proxy.log for the outcome"
    )]
    Reload { pid: i32, source: HandoffError },
    #[error("cannot prepare the home: {source}")]
    Home { source: std::io::Error },
    #[error("cannot {action} {}: {source}", path.display())]
    PidFile {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is locked by another program (PID {}): {problem}; warden leaves it alone",
        path.display(),
        pid.map_or("unknown".into(), |p| p.to_string())
    )]
    ForeignPidFile {
        path: PathBuf,
        pid: Option<i32>,
        problem: String,
    },
    #[error(
        "{} is locked, but {what}, not the proxy it names; warden leaves it alone",
        path.display()
    )]
    NotOurs {
        path: PathBuf,
        pid: i32,
        what: String,
    },
    #[error(
        "cannot find the `proxy` binary next to this one or on PATH; install all five with `cargo install --path .`"
    )]
    NoProxyBinary,
    #[error("cannot open {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the proxy ({}): {source}", exe.display())]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the proxy (PID {pid}) exited during start-up with {status}{}",
        old_note(old)
    )]
    ExitedDuringStartup {
        pid: i32,
        status: String,
        old: Option<OldProxy>,
        log_tail: Vec<String>,
    },
    #[error(
        "the proxy (PID {pid}) was not ready within daemon.startup_timeout ({timeout_secs} s): {problem}; it was stopped again{}",
        old_note(old)
    )]
    NotReady {
        pid: i32,
        timeout_secs: u64,
        problem: String,
        old: Option<OldProxy>,
        log_tail: Vec<String>,
    },
    #[error("{operation}: cannot stop PID {pid}: {source}")]
    Stop {
        operation: &'static str,
        pid: i32,
        source: ProcessError,
    },
    #[error(transparent)]
    Lock(#[from] OpLockError),
    #[error(
        "{operation}: {} of this home still serve{} after the stop; look at them with `doctor`",
        pid_words(pids),
        if pids.len() == 1 { "s" } else { "" }
    )]
    StillServing {
        operation: &'static str,
        pids: Vec<i32>,
    },
    /// The PID file was replaced between two reads (another tool at work).
    #[error("{operation} was interrupted: {} changed while reading it; try again", path.display())]
    Changed {
        operation: &'static str,
        path: PathBuf,
    },
    /// The task stopping the process panicked or was cancelled.
    #[error("{operation} was interrupted while stopping PID {pid}: {source}")]
    StopTask {
        operation: &'static str,
        pid: i32,
        source: tokio::task::JoinError,
    },
}

fn pid_words(pids: &[i32]) -> String {
    let list: Vec<String> = pids.iter().map(|p| format!("PID {p}")).collect();
    format!("proxy {}", list.join(", "))
}

impl SupervisorError {
    /// The last lines of `logs/proxy.log`, when they explain the error.
    pub fn log_tail(&self) -> &[String] {
        match self {
            SupervisorError::ExitedDuringStartup { log_tail, .. }
            | SupervisorError::NotReady { log_tail, .. } => log_tail,
            _ => &[],
        }
    }

    fn with_old(mut self, old_proxy: OldProxy) -> SupervisorError {
        if let SupervisorError::ExitedDuringStartup { old, .. }
        | SupervisorError::NotReady { old, .. } = &mut self
        {
            *old = Some(old_proxy);
        }
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Running {
    pub pid: i32,
    pub url: String,
}

/// The running proxy's answer to `daemon reload`.
#[derive(Debug)]
pub struct Reloaded {
    pub running: Running,
    /// 0 applied, 1 applied but some settings need `daemon restart`, 2 refused.
    pub code: i32,
    pub message: String,
}

#[derive(Debug)]
pub enum StartOutcome {
    Started {
        running: Running,
        ready_in: Duration,
    },
    AlreadyRunning {
        running: Running,
        /// It was started by another operation while this one waited for the lock.
        meanwhile: bool,
    },
}

impl StartOutcome {
    fn running_and_time(self) -> (Running, Duration) {
        match self {
            StartOutcome::Started { running, ready_in } => (running, ready_in),
            StartOutcome::AlreadyRunning { running, .. } => (running, Duration::ZERO),
        }
    }
}

#[derive(Debug)]
pub enum StopOutcome {
    NotRunning,
    /// The PID file's lock was free: the file was removed, nothing was signalled.
    /// `what` says what its PID is now.
    StaleRemoved {
        pid: Option<i32>,
        what: String,
    },
    /// Every proxy of the home that ran was stopped: the PID file's first (when
    /// there was one), then any other (a successor in flight, a draining
    /// predecessor, one that had lost its PID file).
    Stopped {
        ended: Vec<Ended>,
        others: usize,
    },
}

#[derive(Debug)]
pub enum RestartOutcome {
    /// The listening socket was handed over; the old process drained.
    HandedOver {
        old: Ended,
        running: Running,
        ready_in: Duration,
    },
    /// Nothing was running, so this was a start.
    Started {
        running: Running,
        ready_in: Duration,
    },
    /// No hand-off was possible: stop, then start (a short gap in service).
    StopStart {
        old_pid: i32,
        running: Running,
        ready_in: Duration,
        why: String,
    },
    /// Another operation restarted (or started) the proxy while this one waited
    /// for the lock: its proxy is newer than this request, so it is kept.
    ByRival { running: Running },
}

/// What `daemon status` found: its `state` field, and its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyState {
    /// Running and healthy.
    Running,
    /// Running, but its health check failed or says `fail`.
    Unhealthy,
    /// A PID file, but no process of this home behind it.
    Dead,
    /// Not running.
    Stopped,
}

impl ProxyState {
    /// The word in `--json` and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyState::Running => "running",
            ProxyState::Unhealthy => "unhealthy",
            ProxyState::Dead => "dead",
            ProxyState::Stopped => "stopped",
        }
    }

    /// LSB exit codes: 0 running and healthy, 1 PID file but dead, 3 not
    /// running, 4 running but unhealthy.
    pub fn exit_code(self) -> i32 {
        use crate::support::exit::status;
        match self {
            ProxyState::Running => status::RUNNING,
            ProxyState::Dead => status::DEAD,
            ProxyState::Stopped => status::STOPPED,
            ProxyState::Unhealthy => status::UNHEALTHY,
        }
    }
}

impl std::fmt::Display for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `daemon status` reports.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub state: ProxyState,
    pub running: bool,
    pub healthy: bool,
    pub pid: Option<i32>,
    pub url: Option<String>,
    pub uptime_secs: Option<f64>,
    pub pid_file: PathBuf,
    pub message: String,
    pub health: Option<HealthReport>,
    /// Proxies of this home that hold a listening socket but that the PID file
    /// does not name.
    pub unrecorded: Vec<i32>,
    /// The running watchdog of this home (`{"pid": N}`), or `null`.
    pub watchdog: Option<WatchdogInfo>,
    /// What `daemon stop` left in `run/stopped` (a watchdog stands by meanwhile).
    pub stopped_by_operator: Option<String>,
}

/// A watchdog that holds `run/watchdog.pid`.
#[derive(Debug, Clone, Serialize)]
pub struct WatchdogInfo {
    pub pid: i32,
}

/// The running watchdog of `home`: the live holder of `run/watchdog.pid`.
pub fn running_watchdog(home: &Home) -> Option<WatchdogInfo> {
    match pidfile::inspect(&home.watchdog_pid_file()) {
        Ok(PidState::Running(record)) if record.identity().matches_live() => {
            Some(WatchdogInfo { pid: record.pid })
        }
        _ => None,
    }
}

/// What `run/stopped` says (who stopped the proxy, when), while it exists.
pub fn stopped_by_operator(home: &Home) -> Option<String> {
    let text = std::fs::read(home.stopped_marker()).ok()?;
    let text = String::from_utf8_lossy(&text[..text.len().min(512)]);
    let line = text.lines().next().unwrap_or("").trim();
    Some(if line.is_empty() {
        "stopped by `daemon stop`".to_string()
    } else {
        line.to_string()
    })
}

impl StatusReport {
    /// The LSB exit code of [`ProxyState::exit_code`].
    pub fn exit_code(&self) -> i32 {
        self.state.exit_code()
    }
}

/// Every process of the current user that is this home's proxy (by executable
/// name and effective home), serving or draining.
pub fn proxies_of_home(home: &Home) -> Vec<ProcessIdentity> {
    process::find_proxies_of_home(home, PROXY_EXE_NAME)
}

/// This home's proxies that hold a listening socket.
fn serving_proxies(home: &Home) -> Vec<ProcessIdentity> {
    proxies_of_home(home)
        .into_iter()
        .filter(|p| ports::holds_listener(p.pid))
        .collect()
}

/// This home's proxies that `run/proxy.pid` does not name and that still serve
/// (hold a listening socket). A proxy without a listener is draining — during
/// `daemon restart` the old process is exactly that — and is not an orphan.
pub fn orphaned_proxies(home: &Home) -> Vec<ProcessIdentity> {
    let known = match pidfile::inspect(&home.proxy_pid_file()) {
        Ok(PidState::Running(record)) => Some(record.pid),
        Ok(PidState::Busy { pid, .. }) => pid,
        _ => None,
    };
    serving_proxies(home)
        .into_iter()
        .filter(|p| Some(p.pid) != known)
        .collect()
}

/// A change to the proxy in progress: holds the home's operation lock.
#[derive(Debug)]
pub struct Operation {
    pub name: &'static str,
    _lock: OperationLock,
    /// The proxy `run/proxy.pid` named before this operation asked for the lock.
    seen: Option<ProcessIdentity>,
}

impl Operation {
    /// Whether another operation held the lock when this one asked.
    pub fn waited(&self) -> bool {
        self._lock.waited
    }
}

/// A proxy this process spawned and has not yet accepted (ready) or stopped again.
/// If the operation is abandoned half-way — `daemon` interrupted by Ctrl-C drops
/// the operation's future — dropping this stops it (it is our own unreaped child,
/// so its PID cannot have been recycled) and asks the old proxy of a restart to
/// take `run/proxy.pid` back: nothing is left behind that no one knows about.
struct Spawned {
    child: Child,
    armed: bool,
    home: Home,
    old: Option<i32>,
}

impl Spawned {
    fn new(child: Child, home: &Home, old: Option<i32>) -> Spawned {
        Spawned {
            child,
            armed: true,
            home: home.clone(),
            old,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(old) = self.old {
            let _ = handoff::request_reclaim(&handoff::control_socket_path(&self.home, old));
        }
    }
}

pub struct Supervisor {
    pub config: Config,
    probe: reqwest::Client,
    /// `--host`/`--port` the proxy is started with (`daemon start --host H --port P`,
    /// kept in `run/address`); `None`: the configuration's.
    address: Overrides,
    /// The configuration's own address, before `address` was put over it.
    configured: (String, u16),
    /// `daemon restart --host/--port` named an address: no socket hand-off.
    address_given: bool,
}

/// What `run/address` holds (`host=H`, `port=P` lines); nothing when it is absent
/// or unreadable (then the configuration's address applies).
pub fn saved_address(home: &Home) -> Overrides {
    let mut address = Overrides::default();
    let Ok(text) = std::fs::read_to_string(home.address_file()) else {
        return address;
    };
    for line in text.lines().take(8) {
        match line.split_once('=') {
            Some(("host", host)) if !host.trim().is_empty() => {
                address.host = Some(host.trim().to_string());
            }
            Some(("port", port)) => address.port = port.trim().parse().ok(),
            _ => {}
        }
    }
    address
}

impl Supervisor {
    pub fn new(mut config: Config) -> Supervisor {
        let timeout = Duration::from_secs(config.watchdog.health_timeout.max(1));
        let configured = (config.server.host.clone(), config.server.port);
        let address = saved_address(&config.home);
        address.apply_to(&mut config.settings);
        Supervisor {
            probe: probe::client(timeout),
            config,
            address,
            configured,
            address_given: false,
        }
    }

    /// `daemon start`/`restart --host H --port P`: the address the proxy is
    /// started with from now on, kept in `run/address` for restarts and the
    /// watchdog. `daemon start` without them (`keep: false`) goes back to the
    /// configuration's address; `daemon restart` without them keeps the one
    /// the proxy was given.
    pub fn set_address(
        &mut self,
        _op: &Operation,
        given: Overrides,
        keep: bool,
    ) -> Result<(), SupervisorError> {
        let given_any = given.host.is_some() || given.port.is_some();
        if !given_any && keep {
            return Ok(());
        }
        let path = self.home().address_file();
        let mut address = if keep {
            self.address.clone()
        } else {
            Overrides::default()
        };
        if given.host.is_some() {
            address.host = given.host;
        }
        if given.port.is_some() {
            address.port = given.port;
        }
        let result = if address.host.is_none() && address.port.is_none() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            let mut text = String::new();
            if let Some(host) = &address.host {
                text.push_str(&format!("host={host}\n"));
            }
            if let Some(port) = address.port {
                text.push_str(&format!("port={port}\n"));
            }
            crate::home::atomic_file::write(&path, text.as_bytes(), None)
        };
        result.map_err(|source| SupervisorError::PidFile {
            action: "write",
            path,
            source,
        })?;
        self.config.settings.server.host = self.configured.0.clone();
        self.config.settings.server.port = self.configured.1;
        address.apply_to(&mut self.config.settings);
        self.address = address;
        self.address_given = given_any;
        Ok(())
    }

    pub fn home(&self) -> &Home {
        &self.config.home
    }

    fn url_for(&self, record: &PidRecord) -> String {
        base_url_for(
            &self.config.server.host,
            record.port.unwrap_or(self.config.server.port),
        )
    }

    /// Writes one line to `logs/daemon.log` (best effort: a full disk must not
    /// stop a stop).
    pub fn log_action(&self, message: &str) {
        let _ = crate::home::logs::append_line(self.home(), LogKind::Daemon, message);
    }

    fn proxy_log_tail(&self) -> Vec<String> {
        crate::home::logs::tail_lines(&self.home().log_file(LogKind::Proxy), 15).unwrap_or_default()
    }

    /// The running proxy of this home, if its PID file is locked and its process
    /// is the one the record names.
    pub fn running(&self) -> Option<(PidRecord, Running)> {
        match pidfile::inspect(&self.home().proxy_pid_file()) {
            Ok(PidState::Running(record)) if record.identity().matches_live() => {
                let running = Running {
                    pid: record.pid,
                    url: self.url_for(&record),
                };
                Some((record, running))
            }
            _ => None,
        }
    }

    /// Leaves `run/stopped` (`daemon stop`): until `daemon start` or `restart`
    /// removes it, a watchdog stands by instead of restarting the proxy.
    pub fn mark_stopped(&self, _op: &Operation) -> Result<(), SupervisorError> {
        let path = self.home().stopped_marker();
        let line = format!(
            "stopped by `daemon stop` (PID {}) at {}\n",
            std::process::id(),
            crate::support::time::now_rfc3339()
        );
        crate::home::atomic_file::write(&path, line.as_bytes(), None).map_err(|source| {
            SupervisorError::PidFile {
                action: "write",
                path,
                source,
            }
        })
    }

    /// Removes `run/stopped` (`daemon start`, `daemon restart`); true when it was there.
    pub fn clear_stopped(&self, _op: &Operation) -> Result<bool, SupervisorError> {
        let path = self.home().stopped_marker();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(SupervisorError::PidFile {
                action: "remove",
                path,
                source,
            }),
        }
    }

    /// Asks the running proxy to reload its configuration (docs/contract.md §17) and
    /// returns its answer: `None` when no proxy of this home runs.
    pub async fn reload(&self, _op: &Operation) -> Result<Option<Reloaded>, SupervisorError> {
        let Some((record, running)) = self.running() else {
            return Ok(None);
        };
        let path = handoff::control_socket_path(self.home(), record.pid);
        let asked = path.clone();
        let answer = tokio::task::spawn_blocking(move || handoff::request_reload(&asked))
            .await
            .map_err(|source| HandoffError::Task { path, source })
            .and_then(|answer| answer)
            .map_err(|source| SupervisorError::Reload {
                pid: record.pid,
                source,
            })?;
        let (code, message) = answer;
        self.log_action(&format!("reload pid={} code={code}: {message}", record.pid));
        Ok(Some(Reloaded {
            running,
            code,
            message,
        }))
    }

    /// Takes the home's operation lock for `name` (`daemon restart`, …), waiting
    /// up to [`operation_wait`]; `on_wait` gets one sentence when it has to wait.
    /// Then reads the state again: a proxy that serves without its PID file (its
    /// restart was interrupted) is asked to take the file back.
    pub async fn begin(
        &self,
        name: &'static str,
        on_wait: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Operation, SupervisorError> {
        self.home()
            .ensure_dirs()
            .map_err(|source| SupervisorError::Home { source })?;
        let seen = self.running().map(|(record, _)| record.identity());
        let wait = operation_wait(&self.config);
        let path = oplock::path(self.home());
        let lock = oplock::acquire(self.home(), name, wait, &mut |holder| {
            on_wait(&format!(
                "waiting for another operation on this home to finish: {holder} holds {}; waiting up to {} s",
                path.display(),
                wait.as_secs()
            ))
        })
        .await?;
        let op = Operation {
            name,
            _lock: lock,
            seen,
        };
        self.adopt_unrecorded(&op).await;
        Ok(op)
    }

    /// Under the lock: when no live process holds `run/proxy.pid` but exactly one
    /// proxy of this home serves, that proxy lost its PID file (a restart was
    /// interrupted after its successor took the file and died): ask it to take
    /// the file back, so it is visible and stoppable again.
    async fn adopt_unrecorded(&self, op: &Operation) {
        if self.running().is_some() {
            return;
        }
        let serving = serving_proxies(self.home());
        let [lone] = serving.as_slice() else {
            return;
        };
        match self.hand_back(lone.pid).await {
            Ok(what) => self.log_action(&format!(
                "{}: PID {} served without run/proxy.pid; {what}",
                op.name, lone.pid
            )),
            Err(why) => self.log_action(&format!(
                "{}: PID {} serves without run/proxy.pid and could not take it back: {why}",
                op.name, lone.pid
            )),
        }
    }

    /// Asks proxy `pid` (through its control socket) to take `run/proxy.pid` back.
    async fn hand_back(&self, pid: i32) -> Result<String, HandoffError> {
        let control = handoff::control_socket_path(self.home(), pid);
        let path = control.clone();
        tokio::task::spawn_blocking(move || handoff::request_reclaim(&control))
            .await
            .map_err(|source| HandoffError::Task { path, source })?
    }

    /// Starts the proxy detached and waits until it is ready.
    pub async fn start(
        &self,
        op: &Operation,
        tick: &dyn Fn(&str),
    ) -> Result<StartOutcome, SupervisorError> {
        if let Some((record, running)) = self.running() {
            let meanwhile = op.waited() && op.seen.as_ref() != Some(&record.identity());
            return Ok(StartOutcome::AlreadyRunning { running, meanwhile });
        }
        self.clear_stale_pid_file()?;
        let started = Instant::now();
        let mut child = Spawned::new(self.spawn(None)?, self.home(), None);
        let running = self.await_ready(&mut child, started, tick).await?;
        let ready_in = started.elapsed();
        self.log_action(&format!(
            "start pid={} url={} ready_ms={}",
            running.pid,
            running.url,
            ready_in.as_millis()
        ));
        Ok(StartOutcome::Started { running, ready_in })
    }

    /// Creates the home's folders and removes a stale PID file: what is always
    /// safe before a start.
    pub fn prepare(&self, _op: &Operation) -> Result<(), SupervisorError> {
        self.home()
            .ensure_dirs()
            .map_err(|source| SupervisorError::Home { source })?;
        for path in handoff::remove_stale_control_sockets(self.home()) {
            self.log_action(&format!("removed stale control socket {}", path.display()));
        }
        if self.running().is_some() {
            return Ok(());
        }
        self.clear_stale_pid_file()
    }

    fn clear_stale_pid_file(&self) -> Result<(), SupervisorError> {
        let path = self.home().proxy_pid_file();
        match pidfile::inspect(&path) {
            Ok(PidState::Stale(record)) => {
                if pidfile::remove_stale(&path).unwrap_or(false) {
                    let what = stale_words(&path, record.as_ref());
                    self.log_action(&format!("removed stale PID file ({what}; not signalled)"));
                }
                Ok(())
            }
            Ok(PidState::Busy { pid, problem }) => {
                Err(SupervisorError::ForeignPidFile { path, pid, problem })
            }
            Ok(PidState::Running(record)) => Err(SupervisorError::NotOurs {
                what: process::describe_pid(record.pid, Some(&record.identity())),
                path,
                pid: record.pid,
            }),
            Ok(PidState::Absent) => Ok(()),
            Err(source) => Err(SupervisorError::PidFile {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// The `proxy` binary: next to this executable, else on PATH.
    pub fn proxy_exe() -> Result<PathBuf, SupervisorError> {
        let beside = std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name(PROXY_EXE_NAME));
        if let Some(path) = beside.filter(|p| p.is_file()) {
            return Ok(path);
        }
        which::which(PROXY_EXE_NAME).map_err(|_| SupervisorError::NoProxyBinary)
    }

    /// Spawns `proxy --home HOME` in a new session, stdin closed, output
    /// appended to `logs/proxy.log`; with `listener`, as a successor that
    /// inherits the listening socket on descriptor 3.
    fn spawn(&self, listener: Option<&OwnedFd>) -> Result<Child, SupervisorError> {
        use std::os::unix::process::CommandExt;
        let home = self.home();
        home.ensure_dirs()
            .map_err(|source| SupervisorError::Home { source })?;
        let log_path = home.log_file(LogKind::Proxy);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| SupervisorError::Log {
                path: log_path.clone(),
                source,
            })?;
        let exe = Self::proxy_exe()?;
        let mut cmd = Command::new(&exe);
        cmd.arg("--home").arg(home.root());
        if let Some(host) = &self.address.host {
            cmd.arg("--host").arg(host);
        }
        if let Some(port) = self.address.port {
            cmd.arg("--port").arg(port.to_string());
        }
        cmd.stdin(Stdio::null())
            // stdout only carries the "listening on" line for interactive use; the
            // log gets structured lines (and stderr for fatal start-up errors).
            .stdout(Stdio::null())
            .stderr(log)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove(handoff::LISTEN_FD_VAR)
            .env_remove(handoff::HANDOFF_VAR)
            // systemd's notify socket belongs to whatever systemd started, not to a child.
            .env_remove("NOTIFY_SOCKET");
        let inherited = listener.map(|fd| fd.as_raw_fd());
        if inherited.is_some() {
            cmd.env(handoff::LISTEN_FD_VAR, handoff::INHERITED_FD.to_string())
                .env(handoff::HANDOFF_VAR, "1");
        }
        // SAFETY: only async-signal-safe calls (dup2, fcntl, setsid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = inherited {
                    if fd == handoff::INHERITED_FD {
                        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, handoff::INHERITED_FD) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
            .map_err(|source| SupervisorError::Spawn { exe, source })
    }

    /// Waits until the spawned proxy owns the PID file and answers
    /// `/health/ready`; on failure or timeout stops it again (it is ours) and
    /// waits until it is gone.
    async fn await_ready(
        &self,
        spawned: &mut Spawned,
        started: Instant,
        tick: &dyn Fn(&str),
    ) -> Result<Running, SupervisorError> {
        let pid = spawned.child.id() as i32;
        let identity = ProcessIdentity::of(pid).ok();
        let timeout = Duration::from_secs(self.config.daemon.startup_timeout);
        let pid_path = self.home().proxy_pid_file();
        let mut last_problem = String::from("it has not written its PID file yet");
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = spawned.child.try_wait() {
                spawned.armed = false;
                return Err(SupervisorError::ExitedDuringStartup {
                    pid,
                    status: status.to_string(),
                    old: None,
                    log_tail: self.proxy_log_tail(),
                });
            }
            if let Ok(PidState::Running(record)) = pidfile::inspect(&pid_path) {
                if record.pid == pid {
                    let running = Running {
                        pid,
                        url: self.url_for(&record),
                    };
                    // Ready means *this* process answered ready: while a restart's
                    // old proxy shares the socket, it may answer instead.
                    match probe::ready_pid(&self.probe, &running.url).await {
                        Ok(None) => {
                            spawned.armed = false;
                            return Ok(running);
                        }
                        Ok(Some(answered)) if answered == pid => {
                            spawned.armed = false;
                            return Ok(running);
                        }
                        Ok(Some(answered)) => {
                            last_problem = format!("PID {answered} answered, not PID {pid} yet")
                        }
                        Err(e) => last_problem = e.to_string(),
                    }
                }
            }
            tick(&format!(
                "waiting for PID {pid} to become ready ({:.1} s)",
                started.elapsed().as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Not ready in time: stop what we started, and only that.
        if let Some(identity) = identity {
            let grace = Duration::from_secs(self.config.daemon.stop_timeout);
            let _ = tokio::task::spawn_blocking(move || process::terminate(&identity, grace)).await;
        }
        let _ = spawned.child.wait();
        spawned.armed = false;
        Err(SupervisorError::NotReady {
            pid,
            timeout_secs: timeout.as_secs(),
            problem: last_problem,
            old: None,
            log_tail: self.proxy_log_tail(),
        })
    }

    /// Ends one process (identity-verified), on a blocking thread.
    async fn end(
        &self,
        op: &Operation,
        identity: ProcessIdentity,
        grace: Duration,
    ) -> Result<Ended, SupervisorError> {
        let pid = identity.pid;
        let started = Instant::now();
        let how = tokio::task::spawn_blocking(move || process::terminate(&identity, grace))
            .await
            .map_err(|source| SupervisorError::StopTask {
                operation: op.name,
                pid,
                source,
            })?
            .map_err(|source| SupervisorError::Stop {
                operation: op.name,
                pid,
                source,
            })?;
        Ok(Ended {
            pid,
            how,
            took: started.elapsed(),
        })
    }

    /// Stops every proxy of this home: the PID file's (SIGTERM, then SIGKILL after
    /// `daemon.stop_timeout`; `force`: SIGKILL at once), then any other (a
    /// successor in flight, a draining predecessor, one without its PID file).
    /// Never signals anything but a verified proxy of this home, and fails rather
    /// than say "stopped" while one still serves.
    pub async fn stop(&self, op: &Operation, force: bool) -> Result<StopOutcome, SupervisorError> {
        let path = self.home().proxy_pid_file();
        let grace = if force {
            Duration::ZERO
        } else {
            Duration::from_secs(self.config.daemon.stop_timeout)
        };
        let state = pidfile::inspect(&path).map_err(|source| SupervisorError::PidFile {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let mut ended = Vec::new();
        let mut stale = None;
        match state {
            PidState::Absent => {}
            PidState::Stale(record) => {
                pidfile::remove_stale(&path).map_err(|source| SupervisorError::PidFile {
                    action: "remove",
                    path: path.clone(),
                    source,
                })?;
                let what = stale_words(&path, record.as_ref());
                self.log_action(&format!(
                    "{}: removed stale PID file ({what}; not signalled)",
                    op.name
                ));
                stale = Some((record.map(|r| r.pid), what));
            }
            PidState::Busy { .. } | PidState::Running(_) => {
                let Some((record, _)) = self.running() else {
                    // Locked, but not by the process the record names.
                    return Err(self.clear_stale_pid_file().err().unwrap_or_else(|| {
                        SupervisorError::Changed {
                            operation: op.name,
                            path: path.clone(),
                        }
                    }));
                };
                ended.push(self.end(op, record.identity(), grace).await?);
                // A killed proxy could not remove its PID file or control socket.
                let _ = pidfile::remove_stale(&path);
            }
        }
        let recorded = ended.len();
        for other in proxies_of_home(self.home()) {
            if ended.iter().any(|e| e.pid == other.pid) {
                continue;
            }
            ended.push(self.end(op, other, grace).await?);
        }
        handoff::remove_stale_control_sockets(self.home());
        let still: Vec<i32> = serving_proxies(self.home()).iter().map(|p| p.pid).collect();
        for e in &ended {
            self.log_action(&format!("{}: stop pid={} ({e})", op.name, e.pid));
        }
        if !still.is_empty() {
            return Err(SupervisorError::StillServing {
                operation: op.name,
                pids: still,
            });
        }
        Ok(match (ended.is_empty(), stale) {
            (true, None) => StopOutcome::NotRunning,
            (true, Some((pid, what))) => StopOutcome::StaleRemoved { pid, what },
            (false, _) => StopOutcome::Stopped {
                others: ended.len() - recorded,
                ended,
            },
        })
    }

    /// Replaces a running proxy without refusing a request (see [`crate::lifecycle::handoff`]);
    /// starts one when none runs. Rotates oversized logs on the way. A proxy that
    /// another operation started while this one waited for the lock is kept.
    pub async fn restart(
        &self,
        op: &Operation,
        tick: &dyn Fn(&str),
    ) -> Result<RestartOutcome, SupervisorError> {
        if let Ok(rotated) = crate::home::logs::rotate_all(self.home(), self.config.logs.max_bytes)
        {
            for path in rotated {
                self.log_action(&format!("rotated {}", path.display()));
            }
        }
        let Some((old, running)) = self.running() else {
            let (running, ready_in) = self.start(op, tick).await?.running_and_time();
            return Ok(RestartOutcome::Started { running, ready_in });
        };
        if op.waited() && op.seen.as_ref() != Some(&old.identity()) {
            self.log_action(&format!(
                "{}: PID {} was started by another operation while this one waited; not restarting it again",
                op.name, old.pid
            ));
            return Ok(RestartOutcome::ByRival { running });
        }
        let wanted = self.config.server.port;
        // A new address (`restart --host/--port`, or `server.port` changed in the
        // file): the old socket cannot be handed over.
        if (self.address_given && self.address.host.is_some())
            || (wanted != 0 && old.port.is_some_and(|p| p != wanted))
        {
            let why = format!(
                "the address changes to {}",
                base_url_for(&self.config.server.host, wanted)
            );
            return self.stop_start(op, old, why, tick).await;
        }
        let control = handoff::control_socket_path(self.home(), old.pid);
        let path = control.clone();
        let fetched = tokio::task::spawn_blocking(move || handoff::fetch_listener(&control))
            .await
            .map_err(|source| HandoffError::Task { path, source })
            .and_then(|fetched| fetched);
        let listener = match fetched {
            Ok(fd) => fd,
            // No hand-off: the restart falls back to stop, then start, and says why.
            Err(e) => return self.stop_start(op, old, e.to_string(), tick).await,
        };
        let started = Instant::now();
        let mut child = Spawned::new(self.spawn(Some(&listener))?, self.home(), Some(old.pid));
        drop(listener); // the successor has its own copy
        let running = match self.await_ready(&mut child, started, tick).await {
            Ok(running) => running,
            Err(e) => {
                // The successor is gone (it exited, or was stopped again): the old
                // proxy, still serving, must hold the PID file.
                let pid_file = self.hand_back(old.pid).await;
                self.log_action(&format!(
                    "{}: successor failed; old PID {}: {}",
                    op.name,
                    old.pid,
                    match &pid_file {
                        Ok(what) => what.clone(),
                        Err(why) => format!("could not take run/proxy.pid back: {why}"),
                    }
                ));
                return Err(e.with_old(OldProxy {
                    pid: old.pid,
                    pid_file: pid_file.map(|_| ()),
                }));
            }
        };
        let ready_in = started.elapsed();
        self.await_nats_subscription(&running, tick).await;
        // Only now does the old process stop accepting and drain.
        let grace = Duration::from_secs(
            self.config.server.graceful_timeout + self.config.daemon.stop_timeout,
        );
        tick(&format!(
            "new proxy PID {} ready; old PID {} draining",
            running.pid, old.pid
        ));
        let ended = self.end(op, old.identity(), grace).await?;
        self.log_action(&format!(
            "restart old_pid={} new_pid={} handoff=yes ready_ms={} old: {ended}",
            old.pid,
            running.pid,
            ready_in.as_millis()
        ));
        Ok(RestartOutcome::HandedOver {
            old: ended,
            running,
            ready_in,
        })
    }

    /// With NATS configured, the successor's endpoints must be on the server
    /// before the old proxy unsubscribes, or a lone proxy's NATS requests find
    /// no responder for as long as the successor takes to connect. Bounded by
    /// [`NATS_HANDOVER`]: with NATS away nothing can be handed over, and the
    /// restart goes on.
    async fn await_nats_subscription(&self, running: &Running, tick: &dyn Fn(&str)) {
        if !self.config.nats.enabled() {
            return;
        }
        tick(&format!(
            "new proxy PID {} ready; waiting for its NATS subscription",
            running.pid
        ));
        let deadline = Instant::now() + NATS_HANDOVER;
        while Instant::now() < deadline {
            // The old proxy shares the socket: only the successor's answer counts.
            if let Ok((_, report)) = probe::report(&self.probe, &running.url).await
                && report.pid == running.pid as u32
                && report.nats.subscribed
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop_start(
        &self,
        op: &Operation,
        old: PidRecord,
        why: String,
        tick: &dyn Fn(&str),
    ) -> Result<RestartOutcome, SupervisorError> {
        self.log_action(&format!("restart old_pid={} handoff=no: {why}", old.pid));
        self.stop(op, false).await?;
        let (running, ready_in) = self.start(op, tick).await?.running_and_time();
        Ok(RestartOutcome::StopStart {
            old_pid: old.pid,
            running,
            ready_in,
            why,
        })
    }

    /// The state of the proxy, its health and the LSB exit code. Needs no lock:
    /// it reads the PID file and `/proc`, and asks what answers on the port.
    pub async fn status(&self) -> StatusReport {
        let mut report = self.status_of_pid_file().await;
        let recorded = report.pid.filter(|_| report.running);
        report.unrecorded = serving_proxies(self.home())
            .into_iter()
            .map(|p| p.pid)
            .filter(|&p| Some(p) != recorded)
            .collect();
        if let Some(&first) = report.unrecorded.first() {
            let pids = pid_words(&report.unrecorded);
            let port = self.config.server.port;
            if report.running {
                report.message = format!(
                    "{}; {pids} of this home also serves outside {} (`daemon stop` stops every proxy of this home)",
                    report.message,
                    report.pid_file.display()
                );
            } else {
                report.message = format!(
                    "{pids} of this home serves (port {port}) but {} does not name it; `daemon restart` or `daemon stop` takes care of it",
                    report.pid_file.display()
                );
                report.pid = Some(first);
                report.running = true;
            }
            report.state = ProxyState::Unhealthy;
            report.healthy = false;
        }
        report
    }

    async fn status_of_pid_file(&self) -> StatusReport {
        let pid_file = self.home().proxy_pid_file();
        let base = |state, running, pid, message: String| StatusReport {
            state,
            running,
            healthy: false,
            pid,
            url: None,
            uptime_secs: None,
            pid_file: pid_file.clone(),
            message,
            health: None,
            unrecorded: Vec::new(),
            watchdog: running_watchdog(self.home()),
            stopped_by_operator: stopped_by_operator(self.home()),
        };
        match pidfile::inspect(&pid_file) {
            Err(e) => base(
                ProxyState::Dead,
                false,
                None,
                format!("cannot read {}: {e}", pid_file.display()),
            ),
            Ok(PidState::Absent) => base(ProxyState::Stopped, false, None, "not running".into()),
            Ok(PidState::Stale(record)) => {
                let pid = record.as_ref().map(|r| r.pid);
                let message = format!(
                    "not running, but {} is left behind ({}); `daemon start` or `doctor` clears it",
                    pid_file.display(),
                    stale_words(&pid_file, record.as_ref())
                );
                base(ProxyState::Dead, false, pid, message)
            }
            Ok(PidState::Busy { pid, problem }) => base(
                ProxyState::Dead,
                false,
                pid,
                format!(
                    "{} is held by another program: {problem}",
                    pid_file.display()
                ),
            ),
            Ok(PidState::Running(record)) => {
                if !record.identity().matches_live() {
                    return base(
                        ProxyState::Dead,
                        false,
                        Some(record.pid),
                        format!(
                            "the PID file's process is gone: {}",
                            process::describe_pid(record.pid, Some(&record.identity()))
                        ),
                    );
                }
                let url = self.url_for(&record);
                let mut report = base(ProxyState::Unhealthy, true, Some(record.pid), String::new());
                report.url = Some(url.clone());
                match probe::report(&self.probe, &url).await {
                    Ok((code, health)) => {
                        report.healthy = code == 200 && health.status != HealthStatus::Fail;
                        report.uptime_secs = Some(health.uptime_secs);
                        report.state = if report.healthy {
                            ProxyState::Running
                        } else {
                            ProxyState::Unhealthy
                        };
                        report.message =
                            format!("health is {:?} ({code})", health.status).to_lowercase();
                        report.health = Some(health);
                    }
                    Err(e) => report.message = format!("running, but its health check failed: {e}"),
                }
                report
            }
        }
    }
}

/// What a stale PID file's PID is now, in words.
pub fn stale_words(path: &std::path::Path, record: Option<&PidRecord>) -> String {
    match record {
        Some(r) => process::describe_pid(r.pid, Some(&r.identity())),
        None => {
            let problem = pidfile::content_problem(path)
                .unwrap_or_else(|| "its content is not a PID record".into());
            match pidfile::read_first_pid(path) {
                Some(pid) => format!("{problem}; {}", process::describe_pid(pid, None)),
                None => problem,
            }
        }
    }
}
