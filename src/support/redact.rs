//! The one place secrets and client strings are made safe to show (docs/contract.md §10).
//!
//! - [`url`]: a URL with its userinfo replaced by `***` (`http://***@host/v1`), for
//!   `/health`, error bodies, log lines, `daemon status` and preflight messages.
//! - [`dotenv_line`]: a malformed `.env` line described by its number and key only,
//!   never its value (it may be a token).
//! - [`client`]: a client-supplied string for a log field, a metric label or
//!   `/health`: at most [`CLIENT_MAX`] bytes, control characters escaped.

use std::borrow::Cow;
use std::fmt;

/// The most bytes of one client-supplied string any output echoes.
pub const CLIENT_MAX: usize = 256;

/// `text` with the userinfo of a URL (user and password) shown as `***`. Text that
/// is not a URL with userinfo is returned unchanged, without a trailing slash added.
pub fn url(text: &str) -> String {
    // Find `scheme://userinfo@` by hand: parsing and re-serialising would change
    // the text (case, trailing slash) of URLs that hold no secret.
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => format!("{}://***@{}", &text[..scheme_end], &rest[at + 1..]),
        None => text.to_string(),
    }
}

/// Redacts every `scheme://user:pass@` inside a longer message (an error chain
/// that repeats a URL, for example).
pub fn urls_in(message: &str) -> Cow<'_, str> {
    if !message.contains('@') || !message.contains("://") {
        return Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("://") {
        // The scheme starts after the last separator before `://`.
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |p| p + 1);
        out.push_str(&rest[..start]);
        let url_text = &rest[start..];
        let end = url_text[i - start + 3..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')'))
            .map_or(url_text.len(), |e| e + i - start + 3);
        out.push_str(&url(&url_text[..end]));
        rest = &url_text[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Describes a `.env` line that does not parse: file, line number and (when the
/// line looks like `KEY=...`) the key; never the value.
pub fn dotenv_line(path: &std::path::Path, text: &str, bad_line: &str) -> String {
    let number = line_number_of(text, bad_line);
    let key = bad_line
        .trim()
        .trim_start_matches("export ")
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.len() <= 64
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        });
    let where_ = match number {
        Some(n) => format!("line {n}"),
        None => "a line".to_string(),
    };
    let key = key.map(|k| format!(" (key {k})")).unwrap_or_default();
    format!(
        "{}: {where_}{key} is not KEY=value (content not shown, it may hold a secret)",
        path.display()
    )
}

/// The 1-based number of the line `bad` (as dotenvy reports it) in `text`.
fn line_number_of(text: &str, bad: &str) -> Option<usize> {
    let bad = bad.trim();
    if let Some(i) = text.lines().position(|l| l.trim() == bad) {
        return Some(i + 1);
    }
    let first = bad.lines().next().filter(|l| !l.trim().is_empty())?;
    let offset = text.find(first)?;
    Some(text[..offset].matches('\n').count() + 1)
}

/// A client-supplied string as it may appear in an output: see [`Client`].
pub fn client(text: &str) -> Client<'_> {
    Client(text)
}

/// Displays at most [`CLIENT_MAX`] bytes of a client string (cut on a character
/// boundary, then `…`), with control characters escaped (`\n`, `\u{1b}`), so it
/// can neither forge a log line nor grow an output without bound.
#[derive(Clone, Copy)]
pub struct Client<'a>(pub &'a str);

impl Client<'_> {
    /// The shown text as an owned string, e.g. for a metric label.
    pub fn to_label(self) -> String {
        self.to_string()
    }

    /// True when the text would be shown unchanged.
    pub fn is_plain(self) -> bool {
        self.0.len() <= CLIENT_MAX && !self.0.chars().any(char::is_control)
    }
}

