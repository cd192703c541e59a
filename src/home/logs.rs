//! Reading and rotating the files under `logs/`: `daemon logs`, the action log
//! of `daemon`/`watchdog`, and rotation for `daemon restart` and `doctor`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::home::{Home, LogKind};

/// How many rotated copies are kept (`proxy.log.1` … `proxy.log.5`).
pub const KEEP_ROTATED: usize = 5;

/// Appends one timestamped line to a log (one `write` with `O_APPEND`, so
/// concurrent writers never interleave within a line).
pub fn append_line(home: &Home, kind: LogKind, message: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(home.logs_dir())?;
    let line = format!("{} {message}\n", crate::support::time::now_rfc3339());
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.log_file(kind))?
        .write_all(line.as_bytes())
}

/// The last `n` lines of a file (fewer if it is shorter; none if it is missing).
pub fn tail_lines(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // Read backwards in blocks until enough newlines are seen: cheap on a 50 MB log.
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    const BLOCK: u64 = 64 * 1024;
    while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= n {
        let read_from = start.saturating_sub(BLOCK);
        let mut block = vec![0u8; (start - read_from) as usize];
        file.seek(SeekFrom::Start(read_from))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        start = read_from;
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|l| l.to_string()).collect())
}

/// Prints the last `n` lines, then new lines as they are written, until `stop`
/// returns true. Survives rotation (the file is reopened when it shrinks or is
/// replaced).
pub fn follow(
    path: &Path,
    n: usize,
    out: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for line in tail_lines(path, n)? {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    let open_at_end = || -> Option<(File, u64, u64)> {
        let mut f = File::open(path).ok()?;
        let meta = f.metadata().ok()?;
        let pos = f.seek(SeekFrom::End(0)).ok()?;
        Some((f, pos, meta.ino()))
    };
    let mut current = open_at_end();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop() {
        match &mut current {
            None => current = open_at_end().map(|(f, _, ino)| (f, 0, ino)),
            Some((file, pos, ino)) => {
                let replaced = std::fs::metadata(path)
                    .map(|m| m.ino() != *ino || m.len() < *pos)
                    .unwrap_or(false);
                let n = file.read(&mut buf)?;
                if n > 0 {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                    *pos += n as u64;
                    continue;
                }
                if replaced {
                    // Rotated: read what remains of the old file (done above), then the new one.
                    current = File::open(path).ok().and_then(|f| {
                        let ino = f.metadata().ok()?.ino();
                        Some((f, 0, ino))
                    });
                    continue;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Rotates `path` when it is larger than `max_bytes`: `x.log` → `x.log.1`, the
/// older copies shift up, and at most [`KEEP_ROTATED`] are kept. A process that
/// still has the old file open keeps writing to `x.log.1`, which loses nothing.
pub fn rotate_if_over(path: &Path, max_bytes: u64) -> std::io::Result<Option<PathBuf>> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(None);
    }
    let numbered = |i: usize| PathBuf::from(format!("{}.{i}", path.display()));
    let _ = std::fs::remove_file(numbered(KEEP_ROTATED));
    for i in (1..KEEP_ROTATED).rev() {
        let from = numbered(i);
        if from.exists() {
            std::fs::rename(&from, numbered(i + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))?;
    Ok(Some(numbered(1)))
}

/// Rotates every log of a home that is over `max_bytes`; returns what was rotated.
pub fn rotate_all(home: &Home, max_bytes: u64) -> std::io::Result<Vec<PathBuf>> {
    let mut rotated = Vec::new();
    for kind in [LogKind::Proxy, LogKind::Watchdog, LogKind::Daemon] {
        if rotate_if_over(&home.log_file(kind), max_bytes)?.is_some() {
            rotated.push(home.log_file(kind));
        }
    }
    Ok(rotated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let lines = tail_lines(&path, 3).unwrap();
        assert_eq!(lines, ["line 99997", "line 99998", "line 99999"]);
        assert!(
            tail_lines(&dir.path().join("missing"), 3)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn rotation_shifts_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.log");
        for round in 0..(KEEP_ROTATED + 2) {
            std::fs::write(&path, format!("round {round} {}", "x".repeat(100))).unwrap();
            assert!(rotate_if_over(&path, 10).unwrap().is_some());
        }
        assert!(!path.exists());
        let newest = std::fs::read_to_string(dir.path().join("proxy.log.1")).unwrap();
        assert!(newest.starts_with(&format!("round {}", KEEP_ROTATED + 1)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), KEEP_ROTATED);
        std::fs::write(&path, "small").unwrap();
        assert!(rotate_if_over(&path, 10).unwrap().is_none());
    }
}
