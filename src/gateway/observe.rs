//! The observing layer: metrics and one access-log line per request.
//!
//! [`Record`] is shared by both ingresses (HTTP here, NATS in `nats/`), so a
//! request is counted and logged the same way whichever way it came in; the
//! log line names the `ingress`.
//!
//! A request is only over when its response body is: for a stream that is the
//! last frame, or the moment the client went away. So the layer wraps the body
//! in an [`EndingBody`](super::body_end::EndingBody), which records in both cases.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;

use super::Gateway;
use super::body_end::{EndingBody, OnEnd};
use crate::api::metrics::route_label;
use crate::telemetry::{ServerSpan, SpanParent};
use crate::upstream::ExchangeStats;
use crate::upstream::forward::{REQUEST_ID, ensure_request_id};

/// What a chat handler tells the layer about its exchange.
#[derive(Clone)]
pub struct ExchangeInfo {
    pub model: String,
    pub stats: Arc<ExchangeStats>,
    /// The key's admission, settled when the request is recorded (metered
    /// requests only).
    pub ticket: Option<Arc<TicketCell>>,
}

/// A ticket shared by the clones of an [`ExchangeInfo`]; the first to finish takes it.
pub type TicketCell = std::sync::Mutex<Option<crate::keys::Ticket>>;

impl ExchangeInfo {
    /// The info of a new exchange about `model`, and the stats its upstream
    /// call fills in (the same ones, shared).
    pub fn begin(model: &str) -> (ExchangeInfo, Arc<ExchangeStats>) {
        let stats = Arc::new(ExchangeStats::default());
        let info = ExchangeInfo {
            model: model.to_string(),
            stats: stats.clone(),
            ticket: None,
        };
        (info, stats)
    }

    /// [`ExchangeInfo::begin`] for a request admitted with `ticket` (`None`:
    /// unmetered): its streams are counted and its usage asked for.
    pub fn begin_metered(
        model: &str,
        ticket: Option<crate::keys::Ticket>,
    ) -> (ExchangeInfo, Arc<ExchangeStats>) {
        let (mut info, stats) = ExchangeInfo::begin(model);
        if let Some(ticket) = ticket {
            stats
                .metered
                .store(true, std::sync::atomic::Ordering::Relaxed);
            info.ticket = Some(Arc::new(std::sync::Mutex::new(Some(ticket))));
        }
        (info, stats)
    }

    /// The rate-limit figures of the key's admission, when metered.
    pub fn rate_headers(&self) -> Option<crate::keys::limits::RateHeaders> {
        let cell = self.ticket.as_ref()?;
        let guard = cell.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|t| t.rate_headers().clone())
    }

    /// Settles the key's ticket with how the request ended.
    fn settle(&self, status: u16, started: Instant) {
        let Some(cell) = &self.ticket else { return };
        let Some(ticket) = cell.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let usage = s.usage_reported.load(Relaxed).then(|| {
            let u = s.usage();
            // Cached tokens are part of the input, never more than it.
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens.min(u.prompt_tokens),
            )
        });
        ticket.finish(crate::keys::Outcome {
            status,
            usage,
            streamed_bytes: s.streamed_bytes.load(Relaxed),
            provider: s.provider.get().map(|p| p.name.clone()),
            ttft: s
                .first_event_at
                .get()
                .map(|t| t.saturating_duration_since(started)),
            trace_id: s.trace.get().map(SpanParent::trace_id),
        });
    }
}

/// Which way a request came in: a field of the access-log line, and which
/// request counter it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    Http,
    Nats,
}

impl Ingress {
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::Http => "http",
            Ingress::Nats => "nats",
        }
    }
}

/// The observing layer (installed outermost by [`super::router`]): a tower
/// layer rather than `axum::middleware::from_fn`, whose per-request cost
/// (a copy of the inner service, two boxed futures) showed at about 2k
/// instructions per request.
#[derive(Clone)]
pub struct ObserveLayer(pub Arc<Gateway>);

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            gw: self.0.clone(),
        }
    }
}

