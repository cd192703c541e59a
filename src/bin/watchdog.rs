//! `watchdog`: keeps the proxy of one home alive (docs/contract.md §8). The loop, strikes,
//! restarts and the give-up hook are in `warden::lifecycle::watchdog`; this file parses
//! arguments, loads the configuration and builds a small single-threaded runtime.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use warden::home::config::{Config, ConfigError, Overrides};
use warden::home::{Home, HomeError};
use warden::lifecycle::watchdog::{self, Options};
use warden::support::cli::HomeArgs;
use warden::support::exit::{self, to_exit_code};

/// Keeps the warden proxy alive: checks it every interval (and at once when its
/// process exits), restarts it when a check fails, and gives up after N
/// consecutive failed checks (logs it, runs watchdog.on_give_up, exits 1).
///
/// Exit codes: 0 stopped by SIGTERM/SIGINT (the proxy keeps running), or --once
/// found the proxy healthy (after restarting it if needed); 1 gave up, or --once
/// could not make it healthy; 2 could not run (another watchdog watches this home,
/// configuration error). Log: logs/watchdog.log.
///
/// Examples:
///   watchdog                                 # foreground, settings from [watchdog] in warden.toml
///   watchdog --interval 10 --timeout 2       # poll every 10 s, 2 s to answer /health/ready
///   watchdog --strikes 5                     # give up after 5 consecutive failed checks
///   watchdog --once                          # for cron: exit 0 healthy (restarted if needed), 1 not
///   */5 * * * * watchdog --once --home /srv/warden    # crontab line
#[derive(Parser, Debug)]
#[command(name = "watchdog", version = warden::VERSION, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    home: HomeArgs,
    /// Seconds between checks [default: watchdog.interval, 30]
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    interval: Option<u64>,
    /// Seconds /health/ready has to answer [default: watchdog.health_timeout, 5]
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Consecutive failed checks before giving up [default: watchdog.strikes, 3]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    strikes: Option<u32>,
    /// One check, one restart if needed; exit 0 healthy, 1 not
    #[arg(long)]
    once: bool,
}

fn main() -> ExitCode {
    if let Some(code) = warden::support::cli::handle_generate(Args::command) {
        return code;
    }
    match run(Args::parse()) {
        Ok(code) => to_exit_code(code),
        Err(e) => {
            let status = exit::fail("watchdog", &e, exit::USAGE);
            if let WatchdogError::Config { home, source } = &e {
                eprintln!("watchdog: fix it (or run `doctor`), then start the watchdog again");
                let _ = warden::home::logs::append_line(
                    home,
                    warden::home::LogKind::Watchdog,
                    &format!("cannot run: configuration error: {source}"),
                );
            }
            status
        }
    }
}

/// Why the watchdog could not run; [`main`] chooses the exit code.
#[derive(Debug, thiserror::Error)]
enum WatchdogError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("configuration error: {source}")]
    Config { home: Home, source: ConfigError },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Watches until stopped; `Ok` is the exit code.
fn run(args: Args) -> Result<i32, WatchdogError> {
    let home = Home::resolve(args.home.home.as_deref())?;
    let config = Config::load(&home, &Overrides::default())
        .map_err(|source| WatchdogError::Config { home, source })?;
    let options = Options {
        interval: args.interval,
        timeout: args.timeout,
        strikes: args.strikes,
        once: args.once,
    };
    // One thread: the watchdog waits on a timer, a pidfd and signals.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WatchdogError::Runtime)?;
    let code = runtime.block_on(watchdog::run(config, options));
    // A stop cut short by a signal may leave a blocking terminate() behind: do not
    // wait for it on the way out.
    runtime.shutdown_background();
    Ok(code)
}
