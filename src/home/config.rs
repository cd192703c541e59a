//! `warden.toml` and its overrides (docs/contract.md §2).
//!
//! Precedence, highest first: command-line flags > process environment > `.env`
//! in the home > `warden.toml` > built-in defaults. Every key has a default, so a
//! missing file is a valid configuration. A typo must never be silently ignored:
//! unknown keys and bad values are errors that name the file, the key and, for
//! syntax errors, the line and column.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::home::env::{EnvSource, VarOrigin};

/// What the built-in offline upstream is called in `upstream.url`.
pub const MOCK_UPSTREAM: &str = "mock";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub max_concurrent: usize,
    pub max_body_bytes: usize,
    /// Bytes of request bodies held in memory at once, over every connection together.
    pub max_body_memory: usize,
    pub graceful_timeout: u64,
    pub auth_token_env: String,
    /// Seconds a request's headers may take to arrive; then the connection is closed.
    pub header_timeout: u64,
    /// Seconds the whole request body may take to arrive; then 408.
    pub body_timeout: u64,
    /// Seconds an idle keep-alive connection is kept open.
    pub keepalive_timeout: u64,
    /// Open client connections; beyond, the oldest idle ones are closed first.
    pub max_connections: usize,
    /// Browser origins allowed by CORS (`"*"` = any); empty = CORS off.
    pub cors_origins: Vec<String>,
    /// The model a request without one gets; empty = such a request is a 400.
    pub default_model: String,
    /// The status page `GET /ui` (and its `/ui/history.json`); false = 404.
    pub ui: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            max_concurrent: 64,
            max_body_bytes: 10 * 1024 * 1024,
            max_body_memory: 64 * 1024 * 1024,
            graceful_timeout: 120,
            auth_token_env: "WARDEN_AUTH_TOKEN".into(),
            header_timeout: 10,
            body_timeout: 30,
            keepalive_timeout: 60,
            max_connections: 10_000,
            cors_origins: Vec::new(),
            default_model: String::new(),
            ui: true,
        }
    }
}

/// Which wire protocol the upstream speaks.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamApi {
    Chat,
    Responses,
    /// The Anthropic Messages API (`POST {url}/messages`), spoken in translation.
    Anthropic,
    /// An agent CLI run once per request (`[[providers]]` only; docs/contract.md §19).
    Command,
}

/// A known agent CLI and how warden runs it headless (`preset = "..."`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CommandPreset {
    ClaudeCode,
    Codex,
    GeminiCli,
    CursorAgent,
}

impl CommandPreset {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandPreset::ClaudeCode => "claude-code",
            CommandPreset::Codex => "codex",
            CommandPreset::GeminiCli => "gemini-cli",
            CommandPreset::CursorAgent => "cursor-agent",
        }
    }
}

/// What a custom `command` prints on stdout (`format = "..."`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CommandFormat {
    /// One JSON event a line, in Claude Code's `--output-format stream-json` shape.
    StreamJson,
    /// Plain text: everything printed is the answer.
    Text,
}

/// An `api = "command"` provider's process settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSettings {
    /// The preset it was built from, if any.
    pub preset: Option<CommandPreset>,
    /// A custom command's argv (empty with a preset).
    pub command: Vec<String>,
    /// A custom command's output format (ignored with a preset).
    pub format: CommandFormat,
    /// Variables passed to the process besides PATH, HOME, LANG and TMPDIR.
    pub env: Vec<String>,
}

impl UpstreamApi {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamApi::Chat => "chat",
            UpstreamApi::Responses => "responses",
            UpstreamApi::Anthropic => "anthropic",
            UpstreamApi::Command => "command",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub url: String,
    pub api: UpstreamApi,
    pub api_key_env: String,
    pub connect_timeout: u64,
    /// Whole seconds; the default for the two finer timeouts below.
    pub timeout: u64,
    /// Seconds until the upstream's response headers arrive (default: `timeout`).
    pub first_byte_timeout: Option<u64>,
    /// Seconds allowed between two chunks of a streamed answer (default: `timeout`).
    pub idle_timeout: Option<u64>,
    pub attempts: u32,
    pub models: Vec<String>,
    /// A buffered (non-streaming) answer larger than this is a 502.
    pub max_response_bytes: usize,
    /// One SSE event (or line) larger than this ends the stream with an error event.
    pub max_event_bytes: usize,
    /// Pass every other `/v1/` path (audio, images, files, …) through to it.
    pub passthrough: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: MOCK_UPSTREAM.into(),
            api: UpstreamApi::Chat,
            api_key_env: "OPENAI_API_KEY".into(),
            connect_timeout: 10,
            timeout: 600,
            first_byte_timeout: None,
            idle_timeout: None,
            attempts: 3,
            models: vec!["gpt-5".into(), "gpt-5-codex".into()],
            max_response_bytes: 64 << 20,
            max_event_bytes: 4 << 20,
            passthrough: false,
        }
    }
}

