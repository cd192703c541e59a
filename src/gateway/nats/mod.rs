//! The NATS ingress (docs/contract.md §13): the same gateway, reached over NATS instead of
//! HTTP, so proxies on many hosts can share one stream of requests.
//!
//! Why NATS, and why this shape:
//! - **Distribution is NATS's job.** Every proxy subscribes in one queue group
//!   (`nats.queue`); the server hands each request to one of them. warden adds
//!   no coordinator of its own.
//! - **A NATS service** (`async-nats`'s `service` API): `SUBJECT.chat`,
//!   `SUBJECT.embeddings` and `SUBJECT.models` are endpoints of the service `warden`, so `$SRV.PING`,
//!   `$SRV.INFO` and `$SRV.STATS` discover and describe every proxy, as for any
//!   NATS micro-service. Replies are published by warden itself (the service's
//!   `respond` cannot send headers with a body), so the service's own
//!   `num_requests` stays 0; the `data` object of `$SRV.STATS` carries warden's
//!   counts.
//! - **Backpressure, never a queue.** At most `nats.max_concurrent` requests are
//!   handled at once; one more gets an immediate error reply with code 429 (the
//!   client retries or another proxy answers), as the HTTP ingress does. In
//!   JetStream mode the proxy only pulls a job when it has room, and the durable
//!   consumer's `max_ack_pending` bounds what the cluster hands out.
//! - **One dispatch path.** A request goes through [`super::dispatch`]: the
//!   same parsing, admission (`server.max_concurrent`), routing, metrics and
//!   access log as HTTP; this module only translates replies ([`reply`]).
//! - **The connection is never given up**: reconnects retry forever with
//!   backoff; `/health` shows `nats.state`, and readiness does not depend on it
//!   (HTTP keeps serving while NATS is away; `/health` then says `warn`).
//!
//! - **Two connections, so that stopping loses (almost) nothing.** One *listens*
//!   (the service, its endpoint subscriptions, discovery); the other *works*
//!   (replies, JetStream pulls and acks). To stop, the listening connection is
//!   drained: the unsubscribes go out and the requests that already arrived are
//!   still delivered and answered. A plain unsubscribe (what a service endpoint's
//!   `stop` does) drops them: about 2.5 requests per `daemon restart` under load,
//!   each a client waiting out its timeout. A drained connection closes once the
//!   drain is done, which is why the replies go out on the other one. One window
//!   remains, in async-nats 0.46: a drained subscription is removed at the
//!   connection's next poll after the unsubscribe is sent, not at the server's
//!   PONG, so a request the server routed during that round trip is still
//!   dropped (1 in 23 restarts measured, against 52 in 20 before).
//!
//! [`start`] connects in the background; [`NatsIngress::drain`] stops taking
//! requests, answers those already taken, then closes both connections.

mod jobs;
mod reply;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::service::ServiceExt;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};

use super::Gateway;
use super::dispatch::{self, Ingress, Record};
use crate::api::metrics::{Metrics, Rejection};
use crate::api::openai::ApiError;

/// The HTTP route a NATS endpoint stands for, in logs and metrics.
const CHAT_ROUTE: &str = "/v1/chat/completions";
const EMBEDDINGS_ROUTE: &str = "/v1/embeddings";
const MODELS_ROUTE: &str = "/v1/models";

/// Connection state as `/health` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NatsState {
    Off = 0,
    Connected = 1,
    Reconnecting = 2,
    Disconnected = 3,
}

impl NatsState {
    pub fn as_str(self) -> &'static str {
        match self {
            NatsState::Off => "off",
            NatsState::Connected => "connected",
            NatsState::Reconnecting => "reconnecting",
            NatsState::Disconnected => "disconnected",
        }
    }
}

/// What `/health` and `/metrics` read about the NATS ingress (atomics only).
pub struct NatsStatus {
    state: AtomicU8,
    in_flight: AtomicU64,
    /// The server has this proxy's endpoint subscriptions (added, then flushed):
    /// a restart stops the old proxy only once its successor is here.
    subscribed: AtomicBool,
}

