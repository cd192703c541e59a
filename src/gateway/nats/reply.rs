//! Reply shapes on NATS (docs/contract.md §13), the same for the service and for JetStream
//! jobs:
//! - a complete answer: one message, the `chat.completion` JSON;
//! - a stream: one message per chunk (the JSON of an SSE `data:` line) with
//!   header `Warden-Seq` (1, 2, …), then an empty message with
//!   `Warden-Status: done`;
//! - an error: one message with `Nats-Service-Error` (the message) and
//!   `Nats-Service-Error-Code` (the HTTP status) headers and the OpenAI error
//!   JSON as body. A stream that breaks after its first chunk ends with such an
//!   error message instead of `done`.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::api::openai::ApiError;
use crate::gateway::admission::Slot;
use crate::upstream::{ExchangeStats, Reply};

pub const SEQ_HEADER: &str = "Warden-Seq";
pub const STATUS_HEADER: &str = "Warden-Status";
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// How a reply went out.
pub struct Delivered {
    /// The status an HTTP client would have seen (200, or the error's).
    pub status: u16,
    /// False when publishing failed (the connection went away).
    pub sent: bool,
    /// True once any part of the answer was published (no retry after that).
    pub started: bool,
}

/// Publishes an error reply. Returns whether it went out.
pub async fn publish_error(client: &Client, to: Subject, e: &ApiError) -> bool {
    let mut headers = HeaderMap::new();
    // Header values are one line: the message is ours (no client bytes beyond
    // the redacted, bounded ones ApiError already holds), newlines flattened.
    let message: String = e
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(SERVICE_ERROR, message.as_str());
    headers.insert(SERVICE_ERROR_CODE, e.status.as_u16().to_string().as_str());
    let body = Bytes::from(e.body().to_string());
    client.publish_with_headers(to, headers, body).await.is_ok()
}

/// Publishes an upstream's reply; a stream's slot is held until its end.
/// `progress` (JetStream) is sent a progress ack every `interval` while chunks
/// are relayed, so a long generation is not redelivered.
/// `stats` (the exchange's) adds the server-tool headers (docs/contract.md §18)
/// to a complete answer and to a stream's last message.
pub async fn deliver(
    client: &Client,
    to: Subject,
    reply: Reply,
    slot: Slot,
    progress: Option<(&Acker, Duration)>,
    stats: Option<&ExchangeStats>,
) -> Delivered {
    match reply {
        Reply::Complete(json) => {
            drop(slot);
            let mut headers = HeaderMap::new();
            tool_headers(stats, &mut headers);
            let sent = if !headers.is_empty() {
                client.publish_with_headers(to, headers, json).await.is_ok()
            } else {
                client.publish(to, json).await.is_ok()
            };
            Delivered {
                status: 200,
                sent,
                started: sent,
            }
        }
        Reply::Stream(mut frames) => {
            let _slot = slot;
            let mut seq: u64 = 0;
            let mut last_progress = tokio::time::Instant::now();
            while let Some(frame) = frames.next().await {
                for data in data_lines(&frame) {
                    if data == b"[DONE]" {
                        continue;
                    }
                    if let Some(e) = stream_error(data) {
                        let sent = publish_error(client, to.clone(), &e).await;
                        return Delivered {
                            status: e.status.as_u16(),
                            sent,
                            started: seq > 0,
                        };
                    }
                    seq += 1;
                    let mut headers = HeaderMap::new();
                    headers.insert(SEQ_HEADER, seq.to_string().as_str());
                    let payload = frame.slice_ref(data);
                    if client
                        .publish_with_headers(to.clone(), headers, payload)
                        .await
                        .is_err()
                    {
                        return Delivered {
                            status: 200,
                            sent: false,
                            started: true,
                        };
                    }
                }
                if let Some((acker, interval)) = progress {
                    if last_progress.elapsed() >= interval {
                        let _ = acker.ack_with(AckKind::Progress).await;
                        last_progress = tokio::time::Instant::now();
                    }
                }
            }
            let mut headers = HeaderMap::new();
            headers.insert(STATUS_HEADER, "done");
            tool_headers(stats, &mut headers);
            let sent = client
                .publish_with_headers(to, headers, Bytes::new())
                .await
                .is_ok();
            Delivered {
                status: 200,
                sent,
                started: true,
            }
        }
    }
}

/// `x-warden-tool-rounds` and `x-warden-tool-limit`, when server tools ran.
fn tool_headers(stats: Option<&ExchangeStats>, headers: &mut HeaderMap) {
    let Some(stats) = stats else {
        return;
    };
    let rounds = stats.tool_rounds.load(std::sync::atomic::Ordering::Relaxed);
    if rounds > 0 {
        headers.insert(crate::tools::ROUNDS_HEADER, rounds.to_string().as_str());
    }
    if stats
        .tool_limit_reached
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        headers.insert(crate::tools::LIMIT_HEADER, "reached");
    }
}

/// The payloads of the `data:` lines of one or more SSE events.
fn data_lines(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    frame.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let data = line.strip_prefix(b"data:")?;
        Some(data.strip_prefix(b" ").unwrap_or(data))
    })
}

/// An error event (`{"error":{...}}`) in a stream, as the error it reports.
fn stream_error(data: &[u8]) -> Option<ApiError> {
    if !data.starts_with(b"{\"error\"") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let error = value.get("error")?;
    let message = error
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("the upstream stream failed")
        .to_string();
    Some(ApiError::bad_gateway(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_lines_of_a_frame_with_two_events() {
        let frame = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let lines: Vec<_> = data_lines(frame).collect();
        assert_eq!(lines, [&b"{\"a\":1}"[..], b"[DONE]"]);
        assert!(stream_error(b"{\"error\":{\"message\":\"x\"}}").is_some());
        assert!(stream_error(b"{\"choices\":[]}").is_none());
    }
}
