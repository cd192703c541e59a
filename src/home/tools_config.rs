//! `[tools]` in `warden.toml`: tools the gateway itself runs over NATS
//! (docs/contract.md §18). The gateway part lives in `src/tools/`.

use serde::{Deserialize, Serialize};

/// `[tools]`: off while no tool is declared.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// A call of tool NAME is a NATS request to `SUBJECT.NAME`.
    pub subject: String,
    /// Seconds one call may take.
    pub timeout: u64,
    /// Model calls per request, at most.
    pub max_rounds: u32,
    /// The server tools offered to the model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub declare: Vec<DeclaredTool>,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            subject: "tools.execute".into(),
            timeout: 30,
            max_rounds: 8,
            declare: Vec::new(),
        }
    }
}

impl ToolsConfig {
    /// Whether any server tool is declared (else nothing of `[tools]` runs).
    pub fn enabled(&self) -> bool {
        !self.declare.is_empty()
    }
}

/// One `[[tools.declare]]` entry: a function tool as the model sees it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredTool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A JSON Schema object; `{"type":"object"}` when left out.
    #[serde(default = "any_object")]
    pub parameters: serde_json::Value,
}

fn any_object() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// Longest tool name (OpenAI's limit for function names).
pub const MAX_NAME: usize = 64;
/// Most tools declared.
pub const MAX_TOOLS: usize = 128;

/// Checks `[tools]`: the offending key and why.
pub fn validate(t: &ToolsConfig, nats_enabled: bool) -> Result<(), (String, String)> {
    let err = |key: String, msg: String| Err((key, msg));
    if !super::config::is_subject(&t.subject) {
        return err(
            "tools.subject".into(),
            format!(
                "{:?} is not a NATS subject: dot-separated tokens, no spaces or wildcards",
                t.subject
            ),
        );
    }
    if !(1..=3600).contains(&t.timeout) {
        return err(
            "tools.timeout".into(),
            format!(
                "{} is out of range: must be from 1 to 3600 seconds",
                t.timeout
            ),
        );
    }
    if !(1..=100).contains(&t.max_rounds) {
        return err(
            "tools.max_rounds".into(),
            format!("{} is out of range: must be from 1 to 100", t.max_rounds),
        );
    }
    if t.declare.len() > MAX_TOOLS {
        return err(
            "tools.declare".into(),
            format!("{} tools declared: at most {MAX_TOOLS}", t.declare.len()),
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, tool) in t.declare.iter().enumerate() {
        let key = |k: &str| format!("tools.declare[{i}].{k}");
        if tool.name.is_empty()
            || tool.name.len() > MAX_NAME
            || !tool
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return err(
                key("name"),
                format!(
                    "{:?} must be 1 to {MAX_NAME} letters, digits, '_' or '-' (it is also the last token of the NATS subject)",
                    tool.name
                ),
            );
        }
        if !names.insert(tool.name.as_str()) {
            return err(key("name"), format!("{:?} is declared twice", tool.name));
        }
        if !tool.parameters.is_object() {
            return err(
                key("parameters"),
                "must be a table: a JSON Schema object such as { type = \"object\", properties = { city = { type = \"string\" } } }".into(),
            );
        }
    }
    if t.enabled() && !nats_enabled {
        return err(
            "tools.declare".into(),
            "server tools are called over NATS: set nats.url (or remove the [[tools.declare]] entries)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> DeclaredTool {
        DeclaredTool {
            name: name.into(),
            description: String::new(),
            parameters: any_object(),
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let ok = ToolsConfig {
            declare: vec![tool("get_weather")],
            ..ToolsConfig::default()
        };
        assert!(validate(&ok, true).is_ok());
        assert_eq!(validate(&ok, false).unwrap_err().0, "tools.declare");
        assert!(validate(&ToolsConfig::default(), false).is_ok());
        let cases = [
            (
                ToolsConfig {
                    subject: "a.*".into(),
                    ..ok.clone()
                },
                "tools.subject",
            ),
            (
                ToolsConfig {
                    timeout: 0,
                    ..ok.clone()
                },
                "tools.timeout",
            ),
            (
                ToolsConfig {
                    max_rounds: 101,
                    ..ok.clone()
                },
                "tools.max_rounds",
            ),
            (
                ToolsConfig {
                    declare: vec![tool("a.b")],
                    ..ok.clone()
                },
                "tools.declare[0].name",
            ),
            (
                ToolsConfig {
                    declare: vec![tool("x"), tool("x")],
                    ..ok.clone()
                },
                "tools.declare[1].name",
            ),
            (
                ToolsConfig {
                    declare: vec![DeclaredTool {
                        parameters: serde_json::json!("string"),
                        ..tool("x")
                    }],
                    ..ok.clone()
                },
                "tools.declare[0].parameters",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(validate(&config, true).unwrap_err().0, key, "{config:?}");
        }
    }

    #[test]
    fn a_bad_value_in_the_file_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::at(dir.path());
        let load = |text: &str| {
            std::fs::write(home.config_file(), text).unwrap();
            crate::home::config::Config::load_with_env(
                &home,
                &crate::home::config::Overrides::default(),
                crate::home::env::EnvSource::default(),
            )
            .unwrap_err()
        };
        let nats = "[nats]\nurl = \"nats://127.0.0.1:4222\"\n";
        let err = load(&format!(
            "{nats}[tools]\ntimeout = 0\n[[tools.declare]]\nname = \"a\"\n"
        ));
        assert_eq!(err.key.as_deref(), Some("tools.timeout"));
        assert_eq!(err.line_col.map(|(l, _)| l), Some(4), "{err}");
        let err = load(&format!(
            "{nats}[[tools.declare]]\nname = \"a\"\n\n[[tools.declare]]\nname = \"a\"\n"
        ));
        assert_eq!(err.key.as_deref(), Some("tools.declare[1].name"));
        assert_eq!(err.line_col.map(|(l, _)| l), Some(7), "{err}");
        let err = load("[[tools.declare]]\nname = \"a\"\n");
        assert_eq!(err.key.as_deref(), Some("tools.declare"));
        assert_eq!(err.line_col.map(|(l, _)| l), Some(1), "{err}");
    }
}