impl NatsStatus {
    pub fn new(enabled: bool) -> NatsStatus {
        let state = if enabled {
            NatsState::Disconnected
        } else {
            NatsState::Off
        };
        NatsStatus {
            state: AtomicU8::new(state as u8),
            in_flight: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> NatsState {
        match self.state.load(Ordering::Relaxed) {
            1 => NatsState::Connected,
            2 => NatsState::Reconnecting,
            3 => NatsState::Disconnected,
            _ => NatsState::Off,
        }
    }

    fn set_state(&self, state: NatsState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }
}

/// One NATS request being handled: holds a `nats.max_concurrent` permit and
/// keeps the in-flight figures right until dropped.
struct InFlight {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gw: Arc<Gateway>,
}

impl InFlight {
    /// Takes a permit now, or `None` at the cap.
    fn try_take(gw: &Arc<Gateway>, permits: &Arc<Semaphore>) -> Option<InFlight> {
        let permit = permits.clone().try_acquire_owned().ok()?;
        Some(InFlight::with(gw, permit))
    }

    fn with(gw: &Arc<Gateway>, permit: tokio::sync::OwnedSemaphorePermit) -> InFlight {
        gw.nats.in_flight.fetch_add(1, Ordering::Relaxed);
        gw.metrics.nats_in_flight(1);
        InFlight {
            _permit: permit,
            gw: gw.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gw.nats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.gw.metrics.nats_in_flight(-1);
    }
}

/// The 429 a NATS request gets beyond `nats.max_concurrent`.
fn nats_overloaded(limit: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        format!(
            "this proxy is handling its limit of {limit} NATS requests (nats.max_concurrent); \
             retry shortly"
        ),
    )
    .code("concurrency_limit")
    .retry_after(1)
}

/// The running ingress; [`NatsIngress::drain`] ends it.
pub struct NatsIngress {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the NATS ingress when `nats.url` is set (else `None`: no network at
/// all). Connecting happens in the background and is retried forever.
pub fn start(gw: &Arc<Gateway>) -> Option<NatsIngress> {
    if !gw.config.nats.enabled() {
        return None;
    }
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(gw.clone(), stopped));
    Some(NatsIngress { stop, task })
}

impl NatsIngress {
    /// Stops taking requests (service endpoints unsubscribed, no more pulls),
    /// waits for the requests in flight to be answered, then closes the
    /// connection. The caller bounds how long this may take.
    pub async fn drain(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops taking requests now, without waiting.
    pub fn stop_taking(&self) {
        let _ = self.stop.send(true);
    }
}

/// How long the last flush on shutdown may wait for the server.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a drain may take to deliver what already arrived and close the
/// listening connection (milliseconds when connected; the bound is for a
/// connection lost mid-drain).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnect delay: 100 ms doubling to at most 2 s, forever.
fn reconnect_delay(attempts: usize) -> Duration {
    let shift = attempts.min(5) as u32;
    Duration::from_millis(100u64 << shift).min(Duration::from_secs(2))
}

/// Why the NATS ingress could not start, or why pulling jobs stopped (then it is
/// retried). Each names the setting, stream or consumer concerned; an address is
/// shown with its password redacted.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read nats.credentials_file {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("nats.url {url:?} is not a NATS server address: {source}")]
    Address { url: String, source: std::io::Error },
    #[error("cannot start the NATS connection: {source}")]
    Connect { source: async_nats::ConnectError },
    #[error("stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// Neither created nor found: both reasons.
    #[error("consumer {consumer} on stream {stream}: {create}; {get}")]
    Consumer {
        consumer: &'static str,
        stream: String,
        create: async_nats::jetstream::stream::ConsumerError,
        get: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("pulling from consumer {consumer} on stream {stream}: {source}")]
    Pull {
        consumer: &'static str,
        stream: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Which of the proxy's two NATS connections (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The service and its subscriptions; its state is the one `/health` shows.
    Listens,
    /// Replies, and the JetStream consumer.
    Works,
}

async fn connect(gw: &Arc<Gateway>, role: Role) -> Result<async_nats::Client, NatsError> {
    let nats = &gw.config.nats;
    let name = match role {
        Role::Listens => format!("warden-proxy {}", crate::VERSION),
        Role::Works => format!("warden-proxy {} (replies)", crate::VERSION),
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(5));
    if let Some(token) = gw.config.nats_token() {
        options = options.token(token);
    } else if !nats.token_env.is_empty() && role == Role::Listens {
        tracing::warn!(
            variable = %nats.token_env,
            "nats.token_env names a variable that is not set: connecting without a token"
        );
    }
    if !nats.credentials_file.is_empty() {
        options = options
            .credentials_file(&nats.credentials_file)
            .await
            .map_err(|source| NatsError::Credentials {
                path: nats.credentials_file.clone(),
                source,
            })?;
    }
    // The listening connection is the one requests arrive on: its state is the
    // ingress's. The other one's losses show as failed replies, and are logged.
    let status = gw.clone();
    options = options.event_callback(move |event| {
        let gw = status.clone();
        async move {
            match role {
                Role::Listens => on_event(&gw.nats, &gw.metrics, event),
                Role::Works => tracing::debug!(event = %event, "NATS (replies connection)"),
            }
        }
    });
    let servers: Vec<async_nats::ServerAddr> = nats
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|source| NatsError::Address {
                    url: crate::support::redact::url(u),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    options
        .connect(servers.as_slice())
        .await
        .map_err(|source| NatsError::Connect { source })
}

fn on_event(status: &NatsStatus, metrics: &Metrics, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            if status.state() == NatsState::Reconnecting {
                metrics.nats_reconnected();
                tracing::info!("NATS connection is back");
            } else {
                tracing::info!("NATS connected");
            }
            status.set_state(NatsState::Connected);
            metrics.nats_connected(true);
        }
        async_nats::Event::Disconnected => {
            tracing::warn!("NATS connection lost: reconnecting (forever, with backoff)");
            status.set_state(NatsState::Reconnecting);
            metrics.nats_connected(false);
        }
        async_nats::Event::Closed => {
            status.set_state(NatsState::Disconnected);
            metrics.nats_connected(false);
        }
        other => tracing::warn!(event = %other, "NATS"),
    }
}

/// Connects, serves the service endpoints (and the JetStream consumer), and
/// drains when `stop` turns true.
async fn run(gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    let nats = gw.config.nats.clone();
    let (client, worker) = match (
        connect(&gw, Role::Listens).await,
        connect(&gw, Role::Works).await,
    ) {
        (Ok(client), Ok(worker)) => (client, worker),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("{e}; the NATS ingress is off, HTTP keeps serving");
            gw.nats.set_state(NatsState::Disconnected);
            return;
        }
    };
    tracing::info!(
        url = %crate::support::redact::url(&nats.url),
        subject = %nats.subject,
        queue = %nats.queue,
        max_concurrent = nats.max_concurrent,
        jetstream = nats.jetstream,
        "NATS ingress starting"
    );
    let permits = Arc::new(Semaphore::new(nats.max_concurrent));
    let jobs = nats.jetstream.then(|| {
        tokio::spawn(jobs::run(
            gw.clone(),
            worker.clone(),
            permits.clone(),
            stop.clone(),
        ))
    });
    let counts = gw.clone();
    let service = client
        .service_builder()
        .description("warden: OpenAI-compatible Chat Completions and Embeddings over NATS")
        .queue_group(&nats.queue)
        .stats_handler(move |_endpoint, _stats| {
            let s = &counts.metrics.stats;
            serde_json::json!({
                "in_flight": counts.nats.in_flight(),
                "requests_total": s.total.load(Ordering::Relaxed),
                "rejected": s.rejected.load(Ordering::Relaxed),
            })
        })
        .start("warden", crate::VERSION)
        .await;
    let service = match service {
        Ok(service) => service,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the NATS service; the NATS ingress is off");
            return;
        }
    };
    let endpoint = |name: &'static str| {
        service
            .endpoint_builder()
            .name(name)
            .add(format!("{}.{name}", nats.subject))
    };
    let (mut chat, mut embeddings, mut models) = match (
        endpoint("chat").await,
        endpoint("embeddings").await,
        endpoint("models").await,
    ) {
        (Ok(chat), Ok(embeddings), Ok(models)) => (chat, embeddings, models),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            tracing::error!(error = %e, "cannot add the NATS service endpoints");
            return;
        }
    };
    // Once the server has the subscriptions (a flush is answered after them,
    // whenever NATS is reachable), requests can reach this proxy: what a
    // restart waits for before it stops the old one.
    tokio::select! {
        flushed = client.flush() => {
            if flushed.is_ok() {
                gw.nats.subscribed.store(true, Ordering::Relaxed);
            }
        }
        _ = stop.wait_for(|stop| *stop) => {}
    }
    loop {
        let (request, route) = tokio::select! {
            Some(request) = chat.next() => (request, CHAT_ROUTE),
            Some(request) = embeddings.next() => (request, EMBEDDINGS_ROUTE),
            Some(request) = models.next() => (request, MODELS_ROUTE),
            _ = stop.wait_for(|stop| *stop) => break,
        };
        take(&gw, &worker, &permits, request, route).await;
    }
    // Draining: the server routes no more requests here once it has the
    // unsubscribes; those that already arrived are still delivered, and
    // answered. Then wait for the ones in flight (and the JetStream
    // loop), flush the replies and close.
    gw.nats.subscribed.store(false, Ordering::Relaxed);
    if client.connection_state() == async_nats::connection::State::Connected
        && client.drain().await.is_ok()
    {
        let mut rest = futures_util::stream::select(
            futures_util::stream::select(
                chat.by_ref().map(|request| (request, CHAT_ROUTE)),
                embeddings
                    .by_ref()
                    .map(|request| (request, EMBEDDINGS_ROUTE)),
            ),
            models.by_ref().map(|request| (request, MODELS_ROUTE)),
        );
        let drained_by = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while let Ok(Some((request, route))) =
            tokio::time::timeout_at(drained_by, rest.next()).await
        {
            take(&gw, &worker, &permits, request, route).await;
        }
    }
    let _ = chat.stop().await;
    let _ = embeddings.stop().await;
    let _ = models.stop().await;
    let _ = service.stop().await;
    if let Some(jobs) = jobs {
        let _ = jobs.await;
    }
    let all = u32::try_from(nats.max_concurrent).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    // A flush completes only once the server has the bytes: with NATS away it
    // would wait for the reconnect, holding the whole shutdown until
    // graceful_timeout (and `daemon stop` until its SIGKILL). Unconnected, nothing
    // could be delivered anyway; connected, a flush takes milliseconds, and a
    // connection lost mid-flush is bounded too.
    if worker.connection_state() == async_nats::connection::State::Connected {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, worker.flush()).await;
    }
    let _ = worker.drain().await;
    let _ = client.drain().await;
    tracing::info!("NATS ingress drained");
}

