//! Traces (docs/contract.md §15): OpenTelemetry spans for every proxied request, sent to a
//! collector over OTLP/HTTP (protobuf) by warden's own HTTP client.
//!
//! Off (an empty `telemetry.otlp_endpoint`) there is no [`Telemetry`] at all:
//! each hook on the request path is one `Option` check, and no span, context
//! or header is built.
//!
//! On, a request has one span of kind SERVER (`POST /v1/chat/completions`) or,
//! over NATS, CONSUMER (`process warden.chat`), and inside it one CLIENT span
//! per provider attempt, named `{gen_ai.operation.name} {model}`, with the
//! OpenTelemetry GenAI attributes ([`AttemptSpan`]). The attempt span's own
//! context goes to the provider as `traceparent`. A streamed answer's span
//! ends with the stream.
//!
//! - [`propagation`]: W3C Trace Context in (HTTP and NATS headers) and out.
//! - [`export`]: the bounded queue and the task that drains it to the collector.
//! - [`genai`]: what an answer says about itself (id, model, finish reasons,
//!   usage, and its text with `capture_content`).
//!
//! This folder is used by `gateway` and `upstream` and uses neither.

pub mod export;
mod genai;
pub mod propagation;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use tokio::sync::{mpsc, oneshot};

use crate::api::metrics::Metrics;
use crate::api::sse::SseParser;
use crate::home::config::TelemetryConfig;

/// Why telemetry could not be set up (the proxy then does not start).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "telemetry: cannot build the OTLP HTTP client: {}",
        crate::support::http_client::error_chain(source)
    )]
    Client { source: reqwest::Error },
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(String),
}

type Exporter = opentelemetry_otlp::SpanExporter;

/// The tracer, its export pipeline and the settings spans are made with.
pub struct Telemetry {
    tracer: SdkTracer,
    /// Kept so the tracer's processor (the queue's sender) lives.
    _provider: SdkTracerProvider,
    capture_content: bool,
    trust_parent: bool,
    /// The queue's task side, until [`Telemetry::spawn_exporter`] takes it.
    drain: Mutex<Option<export::Drain<Exporter>>>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The telemetry `[telemetry]` asks for: `None` when it is off.
    pub fn from_config(
        config: &TelemetryConfig,
        metrics: &Metrics,
    ) -> Result<Option<Arc<Telemetry>>, TelemetryError> {
        if !config.enabled() {
            return Ok(None);
        }
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        let client = crate::support::http_client::client_builder()
            .timeout(export::EXPORT_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| TelemetryError::Client { source })?;
        let url = config.traces_url();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(export::EXPORT_TIMEOUT)
            .build()
            .map_err(|e| {
                TelemetryError::Exporter(crate::support::redact::urls_in(&e.to_string()).into())
            })?;
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.trim().to_string())
            .with_attribute(KeyValue::new("service.version", crate::VERSION))
            .build();
        exporter.set_resource(&resource);
        let (processor, drain, flushes) = export::pipeline(
            exporter,
            metrics.telemetry_spans_exported.clone(),
            metrics.telemetry_spans_dropped.clone(),
            crate::support::redact::url(&url),
        );
        let ratio = config.sample_ratio;
        // A sampled parent is followed; a trace that arrives without one (no
        // parent, or one not sampled) is sampled at `sample_ratio`.
        let sampler = Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::ParentBasedSampler::new(Sampler::TraceIdRatioBased(ratio))
                .with_remote_parent_not_sampled(Sampler::TraceIdRatioBased(ratio)),
        ));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        Ok(Some(Arc::new(Telemetry {
            tracer: provider.tracer("warden"),
            _provider: provider,
            capture_content: config.capture_content,
            trust_parent: config.trust_parent,
            drain: Mutex::new(Some(drain)),
            flushes,
        })))
    }

    /// Starts the export task on the current tokio runtime (once; later calls
    /// do nothing). Spans that end before it runs wait in the queue.
    pub fn spawn_exporter(&self) {
        let drain = self
            .drain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(drain) = drain {
            tokio::spawn(drain.run());
        }
    }

    /// Exports what is queued now, waiting at most `timeout` (at shutdown).
    pub async fn flush(&self, timeout: Duration) {
        let (done, finished) = oneshot::channel();
        let _ = tokio::time::timeout(timeout, async {
            if self.flushes.send(done).await.is_ok() {
                let _ = finished.await;
            }
        })
        .await;
    }

    /// The span of one HTTP request (kind SERVER), continuing the trace in its
    /// `traceparent`/`tracestate` (see `trust_parent`).
    pub fn http_span(
        self: &Arc<Self>,
        method: &str,
        route: &'static str,
        headers: &axum::http::HeaderMap,
    ) -> ServerSpan {
        let name = format!("{method} {route}");
        let attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route),
            KeyValue::new("url.path", route),
            KeyValue::new("url.scheme", "http"),
        ];
        self.server_span(name, SpanKind::Server, attributes, |key| {
            headers.get(key).and_then(|v| v.to_str().ok())
        })
    }

    /// The span of one NATS request (kind CONSUMER) on `subject`, continuing
    /// the trace in its headers.
    pub fn nats_span<'a>(
        self: &Arc<Self>,
        subject: &str,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> ServerSpan {
        let subject = crate::support::redact::truncate(subject, 256);
        let attributes = vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", subject.to_string()),
        ];
        self.server_span(
            format!("process {subject}"),
            SpanKind::Consumer,
            attributes,
            get,
        )
    }

    fn server_span<'a>(
        self: &Arc<Self>,
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> ServerSpan {
        let remote = propagation::extract(get);
        let mut builder = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes);
        let parent = match remote {
            Some(remote) if self.trust_parent => Context::new().with_remote_span_context(remote),
            Some(remote) => {
                // A new trace of its own, linked to the client's.
                builder = builder.with_links(vec![Link::with_context(remote)]);
                Context::new()
            }
            None => Context::new(),
        };
        let span = builder.start_with_context(&self.tracer, &parent);
        ServerSpan {
            telemetry: self.clone(),
            span,
        }
    }
}