impl UpstreamConfig {
    pub fn is_mock(&self) -> bool {
        self.url == MOCK_UPSTREAM
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_secs(self.first_byte_timeout.unwrap_or(self.timeout))
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout.unwrap_or(self.timeout))
    }
    /// The deadline of a whole exchange, from the first attempt to the last
    /// byte of the answer: `timeout` (a drip of one byte at a time resets the
    /// idle timer, never this one).
    pub fn total_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:9000/v1`.
    pub fn base_url(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

/// One `[[providers]]` entry (docs/contract.md §11). Unset optional keys take the
/// `[upstream]` value (timeouts, attempts) or the global limit.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `[a-z0-9_-]+`, unique; what `x-warden-provider` and `PROVIDER/MODEL` say.
    pub name: String,
    /// A base URL, or `mock` (empty for `api = "command"`).
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_api")]
    pub api: UpstreamApi,
    /// The variable holding its key; empty = no key sent.
    #[serde(default)]
    pub api_key_env: String,
    /// Exact names or trailing-`*` prefixes; `["*"]` = any; `[]` = what its
    /// `GET /models` reports.
    #[serde(default = "any_model")]
    pub models: Vec<String>,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: u32,
    /// Share among providers of equal priority.
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// `api = "command"`: a known CLI (claude-code | codex | gemini-cli | cursor-agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<CommandPreset>,
    /// `api = "command"`: the argv of a custom CLI (`{model}` marks the model argument).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `api = "command"`: what a custom `command` prints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<CommandFormat>,
    /// `api = "command"`: variables passed on to the CLI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Pass every other `/v1/` path (audio, images, files, …) through to it.
    #[serde(default)]
    pub passthrough: bool,
}

fn default_api() -> UpstreamApi {
    UpstreamApi::Chat
}
fn any_model() -> Vec<String> {
    vec!["*".into()]
}
fn one() -> u32 {
    1
}

/// `[routing]`: passive health and the model catalog (docs/contract.md §11).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Consecutive failures that put a provider in cooldown.
    pub failures: u32,
    /// Seconds a cooling provider is skipped (a longer `Retry-After` wins).
    pub cooldown: u64,
    /// Seconds between model-list refreshes from providers with `models = []`.
    pub catalog_refresh: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            failures: 3,
            cooldown: 30,
            catalog_refresh: 600,
        }
    }
}

/// One provider with every value resolved (its own keys, else the global
/// `[upstream]` ones): what the router and the HTTP upstreams are built from.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// `[a-z0-9_-]+`; `default` for the `[upstream]` shorthand.
    pub name: String,
    /// A base URL, or `mock`.
    pub url: String,
    pub api: UpstreamApi,
    /// The variable holding its key (the name only: the value is read when built).
    pub api_key_env: String,
    /// Exact names or trailing-`*` prefixes; `["*"]` = any model.
    pub models: Vec<String>,
    /// Lower is tried first.
    pub priority: u32,
    /// Share among providers of equal priority.
    pub weight: u32,
    /// Upstream calls allowed in flight to this provider (`None`: only the global limit).
    pub max_concurrent: Option<usize>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// The deadline of a whole exchange, first attempt to last byte.
    pub timeout: Duration,
    /// Attempts of one request that may go to this provider.
    pub attempts: u32,
    /// `api = "command"`: how its CLI is run.
    pub command: Option<CommandSettings>,
    /// Every other `/v1/` path is passed through to it (docs/contract.md §16).
    pub passthrough: bool,
}

impl ProviderSettings {
    pub fn is_mock(&self) -> bool {
        self.url == MOCK_UPSTREAM
    }
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:9000/v1`.
    pub fn base_url(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptSource {
    pub name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sha256: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptsConfig {
    pub ttl: u64,
    pub fetch_timeout: u64,
    pub attempts: u32,
    #[serde(rename = "source")]
    pub sources: Vec<PromptSource>,
}

/// The base prompt's name: what non-codex models receive as `instructions`.
pub const BASE_PROMPT: &str = "base_instructions";
/// The codex prompt's name: what `*codex*` models receive as `instructions`.
pub const CODEX_PROMPT: &str = "gpt5_codex_instructions";

impl Default for PromptsConfig {
    fn default() -> Self {
        PromptsConfig {
            ttl: 86400,
            fetch_timeout: 10,
            attempts: 3,
            sources: vec![
                PromptSource {
                    name: BASE_PROMPT.into(),
                    url: "https://raw.githubusercontent.com/openai/codex/main/codex-rs/core/prompt.md"
                        .into(),
                    sha256: vec![],
                    file: None,
                },
                PromptSource {
                    name: CODEX_PROMPT.into(),
                    url: "https://raw.githubusercontent.com/openai/codex/main/codex-rs/core/gpt_5_codex_prompt.md"
                        .into(),
                    sha256: vec![],
                    file: None,
                },
            ],
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    pub verbose: bool,
    pub expose_reasoning: bool,
    pub enable_web_search: bool,
    /// Serve `POST /v1/responses` (on by default; `false`: 404).
    pub enable_responses_api: bool,
    pub responses_no_base_instructions: bool,
    /// Add the base prompt to `/v1/responses` even when the client brings its
    /// own instructions or a leading system/developer message.
    pub responses_always_base_instructions: bool,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        FeaturesConfig {
            verbose: false,
            expose_reasoning: false,
            enable_web_search: false,
            enable_responses_api: true,
            responses_no_base_instructions: false,
            responses_always_base_instructions: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    pub startup_timeout: u64,
    pub stop_timeout: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            startup_timeout: 60,
            stop_timeout: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    pub interval: u64,
    pub health_timeout: u64,
    pub strikes: u32,
    pub on_give_up: String,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            interval: 30,
            health_timeout: 5,
            strikes: 3,
            on_give_up: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the proxy writes its log.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// `logs/proxy.log` in the home.
    File,
    /// Standard output, for containers (`kubectl logs`).
    Stdout,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    pub max_bytes: u64,
    pub format: LogFormat,
    pub target: LogTarget,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_bytes: 50 * 1024 * 1024,
            format: LogFormat::Text,
            target: LogTarget::File,
        }
    }
}

/// The NATS ingress (docs/contract.md §13): off while `url` is empty.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub url: String,
    pub subject: String,
    pub queue: String,
    pub max_concurrent: usize,
    pub jetstream: bool,
    pub stream: String,
    pub ack_wait: u64,
    pub token_env: String,
    pub credentials_file: String,
    /// `true`: `/health/ready` answers 503 while NATS is not connected (a load
    /// balancer or Kubernetes then sends no HTTP either); the daemon, the watchdog and
    /// systemd still judge the process alone (`/health/ready?nats=ignore`).
    pub required: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: String::new(),
            subject: "warden".into(),
            queue: "warden".into(),
            max_concurrent: 64,
            jetstream: false,
            stream: "WARDEN".into(),
            ack_wait: 10,
            token_env: String::new(),
            credentials_file: String::new(),
            required: false,
        }
    }
}

impl NatsConfig {
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait)
    }
    /// The server addresses of `url` (comma-separated, as NATS clients accept),
    /// as `host:port` for probes; 4222 when a port is missing.
    pub fn addresses(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                let rest = u.split_once("://").map_or(u, |(_, rest)| rest);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                let rest = rest.trim_end_matches('/');
                if rest
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                {
                    rest.to_string()
                } else {
                    format!("{rest}:4222")
                }
            })
            .collect()
    }
}

/// Traces (docs/contract.md §15): off while `otlp_endpoint` is empty.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended); empty = off.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` wins.
    pub otlp_endpoint: String,
    /// `service.name` of the spans; `OTEL_SERVICE_NAME` wins.
    pub service_name: String,
    /// The share of traces sampled among those that arrive without a sampled parent.
    pub sample_ratio: f64,
    /// Prompts and answers as `gen_ai.input.messages` / `gen_ai.output.messages`.
    pub capture_content: bool,
    /// Continue a client's `traceparent`; false: a new trace that links to it.
    pub trust_parent: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "warden".into(),
            sample_ratio: 1.0,
            capture_content: false,
            trust_parent: true,
        }
    }
}

impl TelemetryConfig {
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.trim().is_empty()
    }
    /// Where spans are sent: `{otlp_endpoint}/v1/traces`.
    pub fn traces_url(&self) -> String {
        format!(
            "{}/v1/traces",
            self.otlp_endpoint.trim().trim_end_matches('/')
        )
    }
}

/// The file's shape: every section optional, every key defaulted.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    /// Several upstreams, routed by model; empty = `[upstream]` is the one provider.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderConfig>,
    pub routing: RoutingConfig,
    /// A name clients send -> the model routed and sent upstream.
    pub aliases: std::collections::BTreeMap<String, String>,
    pub prompts: PromptsConfig,
    pub features: FeaturesConfig,
    pub daemon: DaemonConfig,
    pub watchdog: WatchdogConfig,
    pub logs: LogsConfig,
    pub nats: NatsConfig,
    /// Per-client keys, limits and the usage ledger (docs/contract.md §14, docs/keys.md).
    pub keys: crate::home::keys_config::KeysConfig,
    /// USD per 1M tokens, by model name or trailing-`*` pattern.
    pub prices: crate::home::keys_config::Prices,
    pub telemetry: TelemetryConfig,
    /// Tools the gateway runs over NATS (docs/contract.md §18, docs/tools.md).
    pub tools: crate::home::tools_config::ToolsConfig,
}

/// Values given on the command line; they beat every other source.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub upstream_url: Option<String>,
}

/// The resolved configuration of one home.
#[derive(Clone, Debug)]
pub struct Config {
    pub home: Home,
    pub settings: Settings,
    pub env: EnvSource,
    /// True when `warden.toml` exists (false: all defaults).
    pub file_present: bool,
}

impl std::ops::Deref for Config {
    type Target = Settings;
    fn deref(&self) -> &Settings {
        &self.settings
    }
}

