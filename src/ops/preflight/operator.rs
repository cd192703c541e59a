//! The operator's own checks: one file per check in `$WARDEN_HOME/checks/*.toml`.
//!
//! ```toml
//! # $WARDEN_HOME/checks/docker.toml
//! kind = "command"          # command | http | tcp | file
//! command = "docker info"   # run with `sh -c`; passes on exit status 0
//! severity = "fail"         # fail (default) | warn: what a failure of this check counts as
//! timeout = 10              # seconds (default 5)
//! hint = "start Docker: sudo systemctl start docker"
//! ```
//!
//! The other kinds take `url` (and optionally `status`, default any 2xx) for
//! `http`, `address = "host:port"` for `tcp`, and `path` (relative to the home
//! when not absolute) for `file`. Every file may also set `id` (default: the file
//! name without `.toml`) and `title`. Unknown keys are errors. A file that cannot
//! be read or parsed becomes one failed check naming the file and the line: a
//! broken extra check must never stop the built-in ones from being reported.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::home::Home;

use super::{Outcome, Status, builtin_specs};

/// Seconds an operator check may take when its file sets no `timeout`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 5;
/// What the harness adds to a check's own timeout, so the check can report its
/// own, more precise timeout (and kill what it started) first.
const GRACE: Duration = Duration::from_secs(1);

/// What a failure of an operator check counts as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Fail,
    Warn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Command,
    Http,
    Tcp,
    File,
}

/// The file's shape. Flat rather than an enum so serde's errors keep naming the
/// offending key and line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Definition {
    id: Option<String>,
    title: Option<String>,
    kind: Kind,
    command: Option<String>,
    url: Option<String>,
    status: Option<u16>,
    address: Option<String>,
    path: Option<PathBuf>,
    #[serde(default)]
    severity: Severity,
    timeout: Option<u64>,
    hint: Option<String>,
}

/// What an operator check probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `sh -c COMMAND`, in the home directory, with `WARDEN_HOME` set; exit 0 passes.
    Command(String),
    /// `GET url`; passes on `status`, or any 2xx when unset. Redirects are not followed.
    Http { url: String, status: Option<u16> },
    /// A TCP connection to `host:port`.
    Tcp(String),
    /// The path exists (absolute; relative paths were resolved against the home).
    File(PathBuf),
}

/// A valid operator check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorCheck {
    pub id: String,
    pub title: String,
    pub file: PathBuf,
    pub severity: Severity,
    /// The check's own timeout.
    pub timeout: Duration,
    pub hint: Option<String>,
    pub probe: Probe,
    /// Working directory for `command` checks.
    pub home: PathBuf,
}

/// One file of `checks/`: a check, or why the file is not one.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    pub title: String,
    /// The harness timeout (the check's own plus a grace period).
    pub timeout: Duration,
    pub hint: Option<String>,
    pub check: Result<OperatorCheck, CheckFileError>,
}

/// Why a file of `checks/` is not a check. Each names the file (and the line or
/// key); the entry's hint says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckFileError {
    #[error("cannot list {}: {source}", dir.display())]
    List {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or not this shape (an unknown key, a wrong type).
    #[error("{}{}: {message}", file.display(), line_col.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Toml {
        file: PathBuf,
        line_col: Option<(usize, usize)>,
        message: String,
    },
    /// A key whose value is wrong or missing for the check's kind.
    #[error("{}: {key}: {message}", file.display())]
    Key {
        file: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("{}: id {id:?} is already used by another check; set a unique `id` or rename the file", file.display())]
    DuplicateId { file: PathBuf, id: String },
}

impl Entry {
    fn broken(id: String, file: &Path, error: CheckFileError) -> Entry {
        Entry {
            title: format!("operator check {}", file.display()),
            id,
            timeout: GRACE,
            hint: Some(format!(
                "fix or remove {}: `kind` is one of command, http, tcp, file (see docs/operating.md, Operator checks)",
                file.display()
            )),
            check: Err(error),
        }
    }
}

