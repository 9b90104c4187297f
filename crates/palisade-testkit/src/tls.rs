//! Optional TLS (feature `tls`): a throwaway CA and a leaf certificate for each upstream, served
//! through rustls with the `ring` provider.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::Error;

/// The certificates of an upstream serving TLS: a CA made for it, and the leaf certificate it
/// presents (signed by that CA, for the names given to the builder).
///
/// Trust [`ca_der`](Self::ca_der) (or [`ca_pem`](Self::ca_pem)) in a client, or take
/// [`client_config`](Self::client_config). The CA is new each time, so nothing else trusts it.
#[derive(Clone)]
pub struct TlsCert {
    ca_der: Vec<u8>,
    ca_pem: String,
    leaf_der: Vec<u8>,
    leaf_pem: String,
    key_der: Vec<u8>,
    names: Vec<String>,
}

impl TlsCert {
    pub(crate) fn generate(names: &[String]) -> Result<Self, Error> {
        let ca_key = KeyPair::generate().map_err(tls_error)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own (from its key), so that a client trusting another upstream's CA
        // finds no issuer for this one (`UnknownIssuer`) rather than a same-named CA whose
        // signature does not match.
        let tag: String = ca_key
            .public_key_raw()
            .iter()
            .rev()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("palisade-testkit CA {tag}"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).map_err(tls_error)?;

        let leaf_key = KeyPair::generate().map_err(tls_error)?;
        // Names that parse as IP addresses become IP SANs, the others DNS SANs.
        let mut leaf_params = CertificateParams::new(names.to_vec()).map_err(tls_error)?;
        leaf_params.distinguished_name = DistinguishedName::new();
        if let Some(first) = names.first() {
            leaf_params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .map_err(tls_error)?;

        Ok(TlsCert {
            ca_der: ca.der().to_vec(),
            ca_pem: ca.pem(),
            leaf_der: leaf.der().to_vec(),
            leaf_pem: leaf.pem(),
            key_der: leaf_key.serialize_der(),
            names: names.to_vec(),
        })
    }

    /// The CA certificate, DER: the one to trust.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The leaf certificate the upstream presents, DER.
    pub fn leaf_der(&self) -> &[u8] {
        &self.leaf_der
    }

    /// The leaf certificate the upstream presents, PEM.
    pub fn leaf_pem(&self) -> &str {
        &self.leaf_pem
    }

    /// The names the leaf certificate is valid for.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A rustls client configuration (ring provider, safe default protocol versions) that
    /// trusts this upstream's CA and nothing else.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] if rustls refuses the CA certificate (it does not for the ones made here).
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der.clone()))
            .map_err(tls_error)?;
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, Error> {
        let chain = vec![
            CertificateDer::from(self.leaf_der.clone()),
            CertificateDer::from(self.ca_der.clone()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(tls_error)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Names only: the private key stays out of logs.
impl fmt::Debug for TlsCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCert")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// The ring provider, explicitly: nothing depends on a process-wide default being installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn tls_error(e: impl fmt::Display) -> Error {
    Error::Tls(e.to_string())
}