/// A configuration problem, with everything an operator needs to find and fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or "the environment") the bad value came from.
    pub origin: String,
    /// The key or variable, e.g. `server.port` or `WARDEN_PORT`.
    pub key: Option<String>,
    /// 1-based line and column: of a syntax error, or of a bad value's key
    /// (column 1) when the file writes it.
    pub line_col: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, col)) = self.line_col {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the home's `.env` and `warden.toml` and applies environment and
    /// command-line overrides.
    pub fn load(home: &Home, overrides: &Overrides) -> Result<Config, ConfigError> {
        if let Some(problem) = home.root_problem() {
            return Err(ConfigError {
                origin: home.root().display().to_string(),
                key: None,
                line_col: None,
                message: problem,
            });
        }
        let env_path = home.env_file();
        let env = EnvSource::load(&env_path).map_err(|e| ConfigError {
            origin: env_path.display().to_string(),
            key: None,
            line_col: None,
            // `origin` names the file already.
            message: e.detail(),
        })?;
        Self::load_with_env(home, overrides, env)
    }

    /// Like [`Config::load`] with an explicit variable source.
    pub fn load_with_env(
        home: &Home,
        overrides: &Overrides,
        env: EnvSource,
    ) -> Result<Config, ConfigError> {
        let path = home.config_file();
        let mut text = String::new();
        let (mut settings, file_present) = match std::fs::read_to_string(&path) {
            Ok(read) => {
                text = read;
                (parse_settings(&text, &path)?, true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Settings::default(), false),
            Err(e) => {
                return Err(ConfigError {
                    origin: path.display().to_string(),
                    key: None,
                    line_col: None,
                    message: format!("cannot read: {e}"),
                });
            }
        };
        validate(&settings).map_err(|(key, message)| ConfigError {
            origin: path.display().to_string(),
            line_col: key_line(&text, &key).map(|line| (line, 1)),
            key: Some(key),
            message,
        })?;
        apply_env(&mut settings, &env)?;
        overrides.apply_to(&mut settings);
        validate(&settings).map_err(|(key, message)| ConfigError {
            origin: "command line".into(),
            key: Some(key),
            line_col: None,
            message,
        })?;
        Ok(Config {
            home: home.clone(),
            settings,
            env,
            file_present,
        })
    }

    /// A configuration with every default, for tests and templates.
    pub fn defaults(home: &Home) -> Config {
        Config {
            home: home.clone(),
            settings: Settings::default(),
            env: EnvSource::default(),
            file_present: false,
        }
    }

    /// The bearer token clients must send, when one is configured.
    pub fn auth_token(&self) -> Option<String> {
        self.env.get(&self.server.auth_token_env)
    }

    /// The NATS token, when `nats.token_env` names a variable that is set.
    pub fn nats_token(&self) -> Option<String> {
        if self.nats.token_env.is_empty() {
            return None;
        }
        self.env.get(&self.nats.token_env)
    }

    /// The upstream's API key, when its variable is set.
    pub fn upstream_api_key(&self) -> Option<String> {
        self.env.get(&self.upstream.api_key_env)
    }

    /// The providers requests are routed to. `[upstream]` alone is the
    /// one-provider shorthand: a provider named `default` serving every model.
    pub fn provider_settings(&self) -> Vec<ProviderSettings> {
        let up = &self.upstream;
        if self.providers.is_empty() {
            return vec![ProviderSettings {
                name: "default".into(),
                url: up.url.clone(),
                api: up.api,
                api_key_env: up.api_key_env.clone(),
                models: vec!["*".into()],
                priority: 0,
                weight: 1,
                max_concurrent: None,
                connect_timeout: up.connect_timeout(),
                first_byte_timeout: up.first_byte_timeout(),
                idle_timeout: up.idle_timeout(),
                timeout: up.total_timeout(),
                attempts: up.attempts,
                command: None,
                passthrough: up.passthrough,
            }];
        }
        let secs = Duration::from_secs;
        self.providers
            .iter()
            .map(|p| {
                let timeout = p.timeout.unwrap_or(up.timeout);
                ProviderSettings {
                    name: p.name.clone(),
                    url: p.url.clone(),
                    api: p.api,
                    api_key_env: p.api_key_env.clone(),
                    models: p.models.clone(),
                    priority: p.priority,
                    weight: p.weight,
                    max_concurrent: p.max_concurrent,
                    connect_timeout: secs(p.connect_timeout.unwrap_or(up.connect_timeout)),
                    first_byte_timeout: secs(p.first_byte_timeout.unwrap_or(
                        if p.timeout.is_some() {
                            timeout
                        } else {
                            up.first_byte_timeout.unwrap_or(timeout)
                        },
                    )),
                    idle_timeout: secs(p.idle_timeout.unwrap_or(if p.timeout.is_some() {
                        timeout
                    } else {
                        up.idle_timeout.unwrap_or(timeout)
                    })),
                    timeout: secs(timeout),
                    attempts: p.attempts.unwrap_or(up.attempts),
                    command: (p.api == UpstreamApi::Command).then(|| CommandSettings {
                        preset: p.preset,
                        command: p.command.clone().unwrap_or_default(),
                        format: p.format.unwrap_or(CommandFormat::StreamJson),
                        env: p.env.clone(),
                    }),
                    passthrough: p.passthrough,
                }
            })
            .collect()
    }

    /// The value of a provider's key variable, when it names one that is set.
    pub fn provider_api_key(&self, provider: &ProviderSettings) -> Option<String> {
        if provider.api_key_env.is_empty() {
            return None;
        }
        self.env.get(&provider.api_key_env)
    }

    /// `host:port` as configured (the port may be 0 for "any free port").
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        let ip = host_ip(&self.server.host).ok_or_else(|| ConfigError {
            origin: self.home.config_file().display().to_string(),
            key: Some("server.host".into()),
            line_col: None,
            message: format!(
                "{:?} is not an IP address (use e.g. 127.0.0.1)",
                self.server.host
            ),
        })?;
        Ok(SocketAddr::new(ip, self.server.port))
    }

    /// The URL a client on this machine uses to reach the proxy.
    pub fn base_url(&self) -> String {
        base_url_for(&self.server.host, self.server.port)
    }
}

/// The address `server.host` names (`localhost` is 127.0.0.1; `[::1]` may be bracketed).
fn host_ip(host: &str) -> Option<std::net::IpAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    host.parse().ok()
}

/// `http://host:port`, with wildcard addresses mapped to loopback so the URL is usable.
pub fn base_url_for(host: &str, port: u16) -> String {
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        h if h.contains(':') && !h.starts_with('[') => return format!("http://[{h}]:{port}"),
        h => h,
    };
    format!("http://{host}:{port}")
}

/// Parses the text of a `warden.toml`; `path` is only used in error messages.
pub fn parse_settings(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, path, None, &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = (key != "." && !key.is_empty()).then_some(key);
        toml_error(text, path, key, e.inner())
    })
}

fn toml_error(text: &str, path: &Path, key: Option<String>, e: &toml::de::Error) -> ConfigError {
    let line_col = e.span().map(|span| line_col(text, span.start));
    let mut message = plain_types(e.message().trim(), key.as_deref());
    if message == "duplicate key" {
        if let Some(span) = e.span() {
            message = duplicate_key(text, span.start, span.end);
        }
    }
    ConfigError {
        origin: path.display().to_string(),
        key,
        line_col,
        message,
    }
}

/// toml says only "duplicate key": this names the key, its table and the line
/// where it was first defined, read from the text (`start..end` is the second
/// definition's key).
fn duplicate_key(text: &str, start: usize, end: usize) -> String {
    let name = text.get(start..end).unwrap_or("").trim().trim_matches('"');
    let (line, _) = line_col(text, start);
    let lines: Vec<&str> = text.lines().collect();
    let header_of = |l: &str| -> Option<String> {
        let t = l.trim();
        let inner = t
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
            .or_else(|| t.strip_prefix('[').and_then(|r| r.split(']').next()))?;
        Some(inner.trim().to_string())
    };
    let here = lines.get(line - 1).copied().unwrap_or("");
    if let Some(table) =
        header_of(here).filter(|h| !here.trim_start().starts_with("[[") && !h.is_empty())
    {
        // A table header seen before.
        if let Some(first) = lines[..line - 1].iter().position(|l| {
            header_of(l).as_deref() == Some(table.as_str()) && !l.trim_start().starts_with("[[")
        }) {
            return format!(
                "duplicate key: the table [{table}] is defined twice, first at line {}; put its keys under one [{table}]",
                first + 1
            );
        }
        return format!("duplicate key: the table [{table}] is defined twice");
    }
    // A key: in the table whose header comes last before it.
    let header_line = lines[..line - 1]
        .iter()
        .rposition(|l| header_of(l).is_some());
    let table = header_line
        .and_then(|i| header_of(lines[i]))
        .map_or("the top level (before any [table])".to_string(), |t| {
            format!("[{t}]")
        });
    let from = header_line.map_or(0, |i| i + 1);
    let defines = |l: &&str| {
        l.trim_start()
            .strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('=') || rest.starts_with('.'))
    };
    match lines[from..line - 1].iter().position(defines) {
        Some(i) => format!(
            "duplicate key: `{name}` in {table} was already defined at line {}; keep one of the two",
            from + i + 1
        ),
        None => format!("duplicate key: `{name}` in {table} is defined twice; keep one"),
    }
}

