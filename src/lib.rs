//! warden keeps a local OpenAI-compatible LLM gateway running and honest.
//!
//! One library, five thin binaries (`src/bin/`): `proxy` (the gateway), `daemon`,
//! `preflight`, `doctor` and `watchdog`. Each concern lives in one module so a
//! newcomer can guess the file: configuration in [`config`], the home directory
//! layout in [`home`], and so on. `shared/SPEC.md` is the external contract.

pub mod atomic_file;
pub mod checks;
pub mod cli;
pub mod config;
pub mod env;
pub mod fixes;
pub mod gateway;
pub mod handoff;
pub mod health;
pub mod home;
pub mod http_client;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod openai;
pub mod pidfile;
pub mod ports;
pub mod process;
pub mod prompts;
pub mod prompts_cmd;
pub mod responses_api;
pub mod server;
pub mod sse;
pub mod supervisor;
pub mod systemd;
pub mod templates;
pub mod upstream;
pub mod watchdog;

/// The toolkit's version, printed by every binary's `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
