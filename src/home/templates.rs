//! The files in the repository's `templates/` folder, compiled in.
//!
//! `doctor` writes [`ENV`] and [`WARDEN_TOML`] into a new home (`.env` at mode 0600);
//! the others are for operators to install (systemd, cron, logrotate, Kubernetes) and
//! are checked by `scripts/check-templates.sh`. The tests below keep `warden.toml`
//! honest: it parses with warden's own parser, equals the built-in defaults, and
//! mentions every key there is.

/// `templates/.env`: every variable warden reads, commented; secrets left empty.
pub const ENV: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/.env"));
/// `templates/warden.toml`: every key with its default and a one-line comment.
pub const WARDEN_TOML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/warden.toml"
));
/// `templates/warden-proxy.service`: systemd unit, `Type=notify` with `WatchdogSec=`.
pub const PROXY_SERVICE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/warden-proxy.service"
));
/// `templates/warden-watchdog.service`: systemd unit running warden's own watchdog.
pub const WATCHDOG_SERVICE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/warden-watchdog.service"
));
/// `templates/preflight.cron`: `preflight --json` on a schedule, and the Nagios line.
pub const PREFLIGHT_CRON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/preflight.cron"
));
/// `templates/logrotate.conf`: logrotate snippet (copytruncate).
pub const LOGROTATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/logrotate.conf"
));
/// `templates/kubernetes.yaml`: Deployment + Service with probes and scrape annotations.
pub const KUBERNETES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/templates/kubernetes.yaml"
));

