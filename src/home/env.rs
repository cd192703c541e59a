//! Variable lookup with the documented precedence (docs/contract.md §1): the process environment first,
//! then the home's `.env` file, which never overrides a variable already set.
//!
//! The `.env` file is read into a map instead of being exported into the process:
//! mutating the environment of a multi-threaded program is unsound, and keeping the
//! two apart lets errors say exactly where a bad value came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why the home's `.env` could not be read. The message never holds a value
/// from the file (a malformed line may hold a token).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line that does not parse: `message` names the file, the line number
    /// and the key, never the value.
    #[error("{message}")]
    Syntax { path: PathBuf, message: String },
}

impl EnvError {
    /// The problem without the leading file name, for messages that name the
    /// file themselves.
    pub fn detail(&self) -> String {
        let text = self.to_string();
        let path = match self {
            EnvError::Read { path, .. } | EnvError::Syntax { path, .. } => path,
        };
        match text.strip_prefix(&format!("{}: ", path.display())) {
            Some(rest) => rest.to_string(),
            None => text,
        }
    }
}

/// Where a variable's value was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VarOrigin {
    Process,
    DotEnv(PathBuf),
}

impl std::fmt::Display for VarOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VarOrigin::Process => write!(f, "the environment"),
            VarOrigin::DotEnv(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The merged view of the process environment and the home's `.env`.
#[derive(Clone, Debug, Default)]
pub struct EnvSource {
    dotenv: HashMap<String, String>,
    dotenv_path: Option<PathBuf>,
    /// When false, the process environment is ignored (used by tests).
    use_process: bool,
}

impl EnvSource {
    /// Reads `.env` at `path` if it exists. A file that does not parse is an error
    /// naming the file and the offending line.
    pub fn load(path: &Path) -> Result<EnvSource, EnvError> {
        let mut dotenv = HashMap::new();
        let mut dotenv_path = None;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                // Every bad line at once, each named by number and key, never shown.
                let problems = line_problems(&text);
                if !problems.is_empty() {
                    return Err(EnvError::Syntax {
                        path: path.to_path_buf(),
                        message: format!("{}: {}", path.display(), problems.join("; ")),
                    });
                }
                for item in dotenvy::from_read_iter(text.as_bytes()) {
                    let (key, value) = item.map_err(|e| describe_dotenv_error(path, &text, e))?;
                    dotenv.insert(key, value);
                }
                dotenv_path = Some(path.to_path_buf());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(EnvError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        Ok(EnvSource {
            dotenv,
            dotenv_path,
            use_process: true,
        })
    }

    /// The process environment alone, as when the home has no `.env` (used when
    /// `.env` exists but does not parse, so the rest can still be checked).
    pub fn process_only() -> EnvSource {
        EnvSource {
            dotenv: HashMap::new(),
            dotenv_path: None,
            use_process: true,
        }
    }

    /// A source with only the given pairs (no process environment): for tests.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> EnvSource {
        EnvSource {
            dotenv: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dotenv_path: Some(PathBuf::from(".env")),
            use_process: false,
        }
    }

    /// The value of `key` and where it came from; empty values count as unset.
    pub fn get_with_origin(&self, key: &str) -> Option<(String, VarOrigin)> {
        if self.use_process {
            if let Ok(value) = std::env::var(key) {
                if !value.is_empty() {
                    return Some((value, VarOrigin::Process));
                }
            }
        }
        let value = self.dotenv.get(key)?;
        if value.is_empty() {
            return None;
        }
        let origin = VarOrigin::DotEnv(self.dotenv_path.clone().unwrap_or_default());
        Some((value.clone(), origin))
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.get_with_origin(key).map(|(v, _)| v)
    }

    /// The names (never the values) of the `.env` variables set, changed or
    /// removed between `self` and `next`, sorted: what a reload's log line
    /// names, so that a rotated provider key shows as applied.
    pub fn dotenv_changes(&self, next: &EnvSource) -> Vec<String> {
        let mut names: Vec<String> = self
            .dotenv
            .iter()
            .filter(|(k, v)| next.dotenv.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .chain(
                next.dotenv
                    .keys()
                    .filter(|k| !self.dotenv.contains_key(*k))
                    .cloned(),
            )
            .collect();
        names.sort();
        names
    }

    /// True when the `.env` file exists and was read.
    pub fn has_dotenv(&self) -> bool {
        self.dotenv_path.is_some()
    }
}

/// The problems of every line of a `.env` text that is not `KEY=value`, a
/// comment or blank, in words that name the line and its key but never show a
/// value (it may be a secret): a line without `=`, a key that is not a
/// variable name, and a quote that is never closed.
fn line_problems(text: &str) -> Vec<String> {
    /// An opened quote: its character, line and key.
    struct Open {
        quote: char,
        line: usize,
        key: String,
    }
    const HIDDEN: &str = "content not shown, it may hold a secret";
    let mut problems = Vec::new();
    let mut open: Option<Open> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(o) = &open {
            if closes(raw, o.quote).is_some() {
                open = None;
            }
            continue;
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            problems.push(format!("line {n} is not KEY=value ({HIDDEN})"));
            continue;
        };
        let key = key.trim();
        let valid = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.len() <= 128
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid {
            problems.push(format!(
                "line {n}: the part before '=' is not a variable name (letters, digits, '_'; {HIDDEN})"
            ));
            continue;
        }
        let value = value.trim_start();
        if let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') {
            if closes(&value[1..], quote).is_none() {
                open = Some(Open {
                    quote,
                    line: n,
                    key: key.to_string(),
                });
            }
        }
    }
    if let Some(o) = open {
        problems.push(format!(
            "line {} (key {}): the {} quote that starts the value is never closed",
            o.line,
            o.key,
            if o.quote == '"' { "double" } else { "single" }
        ));
    }
    problems
}

