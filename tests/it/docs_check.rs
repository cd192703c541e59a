//! `scripts/check-docs.sh` (also the first step of `.ci/run`) as part of `cargo test`, so a
//! broken link, a link out of the repository or a README grown past 300 lines fails here too.

use std::path::Path;
use std::process::Command;

#[test]
fn every_doc_link_resolves_inside_the_repository_and_the_readme_is_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/check-docs.sh"))
        .current_dir(root)
        .output()
        .expect("bash runs scripts/check-docs.sh (it needs python3, as scripts/test.sh installs)");
    assert!(
        out.status.success(),
        "scripts/check-docs.sh failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The version is one number: the docs show the one `--version` and `/health` report.
#[test]
fn the_docs_show_the_version_the_binaries_report() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let version = warden::VERSION;
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert!(
        read("README.md").contains(&format!("`NAME {version}`")),
        "README.md must say every binary prints `NAME {version}`"
    );
    assert!(
        read("docs/contract.md").contains(&format!("(this release: `{version}`)")),
        "docs/contract.md must name this release, {version}"
    );
    let mut wrong = Vec::new();
    let docs = std::fs::read_dir(root.join("docs")).unwrap();
    for path in docs.map(|e| e.unwrap().path()) {
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            for shown in line.split("\"version\":\"").skip(1) {
                let shown = shown.split('"').next().unwrap_or_default();
                if shown != version {
                    wrong.push(format!("{}:{}: {shown}", path.display(), i + 1));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "JSON examples show another version than {version}: {wrong:#?}"
    );
}
