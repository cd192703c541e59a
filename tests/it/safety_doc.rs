//! SAFETY.md names, for every guarantee, the test that proves it: each named test must
//! exist, so a renamed or deleted test cannot leave a guarantee unproven unnoticed.

use std::path::Path;

/// `(file, test name)` for every `path::[tests::]name` reference in SAFETY.md; a
/// reference written `…::name` is in the same file as the one before it.
fn references(doc: &str) -> Vec<(String, String)> {
    let mut refs = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with('|')) {
        let mut last_file: Option<String> = None;
        for code in line.split('`').skip(1).step_by(2) {
            let (file, name) = if let Some(name) = code.strip_prefix("…::") {
                match &last_file {
                    Some(file) => (file.clone(), name.to_string()),
                    None => panic!("SAFETY.md: `{code}` has no file before it in: {line}"),
                }
            } else if let Some((file, rest)) = code.split_once(".rs::") {
                (format!("{file}.rs"), rest.to_string())
            } else {
                continue;
            };
            let name = name.rsplit("::").next().unwrap().to_string();
            last_file = Some(file.clone());
            refs.push((file, name));
        }
    }
    refs
}

#[test]
fn every_test_named_in_safety_md_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("SAFETY.md")).expect("SAFETY.md");
    let refs = references(&doc);
    assert!(refs.len() > 40, "too few references found: {refs:?}");
    let mut missing = Vec::new();
    for (file, name) in &refs {
        let source = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        if !source.contains(&format!("fn {name}(")) {
            missing.push(format!("{file}::{name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "SAFETY.md names tests that do not exist: {missing:#?}"
    );
}
