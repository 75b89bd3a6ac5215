//! The real probes against real servers the test starts on loopback: HTTP
//! (passing, 429 warning, 500 critical, refused), TCP, UDP, and script
//! checks (exit codes, output, timeout).

use std::sync::Arc;
use std::time::Duration;

use corro_checks::net::NetProber;
use corro_checks::{CheckDefinition, Prober, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn def(json: serde_json::Value) -> Arc<CheckDefinition> {
    Arc::new(
        CheckDefinition::decode(json.as_object().expect("an object"))
            .expect("a valid check")
            .expect("not empty"),
    )
}

/// An HTTP/1.1 server answering every request with `code` and `body`,
/// after checking the request carries Consul's user agent.
async fn http_server(code: u16, reason: &'static str, body: &'static str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = l.local_addr().expect("its address");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let (code, reason) = if req.contains("User-Agent: Consul Health Check")
                    || req.contains("user-agent: Consul Health Check")
                {
                    (code, reason)
                } else {
                    (400, "Bad Request")
                };
                let resp = format!(
                    "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/health")
}

#[tokio::test]
async fn http_status_codes_map_as_consuls() {
    let p = NetProber::new("n1".into(), None);
    for (code, reason, want) in [
        (200, "OK", Status::Passing),
        (204, "No Content", Status::Passing),
        (429, "Too Many Requests", Status::Warning),
        (500, "Internal Server Error", Status::Critical),
        (404, "Not Found", Status::Critical),
    ] {
        let url = http_server(code, reason, "body text").await;
        let o = p
            .probe(def(
                serde_json::json!({"Name": "h", "HTTP": url, "Interval": "10s"}),
            ))
            .await;
        assert_eq!(o.status, want, "{code}: {}", o.output);
        // A 204 has no body, whatever the server sends after it.
        let body = if code == 204 { "" } else { "body text" };
        assert_eq!(
            o.output,
            format!("HTTP GET {url}: {code} {reason} Output: {body}")
        );
    }
}

/// The check's method, headers and body go out as given, its headers
/// replacing Consul's defaults of the same name, on every probe (the
/// request is parsed once and reused).
#[tokio::test]
async fn http_sends_the_checks_method_headers_and_body() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Until the body ("payload") has arrived.
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].ends_with(b"payload") {
                        break;
                    }
                }
                let echo = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{echo}",
                    echo.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let p = NetProber::new("n1".into(), None);
    let check = def(
        serde_json::json!({"Name": "h", "HTTP": format!("http://{addr}/x"),
        "Method": "POST", "Body": "payload", "Interval": "10s",
        "Header": {"User-Agent": ["mine"], "X-A": ["1", "2"]}}),
    );
    for _ in 0..2 {
        let o = p.probe(check.clone()).await;
        assert_eq!(o.status, Status::Passing, "{}", o.output);
        let out = &o.output;
        assert!(out.contains("post /x http/1.1"), "{out}");
        assert!(out.contains("user-agent: mine"), "{out}");
        assert!(!out.contains("consul health check"), "{out}");
        assert!(out.contains("x-a: 1") && out.contains("x-a: 2"), "{out}");
        assert!(out.contains("accept: text/plain, text/*, */*"), "{out}");
        assert!(out.ends_with("payload"), "{out}");
    }
    // Credentials in the URL go as Basic authorization.
    let o = p
        .probe(def(serde_json::json!({"Name": "h",
            "HTTP": format!("http://user:pa%20ss@{addr}/x"), "Method": "POST", "Body": "payload",
            "Interval": "10s"})))
        .await;
    assert!(
        o.output.contains("authorization: basic dxnlcjpwysbzcw=="),
        "{}",
        o.output
    );
}

