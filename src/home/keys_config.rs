//! `[keys]` and `[prices]` in `warden.toml`: per-client keys, the usage ledger
//! and what tokens cost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// When a client must send a key.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// Once `keys.toml` holds a key (revoked ones count).
    Auto,
    /// Always: without keys nobody but the operator gets in.
    Always,
    /// Never: keys are ignored (the operator token alone, when set).
    Never,
}

/// `[keys]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The key file, relative to the home unless absolute.
    pub file: String,
    /// The usage ledger (SQLite), relative to the home unless absolute.
    pub ledger: String,
    pub require: Require,
    /// Output tokens reserved before a call that names no maximum.
    pub default_reservation: u64,
    /// Ledger unavailable past its backlog bound: 503 for metered requests.
    pub fail_closed: bool,
    /// Ledger rows waiting in memory at most (the ledger cannot be written).
    pub ledger_backlog: usize,
    /// Keys and counters in JetStream KV, one limit across hosts (docs/keys.md).
    pub shared: bool,
    /// Seconds without NATS before `fail_closed` applies (with `shared`).
    pub shared_grace: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            file: "keys.toml".into(),
            ledger: "data/usage.db".into(),
            require: Require::Auto,
            default_reservation: 4096,
            fail_closed: true,
            ledger_backlog: 100_000,
            shared: false,
            shared_grace: 5,
        }
    }
}

/// USD per million tokens for one model pattern.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached input tokens; defaults to `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

/// `[prices]`: a model name or trailing-`*` pattern -> its price.
pub type Prices = BTreeMap<String, Price>;

/// Checks `[keys]` and `[prices]`: the offending key and why.
pub fn validate(keys: &KeysConfig, prices: &Prices) -> Result<(), (String, String)> {
    if keys.file.trim().is_empty() {
        return Err(("keys.file".into(), "must not be empty".into()));
    }
    if keys.ledger.trim().is_empty() {
        return Err(("keys.ledger".into(), "must not be empty".into()));
    }
    if !(1..=10_000_000).contains(&keys.default_reservation) {
        return Err((
            "keys.default_reservation".into(),
            format!(
                "{} is out of range: expected 1 to 10000000 tokens",
                keys.default_reservation
            ),
        ));
    }
    if !(10..=1_000_000).contains(&keys.ledger_backlog) {
        return Err((
            "keys.ledger_backlog".into(),
            format!(
                "{} is out of range: expected 10 to 1000000 rows",
                keys.ledger_backlog
            ),
        ));
    }
    if !(1..=3600).contains(&keys.shared_grace) {
        return Err((
            "keys.shared_grace".into(),
            format!(
                "{} is out of range: expected 1 to 3600 seconds",
                keys.shared_grace
            ),
        ));
    }
    for (pattern, price) in prices {
        let key = format!("prices.{pattern:?}");
        if pattern.is_empty() || pattern[..pattern.len() - 1].contains('*') {
            return Err((
                key,
                "must be a model name or a prefix ending in one '*'".into(),
            ));
        }
        for (field, value) in [
            ("input", Some(price.input)),
            ("output", Some(price.output)),
            ("cached_input", price.cached_input),
        ] {
            if let Some(v) = value {
                if !v.is_finite() || !(0.0..=1_000_000.0).contains(&v) {
                    return Err((
                        format!("{key}.{field}"),
                        format!("{v} is not a price in USD per 1M tokens (0 to 1000000)"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The price of `model`: an exact entry, else the longest matching pattern.
pub fn price_of<'a>(prices: &'a Prices, model: &str) -> Option<&'a Price> {
    if let Some(p) = prices.get(model) {
        return Some(p);
    }
    prices
        .iter()
        .filter(|(pattern, _)| crate::home::config::pattern_matches(pattern, model))
        .max_by_key(|(pattern, _)| pattern.len())
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_pattern_prices_a_model() {
        let mut prices = Prices::new();
        let p = |i| Price {
            input: i,
            output: 0.0,
            cached_input: None,
        };
        prices.insert("*".into(), p(1.0));
        prices.insert("gpt-5*".into(), p(2.0));
        prices.insert("gpt-5-mini".into(), p(3.0));
        assert_eq!(price_of(&prices, "gpt-5-mini").map(|p| p.input), Some(3.0));
        assert_eq!(price_of(&prices, "gpt-5-nano").map(|p| p.input), Some(2.0));
        assert_eq!(price_of(&prices, "claude").map(|p| p.input), Some(1.0));
    }

    #[test]
    fn bad_prices_name_the_key() {
        let mut prices = Prices::new();
        prices.insert(
            "a*b".into(),
            Price {
                input: 1.0,
                output: 1.0,
                cached_input: None,
            },
        );
        let (key, _) = validate(&KeysConfig::default(), &prices).unwrap_err();
        assert_eq!(key, "prices.\"a*b\"");
        let mut prices = Prices::new();
        prices.insert(
            "m".into(),
            Price {
                input: -1.0,
                output: 1.0,
                cached_input: None,
            },
        );
        let (key, _) = validate(&KeysConfig::default(), &prices).unwrap_err();
        assert_eq!(key, "prices.\"m\".input");
    }
}
