//! The logic of the ten built-in checks; their ids, titles, timeouts and default
//! hints are declared in `checks/builtin.toml`.
//!
//! Every check reads the same [`Context`], loaded once per run: the home, the
//! effective configuration (or the defaults when it did not load) and what was
//! found in `.env`. Checks that touch the file system or `/proc` run on the
//! blocking pool; `binary`, `upstream` and `prompts` are asynchronous. Each check
//! is one file here, named after its id; this file holds the dispatcher, the
//! shared [`Context`] and the helpers several checks (and operator checks) use.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::home::Home;
use crate::home::config::{Config, ConfigError, Overrides, Settings};
use crate::home::env::EnvSource;

use super::{BuiltinSpec, Outcome, blocking};

mod binary;
mod config;
mod dirs;
mod disk;
mod env;
pub(crate) mod nats;
mod port;
mod process;
mod prompts;
mod telemetry;
mod upstream;
mod writable;

pub use disk::human_bytes;
pub use env::looks_like_placeholder;
pub use port::describe_holder;

/// The ids this module has logic for (a unit test compares them with
/// `checks/builtin.toml`).
#[cfg(test)]
pub const IDS_WITH_LOGIC: &[&str] = &[
    "config", "env", "binary", "dirs", "writable", "disk", "port", "process", "upstream", "prompts",
];

#[cfg(test)]
pub fn has_logic(id: &str) -> bool {
    IDS_WITH_LOGIC.contains(&id)
}

/// Runs the built-in check `id`. `started` is set when the check's own work
/// begins: for a blocking check, once a thread of the blocking pool runs it
/// (on a loaded host that can be long after it was asked for, see
/// [`super::run`]); for the others, at once.
pub(crate) async fn run(
    id: &str,
    ctx: Arc<Context>,
    started: Arc<std::sync::OnceLock<std::time::Instant>>,
) -> Outcome {
    let sync = |f: fn(&Context) -> Outcome| {
        let ctx = Arc::clone(&ctx);
        let started = started.clone();
        blocking(move || {
            let _ = started.set(std::time::Instant::now());
            f(&ctx)
        })
    };
    if !matches!(
        id,
        "config" | "env" | "dirs" | "writable" | "disk" | "port" | "process"
    ) {
        let _ = started.set(std::time::Instant::now());
    }
    match id {
        "config" => sync(config::check_config).await,
        "env" => sync(env::check_env).await,
        "binary" => binary::check_binary().await,
        "dirs" => sync(dirs::check_dirs).await,
        "writable" => sync(writable::check_writable).await,
        "disk" => sync(disk::check_disk).await,
        "port" => sync(port::check_port).await,
        "process" => sync(process::check_process).await,
        "upstream" => {
            let budget = ctx.cfg.upstream.connect_timeout();
            let nats = nats::check(&ctx.cfg.nats, budget).await;
            let collector = telemetry::check(&ctx.cfg.telemetry, budget).await;
            nats::combine(
                nats::combine(upstream::check_upstream(&ctx).await, nats),
                collector,
            )
        }
        "prompts" => prompts::check_prompts(ctx).await,
        other => Outcome::fail(format!("no logic for built-in check {other:?}")),
    }
}

/// Runs one of the checks that need neither the network nor a child process
/// (`config`, `env`, `dirs`, `writable`, `disk`, `port`, `process`) inline on
/// `ctx`: how `doctor` re-checks a home between its fixes. `None` for the others.
pub fn run_blocking(id: &str, ctx: &Context) -> Option<Outcome> {
    let check: fn(&Context) -> Outcome = match id {
        "config" => config::check_config,
        "env" => env::check_env,
        "dirs" => dirs::check_dirs,
        "writable" => writable::check_writable,
        "disk" => disk::check_disk,
        "port" => port::check_port,
        "process" => process::check_process,
        _ => return None,
    };
    Some(check(ctx))
}

/// What was found in the home's `.env`, without ever keeping a line's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DotEnv {
    Absent,
    /// It parses; `mode` is its permission bits.
    Parsed {
        mode: u32,
    },
    /// It does not parse or cannot be read: a message naming file and line.
    Broken(String),
}

