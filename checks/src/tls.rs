//! TLS for TCP and H2PING checks: the system's trust roots
//! (rustls-platform-verifier), or, with `TLSSkipVerify`, any certificate
//! (signatures still checked, as Go's `InsecureSkipVerify` does not; Consul
//! documents skip-verify as "not verified", which this matches).

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate, still checking the handshake's signatures
/// with `provider`'s algorithms (`TLSSkipVerify`; the agent's peer TLS
/// with `insecure = true` uses it too).
#[derive(Debug)]
pub struct AnyCert(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration offering `alpn`.
pub(crate) fn config(skip_verify: bool, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut cfg = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
            .with_no_client_auth()
    } else {
        let verifier = rustls_platform_verifier::Verifier::new(provider())
            .map_err(|e| format!("the system's trust roots: {e}"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub(crate) fn host_of(addr: &str) -> &str {
    let h = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    h.trim_start_matches('[').trim_end_matches(']')
}

/// TLS over `tcp`, verifying `server_name` (or the address's host).
pub(crate) async fn handshake(
    tcp: TcpStream,
    addr: &str,
    server_name: &str,
    cfg: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let name = if server_name.is_empty() {
        host_of(addr)
    } else {
        server_name
    };
    let name =
        ServerName::try_from(name.to_string()).map_err(|e| format!("server name {name:?}: {e}"))?;
    TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))
}
