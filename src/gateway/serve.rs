//! Running the gateway as a process: logging, binding (or adopting an inherited
//! socket), signals, and the start/stop markers. The `proxy` binary is a thin
//! wrapper around [`serve_foreground`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use crate::gateway::{self, Gateway};
use crate::home::LogKind;
use crate::home::config::{Config, ConfigError};
use crate::lifecycle::handoff;
use crate::lifecycle::pidfile::{self, PidFileError, PidRecord};
use crate::upstream::UpstreamError;

/// Why the proxy could not start or stopped serving. Each names what failed and
/// where (address, path), and keeps the underlying error as its source.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the log under {}: {source}", dir.display())]
    Log { dir: PathBuf, source: io::Error },
    #[error("cannot create the home's folders under {}: {source}", root.display())]
    HomeDirs { root: PathBuf, source: io::Error },
    /// `WARDEN_LISTEN_FD` or systemd's `LISTEN_FDS` named no usable socket.
    #[error("{source}")]
    Inherited { source: io::Error },
    #[error("cannot adopt the inherited socket: {source}")]
    Adopt { source: io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source))]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot read the address of the listening socket: {source}")]
    LocalAddr { source: io::Error },
    #[error("cannot describe this process for {}: {source}", path.display())]
    Describe { path: PathBuf, source: io::Error },
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error("cannot take over {}: {source}", path.display())]
    TakeOver { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("server error: {source}")]
    Server { source: io::Error },
}

fn bind_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::AddrInUse {
        "; another process holds it: `preflight --only port` names it (warden never stops a program it did not start); pick another port: server.port in warden.toml, WARDEN_PORT, `daemon start --port P` or `proxy --port P`"
    } else {
        ""
    }
}

/// Serves until SIGTERM/SIGINT and returns after the drain. An error is also
/// written to the log, once.
///
/// Start-up order matters: the port is bound (or inherited) first, so a busy
/// port fails fast; then `run/proxy.pid` is locked, so two proxies of one home
/// can never both serve. A successor started by `daemon restart` instead takes
/// the PID file over from its predecessor once it is about to serve.
pub async fn serve_foreground(
    config: Config,
    overrides: crate::home::config::Overrides,
) -> Result<(), ServeError> {
    let _log_guard = crate::support::logging::init(
        &config.home,
        LogKind::Proxy,
        config.logs.format,
        config.logs.target,
        config.features.verbose,
    )
    .map_err(|source| ServeError::Log {
        dir: config.home.logs_dir(),
        source,
    })?;
    let result = serve_logged(config, overrides).await;
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    result
}

