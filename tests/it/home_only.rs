//! Everything warden writes stays under its home: with `HOME` and `TMPDIR`
//! pointing at empty folders, a full round of every binary leaves them empty.

use crate::support::{TestHome, bin, free_port};

fn entries(dir: &std::path::Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn nothing_is_written_outside_the_home() {
    let fake_home = tempfile::tempdir().unwrap();
    let fake_tmp = tempfile::tempdir().unwrap();
    let home = TestHome::new();
    home.config(&format!("[server]\nport = {}\n", free_port()));
    let run = |name: &str, args: &[&str]| {
        let out = bin(name)
            .env("HOME", fake_home.path())
            .env("TMPDIR", fake_tmp.path())
            .env("XDG_STATE_HOME", fake_home.path().join("state"))
            .arg("--home")
            .arg(home.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run("doctor", &[]).0, Some(0));
    assert_eq!(run("preflight", &["--json"]).0, Some(0));
    let started = run("daemon", &["start"]);
    assert_eq!(started.0, Some(0), "{}", started.1);
    assert_eq!(run("daemon", &["restart"]).0, Some(0));
    assert_eq!(run("watchdog", &["--once"]).0, Some(0));
    assert_eq!(run("daemon", &["status"]).0, Some(0));
    assert_eq!(run("proxy", &["prompts", "status"]).0, Some(0));
    assert_eq!(run("daemon", &["stop"]).0, Some(0));
    assert_eq!(entries(fake_home.path()), Vec::<String>::new());
    assert_eq!(entries(fake_tmp.path()), Vec::<String>::new());
}