/// serde names Rust types ("expected u16"); operators think in values. `key`
/// (`logs.max_bytes`) says what a whole number counts.
fn plain_types(message: &str, key: Option<&str>) -> String {
    let mut text = message.to_string();
    let last = key.and_then(|k| k.rsplit('.').next()).unwrap_or("");
    let whole = if last.contains("bytes") {
        "expected a whole number of bytes"
    } else if [
        "timeout", "interval", "cooldown", "refresh", "ttl", "ack_wait",
    ]
    .iter()
    .any(|s| last.contains(s))
    {
        "expected a whole number of seconds"
    } else {
        "expected a whole number"
    };
    for (rust, plain) in [
        ("expected u16", "expected a port number (0-65535)"),
        ("expected u32", "expected a whole number"),
        ("expected u64", whole),
        ("expected usize", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
    ] {
        text = text.replace(rust, plain);
    }
    text
}

/// The 1-based line where `key` (`table.key`, `array[i].key`, as validation
/// names keys) is written in `text`, or the header of the table or array it
/// names; `None` when the file does not write it (a default, a variable).
pub(crate) fn key_line(text: &str, key: &str) -> Option<usize> {
    let (table, field) = key.rsplit_once('.')?;
    let (table, index) = match table.strip_suffix(']').and_then(|t| t.rsplit_once('[')) {
        Some((name, i)) => (name, i.parse::<usize>().ok()),
        None => (table, None),
    };
    let mut current = String::new();
    let mut current_index = None;
    let mut entries: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut header = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[") {
            current = h.split("]]").next().unwrap_or("").trim().to_string();
            let seen = entries.entry(current.clone()).or_insert(0);
            current_index = Some(*seen);
            *seen += 1;
            if current == key && header.is_none() {
                header = Some(n + 1);
            }
            continue;
        }
        if let Some(h) = t.strip_prefix('[') {
            current = h.split(']').next().unwrap_or("").trim().to_string();
            current_index = None;
            if current == key && header.is_none() {
                header = Some(n + 1);
            }
            continue;
        }
        if current == table && (index.is_none() || current_index == index) {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == field {
                    return Some(n + 1);
                }
            }
        }
    }
    header
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Checks values serde cannot: returns the offending key and why.
fn validate(s: &Settings) -> Result<(), (String, String)> {
    let err = |key: &str, msg: String| Err((key.to_string(), msg));
    if s.server.host.trim().is_empty() {
        return err("server.host", "must not be empty".into());
    }
    if host_ip(&s.server.host).is_none() {
        return err(
            "server.host",
            format!(
                "{:?} is not an IP address (use e.g. 127.0.0.1, 0.0.0.0 or ::1)",
                s.server.host
            ),
        );
    }
    check_ranges(s)?;
    if s.upstream.api == UpstreamApi::Command {
        return err(
            "upstream.api",
            "\"command\" providers are declared as [[providers]] with api = \"command\", not in [upstream]".into(),
        );
    }
    validate_providers(s)?;
    if s.upstream.passthrough && s.upstream.url == MOCK_UPSTREAM && s.providers.is_empty() {
        return err(
            "upstream.passthrough",
            "the mock has no other endpoints to pass requests through to; set upstream.url \
             to the server that serves them"
                .into(),
        );
    }
    if s.upstream.url != MOCK_UPSTREAM {
        match reqwest::Url::parse(&s.upstream.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return err(
                    "upstream.url",
                    format!(
                        "{:?} is neither \"mock\" nor an http(s) base URL like http://127.0.0.1:9000/v1",
                        s.upstream.url
                    ),
                );
            }
        }
    }
    validate_nats(&s.nats)?;
    crate::home::keys_config::validate(&s.keys, &s.prices)?;
    if s.keys.shared && !s.nats.enabled() {
        return Err((
            "keys.shared".into(),
            "needs the NATS server that holds the keys and counters: set [nats] url, \
             or keys.shared = false"
                .into(),
        ));
    }
    validate_telemetry(&s.telemetry)?;
    crate::home::tools_config::validate(&s.tools, s.nats.enabled())?;
    let mut names = std::collections::HashSet::new();
    for (i, src) in s.prompts.sources.iter().enumerate() {
        if src.name.is_empty()
            || !src
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return err(
                &format!("prompts.source[{i}].name"),
                format!(
                    "{:?} must be non-empty letters, digits, '_' or '-'",
                    src.name
                ),
            );
        }
        if !names.insert(src.name.as_str()) {
            return err(
                &format!("prompts.source[{i}].name"),
                format!("{:?} is listed twice", src.name),
            );
        }
        for digest in &src.sha256 {
            if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
                return err(
                    &format!("prompts.source[{i}].sha256"),
                    format!("{digest:?} is not a 64-character hex SHA-256 digest"),
                );
            }
        }
    }
    Ok(())
}

/// A NATS subject token list: dot-separated, no wildcards or whitespace.
pub(crate) fn is_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|token| {
            !token.is_empty()
                && !token
                    .chars()
                    .any(|c| c.is_whitespace() || c == '*' || c == '>' || c.is_control())
        })
}

fn validate_telemetry(t: &TelemetryConfig) -> Result<(), (String, String)> {
    if t.enabled() {
        match reqwest::Url::parse(t.otlp_endpoint.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return Err((
                    "telemetry.otlp_endpoint".into(),
                    format!(
                        "{:?} is not an OTLP/HTTP base URL like http://127.0.0.1:4318 \
                         (empty turns traces off)",
                        crate::support::redact::url(&t.otlp_endpoint)
                    ),
                ));
            }
        }
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        return Err((
            "telemetry.sample_ratio".into(),
            format!(
                "{} is out of range: must be from 0.0 to 1.0",
                t.sample_ratio
            ),
        ));
    }
    let name = t.service_name.trim();
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err((
            "telemetry.service_name".into(),
            "must be 1 to 255 printable characters".into(),
        ));
    }
    Ok(())
}

fn validate_nats(n: &NatsConfig) -> Result<(), (String, String)> {
    let err = |key: &str, msg: String| Err((key.to_string(), msg));
    for url in n.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let scheme_ok = match url.split_once("://") {
            Some((scheme, rest)) => {
                matches!(scheme, "nats" | "tls" | "ws" | "wss") && !rest.is_empty()
            }
            None => true,
        };
        if !scheme_ok {
            return err(
                "nats.url",
                format!(
                    "{:?} is not a NATS server URL like nats://127.0.0.1:4222",
                    crate::support::redact::url(url)
                ),
            );
        }
    }
    if !is_subject(&n.subject) {
        return err(
            "nats.subject",
            format!(
                "{:?} is not a NATS subject: dot-separated tokens, no spaces or wildcards",
                n.subject
            ),
        );
    }
    if n.queue.is_empty() || n.queue.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err(
            "nats.queue",
            format!("{:?} must be a non-empty name without spaces", n.queue),
        );
    }
    if n.stream.is_empty()
        || !n
            .stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return err(
            "nats.stream",
            format!(
                "{:?} must be letters, digits, '_' or '-' (a JetStream stream name)",
                n.stream
            ),
        );
    }
    if !n.token_env.is_empty() && !n.credentials_file.is_empty() {
        return err(
            "nats.credentials_file",
            "set either nats.token_env or nats.credentials_file, not both".into(),
        );
    }
    Ok(())
}

