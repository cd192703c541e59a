//! Running the gateway as a process: logging, binding (or adopting an inherited
//! socket), signals, and the start/stop markers. The `proxy` binary is a thin
//! wrapper around [`serve_foreground`].

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::gateway::{self, Gateway};
use crate::home::LogKind;

/// Serves until SIGTERM/SIGINT and returns after the drain. Errors are
/// sentences for the operator.
pub async fn serve_foreground(config: Config) -> Result<(), String> {
    let _log_guard = crate::logging::init(
        &config.home,
        LogKind::Proxy,
        config.logs.format,
        config.features.verbose,
    )
    .map_err(|e| format!("cannot open the log: {e}"))?;
    let addr = config.listen_addr().map_err(|e| e.to_string())?;
    let listener = bind(addr).await?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let gw = Gateway::new(config).map_err(|e| {
        tracing::error!(error = %e, "cannot start");
        e
    })?;
    // Signal handlers go in before anyone learns the address: a SIGTERM right after the
    // "listening on" line must drain and exit 0, not kill the process outright.
    let signal = shutdown_signal();
    // One machine-readable line on stdout, so callers that asked for port 0 learn the port.
    println!(
        "listening on {}",
        crate::config::base_url_for(&local.ip().to_string(), local.port())
    );
    // systemd (Type=notify): READY=1 once ready, WATCHDOG=1 pings while ready, and
    // STOPPING=1 as the drain begins. No-ops without $NOTIFY_SOCKET.
    tokio::spawn(crate::systemd::supervise(gw.watch_ready()));
    let shutdown = async {
        signal.await;
        crate::systemd::notify_stopping();
    };
    let result = gateway::run(listener, gw, shutdown).await;
    result.map_err(|e| format!("server error: {e}"))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another process holds it: `preflight --only port` names it, or choose another with --port"
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
