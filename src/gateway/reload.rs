//! Reloading the configuration while serving (docs/contract.md §17): SIGHUP, or `daemon
//! reload` through the control socket, re-reads `warden.toml` and `.env` (the
//! operator token and provider keys included) and puts new providers, routing,
//! aliases, limits and keys in place for new requests at once. A request in
//! flight keeps what it started with (see [`super::Live`]).
//!
//! The outcome has three answers, which are also `daemon reload`'s exit codes:
//! everything applied (0); what can change live applied, but some settings the
//! running process was built with (its address, NATS, connection limits, the
//! routes, the log format) differ and take effect at `daemon restart` (1, naming
//! them); or the new configuration has an error (2): nothing is applied, the
//! running configuration keeps serving, and the message names the file, key and
//! line. Each reload and its outcome is logged.

use std::sync::{Arc, Mutex};

use crate::home::config::{Config, ConfigError, Overrides};

use super::{Gateway, Live};

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything applied.
    Applied { providers: String },
    /// The live part applied; these settings changed but take effect only at
    /// `daemon restart`.
    NeedsRestart {
        providers: String,
        keys: Vec<String>,
    },
    /// The new configuration was refused; the running one keeps serving.
    Refused { error: String },
}

impl Outcome {
    /// `daemon reload`'s exit code: 0 applied, 1 needs a restart, 2 refused.
    pub fn code(&self) -> i32 {
        use crate::support::exit::reload;
        match self {
            Outcome::Applied { .. } => reload::APPLIED,
            Outcome::NeedsRestart { .. } => reload::NEEDS_RESTART,
            Outcome::Refused { .. } => reload::REFUSED,
        }
    }

    /// One sentence for the operator (and the log).
    pub fn message(&self) -> String {
        match self {
            Outcome::Applied { providers } => {
                format!(
                    "configuration reloaded and applied to new requests (providers: {providers})"
                )
            }
            Outcome::NeedsRestart { providers, keys } => format!(
                "configuration reloaded and applied to new requests (providers: {providers}), \
                 except {} — the running proxy was started with the old value; \
                 `daemon restart` applies it without refusing a request",
                keys.join(", ")
            ),
            Outcome::Refused { error } => format!(
                "configuration NOT reloaded: {error}; nothing was applied and the running \
                 configuration keeps serving — fix it and reload again"
            ),
        }
    }
}

/// Reloads one gateway; one reload at a time.
pub struct Reloader {
    gw: Arc<Gateway>,
    /// The command-line values the proxy started with: they still beat the files.
    overrides: Overrides,
    one_at_a_time: Mutex<()>,
}

impl Reloader {
    pub fn new(gw: Arc<Gateway>, overrides: Overrides) -> Arc<Reloader> {
        Arc::new(Reloader {
            gw,
            overrides,
            one_at_a_time: Mutex::new(()),
        })
    }

    /// Re-reads the home's configuration and applies it (see the module
    /// comment). Blocking (file reads); must run within the Tokio runtime (a
    /// blocking-pool thread is fine). Logs why it reloaded and the outcome.
    pub fn reload(&self, why: &str) -> Outcome {
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tracing::info!(cause = why, "reloading the configuration");
        let outcome = self.apply();
        match &outcome {
            Outcome::Refused { .. } => tracing::error!(
                outcome = "refused",
                code = outcome.code(),
                "{}",
                outcome.message()
            ),
            Outcome::NeedsRestart { .. } => tracing::warn!(
                outcome = "needs_restart",
                code = outcome.code(),
                "{}",
                outcome.message()
            ),
            Outcome::Applied { .. } => tracing::info!(
                outcome = "applied",
                code = outcome.code(),
                "{}",
                outcome.message()
            ),
        }
        outcome
    }