impl DotEnv {
    pub fn read(path: &Path) -> DotEnv {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DotEnv::Absent,
            Err(e) => return DotEnv::Broken(format!("{}: cannot read: {e}", path.display())),
        };
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            match item {
                Ok(_) => {}
                Err(dotenvy::Error::LineParse(line, _)) => {
                    // The line's content is not shown: it may hold a secret.
                    return DotEnv::Broken(crate::support::redact::dotenv_line(path, &text, &line));
                }
                Err(e) => return DotEnv::Broken(format!("{}: {e}", path.display())),
            }
        }
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o600);
        DotEnv::Parsed { mode }
    }
}

/// Everything the built-in checks read, loaded once per run.
pub struct Context {
    pub home: Home,
    /// The configuration in effect: loaded, or the defaults when it did not load.
    pub cfg: Config,
    /// Why the configuration did not load.
    pub config_error: Option<ConfigError>,
    pub dotenv: DotEnv,
}

impl Context {
    pub fn load(home: &Home, overrides: &Overrides) -> Context {
        let env_path = home.env_file();
        let dotenv = DotEnv::read(&env_path);
        let env = match dotenv {
            DotEnv::Parsed { .. } => {
                EnvSource::load(&env_path).unwrap_or_else(|_| EnvSource::process_only())
            }
            DotEnv::Absent | DotEnv::Broken(_) => EnvSource::process_only(),
        };
        match Config::load_with_env(home, overrides, env.clone()) {
            Ok(cfg) => Context {
                home: home.clone(),
                cfg,
                config_error: None,
                dotenv,
            },
            Err(e) => {
                let mut settings = Settings::default();
                overrides.apply_to(&mut settings);
                Context {
                    home: home.clone(),
                    cfg: Config {
                        home: home.clone(),
                        settings,
                        env,
                        file_present: home.config_file().exists(),
                    },
                    config_error: Some(e),
                    dotenv,
                }
            }
        }
    }

    /// Appended to messages that depend on the configuration when it did not load.
    fn defaults_note(&self) -> &'static str {
        if self.config_error.is_some() {
            " (checked with the built-in defaults: the configuration did not load, see `config`)"
        } else {
            ""
        }
    }

    /// `host:port` as text, even when the host does not parse.
    fn addr_text(&self) -> String {
        match self.cfg.listen_addr() {
            Ok(addr) => addr.to_string(),
            Err(_) => format!("{}:{}", self.cfg.server.host, self.cfg.server.port),
        }
    }

    /// The upstream URL for messages, without any password in it.
    fn upstream_text(&self) -> String {
        crate::support::redact::url(self.cfg.upstream.base_url())
    }

    /// How messages name a provider: `upstream URL` for the `[upstream]`
    /// shorthand, else `provider NAME (URL)`; no password in either.
    pub fn provider_label(&self, provider: &crate::home::config::ProviderSettings) -> String {
        if self.cfg.providers.is_empty() {
            format!("upstream {}", self.upstream_text())
        } else {
            format!(
                "provider {} ({})",
                provider.name,
                crate::support::redact::url(provider.base_url())
            )
        }
    }

    /// Fills the placeholders of a declared title or hint.
    pub fn expand(&self, template: &str) -> String {
        let pairs: [(&str, String); 9] = [
            ("{home}", self.home.root().display().to_string()),
            (
                "{config_file}",
                self.home.config_file().display().to_string(),
            ),
            ("{env_file}", self.home.env_file().display().to_string()),
            (
                "{pid_file}",
                self.home.proxy_pid_file().display().to_string(),
            ),
            ("{host}", self.cfg.server.host.clone()),
            ("{port}", self.cfg.server.port.to_string()),
            ("{addr}", self.addr_text()),
            ("{api_key_env}", self.cfg.upstream.api_key_env.clone()),
            ("{upstream_url}", self.upstream_text()),
        ];
        let mut out = template.to_string();
        for (key, value) in pairs {
            out = out.replace(key, &value);
        }
        out
    }

    /// The harness timeout of a declared check. `upstream` gets at least
    /// `upstream.connect_timeout` (plus a little), the budget docs/contract.md §6 gives it.
    pub fn timeout_for(&self, spec: &BuiltinSpec) -> Duration {
        let declared = Duration::from_millis(spec.timeout_ms);
        if spec.id == "upstream" && !self.cfg.providers.is_empty() {
            // Providers are probed at once, each within its own connect_timeout.
            let slowest = self
                .cfg
                .provider_settings()
                .iter()
                .filter(|p| !p.is_mock())
                .map(|p| p.connect_timeout)
                .max()
                .unwrap_or_default();
            declared.max(slowest + Duration::from_millis(500))
        } else if spec.id == "upstream" && !self.cfg.upstream.is_mock() {
            declared.max(self.cfg.upstream.connect_timeout() + Duration::from_millis(500))
        } else {
            declared
        }
    }
}

