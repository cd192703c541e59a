//! `prompts`: would each configured prompt come from the cache or its remote,
//! rather than the short built-in text?

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Context, ProbeError};
use crate::home::config::PromptSource;
use crate::ops::preflight::{Outcome, Status};
use crate::prompts::{self, PromptSourceKind};
use crate::support::http_client;

/// How long `prompts` waits for a remote that would be a prompt's only source.
const PROMPT_PROBE_MAX: Duration = Duration::from_millis(2500);

pub(super) async fn check_prompts(ctx: Arc<Context>) -> Outcome {
    if !prompts::prompts_in_use(&ctx.cfg) {
        // With [[providers]], `[upstream]` is unused: name what requests go to.
        let used_by = if ctx.cfg.providers.is_empty() {
            format!(
                "upstream {:?} (api {:?})",
                crate::support::redact::url(&ctx.cfg.upstream.url),
                ctx.cfg.upstream.api.as_str()
            )
        } else {
            "these providers (none has api = \"responses\")".to_string()
        };
        return Outcome::pass(format!(
            "prompts are not used with {used_by}; nothing to fetch"
        ));
    }
    let statuses = {
        let ctx = Arc::clone(&ctx);
        match tokio::task::spawn_blocking(move || prompts::disk_status(&ctx.home, &ctx.cfg.prompts))
            .await
        {
            Ok(statuses) => statuses,
            Err(e) => return Outcome::fail(format!("reading the prompt cache crashed: {e}")),
        }
    };
    if statuses.is_empty() {
        return Outcome::pass(format!(
            "no [[prompts.source]] configured{}",
            ctx.defaults_note()
        ));
    }
    // Nothing on disk: the proxy would fetch it. Ask the remote whether it would
    // get an answer, all prompts at once.
    let budget = Duration::from_secs(ctx.cfg.prompts.fetch_timeout).min(PROMPT_PROBE_MAX);
    let probes = statuses.iter().map(|st| {
        let source = ctx
            .cfg
            .prompts
            .sources
            .iter()
            .find(|s| s.name == st.name)
            .cloned();
        let needs_probe = st.source == PromptSourceKind::Builtin;
        async move {
            match (needs_probe, source) {
                (true, Some(source)) => Some(probe_prompt(&source, budget).await),
                _ => None,
            }
        }
    });
    let probes = futures_util::future::join_all(probes).await;

    let mut status = Status::Pass;
    let mut parts = Vec::new();
    let mut builtin_only = Vec::new();
    for (st, probe) in statuses.iter().zip(probes) {
        let mut part = match (st.source, probe) {
            (PromptSourceKind::Builtin, Some(Ok(()))) => format!("{}: remote", st.name),
            (PromptSourceKind::Builtin, probe) => {
                status = Status::Warn;
                builtin_only.push(st.name.clone());
                match probe {
                    Some(Err(why)) => format!("{}: builtin only ({why})", st.name),
                    _ => format!("{}: builtin only", st.name),
                }
            }
            (PromptSourceKind::Cache, _) | (PromptSourceKind::StaleCache, _) => {
                let age = st
                    .age_secs
                    .map(|a| {
                        format!(
                            ", {} old",
                            humantime::format_duration(Duration::from_secs(a.max(0.0) as u64))
                        )
                    })
                    .unwrap_or_default();
                format!("{}: {}{age}", st.name, st.source.as_str())
            }
            (other, _) => format!("{}: {}", st.name, other.as_str()),
        };
        if let Some(problem) = &st.problem {
            part.push_str(&format!(" [{problem}]"));
        }
        parts.push(part);
    }
    let mut outcome = Outcome {
        status,
        message: parts.join("; ") + ctx.defaults_note(),
        hint: None,
    };
    if !builtin_only.is_empty() {
        outcome.hint = Some(format!(
            "{} would get the short built-in text: run `proxy --home {} prompts refresh` where the URL is reachable, \
             or give the source a `file` fallback in {}",
            builtin_only.join(", "),
            ctx.home.root().display(),
            ctx.home.config_file().display()
        ));
    }
    outcome
}

/// Whether a fetch of the prompt would succeed now: a 2xx within `budget` and,
/// with a `sha256` allow-list, content that passes it.
async fn probe_prompt(source: &PromptSource, budget: Duration) -> Result<(), ProbeError> {
    let url = || source.url.clone();
    let client = http_client::client_builder()
        .timeout(budget)
        .connect_timeout(budget)
        .build()
        .map_err(|error| ProbeError::Client { error })?;
    let response = client.get(&source.url).send().await.map_err(|error| {
        if error.is_timeout() {
            ProbeError::Slow { url: url(), budget }
        } else {
            ProbeError::Get { url: url(), error }
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProbeError::Status {
            url: url(),
            status: status.as_u16(),
        });
    }
    if source.sha256.is_empty() {
        return Ok(());
    }
    let body = response
        .bytes()
        .await
        .map_err(|error| ProbeError::Get { url: url(), error })?;
    let digest = hex::encode(Sha256::digest(&body));
    if source
        .sha256
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&digest))
    {
        Ok(())
    } else {
        Err(ProbeError::Digest { url: url(), digest })
    }
}
