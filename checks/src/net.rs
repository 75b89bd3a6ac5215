//! The real probes: HTTP (reqwest), TCP, UDP, script and OS service checks,
//! with Consul's outcomes and output texts.
//!
//! | kind | passing | warning | critical |
//! |---|---|---|---|
//! | HTTP | 2xx | 429 | anything else, errors |
//! | TCP | connected | | refused, timeout |
//! | UDP | an answer, or no answer within the timeout | | an error (ICMP unreachable) |
//! | script | exit 0 | exit 1 | other codes, timeout |
//! | OS service | `systemctl is-active` says active | unknown | inactive, failed |
//!
//! | TCP with TLS | connected and the handshake verified | | anything else |
//! | H2PING | an HTTP/2 PING answered (h2c, or TLS with ALPN `h2`) | | anything else |
//!
//! | gRPC | `grpc.health.v1` answers SERVING (h2c, or TLS) | | anything else |
//!
//! Docker checks are decoded and stored but this build cannot run them
//! (there is no Docker engine to exec in): they report critical with a
//! message saying so, and registration refuses them before that.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::AsyncReadExt;

use crate::definition::{CheckDefinition, Http, Kind};
use crate::output;
use crate::probe::{AliasSource, Outcome, ProbeFuture, Prober};
use crate::status::Status;

/// Probes over the network and this host's processes.
pub struct NetProber {
    clients: Mutex<HashMap<(bool, bool), reqwest::Client>>,
    /// TLS configurations by (skip verification, offer h2): built once
    /// (the system's roots are parsed when one is built).
    tls: Mutex<HashMap<(bool, bool), Arc<rustls::ClientConfig>>>,
    alias: Option<Arc<dyn AliasSource>>,
    node: String,
}

impl NetProber {
    /// `node`: this agent's node name (alias checks without `AliasNode`
    /// look there); `alias`: where alias checks read health.
    pub fn new(node: String, alias: Option<Arc<dyn AliasSource>>) -> NetProber {
        // reqwest builds a TLS configuration even for plain HTTP; it must
        // find the one crypto provider the process uses (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        NetProber {
            clients: Mutex::new(HashMap::new()),
            tls: Mutex::new(HashMap::new()),
            alias,
            node,
        }
    }

    /// The shared TLS configuration for (skip verification, offer h2).
    fn tls_config(&self, skip_verify: bool, h2: bool) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut all = self.tls.lock();
        if let Some(c) = all.get(&(skip_verify, h2)) {
            return Ok(c.clone());
        }
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[] };
        let c = crate::tls::config(skip_verify, alpn)?;
        all.insert((skip_verify, h2), c.clone());
        Ok(c)
    }

    /// A shared client per (skip TLS verification, follow redirects):
    /// thousands of checks share a handful of clients, as they share no
    /// connections (keep-alive is off, as Consul's).
    fn client(&self, skip_verify: bool, redirects: bool) -> Result<reqwest::Client, String> {
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(&(skip_verify, redirects)) {
            return Ok(c.clone());
        }
        let c = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .danger_accept_invalid_certs(skip_verify)
            .redirect(if redirects {
                reqwest::redirect::Policy::limited(10)
            } else {
                reqwest::redirect::Policy::none()
            })
            .build()
            .map_err(|e| chain(&e))?;
        clients.insert((skip_verify, redirects), c.clone());
        Ok(c)
    }
}

