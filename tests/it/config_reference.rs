//! `docs/configuration.md` is the configuration reference: one table row per key the
//! parser accepts, with its real default and the variables that override it.
//!
//! Nothing here lists keys by hand. The keys come from the parser itself: a probe
//! document with an unknown key under a table makes the parser (serde with
//! `deny_unknown_fields`) answer "unknown field …, expected one of `a`, `b`, …", which
//! names every key of that table; each key is then probed again to tell a table, an
//! array of tables or a map of tables from a plain value. The defaults come from
//! `Settings::default()` (and, for an entry of an array of tables, from parsing an
//! entry with only its required keys). The variables come from `ENV_OVERRIDES`, the
//! list the parser reads them from. So adding a key to the parser without a row, or
//! changing a default without changing its row, fails here, with the row to add.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use warden::home::config::{ENV_OVERRIDES, Settings, parse_settings};

const DOC: &str = "docs/configuration.md";
const PROBE: &str = "__warden_probe__";
/// The key a probe gives an entry of a map of tables.
const NAME: &str = "NAME";

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    /// A key of a table.
    Field(String),
    /// An entry of an array of tables (`[[providers]]`).
    Entry,
    /// An entry of a map of tables, under a name the operator chooses.
    Named,
}

/// How a key is written in the reference: `providers[].name`, `prices.<name>.input`.
fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(f);
            }
            Seg::Entry => out.push_str("[]"),
            Seg::Named => out.push_str(".<name>"),
        }
    }
    out
}

/// The document with `leaf` at `path`.
fn build(path: &[Seg], leaf: Value) -> Value {
    path.iter().rev().fold(leaf, |inner, seg| match seg {
        Seg::Field(f) => json!({ f.as_str(): inner }),
        Seg::Entry => json!([inner]),
        Seg::Named => json!({ NAME: inner }),
    })
}

fn parse(doc: &Value) -> Result<Settings, String> {
    let text = toml::to_string(doc).unwrap_or_else(|e| panic!("probe {doc}: {e}"));
    parse_settings(&text, Path::new("probe.toml")).map_err(|e| e.message)
}

/// The keys of the table at `path`, when the parser takes a table with fixed keys there
/// (`None` for a plain value, and for a free-form value that takes any key).
fn table_keys(path: &[Seg]) -> Option<Vec<String>> {
    let message = parse(&build(path, json!({ PROBE: 1 }))).err()?;
    let rest = message.strip_prefix(&format!("unknown field `{PROBE}`"))?;
    Some(
        rest.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every key the parser accepts, as paths to plain values.
fn walk(path: &[Seg], out: &mut Vec<Vec<Seg>>) {
    let keys = table_keys(path).unwrap_or_else(|| panic!("`{}` is not a table", display(path)));
    for key in keys {
        let mut child = path.to_vec();
        child.push(Seg::Field(key));
        let mut entry = child.clone();
        entry.push(Seg::Entry);
        let mut named = child.clone();
        named.push(Seg::Named);
        if table_keys(&child).is_some() {
            walk(&child, out);
        } else if table_keys(&entry).is_some() {
            walk(&entry, out);
        } else if table_keys(&named).is_some() {
            walk(&named, out);
        } else {
            out.push(child);
        }
    }
}

/// What a key is when the file does not set it.
#[derive(Clone, Debug, PartialEq)]
enum Default {
    Value(Value),
    /// No value: the key is optional and something else applies.
    Unset,
    /// An entry must set it.
    Required,
}

impl Default {
    fn cell(&self) -> String {
        match self {
            Default::Value(v) => format!("`{}`", toml_value(v)),
            Default::Unset => "unset (…what applies instead…)".into(),
            Default::Required => "required".into(),
        }
    }
}

/// `v` written as TOML, as a row shows it (tables inline).
fn toml_value(v: &Value) -> String {
    toml::Value::try_from(v)
        .map(|t| t.to_string())
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn lookup<'a>(mut v: &'a Value, fields: &[Seg]) -> Option<&'a Value> {
    for seg in fields {
        v = match seg {
            Seg::Field(f) => v.get(f)?,
            Seg::Entry => v.get(0)?,
            Seg::Named => v.get(NAME)?,
        };
    }
    Some(v).filter(|v| !v.is_null())
}

/// Defaults of the keys of one entry (of an array or map of tables) at `entry`: the
/// entry is parsed with only its required keys, found by what the parser says is missing.
fn entry_defaults(entry: &[Seg]) -> (Value, Vec<String>) {
    let mut fields = serde_json::Map::new();
    let mut required = Vec::new();
    for _ in 0..20 {
        match parse(&build(entry, Value::Object(fields.clone()))) {
            Ok(settings) => {
                let all = serde_json::to_value(settings).unwrap();
                let value = lookup(&all, entry).cloned().unwrap_or(Value::Null);
                return (value, required);
            }
            Err(message) => {
                let missing = message
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                    .unwrap_or_else(|| {
                        panic!(
                            "`{}`: an entry with {fields:?} does not parse: {message}",
                            display(entry)
                        )
                    })
                    .to_string();
                // The first filler of the right type: the error, if any, is then
                // about another key.
                let filler = [json!("x"), json!(1), json!(true), json!([]), json!({})]
                    .into_iter()
                    .find(|v| {
                        let mut f = fields.clone();
                        f.insert(missing.clone(), v.clone());
                        !matches!(parse(&build(entry, Value::Object(f))),
                            Err(m) if m.starts_with("invalid type"))
                    })
                    .unwrap_or(json!("x"));
                fields.insert(missing.clone(), filler);
                required.push(missing);
            }
        }
    }
    panic!("`{}`: too many required keys", display(entry))
}

fn real_default(path: &[Seg], defaults: &Value) -> Default {
    let split = path
        .iter()
        .rposition(|s| matches!(s, Seg::Entry | Seg::Named));
    let Some(split) = split else {
        return lookup(defaults, path).map_or(Default::Unset, |v| Default::Value(v.clone()));
    };
    let (entry_path, rest) = path.split_at(split + 1);
    let (entry, required) = entry_defaults(entry_path);
    if let [Seg::Field(f)] = rest
        && required.contains(f)
    {
        return Default::Required;
    }
    lookup(&entry, rest).map_or(Default::Unset, |v| Default::Value(v.clone()))
}

/// One row of the reference: its default cell and its variable cell.
struct Row {
    line: usize,
    default: String,
    variables: String,
}

/// The cells of a table row (`\|` inside a cell is not a separator).
fn cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

/// Rows whose first cell is one config key in backticks (lowercase, dots, `[]`, `<name>`).
fn rows(doc: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for (i, line) in doc.lines().enumerate() {
        if !line.starts_with('|') {
            continue;
        }
        let cells = cells(line);
        let Some(key) = cells[0]
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .filter(|k| {
                !k.is_empty()
                    && k.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]<>".contains(c)
                    })
            })
        else {
            continue;
        };
        let row = Row {
            line: i + 1,
            default: cells.get(1).cloned().unwrap_or_default(),
            variables: cells.get(3).cloned().unwrap_or_default(),
        };
        if let Some(old) = rows.insert(key.to_string(), row) {
            panic!("{DOC}:{}: `{key}` has a second row", old.line);
        }
    }
    rows
}

