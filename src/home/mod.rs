//! The home directory: where everything warden owns lives (docs/contract.md §1).
//!
//! Every binary resolves the same home the same way, so `daemon`, `doctor` and
//! `watchdog` always look at the files the running `proxy` writes. Paths are made
//! absolute at resolution time because the daemon detaches its children and a
//! relative home would silently point somewhere else after a `chdir`.

pub mod agent_cli;
pub(crate) mod atomic_file;
pub mod config;
pub mod env;
pub mod keys_config;
pub mod logs;
pub(crate) mod models_cache;
pub mod templates;
pub mod tools_config;

use std::path::{Path, PathBuf};

/// Why the home directory could not be found.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot find a home directory: HOME is not set; pass --home DIR or set WARDEN_HOME")]
    NoHomeDir,
}

/// Which log file under `logs/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Proxy,
    Watchdog,
    Daemon,
}

impl LogKind {
    pub fn file_name(self) -> &'static str {
        match self {
            LogKind::Proxy => "proxy.log",
            LogKind::Watchdog => "watchdog.log",
            LogKind::Daemon => "daemon.log",
        }
    }
}

/// A resolved, absolute home directory and the layout beneath it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Resolves the home with the documented precedence (docs/contract.md §1): `--home` flag, then
    /// `WARDEN_HOME`, then `$XDG_STATE_HOME/warden`, then `~/.local/state/warden`.
    pub fn resolve(flag: Option<&Path>) -> Result<Home, HomeError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let root = if let Some(dir) = flag {
            dir.to_path_buf()
        } else if let Some(dir) = var("WARDEN_HOME") {
            PathBuf::from(dir)
        } else if let Some(state) = var("XDG_STATE_HOME") {
            PathBuf::from(state).join("warden")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".local/state/warden")
        } else {
            return Err(HomeError::NoHomeDir);
        };
        Ok(Home::at(root))
    }

    /// A home at an explicit path (made absolute against the current directory).
    pub fn at(root: impl Into<PathBuf>) -> Home {
        let root = root.into();
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map(|cwd| cwd.join(&root))
                .unwrap_or(root)
        };
        Home { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("warden.toml")
    }
    pub fn env_file(&self) -> PathBuf {
        self.root.join(".env")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log_file(&self, kind: LogKind) -> PathBuf {
        self.logs_dir().join(kind.file_name())
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn proxy_pid_file(&self) -> PathBuf {
        self.run_dir().join("proxy.pid")
    }
    pub fn watchdog_pid_file(&self) -> PathBuf {
        self.run_dir().join("watchdog.pid")
    }
    /// Left by `daemon stop`, removed by `daemon start`/`restart`: while it exists
    /// a watchdog stands by instead of restarting the proxy (docs/contract.md §17).
    pub fn stopped_marker(&self) -> PathBuf {
        self.run_dir().join("stopped")
    }
    /// `daemon start --host/--port`, kept so `daemon restart` and the watchdog
    /// start the proxy on the same address (removed by a `daemon start` without them).
    pub fn address_file(&self) -> PathBuf {
        self.run_dir().join("address")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn prompts_cache_dir(&self) -> PathBuf {
        self.cache_dir().join("prompts")
    }
    /// `data/`: the usage ledger's folder.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
    /// A path from the configuration: relative ones are under the home.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
    pub fn checks_dir(&self) -> PathBuf {
        self.root.join("checks")
    }

    /// The directories the toolkit needs to run (`logs/`, `run/`, `cache/`).
    pub fn required_dirs(&self) -> [PathBuf; 3] {
        [self.logs_dir(), self.run_dir(), self.cache_dir()]
    }

    /// Creates the home and its required directories (idempotent).
    pub fn ensure_dirs(&self) -> std::io::Result<()> {
        if let Some(problem) = self.root_problem() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                problem,
            ));
        }
        for dir in self.required_dirs() {
            std::fs::create_dir_all(&dir).map_err(|e| {
                let words = match std::fs::metadata(&dir) {
                    Ok(m) if !m.is_dir() => not_a_folder(&dir, self),
                    _ => format!("cannot create {}: {e}", dir.display()),
                };
                std::io::Error::new(e.kind(), words)
            })?;
        }
        Ok(())
    }

    /// The one cause when the home itself cannot be a home: its path is a file
    /// (or lies under one). Everything else about the home is then moot, so
    /// every tool says this once instead of what follows from it.
    pub fn root_problem(&self) -> Option<String> {
        let root = self.root();
        let file = root
            .ancestors()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| !m.is_dir()))?;
        Some(if file == root {
            format!(
                "the home {} is a file, not a folder: move the file aside (`mv {} {}.file`) \
                 or choose another home with --home DIR or WARDEN_HOME",
                root.display(),
                root.display(),
                root.display()
            )
        } else {
            format!(
                "the home {} cannot exist: {} is a file, not a folder; choose another home \
                 with --home DIR or WARDEN_HOME, or move that file aside",
                root.display(),
                file.display()
            )
        })
    }
}

/// A folder of the home that is a file: what it is and what to do (as
/// `preflight`'s `dirs` check says it).
fn not_a_folder(dir: &Path, home: &Home) -> String {
    format!(
        "{} is a file where warden needs a folder: move it aside (`mv {} {}.file`), \
         then run `doctor --home {}`",
        dir.display(),
        dir.display(),
        dir.display(),
        home.root().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_and_is_made_absolute() {
        let home = Home::resolve(Some(Path::new("rel/home"))).unwrap();
        assert!(home.root().is_absolute());
        assert!(home.root().ends_with("rel/home"));
        assert!(home.proxy_pid_file().ends_with("rel/home/run/proxy.pid"));
        assert!(
            home.log_file(LogKind::Watchdog)
                .ends_with("logs/watchdog.log")
        );
    }
}