/// A request's SERVER (HTTP) or CONSUMER (NATS) span. It ends with
/// [`ServerSpan::finish`], or when dropped.
pub struct ServerSpan {
    telemetry: Arc<Telemetry>,
    span: opentelemetry_sdk::trace::Span,
}

impl ServerSpan {
    /// What the request's attempts are children of.
    pub fn parent(&self) -> SpanParent {
        let sc = self.span.span_context();
        SpanParent {
            telemetry: self.telemetry.clone(),
            // A local parent (not remote): the attempts live in this process.
            context: SpanContext::new(
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags(),
                false,
                sc.trace_state().clone(),
            ),
        }
    }

    /// The trace id, 32 hex digits (for the access log and `/ui`).
    pub fn trace_id(&self) -> String {
        self.span.span_context().trace_id().to_string()
    }

    /// Ends the span with the status the client got (499: it went away).
    pub fn finish(mut self, status: u16) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            self.span
                .set_attribute(KeyValue::new("error.type", status.to_string()));
            self.span.set_status(Status::error(""));
        }
        self.span.end();
    }
}

/// The context a request's attempt spans are made in.
#[derive(Clone)]
pub struct SpanParent {
    telemetry: Arc<Telemetry>,
    context: SpanContext,
}

impl SpanParent {
    /// The trace id, 32 hex digits (for the usage ledger and logs).
    pub fn trace_id(&self) -> String {
        self.context.trace_id().to_string()
    }
}

impl std::fmt::Debug for SpanParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanParent")
            .field("trace_id", &self.context.trace_id())
            .finish_non_exhaustive()
    }
}

/// `gen_ai.provider.name` of a provider kind: the well-known name of its API.
#[derive(Clone, Copy, Debug)]
pub enum GenAiSystem {
    OpenAi,
    Anthropic,
    Mock,
    /// An agent CLI run as a provider (`api = "command"`).
    Command,
}

impl GenAiSystem {
    fn as_str(self) -> &'static str {
        match self {
            GenAiSystem::OpenAi => "openai",
            GenAiSystem::Anthropic => "anthropic",
            GenAiSystem::Mock => "warden.mock",
            GenAiSystem::Command => "warden.command",
        }
    }
}

/// What is known when an attempt starts.
pub struct AttemptStart<'a> {
    /// `gen_ai.operation.name`: `chat`, `embeddings`, `text_completion`, …
    pub operation: &'static str,
    /// The model sent to the provider.
    pub model: &'a str,
    /// warden's name of the provider (`warden.provider`).
    pub provider: &'a str,
    pub system: GenAiSystem,
    /// The provider's host and port (`server.address`, `server.port`); `None` for the mock.
    pub server: Option<(&'a str, u16)>,
    /// 1 for the first attempt of a request.
    pub attempt: u32,
    pub stream: bool,
    /// The name of the client's key (`warden.key`), when keys are in use.
    pub key: Option<&'a str>,
    /// The request body, read only with `capture_content`.
    pub body: &'a [u8],
}

