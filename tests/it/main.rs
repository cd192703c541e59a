//! Integration tests: the real binaries over real loopback sockets, each test
//! with its own temporary home and port 0, so they run in parallel. Tests of
//! request handling alone run the gateway in-process (`support::gateway`);
//! whatever needs a process (signals, PID files, logs, exit codes) the binaries.
//! One test crate (with modules) keeps link time down.
//!
//! libtest starts tests in the order of their names (8 at a time, see
//! `.cargo/config.toml`), so the module of the longest tests,
//! `concurrent_operators` (a time-bounded stress run, a lock wait, repeated
//! watchdog rounds), starts near the beginning instead of holding up the end.

// Helpers outside `#[test]` functions unwrap too: in a test, a failed unwrap is a
// failed test with its location, which is what an `expect` message would add.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is a test failure with its location"
)]

mod support;

mod agent_clis;
mod anthropic;
mod clients;
mod completions;
mod concurrent_operators;
mod config_reference;
mod daemon;
mod docs_check;
mod doctor;
mod embeddings;
mod home_only;
mod hostile;
mod keys;
mod keys_shared;
mod legacy_completions;
mod nats;
mod passthrough;
mod preflight;
mod prompts;
mod properties;
mod proxy;
mod reload;
mod responses;
mod routing;
mod safety_doc;
mod systemd;
mod tools;
mod traces;
mod ui;
mod upgrade;
mod watchdog;
