//! Upgrades, reloads and stops as an operator does them (docs/contract.md §17): the binary
//! moved aside under a running proxy, SIGHUP and `daemon reload`, `daemon stop`
//! while a watchdog runs, `--host`/`--port` on `daemon start`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;

use nix::sys::signal::Signal;
use serde_json::Value;
use warden::lifecycle::pidfile::{self, PidState};
use warden::lifecycle::process;

use crate::daemon::StopOnDrop;
use crate::support::upstream::{Behaviour, Upstream};
use crate::support::{TestHome, eventually, free_port, run, text};

/// A home configured for a free port, so preflight passes.
fn home() -> TestHome {
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nport = {}\n[daemon]\nstartup_timeout = 20\nstop_timeout = 5\n",
        free_port()
    ));
    home
}

/// A folder holding this build's `daemon`, `proxy` and `watchdog` (hard links, or
/// copies across file systems), as an operator's install directory.
struct InstallDir {
    dir: tempfile::TempDir,
}

impl InstallDir {
    fn new() -> InstallDir {
        let dir = tempfile::tempdir().unwrap();
        let install = InstallDir { dir };
        for name in ["daemon", "watchdog", "preflight", "proxy"] {
            install.put(name);
        }
        install
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Puts this build's `name` into the folder as a new file.
    fn put(&self, name: &str) {
        let from = match name {
            "daemon" => env!("CARGO_BIN_EXE_daemon"),
            "watchdog" => env!("CARGO_BIN_EXE_watchdog"),
            "preflight" => env!("CARGO_BIN_EXE_preflight"),
            "proxy" => env!("CARGO_BIN_EXE_proxy"),
            other => panic!("unknown binary {other}"),
        };
        let to = self.path(name);
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to).unwrap();
        }
    }

    /// Runs `name --home HOME ARGS…` from this folder with a clean environment.
    fn run(&self, name: &str, home: &TestHome, args: &[&str]) -> Output {
        run_at(&self.path(name), home, args)
    }
}