impl SpanParent {
    /// Starts the CLIENT span of one provider attempt.
    pub fn attempt(&self, start: AttemptStart<'_>) -> AttemptSpan {
        let tracer = &self.telemetry.tracer;
        let mut attributes = Vec::with_capacity(12);
        attributes.extend([
            KeyValue::new("gen_ai.operation.name", start.operation),
            KeyValue::new("gen_ai.provider.name", start.system.as_str()),
            KeyValue::new(
                "gen_ai.request.model",
                crate::support::redact::truncate(start.model, 256).to_string(),
            ),
            KeyValue::new("gen_ai.request.stream", start.stream),
            KeyValue::new("warden.provider", start.provider.to_string()),
            KeyValue::new("warden.attempt", i64::from(start.attempt)),
        ]);
        if let Some((host, port)) = start.server {
            attributes.push(KeyValue::new("server.address", host.to_string()));
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(key) = start.key {
            attributes.push(KeyValue::new("warden.key", key.to_string()));
        }
        let capture = self.telemetry.capture_content;
        if capture {
            if let Some(input) = genai::input_messages(start.body) {
                attributes.push(KeyValue::new("gen_ai.input.messages", input));
            }
        }
        let name = format!(
            "{} {}",
            start.operation,
            crate::support::redact::truncate(start.model, 256)
        );
        let parent = Context::new().with_remote_span_context(self.context.clone());
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        AttemptSpan {
            span,
            capture,
            answer: genai::Answer::default(),
        }
    }
}

impl SpanParent {
    /// Starts the INTERNAL span `execute_tool {name}` of one server tool call
    /// (docs/contract.md §18): `gen_ai.operation.name = execute_tool`,
    /// `gen_ai.tool.name`, `gen_ai.tool.call.id`; the call's `arguments` as
    /// `gen_ai.tool.call.arguments` only with `capture_content` (the model
    /// writes them from the conversation, so they can quote it).
    pub fn tool(&self, name: &str, call_id: &str, arguments: &str) -> ToolSpan {
        let tracer = &self.telemetry.tracer;
        let capture = self.telemetry.capture_content;
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", name.to_string()),
            KeyValue::new(
                "gen_ai.tool.call.id",
                crate::support::redact::truncate(call_id, 128).to_string(),
            ),
            KeyValue::new("gen_ai.tool.type", "function"),
        ];
        if capture {
            attributes.push(KeyValue::new(
                "gen_ai.tool.call.arguments",
                crate::support::redact::truncate(arguments, CAPTURED_BYTES).to_string(),
            ));
        }
        let parent = Context::new().with_remote_span_context(self.context.clone());
        let span = tracer
            .span_builder(format!("execute_tool {name}"))
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        ToolSpan { span, capture }
    }
}

/// At most this much of a tool call's arguments or result goes into its span
/// (with `capture_content`).
const CAPTURED_BYTES: usize = 16 * 1024;

/// The span of one server tool call.
pub struct ToolSpan {
    span: opentelemetry_sdk::trace::Span,
    capture: bool,
}

impl ToolSpan {
    /// The `traceparent` the tool service receives (a NATS header).
    pub fn traceparent(&self) -> String {
        propagation::traceparent(self.span.span_context())
    }

    /// Ends the span with the call's `outcome` (`warden.tool.outcome`, and
    /// `error.type` unless it is `ok`) and, with `capture_content`, the
    /// `result` the model gets (`gen_ai.tool.call.result`).
    pub fn finish(mut self, outcome: &'static str, result: &str) {
        self.span
            .set_attribute(KeyValue::new("warden.tool.outcome", outcome));
        if outcome != "ok" {
            self.span
                .set_attribute(KeyValue::new("error.type", outcome));
            self.span.set_status(Status::error(""));
        }
        if self.capture {
            self.span.set_attribute(KeyValue::new(
                "gen_ai.tool.call.result",
                crate::support::redact::truncate(result, CAPTURED_BYTES).to_string(),
            ));
        }
        self.span.end();
    }
}

/// The CLIENT span of one provider attempt.
pub struct AttemptSpan {
    span: opentelemetry_sdk::trace::Span,
    capture: bool,
    answer: genai::Answer,
}

impl AttemptSpan {
    /// The `traceparent` the provider receives: this span's own context.
    pub fn traceparent(&self) -> String {
        propagation::traceparent(self.span.span_context())
    }

    /// The `tracestate` the provider receives, when the trace has one.
    pub fn tracestate(&self) -> Option<String> {
        propagation::tracestate(self.span.span_context())
    }

    /// Whether the trace is sampled (for tests and logs).
    pub fn sampled(&self) -> bool {
        self.span.span_context().trace_flags() & TraceFlags::SAMPLED == TraceFlags::SAMPLED
    }

