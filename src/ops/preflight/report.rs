//! Rendering a [`Report`]: for people, as the `--json` document, and as one
//! Nagios-plugin line. All three are pure functions of the report, so `daemon`
//! and `doctor` print exactly what `preflight` prints.

use std::io::IsTerminal;

use owo_colors::OwoColorize;

use super::{CheckResult, Report, Status};

use crate::support::exit::{self, nagios};

/// Colour only for a terminal, and never when `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>).
pub fn color_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

/// 0 when nothing failed (warnings allowed), 1 otherwise.
pub fn exit_code(report: &Report) -> i32 {
    if report.ok { exit::OK } else { exit::FAILED }
}

fn label(status: Status, color: bool) -> String {
    let text = status.label();
    if !color {
        return text.to_string();
    }
    match status {
        Status::Pass => text.green().bold().to_string(),
        Status::Warn => text.yellow().bold().to_string(),
        Status::Fail => text.red().bold().to_string(),
        Status::Skip => text.dimmed().to_string(),
    }
}

/// The human output: one `[n/N] STATUS  title — message` line per check, a
/// `hint:` line under each failure and warning, a summary, and a pointer to
/// `doctor` when something failed.
pub fn human(report: &Report, color: bool) -> String {
    // `--only ID` shows the checks it ran, not a line per check it left out
    // (they stay in `--json` and in the summary's skip count).
    let shown: Vec<&CheckResult> = report
        .checks
        .iter()
        .filter(|c| !(c.status == Status::Skip && c.message == "not selected (--only)"))
        .collect();
    let total = shown.len();
    let mut out = String::new();
    for (i, check) in shown.into_iter().enumerate() {
        let counter = format!("[{}/{total}]", i + 1);
        out.push_str(&format!(
            "{counter} {}  {} — {}\n",
            label(check.status, color),
            check.title,
            check.message
        ));
        if let Some(hint) = &check.hint {
            let indent = " ".repeat(counter.chars().count() + 1);
            let hint = format!("hint: {hint}");
            if color {
                out.push_str(&format!("{indent}{}\n", hint.cyan()));
            } else {
                out.push_str(&format!("{indent}{hint}\n"));
            }
        }
    }
    let s = &report.summary;
    let verdict = if report.ok {
        if s.warn > 0 {
            "ready, with warnings"
        } else {
            "ready"
        }
    } else {
        "NOT READY"
    };
    let verdict = match (color, report.ok, s.warn > 0) {
        (false, _, _) => verdict.to_string(),
        (true, false, _) => verdict.red().bold().to_string(),
        (true, true, true) => verdict.yellow().bold().to_string(),
        (true, true, false) => verdict.green().bold().to_string(),
    };
    out.push_str(&format!(
        "{verdict}: {} pass, {} warn, {} fail, {} skip in {} ms ({})\n",
        s.pass,
        s.warn,
        s.fail,
        s.skip,
        report.duration_ms,
        report.home.display()
    ));
    if !report.ok {
        let failed: Vec<&str> = report.failed().map(|c| c.id.as_str()).collect();
        out.push_str(&format!(
            "{} failed: run `doctor --home {}` to diagnose and fix what is safe to fix\n",
            failed.join(", "),
            shell_word(&report.home.display().to_string())
        ));
    }
    out
}

