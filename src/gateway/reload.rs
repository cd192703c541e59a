//! Reloading the configuration while serving (docs/contract.md §17): SIGHUP, or `daemon
//! reload` through the control socket, re-reads `warden.toml`, `.env` (the
//! operator token and provider keys included) and `keys.toml`, and puts new
//! providers, routing, aliases, limits, `[keys]` settings, `[prices]`,
//! `[telemetry]` and the log's format and level in place for new requests at
//! once. A request in flight keeps what it started with: its [`super::Live`],
//! the prices it was admitted with, and the tracer its spans began on (the
//! old tracer's export task sends what is left and ends, off the request path).
//! Every part is built before anything is swapped, so a reload applies whole
//! or not at all; a request reads each part once, and nothing on the request
//! path waits for a reload.
//!
//! The outcome has three answers, which are also `daemon reload`'s exit codes:
//! everything applied (0); what can change live applied, but some settings the
//! running process was built with (its address, NATS, the routes and body
//! limits, the prompt cache, server tools, the ledger, the log's destination)
//! differ and take effect at `daemon restart` (1,
//! naming them); or the new configuration has an error (2): nothing is
//! applied, the running configuration keeps serving, and the message names the
//! file, key and line. Each reload is logged with its cause, what changed
//! (`section.key` names, never values) and its outcome.

use std::sync::{Arc, Mutex};

use crate::home::config::{Config, Overrides};

use super::{Gateway, Live};

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything applied; `changed` names what differs from before.
    Applied {
        providers: String,
        changed: Vec<String>,
    },
    /// The live part applied; `keys` changed but take effect only at
    /// `daemon restart`.
    NeedsRestart {
        providers: String,
        changed: Vec<String>,
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
            Outcome::Applied { providers, changed } => format!(
                "configuration reloaded and applied to new requests (changed: {}; providers: \
                 {providers})",
                named(changed)
            ),
            Outcome::NeedsRestart {
                providers,
                changed,
                keys,
            } => format!(
                "configuration reloaded and applied to new requests (changed: {}; providers: \
                 {providers}), except {} — the running proxy was started with the old value; \
                 `daemon restart` applies it without refusing a request",
                named(changed),
                keys.join(", ")
            ),
            Outcome::Refused { error } => format!(
                "configuration NOT reloaded: {error}; nothing was applied and the running \
                 configuration keeps serving — fix it and reload again"
            ),
        }
    }
}

/// The changed keys as a log line shows them.
fn named(changed: &[String]) -> String {
    if changed.is_empty() {
        "nothing".into()
    } else {
        changed.join(", ")
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
        if let Err(e) = crate::keys::Keys::check(&next) {
            return refused(e.to_string());
        }
        let current = gw.live();
        let changed = changed(&current.config, &next);
        // A new tracer only when `[telemetry]` changed (an unchanged one keeps
        // its queue and export task).
        let telemetry = if same(&current.config.telemetry, &next.telemetry) {
            None
        } else {
            match crate::telemetry::Telemetry::from_config(&next.telemetry, &gw.metrics) {
                Ok(telemetry) => Some(telemetry),
                Err(e) => return refused(e.to_string()),
            }
        };
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
        // Everything is built: from here on nothing fails.
        crate::support::logging::reconfigure(live.config.logs.format, live.config.features.verbose);
        gw.keys.reconfigure(&live.config);
        if let Some(telemetry) = telemetry {
            // The old tracer is dropped here or when its last span ends.
            drop(gw.swap_telemetry(telemetry));
        }
        live.start_catalog();
        let old = gw.swap_live(Arc::new(live));
        old.stop_catalog();
        if keys.is_empty() {
            Outcome::Applied { providers, changed }
        } else {
            Outcome::NeedsRestart {
                providers,
                changed,
                keys,
            }
        }
    }
}

/// Whether two settings are the same (as the file would write them).
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// What differs between `old` and `new`, as `section.key` (a list such as
/// `providers`, by its section), then `.env NAME` for each variable of `.env`
/// set, changed or removed (a rotated provider key, the operator token): names
/// only, never a value, so a reload's log line can say what changed without
/// showing a secret.
pub fn changed(old: &Config, new: &Config) -> Vec<String> {
    let mut names = settings_changed(old, new);
    names.extend(
        old.env
            .dotenv_changes(&new.env)
            .into_iter()
            .map(|name| format!(".env {name}")),
    );
    names
}