/// [`ObserveLayer`]'s service.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    gw: Arc<Gateway>,
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let begun = begin(self.gw.clone(), &mut request);
        Observed {
            inner: self.inner.call(request),
            begun: Some(begun),
        }
    }
}

/// The response of an observed request, recorded when its body is over.
pub struct Observed<F> {
    inner: F,
    begun: Option<Begun>,
}

impl<F> Future for Observed<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>> + Unpin,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Ok(response) = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll(cx));
        let begun = self
            .begun
            .take()
            .expect("an observed future polled after its end");
        std::task::Poll::Ready(Ok(begun.answered(response)))
    }
}

/// What the layer keeps of a request until its response.
struct Begun {
    gw: Arc<Gateway>,
    route: &'static str,
    api: bool,
    request_id: axum::http::HeaderValue,
    trace: Option<ServerSpan>,
    started: Instant,
}

/// A request arrives: counted, given its request id (and span, when traces are on).
fn begin(gw: Arc<Gateway>, request: &mut Request) -> Begun {
    let route = route_label(request.uri().path());
    // Every answer carries the request id; handlers forward it upstream.
    let request_id = ensure_request_id(request.headers_mut());
    let api = route.starts_with("/v1/");
    if api {
        gw.metrics.request_started();
    }
    // A span for each request that may go to a provider; none at all when off.
    let trace = match gw.telemetry() {
        Some(telemetry) if goes_upstream(route, request.method()) => {
            let method = method_name(request.method());
            let span = telemetry.http_span(method, route, request.headers());
            request.extensions_mut().insert(span.parent());
            Some(span)
        }
        _ => None,
    };
    Begun {
        gw,
        route,
        api,
        request_id,
        trace,
        started: Instant::now(),
    }
}

impl Begun {
    /// The handler answered: the request id on the answer, and its body
    /// records the request when it is over.
    fn answered(self, mut response: Response) -> Response {
        let Begun {
            gw,
            route,
            api,
            request_id,
            trace,
            started,
        } = self;
        let status = response.status().as_u16();
        let exchange = response.extensions_mut().remove::<ExchangeInfo>();
        response.headers_mut().insert(REQUEST_ID, request_id);
        if gw.is_draining() {
            // Ask HTTP/1 clients to reconnect (to the new process, during a restart).
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        let declared = response
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        response.map(|inner| {
            Body::new(
                EndingBody::new(
                    inner,
                    Record {
                        gw,
                        ingress: Ingress::Http,
                        route,
                        api,
                        status,
                        started,
                        exchange,
                        trace,
                    },
                )
                .declared(declared),
            )
        })
    }
}

/// Whether a request may reach a provider (and so has a span): the API's
/// POST routes, and any method on a pass-through path.
fn goes_upstream(route: &str, method: &axum::http::Method) -> bool {
    route.starts_with("/v1/")
        && !route.starts_with("/v1/models")
        && (method == axum::http::Method::POST || route == "/v1/*")
}

/// The method as spans name it: one of HTTP's, else `_OTHER` (bounded).
fn method_name(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}

/// One request being observed: counted when it starts, recorded (metrics and
/// the access-log line) by [`Record::finish`].
pub struct Record {
    gw: Arc<Gateway>,
    ingress: Ingress,
    route: &'static str,
    api: bool,
    /// The status the answer carries (an HTTP status; for NATS the one the
    /// gateway would have used, as in `Nats-Service-Error-Code`).
    pub status: u16,
    started: Instant,
    pub exchange: Option<ExchangeInfo>,
    /// The request's span, when traces are on; ended by [`Record::finish`].
    trace: Option<ServerSpan>,
}

impl Record {
    /// Starts observing an API request that came in over `ingress` (`route` is
    /// the equivalent HTTP route, so logs read the same for both ingresses).
    pub fn start(gw: Arc<Gateway>, ingress: Ingress, route: &'static str) -> Record {
        gw.metrics.request_started();
        Record {
            gw,
            ingress,
            route,
            api: true,
            status: 200,
            started: Instant::now(),
            exchange: None,
            trace: None,
        }
    }

