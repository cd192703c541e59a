//! `daemon`: start/stop/status exit codes, stale and foreign PID files, a busy
//! port, zero-downtime restart under load, logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::Value;
use warden::lifecycle::pidfile::{self, PidState};

use crate::support::responses_upstream::until;
use crate::support::{Sleeper, TestHome, client, free_port, run, text};

/// A home configured for a free port, with its folders, so preflight passes.
fn home() -> TestHome {
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nport = {}\n[daemon]\nstartup_timeout = 20\nstop_timeout = 5\n",
        free_port()
    ));
    home
}

fn pid_record(home: &TestHome) -> pidfile::PidRecord {
    match pidfile::inspect(&home.file("run/proxy.pid")).unwrap() {
        PidState::Running(record) => record,
        other => panic!("expected a running proxy, found {other:?}"),
    }
}

/// Stops the daemon-started proxy when a test ends, whatever happened.
pub(crate) struct StopOnDrop<'a>(pub(crate) &'a TestHome);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = run("daemon", self.0, &["stop", "--force"]);
    }
}

#[test]
fn start_status_stop_with_lsb_exit_codes() {
    let home = home();
    let _guard = StopOnDrop(&home);
    let out = run("daemon", &home, &["status"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "not running: {}",
        text(&out.stdout)
    );

    let out = run("daemon", &home, &["start"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    let record = pid_record(&home);
    assert!(
        said.contains(&format!("PID {}", record.pid)) && said.contains("ready in"),
        "{said}"
    );
    assert_eq!(
        record.exe,
        std::path::Path::new(env!("CARGO_BIN_EXE_proxy"))
    );

    let out = run("daemon", &home, &["start"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("already running"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(pid_record(&home).pid, record.pid, "nothing was replaced");

    let out = run("daemon", &home, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["healthy"], true);
    assert_eq!(status["pid"], record.pid);
    assert!(status["uptime_secs"].is_number());
    assert_eq!(status["health"]["status"], "pass");
    // The status page's URL (server.ui is on by default), in JSON and in text.
    let ui_url = format!("{}/ui", status["url"].as_str().unwrap());
    assert_eq!(status["ui_url"], ui_url.as_str());
    assert_eq!(status["health"]["providers"]["default"]["state"], "healthy");
    let out = run("daemon", &home, &["status"]);
    let shown = text(&out.stdout);
    assert!(shown.contains(&format!("page      {ui_url}")), "{shown}");
    assert!(
        shown.contains("provider  default: healthy, 0 in flight"),
        "{shown}"
    );

    let out = run("daemon", &home, &["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!home.file("run/proxy.pid").exists());
    assert!(!warden::lifecycle::process::is_alive(record.pid));
    assert_eq!(run("daemon", &home, &["status"]).status.code(), Some(3));
    assert_eq!(
        run("daemon", &home, &["stop"]).status.code(),
        Some(0),
        "stop when stopped"
    );

    let log = home.read("logs/daemon.log");
    assert!(
        log.contains("start pid=") && log.contains("stop pid="),
        "{log}"
    );
    let out = run("daemon", &home, &["logs", "-n", "2", "daemon"]);
    assert_eq!(text(&out.stdout).lines().count(), 2);
}

#[test]
fn a_killed_proxy_is_reported_dead() {
    let home = home();
    let _guard = StopOnDrop(&home);
    assert!(run("daemon", &home, &["start"]).status.success());
    let record = pid_record(&home);
    // The proxy is ours (the test's daemon started it); kill -9 it through the
    // identity-checked path so nothing else could be hit.
    warden::lifecycle::process::signal(&record.identity(), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    assert!(warden::lifecycle::process::wait_exit(
        &record.identity(),
        crate::support::PATIENCE
    ));
    let out = run("daemon", &home, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    // start clears the stale file and starts again.
    assert!(run("daemon", &home, &["start"]).status.success());
    assert_ne!(pid_record(&home).pid, record.pid);
    let dead_socket = warden::lifecycle::handoff::control_socket_path(
        &warden::home::Home::at(home.path()),
        record.pid,
    );
    assert!(
        !dead_socket.exists(),
        "the killed proxy's control socket was removed"
    );
}

#[test]
fn a_pid_file_naming_an_unrelated_process_is_never_signalled() {
    let home = home();
    let mut sleeper = Sleeper::spawn();
    std::fs::create_dir_all(home.file("run")).unwrap();
    // Unlocked: stale, whatever the PID now is.
    home.write("run/proxy.pid", &format!("{}\n", sleeper.pid()));
    let out = run("daemon", &home, &["status"]);
    assert_ne!(out.status.code(), Some(0));
    for args in [&["stop"][..], &["stop", "--force"][..]] {
        home.write("run/proxy.pid", &format!("{}\n", sleeper.pid()));
        let out = run("daemon", &home, args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("not signalled"),
            "{}",
            text(&out.stdout)
        );
        assert!(
            sleeper.alive(),
            "{args:?} must leave the unrelated process alone"
        );
    }

    // Locked by someone (the test holds the lock), with a record whose start time
    // does not match the live PID: still never signalled.
    let identity = warden::lifecycle::process::ProcessIdentity::of(sleeper.pid()).unwrap();
    let record = format!(
        "{}\nstart_time={}\nexe={}\nport=1\nstarted_at=2026-01-01T00:00:00Z\nhome={}\n",
        sleeper.pid(),
        identity.start_time + 1,
        identity.exe.display(),
        home.path().display()
    );
    home.write("run/proxy.pid", &record);
    let file = std::fs::File::open(home.file("run/proxy.pid")).unwrap();
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    for args in [&["stop"][..], &["stop", "--force"][..]] {
        let out = run("daemon", &home, args);
        assert_ne!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stderr).contains("leaves it alone"),
            "{}",
            text(&out.stderr)
        );
        assert!(sleeper.alive());
    }
    assert_ne!(run("daemon", &home, &["status"]).status.code(), Some(0));
}

#[test]
fn a_port_held_by_another_program_is_named_and_start_refuses() {
    let home = TestHome::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    home.config(&format!("[server]\nport = {port}\n"));
    let out = run("daemon", &home, &["start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("PID {}", std::process::id())),
        "{err}"
    );
    assert!(!home.file("run/proxy.pid").exists());

    // Without the checks, the proxy itself fails to bind: start reports it with
    // the log's last lines, and nothing is left running.
    let out = run("daemon", &home, &["start", "--no-check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("exited during start-up") && err.contains("cannot listen"),
        "{err}"
    );
    assert_eq!(run("daemon", &home, &["status"]).status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_under_steady_load_fails_no_request() {
    let home = home();
    let _guard = StopOnDrop(&home);
    assert!(run("daemon", &home, &["start"]).status.success());
    let old = pid_record(&home);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", old.port.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let body = serde_json::json!({"model": "gpt-5", "messages": [{"role": "user", "content": "steady"}]});
            // Bounded: at most 20 000 requests per worker.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let good = match c.post(&url).json(&body).send().await {
                    Ok(r) => r.status() == 200 && r.text().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if good { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Load is flowing before, during and after the restart.
    let answered = |n: usize| {
        let ok = &ok;
        move || async move { ok.load(Ordering::Relaxed) >= n }
    };
    until("200 answered requests before the restart", answered(200)).await;
    let home_path = home.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        crate::support::bin("daemon")
            .arg("--home")
            .arg(home_path)
            .arg("restart")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("without downtime"),
        "{}",
        text(&out.stdout)
    );
    let after_restart = ok.load(Ordering::Relaxed);
    until(
        "200 more answered requests after the restart",
        answered(after_restart + 200),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let new = pid_record(&home);
    assert_ne!(new.pid, old.pid);
    assert!(
        !warden::lifecycle::process::is_alive(old.pid),
        "the old proxy drained and exited"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn restart_rotates_oversized_logs() {
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nport = {}\n[logs]\nmax_bytes = 1000\n",
        free_port()
    ));
    let _guard = StopOnDrop(&home);
    assert!(run("daemon", &home, &["start"]).status.success());
    home.write("logs/watchdog.log", &"old watchdog line\n".repeat(200));
    let before = std::fs::metadata(home.file("logs/proxy.log"))
        .unwrap()
        .len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(home.file("logs/proxy.log"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, "filler\n".repeat(500).as_bytes()))
        .unwrap();
    let out = run("daemon", &home, &["restart"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rotated = home.read("logs/proxy.log.1");
    assert!(
        rotated.len() as u64 > before && rotated.contains("filler"),
        "the old log moved to proxy.log.1"
    );
    assert!(
        home.read("logs/watchdog.log.1")
            .contains("old watchdog line")
    );
    // The new proxy writes to a fresh proxy.log.
    assert!(home.read("logs/proxy.log").contains("warden proxy started"));
    assert!(home.read("logs/daemon.log").contains("rotated"));
}

#[test]
fn a_hung_proxy_is_reported_unhealthy() {
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nport = {}\n[watchdog]\nhealth_timeout = 1\n",
        free_port()
    ));
    let _guard = StopOnDrop(&home);
    assert!(run("daemon", &home, &["start"]).status.success());
    let record = pid_record(&home);
    // Our own proxy, frozen through the identity-checked path, then thawed.
    warden::lifecycle::process::signal(&record.identity(), nix::sys::signal::Signal::SIGSTOP)
        .unwrap();
    let out = run("daemon", &home, &["status", "--json"]);
    warden::lifecycle::process::signal(&record.identity(), nix::sys::signal::Signal::SIGCONT)
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["healthy"], false);
    assert_eq!(status["pid"], record.pid);
    assert_eq!(
        run("daemon", &home, &["status"]).status.code(),
        Some(0),
        "healthy again once thawed"
    );
}

#[test]
fn a_config_broken_after_start_does_not_lock_out_stop_or_status() {
    let home = home();
    let _guard = StopOnDrop(&home);
    assert!(run("daemon", &home, &["start"]).status.success());
    let record = pid_record(&home);
    let good = home.read("warden.toml");
    home.config(&format!("{good}max_concurent = 5\n"));
    let out = run("daemon", &home, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("warning: configuration error"));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pid"], record.pid);
    // start and restart refuse (they would start a proxy on a broken config) …
    assert_eq!(run("daemon", &home, &["restart"]).status.code(), Some(1));
    // … but stop works.
    let out = run("daemon", &home, &["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!warden::lifecycle::process::is_alive(record.pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_draining_old_proxy_of_a_restart_is_not_an_orphan() {
    use crate::support::upstream::{Behaviour, Upstream};
    let upstream = Upstream::start(Behaviour::Gated);
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nport = {}\n[upstream]\nurl = \"{}\"\n",
        free_port(),
        upstream.url()
    ));
    home.write(".env", "OPENAI_API_KEY=test-upstream-key\n");
    std::fs::set_permissions(
        home.file(".env"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let _guard = StopOnDrop(&home);
    let out = run("daemon", &home, &["start"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let old = pid_record(&home);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", old.port.unwrap());
    let pending = tokio::spawn(async move {
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "slow"}]});
        client()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
    });
    upstream.wait_arrival().await;
    let home_path = home.path().to_path_buf();
    let restart = tokio::task::spawn_blocking(move || {
        crate::support::bin("daemon")
            .arg("--home")
            .arg(home_path)
            .arg("restart")
            .output()
            .unwrap()
    });
    // The successor takes over the PID file while the old one drains the request.
    let pid_file = home.file("run/proxy.pid");
    crate::support::eventually(
        "the successor owns the PID file",
        || matches!(pidfile::inspect(&pid_file), Ok(PidState::Running(r)) if r.pid != old.pid),
    );
    crate::support::eventually("the old proxy closed its listener", || {
        !warden::lifecycle::ports::holds_listener(old.pid)
    });
    assert!(
        warden::lifecycle::process::is_alive(old.pid),
        "still draining"
    );
    let out = run("preflight", &home, &["--json", "--only", "process"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let out = run("doctor", &home, &["--dry-run", "--yes", "--json"]);
    assert!(
        !text(&out.stdout).contains(&format!("PID {}", old.pid)),
        "{}",
        text(&out.stdout)
    );
    upstream.state.release();
    assert_eq!(pending.await.unwrap(), 200, "the drained request completed");
    assert!(restart.await.unwrap().status.success());
}

#[test]
fn output_is_plain_and_a_closed_pipe_is_not_a_panic() {
    let home = home();
    let _guard = StopOnDrop(&home);
    assert!(run("daemon", &home, &["start"]).status.success());
    // `daemon logs | head -c 1`: the reader goes away after one byte while
    // thousands of lines are still to be written.
    home.write("logs/daemon.log", &"a daemon log line\n".repeat(20_000));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --home '{}' logs -n 20000 daemon | head -c 1 >/dev/null",
            env!("CARGO_BIN_EXE_daemon"),
            home.path().display()
        ))
        .output()
        .unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    let out = run("daemon", &home, &["stop"]);
    assert!(
        text(&out.stdout).contains("exited after SIGTERM"),
        "{}",
        text(&out.stdout)
    );

    // A start refused by preflight is an action too, and is logged.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    home.config(&format!("[server]\nport = {port}\n"));
    assert_eq!(run("daemon", &home, &["start"]).status.code(), Some(1));
    assert!(
        home.read("logs/daemon.log")
            .contains("start refused: preflight failed (port")
    );
}

/// A provider on a closed port first, the mock second (docs/providers.md, "Routing"
/// routing"): `preflight`, `doctor` and `daemon status` name the providers,
/// never the `[upstream]` that `[[providers]]` replaces (the built-in mock).
#[test]
fn with_providers_the_operator_tools_name_them_not_the_unused_upstream() {
    let down = crate::support::upstream::closed_port_url();
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nport = {}\n[daemon]\nstartup_timeout = 20\nstop_timeout = 5\n\n\
         [[providers]]\nname = \"down\"\nurl = \"{down}\"\napi_key_env = \"DOWN_KEY\"\n\n\
         [[providers]]\nname = \"spare\"\nurl = \"mock\"\n",
        free_port()
    ));
    let _guard = StopOnDrop(&home);
    let find = |report: &Value, list: &str, id: &str| {
        report[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {report}"))
    };

    // preflight: the hint says how to probe the dead provider, not `mock`.
    let out = run("preflight", &home, &["--only", "upstream", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = find(&report, "checks", "upstream");
    assert_eq!(check["status"], "warn", "{report}");
    let hint = check["hint"].as_str().unwrap();
    assert!(
        hint.contains(&format!("curl -sS {down}/models")) && !hint.contains("upstream.url"),
        "{hint}"
    );

    // doctor: the provider's key, not "upstream is mock".
    let out = run("doctor", &home, &["--dry-run", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = find(&report, "findings", "api-key");
    assert_eq!(finding["status"], "needs-you", "{report}");
    let message = finding["message"].as_str().unwrap();
    assert!(
        message.contains("provider down") && message.contains("DOWN_KEY"),
        "{message}"
    );
    assert!(!message.contains("upstream is mock"), "{message}");
    home.write(".env", "DOWN_KEY=k-not-a-real-key-0123\n");
    let out = run("doctor", &home, &["--dry-run", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = find(&report, "findings", "api-key");
    assert_eq!(finding["status"], "ok", "{report}");
    assert!(
        !finding.to_string().contains("k-not-a-real-key"),
        "{finding}"
    );

    // daemon start: the warning does not stop it, but is said.
    let out = run("daemon", &home, &["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("daemon: preflight warning: upstream: unreachable: down"),
        "{}",
        text(&out.stderr)
    );
    // daemon status: one line per provider, no `upstream  mock` line.
    let out = run("daemon", &home, &["status"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("provider  down:") && shown.contains("provider  spare:"),
        "{shown}"
    );
    assert!(!shown.contains("upstream  "), "{shown}");
    let out = run("daemon", &home, &["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A test that panics after `daemon start` leaves no proxy behind: its
/// temporary home kills the process its PID file names (identity-checked) as
/// the panic unwinds.
#[test]
fn a_test_that_panics_leaves_no_proxy_of_its_home_running() {
    let started = std::panic::catch_unwind(|| {
        let home = home();
        let out = run("daemon", &home, &["start", "--no-check"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let record = pid_record(&home);
        assert!(warden::lifecycle::process::is_alive(record.pid));
        std::panic::panic_any(record);
    });
    let record = *started
        .expect_err("it panicked")
        .downcast::<pidfile::PidRecord>()
        .unwrap();
    crate::support::eventually("the proxy of the panicked test to be gone", || {
        !warden::lifecycle::process::is_alive(record.pid)
    });
}

/// A temporary home's clean-up never signals a process that is not of this
/// home, even when a held PID file names it with its true PID and start time
/// (a stranger that got a recycled PID, or a file copied from elsewhere).
#[test]
fn a_test_homes_clean_up_leaves_a_process_of_another_home_alone() {
    let home = TestHome::new();
    let other = TestHome::new();
    let mut stranger = Sleeper(
        std::process::Command::new("sleep")
            .arg("300")
            .env_clear()
            .env("WARDEN_HOME", other.path())
            .spawn()
            .expect("spawn sleep"),
    );
    let live = warden::lifecycle::process::ProcessIdentity::of(stranger.pid()).unwrap();
    let record = pidfile::PidRecord {
        pid: live.pid,
        start_time: live.start_time,
        exe: live.exe,
        port: None,
        started_at: "2026-01-01T00:00:00Z".into(),
        home: home.path().to_path_buf(),
    };
    // Held (by this test), so the clean-up reads it as a running process's.
    let held = pidfile::acquire(&home.file("run/proxy.pid"), &record).unwrap();
    assert!(matches!(
        pidfile::inspect(&home.file("run/proxy.pid")),
        Ok(PidState::Running(_))
    ));
    drop(home);
    drop(held);
    assert!(stranger.alive(), "a process of another home was signalled");
}

/// A proxy started on another port than the configuration's: preflight's (and
/// doctor's) port check says the configured port is free *and* where this
/// home's proxy runs, so "free" is not read as "not running".
#[test]
fn the_port_check_says_where_the_homes_proxy_runs_when_not_on_the_configured_port() {
    let home = home();
    let _guard = StopOnDrop(&home);
    let elsewhere = free_port();
    let out = run(
        "daemon",
        &home,
        &["start", "--no-check", "--port", &elsewhere.to_string()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let record = pid_record(&home);
    let out = run("preflight", &home, &["--only", "port"]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("is free")
            && said.contains(&format!(
                "this home's proxy, PID {}, runs on port {elsewhere}",
                record.pid
            )),
        "{said}"
    );
}
