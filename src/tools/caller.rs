//! The NATS side of server tools: one connection of its own (the `[nats]`
//! server and credentials), and one request per call to `SUBJECT.NAME` whose
//! every failure becomes a result the model can read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, watch};

use crate::api::metrics::Metrics;
use crate::home::config::Config;
use crate::telemetry::SpanParent;

/// How long a call waits for a connection that is not up (yet): a proxy that
/// just started is given this long, a NATS server that is down costs no more.
const CONNECT_GRACE: Duration = Duration::from_secs(2);

/// How one call ended: the `outcome` label of `warden_tool_calls_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
    NoResponders,
    InvalidReply,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::NoResponders => "no_responders",
            Outcome::InvalidReply => "invalid_reply",
        }
    }
}

/// The tool result the model gets, and how the call ended.
pub struct CallResult {
    pub content: String,
    pub outcome: Outcome,
}

impl CallResult {
    fn failed(outcome: Outcome, message: String) -> CallResult {
        CallResult {
            content: json!({ "error": message }).to_string(),
            outcome,
        }
    }
}

/// The tools' NATS connection, made in the background by [`NatsCaller::start`].
pub struct NatsCaller {
    config: Config,
    subject: String,
    timeout: Duration,
    max_reply_bytes: usize,
    client: OnceCell<async_nats::Client>,
    connected: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl NatsCaller {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> NatsCaller {
        NatsCaller {
            subject: config.tools.subject.clone(),
            timeout: Duration::from_secs(config.tools.timeout),
            max_reply_bytes: config.upstream.max_event_bytes,
            config: config.clone(),
            client: OnceCell::new(),
            connected: watch::channel(false).0,
            metrics,
        }
    }

    /// Connects in the background; reconnects never give up.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            match me.connect().await {
                Ok(client) => {
                    let _ = me.client.set(client);
                }
                Err(e) => {
                    tracing::error!(error = %e, "server tools: cannot start the NATS connection")
                }
            }
        });
    }

    async fn connect(&self) -> Result<async_nats::Client, String> {
        let nats = &self.config.nats;
        let connected = self.connected.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("warden-proxy {} (tools)", crate::VERSION))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100u64 << attempts.min(5)).min(Duration::from_secs(2))
            })
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            connected.send_replace(true);
                        }
                        async_nats::Event::Disconnected => {
                            connected.send_replace(false);
                            tracing::warn!(
                                "server tools: NATS connection lost; calls fail until it is back"
                            );
                        }
                        other => tracing::debug!(event = %other, "NATS (tools connection)"),
                    }
                }
            });
        if let Some(token) = self.config.nats_token() {
            options = options.token(token);
        }
        if !nats.credentials_file.is_empty() {
            options = options
                .credentials_file(&nats.credentials_file)
                .await
                .map_err(|e| {
                    format!(
                        "cannot read nats.credentials_file {}: {e}",
                        nats.credentials_file
                    )
                })?;
        }
        let servers: Vec<async_nats::ServerAddr> = nats
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>().map_err(|e| {
                    format!(
                        "nats.url {:?} is not a NATS server address: {e}",
                        crate::support::redact::url(u)
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        options
            .connect(servers.as_slice())
            .await
            .map_err(|e| format!("cannot start the NATS connection: {e}"))
    }

    /// The connection, once it is up: waits at most [`CONNECT_GRACE`] (and
    /// `limit`) for it.
    async fn ready_client(&self, limit: Duration) -> Option<&async_nats::Client> {
        let up = |c: &async_nats::Client| {
            c.connection_state() == async_nats::connection::State::Connected
        };
        if let Some(client) = self.client.get().filter(|c| up(c)) {
            return Some(client);
        }
        let mut connected = self.connected.subscribe();
        let _ = tokio::time::timeout(CONNECT_GRACE.min(limit), connected.wait_for(|c| *c)).await;
        self.client.get().filter(|c| up(c))
    }

    /// Calls tool `name` with `arguments` (the model's JSON text): a NATS request
    /// to `SUBJECT.NAME` that waits `tools.timeout`, or less when `deadline`
    /// (the request's own) is sooner. Never fails: a failure is the result
    /// `{"error":"…"}`, a log line and a metric.
    pub async fn call(
        &self,
        name: &str,
        call_id: &str,
        arguments: &str,
        deadline: Option<Instant>,
        trace: Option<&SpanParent>,
    ) -> CallResult {
        let started = Instant::now();
        let span = trace.map(|t| t.tool(name, call_id, arguments));
        let wait = match deadline {
            Some(at) => self.timeout.min(at.saturating_duration_since(started)),
            None => self.timeout,
        };
        let result = self
            .request(
                name,
                arguments,
                wait,
                span.as_ref().map(|s| s.traceparent()),
            )
            .await;
        let took = started.elapsed();
        self.metrics.tool_call(name, result.outcome.label(), took);
        if result.outcome != Outcome::Ok {
            tracing::warn!(
                tool = name,
                outcome = result.outcome.label(),
                result = %crate::support::redact::truncate(&result.content, 300),
                took_ms = took.as_millis() as u64,
                "server tool call failed; the model gets the error as the tool result"
            );
        } else {
            tracing::debug!(
                tool = name,
                took_ms = took.as_millis() as u64,
                "server tool call"
            );
        }
        if let Some(span) = span {
            span.finish(result.outcome.label(), &result.content);
        }
        result
    }

    async fn request(
        &self,
        name: &str,
        arguments: &str,
        wait: Duration,
        traceparent: Option<String>,
    ) -> CallResult {
        if wait.is_zero() {
            return CallResult::failed(
                Outcome::Timeout,
                format!("tool {name}: the request's deadline has passed"),
            );
        }
        let Some(client) = self.ready_client(wait).await else {
            return CallResult::failed(
                Outcome::Error,
                format!("tool {name}: NATS is not connected"),
            );
        };
        let subject = format!("{}.{name}", self.subject);
        let mut request = async_nats::Request::new()
            .payload(Bytes::copy_from_slice(arguments.as_bytes()))
            .timeout(Some(wait));
        if let Some(traceparent) = traceparent {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("traceparent", traceparent.as_str());
            request = request.headers(headers);
        }
        // The client's own timeout ends the request; this one only guards
        // against a request that would outlive it.
        let sent = tokio::time::timeout(
            wait + Duration::from_secs(1),
            client.send_request(subject, request),
        )
        .await;
        let message = match sent {
            Err(_) => {
                return CallResult::failed(
                    Outcome::Timeout,
                    format!("tool {name}: no reply within {} s", wait.as_secs_f64()),
                );
            }
            Ok(Err(e)) => {
                return match e.kind() {
                    async_nats::RequestErrorKind::TimedOut => CallResult::failed(
                        Outcome::Timeout,
                        format!("tool {name}: no reply within {} s", wait.as_secs_f64()),
                    ),
                    async_nats::RequestErrorKind::NoResponders => CallResult::failed(
                        Outcome::NoResponders,
                        format!("tool {name}: no service answers on its NATS subject"),
                    ),
                    async_nats::RequestErrorKind::Other => {
                        CallResult::failed(Outcome::Error, format!("tool {name}: {e}"))
                    }
                };
            }
            Ok(Ok(message)) => message,
        };
        if let Some(error) = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error"))
        {
            return CallResult::failed(
                Outcome::Error,
                format!(
                    "tool {name}: {}",
                    crate::support::redact::truncate(error.as_str(), 1000)
                ),
            );
        }
        if message.payload.len() > self.max_reply_bytes {
            return CallResult::failed(
                Outcome::InvalidReply,
                format!(
                    "tool {name}: the reply is larger than {} bytes (upstream.max_event_bytes)",
                    self.max_reply_bytes
                ),
            );
        }
        match serde_json::from_slice::<Value>(&message.payload) {
            Ok(_) => CallResult {
                content: String::from_utf8_lossy(&message.payload).into_owned(),
                outcome: Outcome::Ok,
            },
            Err(e) => CallResult::failed(
                Outcome::InvalidReply,
                format!("tool {name}: the reply is not JSON ({e})"),
            ),
        }
    }
}
