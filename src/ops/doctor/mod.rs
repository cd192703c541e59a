//! `doctor` (docs/contract.md §7): diagnose a home and fix what is safe to fix.
//!
//! Each topic has one small inspection in [`diagnose`] that maps what it finds to
//! a [`Diagnosis`]: fine, broken with a [`Fix`], or broken in a way only a person
//! should settle. A [`Fix`] is plain data with two faces, [`Fix::describe`] (what
//! `--dry-run` prints) and [`Fix::apply`] (what a real run does), so the dry run
//! and the real run share one plan and cannot drift apart.
//!
//! [`run`] goes through the topics in dependency order and re-inspects after each
//! fix: the folders, `warden.toml` and `.env` first (everything else reads them),
//! then the API key, PID files and orphaned proxies, then the port (free once an
//! orphan is gone), the logs and the prompt cache, and last the preflight checks
//! doctor cannot fix (`writable`, `disk`, `binary`, `upstream` and the operator's
//! own), reused from [`crate::ops::preflight`].
//!
//! What doctor never does: signal a process it did not start for this home (a
//! foreign port holder is named, with how to stop it, and left alone), stop even
//! this home's orphaned proxy without `--yes`, overwrite an existing `warden.toml`
//! or `.env`, or print a secret.

pub(crate) mod diagnose;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::home::config::{Overrides, PromptsConfig};
use crate::home::{Home, LogKind};
use crate::lifecycle::oplock;
use crate::lifecycle::pidfile;
use crate::lifecycle::process::{self, ProcessIdentity};
use crate::ops::preflight::builtin::{self, Context};
use crate::ops::preflight::{self, RunOptions, Status};
use crate::prompts::{self, CacheDamage, PromptSourceKind, PromptStore};

/// How `doctor` was asked to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Change nothing; say what would be done.
    pub dry_run: bool,
    /// Also stop an orphaned proxy of this home (identity-checked).
    pub yes: bool,
}

/// The outcome of one finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingStatus {
    /// Nothing wrong (warnings included, with a hint).
    Ok,
    /// Something was wrong and doctor fixed it.
    Fixed,
    /// `--dry-run`: something is wrong and doctor would fix it.
    WouldFix,
    /// Something is wrong and only a person should fix it (see the hint).
    NeedsYou,
}

impl FindingStatus {
    /// Still broken after this run?
    pub fn is_broken(self) -> bool {
        matches!(self, FindingStatus::WouldFix | FindingStatus::NeedsYou)
    }
}

/// One line of doctor's output, and one object of its `--json` `findings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: String,
    pub status: FindingStatus,
    /// What was found.
    pub message: String,
    /// What was done (`fixed`), or would be done (`would-fix`, and a failed fix).
    pub action: Option<String>,
    /// What to do by hand, or a note about an ok finding.
    pub hint: Option<String>,
}

/// How many findings ended in each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub fixed: usize,
    pub would_fix: usize,
    pub needs_you: usize,
}

impl Summary {
    pub fn of(findings: &[Finding]) -> Summary {
        let mut s = Summary::default();
        for f in findings {
            match f.status {
                FindingStatus::Ok => s.ok += 1,
                FindingStatus::Fixed => s.fixed += 1,
                FindingStatus::WouldFix => s.would_fix += 1,
                FindingStatus::NeedsYou => s.needs_you += 1,
            }
        }
        s
    }
}

/// A whole run: the `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// True when nothing is left broken (exit 0).
    pub ok: bool,
    pub version: String,
    pub home: PathBuf,
    pub dry_run: bool,
    pub yes: bool,
    pub duration_ms: u64,
    pub summary: Summary,
    pub findings: Vec<Finding>,
}

/// What one inspection concluded.
#[derive(Debug)]
pub enum Diagnosis {
    /// Nothing to do; `note` is a warning worth reading (disk getting full…).
    Ok {
        message: String,
        note: Option<String>,
    },
    /// Broken, and `fix` is safe.
    Fixable {
        message: String,
        fix: Fix,
        hint: Option<String>,
    },
    /// Broken, and only a person should settle it.
    NeedsYou {
        message: String,
        hint: Option<String>,
    },
}