impl Prober for NetProber {
    fn probe(&self, check: Arc<CheckDefinition>) -> ProbeFuture {
        let timeout = check.effective_timeout();
        let max = check.output_max_size;
        match &check.kind {
            Kind::Http(h)
                if !check.tls_server_name.is_empty()
                    && h.url
                        .get(..8)
                        .is_some_and(|s| s.eq_ignore_ascii_case("https://")) =>
            {
                let (h, name) = (h.clone(), check.tls_server_name.clone());
                let tls = self.tls_config(check.tls_skip_verify, false);
                Box::pin(async move {
                    let named = match tls {
                        Ok(tls) => named_client(&h, &name, &tls).await,
                        Err(e) => Err(e),
                    };
                    match named {
                        Ok((client, h2)) => http(client, &h2, timeout, max, &h.url).await,
                        Err(e) => Outcome::new(
                            Status::Critical,
                            format!("{}: {e}", title_verb(&h.method, &h.url)),
                        ),
                    }
                })
            }
            Kind::Http(h) => {
                let client = self.client(check.tls_skip_verify, !h.disable_redirects);
                let check = check.clone();
                Box::pin(async move {
                    match (&check.kind, client) {
                        (Kind::Http(h), Ok(c)) => http(c, h, timeout, max, &h.url).await,
                        (_, Err(e)) => Outcome::new(Status::Critical, e),
                        (_, Ok(_)) => Outcome::new(Status::Critical, "not an HTTP check"),
                    }
                })
            }
            Kind::Tcp { addr, use_tls } => {
                let tls = use_tls.then(|| {
                    (
                        self.tls_config(check.tls_skip_verify, false),
                        check.tls_server_name.clone(),
                    )
                });
                Box::pin(tcp(addr.clone(), tls, timeout))
            }
            Kind::Grpc { target, use_tls } => {
                let tls = use_tls.then(|| {
                    (
                        self.tls_config(check.tls_skip_verify, true),
                        check.tls_server_name.clone(),
                    )
                });
                Box::pin(grpc(target.clone(), tls, timeout))
            }
            Kind::H2Ping { addr, use_tls } => {
                let tls = use_tls.then(|| {
                    (
                        self.tls_config(check.tls_skip_verify, true),
                        check.tls_server_name.clone(),
                    )
                });
                Box::pin(h2ping(addr.clone(), tls, timeout))
            }
            Kind::Udp { addr } => Box::pin(udp(addr.clone(), timeout)),
            Kind::Script { args } => Box::pin(script(args.clone(), timeout, max)),
            Kind::OsService { name } => Box::pin(os_service(name.clone(), timeout)),
            Kind::Alias { service, node } => {
                let node = if node.is_empty() {
                    self.node.clone()
                } else {
                    node.clone()
                };
                let source = self.alias.clone();
                let (id, service) = (check.id.clone(), service.clone());
                // The lookup runs in the probe's task, not in the runner's.
                Box::pin(async move {
                    let found = source.and_then(|a| a.service_checks(&node, &service, &id));
                    let mut o = alias(&service, found);
                    o.output = output::tail(o.output.as_bytes(), max);
                    o
                })
            }
            other => {
                let kind = other.type_name();
                Box::pin(async move {
                    Outcome::new(
                        Status::Critical,
                        format!("{kind} checks cannot be run by this agent"),
                    )
                })
            }
        }
    }
}

/// An error with its causes, as one line (`a: b: c`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}

/// A client for an HTTPS check with `TLSServerName`: the URL's host is
/// replaced by the name (SNI and verification use it) and the name resolved
/// to the URL's address; the `Host` header keeps the URL's host unless the
/// check sets one. Built per probe (the name's address may change), on the
/// prober's shared TLS configuration (building one parses the system's
/// roots).
async fn named_client(
    h: &Http,
    name: &str,
    tls: &rustls::ClientConfig,
) -> Result<(reqwest::Client, Http), String> {
    let mut url = reqwest::Url::parse(&h.url).map_err(|e| e.to_string())?;
    let host = url.host_str().ok_or("no host in the URL")?.to_string();
    let port = url.port_or_known_default().ok_or("no port in the URL")?;
    let addr = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the URL's host has no address")?;
    url.set_host(Some(name)).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .use_preconfigured_tls(tls.clone())
        .resolve(name, addr)
        .redirect(if h.disable_redirects {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::limited(10)
        })
        .build()
        .map_err(|e| chain(&e))?;
    let mut out = h.clone();
    out.url = url.to_string();
    if !h
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        let host_header = match url_port(&h.url) {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        out.headers.push(("Host".into(), vec![host_header]));
    }
    Ok((client, out))
}

