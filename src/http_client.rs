//! The HTTP clients stagegate makes (toward the system under test, its dependencies'
//! APIs, flag providers, Prometheus and the controller), all with TLS for `https://`
//! URLs: rustls on the `ring` provider, trusting the system's certificate store (on
//! Linux `/etc/ssl/certs`, or the file in `SSL_CERT_FILE`).
//!
//! Every client is built here, so the TLS provider is always installed first.

use std::sync::Once;

static PROVIDER: Once = Once::new();

/// A client builder, TLS ready.
pub fn builder() -> reqwest::ClientBuilder {
    PROVIDER.call_once(|| {
        // Another part of the process may have installed one first: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A client with reqwest's defaults, TLS ready.
pub fn client() -> reqwest::Client {
    builder().build().expect("a client with reqwest's defaults builds once the TLS provider is installed")
}
