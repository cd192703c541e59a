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
    // One machine-readable line on stdout, so callers that asked for port 0 learn the port.
    println!(
        "listening on {}",
        crate::config::base_url_for(&local.ip().to_string(), local.port())
    );
    let result = gateway::run(listener, gw, shutdown_signal()).await;
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

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
