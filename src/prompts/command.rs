//! `proxy prompts status|refresh|clear [--json]`: the prompt cache from the
//! command line. It works on the home's `cache/prompts/` directly, so it needs no
//! running proxy (and does not disturb one: writes are atomic).
//!
//! - `status`: what each prompt would be served from, judged from the disk
//!   ([`crate::prompts::disk_status`]); no network. Exit 0.
//! - `refresh`: fetches every prompt now (ignoring its age) and caches what
//!   arrives. Exit 0 when all were refreshed, 1 when a fetch failed for any.
//! - `clear`: deletes the cached prompts and `metadata.json`. Exit 0, or 1 when a
//!   file could not be removed.
//!
//! A running proxy keeps serving its in-memory copy: it notices a refreshed copy
//! on disk when its own expires, and forgets a cleared one only on restart.

use std::io::Write;

use serde_json::json;

use crate::home::config::Config;
use crate::prompts::{PromptStatus, PromptStore, RefreshResult, disk_status};
use crate::support::exit;

/// What to do with the prompt cache.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptsAction {
    /// Show where each prompt would be served from, its age and digest
    Status,
    /// Fetch every prompt now and cache it (exit 1 if any fetch failed)
    Refresh,
    /// Delete the cached prompts and their metadata
    Clear,
}

/// Runs one action, printing to `out` (human text, or one JSON document with
/// `json`). Returns the exit code.
pub fn run(config: &Config, action: PromptsAction, json: bool, out: &mut dyn Write) -> i32 {
    let result = match action {
        PromptsAction::Status => status(config, json, out),
        PromptsAction::Refresh => refresh(config, json, out),
        PromptsAction::Clear => clear(config, json, out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proxy prompts: cannot write the output: {e}");
            exit::FAILED
        }
    }
}

fn cache_dir(config: &Config) -> String {
    config.home.prompts_cache_dir().display().to_string()
}

fn status(config: &Config, json: bool, out: &mut dyn Write) -> std::io::Result<i32> {
    let statuses = disk_status(&config.home, &config.prompts);
    if json {
        let doc = json!({
            "home": config.home.root().display().to_string(),
            "cache_dir": cache_dir(config),
            "ttl_secs": config.prompts.ttl,
            "prompts": statuses,
        });
        writeln!(out, "{doc}")?;
        return Ok(0);
    }
    writeln!(
        out,
        "prompt cache {} (ttl {})",
        cache_dir(config),
        human_secs(config.prompts.ttl as f64)
    )?;
    if statuses.is_empty() {
        writeln!(out, "  no [[prompts.source]] is configured")?;
    }
    let width = statuses.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &statuses {
        writeln!(out, "  {:width$}  {}", s.name, describe(s))?;
        writeln!(out, "  {:width$}  url {}", "", s.url)?;
        if let Some(problem) = &s.problem {
            writeln!(out, "  {:width$}  problem: {problem}", "")?;
        }
    }
    Ok(0)
}

/// One line: the source and what the operator wants to know about it.
fn describe(s: &PromptStatus) -> String {
    let mut text = format!("{:<11}", s.source.as_str());
    if let Some(age) = s.age_secs {
        text.push_str(&format!(
            " age {} ({})",
            human_secs(age),
            if s.fresh { "fresh" } else { "expired" }
        ));
    } else {
        text.push_str(" no cached copy");
    }
    if let Some(sha) = &s.sha256 {
        text.push_str(&format!("  sha256 {}", &sha[..sha.len().min(12)]));
    }
    text
}

fn human_secs(secs: f64) -> String {
    let whole = std::time::Duration::from_secs(secs.max(0.0).round() as u64);
    if whole.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(whole).to_string()
}

fn refresh(config: &Config, json: bool, out: &mut dyn Write) -> std::io::Result<i32> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxy prompts: cannot start the async runtime: {e}");
            return Ok(1);
        }
    };
    let store = PromptStore::new(&config.home, &config.prompts);
    let outcomes = runtime.block_on(store.refresh(true));
    let ok = outcomes.iter().all(|o| o.is_ok());
    if json {
        let doc = json!({
            "ok": ok,
            "cache_dir": cache_dir(config),
            "prompts": outcomes,
        });
        writeln!(out, "{doc}")?;
    } else {
        let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0);
        for o in &outcomes {
            let what = match &o.result {
                RefreshResult::Updated { sha256, bytes } => format!(
                    "updated ({bytes} bytes, sha256 {})",
                    &sha256[..sha256.len().min(12)]
                ),
                RefreshResult::NotModified => "not modified (kept the cached copy)".into(),
                RefreshResult::StillFresh { age_secs } => {
                    format!("still fresh (age {})", human_secs(*age_secs))
                }
                RefreshResult::Failed { error } => format!("FAILED: {error}"),
            };
            writeln!(out, "{:width$}  {what}", o.name)?;
        }
        if !ok {
            writeln!(
                out,
                "some prompts could not be fetched; the proxy serves them from the fallback chain \
                 (expired cache, local file, built-in text)"
            )?;
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn clear(config: &Config, json: bool, out: &mut dyn Write) -> std::io::Result<i32> {
    let store = PromptStore::new(&config.home, &config.prompts);
    match store.clear() {
        Ok(removed) => {
            if json {
                let doc = json!({"ok": true, "cache_dir": cache_dir(config), "removed": removed});
                writeln!(out, "{doc}")?;
            } else {
                writeln!(
                    out,
                    "removed {removed} file{} from {}",
                    if removed == 1 { "" } else { "s" },
                    cache_dir(config)
                )?;
            }
            Ok(0)
        }
        Err(e) => {
            if json {
                let doc =
                    json!({"ok": false, "cache_dir": cache_dir(config), "error": e.to_string()});
                writeln!(out, "{doc}")?;
            } else {
                writeln!(out, "cannot clear the prompt cache: {e}")?;
            }
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_secs(0.2), "0s");
        assert_eq!(human_secs(3725.0), "1h 2m 5s");
    }

    #[test]
    fn status_without_a_cache_is_builtin() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::at(dir.path());
        let config = Config::defaults(&home);
        let mut out = Vec::new();
        assert_eq!(run(&config, PromptsAction::Status, true, &mut out), 0);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["prompts"][0]["name"], "base_instructions");
        assert_eq!(doc["prompts"][0]["source"], "builtin");
        let mut out = Vec::new();
        assert_eq!(run(&config, PromptsAction::Status, false, &mut out), 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("gpt5_codex_instructions  builtin"), "{text}");
        let mut out = Vec::new();
        assert_eq!(run(&config, PromptsAction::Clear, false, &mut out), 0);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("removed 0 files")
        );
    }
}
