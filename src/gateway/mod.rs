//! The gateway: the OpenAI-compatible HTTP server the `proxy` binary runs.
//!
//! [`run`] takes an already-bound listener and a shutdown future (the mini-redis
//! shape), so tests bind port 0 and stop it cleanly, and a restarting daemon can
//! hand over a listening socket. The router is assembled from small layers, each
//! with one job: [`observe`] (metrics and the access log), [`admission`] (bearer
//! or `x-api-key` auth and the concurrency limit), then the handlers.
//!
//! The gateway owns the prompt cache ([`PromptStore`]): [`run`] warms it in the
//! background when the upstream uses prompts, so readiness never waits for a
//! network fetch.

mod admission;
pub(crate) mod body_budget;
mod body_end;
mod chat;
pub mod connections;
mod cors;
pub(crate) mod dispatch;
pub(crate) mod history;
mod http1;
mod malformed;
mod messages;
pub(crate) mod nats;
mod observe;
mod passthrough;
pub mod reload;
mod responses;
pub mod serve;
mod status;
mod ui;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::metrics::Metrics;
use crate::api::openai::ApiError;
use crate::home::config::Config;
use crate::prompts::{PromptStore, prompts_in_use};
use crate::upstream::Router as UpstreamRouter;

/// Everything the handlers share. Read-mostly; counters are atomics.
pub struct Gateway {
    /// The configuration the proxy started with: what a reload cannot change
    /// (address, NATS, connection limits, the routes) is read from here.
    pub config: Config,
    /// What a reload replaces (SIGHUP, `daemon reload`): a request takes the
    /// current one once, at its start, and keeps it to its end.
    live: std::sync::RwLock<Arc<Live>>,
    /// What reloads replaced, while requests still hold it: at shutdown their
    /// agent CLI processes are killed too.
    retired: std::sync::Mutex<Vec<std::sync::Weak<Live>>>,
    pub metrics: Arc<Metrics>,
    /// The prompt cache: `instructions` for a Responses upstream and `/v1/responses`.
    pub prompts: PromptStore,
    /// Whether prompts are sent upstream at all (see [`prompts_in_use`]).
    uses_prompts: bool,
    /// Client keys, their limits and the usage ledger.
    pub keys: Arc<crate::keys::Keys>,
    /// Request bodies held in memory, all connections together (`server.max_body_memory`).
    pub(crate) body_budget: body_budget::BodyBudget,
    ready: AtomicBool,
    /// Set when the drain begins: responses then ask clients to close the connection.
    draining: AtomicBool,
    /// The NATS ingress's connection state and in-flight count (`/health`).
    pub nats: nats::NatsStatus,
    /// The same readiness, for tasks that wait on changes (systemd notification).
    ready_watch: tokio::sync::watch::Sender<bool>,
    /// The last minutes of request figures, for the status page (`GET /ui`).
    pub history: history::History,
    /// Traces (`[telemetry]`); `None` when off, and then no span is ever made.
    /// A reload replaces it: a request takes the current one once, at its
    /// start, and its spans end on that one (see [`Gateway::telemetry`]).
    telemetry: std::sync::RwLock<Option<Arc<crate::telemetry::Telemetry>>>,
    /// Server tools run over NATS (`[tools]`); `None` when none is declared.
    pub tools: Option<Arc<crate::tools::Tools>>,
}

