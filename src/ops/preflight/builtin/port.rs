//! `port`: is the listen address free, or held by this home's own proxy?

use super::Context;
use crate::lifecycle::pidfile::{self, PidState};
use crate::lifecycle::ports::{self, PortHolder};
use crate::lifecycle::process;
use crate::ops::preflight::Outcome;

/// `PID 4242 (python3 -m http.server 8000)`, the command shortened for one line.
pub fn describe_holder(holder: &PortHolder) -> String {
    match (holder.pid, &holder.command) {
        (Some(pid), Some(command)) => {
            let mut short: String = command.chars().take(120).collect();
            if short.len() < command.len() {
                short.push('…');
            }
            format!("PID {pid} ({short})")
        }
        _ => holder.to_string(),
    }
}

pub(super) fn check_port(ctx: &Context) -> Outcome {
    let note = ctx.defaults_note();
    let addr = match ctx.cfg.listen_addr() {
        Ok(addr) => addr,
        Err(e) => return Outcome::fail(format!("{e}{note}")),
    };
    if addr.port() == 0 {
        // Any port will do, but the address must be one of this host's.
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Outcome::fail(format!("cannot listen on {}: {e}{note}", addr.ip())).with_hint(
                format!(
                    "{} is not an address this host can listen on: fix server.host in {}",
                    addr.ip(),
                    ctx.home.config_file().display()
                ),
            );
        }
        return Outcome::pass(format!(
            "server.port is 0: the proxy takes any free port{note}"
        ));
    }
    // Binding (and closing at once) is the only reliable "is it free"; /proc then
    // says who holds it when it is not.
    let bind_error = match std::net::TcpListener::bind(addr) {
        Ok(_probe) => {
            return Outcome::pass(format!("{addr} is free{}{note}", elsewhere(ctx, addr)));
        }
        Err(e) => e,
    };
    // This home's own proxy holds it (a running home, `daemon restart`): said
    // from its own descriptors, without reading every process's.
    let pid_file = ctx.home.proxy_pid_file();
    if let Ok(PidState::Running(record)) = pidfile::inspect(&pid_file) {
        if ports::only_held_by(addr.port(), record.pid) {
            return Outcome::pass(format!(
                "{addr} is held by this home's proxy, PID {} (per {}){note}",
                record.pid,
                pid_file.display()
            ));
        }
    }
    let holders = ports::listeners_on(addr.port());
    if holders.is_empty() {
        return Outcome::fail(format!("cannot listen on {addr}: {bind_error}{note}")).with_hint(
            match bind_error.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "ports below 1024 need privileges: pick another server.port in {}",
                    ctx.home.config_file().display()
                ),
                std::io::ErrorKind::AddrNotAvailable => format!(
                    "{} is not an address of this host: fix server.host in {}",
                    addr.ip(),
                    ctx.home.config_file().display()
                ),
                _ => ctx.expand("pick another server.port in {config_file}, or WARDEN_PORT"),
            },
        );
    }
    // This home's own running proxy holds it: that is fine (a restart hands the
    // socket over, so during one, several of our proxies may share it).
    if let Ok(PidState::Running(record)) = pidfile::inspect(&pid_file) {
        if holders.iter().any(|h| h.pid == Some(record.pid)) {
            let ours: Vec<i32> = process::find_proxies_of_home(&ctx.home, "proxy")
                .iter()
                .map(|p| p.pid)
                .chain([record.pid])
                .collect();
            let foreign: Vec<&PortHolder> = holders
                .iter()
                .filter(|h| !h.pid.is_some_and(|pid| ours.contains(&pid)))
                .collect();
            if foreign.is_empty() {
                return Outcome::pass(format!(
                    "{addr} is held by this home's proxy, PID {} (per {}){note}",
                    record.pid,
                    pid_file.display()
                ));
            }
            return taken(ctx, addr, &foreign, note);
        }
    }
    let all: Vec<&PortHolder> = holders.iter().collect();
    taken(ctx, addr, &all, note)
}

/// When this home's proxy runs, but on another port than the one checked
/// (`daemon start --port P`, or `server.port` changed since): says where, so
/// "free" is not read as "not running".
fn elsewhere(ctx: &Context, addr: std::net::SocketAddr) -> String {
    match pidfile::inspect(&ctx.home.proxy_pid_file()) {
        Ok(PidState::Running(record)) => match record.port {
            Some(port) if port != addr.port() => format!(
                "; this home's proxy, PID {}, runs on port {port} (started with `--port`, \
                 or before server.port changed)",
                record.pid
            ),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

fn taken(
    ctx: &Context,
    addr: std::net::SocketAddr,
    holders: &[&PortHolder],
    note: &str,
) -> Outcome {
    let names: Vec<String> = holders.iter().map(|h| describe_holder(h)).collect();
    let outcome = Outcome::fail(format!("{addr} is taken by {}{note}", names.join(" and ")));
    if holders.iter().all(|h| h.pid.is_none()) {
        // Another user's process: its PID is not visible without privileges.
        return outcome.with_hint(format!(
            "find it with `sudo ss -ltnp 'sport = :{}'` and stop it yourself, or pick another \
             server.port in {} (or WARDEN_PORT); warden never signals a process it did not start",
            addr.port(),
            ctx.home.config_file().display()
        ));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::preflight::Status;
    use crate::ops::preflight::builtin::test_context as ctx_for;

    #[test]
    fn port_zero_passes_and_holders_are_described_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("warden.toml"), "[server]\nport = 0\n").unwrap();
        let outcome = check_port(&ctx_for(dir.path()));
        assert_eq!(outcome.status, Status::Pass, "{outcome:?}");
        let holder = PortHolder {
            pid: Some(42),
            command: Some("x".repeat(300)),
            inode: 1,
            uid: Some(1000),
        };
        let text = describe_holder(&holder);
        assert!(
            text.starts_with("PID 42 (xxx") && text.ends_with("…)"),
            "{text}"
        );
        assert!(text.chars().count() < 140, "{text}");
    }

    #[test]
    fn a_listener_of_this_process_is_named_as_the_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("warden.toml"),
            format!("[server]\nport = {port}\n"),
        )
        .unwrap();
        let outcome = check_port(&ctx_for(dir.path()));
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(
            outcome
                .message
                .contains(&format!("PID {}", std::process::id())),
            "{outcome:?}"
        );
    }
}
