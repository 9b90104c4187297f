//! TLS (feature `tls`): a client that trusts the generated CA succeeds; a wrong hostname or an
//! unknown CA is refused.
#![cfg(feature = "tls")]

mod common;

use std::sync::Arc;

use common::Client;
use http::StatusCode;
use palisade_testkit::rustls::pki_types::{CertificateDer, ServerName};
use palisade_testkit::rustls::{self, CertificateError, ClientConfig, RootCertStore};
use palisade_testkit::Upstream;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

async fn tls_connect(
    upstream: &Upstream,
    config: ClientConfig,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(upstream.addr()).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

fn rustls_error(e: &std::io::Error) -> &rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"))
}

#[tokio::test]
async fn a_client_trusting_the_ca_gets_answers() {
    let upstream = Upstream::builder().tls().start().await.unwrap();
    assert!(upstream.url("/x").starts_with("https://127.0.0.1:"));
    let cert = upstream.tls().unwrap();
    assert_eq!(cert.names(), ["localhost", "127.0.0.1"]);
    assert!(cert.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(cert.leaf_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_ne!(cert.ca_der(), cert.leaf_der());

    // By name, with the ready-made configuration.
    let stream = tls_connect(&upstream, cert.client_config().unwrap(), "localhost")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let mut client = Client::over(stream, "localhost".into()).await;
    let reply = client.get("/api/item/7").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, r#"{"id":"/api/item/7","n":1}"#);

    // By IP address, trusting the CA's DER by hand as any client would.
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.ca_der().to_vec()))
        .unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let stream = tls_connect(&upstream, config, "127.0.0.1").await.unwrap();
    let mut client = Client::over(stream, "127.0.0.1".into()).await;
    assert_eq!(client.get("/").await.unwrap().status, StatusCode::OK);
    assert_eq!(upstream.requests_received(), 2);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let upstream = Upstream::builder()
        .tls_names(["wrong.example"])
        .start()
        .await
        .unwrap();
    let cert = upstream.tls().unwrap();
    let err = tls_connect(&upstream, cert.client_config().unwrap(), "localhost")
        .await
        .unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err:?}"
    );
    // The right name passes with the same trust.
    tls_connect(&upstream, cert.client_config().unwrap(), "wrong.example")
        .await
        .unwrap();
    assert_eq!(upstream.requests_received(), 0);
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let trusted = Upstream::builder().tls().start().await.unwrap();
    let other = Upstream::builder().tls().start().await.unwrap();
    let config = trusted.tls().unwrap().client_config().unwrap();
    let err = tls_connect(&other, config, "localhost").await.unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}
