//! Talking to the local Consul agent and reading its answers.
//!
//! Consul's agent API answers maps keyed by ID. Parsing follows Consul's
//! documented shapes and tolerates what real agents send: `Tags`/`Meta`
//! absent or `null` (read as `[]`/`{}`), `TaggedAddresses` entries with
//! `Address`/`Port` in either case, `Weights` absent (Consul's default 1/1).
//! Anything that is not that shape (not a JSON object, a service without a
//! name, wrong types) is a [`PollError::Malformed`] answer and writes
//! nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corro_catalog::health::Status;
use corro_catalog::model::{self, TaggedAddress, Weights};
use serde::Deserialize;

/// One service registered with the local Consul agent, as the bridge writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRow {
    pub name: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub port: i64,
    pub address: String,
    pub weights: Weights,
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
}

/// One check registered with the local Consul agent.
pub use corro_catalog::model::CheckRow;

/// A node's services and checks by ID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub services: BTreeMap<String, ServiceRow>,
    pub checks: BTreeMap<String, CheckRow>,
}

/// Why a poll got no usable answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PollError {
    #[error("consul unreachable: {0}")]
    Unreachable(String),
    #[error("consul refused the token (403 ACL denied): {0}")]
    AclDenied(String),
    #[error("consul answered HTTP {code}: {body}")]
    Status { code: u16, body: String },
    #[error("consul's answer is not the documented JSON: {0}")]
    Malformed(String),
    #[error("consul's answer is over the {0} byte limit")]
    TooLarge(usize),
    #[error("consul TLS setup: {0}")]
    Tls(String),
}

impl PollError {
    /// The kind of failure, for logging once per state change.
    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Unreachable(_) => "unreachable",
            PollError::AclDenied(_) => "acl-denied",
            PollError::Status { .. } => "http-error",
            PollError::Malformed(_) => "malformed",
            PollError::TooLarge(_) => "too-large",
            PollError::Tls(_) => "tls",
        }
    }
}

#[derive(Deserialize)]
struct RawService {
    #[serde(rename = "ID", default)]
    id: Option<String>,
    #[serde(rename = "Service")]
    service: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Port", default)]
    port: Option<i64>,
    #[serde(rename = "Address", default)]
    address: Option<String>,
    #[serde(rename = "Weights", default)]
    weights: Option<serde_json::Value>,
    #[serde(rename = "TaggedAddresses", default)]
    tagged_addresses: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawCheck {
    #[serde(rename = "CheckID", default)]
    check_id: Option<String>,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Status")]
    status: String,
    #[serde(rename = "Notes", default)]
    notes: Option<String>,
    #[serde(rename = "Output", default)]
    output: Option<String>,
    #[serde(rename = "ServiceID", default)]
    service_id: Option<String>,
    #[serde(rename = "ServiceName", default)]
    service_name: Option<String>,
    #[serde(rename = "Type", default)]
    kind: Option<String>,
}

/// Parses `/v1/agent/services`.
pub fn parse_services(body: &[u8]) -> Result<BTreeMap<String, ServiceRow>, PollError> {
    let raw: BTreeMap<String, RawService> = serde_json::from_slice(body)
        .map_err(|e| PollError::Malformed(format!("/v1/agent/services: {e}")))?;
    let mut out = BTreeMap::new();
    for (key, s) in raw {
        let id = s.id.filter(|i| !i.is_empty()).unwrap_or(key);
        if s.service.is_empty() {
            return Err(PollError::Malformed(format!(
                "/v1/agent/services: service {id:?} has no name"
            )));
        }
        out.insert(
            id,
            ServiceRow {
                name: s.service,
                tags: s.tags.unwrap_or_default(),
                meta: s.meta.unwrap_or_default(),
                port: s.port.unwrap_or(0),
                address: s.address.unwrap_or_default(),
                weights: s
                    .weights
                    .map(|w| model::parse_weights(&w.to_string()))
                    .unwrap_or_default(),
                tagged_addresses: s
                    .tagged_addresses
                    .map(|t| model::parse_tagged_addresses(&t.to_string()))
                    .unwrap_or_default(),
            },
        );
    }
    Ok(out)
}

/// Parses `/v1/agent/checks`.
pub fn parse_checks(body: &[u8]) -> Result<BTreeMap<String, CheckRow>, PollError> {
    let raw: BTreeMap<String, RawCheck> = serde_json::from_slice(body)
        .map_err(|e| PollError::Malformed(format!("/v1/agent/checks: {e}")))?;
    Ok(raw
        .into_iter()
        .map(|(key, c)| {
            (
                c.check_id.filter(|i| !i.is_empty()).unwrap_or(key),
                CheckRow {
                    service_id: c.service_id.unwrap_or_default(),
                    service_name: c.service_name.unwrap_or_default(),
                    name: c.name.unwrap_or_default(),
                    status: Status::parse(&c.status).as_str().to_string(),
                    output: c.output.unwrap_or_default(),
                    notes: c.notes.unwrap_or_default(),
                    kind: c.kind.unwrap_or_default(),
                },
            )
        })
        .collect())
}

/// How to reach the local Consul agent.
#[derive(Debug, Clone)]
pub struct ConsulSettings {
    /// `host:port`.
    pub addr: String,
    pub token: Option<String>,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub tls: Option<TlsSettings>,
}

/// HTTPS to Consul: PEM files.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Name to verify the certificate against (default: `addr`'s host).
    pub server_name: Option<String>,
}

