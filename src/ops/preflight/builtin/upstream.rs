//! `upstream`: does the upstream answer HTTP at all within `upstream.connect_timeout`?
//! Any status passes (a 401 without a key still proves the server is there) but
//! 404: `GET {url}/models` not found means the URL's base path is wrong (an
//! OpenAI-compatible base usually ends in `/v1`), and every request would fail
//! the same way, so it counts as unreachable.
//!
//! With `[[providers]]` every provider is asked (at once, each within its own
//! `connect_timeout`): the check fails when some configured model has no
//! reachable provider left, warns when a provider is down while others cover its
//! models, and names the unreachable providers either way.

use std::time::{Duration, Instant};

use super::{Context, ProbeError};
use crate::home::agent_cli as presets;
use crate::home::config::{CommandSettings, ProviderSettings, pattern_matches};
use crate::ops::preflight::Outcome;
use crate::support::http_client;

pub(super) async fn check_upstream(ctx: &Context) -> Outcome {
    if !ctx.cfg.providers.is_empty() {
        return check_providers(ctx).await;
    }
    let upstream = &ctx.cfg.upstream;
    if upstream.is_mock() {
        return Outcome::pass(format!(
            "upstream is mock: built in, offline{}",
            ctx.defaults_note()
        ));
    }
    match probe(
        upstream.base_url(),
        upstream.connect_timeout(),
        "upstream.url",
    )
    .await
    {
        Ok(message) => Outcome::pass(message),
        Err(e) => Outcome::fail(e.to_string()),
    }
}

/// `GET {base}/models` after a bare TCP connect, both within `budget`: `Ok`
/// with what answered, `Err` with why not. `key` names the URL's setting.
async fn probe(base: &str, budget: Duration, key: &str) -> Result<String, ProbeError> {
    let models = format!("{base}/models");
    let url = reqwest::Url::parse(&models).map_err(|e| ProbeError::BadUrl {
        key: key.to_string(),
        url: crate::support::redact::url(base),
        reason: e.to_string(),
    })?;
    let shown = crate::support::redact::url(url.as_str());
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err(ProbeError::NoHost {
            key: key.to_string(),
            url: shown,
        });
    };
    let target = format!("{host}:{port}");
    let started = Instant::now();
    match tokio::time::timeout(budget, tokio::net::TcpStream::connect(&target)).await {
        Err(_) => return Err(ProbeError::ConnectTimeout { target, budget }),
        Ok(Err(source)) => return Err(ProbeError::Connect { target, source }),
        Ok(Ok(_stream)) => {}
    }
    let remaining = budget
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(100));
    let mut builder = http_client::client_builder()
        .connect_timeout(remaining)
        .timeout(remaining)
        .redirect(reqwest::redirect::Policy::none());
    if is_loopback_host(&url) {
        builder = builder.no_proxy();
    }
    let client = builder
        .build()
        .map_err(|error| ProbeError::Client { error })?;
    match client.get(url.clone()).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
            Err(ProbeError::WrongPath {
                url: shown,
                advice: path_advice(base),
            })
        }
        Ok(response) => Ok(format!(
            "GET {shown} answered HTTP {} in {} ms",
            response.status().as_u16(),
            started.elapsed().as_millis()
        )),
        Err(e) if e.is_timeout() => Err(ProbeError::NoAnswer { url: shown, budget }),
        Err(error) => Err(ProbeError::Get { url: shown, error }),
    }
}

/// What to try when `GET {base}/models` is not found.
fn path_advice(base: &str) -> String {
    let base = crate::support::redact::url(base.trim_end_matches('/'));
    if base.ends_with("/v1") {
        "check the path of the URL against the provider's documentation".to_string()
    } else {
        format!(
            "an OpenAI-compatible base URL usually ends in /v1 (for example {base}/v1); \
             check the path against the provider's documentation"
        )
    }
}

/// Every `[[providers]]` entry, probed at once.
async fn check_providers(ctx: &Context) -> Outcome {
    let providers = ctx.cfg.provider_settings();
    let probes = providers.iter().map(|p| async move {
        if let Some(command) = &p.command {
            return probe_command(command, p.connect_timeout.max(Duration::from_secs(10))).await;
        }
        if p.is_mock() {
            return Ok("mock, built in".to_string());
        }
        probe(
            p.base_url(),
            p.connect_timeout,
            &format!("provider {} url", p.name),
        )
        .await
    });
    let results = futures_util::future::join_all(probes).await;
    let up: Vec<&ProviderSettings> = providers
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(p, _)| p)
        .collect();
    let mut down = Vec::new();
    let mut probes_by_hand = Vec::new();
    let mut orphaned: Vec<String> = Vec::new();
    for (p, result) in providers.iter().zip(&results) {
        let Err(why) = result else { continue };
        down.push(format!("{}: {why}", p.name));
        probes_by_hand.push(match &p.command {
            Some(command) => format!(
                "`{} --version` ({})",
                presets::program(command),
                presets::install_hint(command)
            ),
            None => format!(
                "`curl -sS {}/models`",
                crate::support::redact::url(p.base_url())
            ),
        });
        // Its models (patterns as written) that no reachable provider covers.
        for model in &p.models {
            let covered = up.iter().any(|u| {
                u.models
                    .iter()
                    .any(|pattern| pattern_matches(pattern, model))
            });
            if !covered && !orphaned.contains(model) {
                orphaned.push(model.clone());
            }
        }
        if p.models.is_empty() && up.is_empty() {
            orphaned.push(format!("the models {} reports", p.name));
        }
    }
    let fine: Vec<String> = providers
        .iter()
        .zip(&results)
        .filter_map(|(p, r)| r.as_ref().ok().map(|m| format!("{}: {m}", p.name)))
        .collect();
    // The declared hint names `upstream.url`, which `[[providers]]` replaces.
    let hint = || {
        format!(
            "check that the unreachable providers are up and that their `url` (or command) in the \
             [[providers]] of {} is right: {}",
            ctx.home.config_file().display(),
            probes_by_hand.join(", ")
        )
    };
    if !orphaned.is_empty() {
        return Outcome::fail(format!(
            "no reachable provider for {}; unreachable: {}",
            orphaned.join(", "),
            down.join("; ")
        ))
        .with_hint(hint());
    }
    if !down.is_empty() {
        return Outcome::warn(format!(
            "unreachable: {}; the others cover their models ({})",
            down.join("; "),
            fine.join("; ")
        ))
        .with_hint(hint());
    }
    Outcome::pass(format!(
        "{} providers answer: {}",
        providers.len(),
        fine.join("; ")
    ))
}

