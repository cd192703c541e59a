//! Upstreams: where chat requests go. The gateway hands every request to the
//! [`Router`] ([`router`]), which picks a [`Provider`] ([`provider`]) by model
//! and fails over between them. Each provider wraps one [`Upstream`]: one enum,
//! one variant per kind, so the hot path is a plain `match` with no dynamic
//! dispatch or boxing beyond the streamed body. How a new kind plugs in: see
//! [`router`] ("Adding a provider kind").
//!
//! - [`mock`]: the built-in offline upstream (the default, `url = "mock"`).
//! - [`chat`]: any OpenAI-compatible Chat Completions server.
//! - [`responses`]: a Responses API server, spoken to in translation.
//! - [`anthropic`]: an Anthropic Messages API server, spoken to in translation
//!   (Chat Completions and Responses requests alike).
//! - [`command`]: an agent CLI (Claude Code, Codex, ...) run once per request.
//!
//! The two HTTP kinds share one client, retry loop and timeouts ([`http`]).
//!
//! Every upstream answers with a [`Reply`]: a complete JSON body, or a stream of
//! ready-to-send SSE frames. Failures are already in the OpenAI error shape.

pub(crate) mod anthropic;
pub mod bounded;
pub(crate) mod catalog;
pub(crate) mod chat;
pub mod command;
pub(crate) mod forward;
pub(crate) mod framing;
pub(crate) mod http;
mod idle;
pub mod metering;
pub(crate) mod mock;
mod mock_embeddings;
mod mock_responses;
pub mod passthrough;
pub(crate) mod provider;
pub(crate) mod responses;
mod retry;
pub(crate) mod router;
mod streams;
mod translated;
pub use translated::responses_over_chat;

pub use provider::Provider;
pub use router::Router;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::api::metrics::Metrics;
use crate::api::openai::{ApiError, Usage};
use crate::home::config::{Config, ProviderSettings, UpstreamApi};
use crate::prompts::PromptStore;

/// Why an upstream could not be set up (the proxy then does not start).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "cannot build the upstream HTTP client: {}",
        crate::support::http_client::error_chain(source)
    )]
    Client { source: reqwest::Error },
    /// The key's variable is named, never its value.
    #[error("the value of {var} contains characters not allowed in an HTTP header")]
    KeyNotAHeader { var: String },
    /// One of several providers could not be built.
    #[error("provider {name:?}: {source}")]
    Provider {
        name: String,
        source: Box<UpstreamError>,
    },
    /// An `api = "command"` provider without a preset or command.
    #[error("api = \"command\" needs a preset or a command")]
    NoCommand,
    #[error("between 1 and {max} providers can be routed to, not {count}")]
    ProviderCount { count: usize, max: usize },
    /// `[telemetry]` could not be set up.
    #[error("{0}")]
    Telemetry(String),
}

/// A stream of complete SSE frames (`data: ...\n\n`), ending after `[DONE]` or
/// after an error frame. It never yields an error: failures mid-stream become an
/// error frame, so a client's stream always ends cleanly.
pub type FrameStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// What an upstream answered.
pub enum Reply {
    /// A whole `chat.completion` JSON body.
    Complete(Bytes),
    /// Server-Sent Events, relayed as they arrive.
    Stream(FrameStream),
}

