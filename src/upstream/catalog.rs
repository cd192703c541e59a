//! The model catalog with `[[providers]]`: what `/v1/models` lists and what
//! providers with `models = []` serve.
//!
//! It is the union of the exact names providers declare and the ids the
//! discovering providers (`models = []`) report from their `GET /models`, asked
//! at start and every `routing.catalog_refresh` seconds. What they reported is
//! kept in `cache/models.json` (written atomically), so after a restart, or
//! while a provider is down, its models are still listed and routed. A corrupt
//! file is ignored with a warning (and `doctor` deletes it); it is only a cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Provider;

pub use crate::home::models_cache::load;

/// The ids in a `list` object (`{"object":"list","data":[{"id":..}]}`).
pub fn ids_of(list: &[u8]) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_slice(list).ok()?;
    let ids = value["data"]
        .as_array()?
        .iter()
        .filter_map(|m| m["id"].as_str())
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .take(10_000)
        .map(str::to_string)
        .collect();
    Some(ids)
}

/// Keeps the model catalog of a set of providers up to date.
pub struct Catalog {
    providers: Vec<Arc<Provider>>,
    path: PathBuf,
    refresh: Duration,
}

impl Catalog {
    pub fn new(providers: Vec<Arc<Provider>>, path: PathBuf, refresh: Duration) -> Catalog {
        Catalog {
            providers,
            path,
            refresh,
        }
    }

    /// Whether any provider discovers its models.
    pub fn discovers(&self) -> bool {
        self.providers.iter().any(|p| p.discovers())
    }

    /// Fills discovering providers from the cache file (before the first fetch).
    pub fn load_cache(&self) {
        let Some(file) = load(&self.path) else {
            return;
        };
        for provider in self.providers.iter().filter(|p| p.discovers()) {
            if let Some(ids) = file.providers.get(&*provider.name) {
                provider.set_discovered(ids.clone());
            }
        }
    }

    /// Asks every discovering provider for its models, keeps what answers and
    /// writes the cache. A provider that does not answer keeps what it had.
    pub async fn refresh(&self) {
        let mut file = load(&self.path).unwrap_or_default();
        let mut changed = false;
        for provider in self.providers.iter().filter(|p| p.discovers()) {
            match provider.upstream.models().await.as_deref().and_then(ids_of) {
                Some(ids) => {
                    tracing::debug!(provider = %provider.name, models = ids.len(), "model list refreshed");
                    provider.set_discovered(ids.clone());
                    if file.providers.get(&*provider.name) != Some(&ids) {
                        file.providers.insert(provider.name.to_string(), ids);
                        changed = true;
                    }
                }
                None => tracing::warn!(
                    provider = %provider.name,
                    "cannot list the provider's models: serving the cached list"
                ),
            }
        }
        if changed {
            file.updated_at = crate::support::time::now_rfc3339();
            let text = match serde_json::to_vec_pretty(&file) {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot serialise the model catalog");
                    return;
                }
            };
            if let Err(e) = crate::home::atomic_file::write(&self.path, &text, None) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the model catalog cache");
            }
        }
    }

    /// Refreshes now and then every `catalog_refresh` seconds (0: only now).
    pub async fn run(self) {
        loop {
            self.refresh().await;
            if self.refresh.is_zero() {
                return;
            }
            tokio::time::sleep(self.refresh).await;
        }
    }
}

/// The `/v1/models` list of a set of providers: declared exact names, then
/// discovered ids, each once, owned by the first provider that has it.
pub fn list(providers: &[Arc<Provider>]) -> Bytes {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for provider in providers {
        let declared = provider
            .settings
            .models
            .iter()
            .filter(|m| !m.ends_with('*'))
            .cloned();
        for id in declared.chain(provider.discovered()) {
            if seen.insert(id.clone()) {
                data.push(serde_json::json!({
                    "id": id, "object": "model", "created": 0, "owned_by": &*provider.name,
                }));
            }
        }
    }
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_a_list_object() {
        let list = br#"{"object":"list","data":[{"id":"a"},{"id":""},{"x":1},{"id":"b"}]}"#;
        assert_eq!(ids_of(list), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(ids_of(b"not json"), None);
        assert_eq!(ids_of(br#"{"data":5}"#), None);
    }
}
