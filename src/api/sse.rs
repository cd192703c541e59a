//! An incremental Server-Sent Events parser.
//!
//! Upstream bodies arrive as arbitrary byte chunks: a frame may be split anywhere,
//! even inside a UTF-8 character or between `\r` and `\n`. [`SseParser`] buffers
//! only the current incomplete line, scans every byte once, and yields whole
//! events as soon as their terminating blank line arrives. It follows the
//! WHATWG event-stream rules: lines end in CRLF, LF or CR; `:` starts a comment;
//! several `data:` lines join with `\n`; one space after the colon is dropped;
//! a blank line dispatches the event (an event without `data` is not dispatched).

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when the frame had one.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Incremental parser: feed it chunks with [`SseParser::feed`], call
/// [`SseParser::finish`] when the stream ends.
#[derive(Clone, Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    /// Still at the very start of the stream (a UTF-8 BOM there is skipped).
    at_start: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser {
            at_start: true,
            ..SseParser::default()
        }
    }

    /// Parses one chunk and returns the events it completed (often none).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut bytes = chunk;
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        if self.at_start && !bytes.is_empty() {
            // The BOM may itself be split across chunks; buffer until 3 bytes are known.
            self.line.extend_from_slice(bytes);
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let n = self.line.len().min(BOM.len());
            if self.line[..n] != BOM[..n] {
                self.at_start = false;
            } else if self.line.len() < BOM.len() {
                return out;
            } else {
                self.line.drain(..BOM.len());
                self.at_start = false;
            }
            let buffered = std::mem::take(&mut self.line);
            self.scan(&buffered, &mut out);
            return out;
        }
        self.scan(bytes, &mut out);
        out
    }

    /// Ends the stream: a final event that lacked its closing blank line (or
    /// whose last line lacked its newline) is still dispatched, which is more
    /// useful to a proxy than the specification's "discard".
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut Vec::new());
        }
        self.after_cr = false;
        self.take_event()
    }

    /// Whether an event (or a line) has begun and not yet ended: a stream cut
    /// here would tear it.
    pub fn mid_event(&self) -> bool {
        !self.line.is_empty() || self.has_data || self.event.is_some()
    }

    fn scan(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let head = &bytes[..pos];
            let was_cr = bytes[pos] == b'\r';
            bytes = &bytes[pos + 1..];
            if self.line.is_empty() {
                self.process_line(head, out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.process_line(&line, out);
                line.clear();
                self.line = line; // keep the allocation
            }
            if was_cr {
                // `\r\n` is one line ending, even when split across chunks.
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(bytes);
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(event) = self.take_event() {
                out.push(event);
            }
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // `id`, `retry` and unknown fields are not needed here
        }
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

/// Finds where events end in a byte stream without parsing them, for relays
/// that pass the bytes on unchanged but must cut only between events. Knows
/// every line ending the specification allows (CRLF, LF, CR), also split
/// across chunks: an event ends with the line ending of its blank line.
#[derive(Clone, Copy, Debug)]
pub struct EventEnds {
    /// Nothing of the current line seen yet.
    line_empty: bool,
    /// The last byte seen was a CR: a LF next belongs to it.
    after_cr: bool,
}

impl Default for EventEnds {
    fn default() -> Self {
        EventEnds::new()
    }
}

impl EventEnds {
    pub fn new() -> EventEnds {
        EventEnds {
            line_empty: true,
            after_cr: false,
        }
    }

    /// Scans the next bytes of the stream; returns the end (exclusive, in
    /// `bytes`) of the last event they complete. A blank line ended by a CR at
    /// the end of `bytes` completes its event: a LF that follows in the next
    /// chunk is part of that line ending, not a new line.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut last = None;
        for (i, &b) in bytes.iter().enumerate() {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                // The LF of a CRLF whose CR already ended the line.
                if last == Some(i) {
                    last = Some(i + 1);
                }
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    if self.line_empty {
                        last = Some(i + 1);
                    }
                    self.line_empty = true;
                    self.after_cr = b == b'\r';
                }
                _ => self.line_empty = false,
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.feed(c));
        }
        out.extend(p.finish());
        out
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBF: keep-alive comment\r\n\
event: response.created\r\n\
data: {\"a\":1}\r\n\
\r\n\
data: line one\n\
data:line two\n\
data: caf\xC3\xA9\n\
\n\
event: ping\r\r\
id: 7\n\
retry: 10\n\
\n\
data\n\
\n\
data: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            ev(Some("response.created"), "{\"a\":1}"),
            ev(None, "line one\nline two\ncafé"),
            // `event: ping` had no data: not dispatched, and its name does not leak.
            ev(None, ""),
            ev(None, "[DONE]"),
        ]
    }

    #[test]
    fn whole_stream() {
        assert_eq!(parse_chunks(&[STREAM]), expected());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(parse_chunks(&[a, b]), expected(), "split at byte {i}");
            for j in i..=STREAM.len() {
                let (b1, c) = b.split_at(j - i);
                assert_eq!(
                    parse_chunks(&[a, b1, c]),
                    expected(),
                    "split at bytes {i} and {j}"
                );
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_chunks(&chunks), expected());
    }

    #[test]
    fn events_are_yielded_as_soon_as_complete() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: a\n").is_empty());
        assert_eq!(p.feed(b"\ndata: b"), vec![ev(None, "a")]);
        assert!(p.feed(b"\r").is_empty());
        assert_eq!(p.feed(b"\n\r\n"), vec![ev(None, "b")]);
    }

    #[test]
    fn unterminated_final_event_is_flushed_by_finish() {
        let mut p = SseParser::new();
        assert!(p.feed(b"event: x\ndata: tail").is_empty());
        assert_eq!(p.finish(), Some(ev(Some("x"), "tail")));
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn every_line_ending_ends_an_event() {
        let endings = ["\n", "\r\n", "\r"];
        for line_end in endings {
            for blank in endings {
                if line_end == "\r" && blank == "\n" {
                    continue; // that is one CRLF, not a blank line
                }
                let stream = format!("data: a{line_end}{blank}data: b{line_end}{blank}");
                let first = "data: a".len() + line_end.len() + blank.len();
                let mut ends = EventEnds::new();
                assert_eq!(
                    ends.scan(&stream.as_bytes()[..first]),
                    Some(first),
                    "{stream:?}"
                );
                let mut ends = EventEnds::new();
                assert_eq!(
                    ends.scan(stream.as_bytes()),
                    Some(stream.len()),
                    "{stream:?}"
                );
                let events = parse_chunks(&[stream.as_bytes()]);
                assert_eq!(events, vec![ev(None, "a"), ev(None, "b")], "{stream:?}");
            }
        }
    }

    #[test]
    fn a_crlf_split_after_its_cr_is_one_line_ending() {
        // `data: a\r` | `\n\r\n`: the LF belongs to the CR, then a blank line.
        let mut ends = EventEnds::new();
        assert_eq!(ends.scan(b"data: a\r"), None);
        assert_eq!(ends.scan(b"\n\r\n"), Some(3));
        // `data: a\r\r` | `\n`: the event ended at the second CR; the LF is its.
        let mut ends = EventEnds::new();
        assert_eq!(ends.scan(b"data: a\r\r"), Some(9));
        assert_eq!(ends.scan(b"\ndata: b"), None);
        assert_eq!(ends.scan(b"\r\r"), Some(2));
    }

    #[test]
    fn long_line_in_tiny_chunks_is_linear() {
        // 1 MiB of data in 1-byte chunks: a quadratic parser would take minutes.
        let mut p = SseParser::new();
        p.feed(b"data: ");
        let mut n = 0;
        for _ in 0..(1 << 20) {
            n += p.feed(b"x").len();
        }
        assert_eq!(n, 0);
        let out = p.feed(b"\n\n");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.len(), 1 << 20);
    }
}
