//! Running the gateway as a process: logging, binding (or adopting an inherited
//! socket), signals, and the start/stop markers. The `proxy` binary is a thin
//! wrapper around [`serve_foreground`].

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tokio::net::TcpListener;

use crate::gateway::{self, Gateway};
use crate::home::LogKind;
use crate::home::config::Config;
use crate::lifecycle::handoff;
use crate::lifecycle::pidfile::{self, PidRecord};

/// Serves until SIGTERM/SIGINT and returns after the drain. Errors are
/// sentences for the operator.
///
/// Start-up order matters: the port is bound (or inherited) first, so a busy
/// port fails fast; then `run/proxy.pid` is locked, so two proxies of one home
/// can never both serve. A successor started by `daemon restart` instead takes
/// the PID file over from its predecessor once it is about to serve.
pub async fn serve_foreground(config: Config) -> Result<(), String> {
    let _log_guard = crate::support::logging::init(
        &config.home,
        LogKind::Proxy,
        config.logs.format,
        config.logs.target,
        config.features.verbose,
    )
    .map_err(|e| format!("cannot open the log: {e}"))?;
    let fail = |message: String| {
        tracing::error!("{message}");
        message
    };
    let home = config.home.clone();
    home.ensure_dirs().map_err(|e| fail(e.to_string()))?;
    let takeover = std::env::var_os(handoff::HANDOFF_VAR).is_some();
    let listener = match handoff::inherited_listener().map_err(|e| fail(e.to_string()))? {
        Some(std_listener) => TcpListener::from_std(std_listener)
            .map_err(|e| fail(format!("cannot adopt the inherited socket: {e}")))?,
        None => bind(config.listen_addr().map_err(|e| e.to_string())?).await?,
    };
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let pid_path = home.proxy_pid_file();
    let record = PidRecord::for_current_process(home.root(), Some(local.port())).map_err(|e| {
        fail(format!(
            "cannot describe this process for {}: {e}",
            pid_path.display()
        ))
    })?;
    let mut pid_guard = if takeover {
        None
    } else {
        Some(pidfile::acquire(&pid_path, &record).map_err(|e| fail(e.to_string()))?)
    };
    let gw = Gateway::new(config).map_err(fail)?;
    // The control socket is a convenience for restarts: without it (say, a home
    // path too long for a Unix socket) the proxy still serves.
    let _control = handoff::serve_control(&home, listener.as_raw_fd())
        .map_err(|e| tracing::warn!(error = %e, "no control socket: `daemon restart` will stop, then start"))
        .ok();
    if takeover {
        pid_guard = Some(
            pidfile::replace(&pid_path, &record)
                .map_err(|e| fail(format!("cannot take over {}: {e}", pid_path.display())))?,
        );
    }
    // Signal handlers go in before anyone learns the address: a SIGTERM right after the
    // "listening on" line must drain and exit 0, not kill the process outright.
    let signal = shutdown_signal();
    // One machine-readable line on stdout, so callers that asked for port 0 learn the port.
    println!(
        "listening on {}",
        crate::home::config::base_url_for(&local.ip().to_string(), local.port())
    );
    // systemd (Type=notify): READY=1 once ready, WATCHDOG=1 pings while ready, and
    // STOPPING=1 as the drain begins. No-ops without $NOTIFY_SOCKET.
    tokio::spawn(crate::lifecycle::systemd::supervise(gw.watch_ready()));
    let shutdown = async {
        signal.await;
        crate::lifecycle::systemd::notify_stopping();
    };
    let result = gateway::run(listener, gw, shutdown).await;
    drop(pid_guard);
    result.map_err(|e| format!("server error: {e}"))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another process holds it: `preflight --only port` names it; pick another port with server.port in warden.toml, WARDEN_PORT or --port"
        } else {
            ""
        };
        let message = format!("cannot listen on {addr}: {e}{hint}");
        tracing::error!("{message}");
        message
    })
}

/// Completes on the first SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled, so no signal slips through in between.
/// Must be called within the Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
