//! A Chat Completions upstream: any OpenAI-compatible base URL.
//!
//! The client's body is forwarded byte for byte (unknown fields and tool calls
//! pass through untouched), over one pooled client. Streams are relayed chunk by
//! chunk as they arrive; the relay only peeks at `usage` to count tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use tokio::time::timeout;

use super::retry;
use super::{ChatCall, ExchangeStats, FrameStream, Reply};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::openai::{ApiError, Usage};

pub struct ChatUpstream {
    client: reqwest::Client,
    chat_url: String,
    models_url: String,
    /// Shown in errors: the base URL, never the key.
    display_url: String,
    auth: Option<HeaderValue>,
    attempts: u32,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// The full chain of an error's causes: reqwest's top-level message alone
/// ("error sending request") does not tell an operator what happened.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl ChatUpstream {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<ChatUpstream, String> {
        let up = &config.upstream;
        let client = crate::http_client::client_builder()
            .connect_timeout(up.connect_timeout())
            .pool_max_idle_per_host(config.server.max_concurrent.max(8))
            .build()
            .map_err(|e| format!("cannot build the upstream HTTP client: {}", error_chain(&e)))?;
        let auth = match config.upstream_api_key() {
            Some(key) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                        format!(
                            "the value of {} contains characters not allowed in an HTTP header",
                            up.api_key_env
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let base = up.base_url();
        Ok(ChatUpstream {
            client,
            chat_url: format!("{base}/chat/completions"),
            models_url: format!("{base}/models"),
            display_url: base.to_string(),
            auth,
            attempts: up.attempts,
            first_byte_timeout: up.first_byte_timeout(),
            idle_timeout: up.idle_timeout(),
            metrics,
        })
    }

    /// Sends with retries until response headers with a final status arrive.
    async fn send(
        &self,
        body: &Bytes,
        stats: &ExchangeStats,
    ) -> Result<reqwest::Response, ApiError> {
        let mut last_error = String::new();
        let mut last_retry_after = None;
        for attempt in 1..=self.attempts {
            let mut request = self
                .client
                .post(&self.chat_url)
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(auth) = &self.auth {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            let started = Instant::now();
            let outcome = timeout(self.first_byte_timeout, request.send()).await;
            stats.add_upstream_time(started.elapsed());
            last_retry_after = None;
            match outcome {
                Err(_) => {
                    self.metrics.upstream_attempt("timeout");
                    return Err(ApiError::gateway_timeout(format!(
                        "upstream {} sent no response within {} s (upstream.first_byte_timeout)",
                        self.display_url,
                        self.first_byte_timeout.as_secs()
                    )));
                }
                Ok(Err(e)) => {
                    last_error = format!(
                        "cannot reach upstream {}: {}",
                        self.display_url,
                        error_chain(&e)
                    );
                }
                Ok(Ok(response)) if retry::is_retryable(response.status()) => {
                    last_retry_after = retry::retry_after(response.headers());
                    last_error = format!(
                        "upstream {} answered {}",
                        self.display_url,
                        response.status()
                    );
                    if attempt == self.attempts
                        && response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                    {
                        // The upstream's own rate limit: let the client back off.
                        self.metrics.upstream_attempt("failed");
                        return Ok(response);
                    }
                }
                Ok(Ok(response)) => {
                    self.metrics.upstream_attempt("ok");
                    return Ok(response);
                }
            }
            if attempt < self.attempts {
                self.metrics.upstream_attempt("retried");
                tokio::time::sleep(retry::backoff(attempt, last_retry_after)).await;
            } else {
                self.metrics.upstream_attempt("failed");
            }
        }
        let _ = last_retry_after;
        Err(ApiError::bad_gateway(format!(
            "{last_error} (after {} attempt{})",
            self.attempts,
            if self.attempts == 1 { "" } else { "s" }
        )))
    }

    pub async fn chat(&self, call: ChatCall) -> Result<Reply, ApiError> {
        let response = self.send(&call.body, &call.stats).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.passthrough_error(response).await);
        }
        if call.stream {
            return Ok(Reply::Stream(self.relay(response, call.stats)));
        }
        let started = Instant::now();
        let body = self.read_body(response).await;
        call.stats.add_upstream_time(started.elapsed());
        let body = body?;
        if let Some(usage) = usage_of(&body) {
            call.stats.set_usage(usage);
        }
        Ok(Reply::Complete(body))
    }

