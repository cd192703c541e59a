//! The watchdog (docs/contract.md §8): keeps the proxy of one home alive on long-running hosts.
//!
//! One loop on a current-thread runtime waits, without polling, for the first of:
//! the interval timer, the exit of the proxy named by `run/proxy.pid` (its pidfd
//! becomes readable, see [`process::wait_exit_async`]), or SIGTERM/SIGINT. Each
//! event but a signal runs one check: the PID file's process is alive (identity
//! verified) and `/health/ready` answers 200 within `health_timeout`.
//!
//! Strikes: a failed check is a strike; below `strikes` it triggers a restart
//! through [`Supervisor`] (the code behind `daemon stop`/`start`); at `strikes`
//! the watchdog gives up: it logs every reason, runs `on_give_up` and exits 1. A
//! passing check clears the strikes. A successful restart does *not* clear them:
//! only a later check does, so a proxy that crashes again right after each restart
//! is a crash loop that ends in a give-up instead of being restarted forever.
//!
//! A proxy that is alive but failed its check (hung, or SIGSTOPped) is stopped
//! with a short grace, `min(daemon.stop_timeout, health_timeout)`, then SIGKILL:
//! a process that cannot answer a health probe is not trusted to drain. The
//! hand-off restart of `daemon restart` needs a cooperating old process, so it is
//! not used here.
//!
//! A restart takes the home's operation lock like `daemon` does (waiting, with a log
//! line, while another operation holds it) and, if it had to wait, checks again
//! first: what another operator fixed meanwhile is not undone.
//!
//! Standing by: `daemon stop` leaves `run/stopped`; while it exists the watchdog
//! restarts nothing (a proxy an operator stopped stays stopped), says so once in
//! its log, and resumes when `daemon start` or `daemon restart` removes it.
//!
//! Safety: only verified proxies of this home are ever signalled (all signalling is
//! in [`Supervisor`]/[`process`]); `waitpid` is only called on PIDs this process
//! spawned.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::MissedTickBehavior;

use crate::api::health::probe;
use crate::home::config::{Config, base_url_for};
use crate::home::{Home, LogKind};
use crate::lifecycle::pidfile::{self, PidFileError, PidRecord, PidState};
use crate::lifecycle::process;
use crate::lifecycle::supervisor::{
    StartOutcome, StopOutcome, Supervisor, SupervisorError, stopped_by_operator,
};

/// How long `on_give_up` may run before it is killed.
pub const GIVE_UP_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a healthy watchdog writes a heartbeat line to its log.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3600);

/// Exit codes: 0 stopped by a signal / `--once` healthy; 1 gave up / `--once`
/// not healthy; 2 could not run (another watchdog, configuration, usage).
pub use crate::support::exit::{FAILED as EXIT_UNHEALTHY, OK as EXIT_OK, USAGE as EXIT_CANNOT_RUN};

/// Command-line overrides of the `[watchdog]` section.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub strikes: Option<u32>,
    pub once: bool,
}

/// The effective settings: flags over `warden.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    pub health_timeout: Duration,
    pub strikes: u32,
    pub on_give_up: String,
    /// SIGTERM → SIGKILL grace when the watchdog stops an unhealthy proxy.
    pub stop_grace: Duration,
}

impl Settings {
    pub fn new(config: &Config, options: &Options) -> Settings {
        let w = &config.watchdog;
        let health_timeout = options.timeout.unwrap_or(w.health_timeout).max(1);
        Settings {
            interval: Duration::from_secs(options.interval.unwrap_or(w.interval).max(1)),
            health_timeout: Duration::from_secs(health_timeout),
            strikes: options.strikes.unwrap_or(w.strikes).max(1),
            on_give_up: w.on_give_up.trim().to_string(),
            stop_grace: Duration::from_secs(config.daemon.stop_timeout.min(health_timeout)),
        }
    }
}

/// Consecutive failed checks and why each failed.
#[derive(Debug, Default)]
pub struct Strikes {
    reasons: Vec<String>,
}

