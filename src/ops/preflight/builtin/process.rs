//! `process`: is the PID file sound, and does no proxy of this home run outside it?

use super::Context;
use crate::lifecycle::pidfile::{self, PidState};
use crate::ops::preflight::{Outcome, Status};

pub(super) fn check_process(ctx: &Context) -> Outcome {
    let pid_file = ctx.home.proxy_pid_file();
    let mut status = Status::Pass;
    let mut messages = Vec::new();
    let mut hints = Vec::new();
    match pidfile::inspect(&pid_file) {
        Ok(PidState::Absent) => messages.push(format!("no {}", pid_file.display())),
        Ok(PidState::Running(record)) => {
            messages.push(format!(
                "proxy running as PID {} (per {})",
                record.pid,
                pid_file.display()
            ));
        }
        Ok(PidState::Busy { problem, .. }) => {
            // Locked, so its owner is alive, but the content is not ours.
            status = status.worst(Status::Warn);
            messages.push(format!(
                "{} is locked by a live process but unreadable: {problem}",
                pid_file.display()
            ));
            hints.push(format!(
                "check which process holds it: `fuser {}`",
                pid_file.display()
            ));
        }
        Ok(PidState::Stale(record)) => {
            status = Status::Fail;
            // No process holds its lock, so its owner is gone, whatever runs under
            // the recorded PID today.
            let names = record
                .map(|r| format!(" (it names PID {})", r.pid))
                .unwrap_or_default();
            messages.push(format!(
                "stale PID file {}: no process holds its lock{names}",
                pid_file.display()
            ));
            hints.push(format!(
                "run `doctor --home {}` (removes stale PID files), or `rm {}`",
                ctx.home.root().display(),
                pid_file.display()
            ));
        }
        Err(e) => {
            status = Status::Fail;
            messages.push(format!("cannot inspect {}: {e}", pid_file.display()));
            hints.push(format!(
                "check the permissions of {}",
                ctx.home.run_dir().display()
            ));
        }
    }
    // Proxies of this home that the PID file does not name and that still serve.
    let orphans: Vec<String> = crate::lifecycle::supervisor::orphaned_proxies(&ctx.home)
        .into_iter()
        .map(|p| format!("PID {} ({})", p.pid, p.exe.display()))
        .collect();
    if orphans.is_empty() {
        messages.push("no orphaned proxy of this home".into());
    } else {
        status = Status::Fail;
        messages.push(format!(
            "proxy of this home running outside {}: {}",
            pid_file.display(),
            orphans.join(", ")
        ));
        hints.push(format!(
            "`doctor --home {} --yes` stops it (after checking it is this home's proxy), or stop it yourself",
            ctx.home.root().display()
        ));
    }
    Outcome {
        status,
        message: messages.join("; "),
        hint: (!hints.is_empty()).then(|| hints.join("; ")),
    }
}
