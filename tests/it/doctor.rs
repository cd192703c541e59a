//! `doctor` end to end: the real binary against temporary homes, with real
//! processes (a `sleep`, real proxies) and real listeners. Every process a test
//! signals or waits for is one it spawned.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::prompt_server::{PromptMode, PromptServer, remote_text};
use crate::support::{Proxy, Sleeper, TestHome, bin, eventually, free_port, text};

const MIB: u64 = 1024 * 1024;

/// `doctor --home HOME ARGS…` with a clean environment.
fn doctor_at(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = bin("doctor");
    cmd.arg("--home").arg(home).args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run doctor")
}

fn doctor(home: &TestHome, args: &[&str]) -> Output {
    doctor_at(home.path(), args, &[])
}

/// stdout must be exactly one JSON document.
fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// `doctor --json ARGS…`: the exit code and the report.
fn doctor_json(home: &TestHome, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = doctor(home, &all);
    (out.status.code().expect("exit code"), json(&out))
}

fn finding<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id} in {report:#}"))
}

/// Every finding is `ok`: what a run right after a fix run must report.
fn assert_nothing_to_fix(code: i32, report: &Value) {
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    for f in report["findings"].as_array().unwrap() {
        assert_eq!(f["status"], "ok", "{f:#}");
        assert!(f["action"].is_null(), "{f:#}");
    }
    assert_eq!(report["summary"]["fixed"], 0);
    assert_eq!(report["summary"]["needs_you"], 0);
}

/// A home on a free port that doctor has already put in order.
fn ready_home(extra_config: &str) -> TestHome {
    let home = TestHome::new();
    home.config(&format!("[server]\nport = {}\n{extra_config}", free_port()));
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, 0, "{report:#}");
    home
}

/// Type, mode, size and SHA-256 of everything under `root`.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let mode = meta.mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &path, out);
            } else {
                let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                out.insert(rel, format!("file {mode:o} {} {digest}", meta.len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn one_run_makes_a_missing_home_pass_preflight_and_the_next_finds_nothing() {
    let parent = TestHome::new();
    let root = parent.file("new/home");
    let port = free_port().to_string();
    let env = [("WARDEN_PORT", port.as_str())];

    let out = doctor_at(&root, &[], &env);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for line in ["✓ fixed: dirs", "✓ fixed: config", "✓ fixed: env"] {
        assert!(stdout.contains(line), "{line} in:\n{stdout}");
    }
    assert!(stdout.contains("fixed, nothing left broken"), "{stdout}");
    // The template's upstream is the built-in mock, which uses no prompts: doctor
    // promises no fetch.
    assert!(
        stdout.contains("no copy (this configuration sends no prompts upstream)")
            && !stdout.contains("fetched on first use"),
        "{stdout}"
    );
    // .env and warden.toml are the templates, .env private.
    assert_eq!(
        std::fs::read_to_string(root.join("warden.toml")).unwrap(),
        warden::home::templates::WARDEN_TOML
    );
    assert_eq!(
        std::fs::read_to_string(root.join(".env")).unwrap(),
        warden::home::templates::ENV
    );
    assert_eq!(mode(&root.join(".env")), 0o600);

    let mut preflight = bin("preflight");
    preflight
        .arg("--home")
        .arg(&root)
        .arg("--json")
        .env("WARDEN_PORT", &port);
    let out = preflight.output().unwrap();
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["summary"]["fail"], 0, "{report:#}");

    let out = doctor_at(&root, &["--json"], &env);
    assert_nothing_to_fix(out.status.code().unwrap(), &json(&out));
    // The action log records what the first run changed.
    let log = std::fs::read_to_string(root.join("logs/daemon.log")).unwrap();
    assert!(log.contains("doctor: env: wrote"), "{log}");
}

#[test]
fn a_60_mb_log_is_rotated_keeping_a_bounded_number_of_copies() {
    let home = ready_home("");
    let log = home.file("logs/proxy.log");
    std::fs::File::create(&log)
        .unwrap()
        .set_len(60 * MIB)
        .unwrap();
    for i in 1..=5 {
        home.write(&format!("logs/proxy.log.{i}"), &format!("copy {i}\n"));
    }
    let small = "a small watchdog log\n";
    home.write("logs/watchdog.log", small);

    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, 0, "{report:#}");
    let f = finding(&report, "logs");
    assert_eq!(f["status"], "fixed", "{f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("logs/proxy.log is 60 MiB")
    );
    assert!(
        f["action"]
            .as_str()
            .unwrap()
            .contains("to logs/proxy.log.1")
    );
    assert!(!log.exists());
    assert_eq!(
        std::fs::metadata(home.file("logs/proxy.log.1"))
            .unwrap()
            .len(),
        60 * MIB
    );
    // The older copies moved up by one; the oldest beyond five is gone.
    assert_eq!(home.read("logs/proxy.log.2"), "copy 1\n");
    assert_eq!(home.read("logs/proxy.log.5"), "copy 4\n");
    assert!(!home.file("logs/proxy.log.6").exists());
    assert_eq!(home.read("logs/watchdog.log"), small, "small logs stay");

    let (code, report) = doctor_json(&home, &[]);
    assert_nothing_to_fix(code, &report);
}

#[test]
fn a_garbage_metadata_json_is_deleted_and_refilled_from_the_remote() {
    let server = PromptServer::start(PromptMode::Up);
    let names = ["base_instructions", "gpt5_codex_instructions"];
    let sources: String = names
        .iter()
        .map(|n| {
            format!(
                "[[prompts.source]]\nname = \"{n}\"\nurl = \"{}\"\n",
                server.url(n)
            )
        })
        .collect();
    let home = ready_home(&sources);
    let meta = home.file("cache/prompts/metadata.json");
    home.write("cache/prompts/metadata.json", "{\"prompts\": [garbage");
    home.write("cache/prompts/base_instructions.md", "stale text\n");

    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, 0, "{report:#}");
    let f = finding(&report, "prompts");
    assert_eq!(f["status"], "fixed", "{f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("metadata.json is corrupt")
    );
    let action = f["action"].as_str().unwrap();
    assert!(
        action.contains("deleted cache/prompts/metadata.json"),
        "{action}"
    );
    assert!(
        action.contains("refilled base_instructions, gpt5_codex_instructions from remote"),
        "{action}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    for name in names {
        assert!(doc["prompts"][name]["sha256"].is_string(), "{doc:#}");
        assert_eq!(
            home.read(&format!("cache/prompts/{name}.md")),
            remote_text(name)
        );
    }

    let (code, report) = doctor_json(&home, &[]);
    assert_nothing_to_fix(code, &report);

    // One damaged entry: only that prompt is deleted and refilled.
    home.write(
        "cache/prompts/gpt5_codex_instructions.md",
        "edited by hand\n",
    );
    let before = home.read("cache/prompts/base_instructions.md");
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, 0, "{report:#}");
    let f = finding(&report, "prompts");
    assert_eq!(f["status"], "fixed", "{f:#}");
    assert!(
        f["message"].as_str().unwrap().contains("damaged or edited"),
        "{f:#}"
    );
    assert_eq!(
        home.read("cache/prompts/gpt5_codex_instructions.md"),
        remote_text("gpt5_codex_instructions")
    );
    assert_eq!(home.read("cache/prompts/base_instructions.md"), before);
}