/// Handles one request from an endpoint: served in its own task (replies on
/// `worker`), or refused at once with a 429 beyond `nats.max_concurrent`.
async fn take(
    gw: &Arc<Gateway>,
    worker: &async_nats::Client,
    permits: &Arc<Semaphore>,
    request: async_nats::service::Request,
    route: &'static str,
) {
    let Some(reply_to) = request.message.reply.clone() else {
        tracing::debug!(subject = %request.message.subject, "NATS request without a reply subject: ignored");
        return;
    };
    let Some(in_flight) = InFlight::try_take(gw, permits) else {
        let mut record = Record::start(gw.clone(), Ingress::Nats, route);
        gw.metrics.rejected(Rejection::Concurrency);
        let e = nats_overloaded(gw.config.nats.max_concurrent);
        record.status = e.status.as_u16();
        let sent = reply::publish_error(worker, reply_to, &e).await;
        record.finish(sent);
        return;
    };
    let (gw, client) = (gw.clone(), worker.clone());
    let message = request.message;
    let origin = origin(&gw, message.headers.as_ref(), route);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let origin = match origin {
            Ok(origin) => origin,
            Err(e) => {
                let mut record = Record::start(gw.clone(), Ingress::Nats, route);
                record.status = e.status.as_u16();
                let sent = reply::publish_error(&client, reply_to, &e).await;
                record.finish(sent);
                return;
            }
        };
        if route == MODELS_ROUTE {
            serve_models(gw, client, reply_to).await;
        } else {
            serve_routed(gw, client, reply_to, message, origin).await;
        }
    });
}

