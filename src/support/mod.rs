//! Small pieces every part uses: the flags all binaries share, the exit codes, log writing, the one
//! configured HTTP client builder, the clock and this process's memory.

pub mod cli;
pub mod exit;
pub mod http_client;
pub mod logging;
pub mod memory;
pub mod time;