impl Diagnosis {
    pub fn ok(message: impl Into<String>) -> Diagnosis {
        Diagnosis::Ok {
            message: message.into(),
            note: None,
        }
    }
    pub fn needs_you(message: impl Into<String>, hint: impl Into<String>) -> Diagnosis {
        Diagnosis::NeedsYou {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
    pub fn fixable(message: impl Into<String>, fix: Fix) -> Diagnosis {
        Diagnosis::Fixable {
            message: message.into(),
            fix,
            hint: None,
        }
    }
}

/// A safe fix, as data: described by a dry run, applied by a real one.
#[derive(Debug)]
pub enum Fix {
    /// Create the home and its `logs/`, `run/`, `cache/`.
    CreateDirs { home: Home, missing: Vec<PathBuf> },
    /// Write a missing file from `templates/`, never replacing one.
    WriteTemplate {
        path: PathBuf,
        text: &'static str,
        source: &'static str,
        mode: u32,
    },
    /// Take group and other permissions off a file.
    TightenMode { path: PathBuf, from: u32, to: u32 },
    /// Remove a PID file whose lock is free; `names` says what it pointed at.
    RemoveStalePidFile { path: PathBuf, names: String },
    /// Stop proxies of this home that no PID file knows (only with `--yes`).
    StopOrphans {
        home: Home,
        proxies: Vec<ProcessIdentity>,
        grace: Duration,
        /// How long to wait for the home's operation lock.
        wait: Duration,
    },
    /// Rotate logs over `logs.max_bytes`.
    RotateLogs {
        home: Home,
        logs: Vec<(PathBuf, u64)>,
        max_bytes: u64,
        /// A proxy is running: it keeps its log open.
        proxy_running: Option<i32>,
    },
    /// Delete a corrupt `cache/models.json` (the model catalog cache); the proxy
    /// asks its providers again.
    DeleteCatalog { path: PathBuf },
    /// Delete corrupt prompt cache entries (or `metadata.json`) and refill them.
    RepairPrompts {
        home: Home,
        cfg: PromptsConfig,
        damage: CacheDamage,
    },
}

/// What applying a fix did.
#[derive(Debug)]
pub struct Applied {
    pub done: String,
    pub note: Option<String>,
}

impl Applied {
    fn done(done: impl Into<String>) -> Applied {
        Applied {
            done: done.into(),
            note: None,
        }
    }
}

impl Fix {
    /// What applying this fix would do, for `--dry-run` ("would …").
    pub fn describe(&self) -> String {
        match self {
            Fix::CreateDirs { home, missing } => {
                format!("create {}", dir_list(home, missing))
            }
            Fix::WriteTemplate {
                path, source, mode, ..
            } => format!(
                "write {} from {source} (mode {mode:04o}; {})",
                path.display(),
                if source.ends_with(".env") {
                    "every variable warden reads, commented out or empty"
                } else {
                    "every key at its default, with a comment"
                }
            ),
            Fix::TightenMode { path, from, to } => format!(
                "chmod {} from {from:04o} to {to:04o} (`chmod {:o} {}`)",
                path.display(),
                to,
                path.display()
            ),
            Fix::RemoveStalePidFile { path, .. } => format!(
                "remove {} (its lock is free, so its owner is gone; no process is signalled)",
                path.display()
            ),
            Fix::StopOrphans { proxies, grace, .. } => format!(
                "stop {} after re-checking each is this home's proxy (SIGTERM, SIGKILL after {} s)",
                pid_list(proxies),
                grace.as_secs()
            ),
            Fix::RotateLogs { home, logs, .. } => format!(
                "rotate {} (keeping at most {} numbered copies each)",
                logs.iter()
                    .map(|(path, _)| format!("{} to {}.1", rel(home, path), rel(home, path)))
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::home::logs::KEEP_ROTATED
            ),
            Fix::DeleteCatalog { path } => format!(
                "delete {} (the proxy lists its providers' models again at start and every \
                 routing.catalog_refresh)",
                path.display()
            ),
            Fix::RepairPrompts { home, cfg, damage } => format!(
                "delete {} and refill {} from the fallback chain (remote, local file, built-in)",
                damaged_files(home, cfg, damage),
                damage.affected(cfg).join(", ")
            ),
        }
    }

    /// Applies the fix. `Err` says why it could not be done (nothing half-done is
    /// left behind: every step is atomic or idempotent).
    pub async fn apply(&self) -> Result<Applied, FixError> {
        match self {
            Fix::CreateDirs { home, missing } => {
                home.ensure_dirs()
                    .map_err(|e| FixError::io("create the folders of", home.root(), e))?;
                Ok(Applied::done(format!(
                    "created {}",
                    dir_list(home, missing)
                )))
            }
            Fix::WriteTemplate {
                path,
                text,
                source,
                mode,
            } => {
                let created =
                    crate::home::atomic_file::create_new(path, text.as_bytes(), Some(*mode))
                        .map_err(|e| FixError::io("write", path, e))?;
                Ok(Applied::done(if created {
                    format!("wrote {} from {source} (mode {mode:04o})", path.display())
                } else {
                    format!("{} appeared meanwhile; left it as it is", path.display())
                }))
            }
            Fix::TightenMode { path, from, to } => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*to))
                    .map_err(|e| FixError::io("chmod", path, e))?;
                Ok(Applied::done(format!(
                    "tightened {} from {from:04o} to {to:04o}",
                    path.display()
                )))
            }
            Fix::RemoveStalePidFile { path, names } => {
                let removed = pidfile::remove_stale(path)
                    .map_err(|e| FixError::io("remove the stale PID file", path, e))?;
                Ok(Applied::done(if removed {
                    format!(
                        "removed stale {} ({names}; nothing was signalled)",
                        path.display()
                    )
                } else {
                    format!("left {} alone: a live process holds it now", path.display())
                }))
            }
            Fix::StopOrphans {
                home,
                proxies,
                grace,
                wait,
            } => {
                let (home, proxies, grace, wait) = (home.clone(), proxies.clone(), *grace, *wait);
                tokio::task::spawn_blocking(move || stop_orphans(&home, &proxies, grace, wait))
                    .await
                    .map_err(|source| FixError::Crashed {
                        what: "stopping the orphans",
                        source,
                    })?
            }
            Fix::RotateLogs {
                home,
                logs,
                max_bytes,
                proxy_running,
            } => {
                let mut done = Vec::new();
                for (path, size) in logs {
                    let rotated = crate::home::logs::rotate_if_over(path, *max_bytes)
                        .map_err(|e| FixError::io("rotate", path, e))?;
                    if let Some(to) = rotated {
                        done.push(format!(
                            "{} ({}) to {}",
                            rel(home, path),
                            size_text(*size),
                            rel(home, &to)
                        ));
                    }
                }
                let proxy_log = home.log_file(LogKind::Proxy);
                let note = proxy_running
                    .filter(|_| logs.iter().any(|(p, _)| *p == proxy_log))
                    .map(|pid| {
                        format!(
                            "the running proxy (PID {pid}) keeps writing to {}.1 until `daemon restart`",
                            rel(home, &proxy_log)
                        )
                    });
                Ok(Applied {
                    done: format!(
                        "rotated {} (keeping at most {} numbered copies)",
                        if done.is_empty() {
                            "nothing: the logs shrank meanwhile".to_string()
                        } else {
                            done.join(", ")
                        },
                        crate::home::logs::KEEP_ROTATED
                    ),
                    note,
                })
            }
            Fix::DeleteCatalog { path } => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(FixError::io("delete", path, e)),
                }
                Ok(Applied::done(format!(
                    "deleted {}; it is rebuilt from the providers' model lists",
                    path.display()
                )))
            }
            Fix::RepairPrompts { home, cfg, damage } => repair_prompts(home, cfg, damage).await,
        }
    }
}