/// Quotes a path for a copy-pasteable command when it needs it.
fn shell_word(text: &str) -> String {
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c));
    if plain && !text.is_empty() {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The `--json` document: exactly one line of JSON.
pub fn json(report: &Report) -> String {
    // A Report is plain data (strings, numbers, a path); serialising it cannot fail.
    serde_json::to_string(report).unwrap_or_else(|e| {
        serde_json::json!({"ok": false, "error": format!("cannot serialise report: {e}")})
            .to_string()
    })
}

/// One Nagios-plugin line (status text, the failing and warning checks, then
/// perfdata after `|`) and the plugin exit status: 0 OK, 1 WARNING, 2 CRITICAL.
pub fn nagios(report: &Report) -> (String, i32) {
    let s = &report.summary;
    let (word, code) = if s.fail > 0 {
        ("CRITICAL", nagios::CRITICAL)
    } else if s.warn > 0 {
        ("WARNING", nagios::WARNING)
    } else {
        ("OK", nagios::OK)
    };
    let mut text = format!(
        "WARDEN {word} - {} pass, {} warn, {} fail",
        s.pass, s.warn, s.fail
    );
    for status in [Status::Fail, Status::Warn] {
        for check in report.checks.iter().filter(|c| c.status == status) {
            text.push_str(&format!(
                "; {} {}: {}",
                status.label(),
                check.id,
                nagios_safe(&check.message)
            ));
        }
    }
    text.push_str(&format!(
        " | pass={} warn={} fail={} skip={} duration_ms={}",
        s.pass, s.warn, s.fail, s.skip, report.duration_ms
    ));
    (text, code)
}

/// The line for "could not run" under `--format nagios` (exit 3).
pub fn nagios_unknown(message: &str) -> String {
    format!("WARDEN UNKNOWN - {}", nagios_safe(message))
}

/// `|` starts perfdata and a newline ends the first line: neither may appear
/// in the status text.
fn nagios_safe(text: &str) -> String {
    text.replace('|', "/")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::Summary;
    use super::*;

    fn report(statuses: &[Status]) -> Report {
        let checks: Vec<CheckResult> = statuses
            .iter()
            .enumerate()
            .map(|(i, &status)| CheckResult {
                id: format!("c{i}"),
                title: format!("check {i}"),
                status,
                message: format!("message {i} | with a pipe"),
                hint: matches!(status, Status::Warn | Status::Fail).then(|| format!("fix {i}")),
                duration_ms: 1,
            })
            .collect();
        let summary = Summary::of(&checks);
        Report {
            ok: summary.fail == 0,
            version: crate::VERSION.into(),
            home: "/srv/warden home".into(),
            duration_ms: 14,
            summary,
            checks,
        }
    }

    #[test]
    fn human_lines_hints_summary_and_doctor() {
        let text = human(&report(&[Status::Pass, Status::Fail, Status::Warn]), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "[1/3] PASS  check 0 — message 0 | with a pipe");
        assert_eq!(lines[1], "[2/3] FAIL  check 1 — message 1 | with a pipe");
        assert_eq!(lines[2], "      hint: fix 1");
        assert_eq!(lines[4], "      hint: fix 2");
        assert!(lines[5].starts_with("NOT READY: 1 pass, 1 warn, 1 fail, 0 skip"));
        assert!(
            lines[6].contains("doctor --home '/srv/warden home'"),
            "{}",
            lines[6]
        );
        assert!(!text.contains('\u{1b}'), "no escape codes without colour");

        let text = human(&report(&[Status::Pass, Status::Skip]), false);
        assert!(!text.contains("doctor"));
        assert!(text.contains("ready: 1 pass"));
    }

    #[test]
    fn colour_only_when_asked() {
        let text = human(&report(&[Status::Pass, Status::Fail]), true);
        assert!(text.contains('\u{1b}'));
    }

    #[test]
    fn nagios_line_and_codes() {
        let (line, code) = nagios(&report(&[Status::Pass, Status::Pass]));
        assert_eq!(
            line,
            "WARDEN OK - 2 pass, 0 warn, 0 fail | pass=2 warn=0 fail=0 skip=0 duration_ms=14"
        );
        assert_eq!(code, 0);
        let (line, code) = nagios(&report(&[Status::Pass, Status::Warn]));
        assert_eq!(code, 1);
        assert!(line.starts_with(
            "WARDEN WARNING - 1 pass, 1 warn, 0 fail; WARN c1: message 1 / with a pipe |"
        ));
        let (line, code) = nagios(&report(&[Status::Warn, Status::Fail]));
        assert_eq!(code, 2);
        assert!(
            line.contains("; FAIL c1: ") && line.contains("; WARN c0: "),
            "{line}"
        );
        assert_eq!(line.matches('|').count(), 1, "{line}");
        assert_eq!(nagios_unknown("bad\nusage"), "WARDEN UNKNOWN - bad usage");
    }

    #[test]
    fn json_is_one_line_with_the_spec_shape() {
        let text = json(&report(&[Status::Pass]));
        assert!(!text.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in ["ok", "version", "home", "duration_ms", "summary", "checks"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["checks"][0]["status"], "pass");
        assert!(v["checks"][0]["hint"].is_null());
        assert_eq!(v["summary"]["pass"], 1);
    }
}