/// The explicit port of a URL, if it has one.
fn url_port(url: &str) -> Option<u16> {
    reqwest::Url::parse(url).ok()?.port()
}

/// An HTTP check's request parsed once (URL, method, headers): parsing
/// them on every probe showed in the agent's profile with thousands of
/// checks. Equal to any other (it is derived from the definition).
#[derive(Default)]
pub struct Prepared(std::sync::OnceLock<Box<Result<PreparedRequest, String>>>);

pub struct PreparedRequest {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    /// For plain `http://`: the request target (path and query) and the
    /// `Host` header (unless the check sets one).
    target: Option<(hyper::Uri, Option<reqwest::header::HeaderValue>)>,
    body: bytes::Bytes,
}

impl Clone for Prepared {
    fn clone(&self) -> Prepared {
        Prepared::default()
    }
}

impl PartialEq for Prepared {
    fn eq(&self, _: &Prepared) -> bool {
        true
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepared")
    }
}

impl Prepared {
    fn get(&self, h: &Http) -> &Result<PreparedRequest, String> {
        self.0.get_or_init(|| Box::new(prepare(h)))
    }
}

fn prepare(h: &Http) -> Result<PreparedRequest, String> {
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    let method = reqwest::Method::from_bytes(h.method.as_bytes())
        .map_err(|_| format!("net/http: invalid method {:?}", h.method))?;
    let url = reqwest::Url::parse(&h.url).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::USER_AGENT,
        HeaderValue::from_static("Consul Health Check"),
    );
    headers.insert(
        reqwest::header::ACCEPT,
        HeaderValue::from_static("text/plain, text/*, */*"),
    );
    headers.insert(
        reqwest::header::CONNECTION,
        HeaderValue::from_static("close"),
    );
    let mut own = std::collections::HashSet::new();
    for (name, values) in &h.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        // The check's own values replace the defaults of that name (names
        // differing only in case are one name).
        if own.insert(name.clone()) {
            headers.remove(&name);
        }
        for v in values {
            // One Host, the first (as Go's client).
            if name == reqwest::header::HOST && headers.contains_key(&name) {
                break;
            }
            let v = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            headers.append(name.clone(), v);
        }
    }
    // Credentials in the URL become Basic authorization, as Go's client
    // and reqwest do (unless the check sends its own).
    // (https:// goes through reqwest, which does it.)
    if url.scheme() == "http"
        && !url.username().is_empty()
        && !headers.contains_key(reqwest::header::AUTHORIZATION)
    {
        use base64::Engine;
        let user = percent_decode(url.username());
        let pass = percent_decode(url.password().unwrap_or_default());
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| e.to_string())?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let target = if url.scheme() == "http" {
        let host = (!headers.contains_key(reqwest::header::HOST))
            .then(|| host_header(&url))
            .transpose()?;
        Some((origin_form(&url)?, host))
    } else {
        None
    };
    Ok(PreparedRequest {
        method,
        url,
        headers,
        target,
        body: bytes::Bytes::from(h.body.clone()),
    })
}

