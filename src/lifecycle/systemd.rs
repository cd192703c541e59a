//! systemd's service notification protocol (`sd_notify(3)`), for `Type=notify` units
//! with `WatchdogSec=` (`templates/warden-proxy.service`).
//!
//! A message is one datagram of `KEY=value` lines sent to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract socket when it starts with `@`). Without
//! that variable (not started by systemd) every function here does nothing. The
//! protocol is small enough that a dependency would not pay for itself.
//!
//! The proxy sends `READY=1` once it listens and `/health/ready` answers 200,
//! `STOPPING=1` when the drain begins, and `WATCHDOG=1` every half watchdog interval
//! while it is ready, so a wedged or draining proxy stops pinging ([`supervise`]).

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::sync::watch;

/// The socket systemd listens on, when this process was started with one.
fn notify_socket() -> Option<OsString> {
    std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())
}

/// True when `$NOTIFY_SOCKET` is set, i.e. a service manager wants notifications.
pub fn enabled() -> bool {
    notify_socket().is_some()
}

/// Sends `state` (newline-separated `KEY=value` assignments) to `socket`: a file system
/// path, or an abstract socket name when it starts with `@`. Never blocks: a full
/// queue is an error (`WouldBlock`), not a stall of the caller.
pub fn send_to(socket: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let bytes = socket.as_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
        None if bytes.starts_with(b"/") => sock.send_to(state.as_bytes(), socket)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET={socket:?} is neither an absolute path nor @abstract"),
            ));
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to NOTIFY_SOCKET",
        ));
    }
    Ok(())
}

/// Sends `state` to `$NOTIFY_SOCKET`. Returns whether a message was sent; failures are
/// logged, never fatal (the service manager's problem must not stop the gateway).
pub fn notify(state: &str) -> bool {
    let Some(socket) = notify_socket() else {
        return false;
    };
    match send_to(&socket, state) {
        Ok(()) => {
            tracing::debug!(state = %state.replace('\n', " "), "notified systemd");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, socket = ?socket, state = %state.replace('\n', " "), "cannot notify systemd");
            false
        }
    }
}

/// `READY=1`: start-up is finished (for `Type=notify` units, `systemctl start` returns).
pub fn notify_ready() -> bool {
    notify("READY=1\nSTATUS=ready: serving requests")
}

/// `STOPPING=1`: the drain has begun.
pub fn notify_stopping() -> bool {
    notify("STOPPING=1\nSTATUS=draining in-flight requests")
}

/// `WATCHDOG=1`: still alive and well.
pub fn notify_watchdog() -> bool {
    notify("WATCHDOG=1")
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), as
/// `sd_watchdog_enabled(3)` reads it: `$WATCHDOG_USEC`, and only when `$WATCHDOG_PID`
/// is unset or names this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] over explicit values, for tests.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// How often to ping for a given watchdog interval: half of it, as systemd advises.
pub fn ping_period(interval: Duration) -> Duration {
    (interval / 2).max(Duration::from_millis(1))
}

/// Talks to systemd for the life of a gateway: `READY=1` the first time `ready`
/// turns true, then `WATCHDOG=1` every half watchdog interval while it is true.
/// Returns at once when no service manager is listening. (`STOPPING=1` is sent by
/// whoever starts the drain, see [`crate::gateway::serve`].)
pub async fn supervise(mut ready: watch::Receiver<bool>) {
    if !enabled() {
        return;
    }
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    notify_ready();
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let period = ping_period(interval);
    tracing::info!(
        watchdog_secs = interval.as_secs_f64(),
        ping_secs = period.as_secs_f64(),
        "systemd watchdog enabled"
    );
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Ping only while /health/ready would answer 200: a starting or draining proxy
        // is not "well", and a wedged runtime does not get here at all.
        if *ready.borrow() {
            notify_watchdog();
        }
        if ready.has_changed().is_err() {
            return; // the gateway is gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        let me = 4242;
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("200000"), Some("4242"), me),
            Some(Duration::from_millis(200))
        );
        // Meant for another process (e.g. inherited from a parent): not ours.
        assert_eq!(watchdog_interval_from(Some("200000"), Some("1"), me), None);
        assert_eq!(watchdog_interval_from(None, None, me), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, me), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, me), None);
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("warden-test-{}-{:?}", std::process::id(), path);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(std::ffi::OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");

        assert!(send_to(std::ffi::OsStr::new("relative.sock"), "READY=1").is_err());
    }
}
