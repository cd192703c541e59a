//! What every HTTP upstream shares: one pooled client, the bearer key, the
//! retry loop, the timeouts, reading bodies and relaying streams.
//!
//! [`HttpUpstream`] knows nothing about the wire format: the Chat Completions
//! upstream ([`super::chat`]) relays bytes as they are, the Responses upstream
//! ([`super::responses`]) translates them, and both use the same `send` (retries
//! only until response headers arrive), the same idle timeout between chunks and
//! the same error shapes.
//!
//! Requests go through reqwest, except to a plain-`http://` upstream with no
//! HTTP proxy configured: there they go on the upstream's own keep-alive
//! connections, HTTP/1.1 written and read by [`super::streams`], streamed
//! answers and whole ones alike, which skips reqwest's per-request URL
//! re-parsing, its redirect and retry layers, hyper-util's keyed pool and
//! hyper's connection task. What the upstream sees is the same request: one
//! function, [`HttpUpstream::outgoing`], decides its method, headers and body for
//! both stacks (a test compares what each sends). Redirects are never followed,
//! by either stack: a 3xx answer is a 502, so a prompt is never re-sent to a
//! host the configuration does not name.
//!
//! What an upstream answers is bounded ([`super::bounded`], docs/contract.md §10): a body
//! over `upstream.max_response_bytes` or an event over `max_event_bytes` is an
//! error, the whole exchange has the deadline `upstream.timeout` on top of the
//! first-byte and idle timeouts, and a status outside 100–599 or a non-JSON
//! body is a 502. Streams are relayed in whole events only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT,
};
use tokio::time::timeout;

use super::bounded::{self, Deadline, EventFramer, ReadStop};
use super::retry;
use super::{ExchangeStats, FrameStream, Reply, UpstreamError};
use crate::api::metrics::{AttemptOutcome, Metrics};
use crate::api::openai::{ApiError, Usage};
use crate::home::config::{Config, ProviderSettings};
use crate::support::http_client::error_chain;

/// Reads token counts from one JSON document (a whole body or one SSE `data:`
/// payload); `None` when it carries none.
pub type UsageFn = fn(&[u8]) -> Option<Usage>;

/// An upstream body as chunks, each awaited with the idle timeout. It ends after
/// the first `Err` (a broken or stalled stream), which it has already logged.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, ApiError>> + Send>>;

/// The proxy variables reqwest reads for `http://` URLs: when one is set, every
/// request goes through reqwest so the proxy keeps being used.
const HTTP_PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];

