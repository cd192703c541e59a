//! `doctor`: "something looks broken" — diagnose a home and fix what is safe to
//! fix (docs/contract.md §7). All the logic is in `warden::ops::doctor`; this file parses flags and
//! picks an output.
//!
//! Exit codes: 0 nothing is left broken, 1 something still needs fixing (in a dry
//! run: something would be fixed), 2 doctor could not run (bad usage, no home).

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use warden::home::{Home, HomeError};
use warden::ops::doctor::{self, Options, report};
use warden::ops::preflight::report::color_wanted;
use warden::support::cli::HomeArgs;
use warden::support::exit::{self, to_exit_code};

/// Diagnoses a warden home and fixes what is safe to fix: creates the home,
/// its folders, .env (mode 0600) and warden.toml from the templates, tightens
/// .env, removes stale PID files, rotates oversized logs, repairs a corrupt
/// prompt cache and, with --yes, stops an orphaned proxy of this home. A foreign
/// process on the port is named, never touched; a wrong-looking API key is
/// reported with where to change it, never printed.
///
/// Examples:
///   doctor                         # fix what is safe, report the rest
///   doctor --dry-run               # change nothing; say what would be done
///   doctor --json                  # one JSON document: findings with id, status, action, hint
///   doctor --yes                   # also stop an orphaned proxy of this home
///   doctor --home /srv/warden      # another home
///
/// Exit status: 0 nothing left broken, 1 something needs you (or, with
/// --dry-run, would be fixed), 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "doctor", version = warden::VERSION, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    home: HomeArgs,

    /// Change nothing; say what would be done.
    #[arg(long)]
    dry_run: bool,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,

    /// Also stop an orphaned proxy of this home (a proxy no PID file knows; its
    /// identity is checked before any signal).
    #[arg(long, short = 'y')]
    yes: bool,
}

fn main() -> ExitCode {
    warden::support::cli::restore_sigpipe();
    if let Some(code) = warden::support::cli::handle_generate(Args::command) {
        return code;
    }
    let args = Args::parse();
    let (home, result) = match run(&args) {
        Ok(done) => done,
        Err(e) => return exit::fail("doctor", &e, exit::USAGE),
    };
    doctor::log_fixes(&home, &result);

    let text = if args.json {
        report::json(&result) + "\n"
    } else {
        report::human(&result, color_wanted())
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    to_exit_code(report::exit_code(&result))
}

/// Why doctor could not run; [`main`] chooses the exit code.
#[derive(Debug, thiserror::Error)]
enum DoctorError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn run(args: &Args) -> Result<(Home, doctor::Report), DoctorError> {
    let home = Home::resolve(args.home.home.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DoctorError::Runtime)?;
    let opts = Options {
        dry_run: args.dry_run,
        yes: args.yes,
    };
    let result = runtime.block_on(doctor::run(&home, opts));
    // A check that timed out may still sit in a blocking call: do not wait for it.
    runtime.shutdown_background();
    Ok((home, result))
}