/// A pooled HTTP client for the local Consul agent (reqwest over rustls
/// with ring): connections are reused between polls and opened again
/// whenever Consul (or a proxy in front of it) closed one, whether it
/// answers HTTP/1.0, closes after every response or drops idle
/// connections. Every poll is under the configured timeout.
pub struct ConsulClient {
    http: reqwest::Client,
    /// `http(s)://host:port` (the TLS server name as host when one is set).
    base: String,
    addr: String,
    token: Option<String>,
    timeout: Duration,
    max_body: usize,
}

fn rustls_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, PollError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let err = |what: &str, e: &dyn std::fmt::Display| PollError::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.ca_file {
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| err(&ca.display().to_string(), &e))?
        {
            roots
                .add(cert.map_err(|e| err(&ca.display().to_string(), &e))?)
                .map_err(|e| err(&ca.display().to_string(), &e))?;
        }
    } else {
        return Err(PollError::Tls(
            "[consul.client.tls] needs ca_file to verify Consul's certificate".into(),
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err("protocol versions", &e))?
    .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| err(&cert.display().to_string(), &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(&cert.display().to_string(), &e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err(&key.display().to_string(), &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err("client certificate", &e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let h = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    h.trim_start_matches('[').trim_end_matches(']')
}

/// The port part of `host:port`.
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

impl ConsulClient {
    pub fn new(s: &ConsulSettings) -> Result<ConsulClient, PollError> {
        let bad = |e: &dyn std::fmt::Display| PollError::Unreachable(format!("{}: {e}", s.addr));
        let port = port_of(&s.addr).ok_or_else(|| bad(&"expected host:port"))?;
        // reqwest builds a TLS configuration even for plain HTTP; it must
        // find the one crypto provider the process uses (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(s.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .tcp_nodelay(true);
        let base = match &s.tls {
            None => format!("http://{}", s.addr),
            Some(t) => {
                builder = builder.tls_backend_preconfigured(rustls_config(t)?);
                match &t.server_name {
                    // Verify against the configured name while connecting to
                    // `addr`: the name goes into the URL, `addr` into the
                    // resolver.
                    Some(name) if name != host_of(&s.addr) => {
                        if name.parse::<std::net::IpAddr>().is_ok() {
                            return Err(PollError::Tls(format!(
                                "server_name {name:?} is an address other than addr's host; give a DNS name, or the same address"
                            )));
                        }
                        use std::net::ToSocketAddrs;
                        let targets: Vec<std::net::SocketAddr> =
                            s.addr.to_socket_addrs().map_err(|e| bad(&e))?.collect();
                        builder = builder.resolve_to_addrs(name, &targets);
                        format!("https://{name}:{port}")
                    }
                    _ => format!("https://{}", s.addr),
                }
            }
        };
        let http = builder
            .build()
            .map_err(|e| PollError::Tls(format!("building the HTTP client: {e}")))?;
        Ok(ConsulClient {
            http,
            base,
            addr: s.addr.clone(),
            token: s.token.clone(),
            timeout: s.timeout,
            max_body: s.max_body_bytes,
        })
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, PollError> {
        let unreachable =
            |e: &dyn std::fmt::Display| PollError::Unreachable(format!("{}{path}: {e}", self.addr));
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        let mut resp = req.send().await.map_err(|e| {
            if is_tls(&e) {
                PollError::Tls(format!("{}: {}", self.addr, chain(&e)))
            } else {
                unreachable(&chain(&e))
            }
        })?;
        let status = resp.status();
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(PollError::TooLarge(self.max_body));
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| PollError::Unreachable(format!("reading {path}: {}", chain(&e))))?
        {
            if buf.len() + chunk.len() > self.max_body {
                return Err(PollError::TooLarge(self.max_body));
            }
            buf.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(PollError::AclDenied(snippet(&buf)));
        }
        if !status.is_success() {
            return Err(PollError::Status {
                code: status.as_u16(),
                body: snippet(&buf),
            });
        }
        Ok(buf)
    }

    /// The agent's services and checks (two requests on pooled
    /// connections, all of it within the timeout).
    pub async fn snapshot(&self) -> Result<Snapshot, PollError> {
        let work = async {
            let services = parse_services(&self.get("/v1/agent/services").await?)?;
            let checks = parse_checks(&self.get("/v1/agent/checks").await?)?;
            Ok(Snapshot { services, checks })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(PollError::Unreachable(format!(
                    "{}: no answer within {:?}",
                    self.addr, self.timeout
                )))
            })
    }
}

/// An error with its causes, `a: b: c` (reqwest's own text is terse).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Whether a failure came from the TLS handshake (certificates, names).
fn is_tls(e: &reqwest::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        cur = c.source();
    }
    false
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_shapes_parse() {
        let services = parse_services(
            br#"{
              "redis": {"ID": "redis", "Service": "redis", "Tags": null, "Meta": null, "Port": 8000,
                        "Address": "", "TaggedAddresses": {"lan_ipv4": {"Address": "10.0.0.1", "Port": 8000}},
                        "Weights": {"Passing": 10, "Warning": 1}, "EnableTagOverride": false, "Datacenter": "dc1"},
              "web-1": {"Service": "web", "Tags": ["v1"], "Port": 80,
                        "TaggedAddresses": {"wan": {"address": "1.2.3.4", "port": 80}}}
            }"#,
        )
        .unwrap();
        assert_eq!(services["redis"].tags, Vec::<String>::new());
        assert_eq!(services["redis"].weights.passing, 10);
        assert_eq!(services["redis"].tagged_addresses["lan_ipv4"].port, 8000);
        assert_eq!(services["web-1"].name, "web");
        assert_eq!(services["web-1"].weights, Weights::default());
        assert_eq!(services["web-1"].tagged_addresses["wan"].address, "1.2.3.4");
        let checks = parse_checks(
            br#"{"service:redis": {"Node": "n1", "CheckID": "service:redis", "Name": "Service 'redis' check",
                 "Status": "passing", "Notes": "", "Output": "ok", "ServiceID": "redis", "ServiceName": "redis",
                 "ServiceTags": [], "Type": "ttl"},
                 "mem": {"Status": "weird"}}"#,
        )
        .unwrap();
        assert_eq!(checks["service:redis"].service_id, "redis");
        assert_eq!(checks["mem"].status, "critical");
    }

    #[test]
    fn other_shapes_are_malformed() {
        for bad in [
            &br#"[]"#[..],
            br#"{"x": 3}"#,
            br#"{"x": {"Service": ""}}"#,
            br#"{"x": {"Service": "web", "Port": "eighty"}}"#,
            br#"{"x": {"Service": "web", "Tags": "a"}}"#,
            br#"not json"#,
        ] {
            assert!(
                matches!(parse_services(bad), Err(PollError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_checks(br#"{"c": {"Name": "no status"}}"#),
            Err(PollError::Malformed(_))
        ));
    }
}