    fn apply(&self) -> Outcome {
        let gw = &self.gw;
        let refused = |error: String| Outcome::Refused { error };
        let next = match Config::load(&gw.config.home, &self.overrides) {
            Ok(next) => next,
            Err(e) => return refused(e.to_string()),
        };
        if let Err(e) = reload_keys(&next) {
            return refused(e.to_string());
        }
        let current = gw.live();
        // An unchanged limit keeps its semaphore, so requests in flight still count.
        let slots = (next.server.max_concurrent == current.config.server.max_concurrent)
            .then(|| current.slots.clone());
        let live = match Live::build(next, &gw.metrics, &gw.prompts, slots) {
            Ok(live) => live,
            Err(e) => {
                return refused(format!(
                    "{}: {}",
                    gw.config.home.config_file().display(),
                    crate::support::http_client::error_chain(&e)
                ));
            }
        };
        let keys = needs_restart(&gw.config, &live.config);
        let providers = live.router.summary();
        live.start_catalog();
        let old = gw.swap_live(Arc::new(live));
        old.stop_catalog();
        if keys.is_empty() {
            Outcome::Applied { providers }
        } else {
            Outcome::NeedsRestart { providers, keys }
        }
    }
}

/// The one place a reload reads the client keys (`keys.toml`, docs/keys.md): the
/// keys module plugs in here, and an error here refuses the whole reload like a
/// bad `warden.toml` does. Without that module there is nothing more to read.
fn reload_keys(config: &Config) -> Result<(), ConfigError> {
    let _ = config;
    Ok(())
}

/// The settings that differ between the configuration the process started
/// with and `next` but that a running process cannot change: what it was built
/// with at start (the listening address, connection limits, the routes, NATS,
/// the prompt cache, traces, the log's format and destination). Named `section.key`.
pub fn needs_restart(started: &Config, next: &Config) -> Vec<String> {
    /// Sections whose every key is fixed at start, but for the live ones listed.
    const FIXED: &[(&str, &[&str])] = &[
        (
            "server",
            &["max_concurrent", "default_model", "auth_token_env"],
        ),
        ("nats", &[]),
        ("prompts", &[]),
        // The tracer and its exporter are built at start.
        ("telemetry", &[]),
    ];
    /// Single keys fixed at start in sections that are otherwise live.
    const FIXED_KEYS: &[(&str, &str)] = &[
        ("features", "enable_responses_api"),
        ("features", "verbose"),
        ("logs", "format"),
        ("logs", "target"),
    ];
    let (Ok(old), Ok(new)) = (
        serde_json::to_value(&started.settings),
        serde_json::to_value(&next.settings),
    ) else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    for (section, live) in FIXED {
        let (Some(a), Some(b)) = (old[section].as_object(), new[section].as_object()) else {
            continue;
        };
        for (key, value) in a {
            if !live.contains(&key.as_str()) && b.get(key) != Some(value) {
                changed.push(format!("{section}.{key}"));
            }
        }
    }
    for (section, key) in FIXED_KEYS {
        if old[section][key] != new[section][key] {
            changed.push(format!("{section}.{key}"));
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::Home;

    fn config(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        std::fs::write(home.config_file(), toml).unwrap();
        let env = crate::home::env::EnvSource::from_pairs([]);
        Config::load_with_env(&home, &Overrides::default(), env).unwrap()
    }

    #[test]
    fn only_what_a_running_proxy_cannot_change_needs_a_restart() {
        let started = config("[server]\nport = 8000\n");
        let live = config(
            "[server]\nport = 8000\nmax_concurrent = 3\ndefault_model = \"m\"\n\
             [routing]\ncooldown = 9\n[aliases]\na = \"b\"\n[logs]\nmax_bytes = 1000\n",
        );
        assert!(needs_restart(&started, &live).is_empty());
        let fixed = config(
            "[server]\nport = 9000\nhost = \"127.0.0.2\"\n[nats]\nurl = \"nats://127.0.0.1:4222\"\n\
             [logs]\nformat = \"json\"\n",
        );
        assert_eq!(
            needs_restart(&started, &fixed),
            vec!["server.host", "server.port", "nats.url", "logs.format"]
        );
    }

    #[test]
    fn the_codes_are_those_of_daemon_reload() {
        let applied = Outcome::Applied {
            providers: "a=x".into(),
        };
        let partly = Outcome::NeedsRestart {
            providers: "a=x".into(),
            keys: vec!["server.port".into()],
        };
        let refused = Outcome::Refused {
            error: "warden.toml:3:1: bad".into(),
        };
        assert_eq!((applied.code(), partly.code(), refused.code()), (0, 1, 2));
        assert!(partly.message().contains("server.port"));
        assert!(partly.message().contains("daemon restart"));
        assert!(refused.message().contains("warden.toml:3:1: bad"));
    }
}