async fn http(
    client: reqwest::Client,
    h: &Http,
    timeout: Duration,
    max: usize,
    shown: &str,
) -> Outcome {
    let p = match h.prepared.get(h) {
        Ok(p) => p,
        Err(e) => {
            let e = if e.starts_with("net/http") {
                e.clone()
            } else {
                format!("{}: {e}", title_verb(&h.method, shown))
            };
            return Outcome::new(Status::Critical, e);
        }
    };
    // Plain http:// directly; reqwest takes over where a redirect leads to
    // https:// (asked once, at the URL it leads to), and for https://.
    let started = tokio::time::Instant::now();
    let mut next = Hop {
        url: p.url.clone(),
        method: p.method.clone(),
        headers: p.headers.clone(),
        body: p.body.clone(),
    };
    if p.target.is_some() {
        let deadline = started + timeout;
        // A last resort only: every step stops at `deadline` itself.
        let backstop = deadline + Duration::from_secs(1);
        match tokio::time::timeout_at(backstop, http_direct(h, p, max, shown, deadline)).await {
            Ok(Direct::Done(o)) => return o,
            Ok(Direct::Elsewhere(hop)) => next = *hop,
            Err(_) => {
                return Outcome::new(
                    Status::Critical,
                    format!("{}: {LATE}", title_verb(&h.method, shown)),
                );
            }
        }
    }
    let left = timeout.saturating_sub(started.elapsed());
    let mut req = client
        .request(next.method, next.url)
        .timeout(left.max(Duration::from_millis(1)))
        .headers(next.headers);
    if !next.body.is_empty() {
        req = req.body(next.body);
    }
    let verb = &h.method;
    let url = shown;
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Outcome::new(
                Status::Critical,
                format!("{}: {}", title_verb(verb, url), chain(&e)),
            );
        }
    };
    // Keep the body's last `max` bytes; a body longer than that, or one
    // that never ends, costs `max` bytes and the timeout at most.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                tail.extend_from_slice(&c);
                if tail.len() > 2 * max.max(1) {
                    tail.drain(..tail.len() - max);
                }
            }
            Ok(None) => break,
            // As Consul: a body that fails (or outlasts the timeout) is
            // logged; the answer's code decides.
            Err(e) => {
                tracing::debug!(url, error = %chain(&e), "HTTP check: error while reading the body");
                break;
            }
        }
    }
    http_outcome(verb, url, resp.status(), &tail, max)
}

/// Consul's status and output for an HTTP answer.
fn http_outcome(
    verb: &str,
    url: &str,
    code: reqwest::StatusCode,
    tail: &[u8],
    max: usize,
) -> Outcome {
    let status_text = match code.canonical_reason() {
        Some(r) => format!("{} {r}", code.as_u16()),
        None => code.as_u16().to_string(),
    };
    let status = if code.is_success() {
        Status::Passing
    } else if code.as_u16() == 429 {
        Status::Warning
    } else {
        Status::Critical
    };
    Outcome::new(
        status,
        format!(
            "HTTP {verb} {url}: {status_text} Output: {}",
            output::tail(tail, max)
        ),
    )
}

