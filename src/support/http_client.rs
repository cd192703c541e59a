//! The one place outgoing HTTP clients are configured.
//!
//! reqwest is built with `rustls-no-provider`, so a rustls crypto provider must be
//! installed before the first client is built; [`client_builder`] does that, so
//! every module that talks HTTP (prompt fetches, the proxy's upstream calls, health
//! probes) starts from the same, correctly initialised builder.

/// Installs ring as the process-wide rustls crypto provider (idempotent).
pub fn ensure_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The `User-Agent` of every outgoing request.
pub const USER_AGENT: &str = concat!("warden/", env!("CARGO_PKG_VERSION"));

/// A client builder with the crypto provider installed, `TCP_NODELAY` on and a
/// `warden/X.Y.Z` user agent. Callers add their own timeouts.
pub fn client_builder() -> reqwest::ClientBuilder {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .user_agent(USER_AGENT)
}

/// A reqwest error as a sentence, without the URL reqwest repeats in it (callers
/// name the URL themselves, once).
pub fn describe(e: reqwest::Error) -> String {
    error_chain(&e.without_url())
}

/// The full chain of an error's causes, `a: b: c`: reqwest's top-level message
/// alone ("error sending request") does not tell an operator what happened.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_provider_is_installed_once_and_every_client_builds() {
        // A second `client_builder` must not fail on the provider installed by
        // the first (reqwest without a provider panics when building).
        super::client_builder().build().unwrap();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        super::client_builder().build().unwrap();
    }
}