pub struct HttpUpstream {
    client: reqwest::Client,
    /// The keep-alive connections for `http://` URLs ([`super::streams`]);
    /// set unless an HTTP proxy is configured (see [`HTTP_PROXY_VARS`]).
    direct: Option<super::streams::Pool>,
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:9000/v1`.
    base: String,
    /// The same for messages: userinfo shown as `***` (docs/contract.md §10).
    display: String,
    /// `{base}/responses`, parsed once for `POST /v1/responses` passthrough.
    responses_url: UpstreamUrl,
    /// `{base}/embeddings` and `{base}/completions`, the same for those routes.
    embeddings_url: UpstreamUrl,
    completions_url: UpstreamUrl,
    auth: Option<HeaderValue>,
    /// Headers some kinds of upstream need besides (Anthropic: `x-api-key`,
    /// `anthropic-version`).
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    attempts: u32,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    /// The deadline of a whole exchange (`upstream.timeout`).
    total_timeout: Duration,
    max_response_bytes: usize,
    max_event_bytes: usize,
    metrics: Arc<Metrics>,
}

/// The most of an upstream's error body read (only its message is used).
const MAX_ERROR_BODY: usize = 64 * 1024;

impl HttpUpstream {
    /// The HTTP side of one provider. `max_idle` bounds the idle pooled
    /// connections kept to it.
    pub fn new(
        provider: &ProviderSettings,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<HttpUpstream, UpstreamError> {
        let max_idle = provider
            .max_concurrent
            .unwrap_or(config.server.max_concurrent)
            .max(8);
        let client = crate::support::http_client::client_builder()
            .connect_timeout(provider.connect_timeout)
            .pool_max_idle_per_host(max_idle)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| UpstreamError::Client { source })?;
        let proxied = HTTP_PROXY_VARS
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        let direct = (!proxied).then(|| {
            super::streams::Pool::new(
                connector(provider.connect_timeout),
                max_idle,
                Duration::from_secs(90),
            )
        });
        let auth =
            match config.provider_api_key(provider) {
                Some(key) => {
                    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                        .map_err(|_| UpstreamError::KeyNotAHeader {
                            var: provider.api_key_env.clone(),
                        })?;
                    value.set_sensitive(true);
                    Some(value)
                }
                None => None,
            };
        Ok(HttpUpstream {
            client,
            direct,
            responses_url: UpstreamUrl::new(format!("{}/responses", provider.base_url())),
            embeddings_url: UpstreamUrl::new(format!("{}/embeddings", provider.base_url())),
            completions_url: UpstreamUrl::new(format!("{}/completions", provider.base_url())),
            base: provider.base_url().to_string(),
            display: crate::support::redact::url(provider.base_url()),
            auth,
            extra_headers: Vec::new(),
            attempts: provider.attempts,
            first_byte_timeout: provider.first_byte_timeout,
            idle_timeout: provider.idle_timeout,
            total_timeout: provider.timeout,
            max_response_bytes: config.upstream.max_response_bytes,
            max_event_bytes: config.upstream.max_event_bytes,
            metrics,
        })
    }

    /// Sends the key the Anthropic way: as `x-api-key` instead of
    /// `Authorization: Bearer`, with `anthropic-version` on every request.
    /// `key_env` names the variable the key came from, for the error message.
    pub fn anthropic_auth(
        mut self,
        key: Option<&str>,
        key_env: &str,
    ) -> Result<Self, super::UpstreamError> {
        self.auth = None;
        if let Some(key) = key {
            let mut value = HeaderValue::from_str(key.trim()).map_err(|_| {
                super::UpstreamError::KeyNotAHeader {
                    var: key_env.to_string(),
                }
            })?;
            value.set_sensitive(true);
            self.extra_headers
                .push((HeaderName::from_static("x-api-key"), value));
        }
        self.extra_headers.push((
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(crate::api::anthropic::ANTHROPIC_VERSION),
        ));
        Ok(self)
    }

    /// `{base}{path}`, e.g. `url("/chat/completions")`, parsed once.
    pub fn url(&self, path: &str) -> UpstreamUrl {
        UpstreamUrl::new(format!("{}{path}", self.base))
    }

    /// `{base}/responses`, parsed once.
    pub fn responses_url(&self) -> &UpstreamUrl {
        &self.responses_url
    }

    /// `{base}/embeddings`, parsed once.
    pub fn embeddings_url(&self) -> &UpstreamUrl {
        &self.embeddings_url
    }

    /// `{base}/completions` (legacy text completions), parsed once.
    pub fn completions_url(&self) -> &UpstreamUrl {
        &self.completions_url
    }

    /// The base URL, for messages (never the key).
    pub fn display_url(&self) -> &str {
        &self.display
    }

    /// POSTs `body` to `url` with retries until response headers with a final
    /// status arrive.
    pub async fn send(
        &self,
        url: &UpstreamUrl,
        body: &Bytes,
        stats: &ExchangeStats,
        client_headers: &HeaderMap,
    ) -> Result<Answer, ApiError> {
        self.send_on(url, body, stats, client_headers).await
    }

    /// [`HttpUpstream::send`].
    async fn send_on(
        &self,
        url: &UpstreamUrl,
        body: &Bytes,
        stats: &ExchangeStats,
        client_headers: &HeaderMap,
    ) -> Result<Answer, ApiError> {
        let mut last_error = String::new();
        let mut last_status: Option<u16> = None;
        let mut deadline = None;
        for attempt in 1..=self.attempts {
            // One clock read for the attempt's start, its timer and the deadline.
            let started = tokio::time::Instant::now();
            let deadline =
                *deadline.get_or_insert_with(|| stats.deadline_from(started, self.total_timeout));
            let outcome = tokio::time::timeout_at(
                (started + self.first_byte_timeout).min(deadline.at),
                self.exchange(Method::POST, url, Some(body), client_headers),
            )
            .await;
            stats.add_upstream_time(started.elapsed());
            let mut retry_after = None;
            match outcome {
                Err(_) if deadline.passed() => {
                    self.metrics.upstream_attempt(AttemptOutcome::Timeout);
                    return Err(self.deadline_error(&deadline));
                }
                Err(_) => {
                    self.metrics.upstream_attempt(AttemptOutcome::Timeout);
                    return Err(ApiError::gateway_timeout(format!(
                        "upstream {} sent no response within {} s (upstream.first_byte_timeout)",
                        self.display,
                        self.first_byte_timeout.as_secs()
                    )));
                }
                Ok(Err(e)) => {
                    last_error = format!("cannot reach upstream {}: {e}", self.display);
                    last_status = None;
                }
                Ok(Ok(response)) if !conforming_status(response.status()) => {
                    self.metrics.upstream_attempt(AttemptOutcome::Failed);
                    return Err(self.nonconforming_status(&response));
                }
                Ok(Ok(response)) if retry::is_retryable(response.status()) => {
                    retry_after = retry::retry_after(response.headers());
                    last_status = Some(response.status().as_u16());
                    last_error =
                        format!("upstream {} answered {}", self.display, response.status());
                    if attempt == self.attempts
                        && response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                    {
                        // The upstream's own rate limit: let the client back off.
                        self.metrics.upstream_attempt(AttemptOutcome::Failed);
                        return Ok(response);
                    }
                }
                Ok(Ok(response)) => {
                    self.metrics.upstream_attempt(AttemptOutcome::Ok);
                    return Ok(response);
                }
            }
            if attempt < self.attempts {
                self.metrics.upstream_attempt(AttemptOutcome::Retried);
                let pause = retry::backoff(attempt, retry_after);
                if deadline.wait(pause) < pause {
                    // No time left for another attempt.
                    return Err(self.deadline_error(&deadline));
                }
                tokio::time::sleep(pause).await;
            } else {
                self.metrics.upstream_attempt(AttemptOutcome::Failed);
            }
        }
        if self.attempts > 1 {
            last_error = format!("{last_error} (after {} attempts)", self.attempts);
        }
        let error = ApiError::bad_gateway(last_error);
        Err(match last_status {
            Some(status) => error.upstream_status(status),
            None => error,
        })
    }

    /// One request, until response headers arrive.
    /// The request is [`HttpUpstream::outgoing`]'s, whichever stack sends it.
    async fn exchange(
        &self,
        method: Method,
        url: &UpstreamUrl,
        body: Option<&Bytes>,
        client_headers: &HeaderMap,
    ) -> Result<Answer, ExchangeError> {
        if let (Some(pool), Some(direct)) = (&self.direct, &url.direct) {
            let sent = match self.direct_head(&method, direct, body, client_headers) {
                Some(head) => {
                    let body = body.cloned().unwrap_or_default();
                    let bodiless = method == Method::HEAD;
                    pool.send_head(&direct.uri, head, body, false, bodiless)
                        .await
                }
                None => {
                    let request = self
                        .outgoing(method.clone(), body, client_headers)
                        .into_hyper(direct);
                    pool.send(&direct.uri, request).await
                }
            };
            return match sent {
                // Never follows a redirect; `send` refuses it.
                Ok(response) => Ok(Answer {
                    inner: AnswerInner::Direct(response),
                }),
                Err(error) => Err(ExchangeError::Direct { error }),
            };
        }
        self.outgoing(method, body, client_headers)
            .send_reqwest(&self.client, url)
            .await
            .map(Answer::from)
    }

    /// [`HttpUpstream::outgoing`]'s request as the direct path writes it
    /// ([`Outgoing::into_hyper`], then [`super::streams::Pool::send`]),
    /// byte for byte, without building its header map: the client's headers
    /// in their order, then the gateway's own and `Host` (a test compares
    /// the two). `None` when a client header has a name the gateway sets
    /// itself or one about the connection (the allow-list of
    /// [`super::forward`] lets none through): then the map decides.
    fn direct_head(
        &self,
        method: &Method,
        url: &DirectUrl,
        body: Option<&Bytes>,
        client_headers: &HeaderMap,
    ) -> Option<Vec<u8>> {
        let own = |name: &HeaderName| {
            [
                &CONTENT_TYPE,
                &AUTHORIZATION,
                &USER_AGENT,
                &ACCEPT,
                &reqwest::header::HOST,
                &reqwest::header::CONTENT_LENGTH,
                &reqwest::header::CONNECTION,
            ]
            .contains(&name)
                || self.extra_headers.iter().any(|(own, _)| own == name)
        };
        let mut more = 0;
        for (name, value) in client_headers {
            if own(name) {
                return None;
            }
            more += name.as_str().len() + value.len() + 4;
        }
        let empty = Bytes::new();
        let body_given = body.is_some();
        let body = body.unwrap_or(&empty);
        more += 128
            + url.host.len()
            + self.auth.as_ref().map_or(0, HeaderValue::len)
            + self
                .extra_headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 4)
                .sum::<usize>()
            + body.len().min(16 * 1024 + 1);
        let mut head = super::streams::RequestHead::new(method, url.origin_str(), more);
        for (name, value) in client_headers {
            head.header(name, value);
        }
        if body_given {
            head.header(&CONTENT_TYPE, &HeaderValue::from_static("application/json"));
        }
        if let Some(auth) = &self.auth {
            head.header(&AUTHORIZATION, auth);
        }
        for (name, value) in &self.extra_headers {
            head.header(name, value);
        }
        head.header(
            &USER_AGENT,
            &HeaderValue::from_static(crate::support::http_client::USER_AGENT),
        );
        head.header(&ACCEPT, &HeaderValue::from_static("*/*"));
        head.header(&reqwest::header::HOST, &url.host);
        Some(head.finish(true, body))
    }

    /// The one place an outgoing upstream request is decided: its method,
    /// headers and body. Both HTTP stacks send exactly this; a header every
    /// upstream request should carry is added here and nowhere else.
    /// `client_headers` are the client's own that may go upstream (the
    /// allow-list of [`super::forward`]); the gateway's own win over them.
    fn outgoing(
        &self,
        method: Method,
        body: Option<&Bytes>,
        client_headers: &HeaderMap,
    ) -> Outgoing {
        let mut headers = HeaderMap::with_capacity(4 + client_headers.len());
        for (name, value) in client_headers {
            headers.append(name.clone(), value.clone());
        }
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(auth) = &self.auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        for (name, value) in &self.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        // What reqwest would add by itself, written out so hyper sends it too.
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(crate::support::http_client::USER_AGENT),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        Outgoing {
            method,
            headers,
            body: body.cloned(),
        }
    }

    /// The usual exchange: send, relay a non-success status as an error, then
    /// either relay the stream as it arrives or read the whole body. `usage`
    /// reads token counts from the body or from each SSE `data:` line.
    pub async fn forward(
        &self,
        url: &UpstreamUrl,
        body: &Bytes,
        stream: bool,
        stats: Arc<ExchangeStats>,
        usage: UsageFn,
        client_headers: &HeaderMap,
    ) -> Result<Reply, ApiError> {
        let response = self.send_on(url, body, &stats, client_headers).await?;
        if !response.status().is_success() {
            return Err(self.passthrough_error(response).await);
        }
        if stream {
            // A Chat Completions (or legacy Completions) stream must end with
            // `[DONE]`; a Responses stream ends with its own terminal event.
            let expect_done = url.text.ends_with("/completions");
            return Ok(Reply::Stream(self.relay_events(
                response,
                stats,
                usage,
                expect_done,
            )));
        }
        let body = self.read_body(response, &stats).await?;
        match usage(&body) {
            Some(u) => stats.set_usage(u),
            // No usage: check the body is JSON at all (usage parsing did, when found).
            None => {
                if stats.is_metered() {
                    // Charged by its text (4 bytes a token) when no usage came.
                    match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(v) => stats.streamed_bytes.store(
                            super::metering::text_bytes(&v),
                            std::sync::atomic::Ordering::Relaxed,
                        ),
                        Err(_) => {
                            return Err(self.log_502(format!(
                                "upstream {} answered a body that is not JSON ({} bytes)",
                                self.display,
                                body.len()
                            )));
                        }
                    }
                } else if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                    return Err(self.log_502(format!(
                        "upstream {} answered a body that is not JSON ({} bytes)",
                        self.display,
                        body.len()
                    )));
                }
            }
        }
        Ok(Reply::Complete(body))
    }

    /// Reads a whole body: at most `upstream.max_response_bytes`, with the idle
    /// timeout between chunks and the exchange's deadline.
    pub async fn read_body(
        &self,
        response: Answer,
        stats: &ExchangeStats,
    ) -> Result<Bytes, ApiError> {
        let started = Instant::now();
        let deadline = stats.deadline(self.total_timeout);
        let result = bounded::read_capped(
            response,
            self.max_response_bytes,
            self.idle_timeout,
            deadline,
        )
        .await
        .map_err(|stop| self.read_error(stop, &deadline, "mid-answer"));
        stats.add_upstream_time(started.elapsed());
        result
    }

    /// The client's error for a body or stream read that stopped early.
    fn read_error(&self, stop: ReadStop, deadline: &Deadline, place: &str) -> ApiError {
        match stop {
            ReadStop::TooLarge { cap } => self.log_502(format!(
                "upstream {} answered more than upstream.max_response_bytes ({cap} bytes)",
                self.display
            )),
            ReadStop::Idle => ApiError::gateway_timeout(format!(
                "upstream {} stalled for {} s {place} (upstream.idle_timeout)",
                self.display,
                self.idle_timeout.as_secs()
            )),
            ReadStop::Deadline => self.deadline_error(deadline),
            ReadStop::Broken(cause) => ApiError::bad_gateway(format!(
                "upstream {} broke off its answer: {cause}",
                self.display
            )),
        }
    }

    /// 504: the exchange took longer than `upstream.timeout`.
    fn deadline_error(&self, deadline: &Deadline) -> ApiError {
        let error = ApiError::gateway_timeout(format!(
            "upstream {} did not finish its answer within {} s (upstream.timeout)",
            self.display,
            deadline.total.as_secs()
        ));
        tracing::warn!(error = %error.message, "upstream deadline passed");
        error
    }

    /// A 502 for an answer that is not what the API promises, logged.
    fn log_502(&self, message: String) -> ApiError {
        tracing::warn!(error = %message, "upstream answer refused");
        ApiError::bad_gateway(message)
    }

    /// 502 for a redirect (never followed) or a status outside 100–599.
    fn nonconforming_status(&self, response: &Answer) -> ApiError {
        let status = response.status();
        if status.is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| {
                    format!(
                        " to {}",
                        crate::support::redact::client(&crate::support::redact::url(l))
                    )
                })
                .unwrap_or_default();
            self.log_502(format!(
                "upstream {} answered a redirect ({}{to}); redirects are never followed: set upstream.url to the final address",
                self.display,
                status.as_u16()
            ))
        } else {
            self.log_502(format!(
                "upstream {} answered status {}, outside HTTP's 100-599",
                self.display,
                status.as_u16()
            ))
        }
    }

    /// A non-retryable upstream error (4xx, or 429 after all attempts), relayed
    /// with its status; its body is kept when it already is an OpenAI error.
    pub async fn passthrough_error(&self, response: Answer) -> ApiError {
        let status = response.status();
        let retry_after = retry::retry_after(response.headers());
        let deadline = Deadline::after(self.idle_timeout);
        let body = bounded::read_capped(response, MAX_ERROR_BODY, self.idle_timeout, deadline)
            .await
            .ok();
        let message = body
            .as_ref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("upstream {} answered {status}", self.display));
        let status = axum::http::StatusCode::from_u16(status.as_u16())
            .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
        let mut err = ApiError::new(status, "upstream_error", message);
        if let Some(after) = retry_after {
            err = err.retry_after(after.as_secs().max(1));
        }
        err
    }

    /// The body as chunks, each awaited with the idle timeout; upstream time is
    /// added to `stats`. A broken or stalled stream yields one `Err` and ends.
    /// Dropping the stream closes the upstream connection.
    pub fn chunks(&self, response: Answer, stats: Arc<ExchangeStats>) -> ChunkStream {
        let idle = self.idle_timeout;
        let display_url = self.display.clone();
        let deadline = stats.deadline(self.total_timeout);
        let upstream = response.bytes_stream();
        Box::pin(futures_util::stream::unfold(
            (upstream, stats, false),
            move |(mut upstream, stats, done)| {
                let display_url = display_url.clone();
                async move {
                    if done {
                        return None;
                    }
                    let started = Instant::now();
                    let next = timeout(deadline.wait(idle), upstream.next()).await;
                    stats.add_upstream_time(started.elapsed());
                    let error = match next {
                        Ok(Some(Ok(chunk))) => return Some((Ok(chunk), (upstream, stats, false))),
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => ApiError::bad_gateway(format!(
                            "upstream {display_url} broke off the stream: {}",
                            e.describe()
                        )),
                        Err(_) if deadline.passed() => ApiError::gateway_timeout(format!(
                            "upstream {display_url} did not finish its stream within {} s (upstream.timeout)",
                            deadline.total.as_secs()
                        )),
                        Err(_) => ApiError::gateway_timeout(format!(
                            "upstream {display_url} stalled for {} s mid-stream (upstream.idle_timeout)",
                            idle.as_secs()
                        )),
                    };
                    tracing::warn!(error = %error.message, "stream ended with an error");
                    Some((Err(error), (upstream, stats, true)))
                }
            },
        ))
    }

    /// The most bytes of one SSE event (`upstream.max_event_bytes`).
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Relays an upstream SSE body as it arrives, unchanged but in whole events
    /// only; only `usage` is read on the way. It ends with exactly one complete
    /// error event when the upstream breaks, stalls, passes the deadline, sends
    /// an event over `upstream.max_event_bytes`, or (`expect_done`) ends
    /// without `[DONE]`; an unfinished event is never sent.
    pub fn relay(
        &self,
        response: Answer,
        stats: Arc<ExchangeStats>,
        usage: UsageFn,
    ) -> FrameStream {
        self.relay_events(response, stats, usage, false)
    }

    fn relay_events(
        &self,
        response: Answer,
        stats: Arc<ExchangeStats>,
        usage: UsageFn,
        expect_done: bool,
    ) -> FrameStream {
        struct Relay {
            chunks: ChunkStream,
            framer: EventFramer,
            scanner: UsageScanner,
            stats: Arc<ExchangeStats>,
            display_url: String,
            expect_done: bool,
            seen_done: bool,
            over: bool,
        }
        impl Relay {
            /// One complete error event, then the end.
            fn error(mut self, error: ApiError) -> Option<(Bytes, Relay)> {
                self.over = true;
                Some((Bytes::from(error.sse_frame()), self))
            }
        }
        let state = Relay {
            chunks: self.chunks(response, stats.clone()),
            framer: EventFramer::new(self.max_event_bytes),
            scanner: UsageScanner::new(usage),
            stats,
            display_url: self.display.clone(),
            expect_done,
            seen_done: false,
            over: false,
        };
        Box::pin(futures_util::stream::unfold(state, |mut st| async move {
            if st.over {
                return None;
            }
            loop {
                match st.chunks.next().await {
                    Some(Ok(chunk)) => match st.framer.push(chunk) {
                        Ok(Some(events)) => {
                            if let Some(u) = st.scanner.scan(&events) {
                                st.stats.set_usage(u);
                            }
                            st.seen_done = st.expect_done && bounded::ends_with_done(&events);
                            return Some((events, st));
                        }
                        Ok(None) => {}
                        Err(too_large) => {
                            let error = ApiError::bad_gateway(format!(
                                "upstream {} sent an event larger than upstream.max_event_bytes ({} bytes)",
                                st.display_url, too_large.max_event
                            ));
                            tracing::warn!(error = %error.message, "stream ended with an error");
                            return st.error(error);
                        }
                    },
                    // Already logged; the unfinished event is dropped.
                    Some(Err(error)) => return st.error(error),
                    None => {
                        let rest = st.framer.take_rest();
                        if st.expect_done && !st.seen_done && rest.trim_ascii() == b"data: [DONE]" {
                            // `[DONE]` without its blank line: complete it.
                            st.over = true;
                            return Some((Bytes::from_static(b"data: [DONE]\n\n"), st));
                        }
                        if st.expect_done && !st.seen_done {
                            let error = ApiError::bad_gateway(format!(
                                "upstream {} ended the stream without [DONE]{}",
                                st.display_url,
                                if rest.is_empty() { "" } else { ", mid-event" }
                            ));
                            tracing::error!(error = %error.message, "stream ended with an error");
                            return st.error(error);
                        }
                        return None;
                    }
                }
            }
        }))
    }

    /// A pass-through request (see [`super::passthrough`]): sent once, to
    /// `{base}{path_and_query}`, with the provider's key; the answer streamed
    /// back as it arrives. A 429 or 5xx is an error (so a repeatable request
    /// fails over); every other answer goes to the client as it is.
    pub async fn pass(
        &self,
        call: &super::passthrough::PassCall,
    ) -> Result<super::passthrough::Passed, ApiError> {
        let text = format!("{}{}", self.base, call.path_and_query);
        let url = reqwest::Url::parse(&text).map_err(|e| {
            ApiError::bad_request(format!("the request path cannot be passed on: {e}"))
        })?;
        let Some(body) = call.body.take() else {
            return Err(ApiError::bad_gateway(
                "the request body was already sent to another provider; it cannot be sent twice",
            ));
        };
        let mut headers = HeaderMap::with_capacity(call.headers.len() + 4);
        for (name, value) in &call.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(auth) = &self.auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        for (name, value) in &self.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(crate::support::http_client::USER_AGENT),
        );
        if !headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        }
        let mut request = reqwest::Request::new(call.method.clone(), url);
        *request.headers_mut() = headers;
        *request.body_mut() = body;
        let stats = &call.stats;
        let deadline = stats.deadline(self.total_timeout);
        let started = Instant::now();
        let outcome = timeout(
            deadline.wait(self.first_byte_timeout),
            self.client.execute(request),
        )
        .await;
        stats.add_upstream_time(started.elapsed());
        let response = match outcome {
            Err(_) if deadline.passed() => {
                self.metrics.upstream_attempt(AttemptOutcome::Timeout);
                return Err(self.deadline_error(&deadline));
            }
            Err(_) => {
                self.metrics.upstream_attempt(AttemptOutcome::Timeout);
                return Err(ApiError::gateway_timeout(format!(
                    "upstream {} sent no response within {} s (upstream.first_byte_timeout)",
                    self.display,
                    self.first_byte_timeout.as_secs()
                )));
            }
            Ok(Err(e)) => {
                self.metrics.upstream_attempt(AttemptOutcome::Failed);
                return Err(ApiError::bad_gateway(format!(
                    "cannot reach upstream {}: {}",
                    self.display,
                    ExchangeError::reqwest(e)
                )));
            }
            Ok(Ok(response)) => Answer::from(response),
        };
        if !conforming_status(response.status()) {
            self.metrics.upstream_attempt(AttemptOutcome::Failed);
            return Err(self.nonconforming_status(&response));
        }
        if retry::is_retryable(response.status()) {
            self.metrics.upstream_attempt(AttemptOutcome::Failed);
            return Err(self.passthrough_error(response).await);
        }
        self.metrics.upstream_attempt(AttemptOutcome::Ok);
        let status = response.status().as_u16();
        let headers = super::passthrough::relayed_headers(response.headers());
        let chunks = self
            .chunks(response, stats.clone())
            .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.message)));
        let mut answer = http::Response::new(axum::body::Body::from_stream(chunks));
        *answer.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        *answer.headers_mut() = headers;
        Ok(super::passthrough::Passed { response: answer })
    }

    /// `GET {base}{path}` when it answers a `list` object in time.
    pub async fn get_list(&self, path: &str) -> Option<Bytes> {
        let url = self.url(path);
        let response = timeout(
            self.first_byte_timeout.min(Duration::from_secs(10)),
            self.exchange(Method::GET, &url, None, &HeaderMap::new()),
        )
        .await
        .ok()?
        .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let deadline = Deadline::after(self.first_byte_timeout.min(Duration::from_secs(10)));
        let body = bounded::read_capped(
            response,
            self.max_response_bytes,
            self.idle_timeout,
            deadline,
        )
        .await
        .ok()?;
        let parsed: serde_json::Value = serde_json::from_slice(&body).ok()?;
        parsed["data"].is_array().then_some(body)
    }
}

/// One outgoing upstream request, built by [`HttpUpstream::outgoing`] and
/// handed to either stack unchanged. Both add only what HTTP/1.1 requires
/// (`Host`, and `Content-Length` when there is a body).
struct Outgoing {
    method: Method,
    headers: HeaderMap,
    /// A JSON body; `None` for a `GET`.
    body: Option<Bytes>,
}

impl Outgoing {
    /// For the direct path (an `http://` URL): the target in origin form and a
    /// `Host` header, as hyper-util's client (which reqwest wraps) writes them.
    fn into_hyper(self, url: &DirectUrl) -> http::Request<http_body_util::Full<Bytes>> {
        let mut request =
            http::Request::new(http_body_util::Full::new(self.body.unwrap_or_default()));
        *request.method_mut() = self.method;
        *request.uri_mut() = url.origin.clone();
        *request.headers_mut() = self.headers;
        request
            .headers_mut()
            .entry(reqwest::header::HOST)
            .or_insert_with(|| url.host.clone());
        request
    }

