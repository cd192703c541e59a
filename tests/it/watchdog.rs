//! `watchdog`: a crash noticed through the proxy's pidfd (not the 30 s poll), a
//! hung (SIGSTOPped) proxy replaced, three strikes and a give-up when the proxy
//! cannot start, one watchdog per home, SIGTERM/SIGINT leaving the proxy running,
//! `--once` exit codes, and the log lines.
//!
//! Every process signalled here is one the test spawned (a watchdog) or one that a
//! binary the test spawned started (a proxy), and proxies are only signalled
//! through `warden::lifecycle::process`, which verifies the identity the PID file records.

use std::io::{Read, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use warden::lifecycle::pidfile::{self, PidRecord, PidState};
use warden::lifecycle::process::{self, ProcessIdentity};

use crate::support::{PATIENCE, Sleeper, TestHome, bin, eventually, free_port, run, text};

/// The proxy's port and the daemon's timeouts; `extra` is appended to warden.toml.
fn home_with(extra: &str) -> (TestHome, u16) {
    let home = TestHome::new();
    let port = free_port();
    home.config(&config_text(port, extra));
    (home, port)
}

fn config_text(port: u16, extra: &str) -> String {
    format!("[server]\nport = {port}\n[daemon]\nstartup_timeout = 20\nstop_timeout = 5\n{extra}")
}

/// The record of the live proxy `run/proxy.pid` names, if any.
fn proxy_record(home: &TestHome) -> Option<PidRecord> {
    match pidfile::inspect(&home.file("run/proxy.pid")) {
        Ok(PidState::Running(record)) if record.identity().matches_live() => Some(record),
        _ => None,
    }
}

/// `GET /health/ready` answers 200 (plain blocking HTTP/1.1, 2 s bound).
fn ready(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn start_proxy(home: &TestHome) -> PidRecord {
    let out = run("daemon", home, &["start", "--no-check"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    proxy_record(home).expect("daemon start left a running proxy")
}

/// Kills (SIGKILL, identity-checked) whatever proxy of this home still runs when a
/// test ends, and any specific proxy it was told about (a SIGSTOPped one).
struct ProxyCleanup<'a> {
    home: &'a TestHome,
    also: Vec<ProcessIdentity>,
}

impl Drop for ProxyCleanup<'_> {
    fn drop(&mut self) {
        let mut targets = self.also.clone();
        targets.extend(proxy_record(self.home).map(|r| r.identity()));
        for identity in targets {
            // Only the proxy binary of this build: what our daemon/watchdog started.
            if identity.exe == std::path::Path::new(env!("CARGO_BIN_EXE_proxy")) {
                let _ = process::terminate(&identity, Duration::ZERO);
            }
        }
    }
}

/// A `watchdog` child, SIGKILLed on drop if still running.
struct Watchdog {
    child: Child,
}

impl Watchdog {
    fn spawn(home: &TestHome, args: &[&str]) -> Watchdog {
        let child = bin("watchdog")
            .arg("--home")
            .arg(home.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn watchdog");
        Watchdog { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the watchdog: our own child, not yet reaped.
    fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal our own child");
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "watchdog did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut s).ok();
        }
        s
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log(home: &TestHome) -> String {
    home.read("logs/watchdog.log")
}

fn wait_log(home: &TestHome, needle: &str) {
    eventually(&format!("watchdog.log to contain {needle:?}"), || {
        log(home).contains(needle)
    });
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Waits until a proxy other than `old` is named by the PID file and ready.
fn wait_replaced(home: &TestHome, old: i32, port: u16) -> PidRecord {
    let mut new = None;
    eventually("a new proxy to be ready", || {
        new = proxy_record(home).filter(|r| r.pid != old);
        new.is_some() && ready(port)
    });
    new.unwrap()
}

#[test]
fn kill_9_is_noticed_at_once_under_the_default_interval_and_the_proxy_is_ready_again() {
    // No [watchdog] section: the 30 s default interval. Recovery must come from
    // the exit notification, which the log labels "on exit".
    let (home, port) = home_with("");
    let mut cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    let old = start_proxy(&home);
    let _watchdog = Watchdog::spawn(&home, &[]);
    wait_log(&home, "start pid=");
    assert!(log(&home).contains("interval=30s"), "{}", log(&home));
    wait_log(&home, &format!("watching PID {}", old.pid));

    let killed_at = Instant::now();
    process::signal(&old.identity(), Signal::SIGKILL).unwrap();
    cleanup.also.push(old.identity());
    let new = wait_replaced(&home, old.pid, port);
    eprintln!(
        "kill -9 -> ready again in {} ms (interval 30 s)",
        killed_at.elapsed().as_millis()
    );
    assert!(!old.identity().matches_live());
    wait_log(&home, "restart done in");
    let log = log(&home);
    assert!(
        log.contains(&format!(
            "check failed (strike 1/3, on exit): PID {} exited",
            old.pid
        )),
        "{log}"
    );
    assert!(
        log.contains("restart done in") && log.contains(&format!("started PID {}", new.pid)),
        "{log}"
    );
    assert_eq!(count(&log, "check failed"), 1, "{log}");
    assert!(!log.contains("interval):"), "{log}");
}

#[test]
fn a_sigstopped_proxy_is_replaced_and_the_hung_process_is_gone() {
    let (home, port) = home_with("");
    let mut cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    let old = start_proxy(&home);
    let _watchdog = Watchdog::spawn(&home, &["--interval", "1", "--timeout", "1"]);
    wait_log(&home, &format!("watching PID {}", old.pid));
    // SIGSTOP: alive, holding its port and PID file, answering nothing.
    cleanup.also.push(old.identity());
    process::signal(&old.identity(), Signal::SIGSTOP).unwrap();

    let new = wait_replaced(&home, old.pid, port);
    eventually("the hung proxy to be gone", || {
        !old.identity().matches_live()
    });
    wait_log(&home, "recovered: PID");
    let log = log(&home);
    assert!(
        log.contains(&format!(
            "(strike 1/3, interval): PID {} is alive but not ready",
            old.pid
        )),
        "{log}"
    );
    // SIGTERM is not delivered to a stopped process: the short grace, then SIGKILL.
    assert!(
        log.contains(&format!("stopped PID {} was killed with SIGKILL", old.pid)),
        "{log}"
    );
    assert!(
        log.contains(&format!("started PID {}", new.pid)) && log.contains("restart done in"),
        "{log}"
    );
    assert!(log.contains("stop_grace=1s"), "{log}");
}

#[test]
fn a_proxy_that_cannot_start_gives_up_after_exactly_three_strikes() {
    let extra = "[watchdog]\non_give_up = \"env > gave-up.env; echo hook ran\"\n";
    let (home, port) = home_with(extra);
    let mut cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    let old = start_proxy(&home);
    let mut watchdog = Watchdog::spawn(&home, &["--interval", "1"]);
    wait_log(&home, &format!("watching PID {}", old.pid));
    // Break the configuration after the watchdog read it: every start now fails
    // (the proxy validates its config and exits 2).
    home.config(&config_text(port, &format!("{extra}bogus_key = 1\n")));
    cleanup.also.push(old.identity());
    process::signal(&old.identity(), Signal::SIGKILL).unwrap();

    let status = watchdog.wait();
    assert_eq!(status.code(), Some(1), "{}", watchdog.stderr());
    let log = log(&home);
    assert_eq!(count(&log, "check failed"), 3, "{log}");
    for n in 1..=3 {
        assert!(log.contains(&format!("strike {n}/3")), "{log}");
    }
    assert!(!log.contains("strike 4"), "{log}");
    // Two restarts were tried (after strikes 1 and 2), both failed to start.
    assert_eq!(count(&log, "restart failed"), 2, "{log}");
    assert!(log.contains("exited during start-up"), "{log}");
    assert!(log.contains("bogus_key"), "the proxy's own error: {log}");
    assert!(
        log.contains("give up after 3 consecutive failed checks: 1) PID"),
        "{log}"
    );
    assert!(log.contains("hook ran"), "{log}");
    assert!(
        log.contains("on_give_up finished with exit status: 0"),
        "{log}"
    );
    let env = home.read("gave-up.env");
    assert!(
        env.contains(&format!("WARDEN_HOME={}", home.path().display())),
        "{env}"
    );
    assert!(
        env.contains("WARDEN_WATCHDOG_REASON=3 consecutive failed checks: 1) "),
        "{env}"
    );
    assert!(proxy_record(&home).is_none(), "nothing is left running");
    assert!(!home.file("run/watchdog.pid").exists());
}

/// Children of `parent` that exited and were not reaped.
fn zombie_children(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the last ')': state, ppid, ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid == Some(parent.to_string().as_str()) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_proxy_the_watchdog_started_is_restarted_after_a_crash_and_reaped() {
    let (home, port) = home_with("");
    let mut cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    // Nothing running at start: a strike, and the watchdog starts the proxy itself
    // (so the proxy is its child).
    let watchdog = Watchdog::spawn(&home, &[]);
    wait_log(
        &home,
        "check failed (strike 1/3, at start): the proxy is not running",
    );
    let first = wait_replaced(&home, 0, port);
    wait_log(&home, &format!("watching PID {}", first.pid));
    cleanup.also.push(first.identity());
    process::signal(&first.identity(), Signal::SIGKILL).unwrap();
    let second = wait_replaced(&home, first.pid, port);
    wait_log(&home, &format!("watching PID {}", second.pid));
    let log = log(&home);
    assert!(
        log.contains(&format!(
            "check failed (strike 2/3, on exit): PID {} exited (killed by SIGKILL)",
            first.pid
        )),
        "{log}"
    );
    assert_eq!(
        zombie_children(watchdog.pid()),
        Vec::<i32>::new(),
        "the crashed child was reaped"
    );
}

#[test]
fn a_daemon_restart_is_not_a_failure() {
    let (home, port) = home_with("");
    let _cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    let old = start_proxy(&home);
    let _watchdog = Watchdog::spawn(&home, &[]);
    wait_log(&home, &format!("watching PID {}", old.pid));
    let out = run("daemon", &home, &["restart", "--no-check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new = wait_replaced(&home, old.pid, port);
    // The old process's exit wakes the watchdog; it finds the successor healthy.
    wait_log(&home, &format!("watching PID {}", new.pid));
    let log = log(&home);
    assert!(!log.contains("check failed"), "{log}");
    assert!(!log.contains("restart done"), "{log}");
    assert_eq!(proxy_record(&home).map(|r| r.pid), Some(new.pid));
}

#[test]
fn a_pid_file_naming_an_unrelated_process_is_never_signalled() {
    let (home, port) = home_with("");
    let _cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    let mut sleeper = Sleeper::spawn();
    // Locked by someone (the test), naming the sleeper with another start time:
    // not our proxy. The watchdog strikes and gives up without a signal.
    let identity = ProcessIdentity::of(sleeper.pid()).unwrap();
    home.write(
        "run/proxy.pid",
        &format!(
            "{}\nstart_time={}\nexe={}\nport={port}\nstarted_at=2026-01-01T00:00:00Z\nhome={}\n",
            sleeper.pid(),
            identity.start_time + 1,
            identity.exe.display(),
            home.path().display()
        ),
    );
    let file = std::fs::File::open(home.file("run/proxy.pid")).unwrap();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let mut watchdog = Watchdog::spawn(&home, &["--interval", "1", "--strikes", "2"]);
    assert_eq!(watchdog.wait().code(), Some(1));
    let log = log(&home);
    assert!(log.contains("leaves it alone"), "{log}");
    assert!(log.contains("give up after 2 consecutive"), "{log}");
    assert!(sleeper.alive(), "the unrelated process was left alone");

    // Unlocked (stale), naming the sleeper: removed, never signalled, proxy started.
    drop(lock);
    home.write("run/proxy.pid", &format!("{}\n", sleeper.pid()));
    let out = run("watchdog", &home, &["--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(sleeper.alive(), "the unrelated process was left alone");
    assert!(proxy_record(&home).is_some_and(|r| r.pid != sleeper.pid()));
}

#[test]
fn a_second_watchdog_on_the_same_home_refuses_to_start() {
    let (home, _port) = home_with("");
    let _cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    start_proxy(&home);
    let mut first = Watchdog::spawn(&home, &[]);
    eventually("the first watchdog to own run/watchdog.pid", || {
        matches!(
            pidfile::inspect(&home.file("run/watchdog.pid")),
            Ok(PidState::Running(r)) if r.pid == first.pid()
        )
    });
    for args in [&[][..], &["--once"][..], &["--interval", "1"][..]] {
        let out = run("watchdog", &home, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("another watchdog (PID {})", first.pid())),
            "{err}"
        );
    }
    assert!(
        matches!(first.child.try_wait(), Ok(None)),
        "first keeps running"
    );
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait().code(), Some(0));
}

#[test]
fn sigterm_and_sigint_exit_0_and_leave_the_proxy_running() {
    let (home, port) = home_with("");
    let _cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    let proxy = start_proxy(&home);
    for (sig, name) in [(Signal::SIGTERM, "SIGTERM"), (Signal::SIGINT, "SIGINT")] {
        // The second round also proves the first released run/watchdog.pid.
        let mut watchdog = Watchdog::spawn(&home, &[]);
        eventually("the watchdog to watch the proxy", || {
            count(&log(&home), &format!("watching PID {}", proxy.pid))
                == if name == "SIGTERM" { 1 } else { 2 }
        });
        watchdog.signal(sig);
        let status = watchdog.wait();
        assert_eq!(status.code(), Some(0), "{name}: {}", watchdog.stderr());
        wait_log(
            &home,
            &format!(
                "stop: {name} received; the proxy (PID {}) keeps running",
                proxy.pid
            ),
        );
        assert!(
            proxy.identity().matches_live(),
            "{name} left the proxy alone"
        );
        assert!(ready(port));
        assert!(!home.file("run/watchdog.pid").exists());
    }
    assert!(!log(&home).contains("check failed"), "{}", log(&home));
}

#[test]
fn once_starts_a_missing_proxy_and_exits_by_health() {
    let (home, port) = home_with("");
    let _cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    // Nothing running: the check fails, one start, healthy at the end → 0.
    let out = run("watchdog", &home, &["--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("check failed: the proxy is not running") && said.contains("restart done"),
        "{said}"
    );
    let started = proxy_record(&home).expect("--once started the proxy");
    assert!(ready(port));

    // Healthy: exit 0, silent (cron mails nothing), nothing logged.
    let before = log(&home);
    let out = run("watchdog", &home, &["--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "");
    assert_eq!(log(&home), before);
    assert_eq!(proxy_record(&home).map(|r| r.pid), Some(started.pid));

    // Cannot be made healthy (another program holds the port) → 1. The proxy is
    // killed (identity-checked), not stopped with `daemon stop`, after which
    // `--once` would stand by.
    process::terminate(&started.identity(), Duration::ZERO).unwrap();
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = run("watchdog", &home, &["--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("restart failed") && err.contains("cannot listen"),
        "{err}"
    );
    let log = log(&home);
    assert!(
        log.contains("once: check failed")
            && log.contains("once: restart done")
            && log.contains("once: restart failed"),
        "{log}"
    );
    assert!(!log.contains("give up"), "--once never gives up: {log}");
}

#[test]
fn version_and_help() {
    let out = bin("watchdog").arg("--version").output().unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        format!("watchdog {}", env!("CARGO_PKG_VERSION"))
    );
    let out = bin("watchdog").arg("--help").output().unwrap();
    let help = text(&out.stdout);
    for flag in [
        "--home",
        "--interval",
        "--timeout",
        "--strikes",
        "--once",
        "Examples:",
    ] {
        assert!(help.contains(flag), "{help}");
    }
    let out = bin("watchdog").args(["--interval", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_broken_config_at_start_is_exit_2_naming_the_key() {
    let home = TestHome::new();
    home.config("[watchdog]\nintervall = 3\n");
    let out = run("watchdog", &home, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("intervall"),
        "{}",
        text(&out.stderr)
    );
}

/// `daemon stop` while a watchdog runs: the watchdog stands by (it logs so and
/// restarts nothing), `daemon status` names it, `daemon start` resumes it, and
/// `watchdog --once` after a stop exits 0 doing nothing.
#[test]
fn a_watchdog_stands_by_after_daemon_stop_and_resumes_after_start() {
    let (home, _port) = home_with("");
    let _cleanup = ProxyCleanup {
        home: &home,
        also: Vec::new(),
    };
    let first = start_proxy(&home);
    let mut watchdog = Watchdog::spawn(&home, &["--interval", "1"]);
    wait_log(&home, &format!("watching PID {}", first.pid));
    let out = run("daemon", &home, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["watchdog"]["pid"], watchdog.pid(), "{status}");

    let out = run("daemon", &home, &["stop"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("watchdog PID {} stands by", watchdog.pid())),
        "{said}"
    );
    assert!(home.file("run/stopped").exists());
    // The proxy's exit wakes the watchdog at once: that check stands by instead
    // of restarting.
    wait_log(&home, "standing by: the proxy was stopped by `daemon stop`");
    assert!(proxy_record(&home).is_none(), "the watchdog restarted it");
    assert!(!log(&home).contains("restart done"), "{}", log(&home));
    let out = run("daemon", &home, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("stopped by `daemon stop`")
            && shown.contains(&format!("watchdog  PID {}, standing by", watchdog.pid())),
        "{shown}"
    );

    let out = run("daemon", &home, &["start", "--no-check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!home.file("run/stopped").exists());
    wait_log(&home, "watching again");
    watchdog.signal(Signal::SIGTERM);
    assert_eq!(watchdog.wait().code(), Some(0));

    // `watchdog --once` (cron) after `daemon stop`: exit 0, nothing started.
    assert_eq!(run("daemon", &home, &["stop"]).status.code(), Some(0));
    let out = run("watchdog", &home, &["--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    assert!(proxy_record(&home).is_none(), "--once started the proxy");
    assert!(log(&home).contains("once: standing by"), "{}", log(&home));
    let out = run("daemon", &home, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["watchdog"].is_null(), "{status}");
}