#[test]
fn a_pid_file_naming_an_unrelated_live_process_is_removed_and_the_process_untouched() {
    let home = ready_home("");
    let mut sleeper = Sleeper::spawn();
    let pid_file = home.file("run/proxy.pid");

    // A bare PID, and a full record whose start time is not the sleeper's: both
    // unlocked, so stale whatever runs under that PID today.
    let identity = warden::lifecycle::process::ProcessIdentity::of(sleeper.pid()).unwrap();
    let sleeper_pid = sleeper.pid();
    let record = |start_time: u64| {
        format!(
            "{}\nstart_time={start_time}\nexe={}\nport=1\nstarted_at=2026-01-01T00:00:00Z\nhome={}\n",
            sleeper_pid,
            identity.exe.display(),
            home.path().display()
        )
    };
    for content in [
        format!("{}\n", sleeper.pid()),
        record(identity.start_time + 1),
    ] {
        home.write("run/proxy.pid", &content);
        let out = doctor(&home, &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("✓ fixed: proxy-pid"))
            .unwrap_or_else(|| panic!("no fixed proxy-pid line:\n{stdout}"));
        assert!(line.contains(&format!("PID {}", sleeper.pid())), "{line}");
        assert!(line.contains("nothing was signalled"), "{line}");
        assert!(!pid_file.exists());
        assert!(sleeper.alive(), "the unrelated process must be untouched");
    }

    // A record that does describe the live process, unlocked: doctor cannot tell a
    // proxy that lost its lock from a stale file, so it leaves both alone.
    home.write("run/proxy.pid", &record(identity.start_time));
    let (code, report) = doctor_json(&home, &["--yes"]);
    assert_eq!(code, 1, "{report:#}");
    let f = finding(&report, "proxy-pid");
    assert_eq!(f["status"], "needs-you", "{f:#}");
    assert!(pid_file.exists());
    assert!(sleeper.alive());
    std::fs::remove_file(&pid_file).unwrap();

    let (code, report) = doctor_json(&home, &[]);
    assert_nothing_to_fix(code, &report);
    assert!(sleeper.alive());
}

