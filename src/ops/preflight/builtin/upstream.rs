//! `upstream`: does the upstream answer HTTP at all within `upstream.connect_timeout`?
//! Any status passes (a 401 without a key still proves the server is there).

use std::time::{Duration, Instant};

use super::{Context, http_error};
use crate::ops::preflight::Outcome;
use crate::support::http_client;

pub(super) async fn check_upstream(ctx: &Context) -> Outcome {
    let upstream = &ctx.cfg.upstream;
    if upstream.is_mock() {
        return Outcome::pass(format!(
            "upstream is mock: built in, offline{}",
            ctx.defaults_note()
        ));
    }
    let budget = upstream.connect_timeout();
    let models = format!("{}/models", upstream.base_url());
    let url = match reqwest::Url::parse(&models) {
        Ok(url) => url,
        Err(e) => return Outcome::fail(format!("upstream.url {:?}: {e}", ctx.upstream_text())),
    };
    let shown = crate::support::redact::url(url.as_str());
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Outcome::fail(format!("upstream.url {shown} has no host"));
    };
    let target = format!("{host}:{port}");
    let started = Instant::now();
    match tokio::time::timeout(budget, tokio::net::TcpStream::connect(&target)).await {
        Err(_) => {
            return Outcome::fail(format!(
                "no TCP connection to {target} within upstream.connect_timeout ({} s)",
                budget.as_secs()
            ));
        }
        Ok(Err(e)) => return Outcome::fail(format!("cannot connect to {target}: {e}")),
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
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            return Outcome::fail(format!("cannot build an HTTP client: {}", http_error(&e)));
        }
    };
    match client.get(url.clone()).send().await {
        Ok(response) => Outcome::pass(format!(
            "GET {shown} answered HTTP {} in {} ms",
            response.status().as_u16(),
            started.elapsed().as_millis()
        )),
        Err(e) if e.is_timeout() => Outcome::fail(format!(
            "GET {shown}: no answer within upstream.connect_timeout ({} s)",
            budget.as_secs()
        )),
        Err(e) => Outcome::fail(format!("GET {shown}: {}", http_error(&e))),
    }
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
}