async fn serve_logged(
    config: Config,
    overrides: crate::home::config::Overrides,
) -> Result<(), ServeError> {
    let home = config.home.clone();
    home.ensure_dirs().map_err(|source| ServeError::HomeDirs {
        root: home.root().to_path_buf(),
        source,
    })?;
    let takeover = std::env::var_os(handoff::HANDOFF_VAR).is_some();
    let listener =
        match handoff::inherited_listener().map_err(|source| ServeError::Inherited { source })? {
            Some(std_listener) => TcpListener::from_std(std_listener)
                .map_err(|source| ServeError::Adopt { source })?,
            None => {
                let addr = config.listen_addr()?;
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?
            }
        };
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::LocalAddr { source })?;
    let pid_path = home.proxy_pid_file();
    let record =
        PidRecord::for_current_process(home.root(), Some(local.port())).map_err(|source| {
            ServeError::Describe {
                path: pid_path.clone(),
                source,
            }
        })?;
    let pid_guard = Arc::new(Mutex::new(if takeover {
        None
    } else {
        Some(pidfile::acquire(&pid_path, &record)?)
    }));
    let stopping = Arc::new(AtomicBool::new(false));
    let gw = Gateway::new(config)?;
    let reloader = gateway::reload::Reloader::new(gw.clone(), overrides);
    // The control socket is a convenience for restarts: without it (say, a home
    // path too long for a Unix socket) the proxy still serves.
    let reclaim = reclaimer(
        pid_guard.clone(),
        stopping.clone(),
        pid_path.clone(),
        record.clone(),
    );
    let reload: handoff::Reload = {
        let reloader = reloader.clone();
        Arc::new(move || {
            let outcome = reloader.reload("daemon reload");
            (outcome.code(), outcome.message())
        })
    };
    let requests = handoff::Requests { reclaim, reload };
    let _control = handoff::serve_control(&home, listener.as_raw_fd(), requests)
        .map_err(|e| tracing::warn!(error = %e, "no control socket: `daemon restart` will stop, then start"))
        .ok();
    if takeover {
        let guard =
            pidfile::replace(&pid_path, &record).map_err(|source| ServeError::TakeOver {
                path: pid_path.clone(),
                source,
            })?;
        *lock_guard(&pid_guard) = Some(guard);
        #[cfg(debug_assertions)]
        crate::support::test_hooks::hold_after_pid_file().await;
    }
    // Signal handlers go in before anyone learns the address: a SIGTERM right after the
    // "listening on" line must drain and exit 0, not kill the process outright.
    let signal = shutdown_signal();
    // SIGHUP (`kill -HUP`, `systemctl reload`) reloads the configuration.
    reload_on_sighup(reloader);
    // One machine-readable line on stdout, so callers that asked for port 0 learn the port.
    println!(
        "listening on {}",
        crate::home::config::base_url_for(&local.ip().to_string(), local.port())
    );
    // systemd (Type=notify): READY=1 once ready, WATCHDOG=1 pings while ready, and
    // STOPPING=1 as the drain begins. No-ops without $NOTIFY_SOCKET.
    tokio::spawn(crate::lifecycle::systemd::supervise(gw.watch_ready()));
    let shutdown = async move {
        signal.await;
        stopping.store(true, Ordering::Release);
        crate::lifecycle::systemd::notify_stopping();
    };
    let result = gateway::run(listener, gw, shutdown).await;
    drop(lock_guard(&pid_guard).take());
    result.map_err(|source| ServeError::Server { source })
}

type PidSlot = Arc<Mutex<Option<pidfile::PidFileGuard>>>;

fn lock_guard(slot: &PidSlot) -> std::sync::MutexGuard<'_, Option<pidfile::PidFileGuard>> {
    // A panic while holding it cannot leave the guard half-changed: take it as is.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the control socket's "take your PID file back" does: after a restart
/// whose successor died once it had taken `run/proxy.pid`, this (old, still
/// serving) proxy locks the file again, so it stays visible and stoppable. Refused
/// while a live process holds the file, and once this proxy is shutting down.
fn reclaimer(
    slot: PidSlot,
    stopping: Arc<AtomicBool>,
    path: PathBuf,
    record: PidRecord,
) -> handoff::Reclaim {
    Arc::new(move || {
        if stopping.load(Ordering::Acquire) {
            return Err(handoff::ReclaimError::ShuttingDown);
        }
        let mut guard = lock_guard(&slot);
        if guard.as_ref().is_some_and(|g| g.is_current()) {
            return Ok(format!(
                "PID {} already holds {}",
                record.pid,
                path.display()
            ));
        }
        let new = pidfile::acquire(&path, &record)?;
        // The old guard's file was replaced by the successor's: dropping it leaves
        // the new file alone.
        drop(guard.replace(new));
        tracing::warn!(path = %path.display(), "took the PID file back: the successor of a restart died");
        Ok(format!("PID {} holds {} again", record.pid, path.display()))
    })
}

/// Installs the SIGHUP handler now (a SIGHUP no longer ends the process) and
/// reloads on each one, logging the outcome.
fn reload_on_sighup(reloader: Arc<gateway::reload::Reloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP: reload with `daemon reload`");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload("SIGHUP")).await;
        }
    });
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