    /// Sends it through reqwest (https, an HTTP proxy, redirects).
    async fn send_reqwest(
        self,
        client: &reqwest::Client,
        url: &UpstreamUrl,
    ) -> Result<reqwest::Response, ExchangeError> {
        let Some(parsed) = &url.parsed else {
            // Fails as reqwest always failed on a URL it cannot parse.
            return client
                .request(self.method, &url.text)
                .send()
                .await
                .map_err(ExchangeError::reqwest);
        };
        let mut request = reqwest::Request::new(self.method, parsed.clone());
        *request.headers_mut() = self.headers;
        *request.body_mut() = self.body.map(reqwest::Body::from);
        client
            .execute(request)
            .await
            .map_err(ExchangeError::reqwest)
    }
}

/// Why one exchange got no response headers (refused, reset, TLS, a bad URL).
/// It prints its whole cause chain on one line, because the retry loop keeps only
/// the text of the last attempt's failure for the client's 502; the caller adds
/// which upstream it was.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The direct path (plain `http://`, [`super::streams`]).
    #[error("error sending request: {}", error_chain(error))]
    Direct { error: super::streams::Error },
    /// reqwest (https, an HTTP proxy), without the URL, which may carry a password.
    #[error("{}", error_chain(error))]
    Reqwest { error: reqwest::Error },
}