/// An `api = "command"` provider: its program is on PATH (as the proxy would
/// find it) and answers `--version` within `budget`, run as the proxy runs it:
/// a bare environment, its own process group, killed at the deadline.
async fn probe_command(command: &CommandSettings, budget: Duration) -> Result<String, ProbeError> {
    let program = presets::program(command).to_string();
    let found = if program.contains('/') {
        let path = std::path::PathBuf::from(&program);
        path.is_file().then_some(path)
    } else {
        which::which(&program).ok()
    };
    let Some(path) = found else {
        return Err(ProbeError::NotOnPath {
            hint: presets::install_hint(command),
            program,
        });
    };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.arg("--version")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for var in presets::PASSED_THROUGH {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    let no_version = |why: String| ProbeError::NoVersion {
        program: path.display().to_string(),
        why,
    };
    let child = cmd
        .spawn()
        .map_err(|e| no_version(format!("cannot run: {e}")))?;
    let pid = child.id();
    let output = match tokio::time::timeout(budget, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(no_version(format!("failed: {e}"))),
        Err(_) => {
            // Dropping the child killed it; its group goes too (the leader
            // is not reaped yet, so the group id is still its own).
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(no_version(format!(
                "did not answer within {} s",
                budget.as_secs()
            )));
        }
    };
    let first_line = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| crate::support::redact::truncate(l, 120).to_string())
    };
    if !output.status.success() {
        return Err(no_version(format!(
            "exited with {}{}",
            output.status,
            first_line(&output.stderr).map_or(String::new(), |l| format!(": {l}"))
        )));
    }
    Ok(format!(
        "{} answers --version: {}",
        path.display(),
        first_line(&output.stdout).unwrap_or_else(|| "(nothing printed)".into())
    ))
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::preflight::Status;
    use crate::ops::preflight::builtin::test_context as ctx_for;

    #[tokio::test]
    async fn upstream_any_http_status_passes_and_a_closed_port_fails() {
        // A one-shot HTTP server on loopback answering 401, as a real API would
        // without a key.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The check first opens a bare TCP connection, then sends the GET.
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 2048];
                if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                    continue; // the TCP probe
                }
                sock.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await
                .unwrap();
                return;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("warden.toml"),
            format!("[upstream]\nurl = \"http://{addr}/v1\"\n"),
        )
        .unwrap();
        let outcome = check_upstream(&ctx_for(dir.path())).await;
        assert_eq!(outcome.status, Status::Pass, "{outcome:?}");
        assert!(outcome.message.contains("HTTP 401"), "{outcome:?}");
        server.await.unwrap();

        // The same port, now closed: connection refused.
        std::fs::write(
            dir.path().join("warden.toml"),
            format!("[upstream]\nurl = \"http://{addr}/v1\"\n"),
        )
        .unwrap();
        let outcome = check_upstream(&ctx_for(dir.path())).await;
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(outcome.message.contains(&addr.to_string()), "{outcome:?}");
    }

    #[tokio::test]
    async fn every_provider_is_checked_down_ones_named() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let config = |second_models: &str| {
            format!(
                "[[providers]]\nname = \"dead\"\nurl = \"http://{closed}/v1\"\nmodels = [\"gpt-5\", \"o4-*\"]\n\
                 [[providers]]\nname = \"spare\"\nurl = \"mock\"\nmodels = {second_models}\n"
            )
        };
        // The mock covers everything: the dead one only warns, by name.
        std::fs::write(dir.path().join("warden.toml"), config("[\"*\"]")).unwrap();
        let outcome = check_upstream(&ctx_for(dir.path())).await;
        assert_eq!(outcome.status, Status::Warn, "{outcome:?}");
        assert!(
            outcome.message.contains("dead: cannot connect"),
            "{outcome:?}"
        );
        // The hint names the dead provider's URL, not `[upstream]`'s.
        let hint = outcome.hint.clone().unwrap_or_default();
        assert!(
            hint.contains(&format!("curl -sS http://{closed}/v1/models"))
                && !hint.contains("upstream.url"),
            "{outcome:?}"
        );
        // The mock covers gpt-5 only: o4-* has no reachable provider.
        std::fs::write(dir.path().join("warden.toml"), config("[\"gpt-5\"]")).unwrap();
        let outcome = check_upstream(&ctx_for(dir.path())).await;
        assert_eq!(outcome.status, Status::Fail, "{outcome:?}");
        assert!(
            outcome.message.contains("o4-*") && !outcome.message.contains("for gpt-5"),
            "{outcome:?}"
        );
        assert!(outcome.message.contains("dead"), "{outcome:?}");
    }
}
