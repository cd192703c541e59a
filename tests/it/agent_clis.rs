//! `api = "command"` providers (agent CLIs): fake CLIs written by the tests
//! (a Python script in the test's temporary directory) record their argv,
//! environment, working directory and stdin, and behave as each test asks:
//! stream slowly, fork a sleeping child, hang, fail, print too much.
//!
//! Every process these tests inspect is one a fake CLI they wrote started;
//! "gone" means no such PID, or a zombie (killed, not yet reaped by init).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::{health, metrics_text, post, post_chat, read_to_end, read_until, until};
use crate::support::{PATIENCE, Proxy, TestHome, eventually, sse_data};

/// The fake CLI. argv: MODE RECORD_DIR [rest...]. It writes
/// RECORD_DIR/run-<pid>.json (argv, env, cwd, stdin, pgid), then acts out MODE.
/// It waits for files in RECORD_DIR (`go`, `release-<n>`) where a test must
/// see something happen first: causal, never timed.
const FAKE: &str = r#"
import json, os, sys, time
if sys.argv[1:2] == ["--version"]:
    print("fake-cli 1.2.3")
    sys.exit(0)
if len(sys.argv) > 2 and not sys.argv[1].startswith("-"):
    mode, rec = sys.argv[1], sys.argv[2]
else:  # run as a preset: told by its environment
    mode, rec = os.environ["FAKE_MODE"], os.environ["FAKE_REC"]
prompt = sys.stdin.read()
me = os.getpid()
info = {"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd(),
        "cwd_entries": os.listdir("."), "stdin": prompt, "pid": me, "pgid": os.getpgid(0)}
def save():
    tmp = os.path.join(rec, f".run-{me}.tmp")
    with open(tmp, "w") as f: json.dump(info, f)
    os.rename(tmp, os.path.join(rec, f"run-{me}.json"))
