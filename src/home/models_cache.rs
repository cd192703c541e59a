//! `cache/models.json`: the model catalog cache the proxy keeps (what providers
//! with `models = []` reported, docs/contract.md §11) and `doctor` checks. Only a cache: a
//! corrupt one is ignored by the proxy and deleted by `doctor`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `cache/models.json`.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CatalogFile {
    /// RFC 3339 time of the last write.
    pub updated_at: String,
    /// Provider name -> the model ids it reported.
    pub providers: BTreeMap<String, Vec<String>>,
}

/// Why `cache/models.json` cannot be used; `doctor` deletes a corrupt one.
#[derive(Debug, thiserror::Error)]
pub enum CatalogCacheError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is corrupt: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Why `cache/models.json` cannot be used (for `doctor`); a missing one is fine.
pub fn inspect(path: &Path) -> Result<(), CatalogCacheError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<CatalogFile>(&bytes)
            .map(|_| ())
            .map_err(|source| CatalogCacheError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CatalogCacheError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the cache; `None` when it is missing or unusable (logged).
pub fn load(path: &Path) -> Option<CatalogFile> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the model catalog cache");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "the model catalog cache is corrupt: ignored (doctor deletes it)"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_cache_is_reported_and_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.json");
        assert!(inspect(&path).is_ok());
        std::fs::write(&path, b"{ half").unwrap();
        let err = inspect(&path).unwrap_err();
        assert!(matches!(err, CatalogCacheError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert_eq!(load(&path), None);
        std::fs::write(&path, br#"{"updated_at":"x","providers":{"p":["m"]}}"#).unwrap();
        assert_eq!(load(&path).unwrap().providers["p"], ["m"]);
    }
}