#[test]
fn dry_run_leaves_every_byte_as_it_was() {
    let home = TestHome::new();
    // Something for most fixes: no .env, a stale PID file, an oversized log, a
    // garbage prompt cache, and a foreign port holder (the missing home is below).
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().port();
    home.config(&format!(
        "[server]\nport = {busy}\n[logs]\nmax_bytes = 1000\n"
    ));
    std::fs::create_dir_all(home.file("logs")).unwrap();
    home.write("logs/proxy.log", &"x".repeat(5000));
    home.write("run/proxy.pid", "999999\n");
    home.write("cache/prompts/metadata.json", "garbage");
    let before = snapshot(home.path());

    for args in [
        &["--dry-run"][..],
        &["--dry-run", "--json"][..],
        &["--dry-run", "--yes", "--json"][..],
    ] {
        let out = doctor(&home, args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stdout)
        );
        assert_eq!(snapshot(home.path()), before, "{args:?} changed the home");
        if args.contains(&"--json") {
            let report = json(&out);
            assert_eq!(report["dry_run"], true);
            assert_eq!(report["summary"]["fixed"], 0, "{report:#}");
            for id in ["env", "proxy-pid", "logs", "prompts"] {
                let f = finding(&report, id);
                assert_eq!(f["status"], "would-fix", "{f:#}");
                assert!(f["action"].as_str().is_some_and(|a| !a.is_empty()));
            }
            assert_eq!(finding(&report, "port")["status"], "needs-you");
        } else {
            let stdout = text(&out.stdout);
            assert!(stdout.contains("→ would fix: env"), "{stdout}");
            assert!(stdout.contains("would write"), "{stdout}");
            assert!(stdout.contains("dry run, nothing was changed"), "{stdout}");
        }
    }
    // And the missing home: a dry run does not create it.
    let missing = home.file("not-yet");
    let out = doctor_at(&missing, &["--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists());
    drop(holder);
}

#[test]
fn env_readable_by_others_is_tightened_to_0600() {
    let home = ready_home("");
    let env = home.file(".env");
    let content = "OPENAI_API_KEY=sk-proj-doctortest123\n";
    std::fs::write(&env, content).unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = doctor(&home, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("✓ fixed: env — tightened") && stdout.contains("from 0644 to 0600"),
        "{stdout}"
    );
    assert_eq!(mode(&env), 0o600);
    assert_eq!(std::fs::read_to_string(&env).unwrap(), content);
    assert!(!stdout.contains("doctortest123"));
    let (code, report) = doctor_json(&home, &[]);
    assert_nothing_to_fix(code, &report);
}

#[test]
fn an_api_key_that_looks_wrong_is_reported_with_where_to_change_it_never_printed() {
    // Nothing listens there: `upstream` fails fast, and the key is judged anyway.
    let url = format!("http://127.0.0.1:{}/v1", free_port());
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nport = {}\n[upstream]\nurl = \"{url}\"\n",
        free_port()
    ));
    let env = home.file(".env");
    for (content, says) in [
        (
            "OPENAI_API_KEY=\"  sk-proj-secretvalue1  \"\n",
            "whitespace",
        ),
        ("OPENAI_API_KEY='\"sk-proj-secretvalue1\"'\n", "quotes"),
        ("OPENAI_API_KEY=sk-...\n", "placeholder"),
        ("OPENAI_API_KEY=\n", "is empty"),
    ] {
        home.write(".env", content);
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
        for args in [&[][..], &["--json"][..]] {
            let out = doctor(&home, args);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
            let stdout = text(&out.stdout);
            assert!(!stdout.contains("secretvalue1"), "{stdout}");
            assert_eq!(std::fs::read_to_string(&env).unwrap(), content);
            if args.is_empty() {
                assert!(stdout.contains("! needs you: api-key"), "{stdout}");
                continue;
            }
            let report = json(&out);
            let f = finding(&report, "api-key");
            assert_eq!(f["status"], "needs-you", "{f:#}");
            assert!(f["message"].as_str().unwrap().contains(says), "{f:#}");
            let hint = f["hint"].as_str().unwrap();
            assert!(hint.contains(&env.display().to_string()), "{hint}");
            assert!(hint.contains("OPENAI_API_KEY="), "{hint}");
        }
    }
}

