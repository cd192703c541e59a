//! One read-only inspection per topic, each mapping what it finds to a
//! [`Diagnosis`]. Nothing here changes the home or signals a process: the fixes
//! are data ([`Fix`]) applied by the caller, or not at all in a dry run.

use std::path::Path;
use std::time::Duration;

use crate::home::config::Overrides;
use crate::home::env::VarOrigin;
use crate::home::templates;
use crate::home::{Home, LogKind};
use crate::lifecycle::pidfile::{self, PidRecord, PidState};
use crate::lifecycle::ports::{self, PortHolder};
use crate::lifecycle::process::{self, ProcessIdentity};
use crate::ops::preflight::Status;
use crate::ops::preflight::builtin::{self, Context, DotEnv};
use crate::prompts::{self, PromptSourceKind};

use super::{Diagnosis, Fix, rel};

/// The file name of the proxy's executable, as `find_proxies_of_home` matches it.
pub const PROXY_EXE: &str = "proxy";

/// `home`, `logs/`, `run/` and `cache/`: created when missing; a file in the way
/// is for a person to move.
pub fn dirs(home: &Home) -> Diagnosis {
    let root = home.root();
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => {
            return Diagnosis::needs_you(
                format!("{} exists but is not a directory", root.display()),
                "move it aside, or point --home / WARDEN_HOME at a directory",
            );
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Diagnosis::needs_you(
                format!("cannot look at the home {}: {e}", root.display()),
                "check the permissions of its parent directories, or use another --home",
            );
        }
        _ => {}
    }
    let mut missing = Vec::new();
    if !root.exists() {
        missing.push(root.to_path_buf());
    }
    let mut blocked = Vec::new();
    for dir in home.required_dirs() {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => blocked.push(dir.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(dir),
            Err(e) => blocked.push(format!("{} ({e})", dir.display())),
        }
    }
    if !blocked.is_empty() {
        return Diagnosis::needs_you(
            format!("not a directory: {}", blocked.join(", ")),
            format!(
                "move it aside (doctor never deletes what it did not create), then run `doctor --home {}` again",
                root.display()
            ),
        );
    }
    if missing.is_empty() {
        return Diagnosis::ok(format!(
            "logs/, run/ and cache/ exist in {}",
            root.display()
        ));
    }
    let names: Vec<String> = missing
        .iter()
        .map(|d| {
            if d.as_path() == root {
                format!("the home {}", root.display())
            } else {
                format!("{}/", rel(home, d))
            }
        })
        .collect();
    Diagnosis::fixable(
        format!("missing: {}", names.join(", ")),
        Fix::CreateDirs {
            home: home.clone(),
            missing,
        },
    )
}

/// `warden.toml`: written from the template when missing; when present it must
/// load (the `config` preflight check, with its line-and-key hint).
pub fn config(home: &Home) -> Diagnosis {
    let path = home.config_file();
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Diagnosis::fixable(
            format!(
                "{} is missing (every key takes its built-in default)",
                path.display()
            ),
            Fix::WriteTemplate {
                path,
                text: templates::WARDEN_TOML,
                source: "templates/warden.toml",
                mode: 0o644,
            },
        ),
        _ => {
            let ctx = Context::load(home, &Overrides::default());
            let outcome =
                builtin::run_blocking("config", &ctx).expect("config is a blocking check");
            match outcome.status {
                Status::Pass | Status::Skip => Diagnosis::ok(outcome.message),
                Status::Warn | Status::Fail => Diagnosis::NeedsYou {
                    message: outcome.message,
                    hint: outcome.hint.or_else(|| {
                        Some(format!(
                            "fix {} (templates/warden.toml lists every key with its default)",
                            path.display()
                        ))
                    }),
                },
            }
        }
    }
}

