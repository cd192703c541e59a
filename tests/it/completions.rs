//! Shell completions, man pages, `--version` and `--help` of the binaries
//! (`--generate KIND`, docs/contract.md §3). Add a binary to `BINARIES` when it lands.

use crate::support::bin;

/// The binaries built so far.
const BINARIES: [&str; 5] = ["proxy", "daemon", "preflight", "doctor", "watchdog"];

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
fn every_binary_generates_man_and_completions_even_without_a_subcommand() {
    for name in BINARIES {
        let (code, man, err) = run(name, &["--generate", "man"]);
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(man.contains(&format!(".TH {name} 1")), "{name}: {man}");
        for kind in ["complete-bash", "complete-zsh", "complete-fish"] {
            let (code, text, err) = run(name, &["--generate", kind]);
            assert_eq!(code, Some(0), "{name} {kind}: {err}");
            assert!(text.contains("home"), "{name} {kind}: {text}");
        }
    }
}

#[test]
fn every_binary_prints_name_and_version_and_help_with_examples() {
    for name in BINARIES {
        let (code, out, _) = run(name, &["--version"]);
        assert_eq!(code, Some(0), "{name}");
        assert_eq!(out.trim(), format!("{name} {}", warden::VERSION));

        let (code, out, _) = run(name, &["--help"]);
        assert_eq!(code, Some(0), "{name}");
        assert!(out.contains("Examples:"), "{name}: {out}");
        // NO_COLOR is set by `bin`: plain text, no escape sequences.
        assert!(!out.contains('\x1b'), "{name}: {out:?}");
    }
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
    for name in BINARIES {
        for (file, needle) in [
            (
                format!("share/bash-completion/completions/{name}"),
                "--home".to_string(),
            ),
            (
                format!("share/zsh/site-functions/_{name}"),
                format!("#compdef {name}"),
            ),
            (
                format!("share/fish/vendor_completions.d/{name}.fish"),
                format!("complete -c {name}"),
            ),
            (format!("share/man/man1/{name}.1"), format!(".TH {name} 1")),
        ] {
            let text = std::fs::read_to_string(prefix.path().join(&file))
                .unwrap_or_else(|e| panic!("{file}: {e}; output:\n{stdout}"));
            assert!(text.contains(&needle), "{file}: {text}");
        }
    }
}