/// Every template with its file name under `templates/`.
pub const ALL: [(&str, &str); 7] = [
    (".env", ENV),
    ("warden.toml", WARDEN_TOML),
    ("warden-proxy.service", PROXY_SERVICE),
    ("warden-watchdog.service", WATCHDOG_SERVICE),
    ("preflight.cron", PREFLIGHT_CRON),
    ("logrotate.conf", LOGROTATE),
    ("kubernetes.yaml", KUBERNETES),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::home::config::{Settings, parse_settings};
    use crate::home::env::EnvSource;

    fn as_json(settings: &Settings) -> serde_json::Value {
        serde_json::to_value(settings).unwrap()
    }

    #[test]
    fn warden_toml_template_parses_and_equals_the_defaults() {
        let parsed = parse_settings(WARDEN_TOML, Path::new("templates/warden.toml"))
            .unwrap_or_else(|e| panic!("templates/warden.toml does not parse: {e}"));
        assert_eq!(as_json(&parsed), as_json(&Settings::default()));
    }

    /// Dotted keys of a TOML value: tables recurse, arrays of tables recurse into their
    /// first element, everything else is a leaf.
    fn keys(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(&key, v, out);
                }
            }
            toml::Value::Array(items) if items.first().is_some_and(|v| v.is_table()) => {
                keys(prefix, &items[0], out)
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn warden_toml_template_mentions_every_key_in_spec_order() {
        // Defaults with every optional key filled in, so the serialised form has them all.
        let mut all = Settings::default();
        all.upstream.first_byte_timeout = Some(1);
        all.upstream.idle_timeout = Some(1);
        all.providers = vec![crate::home::config::ProviderConfig {
            name: "p".into(),
            url: "mock".into(),
            api: crate::home::config::UpstreamApi::Chat,
            api_key_env: String::new(),
            models: vec!["*".into()],
            priority: 0,
            weight: 1,
            max_concurrent: Some(1),
            connect_timeout: Some(1),
            first_byte_timeout: Some(1),
            idle_timeout: Some(1),
            timeout: Some(1),
            attempts: Some(1),
            preset: Some(crate::home::config::CommandPreset::ClaudeCode),
            command: Some(vec!["x".into()]),
            format: Some(crate::home::config::CommandFormat::Text),
            env: vec!["X".into()],
            passthrough: true,
        }];
        all.aliases.insert("fast".into(), "gpt-5-mini".into());
        all.prompts.sources[0].sha256 = vec!["0".repeat(64)];
        all.prompts.sources[0].file = Some(PathBuf::from("/x"));
        let mut expected = BTreeSet::new();
        keys("", &toml::Value::try_from(&all).unwrap(), &mut expected);
        assert!(expected.len() > 30, "{expected:?}");

        // What the template sets or shows commented out, per section.
        let mut section = String::new();
        let mut found = BTreeSet::new();
        let mut order = Vec::new();
        for line in WARDEN_TOML.lines() {
            let line = line.trim().trim_start_matches('#').trim();
            if let Some(name) = line.strip_prefix('[') {
                let name = name.trim_start_matches('[');
                section = name[..name.find(']').expect("closing ]")].to_string();
                let name = section.split('.').next().unwrap().to_string();
                if order.last() != Some(&name) {
                    order.push(name);
                }
                continue;
            }
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    found.insert(format!("{section}.{key}"));
                }
            }
        }
        let missing: Vec<_> = expected.difference(&found).collect();
        assert!(
            missing.is_empty(),
            "keys missing from templates/warden.toml: {missing:?}"
        );
        let unknown: Vec<_> = found.difference(&expected).collect();
        assert!(unknown.is_empty(), "keys warden does not know: {unknown:?}");
        assert_eq!(
            order,
            [
                "server",
                "upstream",
                "providers",
                "routing",
                "aliases",
                "prompts",
                "features",
                "daemon",
                "watchdog",
                "logs",
                "nats",
                "keys",
                "prices",
                "telemetry",
                "tools"
            ]
        );
    }

    #[test]
    fn env_template_parses_sets_nothing_and_names_every_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, ENV).unwrap();
        let env = EnvSource::load(&path).expect("templates/.env parses with dotenvy");
        assert!(env.has_dotenv());
        // Secrets are empty placeholders (empty counts as unset); everything else is
        // commented out, so a fresh .env changes nothing.
        let set: Vec<(String, String)> = dotenvy::from_path_iter(&path)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!set.is_empty());
        for (var, value) in &set {
            assert_eq!(
                value, "",
                "{var} must be empty or commented out in templates/.env"
            );
        }
        let defaults = Settings::default();
        for var in [
            defaults.upstream.api_key_env.as_str(),
            defaults.server.auth_token_env.as_str(),
            "WARDEN_HOST",
            "WARDEN_PORT",
            "WARDEN_UPSTREAM_URL",
            "WARDEN_UPSTREAM_API",
            "WARDEN_NATS_URL",
            "WARDEN_VERBOSE",
            "WARDEN_EXPOSE_REASONING",
            "WARDEN_ENABLE_WEB_SEARCH",
            "WARDEN_ENABLE_RESPONSES_API",
            "WARDEN_RESPONSES_NO_BASE_INSTRUCTIONS",
            "WARDEN_RESPONSES_ALWAYS_BASE_INSTRUCTIONS",
            "CHATMOCK_",
            "WARDEN_HOME",
            "RUST_LOG",
            "NO_COLOR",
        ] {
            assert!(ENV.contains(var), "templates/.env does not mention {var}");
        }
    }

    #[test]
    fn systemd_unit_has_the_notify_contract() {
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=30",
            "Restart=on-failure",
            "ExecStart=/usr/local/bin/proxy --home %S/warden",
            "KillSignal=SIGTERM",
            "StateDirectory=warden",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
        ] {
            assert!(
                PROXY_SERVICE.lines().any(|l| l.trim() == line),
                "warden-proxy.service lacks {line}"
            );
        }
        // systemd must wait out the whole drain before it SIGKILLs.
        let stop: u64 = PROXY_SERVICE
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("TimeoutStopSec=")
            .parse()
            .unwrap();
        assert!(stop > Settings::default().server.graceful_timeout);
        assert!(WATCHDOG_SERVICE.contains("ExecStart=/usr/local/bin/watchdog --home %S/warden"));
    }

    #[test]
    fn kubernetes_grace_period_outlasts_the_drain() {
        let grace: u64 = KUBERNETES
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .expect("terminationGracePeriodSeconds")
            .trim()
            .parse()
            .unwrap();
        assert!(grace > Settings::default().server.graceful_timeout);
        for needle in [
            "path: /health/live",
            "path: /health/ready",
            "prometheus.io/scrape: \"true\"",
            "value: \"0.0.0.0\"",
            "secretKeyRef",
        ] {
            assert!(
                KUBERNETES.contains(needle),
                "kubernetes.yaml lacks {needle}"
            );
        }
    }

    #[test]
    fn kubernetes_replicas_log_to_stdout_and_share_a_nats_queue() {
        let toml: String = KUBERNETES
            .lines()
            .skip_while(|l| l.trim() != "warden.toml: |")
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect();
        let settings = parse_settings(&toml, Path::new("kubernetes.yaml ConfigMap"))
            .unwrap_or_else(|e| panic!("the ConfigMap's warden.toml does not parse: {e}"));
        assert_eq!(settings.logs.target, crate::home::config::LogTarget::Stdout);
        assert_eq!(settings.nats.url, "nats://nats:4222");
        assert!(settings.nats.jetstream);
        for needle in [
            "replicas: 3",
            "subPath: warden.toml",
            "name: nats",
            "port: 4222",
        ] {
            assert!(
                KUBERNETES.contains(needle),
                "kubernetes.yaml lacks {needle}"
            );
        }
    }
}