impl fmt::Display for Client<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = truncate(self.0, CLIENT_MAX);
        escape_controls(text, f)?;
        if text.len() < self.0.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Client<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Writes `text` with every control character as an escape (`\n`, `\r`, `\t`,
/// `\u{..}`).
pub fn escape_controls(text: &str, out: &mut impl fmt::Write) -> fmt::Result {
    let mut rest = text;
    while let Some(i) = first_control(rest) {
        out.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or(' ');
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// The byte offset of the first control character (`char::is_control`: U+0000–U+001F
/// and U+007F–U+009F). Every log line passes through here, so it scans bytes rather
/// than decoding chars: C0 controls and DEL are single bytes, and C1 controls are the
/// two-byte sequences `C2 80`–`C2 9F` (no other UTF-8 sequence starts with `C2` and
/// continues in that range).
fn first_control(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    // Skip 16-byte runs of printable ASCII first (almost every log byte): the test has
    // no early exit inside a run, so it compiles to a few vector instructions. A
    // skipped run holds no 0xC2, so no C1 control straddles its end.
    let mut start = 0;
    for run in bytes.chunks_exact(16) {
        if run
            .iter()
            .fold(false, |odd, &b| odd | !(0x20..0x7f).contains(&b))
        {
            break;
        }
        start += 16;
    }
    bytes[start..]
        .iter()
        .enumerate()
        .position(|(i, &b)| {
            b < 0x20
                || b == 0x7f
                || (b == 0xc2
                    && bytes
                        .get(start + i + 1)
                        .is_some_and(|n| (0x80..=0x9f).contains(n)))
        })
        .map(|i| start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_scan_finds_what_char_is_control_finds() {
        let mut samples: Vec<String> = (0u32..0x300)
            .filter_map(char::from_u32)
            .map(|c| format!("ab{c}cd"))
            .collect();
        samples.extend(
            [
                "",
                "plain",
                "é\u{85}x",
                "\u{2028}",
                "日本\n",
                "\u{9f}",
                "\u{a0}\u{7f}",
                "x\u{c2}",
            ]
            .map(String::from),
        );
        // Past the 16-byte runs too: a control at every offset of a long line.
        for at in 0..40 {
            for c in ['\n', '\u{7f}', '\u{85}', 'é', '\u{a0}'] {
                let mut line = "x".repeat(40);
                line.insert(at, c);
                samples.push(line);
            }
        }
        for s in &samples {
            assert_eq!(first_control(s), s.find(char::is_control), "{s:?}");
        }
    }

    #[test]
    fn url_userinfo_is_hidden() {
        assert_eq!(url("http://alice:PASS@host:9/v1"), "http://***@host:9/v1");
        assert_eq!(url("https://TOKEN@host/v1/"), "https://***@host/v1/");
        assert_eq!(url("http://host/v1?a=b@c"), "http://host/v1?a=b@c");
        assert_eq!(url("http://host:9/v1"), "http://host:9/v1");
        assert_eq!(url("mock"), "mock");
    }

    #[test]
    fn urls_inside_messages_are_hidden() {
        let m =
            "cannot reach upstream http://a:SECRET@h/v1: error (for url http://a:SECRET@h/v1/x)";
        let shown = urls_in(m);
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("http://***@h/v1"), "{shown}");
    }

    #[test]
    fn dotenv_lines_name_number_and_key_only() {
        let text = "GOOD=1\nTOKEN=\"sk-secret\n";
        let m = dotenv_line(std::path::Path::new("/h/.env"), text, "TOKEN=\"sk-secret");
        assert_eq!(
            m,
            "/h/.env: line 2 (key TOKEN) is not KEY=value (content not shown, it may hold a secret)"
        );
        let m = dotenv_line(std::path::Path::new("/h/.env"), "sk-secret\n", "sk-secret");
        assert!(!m.contains("sk-secret"), "{m}");
    }

    #[test]
    fn client_strings_are_cut_and_escaped() {
        let forged = "m\n2026-01-01T00:00:00Z  INFO warden proxy stopped";
        let shown = client(forged).to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("m\\n2026"), "{shown}");
        let long = "é".repeat(1000);
        let shown = client(&long).to_string();
        assert!(shown.len() <= CLIENT_MAX + "…".len(), "{}", shown.len());
        assert!(shown.ends_with('…'));
        assert!(client("gpt-5").is_plain());
        assert!(!client(&long).is_plain());
    }
}