/// Why a fix could not be applied: the operation and the path, or the PIDs.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The blocking task panicked; `source` holds the panic.
    #[error("{what} crashed: {source}")]
    Crashed {
        what: &'static str,
        source: tokio::task::JoinError,
    },
    /// Another operation holds the home's operation lock.
    #[error(transparent)]
    Lock(#[from] crate::lifecycle::oplock::OpLockError),
    /// Some orphans could not be stopped (each error names its PID).
    #[error("{}", failed.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NotStopped { failed: Vec<process::ProcessError> },
}

impl FixError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> FixError {
        FixError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `logs/, run/ in /srv/warden`, or the home itself first when it is missing.
fn dir_list(home: &Home, dirs: &[PathBuf]) -> String {
    let root = home.root();
    let subs: Vec<String> = dirs
        .iter()
        .filter(|d| d.as_path() != root)
        .map(|d| format!("{}/", rel(home, d)))
        .collect();
    let creates_root = dirs.iter().any(|d| d.as_path() == root);
    match (creates_root, subs.is_empty()) {
        (true, true) => root.display().to_string(),
        (true, false) => format!("{} with {}", root.display(), subs.join(", ")),
        (false, _) => format!("{} in {}", subs.join(", "), root.display()),
    }
}

/// A path relative to the home, for short messages.
fn rel(home: &Home, path: &Path) -> String {
    path.strip_prefix(home.root())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.display().to_string())
}

