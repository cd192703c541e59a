//! The logic of the ten built-in checks; their ids, titles, timeouts and default
//! hints are declared in `checks/builtin.toml`.
//!
//! Every check reads the same [`Context`], loaded once per run: the home, the
//! effective configuration (or the defaults when it did not load) and what was
//! found in `.env`. Checks that touch the file system or `/proc` run on the
//! blocking pool; `binary` and `upstream` are asynchronous.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::home::Home;
use crate::home::config::{Config, ConfigError, Overrides, PromptSource, Settings};
use crate::home::env::EnvSource;
use crate::lifecycle::pidfile::{self, PidState};
use crate::lifecycle::ports::{self, PortHolder};
use crate::lifecycle::process;
use crate::prompts::{self, PromptSourceKind};
use crate::support::http_client;

use super::{BuiltinSpec, Outcome, Status, blocking};

/// Free space below this fails `disk`.
pub const DISK_FAIL_BYTES: u64 = 100 * 1024 * 1024;
/// Free space below this warns in `disk`.
pub const DISK_WARN_BYTES: u64 = 1024 * 1024 * 1024;

/// The ids this module has logic for (a unit test compares them with
/// `checks/builtin.toml`).
pub const IDS_WITH_LOGIC: &[&str] = &[
    "config", "env", "binary", "dirs", "writable", "disk", "port", "process", "upstream", "prompts",
];

pub fn has_logic(id: &str) -> bool {
    IDS_WITH_LOGIC.contains(&id)
}

/// Runs the built-in check `id`.
pub(crate) async fn run(id: &str, ctx: Arc<Context>) -> Outcome {
    let sync = |f: fn(&Context) -> Outcome| {
        let ctx = Arc::clone(&ctx);
        blocking(move || f(&ctx))
    };
    match id {
        "config" => sync(check_config).await,
        "env" => sync(check_env).await,
        "binary" => check_binary().await,
        "dirs" => sync(check_dirs).await,
        "writable" => sync(check_writable).await,
        "disk" => sync(check_disk).await,
        "port" => sync(check_port).await,
        "process" => sync(check_process).await,
        "upstream" => check_upstream(&ctx).await,
        "prompts" => check_prompts(ctx).await,
        other => Outcome::fail(format!("no logic for built-in check {other:?}")),
    }
}

