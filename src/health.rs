//! The `/health` report (SPEC §3) — one shape shared by the proxy that serves it
//! and the `daemon`/`watchdog` that read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// pass / warn / fail, as in the IETF health-check draft the SPEC follows.
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemoryInfo {
    pub rss_bytes: u64,
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
    pub memory: MemoryInfo,
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

/// Resident set size of this process, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page_size)
}

/// Now, as RFC 3339 UTC with second precision.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_readable() {
        assert!(rss_bytes().unwrap() > 0);
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
