//! The command line of each known agent CLI (`preset = ...` of an
//! `api = "command"` provider), run headless: its own tools
//! off, its streaming JSON output on, the prompt read from stdin.
//!
//! | preset         | command line                                                                                 | model flag |
//! |----------------|----------------------------------------------------------------------------------------------|------------|
//! | `claude-code`  | `claude -p --output-format stream-json --verbose --include-partial-messages --tools "" --strict-mcp-config --no-session-persistence` | `--model M` |
//! | `codex`        | `codex exec --json --ephemeral --skip-git-repo-check --sandbox read-only -c features.shell_tool=false -c tools.web_search=false -` | `-m M` |
//! | `gemini-cli`   | `gemini --output-format stream-json --approval-mode default --extensions none`               | `-m M` |
//! | `cursor-agent` | `cursor-agent -p --output-format stream-json --mode ask`                                     | `--model M` |

use crate::home::config::{CommandPreset, CommandSettings};

/// The variables every CLI gets from the proxy's own environment.
pub const PASSED_THROUGH: [&str; 4] = ["PATH", "HOME", "LANG", "TMPDIR"];

/// One preset's command line.
pub struct Preset {
    pub program: &'static str,
    /// Arguments before the model flag.
    pub args: &'static [&'static str],
    /// The flag that takes the model.
    pub model_flag: &'static str,
    /// Arguments after the model flag (codex's `-`: the prompt is on stdin).
    pub tail: &'static [&'static str],
    /// How to install it.
    pub install: &'static str,
}

pub fn preset(p: CommandPreset) -> Preset {
    match p {
        CommandPreset::ClaudeCode => Preset {
            program: "claude",
            args: &[
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
                "--tools",
                "",
                "--strict-mcp-config",
                "--no-session-persistence",
            ],
            model_flag: "--model",
            tail: &[],
            install: "npm i -g @anthropic-ai/claude-code, then claude login",
        },
        CommandPreset::Codex => Preset {
            program: "codex",
            args: &[
                "exec",
                "--json",
                "--ephemeral",
                "--skip-git-repo-check",
                "--sandbox",
                "read-only",
                "-c",
                "features.shell_tool=false",
                "-c",
                "tools.web_search=false",
            ],
            model_flag: "-m",
            tail: &["-"],
            install: "npm i -g @openai/codex, then codex login",
        },
        CommandPreset::GeminiCli => Preset {
            program: "gemini",
            args: &[
                "--output-format",
                "stream-json",
                "--approval-mode",
                "default",
                "--extensions",
                "none",
            ],
            model_flag: "-m",
            tail: &[],
            install: "npm i -g @google/gemini-cli, then run gemini once to sign in",
        },
        CommandPreset::CursorAgent => Preset {
            program: "cursor-agent",
            args: &["-p", "--output-format", "stream-json", "--mode", "ask"],
            model_flag: "--model",
            tail: &[],
            install: "curl https://cursor.com/install -fsS | bash, then cursor-agent login",
        },
    }
}

/// The program a command provider runs.
pub fn program(settings: &CommandSettings) -> &str {
    match settings.preset {
        Some(p) => preset(p).program,
        None => settings.command.first().map_or("", String::as_str),
    }
}

/// How to install a provider's CLI, in words.
pub fn install_hint(settings: &CommandSettings) -> String {
    match settings.preset {
        Some(p) => format!("install it: {}", preset(p).install),
        None => "install it, or put its directory on the proxy's PATH".into(),
    }
}

/// See [`Invocation::argv`].
pub fn argv(settings: &CommandSettings, model: Option<&str>, requested: &str) -> Vec<String> {
    match settings.preset {
        Some(p) => {
            let p = preset(p);
            let mut argv = vec![p.program.to_string()];
            argv.extend(p.args.iter().map(|a| a.to_string()));
            if let Some(model) = model {
                argv.push(p.model_flag.to_string());
                argv.push(model.to_string());
            }
            argv.extend(p.tail.iter().map(|a| a.to_string()));
            argv
        }
        None => settings
            .command
            .iter()
            .map(|arg| {
                if arg == "{model}" {
                    model.unwrap_or(requested).to_string()
                } else {
                    arg.clone()
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(preset: Option<CommandPreset>, command: &[&str]) -> CommandSettings {
        CommandSettings {
            preset,
            command: command.iter().map(|s| s.to_string()).collect(),
            format: crate::home::config::CommandFormat::Text,
            env: Vec::new(),
        }
    }

    #[test]
    fn presets_put_the_model_flag_before_the_stdin_marker() {
        let codex = settings(Some(CommandPreset::Codex), &[]);
        let line = argv(&codex, Some("gpt-5"), "codex/gpt-5");
        assert_eq!(line[0], "codex");
        assert_eq!(&line[line.len() - 3..], ["-m", "gpt-5", "-"]);
        let claude = settings(Some(CommandPreset::ClaudeCode), &[]);
        let line = argv(&claude, None, "claude-code");
        assert!(!line.contains(&"--model".to_string()));
        assert!(
            line.windows(2)
                .any(|w| w[0] == "--tools" && w[1].is_empty())
        );
    }

    #[test]
    fn a_custom_command_gets_the_model_where_it_says_model() {
        let custom = settings(None, &["agent", "--m", "{model}", "x{model}"]);
        assert_eq!(
            argv(&custom, Some("big"), "a/big"),
            ["agent", "--m", "big", "x{model}"]
        );
        assert_eq!(
            argv(&custom, None, "agent"),
            ["agent", "--m", "agent", "x{model}"]
        );
    }
}
