//! A real `nats-server` for tests: its own loopback port and a temporary
//! JetStream store directory, stopped (only that PID) when dropped.
//! `.ci/run` installs the Debian package when it is missing.
//!
//! The first start lets nats-server choose the port (`-p -1`) and reads it from
//! the ports file the server writes: a port picked by the test and bound later
//! could be taken by another test's server in between, and the test would then
//! talk to that server without knowing it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::PATIENCE;

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p PORT -js -sd DIR` and waits until it
    /// accepts connections.
    pub fn start() -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let mut server = NatsServer {
            child: None,
            port: 0,
            store,
        };
        server.spawn();
        server
    }

    /// Starts nats-server on `self.port`, or on a port it chooses when that is 0.
    fn spawn(&mut self) {
        let ports_dir = self.store.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).unwrap();
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port, "--ports_file_dir"])
            .arg(&ports_dir)
            .args(["-js", "-sd"])
            .arg(self.store.path().join("js"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (.ci/run installs the Debian package)");
        // The server writes its ports file once it listens.
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + PATIENCE;
        let listening = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = ports["nats"][0].as_str()
            {
                break url.to_string();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server (-p {port}) exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server (-p {port}) wrote no ports file"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.port = listening
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("nats-server's ports file names {listening:?}"));
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM to its PID, then waits for it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + PATIENCE;
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A client connected to this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
