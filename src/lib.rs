//! warden keeps a local OpenAI-compatible LLM gateway running and honest.
//!
//! One library, five thin binaries (`src/bin/`): `proxy` (the gateway), `daemon`,
//! `preflight`, `doctor` and `watchdog`. `docs/contract.md` is the external
//! contract; the rest of `docs/` is the user documentation.
//!
//! # Layout
//!
//! Each folder is one part; a module never imports a part listed above it here
//! except `support` and `home`, which everything may use.
//!
//! - [`gateway`]: the HTTP server `proxy` runs: routes, admission (auth, limits),
//!   observation (metrics, access log), `/health`, and running it as a process.
//! - [`tools`]: server tools (`[tools]`): declared tools offered to the model,
//!   run over NATS, the loop that calls the model again with their results.
//! - [`upstream`]: where requests go: the mock, Chat Completions and Responses
//!   upstreams, their HTTP client, retries and timeouts.
//! - [`telemetry`]: traces: OpenTelemetry spans of requests and provider
//!   attempts, W3C trace context in and out, the bounded OTLP/HTTP export.
//! - [`api`]: what gateway and upstreams share: OpenAI wire shapes, the Responses
//!   and Anthropic translations, SSE parsing, the `/health` report and the metrics.
//! - [`prompts`]: the prompt cache and its fallback chain, and `proxy prompts`.
//! - [`lifecycle`]: the proxy as a process: PID file, process identity, supervisor,
//!   socket hand-off, port holders, systemd, watchdog.
//! - [`ops`]: the operator tools, `preflight` checks and `doctor` fixes.
//! - [`keys`]: client keys, per-key limits and budgets, the usage ledger, and
//!   `proxy keys` / `proxy usage`; the gateway admits requests with it and
//!   `preflight` and `doctor` check its files.
//! - [`home`]: the home directory: layout, `warden.toml`, `.env`, templates, log
//!   files, atomic writes.
//! - [`support`]: shared flags, exit codes, log writing, the HTTP client builder,
//!   clock, memory.

pub mod api;
pub mod gateway;
pub mod home;
pub mod keys;
pub mod lifecycle;
pub mod ops;
pub mod prompts;
pub mod support;
pub mod telemetry;
pub mod tools;
pub mod upstream;

/// The toolkit's version, printed by every binary's `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