/// Every `*.toml` in the home's `checks/`, sorted by file name. Missing folder:
/// no operator checks.
pub fn load(home: &Home) -> Vec<Entry> {
    let dir = home.checks_dir();
    let read = match std::fs::read_dir(&dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            return vec![Entry::broken(
                "checks".into(),
                &dir,
                CheckFileError::List {
                    dir: dir.clone(),
                    source: e,
                },
            )];
        }
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !is_hidden(p))
        .collect();
    files.sort();

    let mut taken: HashSet<String> = builtin_specs().iter().map(|s| s.id.clone()).collect();
    let mut entries = Vec::new();
    for file in files {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file_name = file
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parsed = std::fs::read_to_string(&file)
            .map_err(|source| CheckFileError::Read {
                file: file.clone(),
                source,
            })
            .and_then(|text| parse(&text, &file, &stem, home));
        let entry = match parsed {
            Ok(check) if taken.contains(&check.id) => {
                let id = if taken.contains(&file_name) {
                    format!("{}#{}", file_name, entries.len())
                } else {
                    file_name.clone()
                };
                Entry::broken(
                    id,
                    &file,
                    CheckFileError::DuplicateId {
                        file: file.clone(),
                        id: check.id,
                    },
                )
            }
            Ok(check) => Entry {
                id: check.id.clone(),
                title: check.title.clone(),
                timeout: check.timeout + GRACE,
                hint: check.hint.clone(),
                check: Ok(check),
            },
            Err(error) => {
                let id = if taken.contains(&stem) {
                    file_name.clone()
                } else {
                    stem.clone()
                };
                Entry::broken(id, &file, error)
            }
        };
        taken.insert(entry.id.clone());
        entries.push(entry);
    }
    entries
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Parses one check file. `default_id` is the file name without `.toml`.
/// Errors name the file and, for TOML errors, `line:column`.
pub fn parse(
    text: &str,
    file: &Path,
    default_id: &str,
    home: &Home,
) -> Result<OperatorCheck, CheckFileError> {
    let def: Definition = toml::from_str(text).map_err(|e| CheckFileError::Toml {
        file: file.to_path_buf(),
        line_col: e
            .span()
            .map(|span| crate::home::config::line_col(text, span.start)),
        message: e.message().trim().to_string(),
    })?;
    let bad = |key: &'static str, message: String| CheckFileError::Key {
        file: file.to_path_buf(),
        key,
        message,
    };

    let id = def.id.clone().unwrap_or_else(|| default_id.to_string());
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(
            "id",
            format!("{id:?} must be letters, digits, '-', '_' or '.'"),
        ));
    }
    let timeout_secs = def.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if timeout_secs == 0 {
        return Err(bad("timeout", "must be at least 1 second".into()));
    }

    // Each kind takes its own keys; a key of another kind is a mistake worth naming.
    let allowed: &[&str] = match def.kind {
        Kind::Command => &["command"],
        Kind::Http => &["url", "status"],
        Kind::Tcp => &["address"],
        Kind::File => &["path"],
    };
    let present = [
        ("command", def.command.is_some()),
        ("url", def.url.is_some()),
        ("status", def.status.is_some()),
        ("address", def.address.is_some()),
        ("path", def.path.is_some()),
    ];
    for (key, is_set) in present {
        if is_set && !allowed.contains(&key) {
            return Err(bad(
                key,
                format!("does not apply to kind {:?}", kind_name(def.kind)),
            ));
        }
    }
    let need = |value: Option<String>, key: &'static str| {
        value
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| bad(key, format!("kind {:?} needs `{key}`", kind_name(def.kind))))
    };

    let (probe, default_title) = match def.kind {
        Kind::Command => {
            let command = need(def.command, "command")?;
            let title = format!("`{command}` succeeds");
            (Probe::Command(command), title)
        }
        Kind::Http => {
            let url = need(def.url, "url")?;
            match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => return Err(bad("url", format!("{url:?} is not an http(s) URL"))),
            }
            if let Some(status) = def.status {
                if !(100..=599).contains(&status) {
                    return Err(bad(
                        "status",
                        format!("{status} is not an HTTP status (100-599)"),
                    ));
                }
            }
            let title = match def.status {
                Some(s) => format!("GET {url} answers {s}"),
                None => format!("GET {url} answers 2xx"),
            };
            (
                Probe::Http {
                    url,
                    status: def.status,
                },
                title,
            )
        }
        Kind::Tcp => {
            let address = need(def.address, "address")?;
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(bad(
                    "address",
                    format!("{address:?} is not host:port (e.g. \"127.0.0.1:5432\")"),
                ));
            }
            let title = format!("{address} accepts TCP connections");
            (Probe::Tcp(address), title)
        }
        Kind::File => {
            let path = def
                .path
                .filter(|p| !p.as_os_str().is_empty())
                .ok_or_else(|| bad("path", "kind \"file\" needs `path`".into()))?;
            let path = if path.is_absolute() {
                path
            } else {
                home.root().join(path)
            };
            let title = format!("{} exists", path.display());
            (Probe::File(path), title)
        }
    };
    let hint = def.hint.unwrap_or_else(|| match &probe {
        Probe::Command(command) => format!(
            "run `{command}` yourself to see its full output; the check is defined in {}",
            file.display()
        ),
        _ => format!("the check is defined in {}", file.display()),
    });
    Ok(OperatorCheck {
        id,
        title: def.title.unwrap_or(default_title),
        file: file.to_path_buf(),
        severity: def.severity,
        timeout: Duration::from_secs(timeout_secs),
        hint: Some(hint),
        probe,
        home: home.root().to_path_buf(),
    })
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Command => "command",
        Kind::Http => "http",
        Kind::Tcp => "tcp",
        Kind::File => "file",
    }
}