impl Strikes {
    /// Records a strike; returns how many there are now.
    pub fn add(&mut self, reason: impl Into<String>) -> u32 {
        self.reasons.push(reason.into());
        self.count()
    }
    /// Clears the strikes; returns how many there were.
    pub fn clear(&mut self) -> u32 {
        let n = self.count();
        self.reasons.clear();
        n
    }
    pub fn count(&self) -> u32 {
        self.reasons.len() as u32
    }
    /// "1) …; 2) …" — the reasons, for the give-up line and the hook.
    pub fn summary(&self) -> String {
        self.reasons
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{}) {r}", i + 1))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The result of one check.
#[derive(Debug)]
pub enum Check {
    Healthy {
        pid: i32,
    },
    Failed {
        reason: String,
        /// The proxy's record when its process is alive (hung or unhealthy): it
        /// must be stopped before a new one can start.
        alive: Option<PidRecord>,
    },
}

/// What made the watchdog run a check.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Start,
    Interval,
    Exit(i32),
}

/// SIGTERM and SIGINT, installed before anything else so neither can kill the
/// watchdog with its default action mid-way.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub struct Watchdog {
    home: Home,
    settings: Settings,
    supervisor: Supervisor,
    probe: reqwest::Client,
    strikes: Strikes,
    /// PIDs of proxies this process spawned and has not reaped yet.
    children: Vec<i32>,
    /// Mirror log lines on stderr (a person is watching).
    echo: bool,
    /// `run/stopped` was there at the last check (logged once per stand-by).
    standing_by: bool,
}

