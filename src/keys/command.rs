//! `proxy keys create|list|revoke|rotate` and `proxy usage`: manage client keys
//! and read the usage ledger. They work whether or not a proxy runs: they
//! write `keys.toml` (a running proxy follows it within a second) and read
//! `data/usage.db`.

use std::io::Write;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::file::{KeyEntry, KeyFile, hash_secret, hint_of, new_secret, valid_name};
use super::ledger;
use super::period::Period;
use crate::home::config::Config;
use crate::support::exit;

#[derive(clap::Subcommand, Debug)]
pub enum KeysAction {
    /// Create a key; prints its secret once (keys.toml keeps only its SHA-256)
    Create {
        /// [A-Za-z0-9_.@-], unique: what usage and metrics are reported under
        name: String,
        /// Model patterns it may use, comma-separated (exact names or trailing-*); default any
        #[arg(long, value_delimiter = ',', value_name = "PAT,..")]
        models: Vec<String>,
        /// Requests per minute
        #[arg(long, value_name = "N")]
        rpm: Option<u64>,
        /// Input + output tokens per minute
        #[arg(long, value_name = "N")]
        tpm: Option<u64>,
        /// Requests in flight at once
        #[arg(long, value_name = "N")]
        max_parallel: Option<u64>,
        /// Budget in tokens per period
        #[arg(long, value_name = "N", conflicts_with = "budget_usd")]
        budget_tokens: Option<u64>,
        /// Budget in USD per period (priced from [prices])
        #[arg(long, value_name = "X")]
        budget_usd: Option<f64>,
        /// Budget period, in UTC: day, week (from Monday), month or total
        #[arg(long, value_name = "P", default_value = "month")]
        period: String,
        /// Refused after this time (RFC 3339, e.g. 2027-01-31T00:00:00Z)
        #[arg(long, value_name = "RFC3339")]
        expires: Option<String>,
    },
    /// List keys: limits, expiry, last use, spend this period
    List,
    /// Revoke a key: refused on every ingress within a second
    Revoke { name: String },
    /// Give a key a new secret (printed once); the old one stops working
    Rotate { name: String },
}

/// `proxy usage`'s arguments.
#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    /// Only this key's requests
    #[arg(long, value_name = "K")]
    pub key: Option<String>,
    /// Only this model's requests
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// From this time (RFC 3339 or YYYY-MM-DD, UTC)
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Until this time, excluded (RFC 3339 or YYYY-MM-DD, UTC)
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// One row per key, model, provider or day
    #[arg(long, value_name = "BY", default_value = "key")]
    pub by: String,
    /// Print a JSON array
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV with a header line
    #[arg(long)]
    pub csv: bool,
    /// Over every host on the NATS server (needs keys.shared)
    #[arg(long)]
    pub nats: bool,
}

fn fail(out_err: &str) -> i32 {
    eprintln!("{out_err}");
    exit::USAGE
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Runs `proxy keys ACTION`; the exit code.
pub fn keys(config: &Config, action: KeysAction, json: bool, out: &mut dyn Write) -> i32 {
    match run_keys(config, action, json, out) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proxy keys: cannot write output: {e}");
            exit::FAILED
        }
    }
}