impl ExchangeError {
    fn reqwest(error: reqwest::Error) -> ExchangeError {
        ExchangeError::Reqwest {
            error: error.without_url(),
        }
    }
}

/// A request URL parsed when the upstream is built: reqwest parses a `&str` URL
/// on every request, which showed up at 5% of the proxy's instructions.
pub struct UpstreamUrl {
    text: String,
    /// `None` when it does not parse: requests then take the string, and fail
    /// (and are retried and reported) exactly as they always did.
    parsed: Option<reqwest::Url>,
    /// For `http://` URLs (the direct path).
    direct: Option<DirectUrl>,
}

/// An `http://` URL as the direct path sends to it, worked out once.
struct DirectUrl {
    /// The whole URL: where to connect.
    uri: http::Uri,
    /// Its path and query: the request target.
    origin: http::Uri,
    /// `host[:port]` (the port when not 80).
    host: HeaderValue,
}

impl DirectUrl {
    /// The request target.
    fn origin_str(&self) -> &str {
        self.origin
            .path_and_query()
            .map_or("/", |target| target.as_str())
    }

    fn new(parsed: &reqwest::Url) -> Option<DirectUrl> {
        if parsed.scheme() != "http" {
            return None;
        }
        let uri = parsed.as_str().parse::<http::Uri>().ok()?;
        let origin = match uri.path_and_query() {
            Some(target) if !target.as_str().is_empty() => {
                http::Uri::try_from(target.as_str()).ok()?
            }
            _ => http::Uri::from_static("/"),
        };
        let host = match (uri.host()?, uri.port_u16()) {
            (host, Some(port)) if port != 80 => HeaderValue::try_from(format!("{host}:{port}")),
            (host, _) => HeaderValue::try_from(host),
        }
        .ok()?;
        Some(DirectUrl { uri, origin, host })
    }
}

