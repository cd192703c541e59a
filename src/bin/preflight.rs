//! `preflight`: is this host ready to run the proxy? (docs/contract.md §6)
//!
//! Runs the ten built-in checks and the operator's `$WARDEN_HOME/checks/*.toml`
//! concurrently and prints the result for people, as one JSON document
//! (`--json`) or as one Nagios-plugin line (`--format nagios`). All the logic is
//! in `warden::ops::preflight`; this file only parses flags and picks an output.
//!
//! Exit codes: 0 nothing failed (warnings allowed), 1 a check failed, 2 it could
//! not run (bad usage, unknown check id). With `--format nagios`: 0 OK,
//! 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, ValueEnum};
use warden::home::{Home, HomeError};
use warden::ops::preflight::{self, RunOptions, UnknownCheckIds, report};
use warden::support::exit::{self, nagios, to_exit_code};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// `[n/10] PASS  title — message` lines, hints and a summary.
    Human,
    /// Exactly one JSON document on stdout (same as `--json`).
    Json,
    /// One Nagios-plugin line with perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Nagios,
}

/// Checks that this host is ready to run the proxy: config, .env, the proxy
/// binary, directories, disk, port, processes, upstream and prompts, plus the
/// operator's checks from $WARDEN_HOME/checks/*.toml.
#[derive(Debug, Parser)]
#[command(
    name = "preflight",
    version = warden::VERSION,
    after_help = "Examples:
  preflight                          # the ten checks and the operator's, for people
  preflight --json                   # one JSON document, for cron and CI (exit 1 on a failure)
  preflight --format nagios          # one Nagios/NRPE line with perfdata
  preflight --only port,upstream     # just these checks
  preflight --generate man > preflight.1   # also complete-bash, complete-zsh, complete-fish"
)]
struct Cli {
    /// The home directory (default: $WARDEN_HOME, else $XDG_STATE_HOME/warden,
    /// else ~/.local/state/warden).
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,

    /// Print one JSON document on stdout (for cron and CI).
    #[arg(long, conflicts_with = "format")]
    json: bool,

    /// Output format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<Format>,

    /// Run only these checks (comma-separated ids); the others are reported as skipped.
    #[arg(long, value_name = "ID,..", value_delimiter = ',')]
    only: Vec<String>,

    /// Do not run these checks (comma-separated ids); they are reported as skipped.
    #[arg(long, value_name = "ID,..", value_delimiter = ',')]
    skip: Vec<String>,
}

fn main() -> ExitCode {
    warden::support::cli::restore_sigpipe();
    if let Some(code) = warden::support::cli::handle_generate(Cli::command) {
        return code;
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    // Decided before parsing, so even a usage error follows the Nagios convention.
    let nagios_requested = args
        .windows(2)
        .any(|w| w[0] == "--format" && w[1] == "nagios")
        || args.iter().any(|a| a == "--format=nagios");

    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version: exit 0
        Err(e) if nagios_requested => {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("bad usage");
            return print_out(report::nagios_unknown(first), nagios::UNKNOWN);
        }
        Err(e) => e.exit(), // clap prints the usage error and exits 2
    };
    let format = if cli.json {
        Format::Json
    } else {
        cli.format.unwrap_or(Format::Human)
    };
    match run(&cli) {
        Ok(result) => print_report(&result, format),
        // Could not run: the Nagios convention's UNKNOWN line, else exit 2.
        Err(e) if format == Format::Nagios => {
            print_out(report::nagios_unknown(&e.to_string()), nagios::UNKNOWN)
        }
        Err(e) => exit::fail("preflight", &e, exit::USAGE),
    }
}

/// Why preflight could not run its checks; [`main`] chooses the exit code.
#[derive(Debug, thiserror::Error)]
enum PreflightError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Selection(#[from] UnknownCheckIds),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn run(cli: &Cli) -> Result<preflight::Report, PreflightError> {
    let home = Home::resolve(cli.home.as_deref())?;
    let opts = RunOptions {
        only: cli.only.iter().map(|s| s.trim().to_string()).collect(),
        skip: cli.skip.iter().map(|s| s.trim().to_string()).collect(),
        ..Default::default()
    };
    opts.validate(&home)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PreflightError::Runtime)?;
    let result = runtime.block_on(preflight::run(&home, &opts));
    // A check that timed out may still sit in a blocking call (a hung NFS
    // statvfs): do not wait for it.
    runtime.shutdown_background();
    Ok(result)
}

fn print_report(result: &preflight::Report, format: Format) -> ExitCode {
    match format {
        Format::Human => print_out(
            report::human(result, report::color_wanted()),
            report::exit_code(result),
        ),
        Format::Json => print_out(report::json(result), report::exit_code(result)),
        Format::Nagios => {
            let (line, code) = report::nagios(result);
            print_out(line, code)
        }
    }
}

/// Prints `text` (with a final newline) and exits with `code`. A closed stdout
/// (`preflight | head -1`) is not an error worth a panic.
fn print_out(text: String, code: i32) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let text = if text.ends_with('\n') {
        text
    } else {
        text + "\n"
    };
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    to_exit_code(code)
}
