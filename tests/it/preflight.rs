//! `preflight` end to end: the real binary against temporary homes.
//!
//! Every test uses its own `--home` and strips the variables that would
//! otherwise leak the developer's configuration into the run. Listeners are
//! bound on 127.0.0.1 only.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use warden::lifecycle::pidfile::PidRecord;

use crate::support::{Proxy, TestHome};

/// Variables that change what preflight checks; removed for every run.
const LEAKY_VARS: &[&str] = &[
    "WARDEN_HOME",
    "WARDEN_HOST",
    "WARDEN_PORT",
    "WARDEN_UPSTREAM_URL",
    "WARDEN_UPSTREAM_API",
    "OPENAI_API_KEY",
    "XDG_STATE_HOME",
];

fn preflight(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_preflight"));
    cmd.arg("--home").arg(home);
    for var in LEAKY_VARS {
        cmd.env_remove(var);
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("preflight runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout must be exactly one JSON document.
fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            stdout(out),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report}"))
}

/// A port nobody listens on right now (bound and released on loopback).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A home as `doctor` leaves it: the directories, a private `.env`, and a
/// `warden.toml` on a free port whose prompts have local fallback files.
fn prepared_home() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), free_port());
    dir
}

fn prepare(root: &Path, port: u16) {
    for sub in ["logs", "run", "cache/prompts"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    write_private(&root.join(".env"), "# secrets and overrides\n");
    write_config(root, port, "");
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `warden.toml` with the given port, local prompt files, and `extra` appended.
fn write_config(root: &Path, port: u16, extra: &str) {
    let prompts = root.join("local-prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    let mut text = format!("[server]\nport = {port}\n\n");
    for name in ["base_instructions", "gpt5_codex_instructions"] {
        let file = prompts.join(format!("{name}.md"));
        std::fs::write(&file, format!("You are {name}.\n")).unwrap();
        text.push_str(&format!(
            "[[prompts.source]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/{name}.md\"\nfile = \"{}\"\n\n",
            file.display()
        ));
    }
    text.push_str(extra);
    std::fs::write(root.join("warden.toml"), text).unwrap();
}

#[test]
fn a_prepared_home_passes_all_ten() {
    let home = prepared_home();
    let out = run(preflight(home.path()).arg("--json"));
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    let checks = report["checks"].as_array().unwrap();
    let ids: Vec<&str> = checks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "config", "env", "binary", "dirs", "writable", "disk", "port", "process", "upstream",
            "prompts"
        ]
    );
    for c in checks {
        assert_eq!(c["status"], "pass", "{c:#}");
        assert!(c["hint"].is_null(), "{c:#}");
        for key in ["title", "message"] {
            assert!(!c[key].as_str().unwrap().is_empty(), "{c:#}");
        }
        assert!(c["duration_ms"].is_u64());
    }
    assert_eq!(report["summary"]["pass"], 10);
    // Nothing was left behind by the `writable` probe.
    assert_eq!(
        std::fs::read_dir(home.path().join("run")).unwrap().count(),
        0
    );
}

#[test]
fn human_output_numbers_the_checks_without_colour_when_piped() {
    let home = prepared_home();
    let out = run(preflight(home.path()).env_remove("NO_COLOR"));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("[1/10] PASS  warden.toml is valid — "),
        "{text}"
    );
    assert!(text.contains("[10/10] PASS  "), "{text}");
    assert!(
        text.contains("ready: 10 pass, 0 warn, 0 fail, 0 skip"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour when stdout is not a terminal"
    );
    // No pointer to doctor when nothing failed (the binary's path may contain
    // the word, as in a checkout named `wt-doctor`).
    assert!(!text.contains("`doctor"), "{text}");
}

#[test]
fn a_broken_warden_toml_fails_config_with_its_line() {
    let home = prepared_home();
    let port = free_port();
    // Line 4 holds the typo.
    std::fs::write(
        home.path().join("warden.toml"),
        format!("[server]\nport = {port}\n\nprot = 1\n"),
    )
    .unwrap();
    let out = run(preflight(home.path()).arg("--json"));
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    assert_eq!(report["ok"], false);
    let config = check(&report, "config");
    assert_eq!(config["status"], "fail", "{config:#}");
    let message = config["message"].as_str().unwrap();
    assert!(message.contains("warden.toml:4:"), "{message}");
    assert!(message.contains("prot"), "{message}");
    assert!(
        config["hint"].as_str().unwrap().contains("line 4"),
        "{config:#}"
    );
    // The rest still ran, on defaults, and says so.
    assert_eq!(report["checks"].as_array().unwrap().len(), 10);
    let port_check = check(&report, "port");
    assert!(
        port_check["message"].as_str().unwrap().contains("defaults"),
        "{port_check:#}"
    );

    // A syntax error names line and column too, and the human output sends the
    // operator to doctor.
    std::fs::write(home.path().join("warden.toml"), "[server]\nport = = 1\n").unwrap();
    let out = run(&mut preflight(home.path()));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  warden.toml is valid"), "{text}");
    assert!(text.contains("warden.toml:2:"), "{text}");
    assert!(text.contains("run `doctor --home"), "{text}");
}

#[test]
fn a_foreign_port_holder_is_named_by_pid() {
    let home = prepared_home();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    write_config(home.path(), port, "");
    let out = run(preflight(home.path()).args(["--json", "--only", "port"]));
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let port_check = check(&report, "port");
    assert_eq!(port_check["status"], "fail", "{port_check:#}");
    assert_eq!(
        port_check["title"],
        format!("port {port} is free or held by this home's proxy")
    );
    let message = port_check["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("PID {}", std::process::id())),
        "names this test process as the holder: {message}"
    );
    let hint = port_check["hint"].as_str().unwrap();
    assert!(hint.contains("server.port"), "{hint}");
    drop(listener);
}

#[test]
fn only_and_skip_select_checks_and_unknown_ids_are_usage_errors() {
    let home = prepared_home();
    let out = run(preflight(home.path()).args(["--json", "--only", "dirs,disk"]));
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    assert_eq!(report["summary"]["skip"], 8, "{report:#}");
    assert_eq!(check(&report, "dirs")["status"], "pass");
    assert_eq!(check(&report, "env")["status"], "skip");
    assert_eq!(check(&report, "env")["message"], "not selected (--only)");

    let out =
        run(preflight(home.path()).args(["--json", "--skip", "upstream", "--skip", "binary"]));
    let report = json(&out);
    assert_eq!(report["summary"]["skip"], 2, "{report:#}");
    assert_eq!(check(&report, "upstream")["message"], "skipped (--skip)");

    for flag in ["--only", "--skip"] {
        let out = run(preflight(home.path()).args(["--json", flag, "port,prot"]));
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(out.stdout.is_empty(), "nothing on stdout for a usage error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("\"prot\"") && err.contains("known ids"),
            "{err}"
        );
    }
    let out = run(preflight(home.path()).arg("--bogus"));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn operator_checks_run_after_the_ten_and_a_malformed_file_is_a_failed_check() {
    let home = prepared_home();
    let checks = home.path().join("checks");
    std::fs::create_dir(&checks).unwrap();
    std::fs::write(
        checks.join("a-true.toml"),
        "kind = \"command\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let out = run(preflight(home.path()).arg("--json"));
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["checks"].as_array().unwrap().len(), 11);
    assert_eq!(report["checks"][10]["id"], "a-true");
    assert_eq!(report["checks"][10]["status"], "pass");

    std::fs::write(
        checks.join("b-false.toml"),
        "kind = \"command\"\ncommand = \"false\"\nhint = \"start the thing\"\n",
    )
    .unwrap();
    std::fs::write(checks.join("c-broken.toml"), "kind = \"http\"\nurl = \n").unwrap();
    let out = run(&mut preflight(home.path()));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[11/13] PASS  `true` succeeds"), "{text}");
    assert!(
        text.contains("[12/13] FAIL  `false` succeeds — `false` exited 1"),
        "{text}"
    );
    assert!(text.contains("hint: start the thing"), "{text}");
    assert!(text.contains("[13/13] FAIL  "), "{text}");
    assert!(
        text.contains("c-broken.toml:2:"),
        "names the file and line: {text}"
    );

    let out = run(preflight(home.path()).arg("--json"));
    let report = json(&out);
    let broken = check(&report, "c-broken");
    assert_eq!(broken["status"], "fail");
    assert!(broken["hint"].as_str().unwrap().contains("c-broken.toml"));

    // Operator ids are selectable like built-in ones.
    let out = run(preflight(home.path()).args(["--json", "--skip", "b-false,c-broken"]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn a_dotenv_readable_by_others_warns_but_does_not_fail() {
    let home = prepared_home();
    let env = home.path().join(".env");
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(preflight(home.path()).arg("--json"));
    let report = json(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warnings do not fail: {report:#}"
    );
    assert_eq!(report["ok"], true);
    let env_check = check(&report, "env");
    assert_eq!(env_check["status"], "warn", "{env_check:#}");
    assert!(env_check["message"].as_str().unwrap().contains("0644"));
    assert!(env_check["hint"].as_str().unwrap().contains("chmod 600"));
}

#[test]
fn a_real_upstream_without_a_key_fails_env_and_never_prints_a_key() {
    let home = prepared_home();
    write_config(
        home.path(),
        free_port(),
        "[upstream]\nurl = \"http://127.0.0.1:9/v1\"\napi_key_env = \"WARDEN_IT_KEY\"\n",
    );
    let out = run(preflight(home.path())
        .args(["--json", "--only", "env"])
        .env_remove("WARDEN_IT_KEY"));
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    let env_check = check(&report, "env");
    assert_eq!(env_check["status"], "fail", "{env_check:#}");
    assert!(
        env_check["message"]
            .as_str()
            .unwrap()
            .contains("WARDEN_IT_KEY is not set"),
        "{env_check:#}"
    );

    // A template placeholder is no better, and the value is not echoed.
    write_private(&home.path().join(".env"), "WARDEN_IT_KEY=your-key-here\n");
    let out = run(preflight(home.path())
        .args(["--json", "--only", "env"])
        .env_remove("WARDEN_IT_KEY"));
    assert_eq!(out.status.code(), Some(1));
    assert!(!stdout(&out).contains("your-key-here"));

    // A real-looking key passes, and is not echoed either.
    write_private(
        &home.path().join(".env"),
        "WARDEN_IT_KEY=sk-it-9f8e7d6c5b4a\n",
    );
    let out = run(preflight(home.path())
        .args(["--json", "--only", "env"])
        .env_remove("WARDEN_IT_KEY"));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(!stdout(&out).contains("9f8e7d6c5b4a"));
}

#[test]
fn nagios_format_uses_the_plugin_exit_codes() {
    let home = prepared_home();
    let out = run(preflight(home.path()).args(["--format", "nagios"]));
    let line = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{line}");
    assert!(
        line.starts_with("WARDEN OK - 10 pass, 0 warn, 0 fail | pass=10 warn=0 fail=0"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1);

    std::fs::set_permissions(
        home.path().join(".env"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let out = run(preflight(home.path()).args(["--format", "nagios"]));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("WARDEN WARNING - "));

    std::fs::remove_dir(home.path().join("logs")).unwrap();
    let out = run(preflight(home.path()).args(["--format", "nagios"]));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stdout(&out).contains("FAIL dirs: "));

    let out = run(preflight(home.path()).args(["--format", "nagios", "--only", "nope"]));
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).starts_with("WARDEN UNKNOWN - "));
}

#[test]
fn version_flag() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_preflight")).arg("--version"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("preflight {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn this_homes_own_proxy_may_hold_the_port_and_an_unrecorded_one_is_an_orphan() {
    let home = TestHome::new();
    prepare(home.path(), free_port());
    // The real proxy, started by this test on a port of its choosing. It records
    // itself in run/proxy.pid and keeps it locked.
    let proxy = Proxy::start(&home, &[], &[]);
    let port: u16 = proxy.url.rsplit(':').next().unwrap().parse().unwrap();
    write_config(home.path(), port, "");
    let out = run(preflight(home.path()).args(["--json", "--only", "port,process"]));
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let port_check = check(&report, "port");
    assert_eq!(port_check["status"], "pass", "{port_check:#}");
    assert!(
        port_check["message"]
            .as_str()
            .unwrap()
            .contains("held by this home's proxy"),
        "{port_check:#}"
    );
    assert_eq!(check(&report, "process")["status"], "pass");

    // Its PID file is deleted from under it: no PID file names it any more, so it
    // is an orphan of this home, and a foreign holder of the port.
    std::fs::remove_file(home.path().join("run/proxy.pid")).unwrap();
    let out = run(preflight(home.path()).args(["--json", "--only", "port,process"]));
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    let pid = format!("PID {}", proxy.pid());
    let process = check(&report, "process");
    assert_eq!(process["status"], "fail", "{process:#}");
    assert!(
        process["message"].as_str().unwrap().contains(&pid),
        "{process:#}"
    );
    assert!(
        process["hint"].as_str().unwrap().contains("doctor"),
        "{process:#}"
    );
    let port_check = check(&report, "port");
    assert_eq!(port_check["status"], "fail", "{port_check:#}");
    assert!(
        port_check["message"].as_str().unwrap().contains(&pid),
        "{port_check:#}"
    );
}

#[test]
fn a_stale_pid_file_fails_process() {
    let home = prepared_home();
    // A record nobody holds the lock of: stale by definition (docs/contract.md §4).
    let record = PidRecord::for_current_process(home.path(), None).unwrap();
    std::fs::write(home.path().join("run/proxy.pid"), record.render()).unwrap();
    let out = run(preflight(home.path()).args(["--json", "--only", "process"]));
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    let process = check(&report, "process");
    assert_eq!(process["status"], "fail", "{process:#}");
    let message = process["message"].as_str().unwrap();
    assert!(
        message.contains("stale PID file") && message.contains("proxy.pid"),
        "{message}"
    );
    assert!(
        process["hint"].as_str().unwrap().contains("doctor"),
        "{process:#}"
    );
}

#[test]
fn prompts_with_only_the_builtin_text_warn() {
    let home = prepared_home();
    // No cache, no local file, and a URL that refuses connections.
    std::fs::write(
        home.path().join("warden.toml"),
        format!(
            "[server]\nport = {}\n[upstream]\nurl = \"http://127.0.0.1:9/v1\"\napi = \"responses\"\n\n[[prompts.source]]\nname = \"base_instructions\"\nurl = \"http://127.0.0.1:9/p.md\"\n",
            free_port()
        ),
    )
    .unwrap();
    let out = run(preflight(home.path()).args(["--json", "--only", "prompts"]));
    let report = json(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning is not a failure: {report:#}"
    );
    let prompts = check(&report, "prompts");
    assert_eq!(prompts["status"], "warn", "{prompts:#}");
    assert!(
        prompts["message"]
            .as_str()
            .unwrap()
            .contains("base_instructions: builtin only"),
        "{prompts:#}"
    );
    assert!(
        prompts["hint"]
            .as_str()
            .unwrap()
            .contains("prompts refresh")
    );
}

#[test]
fn checks_run_concurrently() {
    // Two operator checks that can only both pass when they run at the same
    // time: each announces itself, then waits for the other. Run one after the
    // other, the first would wait in vain and fail at its timeout.
    let home = prepared_home();
    let checks = home.path().join("checks");
    std::fs::create_dir(&checks).unwrap();
    for (me, other) in [("ping", "pong"), ("pong", "ping")] {
        std::fs::write(
            checks.join(format!("{me}.toml")),
            format!(
                "kind = \"command\"\ncommand = 'touch {me}.flag; while [ ! -e {other}.flag ]; do sleep 0.01; done'\ntimeout = 20\n"
            ),
        )
        .unwrap();
    }
    let out = run(preflight(home.path()).args(["--json", "--only", "ping,pong"]));
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(check(&report, "ping")["status"], "pass");
    assert_eq!(check(&report, "pong")["status"], "pass");
}

/// A provider URL with a wrong base path (its `GET …/models` answers 404) is not
/// a pass: alone it fails, saying the path is wrong and what it usually ends in;
/// covered by another provider it warns.
#[test]
fn a_url_whose_models_answer_404_is_a_wrong_base_path_not_a_pass() {
    use crate::support::upstream::{Behaviour, Upstream};
    let up = Upstream::start(Behaviour::Fast);
    // The test upstream serves /v1/models; the base path without /v1 answers 404.
    let wrong = format!("http://{}", up.addr);
    let dir = prepared_home();
    write_config(
        dir.path(),
        free_port(),
        &format!("[upstream]\nurl = \"{wrong}\"\n"),
    );
    write_private(
        &dir.path().join(".env"),
        "OPENAI_API_KEY=k-test-0123456789\n",
    );
    let out = run(preflight(dir.path()).args(["--only", "upstream", "--json"]));
    let report = json(&out);
    let upstream = check(&report, "upstream");
    assert_eq!(upstream["status"], "fail", "{report}");
    let message = upstream["message"].as_str().unwrap();
    assert!(
        message.contains("HTTP 404")
            && message.contains("not at this base path")
            && message.contains(&format!("{wrong}/v1")),
        "{message}"
    );
    assert_eq!(out.status.code(), Some(1));

    // The right base path passes.
    write_config(
        dir.path(),
        free_port(),
        &format!("[upstream]\nurl = \"{}\"\n", up.url()),
    );
    let report = json(&run(
        preflight(dir.path()).args(["--only", "upstream", "--json"])
    ));
    assert_eq!(check(&report, "upstream")["status"], "pass", "{report}");

    // With providers: the wrong one is unreachable, the other covers its models.
    write_config(
        dir.path(),
        free_port(),
        &format!(
            "[[providers]]\nname = \"wrong\"\nurl = \"{wrong}\"\napi_key_env = \"OPENAI_API_KEY\"\n\n\
             [[providers]]\nname = \"right\"\nurl = \"{}\"\napi_key_env = \"OPENAI_API_KEY\"\n",
            up.url()
        ),
    );
    let report = json(&run(
        preflight(dir.path()).args(["--only", "upstream", "--json"])
    ));
    let upstream = check(&report, "upstream");
    assert_eq!(upstream["status"], "warn", "{report}");
    assert!(
        upstream["message"].as_str().unwrap().contains("wrong: GET"),
        "{report}"
    );
}

/// `--only env` prints the check it ran, not a SKIP line per check it left out.
#[test]
fn only_prints_the_checks_it_ran() {
    let dir = prepared_home();
    let out = run(preflight(dir.path()).args(["--only", "env"]));
    let text = stdout(&out);
    assert!(!text.contains("SKIP"), "{text}");
    assert!(text.starts_with("[1/1] PASS"), "{text}");
}
