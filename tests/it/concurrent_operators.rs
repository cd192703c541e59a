//! Several operators at once: concurrent `daemon start|stop|restart`,
//! `watchdog --once`, a successor killed mid-restart, a frozen proxy, an oversized
//! PID file, and a seeded stress test of all of them interleaved with `kill -9` and
//! SIGSTOP. After every settled step the invariant holds: at most one proxy of the
//! home serves, the PID file names it, and `daemon status` agrees with the port.
//!
//! Signals: the test signals only processes it spawned (daemon, watchdog) and the
//! proxies those started for the test's own temporary home, found by their home and
//! this build's `proxy` executable and signalled through the identity-checked
//! [`warden::lifecycle::process::signal`]. Sentinel `sleep` processes whose PIDs are
//! planted in PID files prove that nothing else is ever signalled.

use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use warden::home::Home;
use warden::lifecycle::pidfile::{self, PidRecord, PidState};
use warden::lifecycle::process::{self, ProcessIdentity};

use crate::support::{PATIENCE, Sleeper, TestHome, bin, eventually, free_port, run, text};

fn home_with(extra: &str) -> (TestHome, u16) {
    let home = TestHome::new();
    let port = free_port();
    home.config(&format!(
        "[server]\nport = {port}\ngraceful_timeout = 5\n[daemon]\nstartup_timeout = 20\nstop_timeout = 5\n{extra}"
    ));
    std::fs::create_dir_all(home.file("run")).unwrap();
    std::fs::create_dir_all(home.file("logs")).unwrap();
    std::fs::create_dir_all(home.file("cache")).unwrap();
    (home, port)
}

fn proxy_exe() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_proxy"))
}

/// The proxies of the test's home: this build's `proxy` with this home.
fn proxies(home: &TestHome) -> Vec<ProcessIdentity> {
    process::find_proxies_of_home(&Home::at(home.path()), "proxy")
        .into_iter()
        .filter(|p| p.exe == proxy_exe())
        .collect()
}

/// The proxies of the home that hold a listening socket (serve new connections).
fn serving(home: &TestHome) -> Vec<i32> {
    proxies(home)
        .into_iter()
        .filter(|p| warden::lifecycle::ports::holds_listener(p.pid))
        .map(|p| p.pid)
        .collect()
}

fn pid_state(home: &TestHome) -> PidState {
    pidfile::inspect(&home.file("run/proxy.pid")).unwrap()
}

fn locked_record(home: &TestHome) -> Option<PidRecord> {
    match pid_state(home) {
        PidState::Running(r) => Some(r),
        _ => None,
    }
}

/// Whether a TCP connection to the port is accepted.
fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// Signals a proxy of the test's home, identity-checked (ignores one that is gone).
fn signal_proxy(home: &TestHome, identity: &ProcessIdentity, sig: Signal) {
    assert_eq!(identity.exe, proxy_exe());
    assert!(
        proxies(home).contains(identity) || !identity.matches_live(),
        "PID {} is not a proxy of the test's home",
        identity.pid
    );
    let _ = process::signal(identity, sig);
}

/// Kills every proxy of the home when the test ends, whatever happened.
struct Cleanup<'a>(&'a TestHome);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for p in proxies(self.0) {
            let _ = process::signal(&p, Signal::SIGCONT);
            let _ = process::terminate(&p, Duration::ZERO);
        }
    }
}

