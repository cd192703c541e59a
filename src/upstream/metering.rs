//! Streams of a metered exchange (a request made with a client key): what was
//! streamed is counted, so a stream cut short is charged for what the client
//! got even when no usage arrived, and the usage chunk warden asked for on the
//! client's behalf is taken out again. Streams of unmetered exchanges never
//! pass through here.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::{ExchangeStats, FrameStream};

/// The stream, counted; usage-only chunks removed when `stats.hide_usage`.
pub fn meter(frames: FrameStream, stats: Arc<ExchangeStats>) -> FrameStream {
    Box::pin(frames.filter_map(move |frame| {
        let stats = stats.clone();
        async move {
            let _ = stats.first_event_at.set(std::time::Instant::now());
            let hide = stats.hide_usage.load(Ordering::Relaxed);
            let mut kept: Option<Vec<u8>> = None;
            let mut text = 0u64;
            let mut start = 0;
            let bytes = &frame[..];
            while start < bytes.len() {
                let end = find_event_end(&bytes[start..]).map_or(bytes.len(), |e| start + e);
                let event = &bytes[start..end];
                let data = data_of(event);
                let value = data.and_then(|d| serde_json::from_slice::<Value>(d).ok());
                let usage_only = hide && value.as_ref().is_some_and(is_usage_chunk);
                if let Some(v) = &value {
                    text += text_bytes(v);
                }
                if usage_only {
                    kept.get_or_insert_with(|| bytes[..start].to_vec());
                } else if let Some(k) = kept.as_mut() {
                    k.extend_from_slice(event);
                }
                start = end;
            }
            stats.streamed_bytes.fetch_add(text, Ordering::Relaxed);
            match kept {
                None => Some(frame),
                Some(k) if k.is_empty() => None,
                Some(k) => Some(Bytes::from(k)),
            }
        }
    }))
}

/// The length of the first event in `bytes`, its blank line included.
fn find_event_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n").map(|p| p + 2)
}

fn data_of(event: &[u8]) -> Option<&[u8]> {
    event.split(|&b| b == b'\n').find_map(|line| {
        line.strip_prefix(b"data:")
            .map(|d| d.strip_prefix(b" ").unwrap_or(d))
            .filter(|d| d.first() == Some(&b'{'))
    })
}

/// A Chat chunk that carries only the usage (`choices: []`).
fn is_usage_chunk(v: &Value) -> bool {
    v["choices"].as_array().is_some_and(Vec::is_empty) && v["usage"].is_object()
}

/// Bytes of text in one event: Chat deltas' content, reasoning and tool
/// arguments; the `delta` of a Responses event.
pub fn text_bytes(v: &Value) -> u64 {
    let mut n = 0;
    if let Some(choices) = v["choices"].as_array() {
        for c in choices {
            for part in [&c["delta"], &c["message"]] {
                for field in ["content", "reasoning_content"] {
                    if let Some(s) = part[field].as_str() {
                        n += s.len();
                    }
                }
                if let Some(calls) = part["tool_calls"].as_array() {
                    for call in calls {
                        if let Some(s) = call["function"]["arguments"].as_str() {
                            n += s.len();
                        }
                    }
                }
            }
        }
    } else if let Some(s) = v["delta"].as_str() {
        n += s.len();
    }
    n as u64
}

/// The request body with `stream_options.include_usage = true`.
pub fn with_include_usage(body: &[u8]) -> Option<Bytes> {
    let mut request: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    let options = request
        .entry("stream_options")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !options.is_object() {
        *options = Value::Object(serde_json::Map::new());
    }
    options["include_usage"] = Value::Bool(true);
    serde_json::to_vec(&request).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_usage_chunk_is_hidden_and_text_is_counted() {
        let stats = Arc::new(ExchangeStats::default());
        stats.hide_usage.store(true, Ordering::Relaxed);
        let frames: FrameStream = Box::pin(futures_util::stream::iter(vec![
            Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\n"),
            Bytes::from_static(
                b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n",
            ),
        ]));
        let out: Vec<Bytes> = meter(frames, stats.clone()).collect().await;
        assert_eq!(out.len(), 2);
        assert_eq!(&out[1][..], b"data: [DONE]\n\n");
        assert_eq!(stats.streamed_bytes.load(Ordering::Relaxed), 5);
    }
}