    /// Starts the request's CONSUMER span (when traces are on), continuing
    /// the trace in the message's headers.
    pub fn trace_nats(&mut self, subject: &str, headers: Option<&async_nats::HeaderMap>) {
        if let Some(telemetry) = self.gw.telemetry() {
            let get = |key: &str| headers.and_then(|h| h.get(key)).map(|v| v.as_str());
            self.trace = Some(telemetry.nats_span(subject, get));
        }
    }

    /// What the request's attempts are children of, when traces are on.
    pub fn span_parent(&self) -> Option<SpanParent> {
        self.trace.as_ref().map(ServerSpan::parent)
    }

    /// Records the request: `completed` is false when the client went away
    /// before the answer was fully delivered (status 499).
    pub fn finish(mut self, completed: bool) {
        let elapsed = self.started.elapsed();
        // 499 (nginx's "client closed request") for answers the client abandoned.
        let status = if completed { self.status } else { 499 };
        let trace_id = self.trace.take().map(|span| {
            let id = span.trace_id();
            span.finish(status);
            id
        });
        if status >= 500 {
            self.gw.history.failed(super::history::Failure {
                t: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                route: self.route,
                status,
                provider: self
                    .exchange
                    .as_ref()
                    .and_then(|x| x.stats.provider_name())
                    .map(str::to_string),
                trace_id: trace_id.clone(),
            });
        }
        let metrics = &self.gw.metrics;
        match self.ingress {
            Ingress::Http => metrics.request_finished(self.route, status, elapsed, self.api),
            Ingress::Nats => metrics.nats_request_finished(self.route, status),
        }
        let ingress = self.ingress.as_str();
        // Microsecond precision is plenty, and keeps log lines short.
        let micros = (elapsed.as_secs_f64() * 1_000_000.0).round();
        let duration_ms = micros / 1000.0;
        let usage = self.exchange.as_ref().map(|x| {
            x.settle(status, self.started);
            let usage = x.stats.usage();
            metrics.model_usage(&x.model, usage.prompt_tokens, usage.completion_tokens);
            metrics.exchange_timing(elapsed, x.stats.upstream_time());
            usage
        });
        if self.exchange.is_none() && !self.api && status < 400 {
            tracing::debug!(ingress, route = self.route, status, duration_ms, "request");
            return;
        }
        // The line, written directly when the text log is tracing's only
        // reader; else (JSON lines, tests' subscribers) through tracing.
        let direct = tracing::enabled!(tracing::Level::INFO)
            && crate::support::logging::info_line("request", |line| {
                line.str("ingress", ingress);
                line.str("route", self.route);
                line.u64("status", u64::from(status));
                line.millis("duration_ms", micros);
                if let (Some(x), Some(usage)) = (&self.exchange, &usage) {
                    line.client("model", &x.model);
                    line.str("provider", x.stats.provider_name().unwrap_or("-"));
                    line.u64("failovers", u64::from(x.stats.failovers()));
                    line.u64("prompt_tokens", usage.prompt_tokens);
                    line.u64("completion_tokens", usage.completion_tokens);
                }
                if let Some(trace_id) = &trace_id {
                    line.display("trace_id", trace_id);
                }
            });
        if direct {
            return;
        }
        // A field given as `None` is left out of the event.
        let trace_id = trace_id.as_ref().map(tracing::field::display);
        match (&self.exchange, usage) {
            (Some(x), Some(usage)) => tracing::info!(
                ingress,
                route = self.route,
                status,
                duration_ms,
                model = %crate::support::redact::client(&x.model),
                provider = x.stats.provider_name().unwrap_or("-"),
                failovers = x.stats.failovers(),
                prompt_tokens = usage.prompt_tokens,
                completion_tokens = usage.completion_tokens,
                trace_id,
                "request"
            ),
            _ => tracing::info!(
                ingress,
                route = self.route,
                status,
                duration_ms,
                trace_id,
                "request"
            ),
        }
    }
}

/// The request is recorded when its response body is over.
impl OnEnd for Record {
    fn ended(self, completed: bool) {
        self.finish(completed);
    }
}
