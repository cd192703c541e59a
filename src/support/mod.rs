//! Small pieces every part uses: the flags all binaries share, the exit codes, log
//! writing, the one configured HTTP client builder, the clock, this process's memory
//! and the redaction of secrets and client strings in every output (plus, in debug
//! builds only, the fault-injection hooks of the integration tests).

pub(crate) mod backoff;
pub mod cli;
pub mod exit;
pub mod http_client;
pub(crate) mod logging;
pub(crate) mod memory;
pub mod redact;
#[cfg(debug_assertions)]
pub mod test_hooks;
pub(crate) mod time;