fn run_keys(
    config: &Config,
    action: KeysAction,
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<i32> {
    let path = config.home.resolve_path(&config.keys.file);
    let mut file = match KeyFile::load(&path) {
        Ok(file) => file.unwrap_or_default(),
        Err(e) => return Ok(fail(&format!("proxy keys: {e}"))),
    };
    // keys.shared: the bucket is the authority; keys.toml gets a copy of it.
    let shared = config.keys.shared && config.nats.enabled();
    if shared {
        match super::shared::bucket_keys_blocking(config) {
            Ok(bucket) => {
                for entry in bucket {
                    match file.find_mut(&entry.name) {
                        Some(local) => *local = entry,
                        None => file.keys.push(entry),
                    }
                }
            }
            Err(e) if matches!(action, KeysAction::List) => {
                eprintln!("proxy keys: keys.shared is on but {e}: listing keys.toml alone");
            }
            Err(e) => {
                return Ok(fail(&format!(
                    "proxy keys: keys.shared is on but {e}; nothing was changed (the key \
                     must reach {} so that every host sees it)",
                    super::shared::KEYS_BUCKET
                )));
            }
        }
    }
    let save = |file: &KeyFile| match file.save(&path) {
        Ok(()) => None,
        Err(e) => Some(fail(&format!("proxy keys: {e}"))),
    };
    // With keys.shared, after keys.toml: the key's entry into the bucket.
    let save = |file: &KeyFile, name: &str| {
        if let Some(code) = save(file) {
            return Some(code);
        }
        let entry = file.find(name)?;
        if !shared {
            return None;
        }
        match super::shared::put_key_blocking(config, entry) {
            Ok(()) => None,
            Err(e) => Some(fail(&format!(
                "proxy keys: {} is written but {e}: other hosts do not see the change; run the command again once NATS answers",
                path.display()
            ))),
        }
    };
    match action {
        KeysAction::Create {
            name,
            models,
            rpm,
            tpm,
            max_parallel,
            budget_tokens,
            budget_usd,
            period,
            expires,
        } => {
            if !valid_name(&name) {
                return Ok(fail(&format!(
                    "proxy keys create: {name:?} is not a key name: use 1-64 letters, digits, '_', '-', '.' or '@'"
                )));
            }
            if file.find(&name).is_some() {
                return Ok(fail(&format!(
                    "proxy keys create: a key named {name:?} exists (in {}); `proxy keys rotate {name}` gives it a new secret",
                    path.display()
                )));
            }
            let Some(period) = Period::parse(&period) else {
                return Ok(fail(&format!(
                    "proxy keys create: --period {period:?}: expected day, week, month or total"
                )));
            };
            let secret = match new_secret() {
                Ok(s) => s,
                Err(e) => return Ok(fail(&format!("proxy keys create: no random source: {e}"))),
            };
            file.keys.push(KeyEntry {
                name: name.clone(),
                sha256: hash_secret(&secret),
                hint: hint_of(&secret),
                models: models.into_iter().filter(|m| !m.is_empty()).collect(),
                rpm,
                tpm,
                max_parallel,
                budget_tokens,
                budget_usd,
                period,
                expires,
                created: now_rfc3339(),
                revoked: None,
            });
            // Validates the new entry exactly as the proxy will read it.
            let text = match toml::to_string(&file) {
                Ok(t) => t,
                Err(e) => return Ok(fail(&format!("proxy keys create: {e}"))),
            };
            if let Err(e) = KeyFile::parse(&text, &path) {
                return Ok(fail(&format!("proxy keys create: {e}")));
            }
            if let Some(code) = save(&file, &name) {
                return Ok(code);
            }
            if json {
                writeln!(out, "{}", json!({"name": name, "key": secret}))?;
            } else {
                writeln!(out, "{secret}")?;
                eprintln!(
                    "created key {name:?}: give the line above to its user; it is not shown again \
                     ({} keeps only its SHA-256)",
                    path.display()
                );
            }
            Ok(exit::OK)
        }
        KeysAction::Revoke { name } => {
            let Some(key) = file.find_mut(&name) else {
                return Ok(fail(&format!(
                    "proxy keys revoke: no key named {name:?} in {}",
                    path.display()
                )));
            };
            if key.revoked.is_none() {
                key.revoked = Some(now_rfc3339());
            }
            if let Some(code) = save(&file, &name) {
                return Ok(code);
            }
            if json {
                writeln!(out, "{}", json!({"name": name, "revoked": true}))?;
            } else {
                writeln!(
                    out,
                    "revoked key {name:?}: refused within a second on every ingress"
                )?;
            }
            Ok(exit::OK)
        }
        KeysAction::Rotate { name } => {
            let secret = match new_secret() {
                Ok(s) => s,
                Err(e) => return Ok(fail(&format!("proxy keys rotate: no random source: {e}"))),
            };
            let Some(key) = file.find_mut(&name) else {
                return Ok(fail(&format!(
                    "proxy keys rotate: no key named {name:?} in {}",
                    path.display()
                )));
            };
            key.sha256 = hash_secret(&secret);
            key.hint = hint_of(&secret);
            key.revoked = None;
            if let Some(code) = save(&file, &name) {
                return Ok(code);
            }
            if json {
                writeln!(out, "{}", json!({"name": name, "key": secret}))?;
            } else {
                writeln!(out, "{secret}")?;
                eprintln!("rotated key {name:?}: the old secret is refused within a second");
            }
            Ok(exit::OK)
        }
        KeysAction::List => list(config, &file, json, out),
    }
}

fn list(config: &Config, file: &KeyFile, json: bool, out: &mut dyn Write) -> std::io::Result<i32> {
    let ledger_path = config.home.resolve_path(&config.keys.ledger);
    let conn = ledger::open_read(&ledger_path).ok().flatten();
    let now = super::now_millis() / 1000;
    // keys.shared: spend on every host, from the shared counters.
    let shared_spent = if config.keys.shared && config.nats.enabled() {
        let keys: Vec<_> = file
            .keys
            .iter()
            .map(|k| (k.name.clone(), k.period))
            .collect();
        super::shared::spent_blocking(config, &keys)
            .map_err(|e| eprintln!("proxy keys list: {e}: spend is this host's alone"))
            .unwrap_or_default()
    } else {
        Default::default()
    };
    // Grouped reads: one per period start in use, one for the last uses.
    let last_used_of = conn
        .as_ref()
        .and_then(|c| ledger::last_used_by_key(c).ok())
        .unwrap_or_default();
    let mut spent_from: std::collections::HashMap<
        u64,
        std::collections::HashMap<String, (u64, f64)>,
    > = std::collections::HashMap::new();
    let mut rows = Vec::new();
    for k in &file.keys {
        let start = k.period.start(now);
        let spent_then = spent_from.entry(start).or_insert_with(|| {
            conn.as_ref()
                .and_then(|c| ledger::spent_by_key_since(c, &ledger::rfc3339(start)).ok())
                .unwrap_or_default()
        });
        let mut spent = spent_then.get(&k.name).copied().unwrap_or((0, 0.0));
        let last_used = last_used_of.get(&k.name).cloned();
        if let Some(&(tokens, micros)) = shared_spent.get(&k.name) {
            spent = (tokens, micros as f64 / 1e6);
        }
        rows.push(json!({
            "name": k.name,
            "models": if k.models.is_empty() { Value::Null } else { json!(k.models) },
            "rpm": k.rpm,
            "tpm": k.tpm,
            "max_parallel": k.max_parallel,
            "budget_tokens": k.budget_tokens,
            "budget_usd": k.budget_usd,
            "period": k.period.as_str(),
            "expires": k.expires,
            "created": k.created,
            "last_used": last_used,
            "revoked": k.revoked.is_some(),
            "spent_tokens": spent.0,
            "spent_usd": (spent.1 * 1e6).round() / 1e6,
            "hint": k.hint,
        }));
    }
    if json {
        writeln!(out, "{}", Value::Array(rows))?;
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        writeln!(out, "no keys; create one with `proxy keys create NAME`")?;
        return Ok(exit::OK);
    }
    for r in &rows {
        let mut limits = Vec::new();
        for f in ["rpm", "tpm", "max_parallel", "budget_tokens", "budget_usd"] {
            if !r[f].is_null() {
                limits.push(format!("{f}={}", r[f]));
            }
        }
        if r["revoked"] == true {
            limits.push("REVOKED".into());
        }
        writeln!(
            out,
            "{:<20} {:<10} models={} {} period={} spent={} tokens/${:.4} last_used={}{}",
            r["name"].as_str().unwrap_or(""),
            r["hint"].as_str().unwrap_or(""),
            r["models"].as_array().map_or("*".to_string(), |m| m
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")),
            limits.join(" "),
            r["period"].as_str().unwrap_or(""),
            r["spent_tokens"],
            r["spent_usd"].as_f64().unwrap_or(0.0),
            r["last_used"].as_str().unwrap_or("never"),
            r["expires"]
                .as_str()
                .map(|e| format!(" expires={e}"))
                .unwrap_or_default(),
        )?;
    }
    Ok(exit::OK)
}

/// `YYYY-MM-DD` or RFC 3339 as the ledger's RFC 3339 text; `None` when neither.
pub fn parse_time(t: &str) -> Option<String> {
    if t.len() == 10 {
        let full = format!("{t}T00:00:00Z");
        return humantime::parse_rfc3339(&full).ok().map(|_| full);
    }
    let parsed = humantime::parse_rfc3339_weak(t).ok()?;
    Some(humantime::format_rfc3339_millis(parsed).to_string())
}

use super::ledger::REFUSED;

/// Runs `proxy usage`; the exit code.
pub fn usage(config: &Config, args: &UsageArgs, out: &mut dyn Write) -> i32 {
    let column = match args.by.as_str() {
        "key" => "key",
        "model" => "model",
        "provider" => "provider",
        "day" => "substr(time, 1, 10)",
        other => {
            return fail(&format!(
                "proxy usage: --by {other:?}: expected key, model, provider or day"
            ));
        }
    };
    let mut filters = Vec::new();
    let mut params: Vec<String> = Vec::new();
    for (flag, value, sql) in [
        ("--since", &args.since, "time >= ?"),
        ("--until", &args.until, "time < ?"),
    ] {
        if let Some(v) = value {
            let Some(t) = parse_time(v) else {
                return fail(&format!(
                    "proxy usage: {flag} {v:?}: expected RFC 3339 (2026-12-01T00:00:00Z) or YYYY-MM-DD"
                ));
            };
            filters.push(sql);
            params.push(t);
        }
    }
    if let Some(k) = &args.key {
        filters.push("key = ?");
        params.push(k.clone());
    }
    if let Some(m) = &args.model {
        filters.push("model = ?");
        params.push(m.clone());
    }
    let path = config.home.resolve_path(&config.keys.ledger);
    // --nats: every host's rows from the usage stream, in a ledger in memory.
    let source = if args.nats {
        if !(config.keys.shared && config.nats.enabled()) {
            return fail(
                "proxy usage --nats: needs keys.shared = true and [nats] url in warden.toml \
                 (every proxy then publishes its rows to the stream WARDEN_USAGE); \
                 without them run `proxy usage` on each host",
            );
        }
        match super::shared::usage_rows_blocking(config) {
            Ok(rows) => ledger::in_memory(&rows).map(Some),
            Err(e) => return fail(&format!("proxy usage --nats: {e}")),
        }
    } else {
        ledger::open_read(&path)
    };
    let rows: Vec<Value> = match source {
        Ok(None) => Vec::new(),
        Ok(Some(conn)) => {
            let sql = format!(
                "SELECT COALESCE({column}, '-') AS g,
                    SUM(CASE WHEN {REFUSED} THEN 0 ELSE 1 END),
                    SUM(CASE WHEN {REFUSED} THEN 1 ELSE 0 END),
                    SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens), SUM(cost_usd)
                 FROM usage {} GROUP BY g ORDER BY g",
                if filters.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", filters.join(" AND "))
                }
            );
            let result = conn.prepare(&sql).and_then(|mut stmt| {
                stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    Ok(json!({
                        (args.by.as_str()): r.get::<_, String>(0)?,
                        "requests": r.get::<_, i64>(1)?,
                        "refused": r.get::<_, i64>(2)?,
                        "input_tokens": r.get::<_, i64>(3)?,
                        "cached_tokens": r.get::<_, i64>(4)?,
                        "output_tokens": r.get::<_, i64>(5)?,
                        "cost_usd": (r.get::<_, f64>(6)? * 1e6).round() / 1e6,
                    }))
                })?
                .collect::<Result<Vec<_>, _>>()
            });
            match result {
                Ok(rows) => rows,
                Err(e) => {
                    eprintln!(
                        "proxy usage: cannot read {}: {e} (run `doctor` to move a corrupt ledger aside)",
                        path.display()
                    );
                    return exit::FAILED;
                }
            }
        }
        Err(e) => {
            eprintln!("proxy usage: cannot open {}: {e}", path.display());
            return exit::FAILED;
        }
    };
    let columns = [
        args.by.as_str(),
        "requests",
        "refused",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "cost_usd",
    ];
    let written = if args.json {
        writeln!(out, "{}", Value::Array(rows))
    } else if args.csv {
        (|| {
            writeln!(out, "{}", columns.join(","))?;
            for r in &rows {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| match &r[*c] {
                        Value::String(s) => csv_cell(s),
                        v => v.to_string(),
                    })
                    .collect();
                writeln!(out, "{}", cells.join(","))?;
            }
            Ok(())
        })()
    } else {
        (|| {
            writeln!(
                out,
                "{:<24} {:>9} {:>8} {:>13} {:>13} {:>13} {:>12}",
                columns[0], columns[1], columns[2], columns[3], columns[4], columns[5], columns[6]
            )?;
            for r in &rows {
                // As text first: a JSON value's Display ignores the width.
                let n = |column: &str| r[column].to_string();
                writeln!(
                    out,
                    "{:<24} {:>9} {:>8} {:>13} {:>13} {:>13} {:>12.6}",
                    r[columns[0]].as_str().unwrap_or("-"),
                    n("requests"),
                    n("refused"),
                    n("input_tokens"),
                    n("cached_tokens"),
                    n("output_tokens"),
                    r["cost_usd"].as_f64().unwrap_or(0.0)
                )?;
            }
            Ok(())
        })()
    };
    match written {
        Ok(()) => exit::OK,
        Err(_) => exit::FAILED,
    }
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
