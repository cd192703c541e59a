//! Shell completions, man pages and `--version` of the binaries (`--generate KIND`).

use crate::support::bin;

fn run(name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bin(name).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn proxy_generates_a_man_page_and_completions() {
    let (code, man, err) = run("proxy", &["--generate", "man"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(man.contains(".TH proxy 1"), "{man}");
    assert!(man.contains("\\-\\-home"), "{man}");

    let (code, bash, _) = run("proxy", &["--generate", "complete-bash"]);
    assert_eq!(code, Some(0));
    assert!(bash.contains("--home"), "{bash}");
    assert!(bash.contains("complete -F"), "{bash}");

    let (code, zsh, _) = run("proxy", &["--generate=complete-zsh"]);
    assert_eq!(code, Some(0));
    assert!(zsh.starts_with("#compdef proxy"), "{zsh}");

    let (code, fish, _) = run("proxy", &["--generate", "complete-fish"]);
    assert_eq!(code, Some(0));
    assert!(fish.contains("complete -c proxy"), "{fish}");

    let (code, out, err) = run("proxy", &["--generate", "complete-tcsh"]);
    assert_eq!(code, Some(2));
    assert!(out.is_empty());
    assert!(err.contains("complete-bash"), "{err}");
}

#[test]
fn proxy_version_and_help() {
    let (code, out, _) = run("proxy", &["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), format!("proxy {}", warden::VERSION));

    let (code, out, _) = run("proxy", &["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Examples:"), "{out}");
    // NO_COLOR is set by `bin`: plain text, no escape sequences.
    assert!(!out.contains('\x1b'), "{out:?}");
}

#[test]
fn install_completions_script_installs_what_the_binaries_generate() {
    let prefix = tempfile::tempdir().unwrap();
    let proxy = std::path::Path::new(env!("CARGO_BIN_EXE_proxy"));
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/install-completions.sh"
        ))
        .arg("--prefix")
        .arg(prefix.path())
        .arg("--bin-dir")
        .arg(proxy.parent().unwrap())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (file, needle) in [
        ("share/bash-completion/completions/proxy", "--home"),
        ("share/zsh/site-functions/_proxy", "#compdef proxy"),
        (
            "share/fish/vendor_completions.d/proxy.fish",
            "complete -c proxy",
        ),
        ("share/man/man1/proxy.1", ".TH proxy 1"),
    ] {
        let text = std::fs::read_to_string(prefix.path().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}; output:\n{stdout}"));
        assert!(text.contains(needle), "{file}: {text}");
    }
}