def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
def delta(text):
    out({"type": "stream_event", "event": {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": text}}})
def wait_for(name):
    while not os.path.exists(os.path.join(rec, name)): time.sleep(0.01)
def fork_sleeper():
    pid = os.fork()
    if pid == 0:
        os.execvp("sleep", ["sleep", "300"])
    info["child"] = pid
if mode in ("fork", "hang"):
    fork_sleeper()
save()
if mode != "text":
    out({"type": "system", "subtype": "init", "model": "fake"})
if mode == "slow":
    delta("one ")
    wait_for("go")
    delta("two")
    out({"type": "result", "subtype": "success", "is_error": False, "result": "one two",
         "usage": {"input_tokens": 11, "output_tokens": 2}})
elif mode == "ok":
    delta("hello")
    out({"type": "result", "subtype": "success", "result": "hello",
         "usage": {"input_tokens": 3, "output_tokens": 1}})
elif mode == "fork":
    delta("started")
    time.sleep(300)
elif mode in ("hang", "stall"):
    time.sleep(300)
elif mode == "fail":
    sys.stderr.write("loading config\nusing key " + os.environ.get("FAKE_SECRET", "") + "\nfatal: quota exhausted\n")
    sys.exit(3)
elif mode == "silent":
    pass
elif mode == "dies":
    delta("partial ")
    sys.stderr.write("segfault in the model\n")
    sys.exit(2)
elif mode == "huge":
    delta("x")
    line = json.dumps({"type": "noise", "pad": "y" * 1000}) + "\n"
    while True:
        sys.stdout.write(line)
elif mode == "longline":
    sys.stdout.write("z" * 10000000)
    sys.stdout.flush()
    time.sleep(300)
elif mode == "block":
    delta("busy")
    wait_for("release")
    out({"type": "result", "subtype": "success", "result": "busy"})
elif mode == "text":
    sys.stdout.write("plain ")
    sys.stdout.flush()
    sys.stdout.write("answer")
"#;

/// A directory with the fake CLI (as `fake-cli`, `claude` and `codex`) and
/// the records of its runs.
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Fakes {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::create_dir(dir.path().join("rec")).unwrap();
        // The interpreter itself, not a wrapper script (pyenv's shims add
        // variables of their own to the environment the fake records).
        let python = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        let python = String::from_utf8(python.stdout).unwrap();
        let script = format!("#!{}{FAKE}", python.trim());
        for name in ["fake-cli", "claude"] {
            let path = bin.join(name);
            std::fs::write(&path, &script).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Fakes { dir }
    }
    fn program(&self) -> String {
        self.dir.path().join("bin/fake-cli").display().to_string()
    }
    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn rec(&self) -> PathBuf {
        self.dir.path().join("rec")
    }
    /// A `[[providers]]` entry running the fake in `mode`.
    fn provider(&self, name: &str, mode: &str, extra: &str) -> String {
        format!(
            "[[providers]]\nname = \"{name}\"\napi = \"command\"\ncommand = [\"{}\", \"{mode}\", \"{}\", \"--model\", \"{{model}}\"]\nformat = \"stream-json\"\nmodels = [\"{name}\", \"{name}/*\"]\n{extra}\n",
            self.program(),
            self.rec().display()
        )
    }
    fn touch(&self, name: &str) {
        std::fs::write(self.rec().join(name), "").unwrap();
    }
    /// The records of every run so far.
    fn runs(&self) -> Vec<Value> {
        let mut runs = Vec::new();
        for entry in std::fs::read_dir(self.rec()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("run-") && name.ends_with(".json") {
                runs.push(serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap());
            }
        }
        runs
    }
    async fn wait_runs(&self, n: usize) -> Vec<Value> {
        until(&format!("{n} runs of the fake CLI"), || async {
            self.runs().len() >= n
        })
        .await;
        self.runs()
    }
}

/// No process with this PID is running (none at all, or a zombie).
fn gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn start(config: &str, env: &[(&str, &str)]) -> (TestHome, InProcess) {
    let home = TestHome::new();
    home.config(config);
    let proxy = InProcess::start(&home, env);
    (home, proxy)
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": true},
           "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]})
}

#[tokio::test]
async fn chunks_go_out_as_the_cli_prints_them_with_the_model_env_and_a_fresh_workdir() {
    let fakes = Fakes::new();
    let config = fakes.provider("agent", "slow", "env = [\"FAKE_SECRET\", \"FAKE_UNSET\"]");
    let (_home, proxy) = start(
        &config,
        &[
            ("FAKE_SECRET", "s3cret-value"),
            ("OPENAI_API_KEY", "sk-not-for-the-cli"),
        ],
    );
    let mut response = post_chat(&proxy, &chat("agent/opus", true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-warden-provider"], "agent");
    // The first delta arrives while the CLI still waits for `go`.
    let first = read_until(&mut response, "one ").await;
    assert!(!first.contains("two"), "{first}");
    fakes.touch("go");
    let text = read_to_end(&mut response, first).await;
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let content: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(content, "one two");
    let usage = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|c| c["usage"].is_object())
        .expect("a usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 11);
    assert_eq!(usage["usage"]["completion_tokens"], 2);

    let run = &fakes.wait_runs(1).await[0];
    // The model after "/" is the CLI's model argument.
    let argv: Vec<&str> = run["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&argv[argv.len() - 2..], ["--model", "opus"]);
    // The conversation is the prompt on stdin.
    assert_eq!(run["stdin"], "System: Be brief.\n\nUser: Say hi");
    // Only the allowed variables, the listed ones and the request id.
    let env = run["env"].as_object().unwrap();
    let mut names: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "LC_CTYPE")
        .collect();
    names.sort();
    for name in &names {
        assert!(
            [
                "PATH",
                "HOME",
                "LANG",
                "TMPDIR",
                "FAKE_SECRET",
                "WARDEN_REQUEST_ID"
            ]
            .contains(name),
            "unexpected variable {name} in {names:?}"
        );
    }
    assert_eq!(env["FAKE_SECRET"], "s3cret-value");
    assert!(!env.contains_key("OPENAI_API_KEY"));
    assert!(!env["WARDEN_REQUEST_ID"].as_str().unwrap().is_empty());
    // Its own process group, in a fresh empty directory that is gone after.
    assert_eq!(run["pgid"], run["pid"]);
    assert_eq!(run["cwd_entries"], json!([]));
    let cwd = run["cwd"].as_str().unwrap().to_string();
    assert_ne!(Path::new(&cwd), fakes.dir.path());
    eventually("the working directory is removed", || {
        !Path::new(&cwd).exists()
    });
}

#[tokio::test]
async fn a_whole_answer_carries_usage_and_a_text_command_works_too() {
    let fakes = Fakes::new();
    let config = format!(
        "{}{}",
        fakes.provider("agent", "ok", ""),
        fakes
            .provider("plain", "text", "")
            .replace("stream-json", "text")
    );
    let (_home, proxy) = start(&config, &[]);
    let response = post_chat(&proxy, &chat("agent", false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "hello");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    // A model that is one of the provider's own names is passed as it is to `{model}`.
    let run = &fakes.wait_runs(1).await[0];
    assert_eq!(run["argv"].as_array().unwrap().last().unwrap(), "agent");

    let response = post_chat(&proxy, &chat("plain", false)).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"], "plain answer",
        "{body}"
    );

    // The Responses API, through the same path.
    let response = post(
        &proxy,
        "/v1/responses",
        &json!({"model": "agent", "input": "hi", "stream": false}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["output"][0]["content"][0]["text"], "hello", "{body}");

    // The Anthropic Messages API, through the same path.
    let response = post(
        &proxy,
        "/v1/messages",
        &json!({"model": "agent", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "hello", "{body}");
}

#[tokio::test]
async fn a_failing_cli_fails_over_and_alone_is_a_502_with_its_redacted_stderr() {
    let fakes = Fakes::new();
    let failing = fakes
        .provider("broken", "fail", "env = [\"FAKE_SECRET\"]\npriority = 0")
        .replace(
            "models = [\"broken\", \"broken/*\"]",
            "models = [\"shared\"]",
        );
    let working = fakes.provider("working", "ok", "priority = 1").replace(
        "models = [\"working\", \"working/*\"]",
        "models = [\"shared\"]",
    );
    let alone = fakes.provider("lonely", "fail", "env = [\"FAKE_SECRET\"]");
    let (_home, proxy) = start(
        &format!("{failing}{working}{alone}"),
        &[("FAKE_SECRET", "s3cret-value")],
    );
    let response = post_chat(&proxy, &chat("shared", true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-warden-provider"], "working");
    let text = response.text().await.unwrap();
    assert!(text.contains("hello"), "{text}");

    let response = post_chat(&proxy, &chat("lonely", false)).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"lonely\""), "{message}");
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(message.contains("fatal: quota exhausted"), "{message}");
    assert!(message.contains("using key ***"), "{message}");
    assert!(!message.contains("s3cret-value"), "{message}");
    let health = health(&proxy).await;
    assert!(
        health["providers"]["lonely"]["failures"].as_u64() >= Some(1),
        "{health}"
    );
    assert!(!health.to_string().contains("s3cret-value"));
    assert!(metrics_text(&proxy).await.contains("lonely"));
}

#[tokio::test]
async fn a_cli_that_fails_after_answering_ends_the_stream_with_one_error_event() {
    let fakes = Fakes::new();
    let (_home, proxy) = start(&fakes.provider("agent", "dies", ""), &[]);
    let response = post_chat(&proxy, &chat("agent", true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    assert!(data[0].contains("partial "), "{text}");
    let errors: Vec<&String> = data.iter().filter(|d| d.contains("\"error\"")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("exited with status 2"), "{text}");
    assert!(errors[0].contains("segfault in the model"), "{text}");
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(!text.contains("\"finish_reason\":\"stop\""), "{text}");
}

#[tokio::test]
async fn exiting_without_an_answer_is_a_failure() {
    let fakes = Fakes::new();
    let (_home, proxy) = start(&fakes.provider("agent", "silent", ""), &[]);
    let response = post_chat(&proxy, &chat("agent", true)).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without answering"),
        "{body}"
    );
}

#[tokio::test]
async fn the_process_group_is_gone_after_the_client_disconnects() {
    let fakes = Fakes::new();
    let (_home, proxy) = start(&fakes.provider("agent", "fork", ""), &[]);
    let mut response = post_chat(&proxy, &chat("agent", true)).await;
    read_until(&mut response, "started").await;
    let run = fakes.wait_runs(1).await.remove(0);
    let (pid, child) = (run["pid"].as_i64().unwrap(), run["child"].as_i64().unwrap());
    assert!(
        !gone(pid) && !gone(child),
        "both run while the answer streams"
    );
    drop(response);
    until("the CLI and the child it forked are gone", || async {
        gone(pid) && gone(child)
    })
    .await;
    let cwd = run["cwd"].as_str().unwrap().to_string();
    until("the working directory is removed", || async {
        !Path::new(&cwd).exists()
    })
    .await;
}

#[tokio::test]
async fn the_process_group_is_killed_at_the_timeout() {
    let fakes = Fakes::new();
    // Long enough for the fake to start and say so before it is killed.
    let (_home, proxy) = start(&fakes.provider("agent", "hang", "timeout = 5"), &[]);
    let response = post_chat(&proxy, &chat("agent", false)).await;
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within 5 s"),
        "{body}"
    );
    let run = fakes.wait_runs(1).await.remove(0);
    let (pid, child) = (run["pid"].as_i64().unwrap(), run["child"].as_i64().unwrap());
    until("the CLI and its child are gone", || async {
        gone(pid) && gone(child)
    })
    .await;
}

#[tokio::test]
async fn output_past_the_byte_limits_kills_the_cli() {
    let fakes = Fakes::new();
    let config = format!(
        "[upstream]\nmax_response_bytes = 200000\nmax_event_bytes = 65536\n{}{}",
        fakes.provider("huge", "huge", ""),
        fakes.provider("longline", "longline", "")
    );
    let (_home, proxy) = start(&config, &[]);
    // Too much in all: the stream that began ends with an error event.
    let response = post_chat(&proxy, &chat("huge", true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("max_response_bytes"),
        "{}",
        &text[..text.len().min(2000)]
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    // One line too long before any answer: a 502.
    let response = post_chat(&proxy, &chat("longline", false)).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_event_bytes"),
        "{body}"
    );
    for run in fakes.wait_runs(2).await {
        let pid = run["pid"].as_i64().unwrap();
        until("the CLI is gone", || async { gone(pid) }).await;
    }
}

#[tokio::test]
async fn max_concurrent_bounds_the_processes() {
    let fakes = Fakes::new();
    let (_home, proxy) = start(&fakes.provider("agent", "block", "max_concurrent = 1"), &[]);
    let mut first = post_chat(&proxy, &chat("agent", true)).await;
    read_until(&mut first, "busy").await;
    // The one slot is taken: the next request has no provider left.
    let second = post_chat(&proxy, &chat("agent", true)).await;
    assert_eq!(second.status(), 429);
    assert_eq!(fakes.runs().len(), 1, "no second process was started");
    let health = health(&proxy).await;
    assert_eq!(health["providers"]["agent"]["in_flight"], 1, "{health}");
    fakes.touch("release");
    let text = read_to_end(&mut first, String::new()).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let third = post_chat(&proxy, &chat("agent", false)).await;
    assert_eq!(third.status(), 200);
}

#[test]
fn stopping_the_proxy_kills_what_is_still_running() {
    let fakes = Fakes::new();
    let home = TestHome::new();
    home.config(&format!(
        "[server]\ngraceful_timeout = 1\n{}",
        fakes.provider("agent", "fork", "")
    ));
    let mut proxy = Proxy::start(&home, &[], &[]);
    let url = proxy.url.clone();
    let reader = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = crate::support::client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat("agent", true))
                .send()
                .await;
            if let Ok(mut response) = response {
                while let Ok(Some(_)) = response.chunk().await {}
            }
        });
    });
    eventually("the CLI ran", || !fakes.runs().is_empty());
    let run = fakes.runs().remove(0);
    let (pid, child) = (run["pid"].as_i64().unwrap(), run["child"].as_i64().unwrap());
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.wait().success());
    eventually("the CLI and its child are gone", || {
        gone(pid) && gone(child)
    });
    reader.join().unwrap();
}

#[test]
fn the_cli_dies_with_a_killed_proxy() {
    let fakes = Fakes::new();
    let home = TestHome::new();
    // "stall" forks nothing: only the CLI itself dies with the proxy.
    home.config(&fakes.provider("agent", "stall", ""));
    let proxy = Proxy::start(&home, &[], &[]);
    let url = proxy.url.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let _ = crate::support::client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat("agent", false))
                .send()
                .await;
        });
    });
    eventually("the CLI ran", || !fakes.runs().is_empty());
    let pid = fakes.runs()[0]["pid"].as_i64().unwrap();
    proxy.signal(nix::sys::signal::Signal::SIGKILL);
    eventually("the CLI died with the proxy", || gone(pid));
    drop(proxy);
}