/// Figures about one exchange, filled in by the upstream as they become known
/// (tokens arrive at the end of a stream) and read when the response finishes.
#[derive(Default, Debug)]
pub struct ExchangeStats {
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Prompt tokens the provider read from its cache (within `prompt_tokens`).
    pub cached_tokens: AtomicU64,
    /// Nanoseconds spent waiting on the upstream.
    pub upstream_nanos: AtomicU64,
    /// The provider that answered (or failed last), set by the [`Router`].
    pub provider: OnceLock<Arc<Provider>>,
    /// Attempts after the first (each one a failover or a retry).
    pub failovers: AtomicU32,
    /// The exchange's total deadline, set when its first attempt starts.
    pub deadline: OnceLock<bounded::Deadline>,
    /// Metered by a key: streams are counted ([`metering`]) and asked for usage.
    pub metered: std::sync::atomic::AtomicBool,
    /// The client did not ask for the usage chunk warden asked for: hide it.
    pub hide_usage: std::sync::atomic::AtomicBool,
    /// The upstream reported usage (else it is estimated).
    pub usage_reported: std::sync::atomic::AtomicBool,
    /// Bytes of text (content, tool arguments) streamed, when metered.
    pub streamed_bytes: AtomicU64,
    /// When the first streamed event went on to the client, when metered.
    pub first_event_at: OnceLock<std::time::Instant>,
    /// The request's span, set by the ingress when traces are on: each attempt
    /// is a child span of it (empty when off: no span is made).
    pub trace: OnceLock<crate::telemetry::SpanParent>,
    /// The name of the client's key (`warden.key` on attempt spans), once keys
    /// identify the caller.
    pub key_name: OnceLock<Arc<str>>,
    /// Tokens of the earlier model calls of a server-tool loop (docs/contract.md
    /// §18): [`ExchangeStats::usage`] adds them to the last call's.
    pub earlier_prompt_tokens: AtomicU64,
    pub earlier_completion_tokens: AtomicU64,
    pub earlier_cached_tokens: AtomicU64,
    /// Model calls made when server tools ran (0: none ran): `x-warden-tool-rounds`.
    pub tool_rounds: AtomicU32,
    /// `tools.max_rounds` stopped the loop: `x-warden-tool-limit: reached`.
    pub tool_limit_reached: std::sync::atomic::AtomicBool,
}

impl crate::telemetry::UsageSource for ExchangeStats {
    fn usage(&self) -> (u64, u64) {
        let usage = ExchangeStats::usage(self);
        (usage.prompt_tokens, usage.completion_tokens)
    }
}

impl ExchangeStats {
    /// The exchange's total deadline: `total` from the first call on.
    pub fn deadline(&self, total: Duration) -> bounded::Deadline {
        *self
            .deadline
            .get_or_init(|| bounded::Deadline::after(total))
    }
    /// [`ExchangeStats::deadline`], `total` after `now` when it starts now.
    pub fn deadline_from(&self, now: tokio::time::Instant, total: Duration) -> bounded::Deadline {
        *self.deadline.get_or_init(|| bounded::Deadline {
            at: now + total,
            total,
        })
    }
    pub fn set_usage(&self, usage: Usage) {
        self.usage_reported.store(true, Ordering::Relaxed);
        self.prompt_tokens
            .store(usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .store(usage.completion_tokens, Ordering::Relaxed);
        self.cached_tokens
            .store(usage.cached_tokens, Ordering::Relaxed);
    }
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed)
                + self.earlier_prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed)
                + self.earlier_completion_tokens.load(Ordering::Relaxed),
            cached_tokens: self.cached_tokens.load(Ordering::Relaxed)
                + self.earlier_cached_tokens.load(Ordering::Relaxed),
        }
    }
    /// Banks the usage of a finished model call of a server-tool loop, so the
    /// next call's usage adds to it rather than replacing it.
    pub fn bank_usage(&self) {
        let prompt = self.prompt_tokens.swap(0, Ordering::Relaxed);
        let completion = self.completion_tokens.swap(0, Ordering::Relaxed);
        let cached = self.cached_tokens.swap(0, Ordering::Relaxed);
        self.earlier_cached_tokens
            .fetch_add(cached, Ordering::Relaxed);
        self.earlier_prompt_tokens
            .fetch_add(prompt, Ordering::Relaxed);
        self.earlier_completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }
    pub fn add_upstream_time(&self, d: Duration) {
        self.upstream_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn upstream_time(&self) -> Duration {
        Duration::from_nanos(self.upstream_nanos.load(Ordering::Relaxed))
    }
    /// Records the provider of the final attempt (the first call wins).
    pub fn set_provider(&self, provider: &Arc<Provider>) {
        let _ = self.provider.set(provider.clone());
    }
    /// The name of the provider that answered, when one did.
    pub fn provider_name(&self) -> Option<&str> {
        self.provider.get().map(|p| &*p.name)
    }
    pub fn failovers(&self) -> u32 {
        self.failovers.load(Ordering::Relaxed)
    }
    /// Whether a key meters this exchange.
    pub fn is_metered(&self) -> bool {
        self.metered.load(Ordering::Relaxed)
    }
}