fn run_at(exe: &Path, home: &TestHome, args: &[&str]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.env_clear();
    for var in ["PATH", "HOME", "LANG", "TMPDIR"] {
        if let Ok(value) = std::env::var(var) {
            cmd.env(var, value);
        }
    }
    cmd.env("NO_COLOR", "1")
        .arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn said(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn running(home: &TestHome) -> pidfile::PidRecord {
    match pidfile::inspect(&home.file("run/proxy.pid")).unwrap() {
        PidState::Running(record) => record,
        other => panic!("expected a running proxy, found {other:?}"),
    }
}

/// Stops what the install folder's daemon started, whatever happened.
struct StopWith<'a>(&'a InstallDir, &'a TestHome);
impl Drop for StopWith<'_> {
    fn drop(&mut self) {
        let _ = self.0.run("daemon", self.1, &["stop", "--force"]);
    }
}

#[test]
fn moving_the_old_binary_aside_locks_no_tool_out() {
    let home = home();
    let install = InstallDir::new();
    let _guard = StopWith(&install, &home);
    let out = install.run("daemon", &home, &["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let old = running(&home);

    // The upgrade: the old file moved aside, a new one in its place.
    std::fs::rename(install.path("proxy"), install.path("proxy.old")).unwrap();
    install.put("proxy");

    let out = install.run("daemon", &home, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["pid"], old.pid);

    let out = install.run("watchdog", &home, &["--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(running(&home).pid, old.pid, "the watchdog replaced nothing");

    // preflight's process check still knows it as this home's proxy, not an orphan.
    let out = install.run("preflight", &home, &["--only", "process"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // (--no-check: the port check's 1 s budget is not what this test is about.)
    let out = install.run("daemon", &home, &["restart", "--no-check"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let new = running(&home);
    assert_ne!(new.pid, old.pid);
    assert_eq!(new.exe, install.path("proxy"), "the new binary runs");
    // The old one drains and leaves.
    eventually("the old proxy to exit", || {
        !warden::lifecycle::process::is_alive(old.pid)
    });

    // And once more with the new one moved aside: stop still reaches it.
    std::fs::rename(install.path("proxy"), install.path("proxy.old2")).unwrap();
    let out = install.run("daemon", &home, &["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(!warden::lifecycle::process::is_alive(new.pid));
    assert_eq!(
        install.run("daemon", &home, &["status"]).status.code(),
        Some(3)
    );
}

/// `warden.toml` with one provider `name` at `url`, its key in `KEY_ENV`.
fn one_provider(port: u16, name: &str, url: &str) -> String {
    format!(
        "[server]\nport = {port}\n[daemon]\nstartup_timeout = 20\nstop_timeout = 5\n\n\
         [[providers]]\nname = \"{name}\"\nurl = \"{url}\"\napi_key_env = \"KEY_ENV\"\n"
    )
}

/// One chat request through the proxy at `base`; its status.
async fn chat(base: &str) -> u16 {
    crate::support::client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn bearer_seen(upstream: &Upstream) -> String {
    let headers = upstream.state.headers.lock().unwrap();
    let last = headers.last().expect("a request reached the upstream");
    last.get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_daemon_reload_apply_a_new_provider_and_refuse_a_broken_config() {
    let first = Upstream::start(Behaviour::Fast);
    let second = Upstream::start(Behaviour::Fast);
    let home = TestHome::new();
    let port = free_port();
    home.config(&one_provider(port, "first", &first.url()));
    home.write(".env", "KEY_ENV=key-one\n");
    let _guard = StopOnDrop(&home);
    let out = run("daemon", &home, &["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let record = running(&home);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(chat(&base).await, 200);
    assert_eq!(first.state.hits.load(Ordering::SeqCst), 1);
    assert_eq!(bearer_seen(&first), "Bearer key-one");

    // SIGHUP (what `systemctl reload` sends): a new provider and a new key in .env.
    home.config(&one_provider(port, "second", &second.url()));
    home.write(".env", "KEY_ENV=key-two\n");
    // The proxy is ours (the test's daemon started it): signalled through the
    // identity-checked path.
    process::signal(&record.identity(), Signal::SIGHUP).unwrap();
    eventually("the reload to be logged", || {
        home.read("logs/proxy.log")
            .contains("configuration reloaded and applied to new requests")
    });
    assert!(
        home.read("logs/proxy.log").contains(".env KEY_ENV"),
        "the rotated key is named as changed (not shown)"
    );
    assert!(
        process::is_alive(record.pid),
        "SIGHUP did not end the proxy"
    );
    assert_eq!(running(&home).pid, record.pid);
    assert_eq!(chat(&base).await, 200);
    assert_eq!(second.state.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        first.state.hits.load(Ordering::SeqCst),
        1,
        "not the old one"
    );
    assert_eq!(bearer_seen(&second), "Bearer key-two");
    let health = crate::support::http::get_json(&format!("{base}/health")).await;
    assert!(health["providers"]["second"].is_object(), "{health}");

    // A broken file: refused with file, key and line; the running one keeps serving.
    home.config(&format!(
        "{}\n[routing]\ncooldown = \"soon\"\n",
        one_provider(port, "first", &first.url())
    ));
    let out = run("daemon", &home, &["reload"]);
    let message = said(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(
        message.contains("warden.toml")
            && message.contains("cooldown")
            && message.contains(":13:")
            && message.contains("NOT reloaded"),
        "{message}"
    );
    process::signal(&record.identity(), Signal::SIGHUP).unwrap();
    eventually("the refused SIGHUP reload to be logged", || {
        home.read("logs/proxy.log").matches("NOT reloaded").count() >= 2
    });
    assert_eq!(chat(&base).await, 200);
    assert_eq!(
        second.state.hits.load(Ordering::SeqCst),
        2,
        "still the second"
    );
    assert_eq!(first.state.hits.load(Ordering::SeqCst), 1);

    // What cannot change live is named, and the rest applies: exit 1.
    let other_port = free_port();
    home.config(&one_provider(other_port, "first", &first.url()));
    let out = run("daemon", &home, &["reload"]);
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains("server.port") && message.contains("daemon restart"),
        "{message}"
    );
    assert_eq!(chat(&base).await, 200, "still on the old port");
    assert_eq!(first.state.hits.load(Ordering::SeqCst), 2, "first again");

    // Back to what the proxy started with: exit 0.
    home.config(&one_provider(port, "first", &first.url()));
    let out = run("daemon", &home, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    // The log is written in batches: wait for the reload's line.
    crate::support::eventually("the daemon reload to be logged", || {
        home.read("logs/proxy.log").contains("daemon reload")
    });
    let log = home.read("logs/proxy.log");
    assert!(
        log.contains("SIGHUP") && log.contains("daemon reload"),
        "each reload is logged with its cause: {log}"
    );
    assert!(
        !log.contains("key-one") && !log.contains("key-two"),
        "{log}"
    );
}

/// `daemon start --port P` runs the proxy on P (preflight checks P), a restart
/// without flags keeps it, `restart --port Q` moves it; the bind error of a taken
/// port suggests what exists, and no message sends the operator to `doctor` for
/// a port another program holds.
#[test]
fn daemon_start_and_restart_take_host_and_port() {
    let home = home();
    let _guard = StopOnDrop(&home);
    let port = free_port();
    let out = run(
        "daemon",
        &home,
        &["start", "--host", "127.0.0.1", "--port", &port.to_string()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(said(&out).contains(&format!(":{port}")), "{}", said(&out));
    assert_eq!(running(&home).port, Some(port));

    // (--no-check from here on: preflight is not the point.)
    let out = run("daemon", &home, &["restart", "--no-check"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(said(&out).contains("without downtime"), "{}", said(&out));
    assert_eq!(running(&home).port, Some(port), "restart keeps the address");
    let status: Value =
        serde_json::from_slice(&run("daemon", &home, &["status", "--json"]).stdout).unwrap();
    assert_eq!(status["url"], format!("http://127.0.0.1:{port}").as_str());

    let other = free_port();
    let out = run(
        "daemon",
        &home,
        &["restart", "--no-check", "--port", &other.to_string()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(running(&home).port, Some(other), "moved");
    assert!(said(&out).contains("the address changes"), "{}", said(&out));

    // A port another program holds: preflight (with the given port) refuses,
    // and nothing suggests doctor, which cannot fix that.
    assert_eq!(run("daemon", &home, &["stop"]).status.code(), Some(0));
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port().to_string();
    let out = run("daemon", &home, &["start", "--port", &taken]);
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{taken}")), "{message}");
    assert!(!message.contains("run `doctor`"), "{message}");
    // The proxy's own bind error names what exists.
    let out = run("daemon", &home, &["start", "--no-check", "--port", &taken]);
    let message = format!("{}{}", said(&out), home.read("logs/proxy.log"));
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(message.contains("daemon start --port P"), "{message}");
}

/// A home that is a file, and `cache` that is a file: one cause, said once, in
/// the words preflight uses; doctor reports one finding.
#[test]
fn a_home_or_a_folder_that_is_a_file_is_one_clear_cause() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("home");
    std::fs::write(&file, "not a folder").unwrap();
    let mut cmd = crate::support::bin("daemon");
    let out = cmd.arg("--home").arg(&file).arg("start").output().unwrap();
    let message = said(&out);
    assert_ne!(out.status.code(), Some(0), "{message}");
    assert!(
        message.contains("is a file, not a folder") && !message.contains("doctor`)"),
        "{message}"
    );
    let out = crate::support::bin("doctor")
        .arg("--home")
        .arg(&file)
        .args(["--dry-run", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "one cause, one finding: {report}");
    assert_eq!(findings[0]["status"], "needs-you");
    let out = crate::support::bin("proxy")
        .arg("--home")
        .arg(&file)
        .output()
        .unwrap();
    let message = said(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(message.contains("is a file, not a folder"), "{message}");
    assert!(!message.contains("fix the value"), "{message}");

    let home = home();
    home.write("cache", "a file where a folder belongs");
    let out = run("daemon", &home, &["start", "--no-check"]);
    let message = said(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains("is a file where warden needs a folder") && message.contains("mv "),
        "{message}"
    );
    assert!(!message.contains("File exists"), "{message}");
}

/// `server.port` changed in the file: `daemon reload` names it, and `daemon
/// restart` moves the proxy there.
#[test]
fn a_port_changed_in_the_file_applies_at_restart() {
    let home = home();
    let _guard = StopOnDrop(&home);
    let out = run("daemon", &home, &["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let other = free_port();
    home.config(&format!(
        "[server]\nport = {other}\n[daemon]\nstartup_timeout = 20\nstop_timeout = 5\n"
    ));
    let out = run("daemon", &home, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("server.port"), "{}", said(&out));
    let out = run("daemon", &home, &["restart", "--no-check"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(running(&home).port, Some(other));
}