fn pid_list(proxies: &[ProcessIdentity]) -> String {
    let pids: Vec<String> = proxies.iter().map(|p| format!("PID {}", p.pid)).collect();
    pids.join(", ")
}

fn damaged_files(home: &Home, cfg: &PromptsConfig, damage: &CacheDamage) -> String {
    let dir = home.prompts_cache_dir();
    let mut files: Vec<String> = Vec::new();
    if damage.metadata.is_some() {
        files.push(rel(home, &dir.join(prompts::METADATA_FILE)));
    }
    for name in damage.affected(cfg) {
        files.push(rel(home, &dir.join(format!("{name}.md"))));
    }
    if damage.metadata.is_none() {
        files.push(format!(
            "their entries in {}",
            rel(home, &dir.join(prompts::METADATA_FILE))
        ));
    }
    files.join(", ")
}

/// Stops each planned orphan that is still one: a proxy of this home, with the same
/// identity as when it was found, and still not the PID file's process.
/// Holds the home's operation lock while it works, so no `daemon` or watchdog
/// operation is half-way through a restart (whose successor would look like an
/// orphan); state is read again once the lock is held.
fn stop_orphans(
    home: &Home,
    proxies: &[ProcessIdentity],
    grace: Duration,
    wait: Duration,
) -> Result<Applied, FixError> {
    let _lock = oplock::acquire_blocking(home, "doctor --yes", wait, &mut |_| {})?;
    let current = process::find_proxies_of_home(home, diagnose::PROXY_EXE);
    let known = diagnose::recorded_proxy_pid(home);
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for identity in proxies {
        let pid = identity.pid;
        if Some(pid) == known || !current.contains(identity) {
            done.push(format!(
                "PID {pid} is no longer an orphan of this home (exited, or now in the PID file); not signalled"
            ));
            continue;
        }
        let started = std::time::Instant::now();
        match process::terminate(identity, grace) {
            Ok(how) => done.push(format!(
                "stopped orphaned proxy {}",
                process::Ended {
                    pid,
                    how,
                    took: started.elapsed()
                }
            )),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(Applied::done(done.join("; ")))
    } else {
        Err(FixError::NotStopped { failed })
    }
}

/// Deletes the damaged cache files, then asks the fallback chain for each affected
/// prompt, within a bounded time, so a reachable remote refills the cache now.
async fn repair_prompts(
    home: &Home,
    cfg: &PromptsConfig,
    damage: &CacheDamage,
) -> Result<Applied, FixError> {
    let deleted = damaged_files(home, cfg, damage);
    let (h, c, d) = (home.clone(), cfg.clone(), damage.clone());
    tokio::task::spawn_blocking(move || prompts::remove_damaged(&h, &c, &d))
        .await
        .map_err(|source| FixError::Crashed {
            what: "deleting the damaged cache",
            source,
        })?
        .map_err(|e| FixError::io("delete the damaged cache in", &home.prompts_cache_dir(), e))?;
    let store = PromptStore::new(home, cfg);
    let budget = Duration::from_secs(cfg.fetch_timeout.clamp(1, 10));
    let mut refilled = Vec::new();
    let mut waiting = Vec::new();
    let mut note = Vec::new();
    for name in damage.affected(cfg) {
        match tokio::time::timeout(budget, store.get(&name)).await {
            Ok(prompt) => match prompt.source {
                PromptSourceKind::Remote | PromptSourceKind::Cache => refilled.push(name),
                other => {
                    let why = store
                        .status()
                        .into_iter()
                        .find(|s| s.name == name)
                        .and_then(|s| s.problem)
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default();
                    note.push(format!(
                        "{name}: the fetch failed{why}; the proxy serves the {other} text meanwhile and retries"
                    ));
                    waiting.push(name);
                }
            },
            Err(_) => {
                note.push(format!(
                    "{name}: its URL did not answer within {} s; the proxy fetches it on first use",
                    budget.as_secs()
                ));
                waiting.push(name);
            }
        }
    }
    let mut done = format!("deleted {deleted}");
    if !refilled.is_empty() {
        done.push_str(&format!("; refilled {} from remote", refilled.join(", ")));
    }
    if !waiting.is_empty() {
        done.push_str(&format!(
            "; {} not refilled yet (see the note)",
            waiting.join(", ")
        ));
    }
    Ok(Applied {
        done,
        note: (!note.is_empty()).then(|| note.join("; ")),
    })
}

/// `512 bytes`, `87 MiB`: sizes for messages.
pub fn size_text(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else {
        builtin::human_bytes(bytes)
    }
}

/// Turns a diagnosis into a finding: applied in a real run, described in a dry run.
async fn settle(id: &str, diagnosis: Diagnosis, opts: Options) -> Finding {
    let finding = |status, message, action, hint| Finding {
        id: id.to_string(),
        status,
        message,
        action,
        hint,
    };
    match diagnosis {
        Diagnosis::Ok { message, note } => finding(FindingStatus::Ok, message, None, note),
        Diagnosis::NeedsYou { message, hint } => {
            finding(FindingStatus::NeedsYou, message, None, hint)
        }
        Diagnosis::Fixable { message, fix, hint } if opts.dry_run => {
            finding(FindingStatus::WouldFix, message, Some(fix.describe()), hint)
        }
        Diagnosis::Fixable { message, fix, hint } => match fix.apply().await {
            Ok(applied) => finding(
                FindingStatus::Fixed,
                message,
                Some(applied.done),
                applied.note,
            ),
            Err(why) => finding(
                FindingStatus::NeedsYou,
                format!(
                    "{message}; the fix failed: {}",
                    crate::support::http_client::error_chain(&why)
                ),
                Some(fix.describe()),
                hint.or_else(|| {
                    Some("fix it by hand as the action says, then run doctor again".into())
                }),
            ),
        },
    }
}

/// Diagnoses the home and, unless `opts.dry_run`, fixes what is safe to fix.
pub async fn run(home: &Home, opts: Options) -> Report {
    let started = Instant::now();
    let mut findings = Vec::new();

    // A home that is a file: one cause, one finding, nothing else to judge.
    if let Some(problem) = home.root_problem() {
        findings.push(Finding {
            id: "home".into(),
            status: FindingStatus::NeedsYou,
            message: problem,
            action: None,
            hint: Some("then run `doctor` again".into()),
        });
        let summary = Summary::of(&findings);
        return Report {
            ok: false,
            version: crate::VERSION.to_string(),
            home: home.root().to_path_buf(),
            dry_run: opts.dry_run,
            yes: opts.yes,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            summary,
            findings,
        };
    }

    // The layout first: everything else reads it.
    findings.push(settle("dirs", diagnose::dirs(home), opts).await);
    findings.push(settle("config", diagnose::config(home), opts).await);
    findings.push(settle("env", diagnose::env(home), opts).await);

    let ctx = Context::load(home, &Overrides::default());
    findings.push(settle("api-key", diagnose::api_key(&ctx), opts).await);
    for (id, path) in [
        ("proxy-pid", home.proxy_pid_file()),
        ("watchdog-pid", home.watchdog_pid_file()),
    ] {
        findings.push(settle(id, diagnose::pid_file(&path), opts).await);
    }
    let grace = Duration::from_secs(ctx.cfg.daemon.stop_timeout);
    let wait = crate::lifecycle::supervisor::operation_wait(&ctx.cfg);
    findings.push(
        settle(
            "orphans",
            diagnose::orphans(home, grace, wait, opts.yes),
            opts,
        )
        .await,
    );

    // Once orphans are gone the port may be free.
    findings.push(settle("port", diagnose::port(&ctx), opts).await);
    findings.push(settle("logs", diagnose::logs(&ctx), opts).await);
    findings.push(settle("prompts", diagnose::prompts(&ctx), opts).await);
    findings.push(settle("models-cache", diagnose::models_cache(home), opts).await);
    findings.push(settle("nats", diagnose::nats(&ctx).await, opts).await);

    findings.extend(reused_checks(home, opts).await);

    let summary = Summary::of(&findings);
    Report {
        ok: summary.needs_you == 0 && summary.would_fix == 0,
        version: crate::VERSION.to_string(),
        home: home.root().to_path_buf(),
        dry_run: opts.dry_run,
        yes: opts.yes,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        summary,
        findings,
    }
}

/// The preflight checks doctor has no fix for, run by the preflight harness (each
/// under its own timeout): `writable`, `disk`, `binary`, `upstream` and the
/// operator's checks. A dry run judges `writable` with access(2) instead of the
/// check's create-and-remove probe, so it changes nothing at all.
async fn reused_checks(home: &Home, opts: Options) -> Vec<Finding> {
    let builtin_ids: Vec<&str> = preflight::builtin_specs()
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    let operator_ids: Vec<String> = preflight::check_ids(home)
        .into_iter()
        .filter(|id| !builtin_ids.contains(&id.as_str()))
        .collect();
    let mut order: Vec<String> = ["writable", "disk", "binary", "upstream"]
        .into_iter()
        .map(String::from)
        .collect();
    order.extend(operator_ids);
    let only: Vec<String> = order
        .iter()
        .filter(|id| !(opts.dry_run && *id == "writable"))
        .cloned()
        .collect();
    let report = preflight::run(
        home,
        &RunOptions {
            only,
            ..Default::default()
        },
    )
    .await;
    let mut findings = Vec::new();
    for id in &order {
        let diagnosis = if opts.dry_run && id == "writable" {
            diagnose::writable_without_writing(home)
        } else {
            let Some(check) = report.checks.iter().find(|c| &c.id == id) else {
                continue;
            };
            match check.status {
                Status::Pass | Status::Skip => Diagnosis::ok(check.message.clone()),
                Status::Warn => Diagnosis::Ok {
                    message: check.message.clone(),
                    note: check.hint.clone(),
                },
                Status::Fail => Diagnosis::NeedsYou {
                    message: check.message.clone(),
                    hint: check.hint.clone(),
                },
            }
        };
        findings.push(settle(id, diagnosis, opts).await);
    }
    findings
}

/// Appends what a real run fixed to `logs/daemon.log` (best effort), so the
/// home's action log shows doctor's changes next to the daemon's.
pub fn log_fixes(home: &Home, report: &Report) {
    if report.dry_run || !home.logs_dir().is_dir() {
        return;
    }
    for f in report
        .findings
        .iter()
        .filter(|f| f.status == FindingStatus::Fixed)
    {
        if let Some(action) = &f.action {
            let _ = crate::home::logs::append_line(
                home,
                LogKind::Daemon,
                &format!("doctor: {}: {action}", f.id),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        (dir, home)
    }

    #[tokio::test]
    async fn the_dry_run_describes_and_the_real_run_applies_the_same_fix() {
        let (_dir, home) = home();
        let dry = settle(
            "dirs",
            diagnose::dirs(&home),
            Options {
                dry_run: true,
                yes: false,
            },
        )
        .await;
        assert_eq!(dry.status, FindingStatus::WouldFix);
        assert!(!home.root().exists());
        let action = dry.action.unwrap();
        assert!(
            action.starts_with("create ") && action.contains("logs/, run/, cache/"),
            "{action}"
        );

        let real = settle("dirs", diagnose::dirs(&home), Options::default()).await;
        assert_eq!(real.status, FindingStatus::Fixed, "{real:?}");
        assert_eq!(
            real.action.unwrap(),
            action.replacen("create", "created", 1)
        );
        assert!(home.run_dir().is_dir());
        let again = settle("dirs", diagnose::dirs(&home), Options::default()).await;
        assert_eq!(again.status, FindingStatus::Ok);
    }

    #[tokio::test]
    async fn a_failed_fix_needs_you_and_says_what_it_tried() {
        let (dir, _home) = home();
        let fix = Fix::WriteTemplate {
            path: dir.path().join("no-such-dir/warden.toml"),
            text: crate::home::templates::WARDEN_TOML,
            source: "templates/warden.toml",
            mode: 0o644,
        };
        let f = settle(
            "config",
            Diagnosis::fixable("warden.toml is missing", fix),
            Options::default(),
        )
        .await;
        assert_eq!(f.status, FindingStatus::NeedsYou, "{f:?}");
        assert!(f.message.contains("the fix failed"), "{f:?}");
        assert!(f.action.unwrap().starts_with("write "));
        assert!(f.hint.is_some());
    }

    #[test]
    fn summary_counts_and_broken_statuses() {
        let f = |status| Finding {
            id: "x".into(),
            status,
            message: String::new(),
            action: None,
            hint: None,
        };
        let s = Summary::of(&[
            f(FindingStatus::Ok),
            f(FindingStatus::Fixed),
            f(FindingStatus::WouldFix),
            f(FindingStatus::NeedsYou),
            f(FindingStatus::NeedsYou),
        ]);
        assert_eq!((s.ok, s.fixed, s.would_fix, s.needs_you), (1, 1, 1, 2));
        assert!(FindingStatus::WouldFix.is_broken() && !FindingStatus::Fixed.is_broken());
        assert_eq!(
            serde_json::to_string(&FindingStatus::WouldFix).unwrap(),
            "\"would-fix\""
        );
    }
}
