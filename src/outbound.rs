//! Outgoing HTTP: the one connector webhook deliveries and trace exports use.

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// hyper's connector over rustls (ring, the webpki roots, as the mail transport), HTTP/1.1,
/// plain `http://` too, without Nagle's delay (a request is small and its answer awaited).
///
/// # Errors
/// When rustls refuses its safe default protocol versions for the ring provider.
pub fn https_connector() -> anyhow::Result<HttpsConnector<HttpConnector>> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}