const DAY: u64 = 86_400;

/// Every number's allowed range: key, value, least, most, and whether it is
/// seconds (for the message). Values outside would panic (a semaphore of 2^61
/// permits), overflow a deadline or exhaust memory, so they fail at load.
fn check_ranges(s: &Settings) -> Result<(), (String, String)> {
    let opt = |v: Option<u64>| v.unwrap_or(1);
    let checks: [(&str, u64, u64, u64, bool); 26] = [
        (
            "server.max_concurrent",
            s.server.max_concurrent as u64,
            1,
            100_000,
            false,
        ),
        (
            "server.max_body_bytes",
            s.server.max_body_bytes as u64,
            1,
            1 << 30,
            false,
        ),
        (
            "server.max_body_memory",
            s.server.max_body_memory as u64,
            1,
            1 << 40,
            false,
        ),
        (
            "server.graceful_timeout",
            s.server.graceful_timeout,
            0,
            DAY,
            true,
        ),
        (
            "server.header_timeout",
            s.server.header_timeout,
            1,
            3600,
            true,
        ),
        ("server.body_timeout", s.server.body_timeout, 1, DAY, true),
        (
            "server.keepalive_timeout",
            s.server.keepalive_timeout,
            1,
            DAY,
            true,
        ),
        (
            "server.max_connections",
            s.server.max_connections as u64,
            1,
            1_000_000,
            false,
        ),
        (
            "upstream.connect_timeout",
            s.upstream.connect_timeout,
            1,
            3600,
            true,
        ),
        ("upstream.timeout", s.upstream.timeout, 1, 7 * DAY, true),
        (
            "upstream.first_byte_timeout",
            opt(s.upstream.first_byte_timeout),
            1,
            7 * DAY,
            true,
        ),
        (
            "upstream.idle_timeout",
            opt(s.upstream.idle_timeout),
            1,
            7 * DAY,
            true,
        ),
        (
            "upstream.attempts",
            s.upstream.attempts.into(),
            1,
            100,
            false,
        ),
        (
            "upstream.max_response_bytes",
            s.upstream.max_response_bytes as u64,
            1,
            1 << 32,
            false,
        ),
        (
            "upstream.max_event_bytes",
            s.upstream.max_event_bytes as u64,
            1,
            1 << 30,
            false,
        ),
        ("prompts.ttl", s.prompts.ttl, 0, 3650 * DAY, true),
        (
            "prompts.fetch_timeout",
            s.prompts.fetch_timeout,
            1,
            3600,
            true,
        ),
        ("prompts.attempts", s.prompts.attempts.into(), 1, 100, false),
        (
            "daemon.startup_timeout",
            s.daemon.startup_timeout,
            1,
            3600,
            true,
        ),
        ("daemon.stop_timeout", s.daemon.stop_timeout, 1, 3600, true),
        ("watchdog.interval", s.watchdog.interval, 1, DAY, true),
        (
            "watchdog.health_timeout",
            s.watchdog.health_timeout,
            1,
            3600,
            true,
        ),
        (
            "watchdog.strikes",
            s.watchdog.strikes.into(),
            1,
            1000,
            false,
        ),
        ("logs.max_bytes", s.logs.max_bytes, 1, 1 << 40, false),
        (
            "nats.max_concurrent",
            s.nats.max_concurrent as u64,
            1,
            100_000,
            false,
        ),
        ("nats.ack_wait", s.nats.ack_wait, 1, 3600, true),
    ];
    for (key, value, least, most, seconds) in checks {
        if value < least || value > most {
            let unit = if seconds { " seconds" } else { "" };
            return Err((
                key.to_string(),
                format!("{value} is out of range: must be from {least} to {most}{unit}"),
            ));
        }
    }
    if s.server.max_body_memory < s.server.max_body_bytes {
        return Err((
            "server.max_body_memory".to_string(),
            format!(
                "{} is less than server.max_body_bytes ({}): a body that large could never be \
                 held; raise server.max_body_memory or lower server.max_body_bytes",
                s.server.max_body_memory, s.server.max_body_bytes
            ),
        ));
    }
    for origin in &s.server.cors_origins {
        if !is_cors_origin(origin) {
            return Err((
                "server.cors_origins".to_string(),
                format!(
                    "{origin:?} is not an origin: write \"*\" or scheme://host[:port] \
                     (e.g. \"http://localhost:3000\"), without a path"
                ),
            ));
        }
    }
    Ok(())
}

/// `*` matches everything, `gpt-5-*` every name starting `gpt-5-`, anything
/// else only itself.
pub fn pattern_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

/// At most this many `[[providers]]` (the router's candidate set is a 64-bit mask).
pub const MAX_PROVIDERS: usize = 64;

