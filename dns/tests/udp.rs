//! The UDP listener over real sockets: a burst of queries from one client
//! (read in batches on IPv4) gets exactly one answer per query, on IPv4
//! and IPv6; an oversized datagram costs nobody else their answer.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use corro_dns::{DnsSettings, Responder};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

mod common;

/// A responder over an empty catalog (every name here is missing), and
/// the directory its store lives in.
fn responder() -> (tempfile::TempDir, Responder) {
    let (dir, _store, catalog) = common::open();
    (dir, Responder::new(catalog, DnsSettings::default()))
}

fn query(id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    let name = format!("missing-{id}.service.consul.");
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Sends `n` queries back to back (after `first`, if any), then reads
/// answers until all `n` arrived or 10 s passed; returns the answered ids.
async fn burst(
    server: SocketAddr,
    client: SocketAddr,
    n: u16,
    first: Option<&[u8]>,
) -> BTreeSet<u16> {
    // The answers arrive while the burst is still being sent: room for all.
    let s = socket2::Socket::new(
        socket2::Domain::for_address(client),
        socket2::Type::DGRAM,
        None,
    )
    .unwrap();
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.bind(&client.into()).unwrap();
    s.set_nonblocking(true).unwrap();
    let sock = UdpSocket::from_std(s.into()).unwrap();
    if let Some(first) = first {
        sock.send_to(first, server).await.unwrap();
    }
    for id in 0..n {
        sock.send_to(&query(id), server).await.unwrap();
    }
    let mut got = BTreeSet::new();
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < usize::from(n) {
        let Ok(Ok(len)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await else {
            break;
        };
        let m = Message::from_vec(&buf[..len]).unwrap();
        if m.metadata.response_code == ResponseCode::NXDomain && m.metadata.id < n {
            assert!(
                got.insert(m.metadata.id),
                "id {} answered twice",
                m.metadata.id
            );
        }
    }
    got
}

async fn every_query_of_a_burst_is_answered_once(bind: SocketAddr, client: SocketAddr) {
    let (_dir, r) = responder();
    let stop = CancellationToken::new();
    let l = corro_dns::serve(r, bind, 2, stop.clone()).await.unwrap();
    // 300 back to back: more than one batch, within the socket's buffer.
    let got = burst(l.udp, client, 300, None).await;
    assert_eq!(got, (0..300).collect::<BTreeSet<u16>>());
    stop.cancel();
    l.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_burst_answered_once_each() {
    every_query_of_a_burst_is_answered_once(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_burst_answered_once_each() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    every_query_of_a_burst_is_answered_once("[::1]:0".parse().unwrap(), "[::1]:0".parse().unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_datagram_costs_nobody_else_their_answer() {
    let (_dir, r) = responder();
    let stop = CancellationToken::new();
    let l = corro_dns::serve(r, "127.0.0.1:0".parse().unwrap(), 2, stop.clone())
        .await
        .unwrap();
    // The largest IPv4 UDP payload, a query header followed by garbage.
    let mut big = query(9999);
    big.resize(65_507, 0xab);
    let got = burst(l.udp, "127.0.0.1:0".parse().unwrap(), 50, Some(&big)).await;
    assert_eq!(got, (0..50).collect::<BTreeSet<u16>>());
    stop.cancel();
    l.stopped().await;
}

/// `serve_after`: questions asked before the listeners open are held (UDP
/// in the socket's buffer, TCP in the backlog), not refused or dropped,
/// and each is answered once they open; a stop before opening ends the
/// listeners without answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_before_the_listeners_open_wait_and_are_answered_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, r) = responder();
    let stop = CancellationToken::new();
    let (open, opened) = tokio::sync::oneshot::channel::<()>();
    let l = corro_dns::serve_after(
        r.clone(),
        "127.0.0.1:0".parse().unwrap(),
        2,
        stop.clone(),
        async move {
            let _ = opened.await;
        },
    )
    .await
    .unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for id in 0..20u16 {
        udp.send_to(&query(id), l.udp).await.unwrap();
    }
    let mut tcp = tokio::net::TcpStream::connect(l.tcp).await.unwrap();
    let q = query(77);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    tcp.write_all(&framed).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), udp.recv(&mut buf))
            .await
            .is_err(),
        "a UDP question was answered before the listeners opened"
    );
    let mut len = [0u8; 2];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), tcp.read_exact(&mut len))
            .await
            .is_err(),
        "a TCP question was answered before the listeners opened"
    );
    open.send(()).unwrap();
    let mut got = BTreeSet::new();
    while got.len() < 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), udp.recv(&mut buf))
            .await
            .expect("held UDP questions answered once open")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(got.insert(m.metadata.id), "answered twice");
    }
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut len))
        .await
        .expect("the held TCP question answered once open")
        .unwrap();
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(Message::from_vec(&answer).unwrap().metadata.id, 77);
    stop.cancel();
    l.stopped().await;

    // Stopped before it opened: the listeners end, nothing is answered.
    let stop = CancellationToken::new();
    let l = corro_dns::serve_after(
        r,
        "127.0.0.1:0".parse().unwrap(),
        2,
        stop.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), l.stopped())
        .await
        .expect("listeners that never opened end on stop");
}
