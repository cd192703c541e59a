//! A Chat Completions upstream: any OpenAI-compatible base URL.
//!
//! The client's body is forwarded byte for byte (unknown fields and tool calls
//! pass through untouched), over one pooled client. Streams are relayed chunk by
//! chunk as they arrive; the relay only peeks at `usage` to count tokens. The
//! HTTP mechanics (retries, timeouts, relaying) live in [`super::http`].

use std::sync::Arc;

use bytes::Bytes;

use super::http::{HttpUpstream, UpstreamUrl};
use super::{ChatCall, Reply, UpstreamError};
use crate::api::metrics::Metrics;
use crate::api::openai::{ApiError, Usage};
use crate::home::config::{Config, ProviderSettings};

pub struct ChatUpstream {
    http: HttpUpstream,
    chat_url: UpstreamUrl,
}

impl ChatUpstream {
    pub fn new(
        provider: &ProviderSettings,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<ChatUpstream, UpstreamError> {
        let http = HttpUpstream::new(provider, config, metrics)?;
        Ok(ChatUpstream {
            chat_url: http.url("/chat/completions"),
            http,
        })
    }

    /// The shared HTTP side, for routes that go to other paths of this upstream.
    pub fn http(&self) -> &HttpUpstream {
        &self.http
    }

    pub async fn chat(&self, call: ChatCall) -> Result<Reply, ApiError> {
        // A metered stream needs the provider's usage: ask for it, and hide the
        // extra chunk from a client that did not.
        let asked;
        let body = if call.stream && !call.include_usage && call.stats.is_metered() {
            match super::metering::with_include_usage(&call.body) {
                Some(patched) => {
                    call.stats
                        .hide_usage
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    asked = patched;
                    &asked
                }
                None => &call.body,
            }
        } else {
            &call.body
        };
        self.http
            .forward(
                &self.chat_url,
                body,
                call.stream,
                call.stats,
                usage_of,
                &call.headers,
            )
            .await
    }

    pub async fn models(&self) -> Option<Bytes> {
        self.http.get_list("/models").await
    }
}

/// Reads `usage` from a `chat.completion` body or chunk.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}
