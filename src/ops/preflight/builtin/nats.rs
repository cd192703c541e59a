//! The NATS part of the `upstream` check (docs/contract.md §13: the ten checks stay ten):
//! when `nats.url` is set, each server must accept a TCP connection and greet
//! with NATS's `INFO` line within `upstream.connect_timeout`. A NATS server that
//! is away is a warning, not a failure: the proxy serves HTTP without it and
//! keeps reconnecting. `doctor` explains the same probe's failure.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::home::config::NatsConfig;
use crate::ops::preflight::{Outcome, Status};

/// What a NATS server said when greeted.
pub struct Greeting {
    pub address: String,
    pub version: String,
    pub jetstream: bool,
}

/// Why a NATS server could not be greeted; each names the address.
#[derive(Debug, thiserror::Error)]
pub enum GreetError {
    #[error("no TCP connection to {address} within {} s", budget.as_secs())]
    ConnectTimeout { address: String, budget: Duration },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("{address} accepted but sent no NATS greeting within {} s", budget.as_secs())]
    GreetingTimeout { address: String, budget: Duration },
    #[error("{address}: {source}")]
    Read {
        address: String,
        source: std::io::Error,
    },
    #[error(
        "{address} answered, but not as a NATS server (no INFO greeting): is nats.url pointing at the right port?"
    )]
    NotNats { address: String },
}

/// Connects to `address` and reads NATS's `INFO` line, within `budget` each.
pub async fn greet(address: &str, budget: Duration) -> Result<Greeting, GreetError> {
    let connect = tokio::net::TcpStream::connect(address);
    let mut stream = match tokio::time::timeout(budget, connect).await {
        Err(_) => {
            return Err(GreetError::ConnectTimeout {
                address: address.to_string(),
                budget,
            });
        }
        Ok(Err(source)) => {
            return Err(GreetError::Connect {
                address: address.to_string(),
                source,
            });
        }
        Ok(Ok(stream)) => stream,
    };
    let mut line = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !line.contains(&b'\n') && line.len() < 16 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            line.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(budget, read).await {
        Err(_) => {
            return Err(GreetError::GreetingTimeout {
                address: address.to_string(),
                budget,
            });
        }
        Ok(Err(source)) => {
            return Err(GreetError::Read {
                address: address.to_string(),
                source,
            });
        }
        Ok(Ok(())) => {}
    }
    let text = String::from_utf8_lossy(&line);
    let Some(json) = text.lines().next().and_then(|l| l.strip_prefix("INFO ")) else {
        return Err(GreetError::NotNats {
            address: address.to_string(),
        });
    };
    let info: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
    Ok(Greeting {
        address: address.to_string(),
        version: info["version"].as_str().unwrap_or("?").to_string(),
        jetstream: info["jetstream"].as_bool().unwrap_or(false),
    })
}

/// The NATS servers' state for the `upstream` check; `None` when NATS is off.
pub async fn check(nats: &NatsConfig, budget: Duration) -> Option<Outcome> {
    if !nats.enabled() {
        return None;
    }
    let mut reached = Vec::new();
    let mut problems = Vec::new();
    for address in nats.addresses() {
        match greet(&address, budget).await {
            Ok(g) => {
                if nats.jetstream && !g.jetstream {
                    problems.push(format!(
                        "NATS {} (server {}) has JetStream off, but nats.jetstream = true",
                        g.address, g.version
                    ));
                } else {
                    reached.push(format!("NATS {} (server {})", g.address, g.version));
                }
            }
            Err(e) => problems.push(format!("NATS: {e}")),
        }
    }
    Some(if problems.is_empty() {
        Outcome::pass(format!("{} answered", reached.join(", ")))
    } else {
        Outcome::warn(problems.join("; ")).with_hint(format!(
            "{} Start the NATS server (with -js for nats.jetstream), fix nats.url, or empty \
             nats.url to turn the NATS ingress off",
            while_away(nats)
        ))
    })
}

/// What a proxy does while its NATS server is away, which `nats.required` changes.
pub fn while_away(nats: &NatsConfig) -> &'static str {
    if nats.required {
        "The proxy keeps reconnecting, and with nats.required = true its /health/ready \
         answers 503 until it connects, so load balancers send it no HTTP either."
    } else {
        "The proxy still serves HTTP and keeps reconnecting, but no NATS request reaches it \
         until then."
    }
}

/// The `upstream` outcome with the NATS servers' folded in: the worse status
/// wins (with its hint), both messages are kept.
pub fn combine(upstream: Outcome, nats: Option<Outcome>) -> Outcome {
    let Some(nats) = nats else { return upstream };
    let rank = |s: Status| match s {
        Status::Skip => 0,
        Status::Pass => 1,
        Status::Warn => 2,
        Status::Fail => 3,
    };
    let worse = if rank(nats.status) > rank(upstream.status) {
        &nats
    } else {
        &upstream
    };
    // Both in trouble: both fixes are needed, so both hints are kept.
    let hint = match (&upstream.hint, &nats.hint) {
        (Some(a), Some(b)) if rank(upstream.status) >= 2 && rank(nats.status) >= 2 => {
            Some(format!("{a}; {b}"))
        }
        _ => worse.hint.clone(),
    };
    Outcome {
        status: worse.status,
        hint,
        message: format!("{}; {}", upstream.message, nats.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_nats_greeting_passes_and_a_closed_port_warns() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.write_all(
                b"INFO {\"server_id\":\"x\",\"version\":\"2.9.10\",\"jetstream\":true}\r\n",
            )
            .await
            .unwrap();
        });
        let mut nats = NatsConfig {
            url: format!("nats://{addr}"),
            jetstream: true,
            ..NatsConfig::default()
        };
        let outcome = check(&nats, Duration::from_secs(5)).await.unwrap();
        assert_eq!(outcome.status, Status::Pass, "{outcome:?}");
        assert!(outcome.message.contains("2.9.10"), "{outcome:?}");
        server.await.unwrap();
        // Nothing listens there any more.
        let outcome = check(&nats, Duration::from_secs(5)).await.unwrap();
        assert_eq!(outcome.status, Status::Warn, "{outcome:?}");
        assert!(outcome.message.contains(&addr.to_string()), "{outcome:?}");
        assert!(outcome.hint.as_deref().unwrap().contains("nats.url"));
        let combined = combine(Outcome::pass("upstream is mock"), Some(outcome));
        assert_eq!(combined.status, Status::Warn);
        assert!(
            combined.message.starts_with("upstream is mock; NATS"),
            "{combined:?}"
        );
        nats.url = String::new();
        assert!(check(&nats, Duration::from_secs(5)).await.is_none());
    }
}