/// `.env`: written from the template (mode 0600) when missing, tightened when
/// group or others may read it; a line that does not parse is for a person (it
/// may hold a secret, so doctor neither shows nor rewrites it).
pub fn env(home: &Home) -> Diagnosis {
    let path = home.env_file();
    let write = || Fix::WriteTemplate {
        path: path.clone(),
        text: templates::ENV,
        source: "templates/.env",
        mode: 0o600,
    };
    let link = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Diagnosis::fixable(format!("{} is missing", path.display()), write());
        }
        Err(e) => {
            return Diagnosis::needs_you(
                format!("cannot look at {}: {e}", path.display()),
                format!("check the permissions of {}", home.root().display()),
            );
        }
        Ok(m) => m.file_type().is_symlink(),
    };
    match DotEnv::read(&path) {
        DotEnv::Absent if link => Diagnosis::needs_you(
            format!(
                "{} is a symlink to a file that does not exist",
                path.display()
            ),
            "point it at your secrets file, or remove the link and run doctor again to get a template",
        ),
        DotEnv::Absent => Diagnosis::fixable(format!("{} is missing", path.display()), write()),
        DotEnv::Broken(message) => Diagnosis::needs_you(
            message,
            format!(
                "fix that line of {}: one KEY=value per line, `#` for comments, quote values with spaces",
                path.display()
            ),
        ),
        DotEnv::Parsed { mode } if mode & 0o077 != 0 => {
            let message = format!(
                "{} has mode {mode:04o}: group or others can read the secrets in it",
                path.display()
            );
            if link {
                let target = std::fs::canonicalize(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "its target".into());
                return Diagnosis::needs_you(
                    message,
                    format!(
                        "it is a symlink: doctor does not change files outside the home; `chmod 600 {target}`"
                    ),
                );
            }
            Diagnosis::fixable(
                message,
                Fix::TightenMode {
                    path: path.clone(),
                    from: mode,
                    to: mode & 0o700,
                },
            )
        }
        DotEnv::Parsed { mode } => {
            Diagnosis::ok(format!("{} parses, mode {mode:04o}", path.display()))
        }
    }
}

/// Why a key's value looks wrong, if it does. Never includes the value.
pub fn key_problem(value: &str) -> Option<&'static str> {
    let quotes = |c: char| c == '"' || c == '\'';
    if value.trim().is_empty() {
        Some(if value.is_empty() {
            "is empty"
        } else {
            "is only whitespace"
        })
    } else if value != value.trim() {
        Some(
            "has whitespace (a space or a line break) around it, which would be sent as part of the key",
        )
    } else if value.starts_with(quotes) || value.ends_with(quotes) {
        Some("is wrapped in quotes, which would be sent as part of the key")
    } else if builtin::looks_like_placeholder(value) {
        Some("holds a template placeholder, not a key")
    } else {
        None
    }
}

/// The value of `var` in a `.env` file as the proxy reads it (the last one wins),
/// even when empty.
fn dotenv_value(path: &Path, var: &str) -> Option<String> {
    dotenvy::from_path_iter(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|(k, _)| k == var)
        .last()
        .map(|(_, v)| v)
}

/// Every provider's API key (`[upstream]` alone is the one provider): present
/// and plausible when the provider needs one. Reported with where to change it;
/// the value is never printed or changed.
pub fn api_key(ctx: &Context) -> Diagnosis {
    let shorthand = ctx.cfg.providers.is_empty();
    let mut fine = Vec::new();
    let mut problems = Vec::new();
    let mut hints = Vec::new();
    for provider in ctx.cfg.provider_settings() {
        let who = ctx.provider_label(&provider);
        if provider.is_mock() {
            fine.push(if shorthand {
                "upstream is mock: no API key needed".to_string()
            } else {
                format!("provider {} is mock: no API key needed", provider.name)
            });
            continue;
        }
        if provider.command.is_some() {
            fine.push(format!(
                "{who}: runs an agent CLI, signed in as the user that runs the proxy (no key)"
            ));
            continue;
        }
        if provider.api_key_env.is_empty() {
            fine.push(format!("{who}: no key configured (api_key_env is empty)"));
            continue;
        }
        match provider_key(ctx, &who, &provider.api_key_env) {
            Ok(message) => fine.push(message),
            Err((message, hint)) => {
                problems.push(message);
                if !hints.contains(&hint) {
                    hints.push(hint);
                }
            }
        }
    }
    if problems.is_empty() {
        Diagnosis::ok(fine.join("; "))
    } else {
        Diagnosis::needs_you(problems.join("; "), hints.join("; "))
    }
}