/// What a default cell says: `` `VALUE` `` (TOML), or a cell starting `unset` or `required`.
fn documented_default(cell: &str) -> Result<Default, String> {
    if cell.starts_with("required") {
        return Ok(Default::Required);
    }
    if cell.starts_with("unset") {
        return Ok(Default::Unset);
    }
    let code = cell
        .strip_prefix('`')
        .and_then(|c| c.split('`').next())
        .ok_or_else(|| {
            "must start with the value in backticks, `unset` or `required`".to_string()
        })?;
    let parsed: toml::Table =
        toml::from_str(&format!("v = {code}")).map_err(|e| format!("`{code}` is not TOML: {e}"))?;
    Ok(Default::Value(serde_json::to_value(&parsed["v"]).unwrap()))
}

#[test]
fn the_configuration_reference_lists_every_key_with_its_real_default_and_variables() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(DOC)).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let rows = rows(&doc);

    let mut keys = Vec::new();
    walk(&[], &mut keys);
    assert!(keys.len() > 60, "too few keys found: {keys:?}");
    let defaults = serde_json::to_value(Settings::default()).unwrap();

    let mut problems = Vec::new();
    let mut known = Vec::new();
    for path in &keys {
        let key = display(path);
        let real = real_default(path, &defaults);
        known.push(key.clone());
        let vars: Vec<&str> = ENV_OVERRIDES
            .iter()
            .filter(|(_, k)| *k == key)
            .map(|(v, _)| *v)
            .collect();
        let Some(row) = rows.get(&key) else {
            let var_cell = vars
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            problems.push(format!(
                "{DOC} has no row for `{key}`: add this row to its section's table \
                 (range or allowed values, then what it does):\n    | `{key}` | {} | … | {var_cell} | … |",
                real.cell()
            ));
            continue;
        };
        match documented_default(&row.default) {
            Err(why) => problems.push(format!(
                "{DOC}:{}: `{key}`: the default cell {:?} {why}; the real default is {}",
                row.line,
                row.default,
                real.cell()
            )),
            Ok(said) if said != real => problems.push(format!(
                "{DOC}:{}: `{key}`: the row says the default is {}, the parser's default is {}: \
                 fix the row's default cell",
                row.line,
                said.cell(),
                real.cell()
            )),
            Ok(_) => {}
        }
        for var in &vars {
            if !row.variables.contains(&format!("`{var}`")) {
                problems.push(format!(
                    "{DOC}:{}: `{key}` can be set by `{var}`: add `{var}` to the row's variable cell",
                    row.line
                ));
            }
        }
        for var in row.variables.split('`').skip(1).step_by(2) {
            let is_var = var
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if is_var && !vars.contains(&var) {
                problems.push(format!(
                    "{DOC}:{}: `{key}`: `{var}` does not set this key (ENV_OVERRIDES in \
                     src/home/config.rs lists what does): remove it from the variable cell",
                    row.line
                ));
            }
        }
    }
    for (key, row) in &rows {
        if !known.contains(key) {
            problems.push(format!(
                "{DOC}:{}: `{key}` is not a key the parser accepts: remove or rename the row",
                row.line
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{DOC} does not match the parser ({} problems):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