/// Redirects are followed (Go's client: up to 10) unless the check
/// disables them; then the 3xx answer itself is the result (critical).
#[tokio::test]
async fn http_follows_redirects_unless_disabled() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let old = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = old.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let redirect = |to: &str| {
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                };
                let resp = if req.starts_with("GET /old ") || req.starts_with("POST /old ") {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    redirect("/new")
                } else if req.starts_with("GET /loop ") {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    redirect("/loop")
                } else if req.starts_with("GET /away ") {
                    // Another host name for the same server.
                    redirect(&format!("http://localhost:{}/echo", addr.port()))
                } else if req.starts_with("GET /near ") {
                    redirect("/echo")
                } else if req.starts_with("GET /echo ") {
                    let echo = req.to_lowercase();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{echo}",
                        echo.len()
                    )
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\narrived"
                        .to_string()
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let p = NetProber::new("n1".into(), None);
    let url = format!("http://{addr}/old");
    let o = p
        .probe(def(
            serde_json::json!({"Name": "h", "HTTP": url, "Interval": "10s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Passing, "{}", o.output);
    assert_eq!(o.output, format!("HTTP GET {url}: 200 OK Output: arrived"));
    // Asked once: the redirect is followed, not the request repeated.
    assert_eq!(old.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A POST redirected with 302 goes on as a GET (Go's rule).
    let o = p
        .probe(def(
            serde_json::json!({"Name": "h", "HTTP": url, "Method": "POST",
            "Body": "b", "Interval": "10s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Passing, "{}", o.output);
    assert_eq!(old.load(std::sync::atomic::Ordering::SeqCst), 2);
    let o = p
        .probe(def(
            serde_json::json!({"Name": "h", "HTTP": url, "Interval": "10s",
            "DisableRedirects": true}),
        ))
        .await;
    assert_eq!(o.status, Status::Critical, "{}", o.output);
    assert_eq!(o.output, format!("HTTP GET {url}: 302 Found Output: "));
    // At most 10 requests, as Go's client.
    old.store(0, std::sync::atomic::Ordering::SeqCst);
    let o = p
        .probe(def(
            serde_json::json!({"Name": "h", "HTTP": format!("http://{addr}/loop"),
            "Interval": "10s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Critical, "{}", o.output);
    assert!(
        o.output.ends_with("stopped after 10 redirects"),
        "{}",
        o.output
    );
    assert_eq!(old.load(std::sync::atomic::Ordering::SeqCst), 10);
    // Credentials follow a redirect on the same host, not to another.
    let o = p
        .probe(def(serde_json::json!({"Name": "h",
            "HTTP": format!("http://u:p@{addr}/near"), "Interval": "10s"})))
        .await;
    assert!(o.output.contains("authorization: basic"), "{}", o.output);
    let o = p
        .probe(def(serde_json::json!({"Name": "h",
            "HTTP": format!("http://u:p@{addr}/away"), "Interval": "10s"})))
        .await;
    assert_eq!(o.status, Status::Passing, "{}", o.output);
    assert!(o.output.contains("host: localhost:"), "{}", o.output);
    assert!(!o.output.contains("authorization"), "{}", o.output);
}

/// As Consul: a body that stalls past the timeout ends there, and the
/// answer's code decides the status (the output has what arrived).
#[tokio::test]
async fn http_a_stalled_body_is_judged_by_the_code() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                .await;
            held.push(s);
        }
    });
    let p = NetProber::new("n1".into(), None);
    let url = format!("http://{addr}/");
    let started = std::time::Instant::now();
    let o = p
        .probe(def(serde_json::json!({"Name": "h", "HTTP": url,
            "Interval": "10s", "Timeout": "300ms"})))
        .await;
    assert_eq!(o.status, Status::Passing, "{}", o.output);
    assert_eq!(o.output, format!("HTTP GET {url}: 200 OK Output: partial"));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// OS service checks ask `systemctl is-active`. Here (a container without
/// systemd) the real systemctl cannot answer: a warning naming why, as
/// Consul's check when systemd is unreachable. With systemd, `active` is
/// passing and `inactive`/`failed` critical (not testable here).
#[tokio::test]
async fn os_service_without_systemd_is_a_warning_that_says_why() {
    let booted = std::path::Path::new("/run/systemd/system").exists();
    let p = NetProber::new("n1".into(), None);
    let o = p
        .probe(def(
            serde_json::json!({"Name": "s", "OSService": "no-such-unit-xyz",
            "Interval": "10s"}),
        ))
        .await;
    if booted {
        assert_eq!(o.status, Status::Critical, "{}", o.output);
    } else {
        assert_eq!(o.status, Status::Warning, "{}", o.output);
        assert!(
            o.output.starts_with("Service \"no-such-unit-xyz\""),
            "{}",
            o.output
        );
    }
}

#[tokio::test]
async fn http_refused_and_timeout_are_critical() {
    let p = NetProber::new("n1".into(), None);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let o = p
        .probe(def(serde_json::json!({"Name": "h",
            "HTTP": format!("http://127.0.0.1:{port}/"), "Interval": "10s"})))
        .await;
    assert_eq!(o.status, Status::Critical);
    assert!(
        o.output
            .starts_with(&format!("Get \"http://127.0.0.1:{port}/\"")),
        "{}",
        o.output
    );
    // A server that accepts and never answers: the check's timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    let o = p
        .probe(def(
            serde_json::json!({"Name": "h", "HTTP": format!("http://{addr}/"),
            "Interval": "10s", "Timeout": "300ms"}),
        ))
        .await;
    assert_eq!(o.status, Status::Critical, "{}", o.output);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn tcp_open_and_closed() {
    let p = NetProber::new("n1".into(), None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let o = p
        .probe(def(
            serde_json::json!({"Name": "t", "TCP": addr.to_string(), "Interval": "10s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Passing);
    assert_eq!(o.output, format!("TCP connect {addr}: Success"));
    drop(l);
    let o = p
        .probe(def(
            serde_json::json!({"Name": "t", "TCP": addr.to_string(), "Interval": "10s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Critical, "{}", o.output);
}

#[tokio::test]
async fn udp_answer_or_silence_passes_refusal_fails() {
    let p = NetProber::new("n1".into(), None);
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let mut b = [0u8; 64];
        while let Ok((_, from)) = server.recv_from(&mut b).await {
            let _ = server.send_to(b"ok", from).await;
        }
    });
    let o = p
        .probe(def(
            serde_json::json!({"Name": "u", "UDP": addr.to_string(),
            "Interval": "10s", "Timeout": "1s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Passing);
    assert_eq!(o.output, format!("UDP connect {addr}: Success"));
    // Nothing listening: loopback answers with ICMP port unreachable.
    let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let o = p
        .probe(def(
            serde_json::json!({"Name": "u", "UDP": gone_addr.to_string(),
            "Interval": "10s", "Timeout": "1s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Critical, "{}", o.output);
}

#[tokio::test]
async fn scripts_exit_codes_output_and_timeout() {
    let p = NetProber::new("n1".into(), None);
    let run = |args: serde_json::Value, timeout: &str| {
        def(serde_json::json!({"Name": "s", "Args": args, "Interval": "10s", "Timeout": timeout}))
    };
    let o = p
        .probe(run(serde_json::json!(["sh", "-c", "echo fine"]), "5s"))
        .await;
    assert_eq!((o.status, o.output.as_str()), (Status::Passing, "fine\n"));
    let o = p
        .probe(run(
            serde_json::json!(["sh", "-c", "echo meh >&2; exit 1"]),
            "5s",
        ))
        .await;
    assert_eq!((o.status, o.output.as_str()), (Status::Warning, "meh\n"));
    let o = p
        .probe(run(serde_json::json!(["sh", "-c", "exit 2"]), "5s"))
        .await;
    assert_eq!(o.status, Status::Critical);
    let started = std::time::Instant::now();
    let o = p
        .probe(run(
            serde_json::json!(["sh", "-c", "sleep 30 & sleep 30"]),
            "300ms",
        ))
        .await;
    assert_eq!(o.status, Status::Critical);
    assert_eq!(o.output, "Timed out (300ms) running check");
    assert!(started.elapsed() < Duration::from_secs(5));
    let o = p
        .probe(run(serde_json::json!(["/nonexistent/program"]), "5s"))
        .await;
    assert_eq!(o.status, Status::Critical);
    // Output beyond 4 KiB keeps the tail and says how much there was.
    let o = p
        .probe(run(
            serde_json::json!(["sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x; echo END"]),
            "5s",
        ))
        .await;
    assert!(
        o.output.starts_with("Captured 4096 of 10004 bytes\n...\n"),
        "{}",
        &o.output[..60]
    );
    assert!(o.output.ends_with("END\n"));
}

/// A self-signed certificate for `localhost` and its server config.
fn tls_server(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .expect("a server config");
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Serves HTTP/2 (answering pings) on every accepted connection, over TLS
/// when `tls` is given.
async fn h2_server(tls: Option<tokio_rustls::TlsAcceptor>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = l.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                async fn serve<T>(io: T)
                where
                    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
                {
                    if let Ok(mut conn) = h2::server::handshake(io).await {
                        while let Some(Ok(_)) = conn.accept().await {}
                    }
                }
                match tls {
                    Some(a) => {
                        if let Ok(s) = a.accept(s).await {
                            serve(s).await;
                        }
                    }
                    None => serve(s).await,
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn h2ping_over_h2c_and_tls() {
    let p = NetProber::new("n1".into(), None);
    let plain = h2_server(None).await;
    let o = p
        .probe(def(
            serde_json::json!({"Name": "h", "H2PING": plain.to_string(),
            "H2PingUseTLS": false, "Interval": "10s", "Timeout": "2s"}),
        ))
        .await;
    assert_eq!(
        (o.status, o.output.as_str()),
        (Status::Passing, "HTTP2 ping was successful")
    );
    let secure = h2_server(Some(tls_server(&[b"h2"]))).await;
    let o = p
        .probe(def(
            serde_json::json!({"Name": "h", "H2PING": secure.to_string(),
            "TLSSkipVerify": true, "Interval": "10s", "Timeout": "2s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Passing, "{}", o.output);
    // Not trusted without skip-verify; an HTTP/1 server is no HTTP/2 peer.
    let o = p
        .probe(def(
            serde_json::json!({"Name": "h", "H2PING": secure.to_string(),
            "TLSServerName": "localhost", "Interval": "10s", "Timeout": "2s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Critical, "{}", o.output);
    let url = http_server(200, "OK", "hi").await;
    let http1 = url
        .trim_start_matches("http://")
        .trim_end_matches("/health")
        .to_string();
    let o = p
        .probe(def(serde_json::json!({"Name": "h", "H2PING": http1,
            "H2PingUseTLS": false, "Interval": "10s", "Timeout": "2s"})))
        .await;
    assert_eq!(o.status, Status::Critical, "{}", o.output);
}

#[tokio::test]
async fn tcp_with_tls_verifies_unless_told_not_to() {
    let p = NetProber::new("n1".into(), None);
    let acceptor = tls_server(&[]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = l.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(s).await;
            });
        }
    });
    let o = p
        .probe(def(
            serde_json::json!({"Name": "t", "TCP": addr.to_string(), "TCPUseTLS": true,
            "TLSSkipVerify": true, "Interval": "10s", "Timeout": "2s"}),
        ))
        .await;
    assert_eq!(
        (o.status, o.output),
        (Status::Passing, format!("TCP connect {addr}: Success"))
    );
    let o = p
        .probe(def(
            serde_json::json!({"Name": "t", "TCP": addr.to_string(), "TCPUseTLS": true,
            "TLSServerName": "localhost", "Interval": "10s", "Timeout": "2s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Critical);
    assert!(o.output.contains("tls"), "{}", o.output);
}

#[tokio::test]
async fn grpc_health_serving_or_not() {
    use tonic_health::ServingStatus;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("app.Up", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("app.Down", ServingStatus::NotServing)
        .await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = l.local_addr().expect("its address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let p = NetProber::new("n1".into(), None);
    let check = |target: String| {
        def(serde_json::json!({"Name": "g", "GRPC": target, "Interval": "10s", "Timeout": "3s"}))
    };
    let o = p.probe(check(format!("{addr}/app.Up"))).await;
    assert_eq!(
        (o.status, o.output),
        (
            Status::Passing,
            format!("gRPC check {addr}/app.Up: success")
        )
    );
    // The whole server (empty service name) is serving too.
    assert_eq!(
        p.probe(check(addr.to_string())).await.status,
        Status::Passing
    );
    let o = p.probe(check(format!("{addr}/app.Down"))).await;
    assert_eq!(o.status, Status::Critical);
    assert!(o.output.contains("NOT_SERVING"), "{}", o.output);
    let o = p.probe(check(format!("{addr}/app.Unknown"))).await;
    assert_eq!(o.status, Status::Critical);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let gone = closed.local_addr().expect("its address");
    drop(closed);
    assert_eq!(
        p.probe(check(gone.to_string())).await.status,
        Status::Critical
    );
}

#[tokio::test]
async fn https_with_a_server_name_sends_it_as_sni_and_keeps_the_host() {
    let acceptor = tls_server(&[b"http/1.1"]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = l.local_addr().expect("its address");
    let seen = Arc::new(parking_lot::Mutex::new(
        Vec::<(Option<String>, String)>::new(),
    ));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (a, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = a.accept(s).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let host = req
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("host: ")
                            .or_else(|| l.strip_prefix("Host: "))
                    })
                    .unwrap_or_default()
                    .to_string();
                record.lock().push((sni, host));
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let p = NetProber::new("n1".into(), None);
    // The scheme is case-insensitive, as in any URL.
    let url = format!("HTTPS://{addr}/health");
    let o = p
        .probe(def(
            serde_json::json!({"Name": "s", "HTTP": url, "TLSServerName": "localhost",
            "TLSSkipVerify": true, "Interval": "10s", "Timeout": "3s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Passing, "{}", o.output);
    assert_eq!(o.output, format!("HTTP GET {url}: 200 OK Output: ok"));
    assert_eq!(
        seen.lock().last().cloned(),
        Some((Some("localhost".to_string()), addr.to_string()))
    );
    // A self-signed certificate is not trusted without TLSSkipVerify.
    let o = p
        .probe(def(
            serde_json::json!({"Name": "s", "HTTP": url, "TLSServerName": "localhost",
            "Interval": "10s", "Timeout": "3s"}),
        ))
        .await;
    assert_eq!(o.status, Status::Critical, "{}", o.output);
}
