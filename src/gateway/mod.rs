//! The gateway: the OpenAI-compatible HTTP server the `proxy` binary runs.
//!
//! [`run`] takes an already-bound listener and a shutdown future (the mini-redis
//! shape), so tests bind port 0 and stop it cleanly, and a restarting daemon can
//! hand over a listening socket. The router is assembled from small layers, each
//! with one job: [`observe`] (metrics and the access log), [`admission`] (bearer
//! auth and the concurrency limit), then the handlers.

mod admission;
mod chat;
mod observe;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::openai::ApiError;
use crate::upstream::Upstream;

/// Everything the handlers share. Read-mostly; counters are atomics.
pub struct Gateway {
    pub config: Config,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// One permit per upstream call allowed in flight (`server.max_concurrent`).
    slots: Arc<Semaphore>,
    auth_token: Option<String>,
    ready: AtomicBool,
    /// The same readiness, for tasks that wait on changes (systemd notification).
    ready_watch: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Gateway>, String> {
        let metrics = Arc::new(Metrics::new());
        let upstream = Upstream::from_config(&config, metrics.clone())?;
        Ok(Arc::new(Gateway {
            slots: Arc::new(Semaphore::new(config.server.max_concurrent)),
            auth_token: config.auth_token(),
            ready: AtomicBool::new(false),
            ready_watch: tokio::sync::watch::Sender::new(false),
            upstream,
            metrics,
            config,
        }))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.ready_watch.send_replace(ready);
    }

    /// Follows readiness: what `/health/ready` answers, as it changes.
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready_watch.subscribe()
    }
}

/// The complete router for a gateway.
pub fn router(gw: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(chat::models))
        .route_layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            admission::require_bearer,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(status::health))
        .route("/health/live", get(status::live))
        .route("/health/ready", get(status::ready))
        .route("/metrics", get(status::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(gw.config.server.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            observe::observe,
        ))
        .with_state(gw)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {}; see GET /v1/models, POST /v1/chat/completions",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{method} is not allowed on {}", uri.path()),
    )
    .code("method_not_allowed")
}

/// Serves until `shutdown` completes, then stops accepting, drains in-flight
/// requests for at most `server.graceful_timeout`, and returns.
pub async fn run(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let graceful = Duration::from_secs(gw.config.server.graceful_timeout);
    let draining = Arc::new(tokio::sync::Notify::new());
    let app = router(gw.clone());
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let signal = {
        let gw = gw.clone();
        let draining = draining.clone();
        async move {
            shutdown.await;
            gw.set_ready(false);
            tracing::info!(
                in_flight = gw.metrics.stats.in_flight.load(Ordering::Relaxed),
                graceful_timeout_secs = graceful.as_secs(),
                "shutdown requested: readiness off, no longer accepting, draining in-flight requests"
            );
            draining.notify_one();
        }
    };
    gw.set_ready(true);
    tracing::info!(
        version = crate::VERSION,
        address = %addr,
        upstream = %gw.config.upstream.url,
        api = gw.config.upstream.api.as_str(),
        pid = std::process::id(),
        "warden proxy started"
    );
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let deadline = async {
        draining.notified().await;
        tokio::time::sleep(graceful).await;
    };
    tokio::select! {
        result = server => result?,
        () = deadline => {
            tracing::warn!(
                in_flight = gw.metrics.stats.in_flight.load(Ordering::Relaxed),
                "graceful_timeout reached: closing the remaining connections"
            );
        }
    }
    tracing::info!(
        requests = gw.metrics.stats.total.load(Ordering::Relaxed),
        uptime_secs = gw.metrics.uptime().as_secs_f64(),
        "warden proxy stopped"
    );
    Ok(())
}