impl UpstreamUrl {
    pub fn new(text: String) -> UpstreamUrl {
        let parsed = reqwest::Url::parse(&text).ok();
        let direct = parsed.as_ref().and_then(DirectUrl::new);
        UpstreamUrl {
            text,
            parsed,
            direct,
        }
    }
}

/// Sockets as reqwest sets up its own: `TCP_NODELAY`, the connect timeout,
/// TCP keep-alive (15 s, 15 s, 3 probes).
fn connector(connect_timeout: Duration) -> hyper_util::client::legacy::connect::HttpConnector {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    http
}

/// A status an upstream may answer with: 100–599, and no redirect (never followed).
fn conforming_status(status: reqwest::StatusCode) -> bool {
    (100..=599).contains(&status.as_u16()) && !status.is_redirection()
}

/// An upstream's answer, from either HTTP stack: the direct path's
/// ([`super::streams`]) as it is (turning it into a `reqwest::Response` would
/// cost allocations and body layers per request), or reqwest's.
pub struct Answer {
    inner: AnswerInner,
}

enum AnswerInner {
    Direct(http::Response<super::streams::StreamBody>),
    Reqwest(reqwest::Response),
}

/// A body that broke off mid-answer, from either stack.
#[derive(Debug)]
pub enum BodyError {
    Direct(std::io::Error),
    Reqwest(reqwest::Error),
}

