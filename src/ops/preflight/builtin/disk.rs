//! `disk`: is there room for logs and the prompt cache where the home lives?

use super::Context;
use crate::ops::preflight::{Outcome, Status};

/// Free space below this fails `disk`.
pub const DISK_FAIL_BYTES: u64 = 100 * 1024 * 1024;
/// Free space below this warns in `disk`.
pub const DISK_WARN_BYTES: u64 = 1024 * 1024 * 1024;

/// `1.5 GiB`, `87 MiB`, `512 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.0} MiB", b / (KIB * KIB))
    } else {
        format!("{:.0} KiB", b / KIB)
    }
}

/// The status for `free` bytes: fail under 100 MiB, warn under 1 GiB.
pub fn disk_status(free: u64) -> Status {
    if free < DISK_FAIL_BYTES {
        Status::Fail
    } else if free < DISK_WARN_BYTES {
        Status::Warn
    } else {
        Status::Pass
    }
}

pub(super) fn check_disk(ctx: &Context) -> Outcome {
    // The home may not exist yet: measure the filesystem it will be created on.
    let mut path = ctx.home.root();
    while !path.exists() {
        match path.parent() {
            Some(parent) => path = parent,
            None => break,
        }
    }
    let stat = match nix::sys::statvfs::statvfs(path) {
        Ok(stat) => stat,
        Err(e) => return Outcome::fail(format!("statvfs {}: {e}", path.display())),
    };
    let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
    let status = disk_status(free);
    let message = format!(
        "{} free on the filesystem of {}{}",
        human_bytes(free),
        path.display(),
        match status {
            Status::Fail => " (needs at least 100 MiB)",
            Status::Warn => " (under 1 GiB)",
            _ => "",
        }
    );
    Outcome {
        status,
        message,
        hint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_thresholds() {
        assert_eq!(disk_status(50 * 1024 * 1024), Status::Fail);
        assert_eq!(disk_status(500 * 1024 * 1024), Status::Warn);
        assert_eq!(disk_status(2 * 1024 * 1024 * 1024), Status::Pass);
        assert_eq!(human_bytes(1536 * 1024 * 1024), "1.5 GiB");
        assert_eq!(human_bytes(87 * 1024 * 1024), "87 MiB");
    }
}