fn is_http_url(url: &str) -> bool {
    matches!(reqwest::Url::parse(url), Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// `[[providers]]`, `[routing]` and `[aliases]`: names, URLs, patterns, ranges.
fn validate_providers(s: &Settings) -> Result<(), (String, String)> {
    let err = |key: String, msg: String| Err((key, msg));
    if s.providers.len() > MAX_PROVIDERS {
        return err(
            "providers".into(),
            format!(
                "{} providers: at most {MAX_PROVIDERS} are allowed",
                s.providers.len()
            ),
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in s.providers.iter().enumerate() {
        let key = |k: &str| format!("providers[{i}].{k}");
        if p.name.is_empty()
            || p.name.len() > 64
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return err(
                key("name"),
                format!(
                    "{:?} must be 1-64 characters of a-z, 0-9, '_' or '-'",
                    p.name
                ),
            );
        }
        if !names.insert(p.name.as_str()) {
            return err(key("name"), format!("{:?} is used twice", p.name));
        }
        if p.api == UpstreamApi::Command {
            validate_command_provider(p, &key)?;
        } else if let Some(field) = [
            ("preset", p.preset.is_some()),
            ("command", p.command.is_some()),
            ("format", p.format.is_some()),
            ("env", !p.env.is_empty()),
        ]
        .into_iter()
        .find_map(|(k, set)| set.then_some(k))
        {
            return err(
                key(field),
                format!(
                    "only an api = \"command\" provider takes {field}; this one has api = {:?}",
                    p.api.as_str()
                ),
            );
        } else if p.url.is_empty() {
            return err(
                key("url"),
                "missing: a base URL like https://api.openai.com/v1, or \"mock\"".into(),
            );
        }
        if p.api != UpstreamApi::Command && p.url != MOCK_UPSTREAM && !is_http_url(&p.url) {
            return err(
                key("url"),
                format!(
                    "{:?} is neither \"mock\" nor an http(s) base URL like https://api.openai.com/v1",
                    p.url
                ),
            );
        }
        if p.passthrough && p.url == MOCK_UPSTREAM {
            return err(
                key("passthrough"),
                "the mock has no other endpoints to pass requests through to; set passthrough \
                 on a provider with an http(s) url"
                    .into(),
            );
        }
        for model in &p.models {
            let bare = model.strip_suffix('*').unwrap_or(model);
            if model.is_empty() || bare.contains('*') || model.chars().any(char::is_whitespace) {
                return err(
                    key("models"),
                    format!(
                        "{model:?} is not a model name or a trailing-* pattern like \"gpt-5-*\""
                    ),
                );
            }
        }
        let opt = |v: Option<u64>| v.unwrap_or(1);
        let checks: [(&str, u64, u64, u64, bool); 9] = [
            ("priority", p.priority.into(), 0, 1_000_000, false),
            ("weight", p.weight.into(), 1, 1_000_000, false),
            (
                "max_concurrent",
                p.max_concurrent.map_or(1, |v| v as u64),
                1,
                100_000,
                false,
            ),
            ("connect_timeout", opt(p.connect_timeout), 1, 3600, true),
            (
                "first_byte_timeout",
                opt(p.first_byte_timeout),
                1,
                7 * DAY,
                true,
            ),
            ("idle_timeout", opt(p.idle_timeout), 1, 7 * DAY, true),
            ("timeout", opt(p.timeout), 1, 7 * DAY, true),
            ("attempts", p.attempts.map_or(1, u64::from), 1, 100, false),
            ("models", p.models.len() as u64, 0, 10_000, false),
        ];
        for (name, value, least, most, seconds) in checks {
            if value < least || value > most {
                let unit = if seconds { " seconds" } else { "" };
                return err(
                    key(name),
                    format!("{value} is out of range: must be from {least} to {most}{unit}"),
                );
            }
        }
    }
    let r = &s.routing;
    for (name, value, least, most) in [
        ("routing.failures", u64::from(r.failures), 1, 1_000_000),
        ("routing.cooldown", r.cooldown, 1, DAY),
        ("routing.catalog_refresh", r.catalog_refresh, 0, 30 * DAY),
    ] {
        if value < least || value > most {
            let unit = if name == "routing.failures" {
                ""
            } else {
                " seconds"
            };
            return err(
                name.into(),
                format!("{value} is out of range: must be from {least} to {most}{unit}"),
            );
        }
    }
    for (alias, target) in &s.aliases {
        let key = format!("aliases.{alias}");
        if alias.is_empty() || target.is_empty() || target.chars().any(char::is_whitespace) {
            return err(key, format!("{target:?} must be a model name"));
        }
        if alias == target {
            return err(key, "an alias cannot name itself".into());
        }
        if s.aliases.contains_key(target) {
            return err(
                key,
                format!("{target:?} is itself an alias: point at the model it names"),
            );
        }
    }
    Ok(())
}

/// An `api = "command"` provider: a preset or a command, never a URL; models
/// declared (a CLI has no model list to discover).
fn validate_command_provider(
    p: &ProviderConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<(), (String, String)> {
    let err = |k: &str, msg: String| Err((key(k), msg));
    if !p.url.is_empty() {
        return err(
            "url",
            "an api = \"command\" provider runs a program, not a URL: remove url".into(),
        );
    }
    if p.passthrough {
        return err(
            "passthrough",
            "an api = \"command\" provider answers chat only: it has no other endpoints to pass requests through to".into(),
        );
    }
    if !p.api_key_env.is_empty() {
        return err(
            "api_key_env",
            "an api = \"command\" provider sends no key: list the variables its CLI needs in env"
                .into(),
        );
    }
    match (&p.preset, &p.command) {
        (None, None) => {
            return err(
                "preset",
                "missing: set preset = \"claude-code\" (or \"codex\", \"gemini-cli\", \"cursor-agent\"), \
                 or command = [\"program\", \"arg\", ...] with format"
                    .into(),
            );
        }
        (Some(_), Some(_)) => {
            return err("command", "set either preset or command, not both".into());
        }
        (Some(_), None) if p.format.is_some() => {
            return err(
                "format",
                "a preset has its own output format: remove format".into(),
            );
        }
        (None, Some(argv)) => {
            if argv.is_empty() || argv[0].trim().is_empty() {
                return err(
                    "command",
                    "must name a program first, e.g. [\"my-agent\", \"--json\"]".into(),
                );
            }
            if argv.len() > 256 || argv.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
                return err(
                    "command",
                    "at most 256 arguments of at most 4096 bytes each, without NUL".into(),
                );
            }
            if argv[0] == "{model}" {
                return err("command", "the program cannot be {model}".into());
            }
        }
        (Some(_), None) => {}
    }
    if p.models.is_empty() {
        return err(
            "models",
            "an api = \"command\" provider cannot discover its models: list them, e.g. \
             [\"claude-code\", \"claude-code/*\"]"
                .into(),
        );
    }
    if p.env.len() > 64 {
        return err("env", format!("{} variables: at most 64", p.env.len()));
    }
    for var in &p.env {
        let valid = !var.is_empty()
            && var.len() <= 128
            && !var.starts_with(|c: char| c.is_ascii_digit())
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return err(
                "env",
                format!("{var:?} is not a variable name (letters, digits and '_')"),
            );
        }
        if var == "WARDEN_REQUEST_ID" {
            return err("env", "WARDEN_REQUEST_ID is set by warden itself".into());
        }
    }
    Ok(())
}

/// `"*"`, or `http(s)://host[:port]` with no path, as browsers send `Origin`.
fn is_cors_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.is_empty()
        && origin.len() <= 256
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Picks one flag out of the feature flags.
type FeatureField = fn(&mut FeaturesConfig) -> &mut bool;

/// The feature flags and the variables that set them, `WARDEN_*` before `CHATMOCK_*`.
const FEATURE_VARS: [(&str, FeatureField); 6] = [
    ("VERBOSE", |f| &mut f.verbose),
    ("EXPOSE_REASONING", |f| &mut f.expose_reasoning),
    ("ENABLE_WEB_SEARCH", |f| &mut f.enable_web_search),
    ("ENABLE_RESPONSES_API", |f| &mut f.enable_responses_api),
    ("RESPONSES_NO_BASE_INSTRUCTIONS", |f| {
        &mut f.responses_no_base_instructions
    }),
    ("RESPONSES_ALWAYS_BASE_INSTRUCTIONS", |f| {
        &mut f.responses_always_base_instructions
    }),
];

/// Every variable that overrides a key, with the key (`docs/configuration.md` lists
/// each in its key's row; a test checks it). `apply_env` reads no other variable.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WARDEN_HOST", "server.host"),
    ("WARDEN_PORT", "server.port"),
    ("WARDEN_UPSTREAM_URL", "upstream.url"),
    ("WARDEN_UPSTREAM_API", "upstream.api"),
    ("WARDEN_NATS_URL", "nats.url"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
    ("OTEL_SERVICE_NAME", "telemetry.service_name"),
    ("WARDEN_VERBOSE", "features.verbose"),
    ("CHATMOCK_VERBOSE", "features.verbose"),
    ("WARDEN_EXPOSE_REASONING", "features.expose_reasoning"),
    ("CHATMOCK_EXPOSE_REASONING", "features.expose_reasoning"),
    ("WARDEN_ENABLE_WEB_SEARCH", "features.enable_web_search"),
    ("CHATMOCK_ENABLE_WEB_SEARCH", "features.enable_web_search"),
    (
        "WARDEN_ENABLE_RESPONSES_API",
        "features.enable_responses_api",
    ),
    (
        "CHATMOCK_ENABLE_RESPONSES_API",
        "features.enable_responses_api",
    ),
    (
        "WARDEN_RESPONSES_NO_BASE_INSTRUCTIONS",
        "features.responses_no_base_instructions",
    ),
    (
        "CHATMOCK_RESPONSES_NO_BASE_INSTRUCTIONS",
        "features.responses_no_base_instructions",
    ),
    (
        "WARDEN_RESPONSES_ALWAYS_BASE_INSTRUCTIONS",
        "features.responses_always_base_instructions",
    ),
    (
        "CHATMOCK_RESPONSES_ALWAYS_BASE_INSTRUCTIONS",
        "features.responses_always_base_instructions",
    ),
];

fn apply_env(s: &mut Settings, env: &EnvSource) -> Result<(), ConfigError> {
    // Every variable read here is listed in ENV_OVERRIDES (checked in debug builds).
    let env = ListedVars(env);
    fn bad(var: &str, origin: VarOrigin, message: String) -> ConfigError {
        ConfigError {
            origin: origin.to_string(),
            key: Some(var.to_string()),
            line_col: None,
            message,
        }
    }
    if let Some((v, _)) = env.get_with_origin("WARDEN_HOST") {
        s.server.host = v;
    }
    if let Some((v, origin)) = env.get_with_origin("WARDEN_PORT") {
        s.server.port = v.trim().parse().map_err(|_| {
            bad(
                "WARDEN_PORT",
                origin,
                format!("{v:?} is not a port number (0-65535)"),
            )
        })?;
    }
    if let Some((v, _)) = env.get_with_origin("WARDEN_NATS_URL") {
        s.nats.url = v;
    }
    // The OpenTelemetry variables every SDK honours (docs/contract.md §15).
    for var in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"] {
        if let Some((v, origin)) = env.get_with_origin(var) {
            if var == "OTEL_SERVICE_NAME" {
                s.telemetry.service_name = v;
            } else {
                s.telemetry.otlp_endpoint = v;
            }
            // Named by the variable, not as if the file said it.
            validate_telemetry(&s.telemetry).map_err(|(_, message)| bad(var, origin, message))?;
        }
    }
    if let Some((v, _)) = env.get_with_origin("WARDEN_UPSTREAM_URL") {
        s.upstream.url = v;
    }
    if let Some((v, origin)) = env.get_with_origin("WARDEN_UPSTREAM_API") {
        s.upstream.api = match v.trim() {
            "chat" => UpstreamApi::Chat,
            "responses" => UpstreamApi::Responses,
            "anthropic" => UpstreamApi::Anthropic,
            _ => {
                return Err(bad(
                    "WARDEN_UPSTREAM_API",
                    origin,
                    format!("{v:?} must be \"chat\", \"responses\" or \"anthropic\""),
                ));
            }
        };
    }
    for (name, field) in FEATURE_VARS {
        for prefix in ["WARDEN_", "CHATMOCK_"] {
            let var = format!("{prefix}{name}");
            if let Some((v, origin)) = env.get_with_origin(&var) {
                *field(&mut s.features) = parse_bool(&v).ok_or_else(|| {
                    bad(
                        &var,
                        origin,
                        format!("{v:?} is not a boolean (true/false, 1/0, yes/no, on/off)"),
                    )
                })?;
                break;
            }
        }
    }
    Ok(())
}

/// `apply_env`'s view of the variables: only those `ENV_OVERRIDES` lists.
struct ListedVars<'a>(&'a EnvSource);