/// A request to make: where, how, with what.
struct Hop {
    url: reqwest::Url,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

enum Direct {
    Done(Outcome),
    /// A redirect led off plain HTTP: this request is reqwest's to make.
    Elsewhere(Box<Hop>),
}

/// A plain `http://` probe straight over hyper's HTTP/1.1 connection: one
/// connect, one request, one close, on the prepared request. reqwest's
/// client did the same through layers (pool, connector services, URL
/// conversions) that cost about as much CPU as the kernel's TCP work, with
/// thousands of checks (docs/BENCHMARKS.md). Redirects are followed as Go's
/// client follows them (301/302/303 as GET without the body unless HEAD,
/// 307/308 as they were; at most 10; credentials and cookies not sent to
/// another host).
async fn http_direct(
    h: &Http,
    p: &PreparedRequest,
    max: usize,
    shown: &str,
    deadline: tokio::time::Instant,
) -> Direct {
    let fail = |e: String| {
        Direct::Done(Outcome::new(
            Status::Critical,
            format!("{}: {e}", title_verb(&h.method, shown)),
        ))
    };
    let Some((target, host)) = &p.target else {
        return fail("not a plain HTTP URL".into());
    };
    let mut hop = Hop {
        url: p.url.clone(),
        method: p.method.clone(),
        headers: p.headers.clone(),
        body: p.body.clone(),
    };
    // The check set its own Host (kept through relative redirects, as Go).
    let custom_host = host.is_none();
    if let Some(host) = host {
        hop.headers.insert(reqwest::header::HOST, host.clone());
    }
    let mut target = target.clone();
    let follow = !h.disable_redirects;
    for redirects in 0.. {
        let (code, location, tail) = match exchange(&hop, &target, max, deadline, follow).await {
            Ok(x) => x,
            Err(e) => return fail(e),
        };
        let Some(location) = location.filter(|_| follow && is_followed(code)) else {
            return Direct::Done(http_outcome(&h.method, shown, code, &tail, max));
        };
        // Go's client makes at most 10 requests.
        if redirects + 1 >= 10 {
            return fail("stopped after 10 redirects".into());
        }
        let next = match hop.url.join(&location) {
            Ok(u) => u,
            Err(e) => return fail(format!("failed to parse Location header {location:?}: {e}")),
        };
        if matches!(code.as_u16(), 301..=303) && hop.method != reqwest::Method::HEAD {
            hop.method = reqwest::Method::GET;
            hop.body = bytes::Bytes::new();
        }
        // Credentials and cookies go only to the same host or its
        // subdomains (Go's rule; ports do not matter).
        let same_domain = match (next.host_str(), hop.url.host_str()) {
            (Some(new), Some(old)) => {
                let (new, old) = (new.to_ascii_lowercase(), old.to_ascii_lowercase());
                new == old || new.ends_with(&format!(".{old}"))
            }
            _ => false,
        };
        if !same_domain {
            hop.headers.remove(reqwest::header::AUTHORIZATION);
            hop.headers.remove(reqwest::header::COOKIE);
        }
        let has_scheme = location
            .split_once(':')
            .is_some_and(|(s, _)| !s.is_empty() && !s.contains('/'));
        if !custom_host || has_scheme {
            hop.headers.remove(reqwest::header::HOST);
        }
        hop.url = next;
        if hop.url.scheme() != "http" {
            return Direct::Elsewhere(Box::new(hop));
        }
        if !hop.headers.contains_key(reqwest::header::HOST) {
            match host_header(&hop.url) {
                Ok(v) => {
                    hop.headers.insert(reqwest::header::HOST, v);
                }
                Err(e) => return fail(e),
            }
        }
        target = match origin_form(&hop.url) {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
    }
    fail("stopped after 10 redirects".into())
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The redirects Go's client follows.
fn is_followed(code: reqwest::StatusCode) -> bool {
    matches!(code.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The request target of `url` in origin form (path and query).
fn origin_form(url: &reqwest::Url) -> Result<hyper::Uri, String> {
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    path.parse::<hyper::Uri>().map_err(|e| e.to_string())
}

/// `Host` for `url`: its host, and its port when given.
fn host_header(url: &reqwest::Url) -> Result<reqwest::header::HeaderValue, String> {
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => String::new(),
    };
    reqwest::header::HeaderValue::from_str(&host).map_err(|e| e.to_string())
}

/// One request over one new connection: the status, `Location`, and the
/// body's last `max` bytes (none of a redirect to follow). Until the
/// answer's head, `deadline` fails it; the body stops there.
async fn exchange(
    hop: &Hop,
    target: &hyper::Uri,
    max: usize,
    deadline: tokio::time::Instant,
    follow: bool,
) -> Result<(reqwest::StatusCode, Option<String>, Vec<u8>), String> {
    match tokio::time::timeout_at(deadline, exchange_inner(hop, target, max, deadline, follow))
        .await
    {
        Ok(r) => r,
        Err(_) => Err(LATE.to_string()),
    }
}

/// Go's text for a request past its deadline before the answer's head.
const LATE: &str = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)";

async fn exchange_inner(
    hop: &Hop,
    target: &hyper::Uri,
    max: usize,
    deadline: tokio::time::Instant,
    follow: bool,
) -> Result<(reqwest::StatusCode, Option<String>, Vec<u8>), String> {
    let name = hop.url.host_str().ok_or("no host in the URL")?;
    let port = hop
        .url
        .port_or_known_default()
        .ok_or("no port in the URL")?;
    let addrs: Vec<std::net::SocketAddr> =
        match name.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => vec![(ip, port).into()],
            Err(_) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| format!("dial tcp: lookup {name}: {e}"))?
                .collect(),
        };
    // Each address in turn; one that does not answer gets 300 ms while
    // others remain (as Go's fallback between address families).
    let mut stream = None;
    let mut last = format!("dial tcp: lookup {name}: no such host");
    let n = addrs.len();
    for (i, a) in addrs.into_iter().enumerate() {
        let attempt = tokio::net::TcpStream::connect(a);
        let r = if i + 1 < n {
            match tokio::time::timeout(Duration::from_millis(300), attempt).await {
                Ok(r) => r,
                Err(_) => {
                    last = format!("dial tcp {a}: i/o timeout");
                    continue;
                }
            }
        } else {
            attempt.await
        };
        match r {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("dial tcp {a}: connect: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| chain(&e))?;
    let mut req = hyper::Request::new(http_body_util::Full::new(hop.body.clone()));
    *req.method_mut() = hop.method.clone();
    *req.uri_mut() = target.clone();
    *req.headers_mut() = hop.headers.clone();
    let exchange = async move {
        use http_body_util::BodyExt;
        let resp = sender.send_request(req).await?;
        let code = resp.status();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|l| !l.is_empty())
            .map(str::to_string);
        if follow && is_followed(code) && location.is_some() {
            // Followed: its body is not read (the connection closes).
            return Ok((code, location, Vec::new()));
        }
        // Keep the body's last `max` bytes (see `http`). As Consul, a body
        // that fails or outlasts the timeout ends there; the code decides.
        let mut body = resp.into_body();
        let mut tail: Vec<u8> = Vec::new();
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, body.frame()).await {
            let Ok(frame) = frame else { break };
            if let Some(d) = frame.data_ref() {
                tail.extend_from_slice(d);
                if tail.len() > 2 * max.max(1) {
                    tail.drain(..tail.len() - max);
                }
            }
        }
        Ok::<_, hyper::Error>((code, location, tail))
    };
    // The connection is driven here, not spawned: when the probe ends (or
    // times out), its socket goes with it.
    tokio::pin!(exchange);
    tokio::pin!(conn);
    let mut conn_done = false;
    let r = loop {
        tokio::select! {
            r = &mut exchange => break r,
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    };
    r.map_err(|e| chain(&e))
}

/// Go's error prefix for a failed request: `Get "http://…"`.
fn title_verb(verb: &str, url: &str) -> String {
    let mut v = verb.to_ascii_lowercase();
    if let Some(first) = v.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    format!("{v} {url:?}")
}

/// TLS settings of a check: its client configuration and server name.
type Tls = Option<(Result<Arc<rustls::ClientConfig>, String>, String)>;

async fn tcp(addr: String, tls: Tls, timeout: Duration) -> Outcome {
    let run = async {
        let stream = tokio::net::TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        if let Some((cfg, name)) = tls {
            crate::tls::handshake(stream, &addr, &name, cfg?).await?;
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Outcome::new(Status::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => Outcome::new(Status::Critical, e),
        Err(_) => Outcome::new(Status::Critical, format!("dial tcp {addr}: i/o timeout")),
    }
}

/// A `grpc.health.v1.Health/Check` call (tonic-health's client) to
/// `host:port[/service]`, over h2c or TLS.
async fn grpc(target: String, tls: Tls, timeout: Duration) -> Outcome {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (addr, service) = match target.split_once('/') {
        Some((a, s)) => (a.to_string(), s.to_string()),
        None => (target.clone(), String::new()),
    };
    let run = async {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("gRPC check {target}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = match tls {
            None => endpoint.connect().await,
            Some((cfg, name)) => {
                let cfg = cfg?;
                let addr = addr.clone();
                endpoint
                    .connect_with_connector(tower::service_fn(move |_uri| {
                        let (cfg, name, addr) = (cfg.clone(), name.clone(), addr.clone());
                        async move {
                            let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
                            let s = crate::tls::handshake(tcp, &addr, &name, cfg)
                                .await
                                .map_err(std::io::Error::other)?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    }))
                    .await
            }
        }
        .map_err(|e| format!("gRPC check {target}: {}", chain(&e)))?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let resp = client
            .check(tonic_health::pb::HealthCheckRequest { service })
            .await
            .map_err(|s| format!("gRPC check {target}: {}: {}", s.code(), s.message()))?;
        Ok::<ServingStatus, String>(resp.into_inner().status())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(ServingStatus::Serving)) => {
            Outcome::new(Status::Passing, format!("gRPC check {target}: success"))
        }
        Ok(Ok(other)) => Outcome::new(
            Status::Critical,
            format!(
                "gRPC check {target}: failed, service status: {}",
                other.as_str_name()
            ),
        ),
        Ok(Err(e)) => Outcome::new(Status::Critical, e),
        Err(_) => Outcome::new(
            Status::Critical,
            format!(
                "gRPC check {target}: timed out after {}",
                crate::duration::format(timeout)
            ),
        ),
    }
}

/// An HTTP/2 PING over a new connection (h2c, or TLS offering `h2`).
async fn h2ping(addr: String, tls: Tls, timeout: Duration) -> Outcome {
    async fn ping<T>(io: T) -> Result<(), String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (_send, mut conn) = h2::client::handshake(io)
            .await
            .map_err(|e| format!("HTTP2 handshake: {e}"))?;
        let mut pings = conn.ping_pong().ok_or("HTTP2 pings unavailable")?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = pings
            .ping(h2::Ping::opaque())
            .await
            .map_err(|e| format!("HTTP2 ping: {e}"));
        driver.abort();
        r.map(|_| ())
    }
    let run = async {
        let stream = tokio::net::TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| format!("Failed to dial to {addr}: {e}"))?;
        match tls {
            Some((cfg, name)) => {
                let s = crate::tls::handshake(stream, &addr, &name, cfg?).await?;
                ping(s).await
            }
            None => ping(stream).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Outcome::new(Status::Passing, "HTTP2 ping was successful"),
        Ok(Err(e)) => Outcome::new(Status::Critical, e),
        Err(_) => Outcome::new(
            Status::Critical,
            format!(
                "HTTP2 ping to {addr}: timed out after {}",
                crate::duration::format(timeout)
            ),
        ),
    }
}

async fn udp(addr: String, timeout: Duration) -> Outcome {
    let fail =
        |e: &dyn std::fmt::Display| Outcome::new(Status::Critical, format!("dial udp {addr}: {e}"));
    let target = match tokio::net::lookup_host(addr.as_str()).await {
        Ok(mut a) => match a.next() {
            Some(t) => t,
            None => return fail(&"no address"),
        },
        Err(e) => return fail(&e),
    };
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Err(e) = sock.connect(target).await {
        return fail(&e);
    }
    if let Err(e) = sock.send(b"\n").await {
        return fail(&e);
    }
    let mut buf = [0u8; 1];
    let ok = Outcome::new(Status::Passing, format!("UDP connect {addr}: Success"));
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        Ok(Ok(_)) => ok,
        // No answer is not a failure (as Consul): only an error (an ICMP
        // port unreachable, "connection refused") is.
        Err(_) => ok,
        Ok(Err(e)) => Outcome::new(Status::Critical, format!("read udp {addr}: {e}")),
    }
}

async fn script(args: Vec<String>, timeout: Duration, max: usize) -> Outcome {
    let Some((program, rest)) = args.split_first() else {
        return Outcome::new(Status::Critical, "no program to run");
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::new(Status::Critical, format!("Failed to start {program}: {e}"));
        }
    };
    let pid = child.id();
    let out = child.stdout.take();
    let err = child.stderr.take();
    let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let drain = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        let buf = buf.clone();
        let total = total.clone();
        async move {
            let Some(mut r) = r else { return };
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                total.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                let mut b = buf.lock();
                b.extend_from_slice(&chunk[..n]);
                if b.len() > 2 * max.max(1) {
                    let cut = b.len() - max;
                    b.drain(..cut);
                }
            }
        }
    };
    let run = async {
        let a = drain(out.map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>));
        let b = drain(err.map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Unpin + Send>));
        let (_, _, status) = tokio::join!(a, b, child.wait());
        status
    };
    let status = match tokio::time::timeout(timeout, run).await {
        Ok(s) => s,
        Err(_) => {
            // The whole process group: a shell's children go too.
            if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            return Outcome::new(
                Status::Critical,
                format!(
                    "Timed out ({}) running check",
                    crate::duration::format(timeout)
                ),
            );
        }
    };
    let bytes = buf.lock().clone();
    let total = total.load(std::sync::atomic::Ordering::Relaxed);
    let kept = output::tail(&bytes, max);
    let text = if total as usize > max {
        format!("Captured {} of {total} bytes\n...\n{kept}", kept.len())
    } else {
        kept
    };
    match status {
        Ok(s) if s.success() => Outcome::new(Status::Passing, text),
        Ok(s) if s.code() == Some(1) => Outcome::new(Status::Warning, text),
        Ok(_) => Outcome::new(Status::Critical, text),
        Err(e) => Outcome::new(Status::Critical, format!("Failed to run {program}: {e}")),
    }
}