/// One chat request as the gateway hands it to the router (and the router to
/// each provider it tries).
#[derive(Clone)]
pub struct ChatCall {
    /// The client's request body, byte for byte.
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub stats: Arc<ExchangeStats>,
    /// The client's headers that go upstream ([`forward::client_headers`]),
    /// shared by the copies each attempt makes (an attempt that adds trace
    /// headers copies them first).
    pub headers: Arc<axum::http::HeaderMap>,
}

/// One `POST /v1/responses` request as the gateway hands it on: the body is
/// already final (instructions injected), and is forwarded as it is.
#[derive(Clone)]
pub struct ResponsesCall {
    pub body: Bytes,
    /// The model it is routed by.
    pub model: String,
    pub stream: bool,
    pub stats: Arc<ExchangeStats>,
    /// The client's headers that go upstream ([`forward::client_headers`]).
    pub headers: axum::http::HeaderMap,
}

/// One `POST /v1/embeddings` request, forwarded as it is (the mock answers it).
#[derive(Clone)]
pub struct EmbeddingsCall {
    pub body: Bytes,
    /// The model it is routed by.
    pub model: String,
    pub stats: Arc<ExchangeStats>,
    /// The client's headers that go upstream ([`forward::client_headers`]).
    pub headers: axum::http::HeaderMap,
}

/// One `POST /v1/completions` (legacy text completions) request: forwarded as
/// it is to a Chat Completions provider, translated for the others.
#[derive(Clone)]
pub struct CompletionsCall {
    pub body: Bytes,
    /// The model it is routed by.
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub stats: Arc<ExchangeStats>,
    /// The client's headers that go upstream ([`forward::client_headers`]).
    pub headers: axum::http::HeaderMap,
}

pub enum Upstream {
    Mock(mock::MockUpstream),
    Chat(chat::ChatUpstream),
    Responses(responses::ResponsesUpstream),
    Anthropic(anthropic::AnthropicUpstream),
    Command(command::CommandUpstream),
}

impl Upstream {
    /// Builds one provider's upstream. `prompts` supplies the `instructions`
    /// of a Responses API upstream.
    pub fn build(
        provider: &ProviderSettings,
        config: &Config,
        metrics: Arc<Metrics>,
        prompts: PromptStore,
    ) -> Result<Upstream, UpstreamError> {
        if let Some(command) = &provider.command {
            return Ok(Upstream::Command(command::CommandUpstream::new(
                provider, command, config,
            )));
        }
        if provider.is_mock() {
            return Ok(Upstream::Mock(mock::MockUpstream::new()));
        }
        Ok(match provider.api {
            UpstreamApi::Chat => {
                Upstream::Chat(chat::ChatUpstream::new(provider, config, metrics)?)
            }
            UpstreamApi::Responses => Upstream::Responses(responses::ResponsesUpstream::new(
                provider, config, metrics, prompts,
            )?),
            UpstreamApi::Anthropic => {
                let http = http::HttpUpstream::new(provider, config, metrics)?.anthropic_auth(
                    config.provider_api_key(provider).as_deref(),
                    &provider.api_key_env,
                )?;
                Upstream::Anthropic(anthropic::AnthropicUpstream::new(http))
            }
            UpstreamApi::Command => {
                return Err(UpstreamError::Provider {
                    name: provider.name.clone(),
                    source: Box::new(UpstreamError::NoCommand),
                });
            }
        })
    }

    pub async fn chat(&self, call: ChatCall) -> Result<Reply, ApiError> {
        // The translating kinds' futures are boxed: every request's future is
        // as large as its largest branch, and moving it costs a copy of that
        // size (benches/results/perf.md).
        match self {
            Upstream::Mock(m) => m.chat(call),
            Upstream::Chat(c) => c.chat(call).await,
            Upstream::Responses(r) => Box::pin(r.chat(call)).await,
            Upstream::Anthropic(a) => Box::pin(a.chat(call)).await,
            Upstream::Command(c) => Box::pin(c.chat(call)).await,
        }
    }

