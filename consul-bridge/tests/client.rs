//! The bridge's HTTP client against servers that behave as real Consul
//! agents and what sits in front of them do: HTTP/1.0 answers without a
//! length, `Connection: close` after every response, and keep-alive
//! connections dropped while idle. Each is a raw TCP server started by the
//! test (no Consul can be installed here); every poll must succeed.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corro_consul_bridge::{ConsulClient, ConsulSettings, PollError};

const SERVICES: &str = r#"{"web-1": {"ID": "web-1", "Service": "web", "Tags": ["a"], "Port": 80}}"#;
const CHECKS: &str = r#"{"c1": {"CheckID": "c1", "Status": "passing", "ServiceID": "web-1"}}"#;

#[derive(Clone, Copy)]
enum Mode {
    /// `HTTP/1.0 200`, no Content-Length, then close.
    Http10,
    /// HTTP/1.1 with `Connection: close`, then close.
    CloseAfter,
    /// HTTP/1.1 keep-alive, but an idle connection is closed after 50 ms.
    IdleDrop,
    /// A body larger than the client's limit.
    Huge,
}

/// Reads one request head; the path, or `None` at EOF.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    text.split_whitespace().nth(1).map(str::to_string)
}

/// Serves `mode` on a free port; returns the address and a connection count.
fn serve(mode: Mode) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                loop {
                    if matches!(mode, Mode::IdleDrop) {
                        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    }
                    let Some(path) = read_head(&mut s) else {
                        return;
                    };
                    let body = match (mode, path.as_str()) {
                        (Mode::Huge, _) => "x".repeat(100_000),
                        (_, "/v1/agent/services") => SERVICES.to_string(),
                        (_, "/v1/agent/checks") => CHECKS.to_string(),
                        _ => "{}".to_string(),
                    };
                    let resp = match mode {
                        Mode::Http10 => format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}"
                        ),
                        Mode::CloseAfter => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        Mode::IdleDrop | Mode::Huge => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        ),
                    };
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                    if matches!(mode, Mode::Http10 | Mode::CloseAfter) {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

fn client(addr: &str) -> ConsulClient {
    ConsulClient::new(&ConsulSettings {
        addr: addr.to_string(),
        token: Some("t".into()),
        timeout: Duration::from_secs(5),
        max_body_bytes: 64 * 1024,
        tls: None,
    })
    .unwrap()
}

async fn polls_succeed(mode: Mode, rounds: usize, pause: Duration) -> usize {
    let (addr, conns) = serve(mode);
    let c = client(&addr);
    for i in 0..rounds {
        let snap = c
            .snapshot()
            .await
            .unwrap_or_else(|e| panic!("poll {i}: {e}"));
        assert_eq!(snap.services["web-1"].name, "web");
        assert_eq!(snap.checks["c1"].service_id, "web-1");
        tokio::time::sleep(pause).await;
    }
    conns.load(Ordering::SeqCst)
}

#[tokio::test]
async fn http_1_0_answers_without_a_length_are_read_whole() {
    let conns = polls_succeed(Mode::Http10, 5, Duration::ZERO).await;
    assert_eq!(conns, 10, "one connection per request");
}

#[tokio::test]
async fn a_server_closing_after_every_response_is_polled_every_time() {
    let conns = polls_succeed(Mode::CloseAfter, 5, Duration::ZERO).await;
    assert_eq!(conns, 10);
}

#[tokio::test]
async fn idle_connections_dropped_by_the_server_are_reopened() {
    // Polls 150 ms apart: every pooled connection is gone by the next one.
    let conns = polls_succeed(Mode::IdleDrop, 5, Duration::from_millis(150)).await;
    assert!(conns >= 5, "{conns}");
}

#[tokio::test]
async fn keep_alive_connections_are_reused_between_requests() {
    // Back to back, the idle-dropping server keeps each connection open.
    let conns = polls_succeed(Mode::IdleDrop, 5, Duration::ZERO).await;
    assert!(conns <= 2, "{conns} connections for 10 requests");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let (addr, _) = serve(Mode::Huge);
    let e = client(&addr).snapshot().await.unwrap_err();
    assert!(matches!(e, PollError::TooLarge(65_536)), "{e}");
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = client(&format!("127.0.0.1:{port}"))
        .snapshot()
        .await
        .unwrap_err();
    assert!(matches!(e, PollError::Unreachable(_)), "{e}");
}