    /// Reads a whole body, with the idle timeout between chunks.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Bytes, ApiError> {
        let mut buf = bytes::BytesMut::new();
        loop {
            match timeout(self.idle_timeout, response.chunk()).await {
                Err(_) => {
                    return Err(ApiError::gateway_timeout(format!(
                        "upstream {} stalled for {} s mid-answer (upstream.idle_timeout)",
                        self.display_url,
                        self.idle_timeout.as_secs()
                    )));
                }
                Ok(Err(e)) => {
                    return Err(ApiError::bad_gateway(format!(
                        "upstream {} broke off its answer: {}",
                        self.display_url,
                        error_chain(&e)
                    )));
                }
                Ok(Ok(None)) => return Ok(buf.freeze()),
                Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk),
            }
        }
    }

    /// A non-retryable upstream error (4xx, or 429 after all attempts), relayed
    /// with its status; its body is kept when it already is an OpenAI error.
    async fn passthrough_error(&self, response: reqwest::Response) -> ApiError {
        let status = response.status();
        let retry_after = retry::retry_after(response.headers());
        let body = timeout(self.idle_timeout, response.bytes())
            .await
            .ok()
            .and_then(Result::ok);
        let message = body
            .as_ref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("upstream {} answered {status}", self.display_url));
        let status = axum::http::StatusCode::from_u16(status.as_u16())
            .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
        let mut err = ApiError::new(status, "upstream_error", message);
        if let Some(after) = retry_after {
            err = err.retry_after(after.as_secs().max(1));
        }
        err
    }

    /// Relays an upstream SSE body chunk by chunk.
    fn relay(&self, response: reqwest::Response, stats: Arc<ExchangeStats>) -> FrameStream {
        let idle = self.idle_timeout;
        let display_url = self.display_url.clone();
        let upstream = response.bytes_stream();
        let state = (upstream, UsageScanner::default(), stats, false);
        Box::pin(futures_util::stream::unfold(
            state,
            move |(mut upstream, mut scanner, stats, done)| {
                let display_url = display_url.clone();
                async move {
                    if done {
                        return None;
                    }
                    let started = Instant::now();
                    let next = timeout(idle, upstream.next()).await;
                    stats.add_upstream_time(started.elapsed());
                    let error = match next {
                        Ok(Some(Ok(chunk))) => {
                            if let Some(usage) = scanner.scan(&chunk) {
                                stats.set_usage(usage);
                            }
                            return Some((chunk, (upstream, scanner, stats, false)));
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => ApiError::bad_gateway(format!(
                            "upstream {display_url} broke off the stream: {}",
                            error_chain(&e)
                        )),
                        Err(_) => ApiError::gateway_timeout(format!(
                            "upstream {display_url} stalled for {} s mid-stream (upstream.idle_timeout)",
                            idle.as_secs()
                        )),
                    };
                    tracing::warn!(error = %error.message, "stream ended with an error");
                    Some((
                        Bytes::from(error.sse_frame()),
                        (upstream, scanner, stats, true),
                    ))
                }
            },
        ))
    }

    pub async fn models(&self) -> Option<Bytes> {
        let mut request = self.client.get(&self.models_url);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = timeout(
            self.first_byte_timeout.min(Duration::from_secs(10)),
            request.send(),
        )
        .await
        .ok()?
        .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = timeout(self.idle_timeout, response.bytes())
            .await
            .ok()?
            .ok()?;
        let parsed: serde_json::Value = serde_json::from_slice(&body).ok()?;
        parsed["data"].is_array().then_some(body)
    }
}

/// Reads `usage` from a `chat.completion` body.
fn usage_of(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

/// Finds `usage` in relayed SSE without buffering the stream: only the current
/// incomplete line is kept, and only lines mentioning `"usage"` are parsed.
#[derive(Default)]
struct UsageScanner {
    partial: Vec<u8>,
}

impl UsageScanner {
    fn scan(&mut self, chunk: &[u8]) -> Option<Usage> {
        let mut found = None;
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let line_end = &rest[..pos];
            let line: &[u8] = if self.partial.is_empty() {
                line_end
            } else {
                self.partial.extend_from_slice(line_end);
                &self.partial
            };
            if let Some(usage) = Self::line_usage(line) {
                found = Some(usage);
            }
            self.partial.clear();
            rest = &rest[pos + 1..];
        }
        // Keep an incomplete line only while it could still matter (bounded).
        if self.partial.len() + rest.len() <= 1 << 20 {
            self.partial.extend_from_slice(rest);
        } else {
            self.partial.clear();
        }
        found
    }

    fn line_usage(line: &[u8]) -> Option<Usage> {
        let data = line.strip_prefix(b"data:")?;
        if !data.windows(7).any(|w| w == b"\"usage\"") {
            return None;
        }
        usage_of(data.trim_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_found_across_chunk_boundaries() {
        let frame = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        for split in 0..frame.len() {
            let mut scanner = UsageScanner::default();
            let a = scanner.scan(&frame[..split]);
            let b = scanner.scan(&frame[split..]);
            let usage = a.or(b).expect("usage found");
            assert_eq!(
                usage,
                Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4
                }
            );
        }
    }

    #[test]
    fn null_usage_is_not_an_error() {
        let mut scanner = UsageScanner::default();
        assert_eq!(scanner.scan(b"data: {\"usage\":null}\n"), None);
    }
}
