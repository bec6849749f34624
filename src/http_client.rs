//! The HTTP clients stagegate makes (toward the system under test, its dependencies'
//! APIs, flag providers, Prometheus and the controller), all able to speak TLS for
//! `https://` URLs: rustls on the `ring` provider, trusting the system's certificate
//! store (on Linux `/etc/ssl/certs`, or the PEM file in `SSL_CERT_FILE`) together with
//! the Mozilla roots built in, so that a container image without a store reaches public
//! HTTPS too. A machine with no store at all still builds every client: plain `http://`
//! never needs one.
//!
//! Every client is built here, so the TLS provider and roots are always in place.

use std::sync::OnceLock;

/// The roots every client trusts, loaded once.
fn roots() -> &'static [reqwest::Certificate] {
    static ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        // Another part of the process may have installed a provider first: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let system = rustls_native_certs::load_native_certs();
        if let Some(file) = std::env::var_os("SSL_CERT_FILE")
            && (system.certs.is_empty() || !system.errors.is_empty())
        {
            let why = system.errors.first().map_or("no certificate in it".to_string(), |e| e.to_string());
            tracing::warn!(file = %file.to_string_lossy(), "SSL_CERT_FILE could not be read whole ({why}); HTTPS targets signed by its CA will not be trusted");
        }
        system
            .certs
            .iter()
            .map(|c| c.as_ref())
            .chain(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().map(|c| c.as_ref()))
            .filter_map(|der| reqwest::Certificate::from_der(der).ok())
            .collect()
    })
}

/// A client builder, TLS ready.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_certs_only(roots().iter().cloned())
}

/// A client with reqwest's defaults, TLS ready.
pub fn client() -> reqwest::Client {
    builder().build().expect("a client with reqwest's defaults builds once its TLS roots are in place")
}

#[cfg(test)]
mod tests {
    /// Regression: with no certificate store (a `FROM scratch` image), building any
    /// client failed, plain-HTTP ones included, and every worker stopped at once.
    #[test]
    fn clients_build_with_the_roots_built_in() {
        assert!(super::roots().len() > 100, "the Mozilla roots are built in");
        super::builder().build().unwrap();
    }
}
