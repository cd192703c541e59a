//! Atomic file writes: a reader sees the old file or the new one, never half of one.
//!
//! Everything warden writes that another process reads (PID files, the prompt cache,
//! templates written by `doctor`) goes through here: write a temporary file in the
//! same directory, flush it to disk, then rename it over the target.

use std::io::Write;
use std::path::Path;

/// A complete, flushed temporary file beside `path`, ready to be renamed over it.
fn prepared(
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// Writes `bytes` to `path` atomically, creating parent directories, with `mode`
/// (e.g. `0o600`) when given.
pub fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    prepared(path, bytes, mode)?
        .persist(path)
        .map_err(|e| e.error)?;
    Ok(())
}

/// Creates `path` with `bytes` (and `mode` when given) only if nothing is there:
/// the file appears complete or not at all, and an existing file is never
/// replaced. Returns `false`, writing nothing, when `path` already exists.
pub fn create_new(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<bool> {
    match prepared(path, bytes, mode)?.persist_noclobber(path) {
        Ok(_) => Ok(true),
        // The temporary file is removed when the error drops.
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.error),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_content_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file.txt");
        super::write(&path, b"one", None).unwrap();
        super::write(&path, b"two", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary files are left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn create_new_never_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        assert!(super::create_new(&path, b"first", Some(0o600)).unwrap());
        assert!(!super::create_new(&path, b"second", Some(0o644)).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
