//! `env`: does `.env` parse, is it private, and is the upstream's API key set
//! to something that is not a template placeholder?

use super::{Context, DotEnv};
use crate::ops::preflight::{Outcome, Status};

/// True for values copied from a template instead of a real key: `sk-...`,
/// `changeme`, `your-key-here`, `<your key>`, `sk-xxxx`.
pub fn looks_like_placeholder(value: &str) -> bool {
    let v = value
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .to_ascii_lowercase();
    const WORDS: &[&str] = &[
        "changeme",
        "change-me",
        "change_me",
        "replaceme",
        "replace-me",
        "replace_me",
        "your-key-here",
        "your_key_here",
        "your-api-key",
        "your_api_key",
        "your-api-key-here",
        "your_api_key_here",
        "placeholder",
        "todo",
        "xxx",
        "none",
        "null",
    ];
    if WORDS.contains(&v.as_str()) || v.contains("...") || v.contains('…') {
        return true;
    }
    if v.starts_with('<') && v.ends_with('>') {
        return true;
    }
    if v.contains("your") && v.contains("key") {
        return true;
    }
    let body = v.strip_prefix("sk-").unwrap_or(&v);
    body.is_empty() || body.chars().all(|c| matches!(c, 'x' | '*' | '-' | '_'))
}

pub(super) fn check_env(ctx: &Context) -> Outcome {
    let env_file = ctx.home.env_file();
    if let DotEnv::Broken(message) = &ctx.dotenv {
        return Outcome::fail(message.clone()).with_hint(format!(
            "fix that line of {}: one KEY=value per line, `#` for comments, quote values with spaces",
            env_file.display()
        ));
    }
    let mut status = Status::Pass;
    let mut messages = Vec::new();
    let mut hints = Vec::new();

    match ctx.dotenv {
        DotEnv::Parsed { mode } if mode & 0o077 != 0 => {
            status = status.worst(Status::Warn);
            messages.push(format!(
                "{} has mode {mode:04o}: group or others can read it",
                env_file.display()
            ));
            hints.push(format!(
                "`chmod 600 {}` (or run `doctor`, which tightens it)",
                env_file.display()
            ));
        }
        DotEnv::Parsed { mode } => {
            messages.push(format!("{} parses, mode {mode:04o}", env_file.display()))
        }
        _ => messages.push(format!("no {} (optional)", env_file.display())),
    }

    // Every provider's key (`[upstream]` alone is the one provider `default`).
    let shorthand = ctx.cfg.providers.is_empty();
    for provider in ctx.cfg.provider_settings() {
        let var = &provider.api_key_env;
        let who = ctx.provider_label(&provider);
        if provider.is_mock() {
            if shorthand {
                messages.push("upstream is mock: no API key needed".into());
            }
            continue;
        }
        if var.is_empty() {
            messages.push(format!("{who}: no key configured (api_key_env is empty)"));
            continue;
        }
        match ctx.cfg.env.get_with_origin(var) {
            None => {
                status = Status::Fail;
                messages.push(format!(
                    "{who} needs an API key but {var} is not set (looked in the environment and {})",
                    env_file.display()
                ));
                hints.push(format!(
                    "add `{var}=<your key>` to {} (mode 0600), or export it before starting",
                    env_file.display()
                ));
            }
            Some((value, origin)) if looks_like_placeholder(&value) => {
                status = Status::Fail;
                messages.push(format!(
                    "{var} (from {origin}) holds a template placeholder, not a key"
                ));
                hints.push(format!("put the real key in {var} in {origin}"));
            }
            Some((_, origin)) => messages.push(format!("{var} is set (from {origin})")),
        }
    }
    let mut outcome = Outcome {
        status,
        message: messages.join("; ") + ctx.defaults_note(),
        hint: None,
    };
    if !hints.is_empty() {
        outcome.hint = Some(hints.join("; "));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::preflight::builtin::test_context as ctx_for;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn placeholders_are_recognised_and_real_keys_are_not() {
        for v in [
            "sk-...",
            "changeme",
            "your-key-here",
            "<your key>",
            "sk-xxxxxxxx",
            "\"sk-your-key\"",
            "YOUR_API_KEY",
        ] {
            assert!(looks_like_placeholder(v), "{v}");
        }
        for v in ["sk-proj-4f9aKq2", "abcdef0123456789"] {
            assert!(!looks_like_placeholder(v), "{v}");
        }
    }

    #[test]
    fn env_mode_warns_and_missing_key_fails_without_printing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let env_path = dir.path().join(".env");
        std::fs::write(&env_path, "WARDEN_TEST_KEY_A=sk-realvalue123\n").unwrap();
        std::fs::set_permissions(&env_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(
            dir.path().join("warden.toml"),
            "[upstream]\nurl = \"http://127.0.0.1:9/v1\"\napi_key_env = \"WARDEN_TEST_KEY_A\"\n",
        )
        .unwrap();
        let outcome = check_env(&ctx_for(dir.path()));
        assert_eq!(outcome.status, Status::Warn, "{outcome:?}");
        assert!(outcome.message.contains("0644"), "{outcome:?}");
        assert!(!outcome.message.contains("realvalue"), "{outcome:?}");
        assert!(outcome.hint.unwrap().contains("chmod 600"));

        std::fs::write(&env_path, "WARDEN_TEST_KEY_A=changeme\n").unwrap();
        std::fs::set_permissions(&env_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let outcome = check_env(&ctx_for(dir.path()));
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(outcome.message.contains("placeholder"), "{outcome:?}");
        assert!(!outcome.message.contains("changeme"), "{outcome:?}");

        std::fs::write(&env_path, "OTHER=1\n").unwrap();
        let outcome = check_env(&ctx_for(dir.path()));
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(outcome.message.contains("WARDEN_TEST_KEY_A is not set"));
    }
}