/// One key: `Ok` with what was found, `Err` with the problem and its hint.
fn provider_key(ctx: &Context, who: &str, var: &str) -> Result<String, (String, String)> {
    let env_file = ctx.home.env_file();
    let from_dotenv = match ctx.dotenv {
        DotEnv::Parsed { .. } => dotenv_value(&env_file, var),
        _ => None,
    };
    let from_process = std::env::var(var).ok();
    // The proxy's precedence: a non-empty process variable, else `.env`.
    let found = match (&from_process, from_dotenv) {
        (Some(v), _) if !v.is_empty() => Some((v.clone(), VarOrigin::Process)),
        (_, Some(v)) => Some((v, VarOrigin::DotEnv(env_file.clone()))),
        (Some(v), None) => Some((v.clone(), VarOrigin::Process)),
        (None, None) => None,
    };
    let Some((value, origin)) = found else {
        // A `.env` that does not parse may well hold the key on its bad line.
        let unread = if matches!(ctx.dotenv, DotEnv::Broken(_)) {
            " (which does not parse, see `env`)"
        } else {
            ""
        };
        return Err((
            format!(
                "{who} needs an API key, but {var} is set neither in the environment nor in {}{unread}",
                env_file.display()
            ),
            format!(
                "add `{var}=<your key>` to {} (mode 0600), or export it where the proxy starts",
                env_file.display()
            ),
        ));
    };
    let Some(problem) = key_problem(&value) else {
        return Ok(format!(
            "{var} is set (from {origin}); its value is not shown"
        ));
    };
    let hint = match &origin {
        VarOrigin::DotEnv(path) => format!(
            "edit the `{var}=` line in {}: the bare key after `=`, no quotes, no spaces",
            path.display()
        ),
        VarOrigin::Process => format!(
            "{var} comes from the environment of the shell or service that runs warden (it wins over {}): \
             fix it there, or unset it and put the key in {}",
            env_file.display(),
            env_file.display()
        ),
    };
    Err((format!("{var} (from {origin}) {problem}"), hint))
}

/// What a stale PID file points at, in words, for the message.
fn stale_target(path: &Path, record: &Option<PidRecord>) -> String {
    let pid = record
        .as_ref()
        .map(|r| r.pid)
        .or_else(|| pidfile::read_first_pid(path));
    match pid {
        None => "its content is not a PID".into(),
        Some(pid) if !process::is_alive(pid) => format!("it names PID {pid}, which is not running"),
        Some(pid) => format!(
            "it names PID {pid}, now {}, not the process that wrote it",
            process::cmdline(pid)
                .map(|c| format!("`{}`", shorten(&c, 100)))
                .unwrap_or_else(|| "another process".into())
        ),
    }
}