/// Runs one operator check; a failure counts as its `severity`.
pub(crate) async fn run(check: Arc<OperatorCheck>) -> Outcome {
    let outcome = match &check.probe {
        Probe::Command(command) => run_command(command, &check).await,
        Probe::Http { url, status } => run_http(url, *status, check.timeout).await,
        Probe::Tcp(address) => run_tcp(address, check.timeout).await,
        Probe::File(path) => run_file(path.clone()).await,
    };
    match (outcome.status, check.severity) {
        (Status::Fail, Severity::Warn) => Outcome {
            status: Status::Warn,
            ..outcome
        },
        _ => outcome,
    }
}

/// Keeps the last `CAP` bytes of a pipe while draining it to the end, so a
/// chatty command never blocks on a full pipe.
async fn drain<R: AsyncRead + Unpin>(mut pipe: R) -> Vec<u8> {
    const CAP: usize = 16 * 1024;
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > CAP {
                    kept.drain(..kept.len() - CAP);
                }
            }
        }
    }
    kept
}

async fn run_command(command: &str, check: &OperatorCheck) -> Outcome {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("WARDEN_HOME", &check.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can stop everything it started.
        .process_group(0)
        .kill_on_drop(true);
    if check.home.is_dir() {
        cmd.current_dir(&check.home);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::fail(format!("cannot run `sh -c {command:?}`: {e}")),
    };
    let stdout = child.stdout.take().map(|p| tokio::spawn(drain(p)));
    let stderr = child.stderr.take().map(|p| tokio::spawn(drain(p)));

    let status = match tokio::time::timeout(check.timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Outcome::fail(format!("waiting for `{command}`: {e}")),
        Err(_) => {
            // The child is ours and not yet reaped, so its PID (the group's id)
            // cannot have been reused: signalling the group is safe.
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            return Outcome::fail(format!(
                "`{command}` did not finish within {} s (timeout in {}); stopped it",
                check.timeout.as_secs(),
                check.file.display()
            ));
        }
    };
    // A background process may keep the pipes open: read what is there, briefly.
    let collect = |task: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        match task {
            Some(task) => tokio::time::timeout(Duration::from_millis(200), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => Vec::new(),
        }
    };
    let took = started.elapsed().as_millis();
    if status.success() {
        return Outcome::pass(format!("`{command}` exited 0 in {took} ms"));
    }
    let err = collect(stderr).await;
    let out = collect(stdout).await;
    let detail = super::builtin::last_line(&String::from_utf8_lossy(&err))
        .or_else(|| super::builtin::last_line(&String::from_utf8_lossy(&out)));
    let how = match status.code() {
        Some(code) => format!("exited {code}"),
        None => format!("ended by {status}"),
    };
    Outcome::fail(format!(
        "`{command}` {how}{}",
        detail.map(|d| format!(": {d}")).unwrap_or_default()
    ))
}

async fn run_http(url: &str, expected: Option<u16>, timeout: Duration) -> Outcome {
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Outcome::fail(format!("{url}: {e}")),
    };
    let loopback = {
        let host = parsed.host_str().unwrap_or("").trim_matches(['[', ']']);
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let mut builder = crate::support::http_client::client_builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if loopback {
        builder = builder.no_proxy();
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("cannot build an HTTP client: {e}")),
    };
    let started = Instant::now();
    match client.get(parsed).send().await {
        Ok(response) => {
            let got = response.status().as_u16();
            let ok = match expected {
                Some(want) => got == want,
                None => response.status().is_success(),
            };
            let took = started.elapsed().as_millis();
            if ok {
                Outcome::pass(format!("GET {url} answered {got} in {took} ms"))
            } else {
                let want = expected.map_or("2xx".to_string(), |s| s.to_string());
                Outcome::fail(format!("GET {url} answered {got}, expected {want}"))
            }
        }
        Err(e) if e.is_timeout() => Outcome::fail(format!(
            "GET {url}: no answer within {} s",
            timeout.as_secs()
        )),
        Err(e) => Outcome::fail(format!("GET {url}: {}", super::builtin::http_error(&e))),
    }
}

