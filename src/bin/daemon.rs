//! `daemon`: start, stop, restart, status, check and logs for the proxy of one
//! home (docs/contract.md §5). The work is in `warden::lifecycle::supervisor` (shared with `watchdog`)
//! and `warden::ops::preflight` (shared with `preflight`); this file parses arguments,
//! draws the spinner and chooses exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use warden::home::config::{Config, Overrides};
use warden::home::{Home, LogKind};
use warden::lifecycle::supervisor::{
    Operation, RestartOutcome, StartOutcome, StopOutcome, Supervisor, SupervisorError,
};
use warden::ops::preflight::{self, RunOptions, report};
use warden::support::cli::HomeArgs;

/// Runs the warden proxy in the background and keeps track of it.
///
/// Examples:
///   daemon start               # preflight checks, then start and wait until ready
///   daemon start --port 8080   # on another port (restarts and the watchdog keep it)
///   daemon status --json       # exit 0 healthy, 1 dead, 3 stopped, 4 unhealthy
///   daemon restart             # zero-downtime: the new proxy takes over the socket
///   daemon reload              # apply warden.toml, .env and keys.toml changes, as SIGHUP does
///   daemon logs -f             # follow logs/proxy.log
///   daemon stop                # SIGTERM, SIGKILL after daemon.stop_timeout
#[derive(Parser, Debug)]
#[command(name = "daemon", version = warden::VERSION, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    home: HomeArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the preflight checks, start the proxy detached and wait until it is ready.
    Start {
        /// Skip the preflight checks.
        #[arg(long)]
        no_check: bool,
        /// Listen on this address (kept for restarts and the watchdog) [default: server.host]
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// Listen on this port (kept for restarts and the watchdog) [default: server.port]
        #[arg(long, value_name = "P")]
        port: Option<u16>,
        /// Print the outcome as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop the proxy: SIGTERM, then SIGKILL after daemon.stop_timeout.
    Stop {
        /// SIGKILL at once.
        #[arg(long)]
        force: bool,
    },
    /// Replace the running proxy without refusing a request; rotates oversized logs.
    Restart {
        /// Skip the preflight checks.
        #[arg(long)]
        no_check: bool,
        /// Move to this address (stop, then start) [default: the running proxy's]
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// Move to this port (stop, then start) [default: the running proxy's]
        #[arg(long, value_name = "P")]
        port: Option<u16>,
    },
    /// Re-read warden.toml, .env and keys.toml in the running proxy (as SIGHUP does). Exit 0 applied,
    /// 1 applied but some settings need `daemon restart` (named), 2 refused (the running
    /// configuration keeps serving), 3 not running, 4 the proxy could not be asked.
    Reload,
    /// Is the proxy running and healthy? Exit 0 yes, 1 PID file but dead, 3 not running, 4 unhealthy.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The preflight checks (same as the `preflight` binary).
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Show a log: the last N lines, or follow it with -f.
    Logs {
        /// Keep printing new lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// How many lines to show.
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        lines: usize,
        /// Which log.
        #[arg(value_enum, default_value_t = Which::Proxy)]
        which: Which,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Which {
    Proxy,
    Watchdog,
    Daemon,
}

fn main() -> ExitCode {
    warden::support::cli::restore_sigpipe();
    if let Some(code) = warden::support::cli::handle_generate(Args::command) {
        return code;
    }
    let args = Args::parse();
    let home = args.home.resolve_or_exit("daemon");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let code = runtime.block_on(run(home, args.command));
    warden::support::exit::to_exit_code(code)
}

fn load(home: &Home) -> Result<Config, i32> {
    Config::load(home, &Overrides::default()).map_err(|e| {
        eprintln!("daemon: configuration error: {e}");
        // doctor cannot fix a wrong value or key: the message names where it is.
        eprintln!("daemon: fix what it names, then try again");
        1
    })
}

/// For `stop` and `status`, which must work even when `warden.toml` was broken
/// after the proxy started: they need only the PID file, so a configuration
/// error is a warning and the defaults stand in.
fn load_or_defaults(home: &Home) -> Config {
    Config::load(home, &Overrides::default()).unwrap_or_else(|e| {
        eprintln!("daemon: warning: configuration error: {e}");
        eprintln!("daemon: warning: using defaults for this command; the running proxy is found through its PID file");
        Config::defaults(home)
    })
}

async fn run(home: Home, command: Cmd) -> i32 {
    match command {
        Cmd::Logs {
            follow,
            lines,
            which,
        } => logs(&home, follow, lines, which),
        Cmd::Check { json } => check(&home, json).await.1,
        Cmd::Start {
            no_check,
            json,
            host,
            port,
        } => {
            let address = Overrides {
                host,
                port,
                upstream_url: None,
            };
            let Some((supervisor, op)) =
                launching(&home, "daemon start", no_check, address, false).await
            else {
                return 1;
            };
            start(&supervisor, &op, json).await
        }
        Cmd::Stop { force } => {
            let supervisor = Supervisor::new(load_or_defaults(&home));
            let Some(op) = begin(&supervisor, "daemon stop").await else {
                return 1;
            };
            stop(&supervisor, &op, force).await
        }
        Cmd::Restart {
            no_check,
            host,
            port,
        } => {
            let address = Overrides {
                host,
                port,
                upstream_url: None,
            };
            let Some((supervisor, op)) =
                launching(&home, "daemon restart", no_check, address, true).await
            else {
                return 1;
            };
            restart(&supervisor, &op).await
        }
        Cmd::Reload => {
            let supervisor = Supervisor::new(load_or_defaults(&home));
            let Some(op) = begin(&supervisor, "daemon reload").await else {
                return warden::support::exit::reload::UNREACHABLE;
            };
            reload(&supervisor, &op).await
        }
        Cmd::Status { json } => {
            let config = load_or_defaults(&home);
            let ui_enabled = config.server.ui;
            let status = Supervisor::new(config).status().await;
            // The status page of a running proxy (`server.ui`), e.g. http://127.0.0.1:8000/ui.
            let ui_url = status
                .url
                .as_deref()
                .filter(|_| ui_enabled && status.running)
                .map(|url| format!("{}/ui", url.trim_end_matches('/')));
            if json {
                let mut value = serde_json::to_value(&status).expect("status serialises");
                if let Some(object) = value.as_object_mut() {
                    object.insert("ui_url".into(), serde_json::json!(ui_url));
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("status serialises")
                );
            } else {
                print_status(&status, ui_url.as_deref());
            }
            status.exit_code()
        }
    }
}

/// Takes the home's operation lock, saying so on stderr while another operation
/// holds it; `None` (after printing why) when it could not be had in time.
/// What `start` and `restart` do first: load the configuration, take the
/// operation lock, prepare the home and, unless `--no-check`, pass preflight.
/// `None` (exit 1) once any step has said why it refused.
async fn launching(
    home: &Home,
    name: &'static str,
    no_check: bool,
    address: Overrides,
    keep_address: bool,
) -> Option<(Supervisor, Operation)> {
    let mut supervisor = Supervisor::new(load(home).ok()?);
    let op = begin(&supervisor, name).await?;
    if let Err(e) = supervisor.set_address(&op, address, keep_address) {
        report_error(&e);
        return None;
    }
    // Preflight checks the address the proxy will really be given.
    let overrides = Overrides {
        host: Some(supervisor.config.server.host.clone()),
        port: Some(supervisor.config.server.port),
        upstream_url: None,
    };
    if !prepare(&supervisor, &op) || (!no_check && !gate(home, overrides).await) {
        return None;
    }
    Some((supervisor, op))
}

async fn begin(supervisor: &Supervisor, name: &'static str) -> Option<Operation> {
    let mut on_wait = |message: &str| eprintln!("daemon: {message}");
    match supervisor.begin(name, &mut on_wait).await {
        Ok(op) => Some(op),
        Err(e) => {
            report_error(&e);
            supervisor.log_action(&format!("{name} refused: {e}"));
            None
        }
    }
}

/// What is always safe before a start: the home's own folders are created and a
/// stale PID file (its lock is free) is removed, so a fresh machine or one after
/// a crash starts with one command.
fn prepare(supervisor: &Supervisor, op: &Operation) -> bool {
    match supervisor.prepare(op) {
        Ok(()) => true,
        Err(e) => {
            report_error(&e);
            false
        }
    }
}

/// Runs the preflight checks; prints the failures and returns false when any failed.
async fn gate(home: &Home, overrides: Overrides) -> bool {
    let options = RunOptions {
        overrides,
        ..RunOptions::default()
    };
    let report = preflight::run(home, &options).await;
    let failed: Vec<_> = report.failed().collect();
    if failed.is_empty() {
        // Warnings do not stop a start, but a provider or NATS server that is
        // down should not go unmentioned until the first failed request.
        for check in report
            .checks
            .iter()
            .filter(|c| c.status == preflight::Status::Warn)
        {
            eprintln!("daemon: preflight warning: {}: {}", check.id, check.message);
        }
        return true;
    }
    eprintln!("daemon: preflight failed; not starting:");
    for check in failed {
        eprintln!("  ✗ {}: {}", check.id, check.message);
        if let Some(hint) = &check.hint {
            eprintln!("      fix: {hint}");
        }
    }
    let ids: Vec<_> = report.failed().map(|c| c.id.as_str()).collect();
    // Only where doctor has a fix (folders, .env's mode, stale PID files,
    // orphans, the prompt cache); a taken port or a typo is the operator's to fix.
    if ids
        .iter()
        .any(|id| ["dirs", "env", "process", "prompts"].contains(id))
    {
        eprintln!(
            "daemon: run `doctor` to fix what is safe to fix, or pass --no-check to start anyway"
        );
    } else {
        eprintln!(
            "daemon: fix what is named above (doctor has no fix for it), or pass --no-check to start anyway"
        );
    }
    let line = format!("start refused: preflight failed ({})", ids.join(", "));
    let _ = warden::home::logs::append_line(home, LogKind::Daemon, &line);
    false
}

async fn check(home: &Home, json: bool) -> (bool, i32) {
    let report = preflight::run(home, &RunOptions::default()).await;
    if json {
        println!("{}", report::json(&report));
    } else {
        print!("{}", report::human(&report, report::color_wanted()));
    }
    (report.ok, report::exit_code(&report))
}

/// A spinner on a terminal showing an operation's progress messages; silence
/// otherwise. Cleared when dropped.
struct Spinner(Option<indicatif::ProgressBar>);

impl Spinner {
    fn new() -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(80));
        Spinner(Some(bar))
    }

    fn tick(&self, msg: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg.to_string());
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Reports a failed `start`, `stop` or `restart` and logs it: exit 1.
fn failed(supervisor: &Supervisor, what: &str, e: &SupervisorError) -> i32 {
    report_error(e);
    supervisor.log_action(&format!("{what} failed: {e}"));
    1
}

fn report_error(e: &SupervisorError) {
    eprintln!("daemon: {e}");
    if !e.log_tail().is_empty() {
        eprintln!("daemon: last lines of logs/proxy.log:");
        for line in e.log_tail() {
            eprintln!("  {line}");
        }
    }
}

/// `daemon start`/`restart` end what `daemon stop` asked of a watchdog.
fn resume_watchdog(supervisor: &Supervisor, op: &Operation) {
    match supervisor.clear_stopped(op) {
        Ok(true) => {
            supervisor.log_action("run/stopped removed: a watchdog watches the proxy again");
        }
        Ok(false) => {}
        Err(e) => eprintln!("daemon: warning: {e}; a watchdog keeps standing by"),
    }
}

async fn start(supervisor: &Supervisor, op: &Operation, json: bool) -> i32 {
    resume_watchdog(supervisor, op);
    let spinner = Spinner::new();
    let outcome = interruptible(supervisor.start(op, &|msg| spinner.tick(msg))).await;
    drop(spinner);
    let Some(outcome) = outcome else {
        return interrupted(supervisor, "start");
    };
    match outcome {
        Ok(StartOutcome::Started { running, ready_in }) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"started": true, "pid": running.pid, "url": running.url, "ready_ms": ready_in.as_millis() as u64})
                );
            } else {
                println!(
                    "proxy started: PID {}, {} (ready in {} ms)",
                    running.pid,
                    running.url,
                    ready_in.as_millis()
                );
            }
            0
        }
        Ok(StartOutcome::AlreadyRunning { running, meanwhile }) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"started": false, "pid": running.pid, "url": running.url, "already_running": true, "started_while_waiting": meanwhile})
                );
            } else {
                let note = if meanwhile {
                    " (started by another operation while this one waited)"
                } else {
                    ""
                };
                println!(
                    "proxy already running: PID {}, {}{note}",
                    running.pid, running.url
                );
            }
            0
        }
        Err(e) => failed(supervisor, "start", &e),
    }
}