fn shorten(text: &str, max: usize) -> String {
    let mut short: String = text.chars().take(max).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// A PID file: removed when stale (its lock is free). The process it names, if
/// any, is only described, never signalled.
pub fn pid_file(path: &Path) -> Diagnosis {
    let what = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match pidfile::inspect(path) {
        Ok(PidState::Absent) => Diagnosis::ok(format!("no {} (nothing running)", path.display())),
        Ok(PidState::Running(record)) => Diagnosis::ok(format!(
            "{} is held by its running process, PID {}",
            path.display(),
            record.pid
        )),
        Ok(PidState::Busy { pid, problem }) => Diagnosis::needs_you(
            format!(
                "{} is locked by a live process{} but is not a warden record: {problem}",
                path.display(),
                pid.map(|p| format!(" (PID {p}?)")).unwrap_or_default()
            ),
            format!(
                "find the holder with `fuser {}`; doctor leaves a locked file alone",
                path.display()
            ),
        ),
        Ok(PidState::Stale(Some(record))) if record.identity().matches_live() => {
            Diagnosis::needs_you(
                format!(
                    "{} is not locked, yet PID {} is still the process it describes ({}): \
                     it lost its PID file",
                    path.display(),
                    record.pid,
                    record.exe.display()
                ),
                format!(
                    "stop PID {} yourself (if it is this home's proxy, `doctor --yes` stops it as an orphan), \
                     then run doctor again to remove {what}",
                    record.pid
                ),
            )
        }
        Ok(PidState::Stale(record)) => {
            let names = stale_target(path, &record);
            Diagnosis::fixable(
                format!(
                    "stale {}: no process holds its lock ({names})",
                    path.display()
                ),
                Fix::RemoveStalePidFile {
                    path: path.to_path_buf(),
                    names,
                },
            )
        }
        Err(e) => Diagnosis::needs_you(
            format!("cannot inspect {}: {e}", path.display()),
            format!(
                "check {} (a PID file must be a regular file the warden user can read)",
                path.display()
            ),
        ),
    }
}

/// The PID `run/proxy.pid` names while its lock is held.
pub fn recorded_proxy_pid(home: &Home) -> Option<i32> {
    match pidfile::inspect(&home.proxy_pid_file()) {
        Ok(PidState::Running(record)) => Some(record.pid),
        Ok(PidState::Busy { pid, .. }) => pid,
        _ => None,
    }
}

fn describe_proxy(p: &ProcessIdentity) -> String {
    match process::cmdline(p.pid) {
        Some(cmd) => format!("PID {} (`{}`)", p.pid, shorten(&cmd, 100)),
        None => format!("PID {} ({})", p.pid, p.exe.display()),
    }
}

/// This home's proxies that `run/proxy.pid` does not know and that still serve.
pub fn orphaned_proxies(home: &Home) -> Vec<ProcessIdentity> {
    crate::lifecycle::supervisor::orphaned_proxies(home)
}

/// Proxies of this home running outside the PID file: stopped only with `--yes`.
pub fn orphans(home: &Home, grace: Duration, wait: Duration, yes: bool) -> Diagnosis {
    let found = orphaned_proxies(home);
    if found.is_empty() {
        return Diagnosis::ok("no orphaned proxy of this home");
    }
    let names: Vec<String> = found.iter().map(describe_proxy).collect();
    let message = format!(
        "proxy of this home running outside {}: {}",
        home.proxy_pid_file().display(),
        names.join(", ")
    );
    if yes {
        return Diagnosis::fixable(
            message,
            Fix::StopOrphans {
                home: home.clone(),
                proxies: found,
                grace,
                wait,
            },
        );
    }
    Diagnosis::needs_you(
        message,
        format!(
            "run `doctor --home {} --yes` to stop it (identity-checked SIGTERM, SIGKILL after {} s), \
             or stop it yourself",
            home.root().display(),
            grace.as_secs()
        ),
    )
}

/// How to stop a foreign holder, given who runs it.
fn how_to_stop(holder: &PortHolder) -> String {
    let me = nix::unistd::getuid().as_raw();
    match (holder.pid, holder.uid) {
        (Some(pid), Some(uid)) if uid == me => {
            format!("`kill {pid}` stops it, if it is yours to stop")
        }
        (Some(pid), Some(uid)) => {
            format!("it runs as UID {uid}: its owner can stop it (`sudo kill {pid}`)")
        }
        (Some(pid), None) => format!("`kill {pid}` stops it, if it is yours to stop"),
        (None, _) => "`sudo ss -ltnp` shows its PID".to_string(),
    }
}

/// The configured port: free, or held by this home's running proxy. A foreign
/// holder is named (PID, command, how to stop it) and never touched.
pub fn port(ctx: &Context) -> Diagnosis {
    let config_file = ctx.home.config_file();
    let addr = match ctx.cfg.listen_addr() {
        Ok(addr) => addr,
        Err(e) => {
            return Diagnosis::needs_you(
                e.to_string(),
                format!(
                    "set server.host in {} to an IP address",
                    config_file.display()
                ),
            );
        }
    };
    if addr.port() == 0 {
        return Diagnosis::ok("server.port is 0: the proxy takes any free port");
    }
    let bind_error = match std::net::TcpListener::bind(addr) {
        Ok(_probe) => return Diagnosis::ok(format!("{addr} is free")),
        Err(e) => e,
    };
    let holders = ports::listeners_on(addr.port());
    if holders.is_empty() {
        return Diagnosis::needs_you(
            format!("cannot listen on {addr}: {bind_error}"),
            format!(
                "pick another server.port in {} (or WARDEN_PORT)",
                config_file.display()
            ),
        );
    }
    let running = recorded_proxy_pid(&ctx.home);
    let ours: Vec<i32> = process::find_proxies_of_home(&ctx.home, PROXY_EXE)
        .iter()
        .map(|p| p.pid)
        .collect();
    let foreign: Vec<&PortHolder> = holders
        .iter()
        .filter(|h| {
            !h.pid
                .is_some_and(|pid| ours.contains(&pid) || Some(pid) == running)
        })
        .collect();
    if foreign.is_empty() {
        let orphans: Vec<i32> = holders
            .iter()
            .filter_map(|h| h.pid)
            .filter(|&pid| Some(pid) != running)
            .collect();
        if orphans.is_empty() || running.is_some() {
            return Diagnosis::ok(format!(
                "{addr} is held by this home's proxy, PID {}",
                running
                    .or(holders.iter().find_map(|h| h.pid))
                    .unwrap_or_default()
            ));
        }
        return Diagnosis::needs_you(
            format!(
                "{addr} is held by this home's orphaned proxy, PID {} (see `orphans`)",
                orphans
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", PID ")
            ),
            format!(
                "`doctor --home {} --yes` stops it",
                ctx.home.root().display()
            ),
        );
    }
    let names: Vec<String> = foreign
        .iter()
        .map(|h| builtin::describe_holder(h))
        .collect();
    let stops: Vec<String> = foreign.iter().map(|h| how_to_stop(h)).collect();
    Diagnosis::needs_you(
        format!("{addr} is held by {}, not by warden", names.join(" and ")),
        format!(
            "doctor leaves it alone (warden never signals a process it did not start): {}; \
             or set server.port in {} (or WARDEN_PORT) to a free port",
            stops.join("; "),
            config_file.display()
        ),
    )
}