async fn run_tcp(address: &str, timeout: Duration) -> Outcome {
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_stream)) => Outcome::pass(format!(
            "connected to {address} in {} ms",
            started.elapsed().as_millis()
        )),
        Ok(Err(e)) => Outcome::fail(format!("cannot connect to {address}: {e}")),
        Err(_) => Outcome::fail(format!(
            "no connection to {address} within {} s",
            timeout.as_secs()
        )),
    }
}

async fn run_file(path: PathBuf) -> Outcome {
    super::blocking(move || match std::fs::metadata(&path) {
        Ok(m) => Outcome::pass(format!(
            "{} exists ({})",
            path.display(),
            if m.is_dir() { "directory" } else { "file" }
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Outcome::fail(format!("{} does not exist", path.display()))
        }
        Err(e) => Outcome::fail(format!("{}: {e}", path.display())),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        (dir, home)
    }

    #[test]
    fn parses_each_kind() {
        let (_d, home) = home();
        let f = Path::new("/h/checks/docker.toml");
        let c = parse(
            "kind = \"command\"\ncommand = \"docker info\"\nseverity = \"warn\"\n",
            f,
            "docker",
            &home,
        )
        .unwrap();
        assert_eq!(c.id, "docker");
        assert_eq!(c.severity, Severity::Warn);
        assert_eq!(c.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        assert_eq!(c.probe, Probe::Command("docker info".into()));

        let c = parse(
            "kind = \"http\"\nurl = \"http://127.0.0.1:8808/health\"\nstatus = 204\ntimeout = 2\n",
            f,
            "mcp",
            &home,
        )
        .unwrap();
        assert_eq!(c.title, "GET http://127.0.0.1:8808/health answers 204");
        assert_eq!(c.timeout, Duration::from_secs(2));

        let c = parse("kind = \"file\"\npath = \"models/x\"\n", f, "m", &home).unwrap();
        assert_eq!(c.probe, Probe::File(home.root().join("models/x")));

        let c = parse("kind = \"tcp\"\naddress = \"[::1]:5432\"\n", f, "db", &home).unwrap();
        assert_eq!(c.probe, Probe::Tcp("[::1]:5432".into()));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let (_d, home) = home();
        let f = Path::new("/h/checks/x.toml");
        let err = parse("kind = \"command\"\ncomand = \"true\"\n", f, "x", &home)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/h/checks/x.toml:2:1:"), "{err}");
        assert!(err.contains("comand"), "{err}");

        let err = parse("kind = \"command\"\ncommand = \"true\n", f, "x", &home)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/h/checks/x.toml:2:"), "{err}");

        let err = parse("kind = \"http\"\n", f, "x", &home)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/h/checks/x.toml: url: kind \"http\" needs `url`");

        let err = parse("kind = \"tcp\"\naddress = \"localhost\"\n", f, "x", &home)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("address") && err.contains("host:port"),
            "{err}"
        );

        let err = parse(
            "kind = \"file\"\npath = \"a\"\nurl = \"http://x\"\n",
            f,
            "x",
            &home,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("url: does not apply"), "{err}");

        let err = parse("kind = \"smtp\"\n", f, "x", &home)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1:"), "{err}");
    }

    #[test]
    fn load_turns_broken_and_duplicate_files_into_failed_entries() {
        let (_d, home) = home();
        let dir = home.checks_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.toml"),
            "kind = \"command\"\ncommand = \"true\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("b.toml"), "kind = [\n").unwrap();
        std::fs::write(dir.join("port.toml"), "kind = \"file\"\npath = \"x\"\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let entries = load(&home);
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "port.toml"]);
        assert!(entries[0].check.is_ok());
        let err = entries[1].check.as_ref().unwrap_err();
        assert!(matches!(err, CheckFileError::Toml { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("b.toml:1:") || err.contains("b.toml:2:"),
            "{err}"
        );
        let err = entries[2].check.as_ref().unwrap_err();
        assert!(matches!(err, CheckFileError::DuplicateId { .. }), "{err}");
        assert!(err.to_string().contains("already used"), "{err}");
    }

    #[tokio::test]
    async fn command_checks_pass_fail_and_respect_severity() {
        let (_d, home) = home();
        let f = Path::new("/h/checks/x.toml");
        let check = |text: &str| Arc::new(parse(text, f, "x", &home).unwrap());
        let ok = run(check("kind = \"command\"\ncommand = \"true\"\n")).await;
        assert_eq!(ok.status, Status::Pass, "{ok:?}");
        let bad = run(check(
            "kind = \"command\"\ncommand = \"echo no daemon >&2; exit 3\"\n",
        ))
        .await;
        assert_eq!(bad.status, Status::Fail, "{bad:?}");
        assert!(bad.message.contains("exited 3: no daemon"), "{bad:?}");
        let soft = run(check(
            "kind = \"command\"\ncommand = \"false\"\nseverity = \"warn\"\n",
        ))
        .await;
        assert_eq!(soft.status, Status::Warn, "{soft:?}");
        let home_var = run(check(
            "kind = \"command\"\ncommand = 'test \"$WARDEN_HOME\" = \"$(pwd)\"'\n",
        ))
        .await;
        assert_eq!(home_var.status, Status::Pass, "{home_var:?}");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_stopped_with_everything_it_started() {
        let (_d, home) = home();
        let pid_file = home.root().join("sleeper.pid");
        // The background `sleep` is a grandchild in the check's process group.
        let text = format!(
            "kind = \"command\"\ncommand = 'sleep 30 & echo $! > {}; wait'\ntimeout = 1\n",
            pid_file.display()
        );
        let check = parse(&text, Path::new("/h/checks/slow.toml"), "slow", &home).unwrap();
        let outcome = run(Arc::new(check)).await;
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(
            outcome.message.contains("did not finish within 1 s"),
            "{outcome:?}"
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // SIGKILL was sent before `run` returned; wait (bounded) for the kernel
        // to finish it off, then insist it is gone or a zombie.
        let gone = || match std::fs::read_to_string(&stat) {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        };
        for _ in 0..100 {
            if gone() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone(), "the grandchild {} is still running", pid.trim());
    }

    #[tokio::test]
    async fn tcp_and_file_checks() {
        let (_d, home) = home();
        let f = Path::new("/h/checks/x.toml");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = parse(
            &format!("kind = \"tcp\"\naddress = \"{addr}\"\n"),
            f,
            "x",
            &home,
        )
        .unwrap();
        assert_eq!(run(Arc::new(tcp)).await.status, Status::Pass);
        std::fs::write(home.root().join("present"), "").unwrap();
        let file = parse("kind = \"file\"\npath = \"present\"\n", f, "x", &home).unwrap();
        assert_eq!(run(Arc::new(file)).await.status, Status::Pass);
        let file = parse("kind = \"file\"\npath = \"absent\"\n", f, "x", &home).unwrap();
        let outcome = run(Arc::new(file)).await;
        assert_eq!(outcome.status, Status::Fail);
        assert!(
            outcome.message.contains("absent does not exist"),
            "{outcome:?}"
        );
    }
}