    /// Forwards a Responses API request to `{base}/responses` (`api = "chat"`
    /// or `"responses"`: OpenAI-compatible servers usually serve both).
    /// Streams are relayed as they arrive, unchanged. The mock answers itself;
    /// an Anthropic provider answers in translation (Responses → Chat → Messages).
    pub async fn responses(&self, call: ResponsesCall) -> Result<Reply, ApiError> {
        let http = match self {
            Upstream::Mock(m) => return m.responses(call),
            Upstream::Chat(c) => c.http(),
            Upstream::Responses(r) => r.http(),
            Upstream::Anthropic(a) => return Box::pin(a.responses(call)).await,
            Upstream::Command(c) => return Box::pin(c.responses(call)).await,
        };
        http.forward(
            http.responses_url(),
            &call.body,
            call.stream,
            call.stats,
            responses::responses_usage,
            &call.headers,
        )
        .await
    }

    /// The HTTP side of a provider with a URL (`None` for the mock).
    pub fn http(&self) -> Option<&http::HttpUpstream> {
        match self {
            Upstream::Mock(_) | Upstream::Command(_) => None,
            Upstream::Chat(c) => Some(c.http()),
            Upstream::Responses(r) => Some(r.http()),
            Upstream::Anthropic(a) => Some(a.http()),
        }
    }

    /// Whether this kind serves `POST /v1/embeddings` (the Messages API and
    /// agent CLIs have none).
    pub fn serves_embeddings(&self) -> bool {
        !matches!(self, Upstream::Anthropic(_) | Upstream::Command(_))
    }

    /// Forwards an embeddings request to `{base}/embeddings` (`api = "chat"` or
    /// `"responses"`: OpenAI-compatible servers serve it next to the others);
    /// the mock answers deterministic vectors. The router never sends one to
    /// an Anthropic provider ([`Upstream::serves_embeddings`]).
    pub async fn embeddings(&self, call: EmbeddingsCall) -> Result<Reply, ApiError> {
        let http = match self {
            Upstream::Mock(_) => return mock_embeddings::respond(call),
            Upstream::Chat(c) => c.http(),
            Upstream::Responses(r) => r.http(),
            Upstream::Anthropic(a) => {
                return Err(ApiError::not_found(format!(
                    "provider {} speaks the Anthropic Messages API, which has no embeddings",
                    a.http().display_url()
                ))
                .code("model_not_found"));
            }
            Upstream::Command(_) => {
                return Err(ApiError::not_found(
                    "an agent CLI provider (api = \"command\") has no embeddings",
                )
                .code("model_not_found"));
            }
        };
        http.forward(
            http.embeddings_url(),
            &call.body,
            false,
            call.stats,
            chat::usage_of,
            &call.headers,
        )
        .await
    }

    /// A legacy completions request: forwarded as sent to `{base}/completions`
    /// of a Chat Completions provider (streams relayed chunk by chunk); the
    /// mock, Responses and Anthropic providers answer it through their Chat
    /// path in translation ([`translated::completions_over_chat`]).
    pub async fn completions(&self, call: CompletionsCall) -> Result<Reply, ApiError> {
        match self {
            Upstream::Chat(c) => {
                let http = c.http();
                http.forward(
                    http.completions_url(),
                    &call.body,
                    call.stream,
                    call.stats,
                    chat::usage_of,
                    &call.headers,
                )
                .await
            }
            _ => {
                Box::pin(translated::completions_over_chat(call, |chat| {
                    self.chat(chat)
                }))
                .await
            }
        }
    }

    /// The upstream's own model list (a `list` object), when it has one. A
    /// Responses upstream is not asked (ChatMock parity: Codex has no list), so
    /// `/v1/models` serves the configured models and their reasoning variants.
    pub async fn models(&self) -> Option<Bytes> {
        match self {
            Upstream::Mock(_)
            | Upstream::Responses(_)
            | Upstream::Anthropic(_)
            | Upstream::Command(_) => None,
            Upstream::Chat(c) => c.models().await,
        }
    }
}

/// The model list the gateway serves when the upstream has none: the configured
/// models plus, with `expose_reasoning`, their `-low/-medium/-high` variants.
pub fn configured_models(config: &Config) -> serde_json::Value {
    let mut ids: Vec<String> = Vec::new();
    for model in &config.upstream.models {
        ids.push(model.clone());
        if config.features.expose_reasoning {
            for effort in ["low", "medium", "high"] {
                ids.push(format!("{model}-{effort}"));
            }
        }
    }
    let data: Vec<_> = ids
        .into_iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "warden"}))
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

/// Unix time in seconds, for `created` fields.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