impl Watchdog {
    /// A watchdog for `config`'s home. The supervisor gets the watchdog's probe
    /// timeout and its short stop grace.
    pub fn new(mut config: Config, options: &Options) -> Watchdog {
        let settings = Settings::new(&config, options);
        config.settings.watchdog.health_timeout = settings.health_timeout.as_secs();
        config.settings.daemon.stop_timeout = settings.stop_grace.as_secs();
        Watchdog {
            home: config.home.clone(),
            probe: probe::client(settings.health_timeout),
            supervisor: Supervisor::new(config),
            settings,
            strikes: Strikes::default(),
            children: Vec::new(),
            echo: std::io::stderr().is_terminal(),
            standing_by: false,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// One line in `logs/watchdog.log` (best effort: a full disk must not stop
    /// the watchdog from keeping the proxy alive).
    fn log(&self, message: &str) {
        if self.echo {
            eprintln!("watchdog: {message}");
        }
        let _ = crate::home::logs::append_line(&self.home, LogKind::Watchdog, message);
    }

    /// Checks the proxy: alive with the identity its PID file records, and ready
    /// within the timeout.
    pub async fn check(&self) -> Check {
        let failed = |reason: String| Check::Failed {
            reason,
            alive: None,
        };
        let path = self.home.proxy_pid_file();
        let record = match pidfile::inspect(&path) {
            Err(e) => return failed(format!("cannot read {}: {e}", path.display())),
            Ok(PidState::Absent) => {
                return failed("the proxy is not running (no run/proxy.pid)".into());
            }
            Ok(PidState::Stale(record)) => {
                return failed(format!(
                    "the proxy is not running (run/proxy.pid is stale: {})",
                    crate::lifecycle::supervisor::stale_words(&path, record.as_ref())
                ));
            }
            Ok(PidState::Busy { pid, problem }) => {
                let pid = pid.map_or("unknown".into(), |p| p.to_string());
                return failed(format!(
                    "run/proxy.pid is held by another program (PID {pid}): {problem}"
                ));
            }
            Ok(PidState::Running(record)) => record,
        };
        if !record.identity().matches_live() {
            return failed(format!(
                "the proxy is not running (run/proxy.pid is locked, but {})",
                process::describe_pid(record.pid, Some(&record.identity()))
            ));
        }
        let config = &self.supervisor.config;
        let url = base_url_for(
            &config.server.host,
            record.port.unwrap_or(config.server.port),
        );
        match probe::ready(&self.probe, &url).await {
            Ok(()) => Check::Healthy { pid: record.pid },
            Err(e) => Check::Failed {
                reason: format!(
                    "PID {} is alive but not ready: {e} (timeout {} s)",
                    record.pid,
                    self.settings.health_timeout.as_secs()
                ),
                alive: Some(record),
            },
        }
    }

    /// Reaps proxies this process spawned that have exited; returns how the one
    /// with `pid` ended, when it was one of them.
    fn reap(&mut self, pid: Option<i32>) -> Option<String> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let mut how = None;
        self.children.retain(|&child| {
            // Only PIDs we spawned and have not reaped: they cannot have been
            // recycled, and waitpid on anything else is ECHILD.
            match waitpid(
                nix::unistd::Pid::from_raw(child),
                Some(WaitPidFlag::WNOHANG),
            ) {
                Ok(WaitStatus::StillAlive) => true,
                Ok(status) => {
                    if Some(child) == pid {
                        how = match status {
                            WaitStatus::Exited(_, code) => Some(format!("exit status {code}")),
                            WaitStatus::Signaled(_, sig, _) => Some(format!("killed by {sig:?}")),
                            _ => None,
                        };
                    }
                    !matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..))
                }
                Err(_) => false,
            }
        });
        how
    }

    /// Replaces the proxy after a failed check: takes the home's operation lock
    /// (waiting, with a log line, while `daemon` or another tool works on it),
    /// checks again if it had to wait, stops a live but unhealthy proxy
    /// (identity-checked, SIGKILL after the stop grace), then starts a new one and
    /// waits until it is ready. Returns a sentence for the log.
    pub async fn restart(&mut self, alive: Option<&PidRecord>) -> Result<String, RestartError> {
        let mut parts = Vec::new();
        let (home, echo) = (self.home.clone(), self.echo);
        let op = self
            .supervisor
            .begin("watchdog restart", &mut |message: &str| {
                if echo {
                    eprintln!("watchdog: {message}");
                }
                let _ = crate::home::logs::append_line(&home, LogKind::Watchdog, message);
            })
            .await
            .map_err(RestartError::Begin)?;
        if let Some(by) = stopped_by_operator(&self.home) {
            // `daemon stop` ran while this restart waited for the lock.
            return Ok(format!(
                "nothing restarted: the proxy was {by}; standing by"
            ));
        }
        let mut alive = alive.cloned();
        if op.waited() {
            // Someone else worked on the proxy meanwhile: judge it again.
            match self.check().await {
                Check::Healthy { pid } => {
                    return Ok(format!(
                        "PID {pid} is healthy now: another operation took care of it while the watchdog waited"
                    ));
                }
                Check::Failed { alive: now, .. } => alive = now,
            }
        }
        if let Some(old) = &alive {
            // Only the process that failed the check: if `daemon restart` replaced
            // it meanwhile, the new one is left alone.
            match self.supervisor.running() {
                Some((now, _)) if now.identity() == old.identity() => {
                    match self.supervisor.stop(&op, false).await {
                        Ok(StopOutcome::Stopped { ended, .. }) => {
                            parts.extend(ended.iter().map(|e| format!("stopped {e}")));
                        }
                        Ok(_) => parts.push(format!("PID {} was already gone", old.pid)),
                        Err(source) => {
                            return Err(RestartError::Stop {
                                pid: old.pid,
                                source,
                            });
                        }
                    }
                    self.reap(None);
                }
                _ => parts.push(format!("PID {} was already replaced", old.pid)),
            }
        }
        match self.supervisor.start(&op, &|_| {}).await {
            Ok(StartOutcome::Started { running, ready_in }) => {
                self.children.push(running.pid);
                parts.push(format!(
                    "started PID {} at {} (ready in {} ms)",
                    running.pid,
                    running.url,
                    ready_in.as_millis()
                ));
                Ok(parts.join(", "))
            }
            Ok(StartOutcome::AlreadyRunning { running, .. }) => {
                parts.push(format!(
                    "PID {} is running (started by someone else meanwhile)",
                    running.pid
                ));
                Ok(parts.join(", "))
            }
            Err(source) => {
                // The proxy's own explanation: its last error line, else its last line.
                let lines = || {
                    source
                        .log_tail()
                        .iter()
                        .rev()
                        .filter(|l| !l.trim().is_empty())
                };
                let log_line = lines()
                    .find(|l| l.to_ascii_lowercase().contains("error"))
                    .or_else(|| lines().next())
                    .map(|l| l.trim().to_string());
                Err(RestartError::Start {
                    done: parts,
                    source,
                    log_line,
                })
            }
        }
    }

    /// `--once`: one check, one restart if it failed. 0 when the proxy is healthy
    /// at the end (also after a successful restart), 1 when not. Silent when the
    /// check passes, so cron mails only when something happened.
    pub async fn once(&mut self) -> i32 {
        if let Some(by) = stopped_by_operator(&self.home) {
            self.log(&format!(
                "once: standing by: the proxy was {by}; not checked, not restarted"
            ));
            return EXIT_OK;
        }
        match self.check().await {
            Check::Healthy { .. } => EXIT_OK,
            Check::Failed { reason, alive } => {
                self.log(&format!("once: check failed: {reason}"));
                println!("watchdog: check failed: {reason}");
                let started = Instant::now();
                match self.restart(alive.as_ref()).await {
                    Ok(what) => {
                        let line = format!(
                            "once: restart done in {} ms: {what}",
                            started.elapsed().as_millis()
                        );
                        self.log(&line);
                        println!("watchdog: {line}");
                        EXIT_OK
                    }
                    Err(e) => {
                        let line = format!(
                            "once: restart failed after {} ms: {e}",
                            started.elapsed().as_millis()
                        );
                        self.log(&line);
                        eprintln!("watchdog: {line}");
                        EXIT_UNHEALTHY
                    }
                }
            }
        }
    }

    /// Runs until a signal (0) or a give-up (1).
    pub async fn watch(&mut self, signals: &mut Signals) -> i32 {
        let s = &self.settings;
        self.log(&format!(
            "start pid={} interval={}s timeout={}s strikes={} stop_grace={}s on_give_up={}",
            std::process::id(),
            s.interval.as_secs(),
            s.health_timeout.as_secs(),
            s.strikes,
            s.stop_grace.as_secs(),
            if s.on_give_up.is_empty() {
                "none"
            } else {
                "set"
            },
        ));
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.settings.interval,
            self.settings.interval,
        );
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watched: Option<i32> = None;
        let mut last_heartbeat = Instant::now();
        let mut passed_since_heartbeat = 0u64;
        let mut trigger = Trigger::Start;
        loop {
            if let Some(code) = self.handle_check(trigger, signals).await {
                return code;
            }
            if matches!(trigger, Trigger::Interval) && self.strikes.count() == 0 {
                passed_since_heartbeat += 1;
                if last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
                    self.log(&format!(
                        "heartbeat: {passed_since_heartbeat} checks passed in the last {} min",
                        last_heartbeat.elapsed().as_secs() / 60
                    ));
                    last_heartbeat = Instant::now();
                    passed_since_heartbeat = 0;
                }
            }
            // The next poll is a full interval after this check (and its restart).
            ticker.reset();

            // Arm the exit watch on whatever run/proxy.pid names now.
            let current = self
                .supervisor
                .running()
                .map(|(record, _)| record.identity());
            let pid = current.as_ref().map(|id| id.pid);
            if pid != watched {
                if let Some(pid) = pid {
                    self.log(&format!("watching PID {pid}"));
                }
                watched = pid;
            }
            let exit = async {
                match current {
                    Some(identity) => match process::wait_exit_async(&identity).await {
                        Ok(()) => identity.pid,
                        Err(e) => {
                            self.log(&format!(
                                "cannot watch PID {} for its exit ({e}); relying on the {} s checks",
                                identity.pid,
                                self.settings.interval.as_secs()
                            ));
                            std::future::pending().await
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            trigger = tokio::select! {
                biased;
                name = signals.recv() => {
                    self.log_stop(name);
                    return EXIT_OK;
                }
                pid = exit => Trigger::Exit(pid),
                _ = ticker.tick() => Trigger::Interval,
            };
        }
    }

    fn log_stop(&self, signal_name: &str) {
        let proxy = match self.supervisor.running() {
            Some((record, _)) => format!("the proxy (PID {}) keeps running", record.pid),
            None => "no proxy is running".into(),
        };
        self.log(&format!("stop: {signal_name} received; {proxy}"));
    }

    /// One check and what follows from it. `Some(code)` ends the watchdog.
    async fn handle_check(&mut self, trigger: Trigger, signals: &mut Signals) -> Option<i32> {
        if let Some(by) = stopped_by_operator(&self.home) {
            self.reap(None);
            if !self.standing_by {
                self.standing_by = true;
                self.strikes.clear();
                self.log(&format!(
                    "standing by: the proxy was {by}; not restarting it until `daemon start` or `daemon restart`"
                ));
            }
            return None;
        }
        if self.standing_by {
            self.standing_by = false;
            self.log("watching again: `daemon start` or `daemon restart` removed run/stopped");
        }
        let exit_status = match trigger {
            Trigger::Exit(pid) => self.reap(Some(pid)),
            _ => {
                self.reap(None);
                None
            }
        };
        let (reason, alive) = match self.check().await {
            Check::Healthy { pid } => {
                let cleared = self.strikes.clear();
                if cleared > 0 {
                    self.log(&format!(
                        "recovered: PID {pid} passed its check; {cleared} strike(s) cleared"
                    ));
                }
                return None;
            }
            Check::Failed { reason, alive } => (reason, alive),
        };
        let reason = match trigger {
            Trigger::Exit(pid) => match exit_status {
                Some(how) => format!("PID {pid} exited ({how}); {reason}"),
                None => format!("PID {pid} exited; {reason}"),
            },
            _ => reason,
        };
        let n = self.strikes.add(reason.clone());
        let max = self.settings.strikes;
        let on = match trigger {
            Trigger::Start => "at start",
            Trigger::Interval => "interval",
            Trigger::Exit(_) => "on exit",
        };
        self.log(&format!("check failed (strike {n}/{max}, {on}): {reason}"));
        if n >= max {
            return Some(self.give_up().await);
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            biased;
            name = signals.recv() => {
                self.log(&format!(
                    "stop: {name} received during a restart; whatever it started keeps running"
                ));
                return Some(EXIT_OK);
            }
            outcome = self.restart(alive.as_ref()) => outcome,
        };
        let took = started.elapsed().as_millis();
        match outcome {
            Ok(what) => self.log(&format!("restart done in {took} ms: {what}")),
            Err(e) => self.log(&format!("restart failed after {took} ms: {e}")),
        }
        None
    }

    /// Logs the give-up with every reason, runs `on_give_up`, returns 1.
    async fn give_up(&mut self) -> i32 {
        let reason = format!(
            "{} consecutive failed checks: {}",
            self.strikes.count(),
            self.strikes.summary()
        );
        self.log(&format!("give up after {reason}"));
        if !self.settings.on_give_up.is_empty() {
            self.run_hook(&reason).await;
        }
        EXIT_UNHEALTHY
    }

    /// Runs `on_give_up` once through `sh -c`, in the home, with `WARDEN_HOME` and
    /// `WARDEN_WATCHDOG_REASON` set and its output appended to the watchdog log;
    /// killed after [`GIVE_UP_HOOK_TIMEOUT`].
    async fn run_hook(&self, reason: &str) {
        let log_path = self.home.log_file(LogKind::Watchdog);
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map(std::process::Stdio::from)
                .unwrap_or_else(|_| std::process::Stdio::null())
        };
        let started = Instant::now();
        let mut child = match tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.settings.on_give_up)
            .current_dir(self.home.root())
            .env("WARDEN_HOME", self.home.root())
            .env("WARDEN_WATCHDOG_REASON", reason)
            .stdin(std::process::Stdio::null())
            .stdout(open_log())
            .stderr(open_log())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                self.log(&format!("on_give_up could not be started: {e}"));
                return;
            }
        };
        self.log(&format!(
            "on_give_up started (PID {})",
            child.id().map_or("?".into(), |p| p.to_string())
        ));
        match tokio::time::timeout(GIVE_UP_HOOK_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => self.log(&format!(
                "on_give_up finished with {status} after {} ms",
                started.elapsed().as_millis()
            )),
            Ok(Err(e)) => self.log(&format!("on_give_up: cannot wait for it: {e}")),
            Err(_) => {
                // Our own child, not reaped yet: the PID is still its.
                let _ = child.start_kill();
                let _ = child.wait().await;
                self.log(&format!(
                    "on_give_up did not finish within {} s; it was killed",
                    GIVE_UP_HOOK_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

/// Why the watchdog could not replace the proxy; printed after "restart failed".
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// The home could not be prepared, or the operation lock was not granted.
    #[error("{0}")]
    Begin(SupervisorError),
    #[error("cannot stop PID {pid}: {source}")]
    Stop { pid: i32, source: SupervisorError },
    /// `done` is what happened before the start failed (a stop); `log_line` the
    /// proxy's own last word on it from `logs/proxy.log`.
    #[error(
        "{}{source}{}",
        if done.is_empty() { String::new() } else { format!("{}, then ", done.join(", ")) },
        log_line.as_ref().map(|l| format!("; logs/proxy.log: {l}")).unwrap_or_default()
    )]
    Start {
        done: Vec<String>,
        source: SupervisorError,
        log_line: Option<String>,
    },
}

/// Why this watchdog cannot watch the home.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogLockError {
    #[error("cannot describe this process for {}: {source}", path.display())]
    Describe {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another watchdog (PID {pid}) already watches {}; stop it first (it holds {})",
        home.display(),
        path.display()
    )]
    Running {
        pid: i32,
        home: std::path::PathBuf,
        path: std::path::PathBuf,
    },
    #[error(transparent)]
    PidFile(PidFileError),
}

