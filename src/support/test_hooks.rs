//! Fault-injection points for the integration tests, compiled into debug builds
//! only (`cfg(debug_assertions)`): a release binary has none of them and reads no
//! such variable.
//!
//! Why: some guarantees are about what happens in a window of a few milliseconds
//! (a successor killed after it took the PID file but before it was judged ready).
//! Racing a signal into that window is a test that passes or misses at random; a
//! hook that *holds* the process in the window makes the test deterministic.

use std::time::Duration;

/// `WARDEN_TEST_HOLD_AFTER_PID_FILE=PATH`: a successor proxy (`daemon restart`) that
/// has just taken `run/proxy.pid` writes its PID to `PATH` and waits there (at most
/// [`HOLD_AT_MOST`]) before it becomes ready, so a test can kill it in that state.
pub const HOLD_AFTER_PID_FILE: &str = "WARDEN_TEST_HOLD_AFTER_PID_FILE";

/// How long a held process waits before it carries on by itself: a test that never
/// comes leaves no process stuck for ever.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(60);

/// The hook itself: a no-op unless [`HOLD_AFTER_PID_FILE`] is set.
pub async fn hold_after_pid_file() {
    let Some(path) = std::env::var_os(HOLD_AFTER_PID_FILE) else {
        return;
    };
    let at = std::path::PathBuf::from(path);
    // Written to a temporary name, then renamed: the test never reads half a PID.
    let tmp = at.with_extension("tmp");
    if std::fs::write(&tmp, std::process::id().to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, &at);
    }
    tokio::time::sleep(HOLD_AT_MOST).await;
}
