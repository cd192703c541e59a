//! Starting, stopping, restarting and inspecting the proxy of one home: the
//! library behind `daemon` and `watchdog`, so both act in exactly the same way.
//!
//! Safety rules, enforced here for every caller:
//! - a process is only ever signalled after its identity (PID, start time,
//!   executable) was verified against the PID file's record, through a pidfd
//!   where the kernel has one (see [`crate::lifecycle::process`]);
//! - a PID file whose lock is free is stale and is never a reason to signal
//!   anything: whatever process has that PID now is not ours;
//! - a process this module spawned and that does not become ready is stopped
//!   again, so a failed start leaves nothing behind.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::health::{HealthReport, HealthStatus, probe};
use crate::home::config::{Config, base_url_for};
use crate::home::{Home, LogKind};
use crate::lifecycle::handoff;
use crate::lifecycle::pidfile::{self, PidRecord, PidState};
use crate::lifecycle::process::{self, ProcessIdentity, Termination};

/// An operation that failed, with the log lines that explain it.
#[derive(Debug)]
pub struct SupervisorError {
    pub message: String,
    /// The last lines of `logs/proxy.log`, when they help.
    pub log_tail: Vec<String>,
}

impl std::fmt::Display for SupervisorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl SupervisorError {
    fn new(message: impl Into<String>) -> SupervisorError {
        SupervisorError {
            message: message.into(),
            log_tail: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Running {
    pub pid: i32,
    pub url: String,
}

#[derive(Debug)]
pub enum StartOutcome {
    Started {
        running: Running,
        ready_in: Duration,
    },
    AlreadyRunning(Running),
}

impl StartOutcome {
    fn running_and_time(self) -> (Running, Duration) {
        match self {
            StartOutcome::Started { running, ready_in } => (running, ready_in),
            StartOutcome::AlreadyRunning(running) => (running, Duration::ZERO),
        }
    }
}

#[derive(Debug)]
pub enum StopOutcome {
    NotRunning,
    /// The PID file's lock was free: the file was removed, nothing was signalled.
    StaleRemoved {
        pid: Option<i32>,
    },
    Stopped {
        pid: i32,
        how: Termination,
        took: Duration,
    },
}

#[derive(Debug)]
pub enum RestartOutcome {
    /// The listening socket was handed over; the old process drained.
    HandedOver {
        old_pid: i32,
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
}

impl StatusReport {
    /// The LSB exit code of [`ProxyState::exit_code`].
    pub fn exit_code(&self) -> i32 {
        self.state.exit_code()
    }
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
    process::find_proxies_of_home(home, "proxy")
        .into_iter()
        .filter(|p| Some(p.pid) != known && crate::lifecycle::ports::holds_listener(p.pid))
        .collect()
}

pub struct Supervisor {
    pub config: Config,
    probe: reqwest::Client,
}

impl Supervisor {
    pub fn new(config: Config) -> Supervisor {
        let timeout = Duration::from_secs(config.watchdog.health_timeout.max(1));
        Supervisor {
            probe: probe::client(timeout),
            config,
        }
    }

    fn home(&self) -> &Home {
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

    /// Starts the proxy detached and waits until it is ready.
    pub async fn start(&self, tick: &dyn Fn(&str)) -> Result<StartOutcome, SupervisorError> {
        if let Some((_, running)) = self.running() {
            return Ok(StartOutcome::AlreadyRunning(running));
        }
        self.clear_stale_pid_file()?;
        let started = Instant::now();
        let child = self.spawn(None)?;
        let running = self.await_ready(child, started, tick).await?;
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
    pub fn prepare(&self) -> Result<(), SupervisorError> {
        self.home()
            .ensure_dirs()
            .map_err(|e| SupervisorError::new(e.to_string()))?;
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
                    let pid = record
                        .map(|r| r.pid.to_string())
                        .unwrap_or_else(|| "?".into());
                    self.log_action(&format!(
                        "removed stale PID file (PID {pid}, not signalled)"
                    ));
                }
                Ok(())
            }
            Ok(PidState::Busy { pid, problem }) => Err(SupervisorError::new(format!(
                "{} is locked by another program (PID {}): {problem}; warden leaves it alone",
                path.display(),
                pid.map_or("unknown".into(), |p| p.to_string())
            ))),
            Ok(PidState::Running(record)) => Err(SupervisorError::new(format!(
                "{} is locked, but PID {} is no longer the proxy it names; warden leaves it alone",
                path.display(),
                record.pid
            ))),
            Ok(PidState::Absent) => Ok(()),
            Err(e) => Err(SupervisorError::new(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// The `proxy` binary: next to this executable, else on PATH.
    pub fn proxy_exe() -> Result<PathBuf, SupervisorError> {
        let beside = std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("proxy"));
        if let Some(path) = beside.filter(|p| p.is_file()) {
            return Ok(path);
        }
        which::which("proxy").map_err(|_| {
            SupervisorError::new(
                "cannot find the `proxy` binary next to this one or on PATH; install all five with `cargo install --path .`",
            )
        })
    }

    /// Spawns `proxy --home HOME` in a new session, stdin closed, output
    /// appended to `logs/proxy.log`; with `listener`, as a successor that
    /// inherits the listening socket on descriptor 3.
    fn spawn(&self, listener: Option<&OwnedFd>) -> Result<Child, SupervisorError> {
        use std::os::unix::process::CommandExt;
        let home = self.home();
        home.ensure_dirs()
            .map_err(|e| SupervisorError::new(e.to_string()))?;
        let log_path = home.log_file(LogKind::Proxy);
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| {
                    SupervisorError::new(format!("cannot open {}: {e}", log_path.display()))
                })
        };
        let mut cmd = Command::new(Self::proxy_exe()?);
        cmd.arg("--home")
            .arg(home.root())
            .stdin(Stdio::null())
            // stdout only carries the "listening on" line for interactive use; the
            // log gets structured lines (and stderr for fatal start-up errors).
            .stdout(Stdio::null())
            .stderr(open_log()?)
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
            .map_err(|e| SupervisorError::new(format!("cannot start the proxy: {e}")))
    }

    /// Waits until the spawned proxy owns the PID file and answers
    /// `/health/ready`; on failure or timeout stops it again (it is ours).
    async fn await_ready(
        &self,
        mut child: Child,
        started: Instant,
        tick: &dyn Fn(&str),
    ) -> Result<Running, SupervisorError> {
        let pid = child.id() as i32;
        let identity = ProcessIdentity::of(pid).ok();
        let timeout = Duration::from_secs(self.config.daemon.startup_timeout);
        let pid_path = self.home().proxy_pid_file();
        let mut last_problem = String::from("it has not written its PID file yet");
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(SupervisorError {
                    message: format!("the proxy (PID {pid}) exited during start-up with {status}"),
                    log_tail: self.proxy_log_tail(),
                });
            }
            if let Ok(PidState::Running(record)) = pidfile::inspect(&pid_path) {
                if record.pid == pid {
                    let running = Running {
                        pid,
                        url: self.url_for(&record),
                    };
                    match probe::ready(&self.probe, &running.url).await {
                        Ok(()) => return Ok(running),
                        Err(e) => last_problem = e,
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
        let _ = child.wait();
        Err(SupervisorError {
            message: format!(
                "the proxy (PID {pid}) was not ready within daemon.startup_timeout ({} s): {last_problem}; it was stopped again",
                timeout.as_secs()
            ),
            log_tail: self.proxy_log_tail(),
        })
    }

    /// Stops the proxy: SIGTERM, then SIGKILL after `daemon.stop_timeout`
    /// (`force`: SIGKILL at once). Never signals anything but the verified proxy.
    pub async fn stop(&self, force: bool) -> Result<StopOutcome, SupervisorError> {
        let path = self.home().proxy_pid_file();
        let state = pidfile::inspect(&path)
            .map_err(|e| SupervisorError::new(format!("cannot read {}: {e}", path.display())))?;
        match state {
            PidState::Absent => Ok(StopOutcome::NotRunning),
            PidState::Stale(record) => {
                pidfile::remove_stale(&path).map_err(|e| {
                    SupervisorError::new(format!("cannot remove {}: {e}", path.display()))
                })?;
                let pid = record.map(|r| r.pid);
                self.log_action(&format!(
                    "stop: removed stale PID file (PID {}, not signalled)",
                    pid.map_or("?".into(), |p| p.to_string())
                ));
                Ok(StopOutcome::StaleRemoved { pid })
            }
            PidState::Busy { .. } | PidState::Running(_) => {
                let Some((record, _)) = self.running() else {
                    // Locked, but not by the process the record names.
                    return Err(self.clear_stale_pid_file().err().unwrap_or_else(|| {
                        SupervisorError::new(format!(
                            "{} changed while reading it; try again",
                            path.display()
                        ))
                    }));
                };
                let grace = if force {
                    Duration::ZERO
                } else {
                    Duration::from_secs(self.config.daemon.stop_timeout)
                };
                let identity = record.identity();
                let started = Instant::now();
                let how = tokio::task::spawn_blocking(move || process::terminate(&identity, grace))
                    .await
                    .map_err(|e| SupervisorError::new(e.to_string()))?
                    .map_err(|e| SupervisorError::new(e.to_string()))?;
                // A killed proxy could not remove its PID file or control socket.
                let _ = pidfile::remove_stale(&path);
                handoff::remove_stale_control_sockets(self.home());
                let took = started.elapsed();
                self.log_action(&format!(
                    "stop pid={} how={how:?} took_ms={}",
                    record.pid,
                    took.as_millis()
                ));
                Ok(StopOutcome::Stopped {
                    pid: record.pid,
                    how,
                    took,
                })
            }
        }
    }

    /// Replaces a running proxy without refusing a request (see [`crate::lifecycle::handoff`]);
    /// starts one when none runs. Rotates oversized logs on the way.
    pub async fn restart(&self, tick: &dyn Fn(&str)) -> Result<RestartOutcome, SupervisorError> {
        if let Ok(rotated) = crate::home::logs::rotate_all(self.home(), self.config.logs.max_bytes)
        {
            for path in rotated {
                self.log_action(&format!("rotated {}", path.display()));
            }
        }
        let Some((old, _)) = self.running() else {
            let (running, ready_in) = self.start(tick).await?.running_and_time();
            return Ok(RestartOutcome::Started { running, ready_in });
        };
        let control = handoff::control_socket_path(self.home(), old.pid);
        let listener =
            match tokio::task::spawn_blocking(move || handoff::fetch_listener(&control)).await {
                Ok(Ok(fd)) => fd,
                Ok(Err(e)) => return self.stop_start(old, e.to_string(), tick).await,
                Err(e) => return self.stop_start(old, e.to_string(), tick).await,
            };
        let started = Instant::now();
        let child = self.spawn(Some(&listener))?;
        drop(listener); // the successor has its own copy
        let running = self
            .await_ready(child, started, tick)
            .await
            .map_err(|mut e| {
                e.message = format!(
                    "{}; the old proxy (PID {}) is still serving",
                    e.message, old.pid
                );
                e
            })?;
        let ready_in = started.elapsed();
        // Only now does the old process stop accepting and drain.
        let identity = old.identity();
        let grace = Duration::from_secs(
            self.config.server.graceful_timeout + self.config.daemon.stop_timeout,
        );
        tick(&format!(
            "new proxy PID {} ready; old PID {} draining",
            running.pid, old.pid
        ));
        let how = tokio::task::spawn_blocking(move || process::terminate(&identity, grace))
            .await
            .map_err(|e| SupervisorError::new(e.to_string()))?
            .map_err(|e| SupervisorError::new(e.to_string()))?;
        self.log_action(&format!(
            "restart old_pid={} new_pid={} handoff=yes ready_ms={} old={how:?}",
            old.pid,
            running.pid,
            ready_in.as_millis()
        ));
        Ok(RestartOutcome::HandedOver {
            old_pid: old.pid,
            running,
            ready_in,
        })
    }

    async fn stop_start(
        &self,
        old: PidRecord,
        why: String,
        tick: &dyn Fn(&str),
    ) -> Result<RestartOutcome, SupervisorError> {
        self.log_action(&format!("restart old_pid={} handoff=no: {why}", old.pid));
        self.stop(false).await?;
        let (running, ready_in) = self.start(tick).await?.running_and_time();
        Ok(RestartOutcome::StopStart {
            old_pid: old.pid,
            running,
            ready_in,
            why,
        })
    }

    /// The state of the proxy, its health and the LSB exit code.
    pub async fn status(&self) -> StatusReport {
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
                let pid = record.map(|r| r.pid);
                let what = match pid {
                    Some(p) if process::is_alive(p) => {
                        format!("PID {p} is now another program, not this home's proxy")
                    }
                    Some(p) => {
                        format!("PID {p} no longer runs: the proxy died without cleaning up")
                    }
                    None => "its content is unreadable".to_string(),
                };
                let message = format!(
                    "not running, but {} is left behind ({what}); `daemon start` or `doctor` clears it",
                    pid_file.display()
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
                        "the PID file's process is gone".into(),
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