/// Runs `operation` until it ends or SIGINT/SIGTERM/SIGHUP arrives (`None`).
/// Dropping an interrupted start or restart stops the proxy it had spawned and
/// not yet accepted, and hands `run/proxy.pid` back to the old proxy.
async fn interruptible<T>(operation: impl Future<Output = T>) -> Option<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return Some(operation.await);
    };
    tokio::select! {
        outcome = operation => Some(outcome),
        _ = int.recv() => None,
        _ = term.recv() => None,
        _ = hup.recv() => None,
    }
}

/// Exit code 130, as for a command ended by Ctrl-C.
fn interrupted(supervisor: &Supervisor, what: &str) -> i32 {
    eprintln!(
        "daemon: {what} interrupted; a proxy it had started but not yet accepted was stopped again, and what served before keeps serving"
    );
    supervisor.log_action(&format!("{what} interrupted by a signal"));
    130
}

async fn stop(supervisor: &Supervisor, op: &Operation, force: bool) -> i32 {
    // First, so a watchdog that checks while the proxy stops stands by.
    if let Err(e) = supervisor.mark_stopped(op) {
        eprintln!("daemon: warning: {e}; a running watchdog may start the proxy again");
    }
    let code = stop_now(supervisor, op, force).await;
    if let Some(watchdog) = warden::lifecycle::supervisor::running_watchdog(supervisor.home()) {
        println!(
            "watchdog PID {} stands by and will not restart the proxy until `daemon start` or `daemon restart`",
            watchdog.pid
        );
    }
    code
}

