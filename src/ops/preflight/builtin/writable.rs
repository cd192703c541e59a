//! `writable`: can this user create (and remove) a file in each folder of the home?

use super::Context;
use super::dirs::dir_label;
use crate::ops::preflight::Outcome;

pub(super) fn check_writable(ctx: &Context) -> Outcome {
    let mut written = Vec::new();
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    for dir in ctx.home.required_dirs() {
        if !dir.is_dir() {
            missing.push(dir_label(&ctx.home, &dir));
            continue;
        }
        // Create and remove a temporary file: the same operations the proxy needs.
        let probe = tempfile::Builder::new()
            .prefix(".preflight-")
            .tempfile_in(&dir)
            .and_then(|file| file.close());
        match probe {
            Ok(()) => written.push(dir_label(&ctx.home, &dir)),
            Err(e) => problems.push(format!("{}: {e}", dir.display())),
        }
    }
    // data/ (the usage ledger) once it exists, and the ledger file itself.
    let data = ctx.home.data_dir();
    if data.is_dir() {
        let probe = tempfile::Builder::new()
            .prefix(".preflight-")
            .tempfile_in(&data)
            .and_then(|file| file.close());
        match probe {
            Ok(()) => written.push("data/".to_string()),
            Err(e) => problems.push(format!("{}: {e}", data.display())),
        }
    }
    let ledger = ctx.home.resolve_path(&ctx.cfg.keys.ledger);
    if ledger.is_file() {
        if let Err(e) = std::fs::OpenOptions::new().append(true).open(&ledger) {
            problems.push(format!("{} (the usage ledger): {e}", ledger.display()));
        }
    }
    if !problems.is_empty() {
        let uid = nix::unistd::Uid::effective();
        return Outcome::fail(format!(
            "cannot create a file in {} (running as uid {uid})",
            problems.join("; ")
        ));
    }
    if !missing.is_empty() {
        let mut message = format!("not checked: {} missing (see `dirs`)", missing.join(", "));
        if !written.is_empty() {
            message.push_str(&format!("; {} writable", written.join(", ")));
        }
        return Outcome::skip(message);
    }
    Outcome::pass(format!(
        "created and removed a file in {}",
        written.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::preflight::Status;
    use crate::ops::preflight::builtin::dirs::check_dirs;
    use crate::ops::preflight::builtin::test_context as ctx_for;

    #[test]
    fn dirs_and_writable() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx_for(dir.path());
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let outcome = check_dirs(&ctx);
        assert_eq!(outcome.status, Status::Fail);
        assert!(outcome.message.contains("run/") && outcome.message.contains("cache/"));
        assert_eq!(check_writable(&ctx).status, Status::Skip);
        ctx.home.ensure_dirs().unwrap();
        assert_eq!(check_dirs(&ctx).status, Status::Pass);
        assert_eq!(check_writable(&ctx).status, Status::Pass);
        // No probe file is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("run")).unwrap().count(),
            0
        );
    }
}
