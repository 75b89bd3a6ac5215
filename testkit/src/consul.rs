//! A stand-in for a local Consul agent's HTTP API, for bridge tests.
//!
//! A real Consul binary cannot be installed on the test machines, so tests
//! run this instead: it serves `GET /v1/agent/services` and
//! `GET /v1/agent/checks` with the JSON shapes Consul documents, from
//! state the test sets (services and checks as Consul JSON objects keyed by
//! ID). It can also play a failing Consul: down (connection refused), an
//! HTTP error status, 403 for a wrong `X-Consul-Token`, malformed JSON, an
//! oversized answer; and serve HTTPS, optionally requiring a client
//! certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value};

/// How the stand-in misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Answer this HTTP status with a text body.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    Malformed,
    /// Answer 200 with `n` bytes of valid-looking JSON padding.
    Huge(usize),
}

#[derive(Default)]
struct Inner {
    services: Map<String, Value>,
    checks: Map<String, Value>,
    failure: Option<Failure>,
    token: Option<String>,
    requests: u64,
}

type Shared = Arc<Mutex<Inner>>;

/// TLS for the stand-in: PEM paths.
pub struct StandInTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    /// Require client certificates signed by this CA.
    pub client_ca: Option<&'a Path>,
}

/// A running stand-in Consul agent.
pub struct ConsulStandIn {
    pub addr: SocketAddr,
    inner: Shared,
    rt: tokio::runtime::Runtime,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

async fn services(State(s): State<Shared>, h: HeaderMap) -> Response {
    answer(&s, &h, |i| Value::Object(i.services.clone()))
}

async fn checks(State(s): State<Shared>, h: HeaderMap) -> Response {
    answer(&s, &h, |i| Value::Object(i.checks.clone()))
}

fn answer(s: &Shared, h: &HeaderMap, body: impl Fn(&Inner) -> Value) -> Response {
    let mut i = s.lock().unwrap();
    i.requests += 1;
    if let Some(t) = &i.token
        && h.get("x-consul-token").and_then(|v| v.to_str().ok()) != Some(t.as_str())
    {
        return (StatusCode::FORBIDDEN, "ACL not found").into_response();
    }
    match &i.failure {
        Some(Failure::Status(code)) => (
            StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "stand-in failure",
        )
            .into_response(),
        Some(Failure::Malformed) => (StatusCode::OK, "{\"web\": {\"Service\": ").into_response(),
        Some(Failure::Huge(n)) => {
            let mut b = String::from("{\"pad\": \"");
            b.push_str(&"x".repeat(*n));
            b.push_str("\"}");
            (StatusCode::OK, b).into_response()
        }
        None => axum::Json(body(&i)).into_response(),
    }
}

fn server_config(tls: &StandInTls<'_>) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(tls.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(tls.key).unwrap();
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(b.with_single_cert(certs, key).unwrap())
}

impl ConsulStandIn {
    /// Serves plain HTTP on a port chosen by the OS.
    pub fn start() -> ConsulStandIn {
        Self::start_on("127.0.0.1:0".parse().unwrap(), None)
    }

    /// Serves HTTPS.
    pub fn start_tls(tls: StandInTls<'_>) -> ConsulStandIn {
        Self::start_on("127.0.0.1:0".parse().unwrap(), Some(server_config(&tls)))
    }

    fn start_on(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> ConsulStandIn {
        crate::crypto();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
        let addr = listener.local_addr().unwrap();
        let s = ConsulStandIn {
            addr,
            inner: Arc::default(),
            rt,
            server: Mutex::new(None),
            tls,
        };
        s.serve(listener);
        s
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/v1/agent/services", get(services))
            .route("/v1/agent/checks", get(checks))
            .with_state(self.inner.clone());
        let task = match self.tls.clone() {
            None => self.rt.spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(cfg) => self.rt.spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, app) = (acceptor.clone(), app.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                    });
                }
            }),
        };
        *self.server.lock().unwrap() = Some(task);
    }

    /// Stops listening (clients get connection refused) or listens again on
    /// the same port.
    pub fn set_down(&self, down: bool) {
        let mut server = self.server.lock().unwrap();
        if down {
            if let Some(t) = server.take() {
                t.abort();
                let _ = self.rt.block_on(t);
            }
        } else if server.is_none() {
            drop(server);
            let listener = self
                .rt
                .block_on(tokio::net::TcpListener::bind(self.addr))
                .unwrap();
            self.serve(listener);
        }
    }

    /// Registers (or replaces) a service: `body` is Consul's agent JSON for
    /// it (`{"ID", "Service", "Tags", "Port", ...}`).
    pub fn set_service(&self, id: &str, body: Value) {
        self.inner.lock().unwrap().services.insert(id.into(), body);
    }

    pub fn remove_service(&self, id: &str) {
        self.inner.lock().unwrap().services.remove(id);
    }

    /// Registers (or replaces) a check (Consul's agent check JSON).
    pub fn set_check(&self, id: &str, body: Value) {
        self.inner.lock().unwrap().checks.insert(id.into(), body);
    }

    pub fn remove_check(&self, id: &str) {
        self.inner.lock().unwrap().checks.remove(id);
    }

    /// Empties the agent (an ACL-filtered or freshly started Consul).
    pub fn clear(&self) {
        let mut i = self.inner.lock().unwrap();
        i.services.clear();
        i.checks.clear();
    }

    pub fn set_failure(&self, f: Option<Failure>) {
        self.inner.lock().unwrap().failure = f;
    }

    /// Requires this `X-Consul-Token` (403 otherwise).
    pub fn require_token(&self, t: Option<&str>) {
        self.inner.lock().unwrap().token = t.map(str::to_string);
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.inner.lock().unwrap().requests
    }
}

/// Consul agent JSON for a service with `tags` on `port`.
pub fn service_json(id: &str, name: &str, tags: &[&str], port: u16) -> Value {
    serde_json::json!({
        "ID": id,
        "Service": name,
        "Tags": tags,
        "Meta": {},
        "Port": port,
        "Address": "",
        "TaggedAddresses": {"lan_ipv4": {"Address": "127.0.0.1", "Port": port}},
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": false,
        "Datacenter": "dc1"
    })
}

/// Consul agent JSON for a check of `service_id` ("" for a node check).
pub fn check_json(id: &str, service_id: &str, status: &str, output: &str) -> Value {
    serde_json::json!({
        "Node": "stand-in",
        "CheckID": id,
        "Name": format!("check {id}"),
        "Status": status,
        "Notes": "",
        "Output": output,
        "ServiceID": service_id,
        "ServiceName": service_id,
        "ServiceTags": [],
        "Type": "ttl",
        "Definition": {}
    })
}