/// Logs over `logs.max_bytes`: rotated (numbered copies, a bounded number kept).
pub fn logs(ctx: &Context) -> Diagnosis {
    let max = ctx.cfg.logs.max_bytes;
    let home = &ctx.home;
    let mut over = Vec::new();
    for kind in [LogKind::Proxy, LogKind::Watchdog, LogKind::Daemon] {
        let path = home.log_file(kind);
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.is_file() && meta.len() > max {
                over.push((path, meta.len()));
            }
        }
    }
    if over.is_empty() {
        return Diagnosis::ok(format!(
            "no log in {} over logs.max_bytes ({})",
            home.logs_dir().display(),
            super::size_text(max)
        ));
    }
    let sizes: Vec<String> = over
        .iter()
        .map(|(p, len)| format!("{} is {}", rel(home, p), super::size_text(*len)))
        .collect();
    Diagnosis::fixable(
        format!(
            "{}, over logs.max_bytes ({})",
            sizes.join(", "),
            super::size_text(max)
        ),
        Fix::RotateLogs {
            home: home.clone(),
            logs: over,
            max_bytes: max,
            proxy_running: match pidfile::inspect(&home.proxy_pid_file()) {
                Ok(PidState::Running(r)) => Some(r.pid),
                _ => None,
            },
        },
    )
}

/// `cache/models.json`, the model catalog cache: a corrupt one is deleted.
pub fn models_cache(home: &Home) -> Diagnosis {
    let path = home.cache_dir().join("models.json");
    if !path.exists() {
        return Diagnosis::ok("no model catalog cache (written when a provider has models = [])");
    }
    match crate::home::models_cache::inspect(&path) {
        Ok(()) => Diagnosis::ok(format!("{} is sound", path.display())),
        Err(why) => Diagnosis::fixable(why.to_string(), Fix::DeleteCatalog { path }),
    }
}

