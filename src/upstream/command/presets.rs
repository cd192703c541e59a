//! How one `api = "command"` provider's CLI is run: the command line from
//! [`crate::home::agent_cli`] and how its output is read.

use super::format::Format;
use crate::home::agent_cli;
use crate::home::config::{CommandFormat, CommandPreset, CommandSettings};

pub use crate::home::agent_cli::PASSED_THROUGH;

/// How each preset's output is read (cursor-agent prints Claude Code's events).
fn preset_format(p: CommandPreset) -> Format {
    match p {
        CommandPreset::ClaudeCode | CommandPreset::CursorAgent => Format::ClaudeStream,
        CommandPreset::Codex => Format::Codex,
        CommandPreset::GeminiCli => Format::Gemini,
    }
}

/// How one provider's CLI is run.
pub struct Invocation {
    settings: CommandSettings,
}

impl Invocation {
    pub fn new(settings: &CommandSettings) -> Invocation {
        Invocation {
            settings: settings.clone(),
        }
    }

    /// The program (first argument).
    pub fn program(&self) -> &str {
        agent_cli::program(&self.settings)
    }

    pub fn format(&self) -> Format {
        match (self.settings.preset, self.settings.format) {
            (Some(p), _) => preset_format(p),
            (None, CommandFormat::StreamJson) => Format::ClaudeStream,
            (None, CommandFormat::Text) => Format::Text,
        }
    }

    pub fn install_hint(&self) -> String {
        agent_cli::install_hint(&self.settings)
    }

    /// The full argv for one request (see [`agent_cli::argv`]).
    pub fn argv(&self, model: Option<&str>, requested: &str) -> Vec<String> {
        agent_cli::argv(&self.settings, model, requested)
    }
}
