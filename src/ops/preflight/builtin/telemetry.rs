//! The collector part of the `upstream` check (docs/contract.md §15; the ten checks stay
//! ten): when `telemetry.otlp_endpoint` is set, its host must accept a TCP
//! connection within `upstream.connect_timeout`. A collector that is away is a
//! warning, never a failure: the proxy serves as usual and its spans are
//! dropped and counted until the collector is back.

use std::time::Duration;

use crate::home::config::TelemetryConfig;
use crate::ops::preflight::Outcome;

/// The collector's state for the `upstream` check; `None` when traces are off.
pub async fn check(telemetry: &TelemetryConfig, budget: Duration) -> Option<Outcome> {
    if !telemetry.enabled() {
        return None;
    }
    let shown = crate::support::redact::url(telemetry.otlp_endpoint.trim());
    let Some((host, port)) = reqwest::Url::parse(telemetry.otlp_endpoint.trim())
        .ok()
        .and_then(|u| Some((u.host_str()?.to_string(), u.port_or_known_default()?)))
    else {
        return Some(Outcome::warn(format!(
            "OTLP collector {shown}: not a URL with a host"
        )));
    };
    let target = format!("{host}:{port}");
    let problem = match tokio::time::timeout(budget, tokio::net::TcpStream::connect(&target)).await
    {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("cannot connect to {target}: {e}")),
        Err(_) => Some(format!(
            "no TCP connection to {target} within {} s",
            budget.as_secs()
        )),
    };
    Some(match problem {
        None => Outcome::pass(format!("OTLP collector {shown} accepts connections")),
        Some(why) => Outcome::warn(format!("OTLP collector {shown}: {why}")).with_hint(
            "Requests are not affected, but their trace spans are dropped (counted in \
             warden_telemetry_spans_dropped_total) until the collector is up. Start the \
             collector, fix telemetry.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT), or \
             empty it to turn traces off"
                .to_string(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::preflight::Status;

    #[tokio::test]
    async fn a_listening_collector_passes_a_closed_port_warns_and_off_says_nothing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut telemetry = TelemetryConfig {
            otlp_endpoint: format!("http://{addr}"),
            ..TelemetryConfig::default()
        };
        let outcome = check(&telemetry, Duration::from_secs(5)).await.unwrap();
        assert_eq!(outcome.status, Status::Pass, "{outcome:?}");
        drop(listener);
        let outcome = check(&telemetry, Duration::from_secs(5)).await.unwrap();
        assert_eq!(outcome.status, Status::Warn, "{outcome:?}");
        assert!(outcome.message.contains(&addr.to_string()), "{outcome:?}");
        telemetry.otlp_endpoint.clear();
        assert!(check(&telemetry, Duration::from_secs(5)).await.is_none());
    }
}