/// The prompt cache: a corrupt entry or `metadata.json` is deleted and refilled.
pub fn prompts(ctx: &Context) -> Diagnosis {
    let cfg = &ctx.cfg.prompts;
    if cfg.sources.is_empty() {
        return Diagnosis::ok("no [[prompts.source]] configured");
    }
    let damage = prompts::inspect_cache(&ctx.home, cfg);
    if let Some(why) = &damage.unreadable {
        return Diagnosis::needs_you(
            why.clone(),
            format!(
                "{} must be a directory of regular files the warden user can read and write",
                ctx.home.prompts_cache_dir().display()
            ),
        );
    }
    if damage.needs_repair() {
        let mut problems: Vec<String> = damage.metadata.iter().cloned().collect();
        problems.extend(damage.entries.iter().map(|(_, why)| why.clone()));
        return Diagnosis::fixable(
            problems.join("; "),
            Fix::RepairPrompts {
                home: ctx.home.clone(),
                cfg: cfg.clone(),
                damage,
            },
        );
    }
    let statuses = prompts::disk_status(&ctx.home, cfg);
    // With the built-in mock (and no forced base instructions) the proxy sends
    // no prompt anywhere and never fetches one: "fetched on first use" would
    // promise a fetch that does not happen.
    let in_use = prompts::prompts_in_use(&ctx.cfg);
    let mut parts = Vec::new();
    let mut notes = Vec::new();
    for st in &statuses {
        parts.push(match st.source {
            PromptSourceKind::Builtin if in_use => {
                format!("{}: no copy yet (fetched on first use)", st.name)
            }
            PromptSourceKind::Builtin => {
                format!(
                    "{}: no copy (this configuration sends no prompts upstream)",
                    st.name
                )
            }
            other => format!("{}: {other}", st.name),
        });
        if let Some(problem) = &st.problem {
            notes.push(format!("{}: {problem}", st.name));
        }
    }
    Diagnosis::Ok {
        message: format!("cache is sound; {}", parts.join("; ")),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// `writable` for a dry run: access(2) instead of creating a probe file, so the
/// dry run writes nothing, not even a temporary file.
pub fn writable_without_writing(home: &Home) -> Diagnosis {
    use nix::unistd::{AccessFlags, access};
    let mut fine = Vec::new();
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    for dir in home.required_dirs() {
        let label = format!("{}/", rel(home, &dir));
        if !dir.is_dir() {
            missing.push(label);
        } else if let Err(e) = access(&dir, AccessFlags::W_OK | AccessFlags::X_OK) {
            problems.push(format!("{}: {e}", dir.display()));
        } else {
            fine.push(label);
        }
    }
    if !problems.is_empty() {
        return Diagnosis::needs_you(
            format!("cannot create files in {}", problems.join("; ")),
            "give the user running warden write access to these directories",
        );
    }
    if !missing.is_empty() {
        return Diagnosis::ok(format!(
            "checked once `dirs` has created {}",
            missing.join(", ")
        ));
    }
    Diagnosis::ok(format!(
        "{} writable (checked without writing: dry run)",
        fine.join(", ")
    ))
}

/// The NATS servers of `nats.url`, when set: reachable, and speaking NATS.
/// Nothing to fix automatically; an unreachable one is explained (the proxy
/// serves HTTP without it and keeps reconnecting).
pub async fn nats(ctx: &Context) -> Diagnosis {
    use crate::ops::preflight::builtin::nats::greet;
    let nats = &ctx.cfg.nats;
    if !nats.enabled() {
        return Diagnosis::ok("NATS ingress off (nats.url is empty)");
    }
    let budget = ctx.cfg.upstream.connect_timeout();
    let mut reached = Vec::new();
    let mut problems = Vec::new();
    for address in nats.addresses() {
        match greet(&address, budget).await {
            Ok(g) if nats.jetstream && !g.jetstream => problems.push(format!(
                "NATS server {} ({}) runs without JetStream, but nats.jetstream = true: \
                 the proxy answers SUBJECT.chat but cannot take jobs",
                g.address, g.version
            )),
            Ok(g) => reached.push(format!("{} ({})", g.address, g.version)),
            Err(e) => problems.push(format!(
                "the NATS server of nats.url cannot be reached: {e}. {}",
                crate::ops::preflight::builtin::nats::while_away(nats)
            )),
        }
    }
    if problems.is_empty() {
        return Diagnosis::ok(format!("NATS reachable: {}", reached.join(", ")));
    }
    Diagnosis::needs_you(
        problems.join("; "),
        format!(
            "start the NATS server (`nats-server -js` for JetStream), or fix nats.url in {} \
             (or WARDEN_NATS_URL), or empty nats.url to turn the NATS ingress off; \
             `preflight --only upstream` checks again",
            ctx.home.config_file().display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_problems_are_named_without_the_value() {
        assert_eq!(key_problem(""), Some("is empty"));
        assert_eq!(key_problem("  "), Some("is only whitespace"));
        assert!(
            key_problem(" sk-proj-abc123")
                .unwrap()
                .contains("whitespace")
        );
        assert!(
            key_problem("sk-proj-abc123\n")
                .unwrap()
                .contains("whitespace")
        );
        assert!(
            key_problem("\"sk-proj-abc123\"")
                .unwrap()
                .contains("quotes")
        );
        assert!(key_problem("'sk-proj-abc123'").unwrap().contains("quotes"));
        assert!(key_problem("sk-...").unwrap().contains("placeholder"));
        assert!(key_problem("changeme").unwrap().contains("placeholder"));
        assert_eq!(key_problem("sk-proj-4f9aKq2"), None);
    }

    fn ctx(dir: &Path) -> Context {
        Context::load(&Home::at(dir), &Overrides::default())
    }

    #[test]
    fn api_key_in_dotenv_is_judged_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("warden.toml"),
            "[upstream]\nurl = \"http://127.0.0.1:9/v1\"\napi_key_env = \"WARDEN_DOCTOR_TEST_KEY\"\n",
        )
        .unwrap();
        let env = dir.path().join(".env");
        let judge = |text: &str| {
            std::fs::write(&env, text).unwrap();
            api_key(&ctx(dir.path()))
        };
        let Diagnosis::NeedsYou { message, hint } = judge("WARDEN_DOCTOR_TEST_KEY=\n") else {
            panic!("empty must need you");
        };
        assert!(message.contains("is empty"), "{message}");
        assert!(hint.unwrap().contains(&env.display().to_string()));

        let Diagnosis::NeedsYou { message, .. } =
            judge("WARDEN_DOCTOR_TEST_KEY=\" sk-secret-value \"\n")
        else {
            panic!("whitespace must need you");
        };
        assert!(message.contains("whitespace"), "{message}");
        assert!(!message.contains("secret-value"), "{message}");

        let Diagnosis::NeedsYou { message, .. } = judge("WARDEN_DOCTOR_TEST_KEY=your-api-key\n")
        else {
            panic!("placeholder must need you");
        };
        assert!(message.contains("placeholder") && !message.contains("your-api-key"));

        let Diagnosis::NeedsYou { message, .. } = judge("OTHER=1\n") else {
            panic!("unset must need you");
        };
        assert!(message.contains("set neither"), "{message}");

        let Diagnosis::Ok { message, .. } = judge("WARDEN_DOCTOR_TEST_KEY=sk-proj-real123\n")
        else {
            panic!("a real key is fine");
        };
        assert!(!message.contains("real123"), "{message}");
    }

    #[test]
    fn a_stale_pid_file_names_an_unrelated_process_but_plans_only_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.pid");
        let me = std::process::id();
        std::fs::write(&path, format!("{me}\n")).unwrap();
        let Diagnosis::Fixable { message, fix, .. } = pid_file(&path) else {
            panic!("stale file must be fixable");
        };
        assert!(message.contains(&format!("PID {me}")), "{message}");
        assert!(matches!(fix, Fix::RemoveStalePidFile { .. }), "{fix:?}");
        assert!(path.exists(), "diagnosis changes nothing");
    }

    #[test]
    fn env_mode_is_tightened_without_widening() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        std::fs::write(home.env_file(), "A=1\n").unwrap();
        std::fs::set_permissions(home.env_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let Diagnosis::Fixable {
            fix: Fix::TightenMode { from, to, .. },
            ..
        } = env(&home)
        else {
            panic!("0644 must be fixable");
        };
        assert_eq!((from, to), (0o644, 0o600));
        std::fs::set_permissions(home.env_file(), std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(matches!(env(&home), Diagnosis::Ok { .. }));
    }
}
