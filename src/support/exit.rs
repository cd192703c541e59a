//! Every exit code the five binaries end with, defined once. They are part of
//! the contract (docs/contract.md, "Exit codes"): scripts, cron, systemd and
//! Nagios read them, so no value here ever changes.
//!
//! Each binary's `main` turns its outcome into one of these in one place.

use std::process::ExitCode;

/// Done, and the answer is yes: the proxy drained, nothing failed or is left
/// broken, the proxy is healthy, the watchdog was stopped by a signal.
pub const OK: i32 = 0;
/// Done, and the answer is no: a check failed (`preflight`), something is left
/// broken (`doctor`), a `daemon` command failed, the `watchdog` gave up or
/// `--once` found the proxy unhealthy, the `proxy` failed while running.
pub const FAILED: i32 = 1;
/// Could not run: bad usage, no home directory, an unknown check id, another
/// watchdog for this home, a configuration error (`proxy`, `watchdog`).
pub const USAGE: i32 = 2;

/// `daemon status`, the LSB convention for a service's status.
pub mod status {
    /// Running and healthy.
    pub const RUNNING: i32 = 0;
    /// A PID file, but the process is gone.
    pub const DEAD: i32 = 1;
    /// Not running.
    pub const STOPPED: i32 = 3;
    /// Running but unhealthy.
    pub const UNHEALTHY: i32 = 4;
}

/// `daemon reload` (docs/contract.md §17); the proxy's answer to a reload carries the first three.
pub mod reload {
    /// Everything applied to new requests.
    pub const APPLIED: i32 = 0;
    /// What can change live applied; a setting named in the message needs `daemon restart`.
    pub const NEEDS_RESTART: i32 = 1;
    /// The new configuration has an error: nothing applied, the old one keeps serving.
    pub const REFUSED: i32 = 2;
    /// No proxy runs (as `daemon status`).
    pub const NOT_RUNNING: i32 = 3;
    /// The running proxy could not be asked (another operation held the home too
    /// long, or its control socket did not answer); nothing is known to have changed.
    pub const UNREACHABLE: i32 = 4;
}

/// `preflight --format nagios`, the Nagios plugin convention.
pub mod nagios {
    pub const OK: i32 = 0;
    pub const WARNING: i32 = 1;
    pub const CRITICAL: i32 = 2;
    /// Could not run (bad usage, no home).
    pub const UNKNOWN: i32 = 3;
}

/// Ends a binary on `error`: prints `binary: error: cause: …` (each cause once)
/// on stderr and returns `code`. Each binary's `main` calls this in one place,
/// after choosing the code for the error.
pub fn fail(binary: &str, error: &(dyn std::error::Error + 'static), code: i32) -> ExitCode {
    eprintln!(
        "{binary}: {}",
        crate::support::http_client::error_chain(error)
    );
    to_exit_code(code)
}

/// `code` as the process's exit status (a value outside 0–255 would be a bug:
/// it becomes [`FAILED`]).
pub fn to_exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(FAILED as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values scripts depend on (docs/contract.md): a change here is a breaking change.
    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!((OK, FAILED, USAGE), (0, 1, 2));
        assert_eq!(
            (
                status::RUNNING,
                status::DEAD,
                status::STOPPED,
                status::UNHEALTHY
            ),
            (0, 1, 3, 4)
        );
        assert_eq!(
            (
                nagios::OK,
                nagios::WARNING,
                nagios::CRITICAL,
                nagios::UNKNOWN
            ),
            (0, 1, 2, 3)
        );
        assert_eq!(to_exit_code(4), ExitCode::from(4));
        assert_eq!(to_exit_code(-1), ExitCode::from(1));
    }
}