async fn stop_now(supervisor: &Supervisor, op: &Operation, force: bool) -> i32 {
    match supervisor.stop(op, force).await {
        Ok(StopOutcome::NotRunning) => {
            println!("proxy is not running");
            0
        }
        Ok(StopOutcome::StaleRemoved { what, .. }) => {
            println!(
                "proxy was not running; removed the stale PID file ({what}; it was not signalled)"
            );
            0
        }
        Ok(StopOutcome::Stopped { ended, others }) => {
            let recorded = ended.len() - others;
            for (i, e) in ended.iter().enumerate() {
                if i < recorded {
                    println!("proxy stopped: {e}");
                } else {
                    println!(
                        "proxy stopped: {e} (a proxy of this home not named by run/proxy.pid)"
                    );
                }
            }
            0
        }
        Err(e) => failed(supervisor, "stop", &e),
    }
}

async fn reload(supervisor: &Supervisor, op: &Operation) -> i32 {
    match supervisor.reload(op).await {
        Ok(None) => {
            println!(
                "proxy is not running; nothing to reload (`daemon start` reads the configuration)"
            );
            warden::support::exit::reload::NOT_RUNNING
        }
        Ok(Some(answer)) => {
            let line = format!("proxy PID {}: {}", answer.running.pid, answer.message);
            if answer.code == 0 {
                println!("{line}");
            } else {
                eprintln!("daemon: {line}");
            }
            answer.code
        }
        Err(e) => {
            failed(supervisor, "reload", &e);
            warden::support::exit::reload::UNREACHABLE
        }
    }
}