async fn os_service(name: String, timeout: Duration) -> Outcome {
    let run = tokio::process::Command::new("systemctl")
        .args(["is-active", "--", &name])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(out)) => {
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.lines().next().unwrap_or_default().trim();
            if state.is_empty() && !said.is_empty() {
                // No answer about the unit (no systemd, no bus): unknown,
                // a warning as Consul's.
                return Outcome::new(
                    Status::Warning,
                    format!("Service \"{name}\": systemd did not answer: {said}"),
                );
            }
            match state.as_str() {
                "active" => Outcome::new(Status::Passing, format!("Service \"{name}\" is healthy")),
                "inactive" | "failed" | "deactivating" => Outcome::new(
                    Status::Critical,
                    format!("Service \"{name}\" is not running ({state})"),
                ),
                _ => Outcome::new(
                    Status::Warning,
                    format!("Service \"{name}\" is in an unknown state ({state})"),
                ),
            }
        }
        Ok(Err(e)) => Outcome::new(
            Status::Warning,
            format!("Service \"{name}\": systemctl is not available: {e}"),
        ),
        Err(_) => Outcome::new(
            Status::Critical,
            format!(
                "Timed out ({}) asking systemd about \"{name}\"",
                crate::duration::format(timeout)
            ),
        ),
    }
}

