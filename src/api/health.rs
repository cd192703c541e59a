//! The `/health` report (docs/contract.md §3) — one shape shared by the proxy that serves it
//! and the `daemon`/`watchdog` that read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// pass / warn / fail, as in the IETF health-check draft the contract follows.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpstreamInfo {
    pub url: String,
    pub api: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestCounts {
    pub total: u64,
    pub success: u64,
    pub error: u64,
    pub success_rate: f64,
    pub in_flight: u64,
    pub rejected: u64,
    pub last_request_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PromptHealth {
    /// `cache`, `remote`, `stale-cache`, `file` or `builtin`.
    pub source: String,
    pub age_secs: Option<f64>,
    pub fresh: bool,
}

/// One provider in `/health` (docs/contract.md §11).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProviderReport {
    /// `healthy` or `cooling`.
    pub state: String,
    pub in_flight: u32,
    /// Consecutive failures so far.
    pub failures: u32,
    /// RFC 3339, while cooling.
    pub cooldown_until: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemoryInfo {
    pub rss_bytes: u64,
}

/// The NATS ingress (docs/contract.md §13): `state` is `off`, `connected`, `reconnecting`
/// or `disconnected`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NatsHealth {
    pub state: String,
    pub in_flight: u64,
    /// Connected, and the server has this proxy's endpoint subscriptions, so
    /// NATS requests can reach it (a restart waits for this). Absent from
    /// proxies before it: `false`.
    #[serde(default)]
    pub subscribed: bool,
}