/// The part of the gateway a reload replaces as a whole: the configuration
/// requests are served with, the providers (routing, aliases, keys) and the
/// limits. A request holds the `Arc` it started with, so a reload never
/// changes a request in flight.
pub struct Live {
    /// The configuration as last (re)loaded.
    pub config: Config,
    /// Where requests go: the providers, chosen by model, with failover.
    pub router: UpstreamRouter,
    /// One permit per upstream call allowed in flight (`server.max_concurrent`).
    slots: Arc<Semaphore>,
    auth_token: Option<String>,
    /// The model catalog's refresh task, stopped when this is replaced.
    catalog: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Live {
    fn build(
        config: Config,
        metrics: &Arc<Metrics>,
        prompts: &PromptStore,
        slots: Option<Arc<Semaphore>>,
    ) -> Result<Live, crate::upstream::UpstreamError> {
        let router = UpstreamRouter::from_config(&config, metrics.clone(), prompts.clone())?;
        Ok(Live {
            router,
            slots: slots.unwrap_or_else(|| Arc::new(Semaphore::new(config.server.max_concurrent))),
            auth_token: config.auth_token(),
            catalog: std::sync::Mutex::new(None),
            config,
        })
    }

    /// Loads the model catalog's cache and starts its refresh task, when a
    /// provider discovers its models. Needs the Tokio runtime.
    fn start_catalog(&self) {
        if let Some(catalog) = self.router.catalog(&self.config) {
            // Models of providers with `models = []`: from cache/models.json now,
            // then from their GET /models in the background (readiness does not wait).
            catalog.load_cache();
            let task = tokio::spawn(catalog.run());
            *self.catalog.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        }
    }

    fn stop_catalog(&self) {
        if let Some(task) = self
            .catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Why a gateway could not be built (the proxy then does not start).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error(transparent)]
    Keys(#[from] crate::keys::file::KeyFileError),
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Gateway>, BuildError> {
        let metrics = Arc::new(Metrics::new());
        let keys = crate::keys::Keys::load(&config)?;
        let prompts = PromptStore::new(&config.home, &config.prompts);
        let live = Live::build(config.clone(), &metrics, &prompts, None)?;
        let telemetry = crate::telemetry::Telemetry::from_config(&config.telemetry, &metrics)
            .map_err(|e| crate::upstream::UpstreamError::Telemetry(e.to_string()))?;
        Ok(Arc::new(Gateway {
            tools: crate::tools::Tools::from_config(&config, metrics.clone()),
            telemetry: std::sync::RwLock::new(telemetry),
            uses_prompts: prompts_in_use(&config),
            prompts,
            live: std::sync::RwLock::new(Arc::new(live)),
            retired: std::sync::Mutex::new(Vec::new()),
            keys,
            body_budget: body_budget::BodyBudget::new(config.server.max_body_memory),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ready_watch: tokio::sync::watch::Sender::new(false),
            nats: nats::NatsStatus::new(config.nats.enabled()),
            history: history::History::new(),
            metrics,
            config,
        }))
    }

    /// What new requests are served with now (see [`Live`]).
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The tracer new requests use now (`None`: traces are off). A request
    /// calls this once; the spans it starts keep their tracer alive to their
    /// end, so a reload never moves a span in flight to another exporter.
    pub fn telemetry(&self) -> Option<Arc<crate::telemetry::Telemetry>> {
        self.telemetry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `next` in place for new requests (its export task started first);
    /// returns what it replaced. The old tracer's export task sends what is
    /// still queued and ends once its last span has ended: nobody waits for it.
    fn swap_telemetry(
        &self,
        next: Option<Arc<crate::telemetry::Telemetry>>,
    ) -> Option<Arc<crate::telemetry::Telemetry>> {
        if let Some(telemetry) = &next {
            telemetry.spawn_exporter();
        }
        let mut slot = self
            .telemetry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *slot, next)
    }

    /// Puts `next` in place for new requests; returns what it replaced.
    fn swap_live(&self, next: Arc<Live>) -> Arc<Live> {
        let mut slot = self
            .live
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = std::mem::replace(&mut *slot, next);
        let mut retired = self
            .retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        retired.retain(|weak| weak.strong_count() > 0);
        retired.push(Arc::downgrade(&old));
        old
    }

    /// Kills every agent CLI process still running, of the current providers
    /// and of those a reload replaced; returns how many there were.
    fn kill_processes(&self) -> usize {
        let retired: Vec<Arc<Live>> = self
            .retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        self.live().router.kill_processes()
            + retired
                .iter()
                .map(|live| live.router.kill_processes())
                .sum::<usize>()
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

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the upstream uses prompts, so `/health` and `/metrics` report them.
    pub fn uses_prompts(&self) -> bool {
        self.uses_prompts
    }
}

/// The complete router for a gateway.
pub fn router(gw: Arc<Gateway>) -> Router {
    let mut api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/embeddings", post(chat::embeddings))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/models", get(chat::models))
        .route("/v1/models/{*id}", get(chat::model))
        // Every other /v1/ path: to providers with passthrough = true.
        .route("/v1/{*rest}", any(passthrough::passthrough));
    if gw.config.features.enable_responses_api {
        api = api.route("/v1/responses", post(responses::responses));
    } else {
        api = api.route("/v1/responses", post(responses_disabled));
    }
    let api = api.route_layer(admission::AuthLayer {
        gw: gw.clone(),
        anthropic: false,
    });
    // The Anthropic Messages API: its clients send the token as `x-api-key`.
    let anthropic = Router::new()
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route_layer(admission::AuthLayer {
            gw: gw.clone(),
            anthropic: true,
        });
    let mut router = Router::new()
        .merge(api)
        .merge(anthropic)
        .route("/health", get(status::health))
        .route("/health/live", get(status::live))
        .route("/health/ready", get(status::ready))
        .route("/metrics", get(status::metrics));
    if gw.config.server.ui {
        // The status page; open like /health (it shows what /health shows).
        router = router
            .route("/ui", get(ui::page))
            .route("/ui/history.json", get(ui::history))
            .route("/ui/usage.json", get(ui::usage));
    }
    router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(gw.config.server.max_body_bytes));
    if !gw.config.server.cors_origins.is_empty() {
        // Inside the observing layer (preflights are counted and get a request
        // id), outside authentication (browsers send no credentials on one).
        router = router.layer(axum::middleware::from_fn_with_state(gw.clone(), cors::cors));
    }
    router
        .layer(observe::ObserveLayer(gw.clone()))
        .with_state(gw)
}

async fn responses_disabled() -> ApiError {
    ApiError::not_found(
        "POST /v1/responses is not enabled; set features.enable_responses_api = true in warden.toml \
         (or WARDEN_ENABLE_RESPONSES_API=1)",
    )
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

/// How long, after the listener closes, connections get to finish on their own
/// (every response now carries `Connection: close`) before idle keep-alive
/// connections are closed by the server. Closing an idle connection is what can
/// race with a client that is just sending its next request on it; lingering
/// first lets busy clients move to the new process during a restart.
const LINGER: Duration = Duration::from_secs(2);

/// At shutdown, how long the last spans may take to reach the collector.
const TELEMETRY_FLUSH: Duration = Duration::from_secs(3);

/// The most bytes of one request head (request line and headers); beyond: 431.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves until `shutdown` completes, then drains: readiness off, stop
/// accepting, `Connection: close` on every response, a short linger, then close
/// idle connections and wait for in-flight requests, all within
/// `server.graceful_timeout`.
pub async fn run(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioExecutor;
    use hyper_util::server::conn::auto::Builder;

    let addr = listener.local_addr()?;
    let app = router(gw.clone());
    let fd_limit = connections::raise_fd_limit();
    let limits = connections::Limits::new(&gw, fd_limit);
    let registry = connections::Registry::new(gw.metrics.clone());
    // HTTP/2 (a connection that opens with its preface).
    let builder = Builder::new(TokioExecutor::new());
    let shared = Arc::new(connections::Shared {
        router: app,
        gw: gw.clone(),
        builder,
        fd_limit,
        registry: registry.clone(),
    });
    // `registry.drain()` tells each connection to finish; `tasks` says when they have.
    let tasks = tokio_util::task::TaskTracker::new();
    if gw.uses_prompts() {
        // Loads the disk cache and fetches what is missing or expired, in the
        // background: readiness does not wait for the network.
        let prompts = gw.prompts.clone();
        tokio::spawn(async move { prompts.warm().await });
    }
    gw.live().start_catalog();
    if let Some(telemetry) = gw.telemetry() {
        // Exports run on this runtime, off the request path.
        telemetry.spawn_exporter();
    }
    // Off (no network at all) unless nats.url is set; connects in the background.
    let nats_ingress = nats::start(&gw);
    // Server tools: their own NATS connection, in the background (none declared: nothing).
    if let Some(tools) = &gw.tools {
        tools.start();
    }
    // keys.toml: a key created, revoked or rotated is in force within a second.
    crate::keys::Keys::watch(&gw.keys);
    if gw.config.server.ui {
        history::spawn_sampler(Arc::downgrade(&gw));
    }
    gw.set_ready(true);
    tracing::info!(
        version = crate::VERSION,
        address = %addr,
        providers = %gw.live().router.summary(),
        pid = std::process::id(),
        fd_limit = fd_limit.unwrap_or(0),
        max_connections = limits.max_connections,
        "warden proxy started"
    );
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Past max_connections the longest-idle connection makes room; when
        // every one is busy the newcomer is closed at once.
        // As last (re)loaded.
        let Some(state) = registry.admit(shared.limits().max_connections) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connections::serve(stream, state, shared.clone()));
    }
    drop(listener);
    tasks.close();
    // As last (re)loaded: a reload changes it too.
    let graceful_timeout = Duration::from_secs(gw.live().config.server.graceful_timeout);
    if let Some(ingress) = &nats_ingress {
        ingress.stop_taking();
    }
    gw.set_ready(false);
    gw.draining.store(true, Ordering::Release);
    tracing::info!(
        in_flight = gw.metrics.stats.in_flight.load(Ordering::Relaxed),
        connections = registry.open(),
        graceful_timeout_secs = graceful_timeout.as_secs(),
        "shutdown requested: readiness off, no longer accepting, draining in-flight requests"
    );
    let drained = async {
        // Connections that close on their own within the linger end it early.
        let _ = tokio::time::timeout(LINGER.min(graceful_timeout), tasks.wait()).await;
        // HTTP connections and NATS requests drain side by side.
        let nats = async {
            if let Some(ingress) = nats_ingress {
                ingress.drain().await;
            }
        };
        registry.drain();
        tokio::join!(tasks.wait(), nats);
    };
    if tokio::time::timeout(graceful_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = gw.metrics.stats.in_flight.load(Ordering::Relaxed),
            "graceful_timeout reached: closing the remaining connections"
        );
    }
    let killed = gw.kill_processes();
    if killed > 0 {
        tracing::warn!(
            processes = killed,
            "agent CLI processes still running after the drain were killed"
        );
    }
    // Every answered request's ledger row is on disk before the process goes.
    let keys = gw.keys.clone();
    let flushed = tokio::task::spawn_blocking(move || keys.flush(Duration::from_secs(10)))
        .await
        .unwrap_or(false);
    if !flushed {
        tracing::error!(
            path = %gw.keys.ledger_path().display(),
            "usage ledger: rows still waiting at exit could not be written"
        );
    }
    if let Some(telemetry) = gw.telemetry() {
        // The spans of the last requests, if the collector takes them quickly.
        telemetry.flush(TELEMETRY_FLUSH).await;
    }
    tracing::info!(
        requests = gw.metrics.stats.total.load(Ordering::Relaxed),
        uptime_secs = gw.metrics.uptime().as_secs_f64(),
        "warden proxy stopped"
    );
    Ok(())
}