    /// The attempt failed with `error_type` (a status code like `"503"`,
    /// `"timeout"`, …): the span ends with it. No message goes into the span,
    /// since an upstream's message can quote the request.
    pub fn failed(mut self, error_type: &str) {
        self.span
            .set_attribute(KeyValue::new("error.type", error_type.to_string()));
        self.span.set_status(Status::error(""));
        self.span.end();
    }

    /// A complete answer (JSON): the span ends with what it says.
    pub fn answered(mut self, body: &[u8], usage: &dyn UsageSource) {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            self.answer.read(&value, self.capture);
        }
        self.end(usage);
    }

    /// A streamed answer: the span ends when `frames` does (or is dropped),
    /// with what its events said. `first_chunk` is the time from the attempt's
    /// start to the stream's first event.
    pub fn stream<S>(
        mut self,
        frames: S,
        first_chunk: Duration,
        usage: Arc<dyn UsageSource>,
    ) -> TappedStream<S>
    where
        S: Stream<Item = Bytes> + Unpin,
    {
        self.span.set_attribute(KeyValue::new(
            "gen_ai.response.time_to_first_chunk",
            first_chunk.as_secs_f64(),
        ));
        TappedStream {
            frames,
            parser: SseParser::new(),
            span: Some(self),
            usage,
        }
    }

    fn end(mut self, usage: &dyn UsageSource) {
        let a = std::mem::take(&mut self.answer);
        let span = &mut self.span;
        if let Some(id) = a.id {
            span.set_attribute(KeyValue::new("gen_ai.response.id", id));
        }
        if let Some(model) = a.model {
            span.set_attribute(KeyValue::new("gen_ai.response.model", model));
        }
        if !a.finish_reasons.is_empty() {
            let reasons: Vec<StringValue> = a
                .finish_reasons
                .iter()
                .cloned()
                .map(StringValue::from)
                .collect();
            span.set_attribute(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(reasons)),
            ));
        }
        let (input, output) = usage.usage();
        let input = a.input_tokens.or((input > 0).then_some(input));
        let output = a.output_tokens.or((output > 0).then_some(output));
        if let Some(n) = input {
            span.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", n as i64));
        }
        if let Some(n) = output {
            span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", n as i64));
        }
        if self.capture {
            let text = genai::Answer {
                text: a.text,
                finish_reasons: a.finish_reasons,
                ..Default::default()
            };
            if let Some(output) = text.output_messages() {
                span.set_attribute(KeyValue::new("gen_ai.output.messages", output));
            }
        }
        span.end();
    }

    /// A stream's event, read as it passes.
    fn read_event(&mut self, data: &str) {
        if data == "[DONE]" || !self.answer.wants(data, self.capture) {
            return;
        }
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(data) {
            self.answer.read(&value, self.capture);
        }
    }
}

/// Where the tokens of an exchange are kept (the upstream's exchange figures),
/// read when an attempt's span ends: input, output.
pub trait UsageSource: Send + Sync {
    fn usage(&self) -> (u64, u64);
}

/// No usage known.
pub struct NoUsage;

impl UsageSource for NoUsage {
    fn usage(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// A stream of SSE frames, passed on unchanged, whose attempt span reads its
/// events and ends when it ends or is dropped (the client went away).
pub struct TappedStream<S> {
    frames: S,
    parser: SseParser,
    span: Option<AttemptSpan>,
    usage: Arc<dyn UsageSource>,
}

impl<S> TappedStream<S> {
    fn end(&mut self) {
        if let Some(span) = self.span.take() {
            span.end(self.usage.as_ref());
        }
    }
}

impl<S: Stream<Item = Bytes> + Unpin> Stream for TappedStream<S> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        match Pin::new(&mut this.frames).poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                if let Some(span) = this.span.as_mut() {
                    for event in this.parser.feed(&frame) {
                        span.read_event(&event.data);
                    }
                }
                Poll::Ready(Some(frame))
            }
            Poll::Ready(None) => {
                if let (Some(span), Some(event)) = (this.span.as_mut(), this.parser.finish()) {
                    span.read_event(&event.data);
                }
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> Drop for TappedStream<S> {
    fn drop(&mut self) {
        self.end();
    }
}

/// `server.address` and `server.port` of a provider's base URL (never its
/// userinfo, path or query).
pub fn server_of(url: &str) -> Option<(String, u16)> {
    let url = reqwest::Url::parse(url).ok()?;
    let host = url.host_str()?.to_string();
    Some((host, url.port_or_known_default()?))
}