impl Default for NatsHealth {
    fn default() -> Self {
        NatsHealth {
            state: "off".into(),
            in_flight: 0,
            subscribed: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub version: String,
    pub pid: u32,
    pub uptime_secs: f64,
    pub timestamp: String,
    pub ready: bool,
    pub upstream: UpstreamInfo,
    pub requests: RequestCounts,
    pub prompts: BTreeMap<String, PromptHealth>,
    /// Every provider by name (one, `default`, for the `[upstream]` shorthand).
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderReport>,
    pub memory: MemoryInfo,
    /// Models (entries of a provider's `models`, or aliases) whose every
    /// provider is cooling: requests for them get 503 until one recovers, and
    /// `status` is `warn` meanwhile. Absent from older proxies' reports.
    #[serde(default)]
    pub cooling_models: Vec<String>,
    /// Absent from the reports of older proxies, which had no NATS ingress.
    #[serde(default)]
    pub nats: NatsHealth,
    /// Client keys, while they are in force (since 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysHealth>,
}

/// `/health`'s `keys`: active keys and the usage ledger's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysHealth {
    pub count: usize,
    /// `ok`, `behind` (a backlog of rows) or `failing` (cannot be written).
    pub ledger: String,
    /// With `keys.shared`: `ok` (NATS answers), `grace` (away, served from the
    /// last known state) or `failing` (away past `keys.shared_grace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
}

impl HealthReport {
    /// The overall status: fail while not ready (starting or draining), warn when a
    /// prompt is served only from a fallback, pass otherwise.
    pub fn derive_status(ready: bool, prompts: &BTreeMap<String, PromptHealth>) -> HealthStatus {
        if !ready {
            HealthStatus::Fail
        } else if prompts
            .values()
            .any(|p| matches!(p.source.as_str(), "builtin" | "stale-cache"))
        {
            HealthStatus::Warn
        } else {
            HealthStatus::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on loopback answering `/health/ready` with `body`; its base URL.
    async fn answering(body: String) -> String {
        let app = axum::Router::new().route(
            "/health/ready",
            axum::routing::get(move || std::future::ready(body.clone())),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn the_ready_probe_reads_the_pid_and_no_more_than_its_bound() {
        let client = probe::client(std::time::Duration::from_secs(10));
        let url = answering(r#"{"status":"pass","pid":4242}"#.into()).await;
        assert_eq!(probe::ready_pid(&client, &url).await.unwrap(), Some(4242));
        // Past the bound: a ready answer, but no PID read from it.
        let padding = " ".repeat(1 << 20);
        let url = answering(format!(r#"{{"status":"pass","pid":4242{padding}}}"#)).await;
        assert_eq!(probe::ready_pid(&client, &url).await.unwrap(), None);
    }

    #[test]
    fn status_rules() {
        let mut prompts = BTreeMap::new();
        assert_eq!(
            HealthReport::derive_status(true, &prompts),
            HealthStatus::Pass
        );
        assert_eq!(
            HealthReport::derive_status(false, &prompts),
            HealthStatus::Fail
        );
        prompts.insert(
            "p".into(),
            PromptHealth {
                source: "builtin".into(),
                age_secs: None,
                fresh: false,
            },
        );
        assert_eq!(
            HealthReport::derive_status(true, &prompts),
            HealthStatus::Warn
        );
    }
}

/// Probing a running proxy over HTTP (used by `daemon` and `watchdog`).
pub mod probe {
    use std::time::Duration;

    use super::HealthReport;
    use crate::support::http_client::error_chain;

    /// Why a probe of a running proxy failed; each names the URL it asked.
    #[derive(Debug, thiserror::Error)]
    pub enum ProbeError {
        #[error("{url} answered {status}")]
        Status {
            url: String,
            status: reqwest::StatusCode,
        },
        #[error("{url} did not answer in time")]
        Timeout { url: String },
        /// `source` is reqwest's error without the URL (named once, here).
        #[error("{url}: {}", error_chain(source))]
        Unreachable { url: String, source: reqwest::Error },
        #[error("{url} answered {status} with an unexpected body: {source}")]
        Body {
            url: String,
            status: u16,
            source: reqwest::Error,
        },
    }

    /// A small client for health probes: no pooling surprises, short timeouts.
    pub fn client(timeout: Duration) -> reqwest::Client {
        crate::support::http_client::client_builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(0)
            .build()
            .expect("a plain HTTP client builds")
    }

    /// The most of a `/health/ready` answer a probe reads.
    const READY_BODY_MAX: usize = 4096;

    /// `Ok` when `GET {base}/health/ready?nats=ignore` answers 200: whether the
    /// process serves, which is what the daemon, the watchdog and a restart wait for.
    /// NATS being away (with `nats.required`) makes a load balancer skip the proxy,
    /// but restarting it would not bring NATS back.
    pub async fn ready(client: &reqwest::Client, base_url: &str) -> Result<(), ProbeError> {
        ready_pid(client, base_url).await.map(|_| ())
    }

    /// Like [`ready`], and which process answered: the `pid` of the body (`None`
    /// from a proxy too old to say). During a restart two processes accept on one
    /// socket, so "the port answers ready" alone could be the old proxy speaking.
    pub async fn ready_pid(
        client: &reqwest::Client,
        base_url: &str,
    ) -> Result<Option<i32>, ProbeError> {
        let url = format!("{base_url}/health/ready?nats=ignore");
        match client.get(&url).send().await {
            Ok(mut r) if r.status().is_success() => {
                // Bounded: a ready answer is a few dozen bytes; whatever else answers on
                // the port is read no further than READY_BODY_MAX (then it names no PID).
                let mut body = Vec::new();
                while let Ok(Some(chunk)) = r.chunk().await {
                    if body.len() + chunk.len() > READY_BODY_MAX {
                        body.clear();
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("pid")?.as_i64())
                    .and_then(|pid| i32::try_from(pid).ok()))
            }
            Ok(r) => Err(ProbeError::Status {
                url,
                status: r.status(),
            }),
            Err(e) if e.is_timeout() => Err(ProbeError::Timeout { url }),
            Err(e) => Err(ProbeError::Unreachable {
                url,
                source: e.without_url(),
            }),
        }
    }

    /// `GET {base}/health`: the status code and the report.
    pub async fn report(
        client: &reqwest::Client,
        base_url: &str,
    ) -> Result<(u16, HealthReport), ProbeError> {
        let url = format!("{base_url}/health");
        let response = match client.get(&url).send().await {
            Ok(response) => response,
            Err(e) => {
                return Err(ProbeError::Unreachable {
                    url,
                    source: e.without_url(),
                });
            }
        };
        let code = response.status().as_u16();
        match response.json::<HealthReport>().await {
            Ok(report) => Ok((code, report)),
            Err(source) => Err(ProbeError::Body {
                url,
                status: code,
                source,
            }),
        }
    }
}