/// Runs one of the checks that need neither the network nor a child process
/// (`config`, `env`, `dirs`, `writable`, `disk`, `port`, `process`) inline on
/// `ctx`: how `doctor` re-checks a home between its fixes. `None` for the others.
pub fn run_blocking(id: &str, ctx: &Context) -> Option<Outcome> {
    let check: fn(&Context) -> Outcome = match id {
        "config" => check_config,
        "env" => check_env,
        "dirs" => check_dirs,
        "writable" => check_writable,
        "disk" => check_disk,
        "port" => check_port,
        "process" => check_process,
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
                if let Some(host) = &overrides.host {
                    settings.server.host = host.clone();
                }
                if let Some(port) = overrides.port {
                    settings.server.port = port;
                }
                if let Some(url) = &overrides.upstream_url {
                    settings.upstream.url = url.clone();
                }
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
    /// `upstream.connect_timeout` (plus a little), the budget the SPEC gives it.
    pub fn timeout_for(&self, spec: &BuiltinSpec) -> Duration {
        let declared = Duration::from_millis(spec.timeout_ms);
        if spec.id == "upstream" && !self.cfg.upstream.is_mock() {
            declared.max(self.cfg.upstream.connect_timeout() + Duration::from_millis(500))
        } else {
            declared
        }
    }
}

// ---------------------------------------------------------------------------
// config

fn check_config(ctx: &Context) -> Outcome {
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
    if matches!(ctx.dotenv, DotEnv::Broken(_)) {
        message.push_str(
            "; variables from .env were not applied because it does not parse (see `env`)",
        );
    }
    Outcome::pass(message)
}

// ---------------------------------------------------------------------------
// env

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

fn check_env(ctx: &Context) -> Outcome {
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

    let upstream = &ctx.cfg.upstream;
    let var = &upstream.api_key_env;
    if upstream.is_mock() {
        messages.push("upstream is mock: no API key needed".into());
    } else {
        match ctx.cfg.env.get_with_origin(var) {
            None => {
                status = Status::Fail;
                messages.push(format!(
                    "upstream {} needs an API key but {var} is not set (looked in the environment and {})",
                    ctx.upstream_text(),
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

// ---------------------------------------------------------------------------
// binary

/// Where the `proxy` binary is: next to the running executable first (an
/// installed toolkit keeps its five binaries together), then on PATH.
pub fn find_proxy() -> Result<PathBuf, String> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("proxy")));
    if let Some(path) = &beside {
        if is_executable_file(path) {
            return Ok(path.clone());
        }
    }
    which::which("proxy").map_err(|_| {
        format!(
            "no `proxy` binary {}and none on PATH",
            beside
                .as_ref()
                .and_then(|p| p.parent())
                .map(|d| format!("in {} ", d.display()))
                .unwrap_or_default()
        )
    })
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

async fn check_binary() -> Outcome {
    let path = match find_proxy() {
        Ok(path) => path,
        Err(message) => return Outcome::fail(message),
    };
    // `kill_on_drop`: if the harness timeout fires, the child we started is killed.
    let output = tokio::process::Command::new(&path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let output = match output {
        Ok(output) => output,
        Err(e) => return Outcome::fail(format!("cannot run {} --version: {e}", path.display())),
    };
    let expected = format!("proxy {}", crate::VERSION);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let got = stdout.lines().next().unwrap_or("").trim();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Outcome::fail(format!(
            "{} --version exited with {}{}",
            path.display(),
            output.status,
            last_line(&stderr)
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ));
    }
    if got != expected {
        return Outcome::fail(format!(
            "{} --version printed {got:?}, expected {expected:?}",
            path.display()
        ))
        .with_hint(format!(
            "{} is from another build; install proxy and preflight from the same release",
            path.display()
        ));
    }
    Outcome::pass(format!("{} is {expected}", path.display()))
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

// ---------------------------------------------------------------------------
// dirs and writable

fn dir_label(home: &Home, dir: &Path) -> String {
    dir.strip_prefix(home.root())
        .map(|rel| format!("{}/", rel.display()))
        .unwrap_or_else(|_| dir.display().to_string())
}

fn check_dirs(ctx: &Context) -> Outcome {
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

fn check_writable(ctx: &Context) -> Outcome {
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

// ---------------------------------------------------------------------------
// disk

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

fn check_disk(ctx: &Context) -> Outcome {
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

// ---------------------------------------------------------------------------
// port

/// `PID 4242 (python3 -m http.server 8000)`, the command shortened for one line.
pub fn describe_holder(holder: &PortHolder) -> String {
    match (holder.pid, &holder.command) {
        (Some(pid), Some(command)) => {
            let mut short: String = command.chars().take(120).collect();
            if short.len() < command.len() {
                short.push('…');
            }
            format!("PID {pid} ({short})")
        }
        _ => holder.to_string(),
    }
}

fn check_port(ctx: &Context) -> Outcome {
    let note = ctx.defaults_note();
    let addr = match ctx.cfg.listen_addr() {
        Ok(addr) => addr,
        Err(e) => return Outcome::fail(format!("{e}{note}")),
    };
    if addr.port() == 0 {
        // Any port will do, but the address must be one of this host's.
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Outcome::fail(format!("cannot listen on {}: {e}{note}", addr.ip())).with_hint(
                format!(
                    "{} is not an address this host can listen on: fix server.host in {}",
                    addr.ip(),
                    ctx.home.config_file().display()
                ),
            );
        }
        return Outcome::pass(format!(
            "server.port is 0: the proxy takes any free port{note}"
        ));
    }
    // Binding (and closing at once) is the only reliable "is it free"; /proc then
    // says who holds it when it is not.
    let bind_error = match std::net::TcpListener::bind(addr) {
        Ok(_probe) => return Outcome::pass(format!("{addr} is free{note}")),
        Err(e) => e,
    };
    let holders = ports::listeners_on(addr.port());
    if holders.is_empty() {
        return Outcome::fail(format!("cannot listen on {addr}: {bind_error}{note}")).with_hint(
            match bind_error.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "ports below 1024 need privileges: pick another server.port in {}",
                    ctx.home.config_file().display()
                ),
                std::io::ErrorKind::AddrNotAvailable => format!(
                    "{} is not an address of this host: fix server.host in {}",
                    addr.ip(),
                    ctx.home.config_file().display()
                ),
                _ => ctx.expand("pick another server.port in {config_file}, or WARDEN_PORT"),
            },
        );
    }
    // This home's own running proxy holds it: that is fine (a restart hands the
    // socket over, so during one, several of our proxies may share it).
    let pid_file = ctx.home.proxy_pid_file();
    if let Ok(PidState::Running(record)) = pidfile::inspect(&pid_file) {
        if holders.iter().any(|h| h.pid == Some(record.pid)) {
            let ours: Vec<i32> = process::find_proxies_of_home(&ctx.home, "proxy")
                .iter()
                .map(|p| p.pid)
                .chain([record.pid])
                .collect();
            let foreign: Vec<&PortHolder> = holders
                .iter()
                .filter(|h| !h.pid.is_some_and(|pid| ours.contains(&pid)))
                .collect();
            if foreign.is_empty() {
                return Outcome::pass(format!(
                    "{addr} is held by this home's proxy, PID {} (per {}){note}",
                    record.pid,
                    pid_file.display()
                ));
            }
            return taken(ctx, addr, &foreign, note);
        }
    }
    let all: Vec<&PortHolder> = holders.iter().collect();
    taken(ctx, addr, &all, note)
}

fn taken(
    ctx: &Context,
    addr: std::net::SocketAddr,
    holders: &[&PortHolder],
    note: &str,
) -> Outcome {
    let names: Vec<String> = holders.iter().map(|h| describe_holder(h)).collect();
    let outcome = Outcome::fail(format!("{addr} is taken by {}{note}", names.join(" and ")));
    if holders.iter().all(|h| h.pid.is_none()) {
        // Another user's process: its PID is not visible without privileges.
        return outcome.with_hint(format!(
            "find it with `sudo ss -ltnp 'sport = :{}'` and stop it yourself, or pick another \
             server.port in {} (or WARDEN_PORT); warden never signals a process it did not start",
            addr.port(),
            ctx.home.config_file().display()
        ));
    }
    outcome
}

// ---------------------------------------------------------------------------
// process

fn check_process(ctx: &Context) -> Outcome {
    let pid_file = ctx.home.proxy_pid_file();
    let mut status = Status::Pass;
    let mut messages = Vec::new();
    let mut hints = Vec::new();
    match pidfile::inspect(&pid_file) {
        Ok(PidState::Absent) => messages.push(format!("no {}", pid_file.display())),
        Ok(PidState::Running(record)) => {
            messages.push(format!(
                "proxy running as PID {} (per {})",
                record.pid,
                pid_file.display()
            ));
        }
        Ok(PidState::Busy { problem, .. }) => {
            // Locked, so its owner is alive, but the content is not ours.
            status = status.worst(Status::Warn);
            messages.push(format!(
                "{} is locked by a live process but unreadable: {problem}",
                pid_file.display()
            ));
            hints.push(format!(
                "check which process holds it: `fuser {}`",
                pid_file.display()
            ));
        }
        Ok(PidState::Stale(record)) => {
            status = Status::Fail;
            // No process holds its lock, so its owner is gone, whatever runs under
            // the recorded PID today.
            let names = record
                .map(|r| format!(" (it names PID {})", r.pid))
                .unwrap_or_default();
            messages.push(format!(
                "stale PID file {}: no process holds its lock{names}",
                pid_file.display()
            ));
            hints.push(format!(
                "run `doctor --home {}` (removes stale PID files), or `rm {}`",
                ctx.home.root().display(),
                pid_file.display()
            ));
        }
        Err(e) => {
            status = Status::Fail;
            messages.push(format!("cannot inspect {}: {e}", pid_file.display()));
            hints.push(format!(
                "check the permissions of {}",
                ctx.home.run_dir().display()
            ));
        }
    }
    // Proxies of this home that the PID file does not name and that still serve.
    let orphans: Vec<String> = crate::lifecycle::supervisor::orphaned_proxies(&ctx.home)
        .into_iter()
        .map(|p| format!("PID {} ({})", p.pid, p.exe.display()))
        .collect();
    if orphans.is_empty() {
        messages.push("no orphaned proxy of this home".into());
    } else {
        status = Status::Fail;
        messages.push(format!(
            "proxy of this home running outside {}: {}",
            pid_file.display(),
            orphans.join(", ")
        ));
        hints.push(format!(
            "`doctor --home {} --yes` stops it (after checking it is this home's proxy), or stop it yourself",
            ctx.home.root().display()
        ));
    }
    Outcome {
        status,
        message: messages.join("; "),
        hint: (!hints.is_empty()).then(|| hints.join("; ")),
    }
}

// ---------------------------------------------------------------------------
// prompts

/// How long `prompts` waits for a remote that would be a prompt's only source.
const PROMPT_PROBE_MAX: Duration = Duration::from_millis(2500);

async fn check_prompts(ctx: Arc<Context>) -> Outcome {
    if !prompts::prompts_in_use(&ctx.cfg) {
        return Outcome::pass(format!(
            "prompts are not used with upstream {:?} (api {:?}); nothing to fetch",
            crate::support::redact::url(&ctx.cfg.upstream.url),
            ctx.cfg.upstream.api.as_str()
        ));
    }
    let statuses = {
        let ctx = Arc::clone(&ctx);
        match tokio::task::spawn_blocking(move || prompts::disk_status(&ctx.home, &ctx.cfg.prompts))
            .await
        {
            Ok(statuses) => statuses,
            Err(e) => return Outcome::fail(format!("reading the prompt cache crashed: {e}")),
        }
    };
    if statuses.is_empty() {
        return Outcome::pass(format!(
            "no [[prompts.source]] configured{}",
            ctx.defaults_note()
        ));
    }
    // Nothing on disk: the proxy would fetch it. Ask the remote whether it would
    // get an answer, all prompts at once.
    let budget = Duration::from_secs(ctx.cfg.prompts.fetch_timeout).min(PROMPT_PROBE_MAX);
    let probes = statuses.iter().map(|st| {
        let source = ctx
            .cfg
            .prompts
            .sources
            .iter()
            .find(|s| s.name == st.name)
            .cloned();
        let needs_probe = st.source == PromptSourceKind::Builtin;
        async move {
            match (needs_probe, source) {
                (true, Some(source)) => Some(probe_prompt(&source, budget).await),
                _ => None,
            }
        }
    });
    let probes = futures_util::future::join_all(probes).await;

    let mut status = Status::Pass;
    let mut parts = Vec::new();
    let mut builtin_only = Vec::new();
    for (st, probe) in statuses.iter().zip(probes) {
        let mut part = match (st.source, probe) {
            (PromptSourceKind::Builtin, Some(Ok(()))) => format!("{}: remote", st.name),
            (PromptSourceKind::Builtin, probe) => {
                status = Status::Warn;
                builtin_only.push(st.name.clone());
                match probe {
                    Some(Err(why)) => format!("{}: builtin only ({why})", st.name),
                    _ => format!("{}: builtin only", st.name),
                }
            }
            (PromptSourceKind::Cache, _) | (PromptSourceKind::StaleCache, _) => {
                let age = st
                    .age_secs
                    .map(|a| {
                        format!(
                            ", {} old",
                            humantime::format_duration(Duration::from_secs(a.max(0.0) as u64))
                        )
                    })
                    .unwrap_or_default();
                format!("{}: {}{age}", st.name, st.source.as_str())
            }
            (other, _) => format!("{}: {}", st.name, other.as_str()),
        };
        if let Some(problem) = &st.problem {
            part.push_str(&format!(" [{problem}]"));
        }
        parts.push(part);
    }
    let mut outcome = Outcome {
        status,
        message: parts.join("; ") + ctx.defaults_note(),
        hint: None,
    };
    if !builtin_only.is_empty() {
        outcome.hint = Some(format!(
            "{} would get the short built-in text: run `proxy --home {} prompts refresh` where the URL is reachable, \
             or give the source a `file` fallback in {}",
            builtin_only.join(", "),
            ctx.home.root().display(),
            ctx.home.config_file().display()
        ));
    }
    outcome
}

/// Whether a fetch of the prompt would succeed now: a 2xx within `budget` and,
/// with a `sha256` allow-list, content that passes it.
async fn probe_prompt(source: &PromptSource, budget: Duration) -> Result<(), String> {
    let client = http_client::client_builder()
        .timeout(budget)
        .connect_timeout(budget)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let response = client.get(&source.url).send().await.map_err(|e| {
        if e.is_timeout() {
            format!(
                "{} did not answer within {} ms",
                source.url,
                budget.as_millis()
            )
        } else {
            format!("GET {}: {}", source.url, http_error(&e))
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{} answered HTTP {}", source.url, status.as_u16()));
    }
    if source.sha256.is_empty() {
        return Ok(());
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("GET {}: {}", source.url, http_error(&e)))?;
    let digest = hex::encode(Sha256::digest(&body));
    if source
        .sha256
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&digest))
    {
        Ok(())
    } else {
        Err(format!(
            "{} serves content with SHA-256 {digest}, not in the source's sha256 allow-list",
            source.url
        ))
    }
}

// ---------------------------------------------------------------------------
// upstream

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

async fn check_upstream(ctx: &Context) -> Outcome {
    let upstream = &ctx.cfg.upstream;
    if upstream.is_mock() {
        return Outcome::pass(format!(
            "upstream is mock: built in, offline{}",
            ctx.defaults_note()
        ));
    }
    let budget = upstream.connect_timeout();
    let models = format!("{}/models", upstream.base_url());
    let url = match reqwest::Url::parse(&models) {
        Ok(url) => url,
        Err(e) => return Outcome::fail(format!("upstream.url {:?}: {e}", ctx.upstream_text())),
    };
    let shown = crate::support::redact::url(url.as_str());
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Outcome::fail(format!("upstream.url {shown} has no host"));
    };
    let target = format!("{host}:{port}");
    let started = Instant::now();
    match tokio::time::timeout(budget, tokio::net::TcpStream::connect(&target)).await {
        Err(_) => {
            return Outcome::fail(format!(
                "no TCP connection to {target} within upstream.connect_timeout ({} s)",
                budget.as_secs()
            ));
        }
        Ok(Err(e)) => return Outcome::fail(format!("cannot connect to {target}: {e}")),
        Ok(Ok(_stream)) => {}
    }
    let remaining = budget
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(100));
    let mut builder = http_client::client_builder()
        .connect_timeout(remaining)
        .timeout(remaining)
        .redirect(reqwest::redirect::Policy::none());
    if is_loopback_host(&url) {
        builder = builder.no_proxy();
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            return Outcome::fail(format!("cannot build an HTTP client: {}", http_error(&e)));
        }
    };
    match client.get(url.clone()).send().await {
        Ok(response) => Outcome::pass(format!(
            "GET {shown} answered HTTP {} in {} ms",
            response.status().as_u16(),
            started.elapsed().as_millis()
        )),
        Err(e) if e.is_timeout() => Outcome::fail(format!(
            "GET {shown}: no answer within upstream.connect_timeout ({} s)",
            budget.as_secs()
        )),
        Err(e) => Outcome::fail(format!("GET {shown}: {}", http_error(&e))),
    }
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_for(dir: &Path) -> Context {
        Context::load(&Home::at(dir), &Overrides::default())
    }

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
    fn disk_thresholds() {
        assert_eq!(disk_status(50 * 1024 * 1024), Status::Fail);
        assert_eq!(disk_status(500 * 1024 * 1024), Status::Warn);
        assert_eq!(disk_status(2 * 1024 * 1024 * 1024), Status::Pass);
        assert_eq!(human_bytes(1536 * 1024 * 1024), "1.5 GiB");
        assert_eq!(human_bytes(87 * 1024 * 1024), "87 MiB");
    }

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

    #[test]
    fn expand_fills_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx_for(dir.path());
        assert_eq!(
            ctx.expand("port {port} on {addr}"),
            "port 8000 on 127.0.0.1:8000"
        );
        assert!(ctx.expand("{config_file}").ends_with("warden.toml"));
    }

    #[test]
    fn port_zero_passes_and_holders_are_described_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("warden.toml"), "[server]\nport = 0\n").unwrap();
        let outcome = check_port(&ctx_for(dir.path()));
        assert_eq!(outcome.status, Status::Pass, "{outcome:?}");
        let holder = PortHolder {
            pid: Some(42),
            command: Some("x".repeat(300)),
            inode: 1,
            uid: Some(1000),
        };
        let text = describe_holder(&holder);
        assert!(
            text.starts_with("PID 42 (xxx") && text.ends_with("…)"),
            "{text}"
        );
        assert!(text.chars().count() < 140, "{text}");
    }

    #[test]
    fn a_listener_of_this_process_is_named_as_the_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("warden.toml"),
            format!("[server]\nport = {port}\n"),
        )
        .unwrap();
        let outcome = check_port(&ctx_for(dir.path()));
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(
            outcome
                .message
                .contains(&format!("PID {}", std::process::id())),
            "{outcome:?}"
        );
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            crate::support::redact::url("http://user:hunter2@127.0.0.1:9/v1"),
            "http://***@127.0.0.1:9/v1"
        );
    }

    #[tokio::test]
    async fn upstream_any_http_status_passes_and_a_closed_port_fails() {
        // A one-shot HTTP server on loopback answering 401, as a real API would
        // without a key.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The check first opens a bare TCP connection, then sends the GET.
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 2048];
                if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                    continue; // the TCP probe
                }
                sock.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await
                .unwrap();
                return;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("warden.toml"),
            format!("[upstream]\nurl = \"http://{addr}/v1\"\n"),
        )
        .unwrap();
        let outcome = check_upstream(&ctx_for(dir.path())).await;
        assert_eq!(outcome.status, Status::Pass, "{outcome:?}");
        assert!(outcome.message.contains("HTTP 401"), "{outcome:?}");
        server.await.unwrap();

        // The same port, now closed: connection refused.
        std::fs::write(
            dir.path().join("warden.toml"),
            format!("[upstream]\nurl = \"http://{addr}/v1\"\n"),
        )
        .unwrap();
        let outcome = check_upstream(&ctx_for(dir.path())).await;
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(outcome.message.contains(&addr.to_string()), "{outcome:?}");
    }
}
