//! Preflight checks: "is this host ready to run the proxy?" (docs/contract.md §6).
//!
//! The ten built-in checks are declared in the repository's `checks/builtin.toml`
//! (id, order, title, timeout, hint), compiled in with `include_str!`; their logic
//! is in [`builtin`]. The operator's own checks come from
//! `$WARDEN_HOME/checks/*.toml` ([`operator`]). [`run`] runs them all
//! concurrently, each under its own timeout, so a run costs about as much as its
//! slowest check. [`report`] renders the result for people, for `--json` and for
//! Nagios.
//!
//! `preflight`, `daemon check`, `daemon start` (which refuses on any failure) and
//! `doctor` all call [`run`]:
//!
//! ```no_run
//! # async fn demo() {
//! use warden::ops::preflight::{self, RunOptions};
//! let home = warden::home::Home::at("/srv/warden");
//! let opts = RunOptions::default();
//! opts.validate(&home).expect("known check ids");
//! let report = preflight::run(&home, &opts).await;
//! if !report.ok {
//!     print!("{}", preflight::report::human(&report, false));
//! }
//! # }
//! ```

pub(crate) mod builtin;
pub(crate) mod operator;
pub mod report;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::home::config::Overrides;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl Status {
    /// The four-letter label of the human output: `PASS`, `WARN`, `FAIL`, `SKIP`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }

    /// How bad: skip < pass < warn < fail (used to combine findings).
    fn rank(self) -> u8 {
        match self {
            Status::Skip => 0,
            Status::Pass => 1,
            Status::Warn => 2,
            Status::Fail => 3,
        }
    }

    /// The worse of two statuses.
    pub fn worst(self, other: Status) -> Status {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// One check's result, as printed and as serialised in `--json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub id: String,
    pub title: String,
    pub status: Status,
    pub message: String,
    /// How to fix it (which file, which command); only for warn and fail.
    pub hint: Option<String>,
    pub duration_ms: u64,
}

/// How many checks ended in each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

impl Summary {
    pub fn of(checks: &[CheckResult]) -> Summary {
        let mut s = Summary::default();
        for c in checks {
            match c.status {
                Status::Pass => s.pass += 1,
                Status::Warn => s.warn += 1,
                Status::Fail => s.fail += 1,
                Status::Skip => s.skip += 1,
            }
        }
        s
    }
}

/// A whole run: exactly the `--json` document of docs/contract.md §6.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// True when no check failed (warnings and skips allowed).
    pub ok: bool,
    pub version: String,
    pub home: PathBuf,
    pub duration_ms: u64,
    pub summary: Summary,
    /// Built-in checks in their declared order, then the operator's checks.
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn failed(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }
}

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run only these check ids (empty: all). The others are reported as `skip`.
    pub only: Vec<String>,
    /// Do not run these check ids; they are reported as `skip`.
    pub skip: Vec<String>,
    /// Command-line values that beat the configuration (e.g. `daemon start --port`).
    pub overrides: Overrides,
}

/// `--only`/`--skip` named checks this home does not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown check id{} {}; known ids: {}",
    if unknown.len() == 1 { "" } else { "s" },
    unknown.iter().map(|id| format!("{id:?}")).collect::<Vec<_>>().join(", "),
    known.join(", ")
)]
pub struct UnknownCheckIds {
    pub unknown: Vec<String>,
    /// Every id of this home, built-in and operator.
    pub known: Vec<String>,
}

impl RunOptions {
    /// Rejects ids in `only`/`skip` that name no check of this home (built-in or
    /// operator), so a typo cannot silently skip nothing. The error lists the
    /// known ids.
    pub fn validate(&self, home: &Home) -> Result<(), UnknownCheckIds> {
        let known = check_ids(home);
        let unknown: Vec<String> = self
            .only
            .iter()
            .chain(&self.skip)
            .filter(|id| !known.iter().any(|k| k == *id))
            .cloned()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(UnknownCheckIds { unknown, known })
    }

    fn selected(&self, id: &str) -> Result<(), &'static str> {
        if !self.only.is_empty() && !self.only.iter().any(|o| o == id) {
            return Err("not selected (--only)");
        }
        if self.skip.iter().any(|s| s == id) {
            return Err("skipped (--skip)");
        }
        Ok(())
    }
}

/// A built-in check as declared in `checks/builtin.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinSpec {
    pub id: String,
    pub order: u32,
    /// May contain placeholders such as `{port}`.
    pub title: String,
    pub timeout_ms: u64,
    /// May contain placeholders such as `{config_file}`.
    pub hint: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuiltinFile {
    check: Vec<BuiltinSpec>,
}

/// The declarations, verbatim from the repository's `checks/builtin.toml`.
pub const BUILTIN_TOML: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/checks/builtin.toml"));