impl BodyError {
    /// The cause in words, its whole chain on one line, without the URL. The
    /// direct path's reads the same as reqwest's for the same failure.
    pub fn describe(self) -> String {
        match self {
            // As reqwest words the same failure of its hyper connection.
            BodyError::Direct(error) => format!(
                "error decoding response body: error reading a body from connection: {}",
                error_chain(&error)
            ),
            BodyError::Reqwest(error) => crate::support::http_client::describe(error),
        }
    }
}

impl From<reqwest::Response> for Answer {
    fn from(response: reqwest::Response) -> Answer {
        Answer {
            inner: AnswerInner::Reqwest(response),
        }
    }
}

impl Answer {
    pub fn status(&self) -> reqwest::StatusCode {
        match &self.inner {
            AnswerInner::Direct(r) => r.status(),
            AnswerInner::Reqwest(r) => r.status(),
        }
    }

    pub fn headers(&self) -> &HeaderMap {
        match &self.inner {
            AnswerInner::Direct(r) => r.headers(),
            AnswerInner::Reqwest(r) => r.headers(),
        }
    }

    /// The body's length when known before reading it.
    pub fn content_length(&self) -> Option<u64> {
        match &self.inner {
            AnswerInner::Direct(r) => http_body::Body::size_hint(r.body()).exact(),
            AnswerInner::Reqwest(r) => r.content_length(),
        }
    }

    /// The body's next chunk of data; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        match &mut self.inner {
            AnswerInner::Direct(r) => {
                use http_body_util::BodyExt;
                // Trailers and other frames are skipped, as reqwest does.
                while let Some(frame) = r.body_mut().frame().await {
                    if let Ok(data) = frame.map_err(BodyError::Direct)?.into_data() {
                        return Ok(Some(data));
                    }
                }
                Ok(None)
            }
            AnswerInner::Reqwest(r) => r.chunk().await.map_err(BodyError::Reqwest),
        }
    }

    /// The body as a stream of chunks.
    pub fn bytes_stream(self) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + use<> {
        use futures_util::future::Either;
        match self.inner {
            AnswerInner::Direct(r) => Either::Left(
                http_body_util::BodyDataStream::new(r.into_body())
                    .map(|c| c.map_err(BodyError::Direct)),
            ),
            AnswerInner::Reqwest(r) => {
                Either::Right(r.bytes_stream().map(|c| c.map_err(BodyError::Reqwest)))
            }
        }
    }
}

/// Finds `usage` in relayed SSE without buffering the stream: only the current
/// incomplete line is kept, and only lines mentioning `"usage"` are parsed.
pub struct UsageScanner {
    partial: Vec<u8>,
    parse: UsageFn,
}

impl UsageScanner {
    pub fn new(parse: UsageFn) -> UsageScanner {
        UsageScanner {
            partial: Vec::new(),
            parse,
        }
    }

