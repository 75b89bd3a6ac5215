//! TLS for the peer protocol, and `corrosion tls ... generate`.
//!
//! Peers talk TLS 1.3 over QUIC with rustls and the ring provider. The server
//! presents `gossip.tls.cert_file`; clients check it against `ca_file` (or
//! not at all with `insecure = true`). With `[gossip.tls.client]` every node
//! also presents a client certificate and refuses peers whose certificate is
//! not signed by `ca_file` (mutual TLS). The generate commands write PEM
//! files: one CA per cluster, a server certificate per node IP, client
//! certificates for mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

const ALPN: &[u8] = b"corrosion";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading the private key in {}", path.display()))
}

fn roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .with_context(|| format!("adding the CA in {}", ca.display()))?;
    }
    Ok(roots)
}

/// The QUIC server side of `[gossip.tls]`.
pub(crate) fn server_config(tls: &TlsConfig) -> anyhow::Result<quinn::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match (&tls.client, &tls.ca_file) {
        (Some(_), Some(ca)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .context("building the client-certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        (Some(_), None) => anyhow::bail!(
            "[gossip.tls.client] (mutual TLS) needs gossip.tls.ca_file to check peers' certificates"
        ),
        (None, _) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&tls.cert_file)?, key(&tls.key_file)?)
        .context("gossip.tls.cert_file and key_file do not match")?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(config)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// The QUIC client side of `[gossip.tls]`.
pub(crate) fn client_config(tls: &TlsConfig) -> anyhow::Result<quinn::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if tls.insecure {
        builder
            .dangerous()
            // `insecure = true`: any server certificate (signatures still checked).
            .with_custom_certificate_verifier(Arc::new(corro_checks::tls::AnyCert(provider())))
    } else {
        let ca = tls.ca_file.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "gossip.tls.ca_file is needed to check peers' certificates (or set insecure = true)"
            )
        })?;
        builder.with_root_certificates(roots(ca)?)
    };
    let mut config = match &tls.client {
        Some(c) => builder
            .with_client_auth_cert(certs(&c.cert_file)?, key(&c.key_file)?)
            .context("gossip.tls.client cert_file and key_file do not match")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

fn write(dir: &Path, name: &str, pem: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn issuer(ca_cert: &Path, ca_key: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let key_pem =
        std::fs::read_to_string(ca_key).with_context(|| format!("reading {}", ca_key.display()))?;
    let cert_pem = std::fs::read_to_string(ca_cert)
        .with_context(|| format!("reading {}", ca_cert.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .with_context(|| format!("parsing the key in {}", ca_key.display()))?;
    Issuer::from_ca_cert_pem(&cert_pem, key)
        .with_context(|| format!("parsing the CA certificate in {}", ca_cert.display()))
}

/// `corrosion tls ca generate`: `ca_cert.pem` and `ca_key.pem`.
pub(crate) fn generate_ca(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Corrosion CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(vec![
        write(dir, "ca_cert.pem", &cert.pem())?,
        write(dir, "ca_key.pem", &key.serialize_pem())?,
    ])
}

/// A certificate signed by the CA, with its key, written as `<name>_cert.pem`
/// and `<name>_key.pem`.
fn generate_leaf(
    mut params: CertificateParams,
    name: &str,
    ca_cert: &Path,
    ca_key: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let issuer = issuer(ca_cert, ca_key)?;
    let key = KeyPair::generate()?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("corrosion {name}"));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(vec![
        write(dir, &format!("{name}_cert.pem"), &cert.pem())?,
        write(dir, &format!("{name}_key.pem"), &key.serialize_pem())?,
    ])
}

/// `corrosion tls server generate <IP>`: `server_cert.pem` and `server_key.pem`,
/// valid for that IP.
pub(crate) fn generate_server(
    ip: std::net::IpAddr,
    ca_cert: &Path,
    ca_key: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut params = CertificateParams::new(vec![ip.to_string()])?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    generate_leaf(params, "server", ca_cert, ca_key, dir)
}

/// `corrosion tls client generate`: `client_cert.pem` and `client_key.pem`.
pub(crate) fn generate_client(
    ca_cert: &Path,
    ca_key: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    generate_leaf(params, "client", ca_cert, ca_key, dir)
}