#[test]
fn a_foreign_port_holder_is_named_and_left_alone_even_with_yes() {
    // Two holders this home did not start: a listener of the test process, and a
    // real proxy of another home.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let home = TestHome::new();
    home.config(&format!("[server]\nport = {port}\n"));

    let (code, report) = doctor_json(&home, &["--yes"]);
    assert_eq!(code, 1, "{report:#}");
    let f = finding(&report, "port");
    assert_eq!(f["status"], "needs-you", "{f:#}");
    let me = std::process::id();
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains(&format!("PID {me} (")),
        "{f:#}"
    );
    let hint = f["hint"].as_str().unwrap();
    assert!(hint.contains(&format!("kill {me}")), "{hint}");
    assert!(hint.contains("server.port in"), "{hint}");
    assert!(hint.contains(&home.file("warden.toml").display().to_string()));
    // Still listening: accept a connection on it.
    let _conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    listener.accept().unwrap();

    let other = TestHome::new();
    let mut proxy = Proxy::start(&other, &[], &[]);
    let other_port = proxy.url.rsplit(':').next().unwrap().to_string();
    home.config(&format!("[server]\nport = {other_port}\n"));
    let (code, report) = doctor_json(&home, &["--yes"]);
    assert_eq!(code, 1, "{report:#}");
    let f = finding(&report, "port");
    assert_eq!(f["status"], "needs-you", "{f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains(&format!("PID {}", proxy.pid())),
        "{f:#}"
    );
    assert_eq!(finding(&report, "orphans")["status"], "ok");
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "another home's proxy must be left running"
    );
}

#[test]
fn an_orphaned_proxy_is_stopped_only_with_yes() {
    let home = TestHome::new();
    let mut proxy = Proxy::start(&home, &[], &[]);
    let pid_file = home.file("run/proxy.pid");
    eventually("the proxy's PID file", || pid_file.exists());
    // The home's port is the one its running proxy holds: that is fine.
    let port = proxy.url.rsplit(':').next().unwrap().to_string();
    home.config(&format!(
        "[server]\nport = {port}\n[daemon]\nstop_timeout = 5\n"
    ));
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, 0, "{report:#}");
    let f = finding(&report, "port");
    assert_eq!(f["status"], "ok", "{f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains(&format!("this home's proxy, PID {}", proxy.pid())),
        "{f:#}"
    );
    assert_eq!(finding(&report, "orphans")["status"], "ok");

    // Deleted from under it: the proxy runs on, unknown to any PID file.
    std::fs::remove_file(&pid_file).unwrap();
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, 1, "{report:#}");
    let f = finding(&report, "orphans");
    assert_eq!(f["status"], "needs-you", "{f:#}");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains(&format!("PID {}", proxy.pid())),
        "{f:#}"
    );
    assert!(f["hint"].as_str().unwrap().contains("--yes"), "{f:#}");
    let f = finding(&report, "port");
    assert_eq!(f["status"], "needs-you", "{f:#}");
    assert!(
        f["message"].as_str().unwrap().contains("orphaned proxy"),
        "{f:#}"
    );
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "not without --yes"
    );

    let (code, report) = doctor_json(&home, &["--dry-run", "--yes"]);
    assert_eq!(code, 1, "{report:#}");
    let f = finding(&report, "orphans");
    assert_eq!(f["status"], "would-fix", "{f:#}");
    assert!(
        f["action"]
            .as_str()
            .unwrap()
            .contains(&format!("stop PID {}", proxy.pid()))
    );
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "not in a dry run"
    );

    let (code, report) = doctor_json(&home, &["--yes"]);
    assert_eq!(code, 0, "{report:#}");
    let f = finding(&report, "orphans");
    assert_eq!(f["status"], "fixed", "{f:#}");
    assert!(
        f["action"]
            .as_str()
            .unwrap()
            .contains(&format!("stopped orphaned proxy PID {}", proxy.pid())),
        "{f:#}"
    );
    // SIGTERM: the proxy drained and exited 0; its port is free again.
    assert!(proxy.wait().success());
    assert_eq!(finding(&report, "port")["status"], "ok", "{report:#}");

    let (code, report) = doctor_json(&home, &[]);
    assert_nothing_to_fix(code, &report);
}

#[test]
fn version_help_and_exit_codes() {
    let home = TestHome::new();
    let out = bin("doctor").arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("doctor {}", env!("CARGO_PKG_VERSION"))
    );
    let out = bin("doctor").arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in ["Examples:", "--dry-run", "--json", "--yes", "--home"] {
        assert!(help.contains(needle), "{needle} in:\n{help}");
    }
    let out = doctor(&home, &["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));

    // 1 while something needs you, 0 once nothing is left broken.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().port();
    home.config(&format!("[server]\nport = {busy}\n"));
    let out = doctor(&home, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("! needs you: port"), "{stdout}");
    assert!(stdout.contains("something needs you"), "{stdout}");
    drop(holder);
    home.config(&format!("[server]\nport = {}\n", free_port()));
    let out = doctor(&home, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("nothing to fix"));
}
