//! Command-line pieces every binary shares, so flags mean the same everywhere.

use std::path::PathBuf;

use crate::home::Home;
use crate::support::exit;

/// `--home DIR`: the one flag every binary takes (docs/contract.md §1).
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
                std::process::exit(crate::support::exit::USAGE);
            }
        }
    }
}

/// The `--version` text: `NAME X.Y.Z` (docs/contract.md §3).
pub fn version_line(binary: &str) -> String {
    format!("{binary} {}", crate::VERSION)
}

/// What `--generate KIND` writes to stdout (ripgrep's convention): a man page or a
/// shell completion script for the binary. The flag is hidden from `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generate {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

impl Generate {
    /// Every kind, as spelled on the command line.
    pub const ALL: [(&'static str, Generate); 4] = [
        ("man", Generate::Man),
        ("complete-bash", Generate::CompleteBash),
        ("complete-zsh", Generate::CompleteZsh),
        ("complete-fish", Generate::CompleteFish),
    ];

    pub fn parse(kind: &str) -> Option<Generate> {
        Self::ALL.iter().find(|(n, _)| *n == kind).map(|(_, g)| *g)
    }
}

/// The help texts' indented lines (the examples: a command, spaces, a `#`
/// comment) kept as written in the man page: each run of them goes between
/// `.nf` and `.fi`, so `man` neither joins nor justifies them.
fn examples_unfilled(page: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(page.len() + 64);
    let mut in_run = false;
    for line in page.split_inclusive(|&b| b == b'\n') {
        let indented = line.starts_with(b"  ");
        if indented && !in_run {
            out.extend_from_slice(b".nf\n");
        } else if !indented && in_run {
            out.extend_from_slice(b".fi\n");
        }
        in_run = indented;
        out.extend_from_slice(line);
    }
    if in_run {
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(b".fi\n");
    }
    out
}

/// Writes the man page or completion script for `cmd` (a binary's `clap::Command`,
/// e.g. `Args::command()`) to `out`.
pub fn generate(
    kind: Generate,
    mut cmd: clap::Command,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    match kind {
        Generate::Man => {
            cmd.build();
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            out.write_all(&examples_unfilled(&page))
        }
        Generate::CompleteBash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, out);
            Ok(())
        }
        Generate::CompleteZsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, out);
            Ok(())
        }
        Generate::CompleteFish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, out);
            Ok(())
        }
    }
}

/// A `--generate` kind that is not one of [`Generate::ALL`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "--generate {kind:?} is not one of: {}",
    Generate::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
)]
pub struct UnknownKind {
    pub kind: String,
}

/// Finds `--generate KIND` (or `--generate=KIND`) in `args` (without the program name),
/// stopping at `--`. `Some(Err(_))` for an unknown kind.
pub fn generate_request<I, S>(args: I) -> Option<Result<Generate, UnknownKind>>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        if arg == "--" {
            return None;
        }
        let kind = if arg == "--generate" {
            args.next()
                .map(|k| k.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else if let Some(kind) = arg.strip_prefix("--generate=") {
            kind.to_string()
        } else {
            continue;
        };
        return Some(Generate::parse(&kind).ok_or(UnknownKind { kind }));
    }
    None
}

/// Handles the hidden `--generate KIND` flag for a binary: call it first in `main`,
/// before parsing, so it works whatever else the binary requires (a subcommand, say):
///
/// ```ignore
/// if let Some(code) = warden::support::cli::handle_generate(Args::command) {
///     return code;
/// }
/// ```
///
/// Returns `None` when the flag is absent; otherwise prints to stdout and returns the
/// exit code (2, with the valid kinds, for an unknown one).
pub fn handle_generate(command: impl FnOnce() -> clap::Command) -> Option<std::process::ExitCode> {
    let request = generate_request(std::env::args_os().skip(1))?;
    let cmd = command();
    let name = cmd.get_name().to_string();
    let kind = match request {
        Ok(kind) => kind,
        Err(e) => return Some(exit::fail(&name, &e, exit::USAGE)),
    };
    let mut stdout = std::io::stdout().lock();
    match generate(kind, cmd, &mut stdout).and_then(|()| std::io::Write::flush(&mut stdout)) {
        Ok(()) => Some(exit::to_exit_code(exit::OK)),
        // A closed pipe (`proxy --generate man | head`) is not worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Some(exit::to_exit_code(exit::OK)),
        Err(e) => {
            eprintln!("{name}: cannot write the output: {e}");
            Some(exit::to_exit_code(exit::FAILED))
        }
    }
}

/// Restores the default SIGPIPE action for command-line tools, so
/// `daemon status | head -1` ends quietly instead of panicking on a closed pipe
/// (Rust ignores SIGPIPE by default, which suits servers, not filters).
pub fn restore_sigpipe() {
    // SAFETY: called at the start of main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_request_is_found_anywhere_before_double_dash() {
        assert_eq!(generate_request(["--home", "/h"]), None);
        assert_eq!(
            generate_request(["--home", "/h", "--generate", "man"]),
            Some(Ok(Generate::Man))
        );
        assert_eq!(
            generate_request(["--generate=complete-zsh"]),
            Some(Ok(Generate::CompleteZsh))
        );
        assert_eq!(
            generate_request(["--generate", "complete-tcsh"]),
            Some(Err(UnknownKind {
                kind: "complete-tcsh".to_string()
            }))
        );
        assert_eq!(
            generate_request(["--generate"]),
            Some(Err(UnknownKind {
                kind: String::new()
            }))
        );
        assert_eq!(generate_request(["--", "--generate", "man"]), None);
    }

    #[test]
    fn man_page_examples_are_neither_joined_nor_justified() {
        let cmd = clap::Command::new("demo").about("A demo").after_help(
            "Examples:\n  demo start --port 8080        # on another port\n  demo --json   # one JSON document, for cron and CI (exit 1 on a failure)",
        );
        let mut out = Vec::new();
        generate(Generate::Man, cmd, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let start = text.find(".nf\n").expect("examples in a no-fill block");
        let end = text[start..].find(".fi\n").expect("the block ends") + start;
        let block = &text[start..end];
        assert!(block.contains("demo start"), "{text}");
        assert!(block.contains("demo \\-\\-json"), "{text}");
    }

    #[test]
    fn every_kind_renders_for_a_command_with_subcommands() {
        let cmd = clap::Command::new("demo")
            .version("1.2.3")
            .about("A demo")
            .arg(clap::Arg::new("home").long("home").global(true))
            .subcommand(clap::Command::new("start").about("Starts it"));
        for (name, kind) in Generate::ALL {
            let mut out = Vec::new();
            generate(kind, cmd.clone(), &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("home"), "{name}: {text}");
            assert!(text.contains("start"), "{name}: {text}");
        }
    }
}
