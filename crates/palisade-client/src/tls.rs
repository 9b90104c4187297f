//! The rustls configuration: ring provider, system roots plus any added, ALPN `http/1.1`.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::builder::TlsSettings;
use crate::error::Error;

pub(crate) fn config(settings: TlsSettings) -> Result<Arc<ClientConfig>, Error> {
    if let Some(config) = settings.config {
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        return Ok(Arc::new(config));
    }
    let mut roots = RootCertStore::empty();
    if settings.system_roots {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A system certificate rustls cannot use is skipped, as browsers do.
            let _ = roots.add(cert);
        }
    }
    for (i, der) in settings.extra_roots.into_iter().enumerate() {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| Error::builder_source(format!("root certificate #{}", i + 1), e))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::builder_source("TLS protocol versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