/// The ten built-in checks, sorted by `order`.
pub fn builtin_specs() -> &'static [BuiltinSpec] {
    static SPECS: OnceLock<Vec<BuiltinSpec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        // The file is part of the source tree; the unit tests below parse it, so
        // this cannot fail in a tested build.
        let mut file: BuiltinFile =
            toml::from_str(BUILTIN_TOML).expect("checks/builtin.toml is valid (unit-tested)");
        file.check.sort_by_key(|c| c.order);
        file.check
    })
}

/// Every check id of this home: the ten built-ins, then the operator's, in
/// output order.
pub fn check_ids(home: &Home) -> Vec<String> {
    builtin_specs()
        .iter()
        .map(|s| s.id.clone())
        .chain(operator::load(home).into_iter().map(|c| c.id))
        .collect()
}

/// What a check found, before the harness adds id, title and timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub message: String,
    /// A hint specific to what was found; `None` falls back to the declared one.
    pub hint: Option<String>,
}

impl Outcome {
    pub fn pass(message: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Pass,
            message: message.into(),
            hint: None,
        }
    }
    pub fn warn(message: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Warn,
            message: message.into(),
            hint: None,
        }
    }
    pub fn fail(message: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Fail,
            message: message.into(),
            hint: None,
        }
    }
    pub fn skip(message: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Skip,
            message: message.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Outcome {
        self.hint = Some(hint.into());
        self
    }
}

/// One entry of the plan: everything the harness needs to run and report a check.
struct Planned {
    id: String,
    title: String,
    timeout: Duration,
    hint: Option<String>,
    job: Job,
}

enum Job {
    Builtin,
    Operator(Arc<operator::OperatorCheck>),
    /// A malformed operator file: reported as a failed check, never a crash.
    Broken(String),
}

/// Runs every selected check concurrently, each under its own timeout, and
/// collects the results in output order. Unknown ids in `opts` are ignored here;
/// call [`RunOptions::validate`] first to reject them.
///
/// When `warden.toml` (or a variable it takes from the environment) does not
/// load, `config` fails and the other checks still run on the built-in defaults,
/// saying so in their message.
pub async fn run(home: &Home, opts: &RunOptions) -> Report {
    let started = Instant::now();
    let ctx = Arc::new(builtin::Context::load(home, &opts.overrides));

    let mut plan: Vec<Planned> = builtin_specs()
        .iter()
        .map(|spec| Planned {
            id: spec.id.clone(),
            title: ctx.expand(&spec.title),
            timeout: ctx.timeout_for(spec),
            hint: Some(ctx.expand(&spec.hint)),
            job: Job::Builtin,
        })
        .collect();
    for entry in operator::load(home) {
        plan.push(Planned {
            id: entry.id,
            title: entry.title,
            timeout: entry.timeout,
            hint: entry.hint,
            job: match entry.check {
                Ok(check) => Job::Operator(Arc::new(check)),
                Err(error) => Job::Broken(error.to_string()),
            },
        });
    }

    let runs = plan.into_iter().map(|planned| {
        let ctx = Arc::clone(&ctx);
        let selected = opts.selected(&planned.id);
        async move {
            let t0 = Instant::now();
            let outcome = match selected {
                Err(why) => Outcome::skip(why),
                Ok(()) => {
                    let started = Arc::new(OnceLock::new());
                    let work = {
                        let started = started.clone();
                        let (id, job) = (&planned.id, &planned.job);
                        async move {
                            match job {
                                Job::Builtin => builtin::run(id, ctx, started).await,
                                Job::Operator(check) => {
                                    let _ = started.set(Instant::now());
                                    operator::run(Arc::clone(check)).await
                                }
                                Job::Broken(message) => Outcome::fail(message.clone()),
                            }
                        }
                    };
                    within_budget(work, &started, planned.timeout).await
                }
            };
            finish(planned, outcome, t0.elapsed())
        }
    });
    let checks = futures_util::future::join_all(runs).await;

    let summary = Summary::of(&checks);
    Report {
        ok: summary.fail == 0,
        version: crate::VERSION.to_string(),
        home: home.root().to_path_buf(),
        duration_ms: millis(started.elapsed()),
        summary,
        checks,
    }
}

/// How long a blocking check may wait for a thread to run it, at most, on top
/// of its own budget: on a host whose CPUs are all busy (load far above the
/// core count) a thread can wait seconds before its first instruction, and
/// that wait is the host's, not the check's.
const WAIT_FOR_A_THREAD: Duration = Duration::from_secs(30);

/// Runs `work` with `budget` for the check's own work, counted from when it
/// began (`started`), not from when it was asked for: a check never fails for
/// the time it spent waiting for a CPU, and never runs unbounded (at most
/// [`WAIT_FOR_A_THREAD`] of waiting, then it fails saying so).
async fn within_budget(
    work: impl Future<Output = Outcome>,
    started: &OnceLock<Instant>,
    budget: Duration,
) -> Outcome {
    let asked = Instant::now();
    tokio::pin!(work);
    loop {
        let deadline = match started.get() {
            Some(at) => *at + budget,
            // Not running yet: look again a budget from now.
            None => Instant::now() + budget,
        };
        if let Ok(outcome) = tokio::time::timeout_at(deadline.into(), &mut work).await {
            break outcome;
        }
        match started.get() {
            Some(at) if at.elapsed() >= budget => {
                break Outcome::fail(format!(
                    "timed out after {} ms without an answer",
                    budget.as_millis()
                ));
            }
            Some(_) => {}
            None if asked.elapsed() >= WAIT_FOR_A_THREAD + budget => {
                break Outcome::fail(format!(
                    "did not start within {} s: the host is overloaded (see its load average)",
                    (WAIT_FOR_A_THREAD + budget).as_secs()
                ));
            }
            None => {}
        }
    }
}