/// The last non-empty line of some output, shortened for a one-line message.
pub(crate) fn last_line(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let mut short: String = line.chars().take(200).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    Some(short)
}

/// Why a probe of something remote (an upstream, a provider, a prompt source)
/// failed: each names the URL or address it tried (passwords in URLs redacted by
/// the caller) and, for a timeout, the budget and the setting behind it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("cannot build an HTTP client: {}", http_error(error))]
    Client { error: reqwest::Error },
    /// `key` is the setting the URL came from (`upstream.url`, `provider X url`).
    #[error("{key} {url:?}: {reason}")]
    BadUrl {
        key: String,
        url: String,
        reason: String,
    },
    #[error("{key} {url} has no host")]
    NoHost { key: String, url: String },
    #[error("no TCP connection to {target} within connect_timeout ({} s)", budget.as_secs())]
    ConnectTimeout { target: String, budget: Duration },
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("GET {url}: no answer within connect_timeout ({} s)", budget.as_secs())]
    NoAnswer { url: String, budget: Duration },
    /// A prompt source slower than the probe's own budget.
    #[error("{url} did not answer within {} ms", budget.as_millis())]
    Slow { url: String, budget: Duration },
    #[error("GET {url}: {}", http_error(error))]
    Get { url: String, error: reqwest::Error },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    /// `GET {base}/models` answered 404: a server is there, but the base URL's
    /// path is not where its API lives, so every request would fail the same way.
    #[error("GET {url} answered HTTP 404: a server answers, but not at this base path; {advice}")]
    WrongPath { url: String, advice: String },
    /// An `api = "command"` provider's program is not found.
    #[error("{program:?} is not on PATH ({hint})")]
    NotOnPath { program: String, hint: String },
    /// Its program did not answer `--version`.
    #[error("`{program} --version` {why}")]
    NoVersion { program: String, why: String },
    #[error("{url} serves content with SHA-256 {digest}, not in the source's sha256 allow-list")]
    Digest { url: String, digest: String },
}

/// Why an HTTP request failed, in a few words: the innermost cause (`Connection
/// refused (os error 111)`, `failed to lookup address information: …`), which is
/// what says *why*; reqwest's outer layers only repeat the URL.
pub(crate) fn http_error(e: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = e;
    while let Some(cause) = root.source() {
        root = cause;
    }
    let why = root.to_string();
    if e.is_connect() {
        format!("cannot connect: {why}")
    } else if std::ptr::addr_eq(root, e as &dyn std::error::Error) {
        why
    } else {
        format!("{}: {why}", e.without_url_text())
    }
}

/// reqwest's own message without the `(url)` it appends.
trait WithoutUrl {
    fn without_url_text(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_text(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(url) => text.replace(&format!(" ({url})"), ""),
            None => text,
        }
    }
}

/// A [`Context`] for a home at `dir` with no overrides, for the checks' unit tests.
#[cfg(test)]
pub(crate) fn test_context(dir: &Path) -> Context {
    Context::load(&Home::at(dir), &Overrides::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_dotenv_names_the_line_but_not_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "A=1\n# comment\nsk-secret-value\n").unwrap();
        let DotEnv::Broken(message) = DotEnv::read(&path) else {
            panic!("expected a parse error");
        };
        assert!(message.contains("line 3"), "{message}");
        assert!(!message.contains("secret-value"), "{message}");
        assert!(message.contains(".env"), "{message}");
    }

    #[test]
    fn expand_fills_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = test_context(dir.path());
        assert_eq!(
            ctx.expand("port {port} on {addr}"),
            "port 8000 on 127.0.0.1:8000"
        );
        assert!(ctx.expand("{config_file}").ends_with("warden.toml"));
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            crate::support::redact::url("http://user:hunter2@127.0.0.1:9/v1"),
            "http://***@127.0.0.1:9/v1"
        );
    }
}
