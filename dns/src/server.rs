//! UDP and TCP listeners on one address.
//!
//! UDP: one socket (with a 4 MiB receive buffer, so bursts are not dropped
//! by the kernel) read by several tasks (as many as `workers`), each
//! answering what it read on the spot, in batches where the system allows
//! (`udp`). TCP: each connection carries length-prefixed
//! messages (RFC 1035 4.2.2), answered in order; a connection idle, stalled
//! mid-message or not reading its answers for 10 s is closed, and at most
//! 1,024 connections (64 per client address) are served at once. With
//! [`serve_after`], neither answers before a given future resolves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::Responder;

/// The bound addresses, and the tasks answering on them.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    tasks: tokio_util::task::TaskTracker,
}

impl Listeners {
    /// Resolves once every worker and connection task has ended (after the
    /// stop token was cancelled).
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }
}

const TCP_IDLE: Duration = Duration::from_secs(10);

/// TCP connections served at once; further ones are closed on accept (a
/// resolver retries, and UDP keeps being answered).
const TCP_MAX_CONNECTIONS: usize = 1024;
/// TCP connections from one client address at once.
const TCP_MAX_PER_CLIENT: usize = 64;

/// Receive buffer asked for the UDP socket (the kernel caps it at
/// `net.core.rmem_max`): a burst of queries must not overflow the default
/// ~200 KiB, where each queued datagram costs far more than its bytes.
const UDP_RCVBUF: usize = 4 << 20;

/// A non-blocking UDP socket on `addr` with a large receive buffer.
fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = s.set_recv_buffer_size(UDP_RCVBUF) {
        tracing::debug!(error = %e, "dns: could not enlarge the UDP receive buffer");
    }
    let _ = s.set_send_buffer_size(UDP_RCVBUF);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Binds UDP and TCP on `addr` (with port 0, TCP takes the port UDP got)
/// and answers until `stop` flips.
pub async fn serve(
    responder: Responder,
    addr: SocketAddr,
    workers: usize,
    stop: CancellationToken,
) -> std::io::Result<Listeners> {
    serve_after(responder, addr, workers, stop, std::future::ready(())).await
}

/// Like [`serve`], but nothing is answered before `open` resolves: both
/// sockets are bound at once, and questions asked meanwhile wait (UDP in
/// the socket's receive buffer, TCP connections in the listen backlog)
/// and are answered once it has. The agent holds its answers this way
/// after a start until its catalog has taken in settled membership
/// (`[dns] start_wait`).
pub async fn serve_after<F>(
    responder: Responder,
    addr: SocketAddr,
    workers: usize,
    stop: CancellationToken,
    open: F,
) -> std::io::Result<Listeners>
where
    F: Future<Output = ()> + Send + 'static,
{
    // With port 0 the TCP side takes the port the UDP side got; when that
    // port is taken for TCP, try another pair.
    let mut attempt = 0;
    let (udp, tcp) = loop {
        let udp = udp_socket(addr)?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => break (Arc::new(udp), tcp),
            Err(_) if addr.port() == 0 && attempt < 32 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let udp_addr = udp.local_addr()?;
    let tcp_addr = tcp.local_addr()?;
    let tasks = tokio_util::task::TaskTracker::new();
    let (udp, reader) = match crate::udp::Reader::for_socket(&udp) {
        Ok(reader) => (udp, reader),
        Err(crate::udp::Tainted) => {
            // Same address (and port) on a socket nobody configured.
            drop(udp);
            (Arc::new(udp_socket(udp_addr)?), crate::udp::Reader::Single)
        }
    };
    let (opened_tx, opened) = tokio::sync::watch::channel(false);
    {
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = open => { opened_tx.send_replace(true); }
                _ = stop.cancelled() => {}
            }
        });
    }
    for _ in 0..workers.max(1) {
        let (udp, reader, r, stop) = (udp.clone(), reader.clone(), responder.clone(), stop.clone());
        let mut opened = opened.clone();
        tasks.spawn(async move {
            if wait_open(&mut opened, &stop).await {
                crate::udp::worker(udp, reader, r, stop).await;
            }
        });
    }
    let stop_tcp = stop.clone();
    let connections = tasks.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(TCP_MAX_CONNECTIONS));
    let per_client: Arc<parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    let mut opened_tcp = opened;
    tasks.spawn(async move {
        if !wait_open(&mut opened_tcp, &stop_tcp).await {
            return;
        }
        loop {
            let conn = tokio::select! {
                _ = stop_tcp.cancelled() => return,
                c = tcp.accept() => c,
            };
            let Ok((stream, peer)) = conn else { continue };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("corro_dns_tcp_refused_total").increment(1);
                continue;
            };
            {
                let mut m = per_client.lock();
                let n = m.entry(peer.ip()).or_default();
                if *n >= TCP_MAX_PER_CLIENT {
                    metrics::counter!("corro_dns_tcp_refused_total").increment(1);
                    continue;
                }
                *n += 1;
            }
            let (r, stop, per_client) = (responder.clone(), stop.clone(), per_client.clone());
            connections.spawn(async move {
                tcp_connection(r, stream, stop).await;
                drop(slot);
                let mut m = per_client.lock();
                if let Some(n) = m.get_mut(&peer.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&peer.ip());
                    }
                }
            });
        }
    });
    // Closed now: `stopped` resolves once the (always running) workers and
    // acceptor have ended; connections spawned later are tracked too.
    tasks.close();
    Ok(Listeners {
        udp: udp_addr,
        tcp: tcp_addr,
        tasks,
    })
}

/// Waits until the listeners may answer; false when stopped first.
async fn wait_open(
    opened: &mut tokio::sync::watch::Receiver<bool>,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        r = opened.wait_for(|o| *o) => r.is_ok(),
        _ = stop.cancelled() => false,
    }
}

async fn tcp_connection(r: Responder, mut s: TcpStream, stop: CancellationToken) {
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            x = tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)) => x,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let n = usize::from(u16::from_be_bytes(len));
        buf.resize(n, 0);
        if !matches!(
            tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(answer) = r.respond(&buf, false) else {
            continue;
        };
        let Ok(alen) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&alen.to_be_bytes());
        out.extend_from_slice(&answer);
        // A client that stops reading cannot hold its connection.
        let wrote = tokio::select! {
            _ = stop.cancelled() => return,
            w = tokio::time::timeout(TCP_IDLE, s.write_all(&out)) => w,
        };
        if !matches!(wrote, Ok(Ok(()))) {
            return;
        }
    }
}
