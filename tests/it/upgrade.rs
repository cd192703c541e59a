//! Upgrades, reloads and stops as an operator does them (SPEC §17): the binary
//! moved aside under a running proxy, SIGHUP and `daemon reload`, `daemon stop`
//! while a watchdog runs, `--host`/`--port` on `daemon start`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use warden::lifecycle::pidfile::{self, PidState};

use crate::support::{TestHome, eventually, free_port, text};

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
        for name in ["daemon", "watchdog", "proxy"] {
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

    let out = install.run("daemon", &home, &["restart"]);
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