/// Takes `run/watchdog.pid` for this process: one watchdog per home. The error
/// names the running watchdog.
pub fn lock(home: &Home) -> Result<pidfile::PidFileGuard, WatchdogLockError> {
    let path = home.watchdog_pid_file();
    let record = PidRecord::for_current_process(home.root(), None).map_err(|source| {
        WatchdogLockError::Describe {
            path: path.clone(),
            source,
        }
    })?;
    pidfile::acquire(&path, &record).map_err(|e| match e {
        PidFileError::Held {
            holder: Some(holder),
            path,
        } => WatchdogLockError::Running {
            pid: holder.pid,
            home: home.root().to_path_buf(),
            path,
        },
        other => WatchdogLockError::PidFile(other),
    })
}

/// The whole watchdog: lock, then `--once` or the loop. Returns the exit code.
pub async fn run(config: Config, options: Options) -> i32 {
    let home = config.home.clone();
    if let Err(e) = home.ensure_dirs() {
        eprintln!("watchdog: {e}");
        return EXIT_CANNOT_RUN;
    }
    // Before the lock: a signal from now on is handled, never the default action.
    let mut signals = if options.once {
        None
    } else {
        match Signals::install() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("watchdog: cannot install signal handlers: {e}");
                return EXIT_CANNOT_RUN;
            }
        }
    };
    let _guard = match lock(&home) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("watchdog: {e}");
            return EXIT_CANNOT_RUN;
        }
    };
    let mut watchdog = Watchdog::new(config, &options);
    match &mut signals {
        None => watchdog.once().await,
        Some(signals) => watchdog.watch(signals).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::config::Overrides;

    fn config(toml: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("warden.toml"), toml).unwrap();
        let config = Config::load(&Home::at(dir.path()), &Overrides::default()).unwrap();
        (dir, config)
    }

    #[test]
    fn flags_override_the_config_and_the_stop_grace_is_short() {
        let (_dir, config) = config(
            "[watchdog]\ninterval = 7\nhealth_timeout = 4\nstrikes = 5\non_give_up = \" echo x \"\n[daemon]\nstop_timeout = 10\n",
        );
        let s = Settings::new(&config, &Options::default());
        assert_eq!(s.interval, Duration::from_secs(7));
        assert_eq!(s.health_timeout, Duration::from_secs(4));
        assert_eq!(s.strikes, 5);
        assert_eq!(s.on_give_up, "echo x");
        assert_eq!(s.stop_grace, Duration::from_secs(4));
        let s = Settings::new(
            &config,
            &Options {
                interval: Some(1),
                timeout: Some(30),
                strikes: Some(2),
                once: false,
            },
        );
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(s.health_timeout, Duration::from_secs(30));
        assert_eq!(s.strikes, 2);
        assert_eq!(
            s.stop_grace,
            Duration::from_secs(10),
            "never above stop_timeout"
        );
    }

    #[test]
    fn defaults_are_the_specs() {
        let (_dir, config) = config("");
        let s = Settings::new(&config, &Options::default());
        assert_eq!(
            (s.interval.as_secs(), s.health_timeout.as_secs(), s.strikes),
            (30, 5, 3)
        );
        assert_eq!(s.on_give_up, "");
    }

    #[test]
    fn strikes_count_clear_and_summarise() {
        let mut strikes = Strikes::default();
        assert_eq!(strikes.clear(), 0);
        assert_eq!(strikes.add("a"), 1);
        assert_eq!(strikes.add("b"), 2);
        assert_eq!(strikes.summary(), "1) a; 2) b");
        assert_eq!(strikes.clear(), 2);
        assert_eq!(strikes.count(), 0);
        assert_eq!(strikes.add("c"), 1);
        assert_eq!(strikes.summary(), "1) c");
    }

    #[tokio::test]
    async fn check_reports_why_nothing_is_running() {
        let (dir, config) = config("");
        let wd = Watchdog::new(config, &Options::default());
        match wd.check().await {
            Check::Failed { reason, alive } => {
                assert!(reason.contains("not running"), "{reason}");
                assert!(alive.is_none());
            }
            other => panic!("{other:?}"),
        }
        // A stale PID file naming some PID: reported, nothing else.
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(dir.path().join("run/proxy.pid"), "1\n").unwrap();
        match wd.check().await {
            Check::Failed { reason, alive } => {
                assert!(reason.contains("stale"), "{reason}");
                assert!(alive.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let guard = lock(&home).unwrap();
        let err = lock(&home).unwrap_err().to_string();
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        drop(guard);
        drop(lock(&home).unwrap());
    }
}
