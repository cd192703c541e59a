//! Rendering a doctor [`Report`]: one line per finding for people, one JSON
//! document for `--json`. Both are pure functions of the report.

use owo_colors::OwoColorize;

use super::{FindingStatus, Report};

use crate::support::exit;

/// 0 nothing is left broken; 1 something still needs fixing (or, in a dry run,
/// would be fixed).
pub fn exit_code(report: &Report) -> i32 {
    if report.ok { exit::OK } else { exit::FAILED }
}

fn mark(status: FindingStatus, color: bool) -> String {
    let text = match status {
        FindingStatus::Ok => "✓ ok",
        FindingStatus::Fixed => "✓ fixed:",
        FindingStatus::WouldFix => "→ would fix:",
        FindingStatus::NeedsYou => "! needs you:",
    };
    if !color {
        return text.to_string();
    }
    match status {
        FindingStatus::Ok => text.green().to_string(),
        FindingStatus::Fixed => text.cyan().bold().to_string(),
        FindingStatus::WouldFix => text.yellow().bold().to_string(),
        FindingStatus::NeedsYou => text.red().bold().to_string(),
    }
}

/// The human output: a line per finding (`✓ ok`, `✓ fixed: …`, `→ would fix: …`,
/// `! needs you: …`), an indented `hint:` or `note:` where there is one, and a
/// closing summary.
pub fn human(report: &Report, color: bool) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let line = match (f.status, &f.action) {
            (FindingStatus::Fixed, Some(action)) => format!("{} — {action}", f.id),
            (FindingStatus::WouldFix, Some(action)) => {
                format!("{} — {}; would {action}", f.id, f.message)
            }
            _ => format!("{} — {}", f.id, f.message),
        };
        out.push_str(&format!("{} {line}\n", mark(f.status, color)));
        if let Some(hint) = &f.hint {
            let label = match f.status {
                FindingStatus::Ok | FindingStatus::Fixed => "note",
                FindingStatus::WouldFix | FindingStatus::NeedsYou => "hint",
            };
            let text = format!("    {label}: {hint}");
            if color {
                out.push_str(&format!("{}\n", text.dimmed()));
            } else {
                out.push_str(&format!("{text}\n"));
            }
        }
    }
    let s = &report.summary;
    let counts = if report.dry_run {
        format!(
            "{} would be fixed, {} need{} you, {} ok",
            s.would_fix,
            s.needs_you,
            if s.needs_you == 1 { "s" } else { "" },
            s.ok
        )
    } else {
        format!(
            "{} fixed, {} need{} you, {} ok",
            s.fixed,
            s.needs_you,
            if s.needs_you == 1 { "s" } else { "" },
            s.ok
        )
    };
    let verdict = match (report.dry_run, report.ok) {
        (true, true) => "dry run, nothing to fix".to_string(),
        (true, false) => "dry run, nothing was changed".to_string(),
        (false, true) if s.fixed > 0 => "fixed, nothing left broken".to_string(),
        (false, true) => "nothing to fix".to_string(),
        (false, false) => "something needs you".to_string(),
    };
    let verdict = match (color, report.ok) {
        (false, _) => verdict,
        (true, true) => verdict.green().bold().to_string(),
        (true, false) => verdict.red().bold().to_string(),
    };
    out.push_str(&format!(
        "{verdict}: {counts} in {} ms ({})\n",
        report.duration_ms,
        report.home.display()
    ));
    if report.dry_run && s.would_fix > 0 {
        out.push_str("run it again without --dry-run to apply the fixes above\n");
    }
    out
}

/// The `--json` document: exactly one line.
pub fn json(report: &Report) -> String {
    serde_json::to_string(report).unwrap_or_else(|e| {
        serde_json::json!({"ok": false, "error": format!("cannot serialise report: {e}")})
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Finding, Summary};
    use super::*;

    fn report(dry_run: bool, statuses: &[FindingStatus]) -> Report {
        let findings: Vec<Finding> = statuses
            .iter()
            .enumerate()
            .map(|(i, &status)| Finding {
                id: format!("f{i}"),
                status,
                message: format!("problem {i}"),
                action: matches!(status, FindingStatus::Fixed | FindingStatus::WouldFix)
                    .then(|| format!("action {i}")),
                hint: matches!(status, FindingStatus::NeedsYou).then(|| format!("hint {i}")),
            })
            .collect();
        let summary = Summary::of(&findings);
        Report {
            ok: summary.needs_you == 0 && summary.would_fix == 0,
            version: crate::VERSION.into(),
            home: "/srv/warden".into(),
            dry_run,
            yes: false,
            duration_ms: 7,
            summary,
            findings,
        }
    }

    #[test]
    fn a_line_per_finding_and_a_summary() {
        use FindingStatus::*;
        let r = report(false, &[Ok, Fixed, NeedsYou]);
        let text = human(&r, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "✓ ok f0 — problem 0");
        assert_eq!(lines[1], "✓ fixed: f1 — action 1");
        assert_eq!(lines[2], "! needs you: f2 — problem 2");
        assert_eq!(lines[3], "    hint: hint 2");
        assert!(
            lines[4].starts_with("something needs you: 1 fixed, 1 needs you, 1 ok"),
            "{}",
            lines[4]
        );
        assert_eq!(exit_code(&r), 1);
        assert!(!text.contains('\u{1b}'));
        assert!(human(&r, true).contains('\u{1b}'));

        let r = report(true, &[Ok, WouldFix]);
        let text = human(&r, false);
        assert!(
            text.contains("→ would fix: f1 — problem 1; would action 1"),
            "{text}"
        );
        assert!(
            text.contains("dry run, nothing was changed: 1 would be fixed"),
            "{text}"
        );
        assert_eq!(exit_code(&r), 1);

        let r = report(false, &[Ok, Fixed]);
        assert!(human(&r, false).contains("fixed, nothing left broken"));
        assert_eq!(exit_code(&r), 0);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let r = report(true, &[FindingStatus::WouldFix, FindingStatus::Ok]);
        let text = json(&r);
        assert!(!text.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in ["ok", "home", "dry_run", "findings", "summary"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let f = &v["findings"][0];
        for key in ["id", "status", "message", "action", "hint"] {
            assert!(f.get(key).is_some(), "{key}");
        }
        assert_eq!(f["status"], "would-fix");
        assert!(v["findings"][1]["action"].is_null());
        assert_eq!(v["summary"]["would_fix"], 1);
    }
}