impl ListedVars<'_> {
    fn get_with_origin(&self, var: &str) -> Option<(String, VarOrigin)> {
        debug_assert!(
            ENV_OVERRIDES.iter().any(|(v, _)| *v == var),
            "{var} overrides a key but is not in ENV_OVERRIDES (add it, and to docs/configuration.md)"
        );
        self.0.get_with_origin(var)
    }
}

impl Overrides {
    /// Puts the command-line values over `s` (also how `preflight` fills in the
    /// defaults it checks with when the configuration did not load).
    pub fn apply_to(&self, s: &mut Settings) {
        if let Some(host) = &self.host {
            s.server.host = host.clone();
        }
        if let Some(port) = self.port {
            s.server.port = port;
        }
        if let Some(url) = &self.upstream_url {
            s.upstream.url = url.clone();
        }
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        parse_settings(text, Path::new("/h/warden.toml"))
    }

    #[test]
    fn a_duplicate_key_names_its_table_and_its_first_line() {
        let err = parse("[server]\nport = 1\nhost = \"127.0.0.1\"\n\n[logs]\nmax_bytes = 5\n\n[server]\nport = 2\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("the table [server] is defined twice, first at line 1"),
            "{text}"
        );
        let err = parse("[server]\nport = 1\nhost = \"127.0.0.1\"\nport = 2\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`port` in [server] was already defined at line 2")
                && text.contains(":4:"),
            "{text}"
        );
    }

    #[test]
    fn a_wrong_number_says_what_it_counts() {
        let text = parse("[logs]\nmax_bytes = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(text.contains("a whole number of bytes"), "{text}");
        assert!(!text.contains("seconds"), "{text}");
        let text = parse("[server]\ngraceful_timeout = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(text.contains("a whole number of seconds"), "{text}");
        assert!(!text.contains("bytes"), "{text}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.server.port, 8000);
        assert_eq!(s.upstream.url, "mock");
        assert_eq!(s.prompts.sources.len(), 2);
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let err = parse("[server]\nport = 8001\nprot = 1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/h/warden.toml:3:"), "{text}");
        assert!(text.contains("prot"), "{text}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = parse("[server]\nport = \"eighty\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.port"), "{err}");
        assert_eq!(err.line_col.map(|l| l.0), Some(2), "{err}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("[server\nport = 1\n").unwrap_err();
        assert_eq!(err.line_col.map(|l| l.0), Some(1), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let home = Home::at("/nonexistent-warden-home");
        let env = EnvSource::from_pairs([("WARDEN_PORT", "99999")]);
        let err = Config::load_with_env(&home, &Overrides::default(), env).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("WARDEN_PORT"), "{err}");
    }

    #[test]
    fn precedence_flags_then_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        std::fs::write(
            home.config_file(),
            "[server]\nport = 1111\nhost = \"127.0.0.2\"\n",
        )
        .unwrap();
        let env = EnvSource::from_pairs([("WARDEN_PORT", "2222"), ("CHATMOCK_VERBOSE", "1")]);
        let cfg = Config::load_with_env(&home, &Overrides::default(), env.clone()).unwrap();
        assert_eq!(cfg.server.port, 2222);
        assert_eq!(cfg.server.host, "127.0.0.2");
        assert!(cfg.features.verbose);
        let flags = Overrides {
            port: Some(3333),
            ..Default::default()
        };
        let cfg = Config::load_with_env(&home, &flags, env).unwrap();
        assert_eq!(cfg.server.port, 3333);
    }

    #[test]
    fn nats_is_off_by_default_and_bad_values_name_the_key() {
        let s = parse("").unwrap();
        assert!(!s.nats.enabled());
        assert_eq!(s.logs.target, LogTarget::File);
        let s = parse(
            "[nats]\nurl = \"nats://u:p@10.0.0.1, nats://h2:4333\"\n[logs]\ntarget = \"stdout\"\n",
        )
        .unwrap();
        assert!(s.nats.enabled());
        assert_eq!(s.nats.addresses(), ["10.0.0.1:4222", "h2:4333"]);
        assert_eq!(s.logs.target, LogTarget::Stdout);
        for (text, key) in [
            ("[nats]\nsubject = \"a.*\"\n", "nats.subject"),
            ("[nats]\nsubject = \"a..b\"\n", "nats.subject"),
            ("[nats]\nqueue = \"\"\n", "nats.queue"),
            ("[nats]\nstream = \"a.b\"\n", "nats.stream"),
            ("[nats]\nurl = \"http://x:1\"\n", "nats.url"),
            ("[keys]\nshared = true\n", "keys.shared"),
            (
                "[nats]\ntoken_env = \"T\"\ncredentials_file = \"/x.creds\"\n",
                "nats.credentials_file",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let home = Home::at(dir.path());
            std::fs::write(home.config_file(), text).unwrap();
            let err = Config::load_with_env(&home, &Overrides::default(), EnvSource::default())
                .unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
        }
        let err = parse("[logs]\ntarget = \"syslog\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("logs.target"), "{err}");
    }

    #[test]
    fn command_providers_are_checked_naming_the_key() {
        let p = "[[providers]]\nname = \"c\"\napi = \"command\"\n";
        for (text, key, says) in [
            (p.to_string(), "providers[0].preset", "missing"),
            (
                format!("{p}preset = \"claude\"\n"),
                "providers[0].preset",
                "unknown variant",
            ),
            (
                format!("{p}preset = \"codex\"\nurl = \"mock\"\n"),
                "providers[0].url",
                "remove url",
            ),
            (
                format!("{p}preset = \"codex\"\ncommand = [\"x\"]\n"),
                "providers[0].command",
                "not both",
            ),
            (
                format!("{p}preset = \"codex\"\nformat = \"text\"\n"),
                "providers[0].format",
                "own output format",
            ),
            (
                format!("{p}command = []\n"),
                "providers[0].command",
                "program",
            ),
            (
                format!("{p}command = [\"x\"]\nformat = \"json\"\n"),
                "providers[0].format",
                "unknown variant",
            ),
            (
                format!("{p}preset = \"codex\"\nmodels = []\n"),
                "providers[0].models",
                "cannot discover",
            ),
            (
                format!("{p}preset = \"codex\"\nenv = [\"A-B\"]\n"),
                "providers[0].env",
                "not a variable name",
            ),
            (
                format!("{p}preset = \"codex\"\npassthrough = true\n"),
                "providers[0].passthrough",
                "chat only",
            ),
            (
                format!("{p}preset = \"codex\"\napi_key_env = \"K\"\n"),
                "providers[0].api_key_env",
                "env",
            ),
            (
                "[[providers]]\nname = \"h\"\nurl = \"mock\"\npreset = \"codex\"\n".to_string(),
                "providers[0].preset",
                "only an api = \"command\" provider",
            ),
            (
                "[[providers]]\nname = \"h\"\n".to_string(),
                "providers[0].url",
                "missing",
            ),
            (
                "[upstream]\napi = \"command\"\n".to_string(),
                "upstream.api",
                "[[providers]]",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let home = Home::at(dir.path());
            std::fs::write(home.config_file(), &text).unwrap();
            let err = Config::load_with_env(&home, &Overrides::default(), EnvSource::default())
                .unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
            assert!(err.message.contains(says), "{text}: {err}");
            assert!(err.to_string().contains("warden.toml"), "{err}");
        }
        // A serde error (an unknown preset) also has its line.
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        std::fs::write(
            home.config_file(),
            "[[providers]]\nname = \"c\"\napi = \"command\"\npreset = \"nope\"\n",
        )
        .unwrap();
        let err =
            Config::load_with_env(&home, &Overrides::default(), EnvSource::default()).unwrap_err();
        assert_eq!(err.line_col.map(|(l, _)| l), Some(4), "{err}");
        // A good one.
        std::fs::write(home.config_file(), "[[providers]]\nname = \"c\"\napi = \"command\"\npreset = \"claude-code\"\nmodels = [\"claude-code\"]\nenv = [\"ANTHROPIC_BASE_URL\"]\nmax_concurrent = 2\ntimeout = 60\n").unwrap();
        let config =
            Config::load_with_env(&home, &Overrides::default(), EnvSource::default()).unwrap();
        let settings = config.provider_settings().remove(0);
        let command = settings.command.unwrap();
        assert_eq!(command.preset, Some(CommandPreset::ClaudeCode));
        assert_eq!(command.env, ["ANTHROPIC_BASE_URL"]);
        assert_eq!(settings.max_concurrent, Some(2));
    }

    #[test]
    fn numbers_out_of_range_name_the_key() {
        for (text, key) in [
            (
                "[server]\nmax_concurrent = 2305843009213693952\n",
                "server.max_concurrent",
            ),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            ("[server]\nheader_timeout = 0\n", "server.header_timeout"),
            (
                "[upstream]\nmax_event_bytes = 0\n",
                "upstream.max_event_bytes",
            ),
            (
                "[upstream]\nidle_timeout = 18446744073709551615\n",
                "upstream.idle_timeout",
            ),
            ("[watchdog]\nstrikes = 0\n", "watchdog.strikes"),
            ("[nats]\nmax_concurrent = 0\n", "nats.max_concurrent"),
            ("[nats]\nmax_concurrent = 100001\n", "nats.max_concurrent"),
            ("[nats]\nack_wait = 0\n", "nats.ack_wait"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let home = Home::at(dir.path());
            std::fs::write(home.config_file(), text).unwrap();
            let err = Config::load_with_env(&home, &Overrides::default(), EnvSource::default())
                .unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
            assert!(err.message.contains("out of range"), "{err}");
        }
    }

    #[test]
    fn max_body_memory_must_hold_one_whole_body() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let load = |text: &str| {
            std::fs::write(home.config_file(), text).unwrap();
            Config::load_with_env(&home, &Overrides::default(), EnvSource::default())
        };
        let err = load("[server]\nmax_body_memory = 1000\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("server.max_body_memory"), "{err}");
        assert!(
            err.message.contains("server.max_body_bytes (10485760)"),
            "{err}"
        );
        let ok = load("[server]\nmax_body_memory = 1000\nmax_body_bytes = 1000\n").unwrap();
        assert_eq!(ok.server.max_body_memory, 1000);
        let default = load("").unwrap();
        assert_eq!(default.server.max_body_memory, 64 << 20);
    }

    #[test]
    fn warden_variable_beats_chatmock_alias() {
        let home = Home::at("/nonexistent-warden-home");
        let env = EnvSource::from_pairs([
            ("WARDEN_EXPOSE_REASONING", "false"),
            ("CHATMOCK_EXPOSE_REASONING", "true"),
        ]);
        let cfg = Config::load_with_env(&home, &Overrides::default(), env).unwrap();
        assert!(!cfg.features.expose_reasoning);
    }

    /// Each listed variable really sets its key, and nothing else.
    #[test]
    fn every_listed_variable_overrides_its_key() {
        let home = Home::at("/nonexistent-warden-home");
        let defaults = serde_json::to_value(Settings::default()).unwrap();
        let lookup =
            |v: &serde_json::Value, key: &str| key.split('.').fold(v.clone(), |v, k| v[k].clone());
        for (var, key) in ENV_OVERRIDES {
            let applied = [
                "127.0.0.2",
                "8123",
                "http://127.0.0.1:9/v1",
                "responses",
                "nats://127.0.0.1:4222",
                "true",
                "false",
            ]
            .iter()
            .find_map(|value| {
                let env = EnvSource::from_pairs([(*var, *value)]);
                let cfg = Config::load_with_env(&home, &Overrides::default(), env).ok()?;
                let got = serde_json::to_value(&cfg.settings).unwrap();
                (lookup(&got, key) != lookup(&defaults, key)).then_some(got)
            })
            .unwrap_or_else(|| panic!("{var} does not change {key}"));
            let mut expected = defaults.clone();
            let mut slot = &mut expected;
            for k in key.split('.') {
                slot = &mut slot[k];
            }
            *slot = lookup(&applied, key);
            assert_eq!(applied, expected, "{var} changes more than {key}");
        }
    }

    #[test]
    fn upstream_api_anthropic_from_file_and_env() {
        let s = parse("[upstream]\napi = \"anthropic\"\n").unwrap();
        assert_eq!(s.upstream.api, UpstreamApi::Anthropic);
        let home = Home::at("/nonexistent-warden-home");
        let env = EnvSource::from_pairs([("WARDEN_UPSTREAM_API", "anthropic")]);
        let cfg = Config::load_with_env(&home, &Overrides::default(), env).unwrap();
        assert_eq!(cfg.upstream.api.as_str(), "anthropic");
        let env = EnvSource::from_pairs([("WARDEN_UPSTREAM_API", "claude")]);
        let err = Config::load_with_env(&home, &Overrides::default(), env).unwrap_err();
        assert!(err.to_string().contains("\"anthropic\""), "{err}");
    }
}