#[test]
fn a_preset_finds_its_cli_on_path_and_passes_the_model_flag() {
    let fakes = Fakes::new();
    let home = TestHome::new();
    home.config(
        "[[providers]]\nname = \"claude\"\napi = \"command\"\npreset = \"claude-code\"\nmodels = [\"claude-code\", \"claude-code/*\"]\nenv = [\"FAKE_MODE\", \"FAKE_REC\"]\n",
    );
    let path = format!(
        "{}:{}",
        fakes.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let rec = fakes.rec().display().to_string();
    let proxy = Proxy::start(
        &home,
        &[],
        &[("PATH", &path), ("FAKE_MODE", "ok"), ("FAKE_REC", &rec)],
    );
    let url = proxy.url.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        crate::support::client()
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat("claude-code/sonnet", false))
            .timeout(PATIENCE)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let run = fakes.runs().remove(0);
    let argv: Vec<&str> = run["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &argv[1..],
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            "--tools",
            "",
            "--strict-mcp-config",
            "--no-session-persistence",
            "--model",
            "sonnet"
        ]
    );
}

#[test]
fn preflight_finds_the_cli_and_doctor_says_how_to_install_a_missing_one() {
    let fakes = Fakes::new();
    let home = TestHome::new();
    home.config(&fakes.provider("agent", "ok", ""));
    let out = crate::support::run("preflight", &home, &["--only", "upstream"]);
    let stdout = crate::support::text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("answers --version: fake-cli 1.2.3"),
        "{stdout}"
    );

    // A preset whose CLI is nowhere on PATH.
    home.config(
        "[[providers]]\nname = \"gem\"\napi = \"command\"\npreset = \"gemini-cli\"\nmodels = [\"gemini\"]\n",
    );
    let mut preflight = crate::support::bin("preflight");
    preflight
        .arg("--home")
        .arg(home.path())
        .args(["--only", "upstream"])
        .env("PATH", fakes.bin_dir());
    let out = preflight.output().unwrap();
    let stdout = crate::support::text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("\"gemini\" is not on PATH"), "{stdout}");
    assert!(stdout.contains("npm i -g @google/gemini-cli"), "{stdout}");
    let mut doctor = crate::support::bin("doctor");
    doctor
        .arg("--home")
        .arg(home.path())
        .arg("--dry-run")
        .env("PATH", fakes.bin_dir());
    let out = doctor.output().unwrap();
    let stdout = crate::support::text(&out.stdout);
    assert!(stdout.contains("npm i -g @google/gemini-cli"), "{stdout}");
}