async fn restart(supervisor: &Supervisor, op: &Operation) -> i32 {
    resume_watchdog(supervisor, op);
    let spinner = Spinner::new();
    let outcome = interruptible(supervisor.restart(op, &|msg| spinner.tick(msg))).await;
    drop(spinner);
    let Some(outcome) = outcome else {
        return interrupted(supervisor, "restart");
    };
    match outcome {
        Ok(RestartOutcome::HandedOver {
            old,
            running,
            ready_in,
        }) => {
            println!(
                "proxy restarted without downtime: PID {} → PID {}, {} (ready in {} ms)",
                old.pid,
                running.pid,
                running.url,
                ready_in.as_millis()
            );
            0
        }
        Ok(RestartOutcome::Started { running, ready_in }) => {
            println!(
                "proxy was not running; started: PID {}, {} (ready in {} ms)",
                running.pid,
                running.url,
                ready_in.as_millis()
            );
            0
        }
        Ok(RestartOutcome::StopStart {
            old_pid,
            running,
            why,
            ..
        }) => {
            println!(
                "proxy restarted by stop and start (no socket hand-off: {why}): PID {old_pid} → PID {}, {}",
                running.pid, running.url
            );
            0
        }
        Ok(RestartOutcome::ByRival { running }) => {
            println!(
                "proxy was restarted by another operation while this one waited: PID {}, {}; not restarting it again",
                running.pid, running.url
            );
            0
        }
        Err(e) => failed(supervisor, "restart", &e),
    }
}