/// Where in `rest` the `quote` closes (a `\` escapes the next character inside
/// double quotes), if it does.
fn closes(rest: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quote == '"' {
            escaped = true;
        } else if c == quote {
            return Some(i);
        }
    }
    None
}

/// Never the line's content: a malformed line may hold a token (docs/contract.md §10).
fn describe_dotenv_error(path: &Path, text: &str, e: dotenvy::Error) -> EnvError {
    let message = match e {
        dotenvy::Error::LineParse(line, _) => {
            crate::support::redact::dotenv_line(path, text, &line)
        }
        dotenvy::Error::Io(source) => {
            return EnvError::Read {
                path: path.to_path_buf(),
                source,
            };
        }
        // Variable substitution errors name a variable, never a value.
        other => format!("{}: {other}", path.display()),
    };
    EnvError::Syntax {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_values_are_found_and_empty_means_unset() {
        let env = EnvSource::from_pairs([("A", "1"), ("B", "")]);
        assert_eq!(env.get("A").as_deref(), Some("1"));
        assert_eq!(env.get("B"), None);
        assert_eq!(env.get("C"), None);
    }

    #[test]
    fn every_bad_line_is_named_and_an_unterminated_quote_is_called_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "GOOD=1\nnot a pair sk-one\n# fine\n9BAD=sk-two\nMULTI=\"a\nb\"\nTOKEN=\"sk-live-secret\nLAST=x\n",
        )
        .unwrap();
        let err = EnvSource::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 2 is not KEY=value"), "{err}");
        assert!(err.contains("line 4: the part before '='"), "{err}");
        assert!(
            err.contains(
                "line 7 (key TOKEN): the double quote that starts the value is never closed"
            ),
            "{err}"
        );
        assert!(
            !err.contains("line 5") && !err.contains("MULTI"),
            "a closed multi-line value is fine: {err}"
        );
        for secret in ["sk-one", "sk-two", "sk-live-secret"] {
            assert!(!err.contains(secret), "{err}");
        }
    }

    #[test]
    fn a_broken_dotenv_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "GOOD=1\nthis is not a pair\n").unwrap();
        std::fs::write(&path, "GOOD=1\nTOKEN=\"sk-live-secret\n").unwrap();
        let err = EnvSource::load(&path).unwrap_err().to_string();
        assert!(err.contains(".env"), "{err}");
        assert!(err.contains("line 2") && err.contains("TOKEN"), "{err}");
        assert!(!err.contains("sk-live-secret"), "{err}");
    }
}