fn settings_changed(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) = (
        serde_json::to_value(&old.settings),
        serde_json::to_value(&new.settings),
    ) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let sections: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for section in sections {
        let (a, b) = (old.get(section), new.get(section));
        if a == b {
            continue;
        }
        match (a, b) {
            (Some(serde_json::Value::Object(a)), Some(serde_json::Value::Object(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    if a.get(key) != b.get(key) {
                        names.push(format!("{section}.{key}"));
                    }
                }
            }
            _ => names.push(section.clone()),
        }
    }
    names
}

/// The settings that differ between the configuration the process started
/// with and `next` but that a running process cannot change: what it was built
/// with at start (the listening address, the routes and body limits, NATS, the prompt cache, server tools, the usage
/// ledger, the log's destination). Named `section.key`; docs/upgrading.md
/// lists them.
pub fn needs_restart(started: &Config, next: &Config) -> Vec<String> {
    /// Sections whose every key is fixed at start, but for the live ones listed.
    const FIXED: &[(&str, &[&str])] = &[
        (
            "server",
            &[
                "max_concurrent",
                "default_model",
                "auth_token_env",
                "graceful_timeout",
                // Connections accepted from now on get them.
                "header_timeout",
                "body_timeout",
                "keepalive_timeout",
                "max_connections",
            ],
        ),
        ("nats", &[]),
        ("prompts", &[]),
        ("tools", &[]),
        // The ledger's writer and the shared counters are started once.
        (
            "keys",
            &["file", "require", "default_reservation", "fail_closed"],
        ),
    ];
    /// Single keys fixed at start in sections that are otherwise live.
    const FIXED_KEYS: &[(&str, &str)] = &[("features", "enable_responses_api"), ("logs", "target")];
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
             header_timeout = 3\nkeepalive_timeout = 4\nmax_connections = 50\n\
             [routing]\ncooldown = 9\n[aliases]\na = \"b\"\n\
             [logs]\nmax_bytes = 1000\nformat = \"json\"\n[features]\nverbose = true\n\
             [telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\ncapture_content = true\n\
             [keys]\nrequire = \"always\"\ndefault_reservation = 10\n\
             [prices]\n\"m\" = { input = 1.0, output = 2.0 }\n",
        );
        assert!(needs_restart(&started, &live).is_empty());
        assert_eq!(
            changed(&started, &live),
            vec![
                "aliases.a",
                "features.verbose",
                "keys.default_reservation",
                "keys.require",
                "logs.format",
                "logs.max_bytes",
                "prices.m",
                "routing.cooldown",
                "server.default_model",
                "server.header_timeout",
                "server.keepalive_timeout",
                "server.max_concurrent",
                "server.max_connections",
                "telemetry.capture_content",
                "telemetry.otlp_endpoint",
            ]
        );
        assert!(changed(&started, &started).is_empty());
        let fixed = config(
            "[server]\nport = 9000\nhost = \"127.0.0.2\"\n[nats]\nurl = \"nats://127.0.0.1:4222\"\n\
             [logs]\ntarget = \"stdout\"\n[keys]\nledger = \"other.db\"\n",
        );
        assert_eq!(
            needs_restart(&started, &fixed),
            vec![
                "server.host",
                "server.port",
                "nats.url",
                "keys.ledger",
                "logs.target"
            ]
        );
    }

    #[test]
    fn a_changed_env_variable_is_named_never_shown() {
        let load = |pairs: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            let home = Home::at(dir.path());
            let env = crate::home::env::EnvSource::from_pairs(pairs.iter().copied());
            Config::load_with_env(&home, &Overrides::default(), env).unwrap()
        };
        let old = load(&[("OPENAI_API_KEY", "sk-old-1"), ("GONE", "x"), ("SAME", "y")]);
        let new = load(&[
            ("OPENAI_API_KEY", "sk-new-2"),
            ("ADDED", "z"),
            ("SAME", "y"),
        ]);
        let names = changed(&old, &new);
        assert_eq!(
            names,
            vec![".env ADDED", ".env GONE", ".env OPENAI_API_KEY"]
        );
        assert!(!format!("{names:?}").contains("sk-"));
    }

    #[test]
    fn the_codes_are_those_of_daemon_reload() {
        let applied = Outcome::Applied {
            providers: "a=x".into(),
            changed: vec!["prices.m".into()],
        };
        let partly = Outcome::NeedsRestart {
            providers: "a=x".into(),
            changed: vec!["server.port".into()],
            keys: vec!["server.port".into()],
        };
        let refused = Outcome::Refused {
            error: "warden.toml:3:1: bad".into(),
        };
        assert_eq!((applied.code(), partly.code(), refused.code()), (0, 1, 2));
        assert!(applied.message().contains("changed: prices.m"));
        assert!(partly.message().contains("server.port"));
        assert!(partly.message().contains("daemon restart"));
        assert!(refused.message().contains("warden.toml:3:1: bad"));
    }
}
