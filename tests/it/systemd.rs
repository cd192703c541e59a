//! `proxy` under systemd's notification protocol (`Type=notify`, `WatchdogSec=`):
//! a Unix datagram socket stands in for systemd, the real binary talks to it.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::upstream::{Behaviour, Upstream};
use crate::support::{PATIENCE, Proxy, TestHome, client};

/// A fake service manager: the socket `NOTIFY_SOCKET` names.
struct FakeSystemd {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// Every message received so far, in order, with when it arrived.
    seen: Vec<(Instant, String)>,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        FakeSystemd {
            socket,
            path,
            _dir: dir,
            seen: Vec::new(),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Receives until a message with the assignment `line` arrives (bounded by PATIENCE);
    /// returns its arrival time.
    fn expect(&mut self, line: &str) -> Instant {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let at = Instant::now();
                let hit = msg.lines().any(|l| l == line);
                self.seen.push((at, msg));
                if hit {
                    return at;
                }
            }
        }
        panic!("no {line} from the proxy; received: {:?}", self.messages());
    }

    /// Receives for `how_long`, keeping what arrives.
    fn drain_for(&mut self, how_long: Duration) {
        let until = Instant::now() + how_long;
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
    }

    fn messages(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, m)| m.as_str()).collect()
    }

    fn count_since(&self, since: Instant, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|(at, m)| *at > since && m.lines().any(|l| l == line))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notifies_ready_pings_the_watchdog_while_ready_and_stopping_on_sigterm() {
    let upstream = Upstream::start(Behaviour::Gated);
    let home = TestHome::new();
    home.config(&format!("[upstream]\nurl = \"{}\"\n", upstream.url()));
    let mut systemd = FakeSystemd::new();
    let mut proxy = Proxy::start(
        &home,
        &[],
        &[
            ("NOTIFY_SOCKET", systemd.path()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    // READY=1 comes once /health/ready answers 200, before any watchdog ping.
    systemd.expect("READY=1");
    let ready = client()
        .get(format!("{}/health/ready", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let first_ready = systemd
        .messages()
        .iter()
        .position(|m| m.contains("READY=1"));
    assert_eq!(first_ready, Some(0), "{:?}", systemd.messages());

    // WATCHDOG=1 every half interval (100 ms): a few within a second.
    let start = Instant::now();
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    assert!(start.elapsed() < PATIENCE);

    // SIGTERM with a request in flight: STOPPING=1 as the drain begins, and no more
    // pings while draining (/health/ready answers 503 then).
    let pending = tokio::spawn({
        let url = proxy.url.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&json!({"model": "gpt-5", "messages": [{"role": "user", "content": "a"}]}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    upstream.wait_arrival().await;
    proxy.signal(Signal::SIGTERM);
    let stopping = systemd.expect("STOPPING=1");
    systemd.drain_for(Duration::from_millis(600));
    // One ping may have been on its way as the drain began; three periods later, none.
    assert!(
        systemd.count_since(stopping, "WATCHDOG=1") <= 1,
        "pings while draining: {:?}",
        systemd.messages()
    );
    assert_eq!(
        systemd.count_since(stopping + Duration::from_millis(150), "WATCHDOG=1"),
        0,
        "pings while draining: {:?}",
        systemd.messages()
    );
    upstream.state.release();
    assert_eq!(pending.await.unwrap(), 200);
    assert!(proxy.wait().success(), "exit 0 after the drain");
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let home = TestHome::new();
    let mut systemd = FakeSystemd::new();
    // WATCHDOG_PID names PID 1, not the proxy: sd_watchdog_enabled(3) says "not ours".
    let mut proxy = Proxy::start(
        &home,
        &[],
        &[
            ("NOTIFY_SOCKET", systemd.path()),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    systemd.expect("READY=1");
    systemd.drain_for(Duration::from_millis(500));
    assert!(
        !systemd.messages().iter().any(|m| m.contains("WATCHDOG=1")),
        "{:?}",
        systemd.messages()
    );
    proxy.signal(Signal::SIGTERM);
    systemd.expect("STOPPING=1");
    assert!(proxy.wait().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_notify_socket_the_proxy_runs_as_before() {
    let home = TestHome::new();
    // A watchdog interval without a socket to send to: it must not matter.
    let mut proxy = Proxy::start(&home, &[], &[("WATCHDOG_USEC", "200000")]);
    let ready = client()
        .get(format!("{}/health/ready", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    proxy.signal(Signal::SIGTERM);
    assert!(proxy.wait().success());
    let log = home.read("logs/proxy.log");
    assert!(log.contains("warden proxy stopped"), "{log}");
    assert!(!log.contains("cannot notify systemd"), "{log}");
}
