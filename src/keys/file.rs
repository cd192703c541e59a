//! `keys.toml`: every client key's name, the SHA-256 of its secret (never the
//! secret), its limits and its state. Written atomically at mode 0600 by
//! `proxy keys`; read by the proxy at start and again whenever it changes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::period::Period;

/// At most this many keys in one file (each has its counters and metric labels).
pub const MAX_KEYS: usize = 10_000;

/// A key file is at most this many bytes (10,000 keys with long model lists fit).
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// What a secret starts with.
pub const SECRET_PREFIX: &str = "wk-";

/// The file's shape.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(default, rename = "key", skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyEntry>,
}

/// One key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// `[A-Za-z0-9_.@-]+`, unique: what the ledger, metrics and logs say.
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    /// `wk-…` plus the secret's last 4 characters, to recognise it by.
    #[serde(default)]
    pub hint: String,
    /// Model patterns it may use (as `[[providers]].models`); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub period: Period,
    /// RFC 3339 (UTC); after it the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default)]
    pub created: String,
    /// When it was revoked (RFC 3339); a revoked key is refused but still counts
    /// for `require = "auto"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

impl KeyEntry {
    /// Parsed expiry (validated at load).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    }
}

/// Why `keys.toml` cannot be used: names the file, the key entry and the line.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {message}", line.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<(usize, usize)>,
        message: String,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The SHA-256 of a secret, in hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `wk-…` plus the last 4 characters: the most of a key ever shown.
pub fn hint_of(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{SECRET_PREFIX}…{tail}")
}

/// A new secret: `wk-` and 48 hex digits from the system's random source.
pub fn new_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(bytes)))
}

/// Whether `name` is a valid key name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "-"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
}

impl KeyFile {
    /// Reads `path`; a missing file is an empty one (`Ok(None)`).
    pub fn load(path: &Path) -> Result<Option<KeyFile>, KeyFileError> {
        let read = std::fs::File::open(path).and_then(|f| {
            use std::io::Read;
            let mut text = String::new();
            // One byte past the bound tells a file that is too large.
            f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
            Ok(text)
        });
        let text = match read {
            Ok(text) if text.len() as u64 > MAX_FILE_BYTES => {
                return Err(KeyFileError::Invalid {
                    path: path.into(),
                    line: None,
                    message: format!(
                        "larger than {} MiB: a key file holds at most {MAX_KEYS} keys; \
                         remove keys nobody uses",
                        MAX_FILE_BYTES >> 20
                    ),
                });
            }
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyFileError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        Self::parse(&text, path).map(Some)
    }

    /// Parses and validates the text of a key file.
    pub fn parse(text: &str, path: &Path) -> Result<KeyFile, KeyFileError> {
        let invalid = |line, message: String| KeyFileError::Invalid {
            path: path.into(),
            line,
            message,
        };
        let file: KeyFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| crate::home::config::line_col(text, s.start));
            invalid(line, e.message().trim().to_string())
        })?;
        if file.keys.len() > MAX_KEYS {
            return Err(invalid(
                None,
                format!(
                    "{} keys: at most {MAX_KEYS} are allowed; remove keys nobody uses \
                     (`proxy keys list` shows when each was last used)",
                    file.keys.len()
                ),
            ));
        }
        let line_of = |name: &str| {
            text.find(&format!("name = {name:?}"))
                .map(|at| crate::home::config::line_col(text, at))
        };
        let mut seen = std::collections::HashSet::new();
        for (i, key) in file.keys.iter().enumerate() {
            let at = |field: &str, why: String| {
                invalid(
                    line_of(&key.name),
                    format!("key[{i}] ({:?}).{field}: {why}", key.name),
                )
            };
            if !valid_name(&key.name) {
                return Err(at(
                    "name",
                    "must be 1-64 letters, digits, '_', '-', '.' or '@'".into(),
                ));
            }
            if !seen.insert(key.name.as_str()) {
                return Err(at("name", "is listed twice".into()));
            }
            if key.sha256.len() != 64 || !key.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(at(
                    "sha256",
                    "is not a 64-character hex SHA-256 digest (keys.toml keeps hashes, never secrets)"
                        .into(),
                ));
            }
            for (field, value) in [
                ("rpm", key.rpm),
                ("tpm", key.tpm),
                ("max_parallel", key.max_parallel),
                ("budget_tokens", key.budget_tokens),
            ] {
                if value == Some(0) {
                    return Err(at(
                        field,
                        "must be at least 1 (leave it out for no limit)".into(),
                    ));
                }
            }
            if let Some(usd) = key.budget_usd {
                if !usd.is_finite() || usd <= 0.0 {
                    return Err(at("budget_usd", format!("{usd} is not a positive amount")));
                }
            }
            if key.budget_usd.is_some() && key.budget_tokens.is_some() {
                return Err(at(
                    "budget_usd",
                    "a key has a budget in tokens or in USD, not both".into(),
                ));
            }
            if let Some(expires) = &key.expires {
                if humantime::parse_rfc3339_weak(expires).is_err() {
                    return Err(at(
                        "expires",
                        format!("{expires:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z"),
                    ));
                }
            }
            for pattern in &key.models {
                if pattern.is_empty() || pattern[..pattern.len() - 1].contains('*') {
                    return Err(at(
                        "models",
                        format!("{pattern:?}: a model name or a prefix ending in one '*'"),
                    ));
                }
            }
        }
        Ok(file)
    }

    /// Writes the file atomically at mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let mut text = String::from(
            "# Client keys for warden, written by `proxy keys`. Secrets are never stored:\n\
             # only their SHA-256. Edit limits here or with `proxy keys`; the proxy\n\
             # re-reads this file within a second of a change.\n\n",
        );
        text.push_str(&toml::to_string(self).map_err(|e| KeyFileError::Invalid {
            path: path.into(),
            line: None,
            message: e.to_string(),
        })?);
        crate::home::atomic_file::write(path, text.as_bytes(), Some(0o600)).map_err(|source| {
            KeyFileError::Write {
                path: path.into(),
                source,
            }
        })
    }

    pub fn find(&self, name: &str) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.name == name)
    }

    pub fn find_mut(&mut self, name: &str) -> Option<&mut KeyEntry> {
        self.keys.iter_mut().find(|k| k.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_shows_the_last_four_only() {
        assert_eq!(hint_of("wk-0123456789abcdef"), "wk-…cdef");
        assert_eq!(hash_secret("x").len(), 64);
        let s = new_secret().unwrap();
        assert!(s.starts_with("wk-") && s.len() == 51);
        assert_ne!(s, new_secret().unwrap());
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_line() {
        let text = "[[key]]\nname = \"ok\"\nsha256 = \"00\"\n";
        let e = KeyFile::parse(text, Path::new("/h/keys.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/h/keys.toml:2:1: "), "{e}");
        assert!(e.contains("\"ok\").sha256"), "{e}");
        let e = KeyFile::parse("[[key]]\nnme = 1\n", Path::new("/h/keys.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:"), "{e}");
    }
}