fn finish(planned: Planned, outcome: Outcome, took: Duration) -> CheckResult {
    let hint = match outcome.status {
        Status::Warn | Status::Fail => outcome.hint.or(planned.hint),
        Status::Pass | Status::Skip => None,
    };
    CheckResult {
        id: planned.id,
        title: planned.title,
        status: outcome.status,
        message: outcome.message,
        hint,
        duration_ms: millis(took),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs blocking work (file system, `/proc`) on the blocking pool so the checks
/// really run side by side; a panic becomes a failed check, not a crash.
pub(crate) async fn blocking<F>(f: F) -> Outcome
where
    F: FnOnce() -> Outcome + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::fail(format!("the check itself crashed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_counts_the_checks_own_work_not_its_wait_to_start() {
        // Waits for a "thread" longer than its budget, then answers at once: a pass.
        let started = OnceLock::new();
        let budget = Duration::from_millis(20);
        let work = async {
            tokio::time::sleep(budget * 5).await;
            let _ = started.set(Instant::now());
            Outcome::pass("done")
        };
        let outcome = within_budget(work, &started, budget).await;
        assert_eq!(outcome.status, Status::Pass, "{outcome:?}");
        // Started at once, then past its budget: timed out.
        let started = OnceLock::new();
        let _ = started.set(Instant::now());
        let work = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Outcome::pass("too late")
        };
        let outcome = within_budget(work, &started, budget).await;
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(
            outcome.message.contains("timed out after 20 ms"),
            "{outcome:?}"
        );
    }

    #[test]
    fn builtin_declarations_are_the_ten_of_the_spec_in_order() {
        let ids: Vec<&str> = builtin_specs().iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "config", "env", "binary", "dirs", "writable", "disk", "port", "process",
                "upstream", "prompts"
            ]
        );
        let orders: Vec<u32> = builtin_specs().iter().map(|s| s.order).collect();
        assert_eq!(orders, (1..=10).collect::<Vec<_>>());
        for spec in builtin_specs() {
            assert!(
                spec.timeout_ms > 0,
                "{}: timeout_ms must be positive",
                spec.id
            );
            assert!(
                !spec.title.is_empty() && !spec.hint.is_empty(),
                "{}",
                spec.id
            );
            assert!(
                builtin::has_logic(&spec.id),
                "{} is declared but has no logic",
                spec.id
            );
        }
        for id in builtin::IDS_WITH_LOGIC {
            assert!(
                ids.contains(id),
                "{id} has logic but is not declared in checks/builtin.toml"
            );
        }
    }

    #[test]
    fn statuses_serialise_lowercase_and_combine() {
        assert_eq!(serde_json::to_string(&Status::Warn).unwrap(), "\"warn\"");
        assert_eq!(Status::Pass.worst(Status::Warn), Status::Warn);
        assert_eq!(Status::Fail.worst(Status::Warn), Status::Fail);
        assert_eq!(Status::Skip.worst(Status::Pass), Status::Pass);
    }

    #[test]
    fn selection_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let opts = RunOptions {
            only: vec!["port".into(), "env".into()],
            skip: vec!["env".into()],
            ..Default::default()
        };
        assert!(opts.validate(&home).is_ok());
        assert!(opts.selected("port").is_ok());
        assert_eq!(opts.selected("env"), Err("skipped (--skip)"));
        assert_eq!(opts.selected("disk"), Err("not selected (--only)"));
        let bad = RunOptions {
            skip: vec!["prot".into()],
            ..Default::default()
        };
        let err = bad.validate(&home).unwrap_err().to_string();
        assert!(
            err.contains("\"prot\"") && err.contains("port"),
            "names the typo and the known ids: {err}"
        );
    }

    #[tokio::test]
    async fn skipped_checks_are_reported_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let opts = RunOptions {
            only: vec!["dirs".into()],
            ..Default::default()
        };
        let report = run(&home, &opts).await;
        assert_eq!(report.checks.len(), 10);
        assert_eq!(report.summary.skip, 9);
        let dirs = report.checks.iter().find(|c| c.id == "dirs").unwrap();
        assert_eq!(dirs.status, Status::Fail, "{dirs:?}");
        assert!(dirs.hint.as_deref().unwrap().contains("doctor"));
        assert!(!report.ok);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["summary"]["skip"], 9);
        assert_eq!(json["checks"][0]["status"], "skip");
        assert!(json["checks"][0]["hint"].is_null());
    }
}