/// A binary run as a child with its output collected as it comes.
struct Op {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    what: String,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Done {
    fn said(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Op {
    fn spawn(name: &str, home: &TestHome, args: &[&str]) -> Op {
        Op::spawn_with_env(name, home, args, &[])
    }
    fn spawn_with_env(name: &str, home: &TestHome, args: &[&str], env: &[(&str, &str)]) -> Op {
        let mut child = bin(name)
            .arg("--home")
            .arg(home.path())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (out, err) = (Arc::default(), Arc::default());
        collect(child.stdout.take().unwrap(), Arc::clone(&out));
        collect(child.stderr.take().unwrap(), Arc::clone(&err));
        Op {
            child,
            out,
            err,
            what: format!("{name} {}", args.join(" ")),
        }
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Signals this child: ours, and never once reaped (after `wait` its PID could
    /// belong to anyone).
    fn signal(&mut self, sig: Signal) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "`{}` has exited; not signalling its PID",
            self.what
        );
        // Not reaped: at worst a zombie, still ours.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal our own child");
    }
    fn stderr_so_far(&self) -> String {
        self.err.lock().unwrap().clone()
    }
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
    /// Waits for the exit (bounded) and returns what it printed.
    fn finish(mut self, patience: Duration) -> Done {
        let deadline = Instant::now() + patience;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` did not finish within {patience:?}: {}{}",
                    self.what,
                    self.out.lock().unwrap(),
                    self.err.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The collector threads end at EOF, right after the exit.
        let settle = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.out) + Arc::strong_count(&self.err) > 2
            && Instant::now() < settle
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        Done {
            code: status.code(),
            stdout: self.out.lock().unwrap().clone(),
            stderr: self.err.lock().unwrap().clone(),
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn daemon(home: &TestHome, args: &[&str]) -> Done {
    Op::spawn("daemon", home, args).finish(PATIENCE * 4)
}

fn status_code(home: &TestHome) -> Option<i32> {
    run("daemon", home, &["status"]).status.code()
}

/// The last 40 lines of a log in the home (or why it could not be read), for a
/// failure message.
fn log_tail(home: &TestHome, rel: &str) -> String {
    match std::fs::read_to_string(home.file(rel)) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        Err(e) => format!("({rel}: {e})"),
    }
}

/// The invariant of concurrent operators (SAFETY.md): at most one proxy of the
/// home serves, `run/proxy.pid` names it and `daemon status` agrees, checked
/// once nothing is in flight.
fn assert_settled(home: &TestHome, port: u16, context: &str) {
    let serving = serving(home);
    assert!(
        serving.len() <= 1,
        "{context}: more than one proxy of the home serves: {serving:?}"
    );
    let out = run("daemon", home, &["status", "--json"]);
    let code = out.status.code();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    match serving.first() {
        Some(&pid) => {
            let record = locked_record(home);
            assert_eq!(
                record.as_ref().map(|r| r.pid),
                Some(pid),
                "{context}: PID {pid} serves but run/proxy.pid says {:?}",
                pid_state(home)
            );
            assert!(
                matches!(code, Some(0) | Some(4)),
                "{context}: PID {pid} serves but status exits {code:?}: {status}"
            );
            assert_eq!(status["pid"], pid, "{context}: {status}");
        }
        None => {
            assert!(
                matches!(code, Some(1) | Some(3)),
                "{context}: nothing serves but status exits {code:?}: {status}"
            );
            assert!(
                !port_open(port),
                "{context}: status says not running but the port answers"
            );
            assert!(
                locked_record(home).is_none_or(|r| !serving.contains(&r.pid)),
                "{context}"
            );
        }
    }
    if code == Some(0) {
        assert!(
            port_open(port),
            "{context}: status 0 but the port is closed"
        );
    }
}

fn start(home: &TestHome) -> PidRecord {
    let done = daemon(home, &["start", "--no-check"]);
    assert_eq!(done.code, Some(0), "{}", done.said());
    locked_record(home).expect("a running proxy")
}

fn stop_and_check(home: &TestHome, port: u16) {
    let done = daemon(home, &["stop"]);
    assert_eq!(done.code, Some(0), "{}", done.said());
    assert!(serving(home).is_empty(), "stop said: {}", done.said());
    assert!(!port_open(port), "stop said: {}", done.said());
    assert_eq!(status_code(home), Some(3));
}

#[test]
fn two_concurrent_restarts_leave_exactly_one_proxy_and_stop_stops_it() {
    let (home, port) = home_with("");
    let _cleanup = Cleanup(&home);
    let first = start(&home);
    let a = Op::spawn("daemon", &home, &["restart", "--no-check"]);
    let b = Op::spawn("daemon", &home, &["restart", "--no-check"]);
    let (a, b) = (a.finish(PATIENCE * 4), b.finish(PATIENCE * 4));
    assert_eq!(a.code, Some(0), "{}", a.said());
    assert_eq!(b.code, Some(0), "{}", b.said());
    assert_settled(&home, port, "after two restarts");
    let now = locked_record(&home).expect("a proxy runs");
    assert_ne!(now.pid, first.pid);
    assert!(!first.identity().matches_live(), "the first proxy is gone");
    // Neither claims a PID serves that does not.
    for done in [&a, &b] {
        assert!(!done.said().contains("still serving"), "{}", done.said());
    }
    stop_and_check(&home, port);
}

#[test]
fn a_restart_that_waited_for_a_rival_reports_the_rivals_proxy() {
    let (home, port) = home_with("");
    let _cleanup = Cleanup(&home);
    // The test plays the rival: it holds the operation lock and starts a proxy.
    let lock = hold_operation_lock(&home);
    let restart = Op::spawn("daemon", &home, &["restart", "--no-check"]);
    eventually("the restart to wait for the lock", || {
        restart.stderr_so_far().contains("waiting for")
    });
    let rival = start_foreground_proxy(&home, port);
    drop(lock);
    let done = restart.finish(PATIENCE * 4);
    assert_eq!(done.code, Some(0), "{}", done.said());
    assert!(
        done.stdout.contains(&format!("PID {}", rival.id()))
            && done.stdout.contains("while this one waited"),
        "{}",
        done.said()
    );
    assert_eq!(locked_record(&home).map(|r| r.pid), Some(rival.id() as i32));
    drop(rival);
}

/// `proxy --home HOME` in the foreground (the test's own child), waited for until
/// it serves on `port`.
fn start_foreground_proxy(home: &TestHome, port: u16) -> ChildGuard {
    let child = bin("proxy")
        .arg("--home")
        .arg(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    eventually("the foreground proxy to serve", || {
        port_open(port) && locked_record(home).is_some()
    });
    guard
}

struct ChildGuard(Child);
impl ChildGuard {
    fn id(&self) -> u32 {
        self.0.id()
    }
}
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Holds `run/operation.lock` as a rival operator would (the test's own lock).
fn hold_operation_lock(home: &TestHome) -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(home.file("run/operation.lock"))
        .unwrap();
    let mut lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    use std::io::Write;
    lock.set_len(0).unwrap();
    write!(lock, "{}\noperation=test rival\n", std::process::id()).unwrap();
    lock
}

#[test]
fn an_operation_waits_for_the_lock_within_its_bound_and_then_gives_up() {
    // Wait bound: startup 1 + graceful 0 + 2 × stop 1 + 5 s.
    let (home, port) = home_with("");
    home.config(&format!(
        "[server]\nport = {port}\ngraceful_timeout = 0\n[daemon]\nstartup_timeout = 1\nstop_timeout = 1\n"
    ));
    let _cleanup = Cleanup(&home);
    let _lock = hold_operation_lock(&home);
    let started = Instant::now();
    let done = daemon(&home, &["start", "--no-check"]);
    assert_eq!(done.code, Some(1), "{}", done.said());
    assert!(started.elapsed() >= Duration::from_secs(8), "it waited");
    let err = &done.stderr;
    assert!(
        err.contains("waiting for") && err.contains(&format!("PID {}", std::process::id())),
        "{err}"
    );
    assert!(
        err.contains("run/operation.lock") && err.contains("gave up"),
        "{err}"
    );
    assert!(proxies(&home).is_empty(), "nothing was started");
    // Reading status needs no lock.
    assert_eq!(status_code(&home), Some(3));
}

#[test]
fn stop_during_a_restart_waits_for_it_and_then_stops_everything() {
    let (home, port) = home_with("");
    let _cleanup = Cleanup(&home);
    let first = start(&home);
    let mut restart = Op::spawn("daemon", &home, &["restart", "--no-check"]);
    // Freeze the restart (our child) once its successor exists: the successor
    // is in flight, not yet recorded, when `stop` comes.
    eventually(
        "the successor to be spawned (or the restart to end)",
        || restart.exited() || proxies(&home).len() >= 2,
    );
    let frozen = !restart.exited();
    if frozen {
        restart.signal(Signal::SIGSTOP);
    }
    let mut stop = Op::spawn("daemon", &home, &["stop"]);
    eventually("stop to wait or finish", || {
        stop.exited() || stop.stderr_so_far().contains("waiting for")
    });
    if frozen {
        restart.signal(Signal::SIGCONT);
    }
    let restarted = restart.finish(PATIENCE * 4);
    let stopped = stop.finish(PATIENCE * 4);
    assert_eq!(stopped.code, Some(0), "{}", stopped.said());
    assert!(stopped.stdout.contains("stopped"), "{}", stopped.said());
    eventually("the first proxy to be gone", || {
        !first.identity().matches_live()
    });
    assert!(
        serving(&home).is_empty(),
        "restart said: {}\nstop said: {}",
        restarted.said(),
        stopped.said()
    );
    assert!(
        proxies(&home).is_empty(),
        "stop stops every proxy of the home"
    );
    assert!(!port_open(port));
    assert_eq!(status_code(&home), Some(3));
}

/// Starts `daemon restart` whose successor (and only it: the old proxy was
/// started without the variable) holds still right after taking run/proxy.pid,
/// before it is judged ready (a debug-build hook, src/support/test_hooks.rs):
/// the window, made wide. Returns the restart in progress and the successor.
fn restart_with_a_held_successor(home: &TestHome, old: &PidRecord) -> (Op, PidRecord) {
    let held = home.path().join("successor-held");
    let mut restart = Op::spawn_with_env(
        "daemon",
        home,
        &["restart", "--no-check"],
        &[(
            warden::support::test_hooks::HOLD_AFTER_PID_FILE,
            held.to_str().unwrap(),
        )],
    );
    eventually("the successor to take run/proxy.pid and hold", || {
        held.exists() || restart.exited()
    });
    assert!(
        !restart.exited(),
        "the restart ended before its successor held: {}",
        restart.stderr_so_far()
    );
    let successor = locked_record(home).expect("the successor's PID file");
    assert_ne!(successor.pid, old.pid, "the successor holds run/proxy.pid");
    assert_eq!(
        std::fs::read_to_string(&held).unwrap(),
        successor.pid.to_string()
    );
    (restart, successor)
}

#[test]
fn a_successor_killed_after_taking_the_pid_file_hands_it_back_to_the_old_proxy() {
    let (home, port) = home_with("");
    let _cleanup = Cleanup(&home);
    let old = start(&home);
    let (restart, successor) = restart_with_a_held_successor(&home, &old);
    let successor = successor.identity();
    signal_proxy(&home, &successor, Signal::SIGKILL);
    assert!(process::wait_exit(&successor, PATIENCE));
    let done = restart.finish(PATIENCE * 4);
    assert_eq!(done.code, Some(1), "{}", done.said());
    assert!(
        done.stderr.contains(&format!("PID {}", successor.pid))
            && done
                .stderr
                .contains(&format!("old proxy (PID {})", old.pid)),
        "{}",
        done.said()
    );
    // The old proxy serves and holds its PID file again: visible and stoppable.
    assert_eq!(locked_record(&home).map(|r| r.pid), Some(old.pid));
    assert_eq!(status_code(&home), Some(0));
    assert_settled(&home, port, "after the successor died");
    stop_and_check(&home, port);
    assert!(!old.identity().matches_live());
}

#[test]
fn ctrl_c_during_a_restart_leaves_exactly_one_proxy_serving() {
    let (home, port) = home_with("");
    let _cleanup = Cleanup(&home);
    let old = start(&home);
    let mut restart = Op::spawn("daemon", &home, &["restart", "--no-check"]);
    eventually(
        "the successor to be spawned (or the restart to end)",
        || {
            restart.exited()
                || (proxies(&home).len() >= 2 && warden::lifecycle::ports::holds_listener(old.pid))
        },
    );
    if !restart.exited() {
        restart.signal(Signal::SIGINT);
    }
    let done = restart.finish(PATIENCE * 4);
    assert!(matches!(done.code, Some(0) | Some(130)), "{}", done.said());
    // Whatever the moment, once things settle one proxy serves and is recorded.
    eventually("the home to settle on one proxy", || {
        serving(&home).len() == 1 && proxies(&home).len() == 1
    });
    assert_settled(&home, port, &format!("after Ctrl-C: {}", done.said()));
    if done.code == Some(130) {
        assert!(done.stderr.contains("interrupted"), "{}", done.said());
    }
    stop_and_check(&home, port);
}

#[test]
fn watchdog_once_replaces_a_sigstopped_proxy_every_time() {
    let (home, port) = home_with("[watchdog]\nhealth_timeout = 1\n");
    let _cleanup = Cleanup(&home);
    start(&home);
    for round in 0..3 {
        let old = locked_record(&home).expect("a proxy");
        signal_proxy(&home, &old.identity(), Signal::SIGSTOP);
        let done = Op::spawn("watchdog", &home, &["--once"]).finish(PATIENCE * 4);
        assert_eq!(done.code, Some(0), "round {round}: {}", done.said());
        assert!(!old.identity().matches_live(), "round {round}");
        let new = locked_record(&home).expect("a new proxy");
        assert_ne!(new.pid, old.pid);
        assert_eq!(status_code(&home), Some(0), "round {round}");
        assert_settled(&home, port, &format!("round {round}"));
    }
    stop_and_check(&home, port);
}

#[test]
fn five_concurrent_starts_start_one_proxy_and_all_succeed() {
    let (home, port) = home_with("");
    let _cleanup = Cleanup(&home);
    let ops: Vec<Op> = (0..5)
        .map(|_| Op::spawn("daemon", &home, &["start"]))
        .collect();
    let done: Vec<Done> = ops.into_iter().map(|o| o.finish(PATIENCE * 4)).collect();
    for d in &done {
        assert_eq!(d.code, Some(0), "{}", d.said());
    }
    let started = done
        .iter()
        .filter(|d| d.stdout.contains("proxy started"))
        .count();
    assert_eq!(
        started,
        1,
        "{:?}",
        done.iter().map(Done::said).collect::<Vec<_>>()
    );
    assert_eq!(serving(&home).len(), 1);
    assert_settled(&home, port, "after five starts");
    stop_and_check(&home, port);
}

/// Runs a binary and returns its exit code, output and peak RSS in KiB. The
/// binary is started by a small python3 that reports `wait4`'s `ru_maxrss`: a
/// child forked straight from this (large, many-threaded) test process would
/// inherit the test's own peak into its `ru_maxrss` at exec.
fn run_measured(name: &str, home: &TestHome, args: &[&str]) -> (Option<i32>, String, i64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let script = "import os, subprocess, sys\n\
        p = subprocess.Popen(sys.argv[2:])\n\
        _, status, usage = os.wait4(p.pid, 0)\n\
        open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n\
        sys.exit(os.waitstatus_to_exitcode(status))\n";
    let exe = match name {
        "daemon" => env!("CARGO_BIN_EXE_daemon"),
        "watchdog" => env!("CARGO_BIN_EXE_watchdog"),
        other => panic!("{other}"),
    };
    let cmd = bin(name);
    let out = std::process::Command::new("python3")
        .env_clear()
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .args(["-c", script])
        .arg(report.path())
        .arg(exe)
        .arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 is needed to measure a peak RSS");
    let peak: i64 = std::fs::read_to_string(report.path())
        .unwrap()
        .trim()
        .parse()
        .expect("python3 reported the peak RSS");
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
        peak,
    )
}

#[test]
fn a_huge_pid_file_is_read_with_a_small_bound() {
    let (home, _port) = home_with("");
    let path = home.file("run/proxy.pid");
    std::fs::write(&path, "4242\n").unwrap();
    // 300 MB, sparse: costs no disk, but reading it whole would cost the memory.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(300 * 1024 * 1024)
        .unwrap();
    for args in [&["status"][..], &["stop"][..]] {
        let (code, said, peak_kib) = run_measured("daemon", &home, args);
        assert!(
            peak_kib < 64 * 1024,
            "daemon {args:?} peaked at {peak_kib} KiB: {said}"
        );
        if args == ["status"] {
            assert_eq!(code, Some(1), "{said}");
            assert!(said.contains("KiB"), "daemon {args:?}: {said}");
        }
    }
    let (_, said, peak_kib) = run_measured("watchdog", &home, &["--once", "--timeout", "1"]);
    assert!(
        peak_kib < 64 * 1024,
        "watchdog peaked at {peak_kib} KiB: {said}"
    );
    let _ = run("daemon", &home, &["stop", "--force"]);
}

#[test]
fn the_watchdog_names_a_live_unrelated_pid_for_what_it_is() {
    let (home, port) = home_with("");
    let _cleanup = Cleanup(&home);
    let mut sleeper = Sleeper::spawn();
    let id = ProcessIdentity::of(sleeper.pid()).unwrap();
    // An unlocked record naming the sleeper: stale, whatever PID it names.
    let record = PidRecord {
        pid: sleeper.pid(),
        start_time: id.start_time + 1,
        exe: proxy_exe().to_path_buf(),
        port: Some(port),
        started_at: "2026-01-01T00:00:00Z".into(),
        home: home.path().to_path_buf(),
    };
    home.write("run/proxy.pid", &record.render());
    let done = Op::spawn("watchdog", &home, &["--once"]).finish(PATIENCE * 4);
    let said = format!("{}{}", done.said(), home.read("logs/watchdog.log"));
    assert!(
        !said.contains(&format!("PID {} is gone", sleeper.pid())),
        "{said}"
    );
    assert!(
        said.contains(&format!("PID {} is now another program", sleeper.pid())),
        "{said}"
    );
    assert!(sleeper.alive(), "never signalled");
    let status = text(&run("daemon", &home, &["status"]).stdout);
    assert!(!status.contains("is gone"), "{status}");
    stop_and_check(&home, port);
    assert!(sleeper.alive());
}

/// splitmix64: a tiny seeded generator, so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Start,
    Stop,
    StopForce,
    Restart,
    WatchdogOnce,
    Kill9,
    Freeze,
    Thaw,
    PlantStale,
}

impl Action {
    fn pick(rng: &mut Rng) -> Action {
        // Weights: mostly operations, some violence, rare freezes (each one costs
        // seconds of timeouts) and thaws.
        match rng.below(100) {
            0..=17 => Action::Start,
            18..=29 => Action::Stop,
            30..=33 => Action::StopForce,
            34..=55 => Action::Restart,
            56..=69 => Action::WatchdogOnce,
            70..=83 => Action::Kill9,
            84..=88 => Action::Freeze,
            89..=95 => Action::Thaw,
            _ => Action::PlantStale,
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The invariant under random interleavings of `daemon start|stop|restart`,
/// `watchdog --once`, `kill -9` and SIGSTOP/SIGCONT of the home's proxies, and
/// stale PID files naming the test's sentinel processes. Seeded and printed;
/// `WARDEN_STRESS_SEED`, `WARDEN_STRESS_STEPS` (actions, default 200) and
/// `WARDEN_STRESS_SECS` (time budget, default 8; 0 = none) replay or lengthen it.
/// The default budget keeps `cargo test` short (a new seed every run, 30 to 80 steps);
/// `.ci/run` runs it again for 400 steps without a budget.
#[test]
fn stress_random_operators_keep_one_truthful_proxy() {
    let seed = env_number("WARDEN_STRESS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let steps = env_number("WARDEN_STRESS_STEPS").unwrap_or(200);
    let budget = match env_number("WARDEN_STRESS_SECS").unwrap_or(8) {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    eprintln!(
        "stress: seed={seed} steps={steps} budget={budget:?} (WARDEN_STRESS_SEED={seed} replays it)"
    );
    let mut rng = Rng(seed);
    let (home, port) = home_with("[watchdog]\nhealth_timeout = 1\n");
    // startup_timeout stays at 5 s: with 2 s under heavy load, successors that
    // were not ready in time met old proxies that were frozen, which cannot take
    // run/proxy.pid back until continued (the invariant's one exception, shown by
    // `a_frozen_old_proxy_takes_its_pid_file_back_once_continued`).
    home.config(&format!(
        "[server]\nport = {port}\ngraceful_timeout = 1\n[daemon]\nstartup_timeout = 5\nstop_timeout = 1\n[watchdog]\nhealth_timeout = 1\n"
    ));
    let _cleanup = Cleanup(&home);
    // Sentinels outlive any run length (support's `Sleeper` sleeps 300 s).
    let sentinel = || {
        Sleeper(
            std::process::Command::new("sleep")
                .arg("1000000")
                .spawn()
                .expect("spawn sleep"),
        )
    };
    let mut sentinels = [sentinel(), sentinel()];
    let mut frozen: Vec<ProcessIdentity> = Vec::new();
    let mut history: Vec<String> = Vec::new();
    let began = Instant::now();
    let mut done_steps = 0;
    // A step is one action; the actions of a batch (1 to 3) run at the same
    // time, and the invariant is checked once the batch has settled.
    while done_steps < steps {
        if budget.is_some_and(|b| began.elapsed() >= b) {
            break;
        }
        let step = done_steps;
        let batch = (1 + rng.below(3)).min(steps - done_steps);
        let actions: Vec<Action> = (0..batch).map(|_| Action::pick(&mut rng)).collect();
        let mut ops = Vec::new();
        let mut signals = Vec::new();
        for action in &actions {
            match action {
                Action::Start => ops.push(Op::spawn("daemon", &home, &["start", "--no-check"])),
                Action::Stop => ops.push(Op::spawn("daemon", &home, &["stop"])),
                Action::StopForce => ops.push(Op::spawn("daemon", &home, &["stop", "--force"])),
                Action::Restart => ops.push(Op::spawn("daemon", &home, &["restart", "--no-check"])),
                Action::WatchdogOnce => ops.push(Op::spawn("watchdog", &home, &["--once"])),
                Action::PlantStale => {
                    // Only where no live process holds the file: a stale record
                    // naming a sentinel, which nothing may ever signal.
                    if matches!(pid_state(&home), PidState::Absent) {
                        let s = &sentinels[rng.below(2) as usize];
                        home.write("run/proxy.pid", &format!("{}\n", s.pid()));
                    }
                }
                other => signals.push((*other, rng.below(200))),
            }
        }
        // Signals land at random moments while the operations run.
        signals.sort_by_key(|(_, at)| *at);
        let launched = Instant::now();
        for (action, at_ms) in &signals {
            let at = launched + Duration::from_millis(*at_ms);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait); // the interleaving, not a synchronisation
            }
            let candidates = proxies(&home);
            match action {
                Action::Kill9 if !candidates.is_empty() => {
                    let target = &candidates[rng.below(candidates.len() as u64) as usize];
                    signal_proxy(&home, target, Signal::SIGKILL);
                }
                Action::Freeze if !candidates.is_empty() => {
                    let target = &candidates[rng.below(candidates.len() as u64) as usize];
                    signal_proxy(&home, target, Signal::SIGSTOP);
                    frozen.push(target.clone());
                }
                Action::Thaw => {
                    for target in frozen.drain(..) {
                        signal_proxy(&home, &target, Signal::SIGCONT);
                    }
                }
                _ => {}
            }
        }
        let mut said = Vec::new();
        for op in ops {
            let what = op.what.clone();
            let done = op.finish(PATIENCE * 4);
            assert!(
                !done.said().contains("panicked"),
                "seed {seed} step {step}: `{what}` panicked: {}",
                done.said()
            );
            said.push(format!(
                "`{what}` → {:?}: {}",
                done.code,
                done.said().trim()
            ));
        }
        history.push(format!(
            "step {step}: {actions:?}\n    {}",
            said.join("\n    ")
        ));
        let context = format!(
            "seed {seed} step {step} (WARDEN_STRESS_SEED={seed} replays it); last steps:\n{}",
            history[history.len().saturating_sub(4)..].join("\n")
        );
        assert_settled(&home, port, &context);
        for s in &mut sentinels {
            assert!(s.alive(), "{context}\na sentinel was signalled");
        }
        frozen.retain(|p| p.matches_live());
        if std::env::var_os("WARDEN_STRESS_TRACE").is_some() {
            eprintln!(
                "{:>6} ms {}",
                launched.elapsed().as_millis(),
                history.last().unwrap()
            );
        }
        done_steps += batch;
    }
    for target in frozen.drain(..) {
        signal_proxy(&home, &target, Signal::SIGCONT);
    }
    let done = daemon(&home, &["stop", "--force"]);
    assert_eq!(done.code, Some(0), "{}", done.said());
    assert!(serving(&home).is_empty());
    eprintln!(
        "stress: seed={seed} steps={done_steps}/{steps} in {:.0} s, failures: 0",
        began.elapsed().as_secs_f64()
    );
}

/// The one state the invariant cannot cover: a restart whose successor dies while
/// the old proxy is SIGSTOPped. A stopped process cannot take run/proxy.pid back,
/// so the restart says exactly that (and how to end it); the request waits in
/// the old proxy's control socket, and once continued it takes the file back by
/// itself. (Why the stress test keeps `startup_timeout = 5`.)
#[test]
fn a_frozen_old_proxy_takes_its_pid_file_back_once_continued() {
    let (home, port) = home_with("");
    let _cleanup = Cleanup(&home);
    let old = start(&home);
    let (restart, successor) = restart_with_a_held_successor(&home, &old);
    signal_proxy(&home, &old.identity(), Signal::SIGSTOP);
    signal_proxy(&home, &successor.identity(), Signal::SIGKILL);
    let done = restart.finish(PATIENCE * 4);
    assert_eq!(done.code, Some(1), "{}", done.said());
    assert!(
        done.stderr
            .contains(&format!("old proxy (PID {})", old.pid))
            && done.stderr.contains("could not take run/proxy.pid back")
            && done.stderr.contains("`daemon stop` stops it"),
        "{}",
        done.said()
    );
    assert_eq!(
        serving(&home),
        vec![old.pid],
        "the frozen proxy still holds the port"
    );
    assert!(locked_record(&home).is_none_or(|r| r.pid != old.pid));
    signal_proxy(&home, &old.identity(), Signal::SIGCONT);
    // Bounded like `eventually`, but a timeout says what the proxy and the
    // daemon logged and who holds the file, so a rare failure can be read.
    let deadline = Instant::now() + PATIENCE;
    while locked_record(&home).is_none_or(|r| r.pid != old.pid) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the continued proxy to hold run/proxy.pid again; \
             the file: {:?}; serving: {:?}\n--- proxy.log:\n{}\n--- daemon.log:\n{}",
            pid_state(&home),
            serving(&home),
            log_tail(&home, "logs/proxy.log"),
            log_tail(&home, "logs/daemon.log"),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_code(&home), Some(0));
    assert_settled(&home, port, "after SIGCONT");
    stop_and_check(&home, port);
}
