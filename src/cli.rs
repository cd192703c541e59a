//! Command-line pieces every binary shares, so flags mean the same everywhere.

use std::path::PathBuf;

use crate::home::Home;

/// `--home DIR`: the one flag every binary takes (SPEC §1).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HomeArgs {
    /// Home directory [default: $WARDEN_HOME, else $XDG_STATE_HOME/warden, else ~/.local/state/warden]
    #[arg(long, value_name = "DIR", global = true)]
    pub home: Option<PathBuf>,
}

impl HomeArgs {
    /// Resolves the home or exits with status 2 and a clear message.
    pub fn resolve_or_exit(&self, binary: &str) -> Home {
        match Home::resolve(self.home.as_deref()) {
            Ok(home) => home,
            Err(e) => {
                eprintln!("{binary}: {e}");
                std::process::exit(2);
            }
        }
    }
}

/// The `--version` text: `NAME X.Y.Z` (SPEC §3).
pub fn version_line(binary: &str) -> String {
    format!("{binary} {}", crate::VERSION)
}
