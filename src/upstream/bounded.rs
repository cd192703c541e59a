//! Bounds on what an upstream answers (docs/contract.md §10): every HTTP provider's bodies
//! and streams go through these, whatever the wire format.
//!
//! - [`EventFramer`]: cuts a relayed SSE byte stream at event boundaries, so the
//!   client only ever receives whole events (a stream that breaks mid-event then
//!   ends with one complete error event, never `data: {"cho` + an error), and
//!   holds at most `upstream.max_event_bytes` of an unfinished event.
//! - [`read_capped`]: reads a whole body, at most `cap` bytes, within the idle
//!   timeout between chunks and the exchange's total deadline.
//! - [`Deadline`]: the total deadline (`upstream.timeout`) of one exchange.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::api::sse::EventEnds;

/// The end of one exchange's time (`upstream.timeout`), shared by the attempts,
/// the body read and every chunk of a stream.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: Instant,
    pub total: Duration,
}

impl Deadline {
    pub fn after(total: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    /// How long to wait for the next thing: `limit`, or less if the deadline is
    /// sooner (zero once it has passed).
    pub fn wait(&self, limit: Duration) -> Duration {
        limit.min(self.at.saturating_duration_since(Instant::now()))
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// Why a body or stream read stopped early.
#[derive(Debug)]
pub enum ReadStop {
    /// More than `cap` bytes (declared or received).
    TooLarge { cap: usize },
    /// Nothing arrived within the idle timeout.
    Idle,
    /// The total deadline passed.
    Deadline,
    /// The connection broke; the cause in words.
    Broken(String),
}

/// Reads a whole body: at most `cap` bytes (a declared `Content-Length` over
/// it stops before reading), each chunk within `idle`, all before `deadline`.
pub async fn read_capped(
    mut response: super::http::Answer,
    cap: usize,
    idle: Duration,
    deadline: Deadline,
) -> Result<Bytes, ReadStop> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadStop::TooLarge { cap });
    }
    // The usual answer is one chunk: kept as it is, without a copy.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        // One clock read per chunk, for the deadline and the idle timer.
        let now = Instant::now();
        if now >= deadline.at {
            return Err(ReadStop::Deadline);
        }
        match tokio::time::timeout_at((now + idle).min(deadline.at), response.chunk()).await {
            Err(_) if deadline.passed() => return Err(ReadStop::Deadline),
            Err(_) => return Err(ReadStop::Idle),
            Ok(Err(e)) => {
                return Err(ReadStop::Broken(e.describe()));
            }
            Ok(Ok(None)) if buf.is_empty() => return Ok(first.unwrap_or_default()),
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Ok(Some(chunk))) => {
                let held = first.as_ref().map_or(0, Bytes::len) + buf.len();
                if held + chunk.len() > cap {
                    return Err(ReadStop::TooLarge { cap });
                }
                match first.take() {
                    None if buf.is_empty() => first = Some(chunk),
                    None => buf.extend_from_slice(&chunk),
                    Some(earlier) => {
                        buf.extend_from_slice(&earlier);
                        buf.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }
}

/// Splits a stream of SSE bytes into runs of whole events.
#[derive(Debug)]
pub struct EventFramer {
    /// The unfinished event at the end of what arrived so far.
    pending: BytesMut,
    /// Where events end, whatever the line endings (CRLF, LF or CR).
    ends: EventEnds,
    max_event: usize,
}

/// The pending event grew past the limit: the stream must end.
#[derive(Debug, PartialEq, Eq)]
pub struct EventTooLarge {
    pub max_event: usize,
}

impl EventFramer {
    pub fn new(max_event: usize) -> EventFramer {
        EventFramer {
            pending: BytesMut::new(),
            ends: EventEnds::new(),
            max_event,
        }
    }

    /// Takes one chunk; returns the complete events it finished (possibly
    /// none), byte for byte. Zero-copy when no event was left unfinished.
    pub fn push(&mut self, chunk: Bytes) -> Result<Option<Bytes>, EventTooLarge> {
        let end = self.ends.scan(&chunk);
        let out = if self.pending.is_empty() {
            match end {
                Some(end) => {
                    self.pending.extend_from_slice(&chunk[end..]);
                    Some(chunk.slice(..end))
                }
                None => {
                    self.pending.extend_from_slice(&chunk);
                    None
                }
            }
        } else {
            let held = self.pending.len();
            self.pending.extend_from_slice(&chunk);
            end.map(|end| self.pending.split_to(held + end).freeze())
        };
        if self.pending.len() > self.max_event {
            self.pending.clear();
            return Err(EventTooLarge {
                max_event: self.max_event,
            });
        }
        Ok(out)
    }

    /// The unfinished event left when the stream ended (empty if none).
    pub fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }
}

/// Ends a chunk stream with an error once one SSE event passes `max_event`
/// bytes, without buffering: for streams that a parser reads (and would
/// otherwise buffer without bound), such as a Responses upstream's.
pub fn limit_events(
    chunks: super::http::ChunkStream,
    max_event: usize,
    display_url: String,
) -> super::http::ChunkStream {
    use futures_util::StreamExt;
    // Bytes of the unfinished event.
    let mut open = 0usize;
    let mut ends = EventEnds::new();
    let mut over = false;
    Box::pin(chunks.scan((), move |(), item| {
        let next = if over {
            None
        } else {
            match item {
                Err(error) => {
                    over = true;
                    Some(Err(error))
                }
                Ok(chunk) => {
                    open = match ends.scan(&chunk) {
                        Some(end) => chunk.len() - end,
                        None => open + chunk.len(),
                    };
                    if open > max_event {
                        over = true;
                        let error = crate::api::openai::ApiError::bad_gateway(format!(
                            "upstream {display_url} sent an event larger than upstream.max_event_bytes ({max_event} bytes)"
                        ));
                        tracing::warn!(error = %error.message, "stream ended with an error");
                        Some(Err(error))
                    } else {
                        Some(Ok(chunk))
                    }
                }
            }
        };
        std::future::ready(next)
    }))
}

/// Whether a run of whole events ends with the Chat Completions `[DONE]` event.
pub fn ends_with_done(events: &[u8]) -> bool {
    let tail = &events[events.len().saturating_sub(24)..];
    tail.windows(6).any(|w| w == b"[DONE]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whole_however_the_bytes_are_split() {
        let stream: &[u8] = b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: c\n\ndata: [DONE]\n\n";
        for split in 0..=stream.len() {
            for second in split..=stream.len() {
                let mut framer = EventFramer::new(1024);
                let mut client = crate::api::sse::SseParser::new();
                let mut out = Vec::new();
                for part in [&stream[..split], &stream[split..second], &stream[second..]] {
                    if let Some(events) = framer.push(Bytes::copy_from_slice(part)).unwrap() {
                        client.feed(&events);
                        assert!(!client.mid_event(), "{events:?}");
                        out.extend_from_slice(&events);
                    }
                }
                assert_eq!(out, stream, "split at {split}, {second}");
                assert!(framer.take_rest().is_empty());
                assert!(ends_with_done(&out));
            }
        }
    }

    #[test]
    fn runs_end_between_events_whatever_the_line_endings() {
        use crate::api::sse::SseParser;
        let stream: &[u8] =
            b"data: a\r\rdata: b\r\n\r\n: c\r\rdata: d\n\ndata: e\r\n\ndata: f\n\rdata: [DONE]\r\r";
        let mut whole = SseParser::new();
        let mut expected = whole.feed(stream);
        expected.extend(whole.finish());
        assert_eq!(expected.len(), 6);
        for split in 0..=stream.len() {
            for second in split..=stream.len() {
                let mut framer = EventFramer::new(1024);
                let mut client = SseParser::new();
                let mut got = Vec::new();
                let mut out = Vec::new();
                for part in [&stream[..split], &stream[split..second], &stream[second..]] {
                    if let Some(events) = framer.push(Bytes::copy_from_slice(part)).unwrap() {
                        got.extend(client.feed(&events));
                        assert!(!client.mid_event(), "torn at {split}, {second}: {events:?}");
                        out.extend_from_slice(&events);
                    }
                }
                assert!(framer.take_rest().is_empty(), "split at {split}, {second}");
                assert_eq!(out, stream, "split at {split}, {second}");
                assert_eq!(got, expected, "split at {split}, {second}");
            }
        }
    }

    #[test]
    fn an_event_past_the_limit_stops_the_stream() {
        let mut framer = EventFramer::new(10);
        assert_eq!(framer.push(Bytes::from_static(b"data: 12")).unwrap(), None);
        assert_eq!(
            framer.push(Bytes::from_static(b"3456")),
            Err(EventTooLarge { max_event: 10 })
        );
    }

    #[test]
    fn a_cut_event_is_held_back() {
        let mut framer = EventFramer::new(1024);
        let out = framer
            .push(Bytes::from_static(b"data: {\"x\":1}\n\ndata: {\"cho"))
            .unwrap()
            .unwrap();
        assert_eq!(&out[..], b"data: {\"x\":1}\n\n");
        assert_eq!(&framer.take_rest()[..], b"data: {\"cho");
        assert!(!ends_with_done(&out));
    }
}
