//! `binary`: is there a `proxy` binary of this very version?

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::last_line;
use crate::ops::preflight::Outcome;

/// No `proxy` binary beside the running one (in `beside`, when known) nor on PATH.
#[derive(Debug, thiserror::Error)]
#[error(
    "no `proxy` binary {}and none on PATH",
    beside.as_ref().map(|d| format!("in {} ", d.display())).unwrap_or_default()
)]
pub struct ProxyNotFound {
    /// The folder of the running executable.
    pub beside: Option<PathBuf>,
}

/// Where the `proxy` binary is: next to the running executable first (an
/// installed toolkit keeps its five binaries together), then on PATH.
pub fn find_proxy() -> Result<PathBuf, ProxyNotFound> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("proxy")));
    if let Some(path) = &beside {
        if is_executable_file(path) {
            return Ok(path.clone());
        }
    }
    which::which("proxy").map_err(|_| ProxyNotFound {
        beside: beside
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf),
    })
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub(super) async fn check_binary() -> Outcome {
    let path = match find_proxy() {
        Ok(path) => path,
        Err(e) => return Outcome::fail(e.to_string()),
    };
    // `kill_on_drop`: if the harness timeout fires, the child we started is killed.
    let output = tokio::process::Command::new(&path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let output = match output {
        Ok(output) => output,
        Err(e) => return Outcome::fail(format!("cannot run {} --version: {e}", path.display())),
    };
    let expected = format!("proxy {}", crate::VERSION);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let got = stdout.lines().next().unwrap_or("").trim();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Outcome::fail(format!(
            "{} --version exited with {}{}",
            path.display(),
            output.status,
            last_line(&stderr)
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ));
    }
    if got != expected {
        return Outcome::fail(format!(
            "{} --version printed {got:?}, expected {expected:?}",
            path.display()
        ))
        .with_hint(format!(
            "{} is from another build; install proxy and preflight from the same release",
            path.display()
        ));
    }
    Outcome::pass(format!("{} is {expected}", path.display()))
}
