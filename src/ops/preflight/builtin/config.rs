//! `config`: does `warden.toml` (with the environment) load?

use super::{Context, DotEnv};
use crate::ops::preflight::Outcome;

pub(super) fn check_config(ctx: &Context) -> Outcome {
    let path = ctx.home.config_file();
    if let Some(e) = &ctx.config_error {
        let hint = if let Some((line, _)) = e.line_col {
            format!(
                "edit {} line {line}{}; templates/warden.toml lists every key with its default",
                e.origin,
                e.key
                    .as_deref()
                    .map(|k| format!(" (key `{k}`)"))
                    .unwrap_or_default()
            )
        } else if e.origin == path.display().to_string() {
            match &e.key {
                Some(key) => format!(
                    "set `{key}` in {} to a valid value, or remove it to use the default",
                    e.origin
                ),
                None => format!("fix {} or move it aside to run on defaults", e.origin),
            }
        } else if let Some(key) = &e.key {
            format!("fix or unset the variable {key} (set in {})", e.origin)
        } else {
            ctx.expand("fix {config_file}")
        };
        return Outcome::fail(e.to_string()).with_hint(hint);
    }
    let mut message = if ctx.cfg.file_present {
        format!("{} is valid", path.display())
    } else {
        format!(
            "{} is absent: every key has its default (port {}, upstream {})",
            path.display(),
            ctx.cfg.server.port,
            ctx.upstream_text()
        )
    };
    // keys.toml: the client keys a proxy would load (docs/keys.md).
    let keys_path = ctx.home.resolve_path(&ctx.cfg.keys.file);
    match crate::keys::file::KeyFile::load(&keys_path) {
        Err(e) => {
            return Outcome::fail(e.to_string()).with_hint(format!(
                "fix {} at the line named, or move it aside and recreate the keys with `proxy keys create`",
                keys_path.display()
            ));
        }
        Ok(Some(file)) => {
            use std::os::unix::fs::PermissionsExt;
            message.push_str(&format!(
                "; {} holds {} key(s)",
                keys_path.display(),
                file.keys.len()
            ));
            let mode = std::fs::metadata(&keys_path).map_or(0o600, |m| m.permissions().mode());
            if mode & 0o077 != 0 {
                return Outcome::warn(format!(
                    "{message}; but it is readable by others (mode {:o})",
                    mode & 0o777
                ))
                .with_hint(format!(
                    "chmod 600 {} (or run `doctor`)",
                    keys_path.display()
                ));
            }
        }
        Ok(None) => {}
    }
    if !ctx.cfg.prices.is_empty() {
        message.push_str(&format!("; [prices] has {} model(s)", ctx.cfg.prices.len()));
    }
    if matches!(ctx.dotenv, DotEnv::Broken(_)) {
        message.push_str(
            "; variables from .env were not applied because it does not parse (see `env`)",
        );
    }
    Outcome::pass(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::preflight::Status;
    use crate::ops::preflight::builtin::env::check_env;
    use crate::ops::preflight::builtin::test_context as ctx_for;

    #[test]
    fn config_failure_names_line_and_others_fall_back_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("warden.toml"),
            "[server]\nport = 8001\nprot = 1\n",
        )
        .unwrap();
        let ctx = ctx_for(dir.path());
        let outcome = check_config(&ctx);
        assert_eq!(outcome.status, Status::Fail);
        assert!(outcome.message.contains("warden.toml:3:"), "{outcome:?}");
        assert!(outcome.hint.unwrap().contains("line 3"));
        assert_eq!(ctx.cfg.server.port, 8000, "defaults in effect");
        let env = check_env(&ctx);
        assert!(env.message.contains("built-in defaults"), "{env:?}");
    }
}
