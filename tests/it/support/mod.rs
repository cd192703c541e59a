//! Shared test harness: temporary homes, the real binaries as child processes,
//! and real HTTP upstreams (axum apps on 127.0.0.1:0) with scripted behaviour.
//!
//! Every process a test signals is one it spawned here; every address is loopback.

pub mod gateway;
pub mod http;
pub mod nats;
pub mod otlp;
pub mod prompt_server;
pub mod responses_upstream;
pub mod upstream;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Upper bound for anything a test waits on, so a broken build fails instead of
/// hanging CI. Never used to assert speed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A temporary home directory, removed on drop. A proxy or watchdog of this
/// home still running then (started through `daemon` or `watchdog` by a test
/// that failed before stopping it) is killed first: only the process its PID
/// file names, and only after its identity is checked: the file's lock is
/// held, the record names this home, and the live process with the record's
/// PID and start time runs with this home (`--home` or its environment).
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

impl Drop for TestHome {
    fn drop(&mut self) {
        use warden::lifecycle::{pidfile, process};
        let home = warden::home::Home::at(self.dir.path());
        for path in [home.watchdog_pid_file(), home.proxy_pid_file()] {
            if let Ok(pidfile::PidState::Running(record)) = pidfile::inspect(&path) {
                let identity = record.identity();
                // `terminate` checks PID and start time again, through a pidfd.
                if record.home == home.root() && process::runs_with_home(&identity, &home) {
                    let _ = process::terminate(&identity, Duration::ZERO);
                }
            }
        }
    }
}

impl TestHome {
    pub fn new() -> TestHome {
        TestHome {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.file(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.file(rel)).unwrap_or_default()
    }
    /// Writes `warden.toml`.
    pub fn config(&self, toml: &str) {
        self.write("warden.toml", toml);
    }
}

/// A `Command` for one of the crate's binaries with a clean environment: no
/// WARDEN_*/CHATMOCK_*/OPENAI_* variable of the developer's leaks into a test.
pub fn bin(name: &str) -> Command {
    let path = match name {
        "proxy" => env!("CARGO_BIN_EXE_proxy"),
        "daemon" => env!("CARGO_BIN_EXE_daemon"),
        "preflight" => env!("CARGO_BIN_EXE_preflight"),
        "doctor" => env!("CARGO_BIN_EXE_doctor"),
        "watchdog" => env!("CARGO_BIN_EXE_watchdog"),
        other => panic!("unknown binary {other}"),
    };
    let mut cmd = Command::new(path);
    cmd.env_clear();
    for var in ["PATH", "HOME", "LANG", "TMPDIR"] {
        if let Ok(value) = std::env::var(var) {
            cmd.env(var, value);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// A running `proxy` child, stopped (SIGKILL) on drop if still running.
pub struct Proxy {
    pub child: Child,
    pub url: String,
    stderr: Option<std::process::ChildStderr>,
}

impl Proxy {
    /// Starts `proxy --home HOME --port 0 ARGS…` and waits for its "listening on" line.
    pub fn start(home: &TestHome, args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut cmd = bin("proxy");
        cmd.arg("--home")
            .arg(home.path())
            .args(["--port", "0"])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn proxy");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("proxy did not report its address; stderr:\n{err}");
            }
        };
        let url = line
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        let stderr = child.stderr.take();
        Proxy { child, url, stderr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal our own child");
    }

    /// Waits for exit (bounded by PATIENCE).
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "proxy did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr_text(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut e) = self.stderr.take() {
            e.read_to_string(&mut text).ok();
        }
        text
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A reqwest client for talking to the proxy.
pub fn client() -> reqwest::Client {
    warden::support::http_client::client_builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// Asserts OpenAI's error shape `{"error":{"message","type","param","code"}}`
/// (a response body, or the payload of an SSE error frame).
pub fn assert_openai_error(body: &serde_json::Value) {
    let err = &body["error"];
    assert!(err["message"].is_string(), "{body}");
    assert!(err["type"].is_string(), "{body}");
    assert!(
        err.get("param").is_some() && err.get("code").is_some(),
        "{body}"
    );
}

/// Reads a whole SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|frame| {
            frame
                .trim()
                .strip_prefix("data:")
                .map(|d| d.trim().to_string())
        })
        .collect()
}

/// Polls `cond` until true, bounded by PATIENCE.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a binary to completion with `--home HOME` and the given arguments.
pub fn run(name: &str, home: &TestHome, args: &[&str]) -> std::process::Output {
    let mut cmd = bin(name);
    cmd.arg("--home")
        .arg(home.path())
        .args(args)
        .stdin(Stdio::null());
    cmd.output().expect("run binary")
}

pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process the test owns (`sleep`), killed on drop.
pub struct Sleeper(pub Child);

impl Sleeper {
    pub fn spawn() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("300")
                .spawn()
                .expect("spawn sleep"),
        )
    }
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    /// Still running (and not a zombie)?
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