/// Consul's alias outcome: the worst of the checks, naming the failing one.
fn alias(service: &str, found: Option<Vec<(String, Status, String)>>) -> Outcome {
    let Some(checks) = found else {
        return Outcome::new(
            Status::Critical,
            format!("Service {service} could not be found"),
        );
    };
    if checks.is_empty() {
        return Outcome::new(Status::Passing, "No checks found.");
    }
    let worst = checks.iter().max_by_key(|(_, s, _)| *s);
    match worst {
        Some((name, s, out)) if *s != Status::Passing => {
            Outcome::new(*s, format!("Aliased check {name:?} failing: {out}"))
        }
        _ => Outcome::new(Status::Passing, "All checks passing."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_outcomes_as_consuls() {
        assert_eq!(alias("web", None).status, Status::Critical);
        assert_eq!(alias("web", Some(vec![])).output, "No checks found.");
        let ok = alias(
            "web",
            Some(vec![("a".into(), Status::Passing, "fine".into())]),
        );
        assert_eq!(
            (ok.status, ok.output.as_str()),
            (Status::Passing, "All checks passing.")
        );
        let bad = alias(
            "web",
            Some(vec![
                ("a".into(), Status::Warning, "slow".into()),
                ("b".into(), Status::Critical, "down".into()),
            ]),
        );
        assert_eq!(bad.status, Status::Critical);
        assert_eq!(bad.output, "Aliased check \"b\" failing: down");
    }
}
