//! `dirs`: do the home's `logs/`, `run/` and `cache/` exist as directories?

use std::path::{Path, PathBuf};

use super::Context;
use crate::home::Home;
use crate::ops::preflight::Outcome;

/// `logs/` for a folder of the home, the full path otherwise.
pub(super) fn dir_label(home: &Home, dir: &Path) -> String {
    dir.strip_prefix(home.root())
        .map(|rel| format!("{}/", rel.display()))
        .unwrap_or_else(|_| dir.display().to_string())
}

pub(super) fn check_dirs(ctx: &Context) -> Outcome {
    let mut missing = Vec::new();
    let mut not_dirs = Vec::new();
    for dir in ctx.home.required_dirs() {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => not_dirs.push(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(dir),
            Err(e) => not_dirs.push(PathBuf::from(format!("{} ({e})", dir.display()))),
        }
    }
    let home = ctx.home.root().display();
    if missing.is_empty() && not_dirs.is_empty() {
        return Outcome::pass(format!("logs/, run/ and cache/ exist in {home}"));
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|d| dir_label(&ctx.home, d)).collect();
        parts.push(format!("missing in {home}: {}", names.join(", ")));
    }
    let mut outcome = Outcome::fail(String::new());
    if !not_dirs.is_empty() {
        let names: Vec<String> = not_dirs.iter().map(|d| d.display().to_string()).collect();
        parts.push(format!("not a directory: {}", names.join(", ")));
        outcome = outcome.with_hint(format!(
            "move the file(s) aside ({}), then run `doctor --home {home}`",
            names.join(", ")
        ));
    }
    outcome.message = parts.join("; ");
    outcome
}
