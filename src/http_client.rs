//! One place that configures outgoing HTTP clients (upstream calls, prompt
//! fetches, health probes): rustls with the ring provider, TCP_NODELAY, pooling.

/// Installs the process-wide TLS crypto provider (idempotent).
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder with the toolkit's defaults. Build one client per purpose
/// and share it: clients own the connection pool.
pub fn client_builder() -> reqwest::ClientBuilder {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
}