/// Who sent a NATS request: the `Authorization` header, `Bearer wk-…` or the
/// bare key; a 401 `invalid_api_key` when a key is required and this is none.
pub(super) fn origin(
    gw: &Gateway,
    headers: Option<&async_nats::HeaderMap>,
    route: &'static str,
) -> Result<dispatch::Origin, ApiError> {
    let secret = headers
        .and_then(|h| h.get("Authorization"))
        .map(|v| v.as_str().trim())
        .map(|v| super::admission::bearer_credentials(v).unwrap_or(v))
        .filter(|v| !v.is_empty());
    match gw.keys.identify(secret, gw.live().auth_token.as_deref()) {
        Ok(caller) => Ok(dispatch::Origin {
            caller,
            ingress: Ingress::Nats,
            route,
            path: None,
            request_id: None,
            trace: None,
            server_tools: !crate::tools::Tools::opted_out(
                headers
                    .and_then(|h| h.get(crate::tools::OPT_OUT_HEADER))
                    .map(|v| v.as_str()),
            ),
        }),
        Err(failure) => {
            gw.metrics.rejected(Rejection::Auth);
            Err(dispatch::denied(failure.denied()))
        }
    }
}

/// A chat or embeddings request (`route` says which), answered on `reply_to`.
async fn serve_routed(
    gw: Arc<Gateway>,
    client: async_nats::Client,
    reply_to: async_nats::Subject,
    message: async_nats::Message,
    origin: dispatch::Origin,
) {
    let mut record = Record::start(gw.clone(), Ingress::Nats, origin.route);
    record.trace_nats(&message.subject, message.headers.as_ref());
    let origin = origin.traced(record.span_parent());
    let dispatched = dispatch_route(&gw, message.payload, &origin).await;
    record.exchange = dispatched.info;
    let stats = record.exchange.as_ref().map(|x| x.stats.clone());
    let delivered = match dispatched.outcome {
        Ok((answer, slot)) => {
            reply::deliver(&client, reply_to, answer, slot, None, stats.as_deref()).await
        }
        Err(e) => reply::Delivered {
            status: e.status.as_u16(),
            sent: reply::publish_error(&client, reply_to, &e).await,
            started: false,
        },
    };
    record.status = delivered.status;
    record.finish(delivered.sent);
}

/// The dispatch of a NATS request on `route` (chat or embeddings); `trace` is
/// its span when traces are on.
async fn dispatch_route(
    gw: &Gateway,
    payload: bytes::Bytes,
    origin: &dispatch::Origin,
) -> dispatch::Dispatched {
    if origin.route == EMBEDDINGS_ROUTE {
        dispatch::embeddings(gw, payload, axum::http::HeaderMap::new(), origin).await
    } else {
        dispatch::chat(gw, payload, origin).await
    }
}

async fn serve_models(gw: Arc<Gateway>, client: async_nats::Client, reply_to: async_nats::Subject) {
    let mut record = Record::start(gw.clone(), Ingress::Nats, MODELS_ROUTE);
    let body = dispatch::models(&gw).await;
    record.status = 200;
    let sent = client.publish(reply_to, body).await.is_ok();
    record.finish(sent);
}