    pub fn scan(&mut self, chunk: &[u8]) -> Option<Usage> {
        let mut found = None;
        let mut rest = chunk;
        // Lines end in LF, CRLF or CR (a CRLF yields an empty line: harmless).
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line_end = &rest[..pos];
            let line: &[u8] = if self.partial.is_empty() {
                line_end
            } else {
                self.partial.extend_from_slice(line_end);
                &self.partial
            };
            if let Some(usage) = Self::line_usage(line, self.parse) {
                found = Some(usage);
            }
            self.partial.clear();
            rest = &rest[pos + 1..];
        }
        // Keep an incomplete line only while it could still matter (bounded).
        if self.partial.len() + rest.len() <= 1 << 20 {
            self.partial.extend_from_slice(rest);
        } else {
            self.partial.clear();
        }
        found
    }

    fn line_usage(line: &[u8], parse: UsageFn) -> Option<Usage> {
        let data = line.strip_prefix(b"data:")?;
        if !data.windows(7).any(|w| w == b"\"usage\"") {
            return None;
        }
        parse(data.trim_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_usage(body: &[u8]) -> Option<Usage> {
        #[derive(serde::Deserialize)]
        struct WithUsage {
            usage: Option<Usage>,
        }
        serde_json::from_slice::<WithUsage>(body).ok()?.usage
    }

    #[test]
    fn usage_is_found_across_chunk_boundaries() {
        let frame = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        for split in 0..frame.len() {
            let mut scanner = UsageScanner::new(chat_usage);
            let a = scanner.scan(&frame[..split]);
            let b = scanner.scan(&frame[split..]);
            let usage = a.or(b).expect("usage found");
            assert_eq!(
                usage,
                Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    cached_tokens: 0,
                }
            );
        }
    }

    /// What the test upstream saw of one request.
    #[derive(Debug, PartialEq)]
    struct Seen {
        method: String,
        path: String,
        /// Every header, sorted, as `name: value`.
        headers: Vec<String>,
        body: Bytes,
    }

    /// A real upstream that records every request and answers an empty list.
    async fn recording_upstream() -> (String, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let tx = tx.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let mut headers: Vec<String> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                    .collect();
                headers.sort();
                tx.send(Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers,
                    body,
                })
                .unwrap();
                axum::Json(serde_json::json!({"object": "list", "data": []}))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1"), rx)
    }

    fn upstream_at(url: &str, direct: bool) -> HttpUpstream {
        let mut config = Config::defaults(&crate::home::Home::at("/nonexistent"));
        config.settings.upstream.url = url.to_string();
        config.env = crate::home::env::EnvSource::from_pairs([("OPENAI_API_KEY", "sk-test")]);
        let provider = config.provider_settings().remove(0);
        let mut upstream = HttpUpstream::new(&provider, &config, Arc::new(Metrics::new())).unwrap();
        if !direct {
            upstream.direct = None;
        }
        assert_eq!(upstream.direct.is_some(), direct, "HTTP_PROXY set here?");
        upstream
    }

    #[tokio::test]
    async fn both_http_stacks_send_the_same_request() {
        let (url, mut seen) = recording_upstream().await;
        let deadline = Duration::from_secs(30);
        let body = Bytes::from_static(br#"{"model":"gpt-5","messages":[]}"#);
        let mut requests = Vec::new();
        // The direct path, then reqwest.
        for direct in [true, false] {
            let upstream = upstream_at(&url, direct);
            let chat = upstream.url("/chat/completions");
            let stats = ExchangeStats::default();
            let response = timeout(
                deadline,
                upstream.send_on(&chat, &body, &stats, &HeaderMap::new()),
            )
            .await
            .expect("answered in time")
            .expect("sent");
            assert!(response.status().is_success());
            let post = timeout(deadline, seen.recv()).await.unwrap().unwrap();
            let list = timeout(deadline, upstream.get_list("/models"))
                .await
                .unwrap();
            assert!(list.is_some(), "the list answer was read");
            let get = timeout(deadline, seen.recv()).await.unwrap().unwrap();
            requests.push((post, get));
        }
        let (post, get) = &requests[0];
        assert_eq!(post.method, "POST");
        assert_eq!(post.path, "/v1/chat/completions");
        assert_eq!(post.body, body);
        let host = url.trim_start_matches("http://").trim_end_matches("/v1");
        let ua = crate::support::http_client::USER_AGENT;
        assert_eq!(
            post.headers,
            [
                "accept: */*".to_string(),
                "authorization: Bearer sk-test".into(),
                format!("content-length: {}", body.len()),
                "content-type: application/json".into(),
                format!("host: {host}"),
                format!("user-agent: {ua}"),
            ]
        );
        assert_eq!(get.method, "GET");
        assert_eq!(get.path, "/v1/models");
        assert!(get.body.is_empty());
        assert_eq!(
            get.headers,
            [
                "accept: */*".to_string(),
                "authorization: Bearer sk-test".into(),
                format!("host: {host}"),
                format!("user-agent: {ua}"),
            ]
        );
        assert_eq!(
            requests[0], requests[1],
            "the direct path (left) and reqwest (right) differ"
        );
    }

    #[test]
    fn null_usage_is_not_an_error() {
        let mut scanner = UsageScanner::new(chat_usage);
        assert_eq!(scanner.scan(b"data: {\"usage\":null}\n"), None);
    }

    /// An upstream answering with the next of `answers` (see the streams'
    /// test upstream), and the direct-path `HttpUpstream` in front of it.
    async fn scripted(
        answers: Vec<&'static [u8]>,
        close_after: bool,
    ) -> (HttpUpstream, Arc<std::sync::atomic::AtomicUsize>) {
        let (uri, accepted, _) = super::super::streams::tests::upstream(answers, close_after).await;
        let url = format!("http://{}/v1", uri.authority().unwrap());
        (upstream_at(&url, true), accepted)
    }

    /// One non-streamed chat request through `forward`: the whole body.
    async fn whole(upstream: &HttpUpstream) -> Result<Bytes, ApiError> {
        let chat = upstream.url("/chat/completions");
        let body = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        let stats = Arc::new(ExchangeStats::default());
        let reply = timeout(
            Duration::from_secs(30),
            upstream.forward(&chat, &body, false, stats, chat_usage, &HeaderMap::new()),
        )
        .await
        .expect("answered in time")?;
        match reply {
            Reply::Complete(body) => Ok(body),
            Reply::Stream(_) => panic!("a stream for a whole answer"),
        }
    }

    fn accepted(counter: &std::sync::atomic::AtomicUsize) -> usize {
        counter.load(std::sync::atomic::Ordering::SeqCst)
    }

    const JSON: &str = r#"{"id":"x","choices":[]}"#;

    #[tokio::test]
    async fn whole_answers_are_read_on_kept_connections_however_delimited() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 23\r\n\r\n{\"id\":\"x\",\"choices\":[]}";
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            9\r\n{\"id\":\"x\"\r\ne\r\n,\"choices\":[]}\r\n0\r\n\r\n";
        // 1xx answers before it are skipped.
        let interim =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 23\r\n\r\n{\"id\":\"x\",\"choices\":[]}";
        for answer in [&sized[..], &chunked[..], &interim[..]] {
            let (upstream, counter) = scripted(vec![answer], false).await;
            for _ in 0..3 {
                assert_eq!(whole(&upstream).await.unwrap(), JSON);
            }
            assert_eq!(accepted(&counter), 1, "{}", String::from_utf8_lossy(answer));
            assert_eq!(upstream.direct.as_ref().unwrap().idle(), 1);
        }
    }

    #[tokio::test]
    async fn a_whole_answer_without_a_length_is_read_until_close() {
        let until_close = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"id\":\"x\",\"choices\":[]}";
        let (upstream, counter) = scripted(vec![until_close], true).await;
        for _ in 0..2 {
            assert_eq!(whole(&upstream).await.unwrap(), JSON);
            assert_eq!(upstream.direct.as_ref().unwrap().idle(), 0);
        }
        assert_eq!(accepted(&counter), 2);
    }

    #[tokio::test]
    async fn a_body_longer_than_its_length_is_cut_there_and_its_connection_closed() {
        let longer =
            b"HTTP/1.1 200 OK\r\ncontent-length: 23\r\n\r\n{\"id\":\"x\",\"choices\":[]}garbage";
        let (upstream, counter) = scripted(vec![longer], false).await;
        for _ in 0..2 {
            assert_eq!(whole(&upstream).await.unwrap(), JSON);
            assert_eq!(upstream.direct.as_ref().unwrap().idle(), 0);
        }
        assert_eq!(accepted(&counter), 2);
    }

    #[tokio::test]
    async fn a_truncated_body_is_a_502_and_its_connection_closed() {
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"id\":";
        let (upstream, counter) = scripted(vec![short], true).await;
        let error = whole(&upstream).await.unwrap_err();
        assert_eq!(error.status, http::StatusCode::BAD_GATEWAY);
        assert_eq!(
            error.message,
            format!(
                "upstream {} broke off its answer: error decoding response body: \
                 error reading a body from connection: end of file before message length reached",
                upstream.display_url()
            )
        );
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\n{\"id\":";
        let (upstream, _) = scripted(vec![chunked], true).await;
        let error = whole(&upstream).await.unwrap_err();
        assert!(
            error.message.contains("broke off its answer"),
            "{}",
            error.message
        );
        assert_eq!(upstream.direct.as_ref().unwrap().idle(), 0);
        assert_eq!(accepted(&counter), 1);
    }

    #[tokio::test]
    async fn a_body_over_max_response_bytes_is_a_502() {
        // Declared (not read), or sent without a length.
        let declared = b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n{";
        let undeclared: &'static [u8] = {
            let mut answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            answer.resize(answer.len() + (1 << 20) + 1, b' ');
            Box::leak(answer.into_boxed_slice())
        };
        for answer in [&declared[..], undeclared] {
            let (mut upstream, _) = scripted(vec![answer], true).await;
            upstream.max_response_bytes = 1 << 20;
            let error = whole(&upstream).await.unwrap_err();
            assert_eq!(error.status, http::StatusCode::BAD_GATEWAY);
            assert!(
                error
                    .message
                    .contains("more than upstream.max_response_bytes (1048576 bytes)"),
                "{}",
                error.message
            );
        }
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_after_its_answer_is_replaced() {
        // Answered without a word of closing, then closed.
        let quiet = b"HTTP/1.1 200 OK\r\ncontent-length: 23\r\n\r\n{\"id\":\"x\",\"choices\":[]}";
        let (upstream, counter) = scripted(vec![quiet], true).await;
        let pool = upstream.direct.as_ref().unwrap();
        for round in 1..=3 {
            assert_eq!(whole(&upstream).await.unwrap(), JSON);
            assert_eq!(pool.idle(), 1, "kept: nothing said it would close");
            pool.until_idle_closed().await;
            assert_eq!(accepted(&counter), round);
        }
        let metrics = upstream.metrics.render_text();
        assert!(
            metrics.contains("warden_upstream_attempts_total{outcome=\"retried\"} 0\n"),
            "no attempt failed: the closed connection was never written to\n{metrics}"
        );
    }

    #[test]
    fn the_direct_head_is_what_the_header_map_would_write() {
        let plain = upstream_at("http://127.0.0.1:9/v1", true);
        let anthropic = upstream_at("http://example.test:8080/v1", true)
            .anthropic_auth(Some("sk-ant"), "ANTHROPIC_API_KEY")
            .unwrap();
        let mut client = HeaderMap::new();
        client.insert("x-request-id", HeaderValue::from_static("req_1"));
        client.append("openai-beta", HeaderValue::from_static("a"));
        client.append("openai-beta", HeaderValue::from_static("b"));
        client.insert("x-codex-turn", HeaderValue::from_static("3"));
        let body = Bytes::from_static(br#"{"model":"m"}"#);
        let large = Bytes::from(vec![b' '; 20 * 1024]);
        for upstream in [&plain, &anthropic] {
            let url = upstream.url("/chat/completions?x=1");
            let direct = url.direct.as_ref().unwrap();
            for headers in [HeaderMap::new(), client.clone()] {
                for (method, body) in [
                    (Method::POST, Some(&body)),
                    (Method::POST, Some(&large)),
                    (Method::GET, None),
                    (Method::HEAD, None),
                ] {
                    let written = upstream
                        .direct_head(&method, direct, body, &headers)
                        .expect("no client header of the gateway's own");
                    let (parts, _) = upstream
                        .outgoing(method.clone(), body, &headers)
                        .into_hyper(direct)
                        .into_parts();
                    let mapped = super::super::streams::encode_head(
                        &parts,
                        &body.cloned().unwrap_or_default(),
                    );
                    assert_eq!(
                        String::from_utf8_lossy(&written),
                        String::from_utf8_lossy(&mapped)
                    );
                }
            }
            // A client header the gateway sets itself: the map decides.
            let mut own = client.clone();
            own.insert("user-agent", HeaderValue::from_static("theirs"));
            let url = upstream.url("/models");
            let direct = url.direct.as_ref().unwrap();
            assert!(
                upstream
                    .direct_head(&Method::GET, direct, None, &own)
                    .is_none()
            );
        }
        let mut extra = client.clone();
        extra.insert("anthropic-version", HeaderValue::from_static("1"));
        let url = anthropic.url("/messages");
        let direct = url.direct.as_ref().unwrap();
        assert!(
            anthropic
                .direct_head(&Method::GET, direct, None, &extra)
                .is_none()
        );
    }
}