fn print_status(status: &warden::lifecycle::supervisor::StatusReport, ui_url: Option<&str>) {
    use warden::lifecycle::supervisor::ProxyState;
    match status.state {
        ProxyState::Running | ProxyState::Unhealthy => {
            let pid = status.pid.unwrap_or_default();
            let url = status.url.as_deref().unwrap_or("?");
            println!(
                "proxy {}: PID {pid}, {url}",
                if status.healthy {
                    "running"
                } else {
                    "UNHEALTHY"
                }
            );
            if let Some(ui_url) = ui_url {
                println!("  page      {ui_url}");
            }
            if let Some(h) = &status.health {
                println!("  uptime    {:.0} s", h.uptime_secs);
                println!(
                    "  requests  {} total ({} ok, {} failed), {} in flight, {} rejected at the limit",
                    h.requests.total,
                    h.requests.success,
                    h.requests.error,
                    h.requests.in_flight,
                    h.requests.rejected
                );
                // `[upstream]` is the one provider `default`; with [[providers]]
                // it is unused, and the provider lines below say where requests go.
                if h.providers.keys().all(|name| name == "default") {
                    println!(
                        "  upstream  {} ({})",
                        warden::support::redact::url(&h.upstream.url),
                        h.upstream.api
                    );
                }
                for (name, p) in &h.providers {
                    let mut line = format!(
                        "  provider  {name}: {}, {} in flight, {} failures in a row",
                        p.state, p.in_flight, p.failures
                    );
                    if let Some(until) = &p.cooldown_until {
                        line.push_str(&format!(", cooling until {until}"));
                    }
                    if let Some(error) = &p.last_error {
                        line.push_str(&format!(", last error: {error}"));
                    }
                    println!("{line}");
                }
                if !h.cooling_models.is_empty() {
                    println!(
                        "  cooling   every provider of {} is cooling: requests for it get 503 until one recovers",
                        h.cooling_models.join(", ")
                    );
                }
                for (name, p) in &h.prompts {
                    let age = p.age_secs.map_or("-".to_string(), |a| format!("{a:.0} s"));
                    println!(
                        "  prompt    {name}: {} (age {age}, {})",
                        p.source,
                        if p.fresh { "fresh" } else { "stale" }
                    );
                }
                if h.nats.state != "off" {
                    println!(
                        "  nats      {}, {} in flight",
                        h.nats.state, h.nats.in_flight
                    );
                }
                println!(
                    "  memory    {:.1} MiB",
                    h.memory.rss_bytes as f64 / 1048576.0
                );
            }
            if !status.healthy {
                println!("  {}", status.message);
            }
        }
        ProxyState::Stopped => match &status.stopped_by_operator {
            Some(by) => println!("proxy is not running ({by})"),
            None => println!("proxy is not running"),
        },
        ProxyState::Dead => println!("proxy {}: {}", status.state, status.message),
    }
    match (&status.watchdog, &status.stopped_by_operator) {
        (Some(w), Some(_)) => println!(
            "  watchdog  PID {}, standing by until `daemon start` or `daemon restart`",
            w.pid
        ),
        (Some(w), None) => println!("  watchdog  PID {}, watching", w.pid),
        (None, _) => {}
    }
}

fn logs(home: &Home, follow: bool, lines: usize, which: Which) -> i32 {
    let kind = match which {
        Which::Proxy => LogKind::Proxy,
        Which::Watchdog => LogKind::Watchdog,
        Which::Daemon => LogKind::Daemon,
    };
    let path = home.log_file(kind);
    if !follow && !path.exists() {
        eprintln!("daemon: no {} yet (nothing has written it)", path.display());
        return 0;
    }
    let result = if follow {
        let mut out = std::io::stdout();
        warden::home::logs::follow(&path, lines, &mut out, &|| false)
    } else {
        warden::home::logs::tail_lines(&path, lines).map(|l| {
            for line in l {
                println!("{line}");
            }
        })
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("daemon: cannot read {}: {e}", path.display());
            1
        }
    }
}
