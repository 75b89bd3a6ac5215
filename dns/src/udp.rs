//! UDP workers: queries read and answers sent in batches.
//!
//! On Linux an IPv4 socket is read with `recvmmsg` (through `quinn-udp`,
//! up to [`quinn_udp::BATCH_SIZE`] datagrams a call) and answered with
//! `sendmmsg` (through `rustix`), so a busy resolver pays two system calls
//! per batch instead of two per query. Everything else (IPv6 sockets,
//! other systems) reads and answers one datagram at a time.
//!
//! `quinn-udp` configures the socket for QUIC when it takes it over:
//! it forbids IPv4 fragmentation (`IP_MTU_DISCOVER`), which a DNS answer
//! larger than the path MTU needs, so the setting the socket had is put
//! back. On IPv6 it also sets `IPV6_DONTFRAG`, which cannot be cleared
//! without unsafe code; IPv6 sockets therefore keep the simple path. It
//! also turns on UDP GRO, which may hand over several same-sized
//! datagrams from one sender in one buffer; each buffer is split at the
//! reported stride.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::Responder;

/// Bytes of one receive slot: the largest UDP payload, so neither an
/// oversized query nor a GRO batch is cut short.
const SLOT: usize = 65_535;

/// How a socket's workers read it, decided once per socket.
#[derive(Clone)]
pub(crate) enum Reader {
    /// `recvmmsg`/`sendmmsg` (Linux, IPv4).
    Batched(Arc<quinn_udp::UdpSocketState>),
    /// `recv_from`/`send_to`.
    Single,
}

/// The batched set-up failed after it may have changed the socket's
/// options (GRO on, fragmentation forbidden): the socket must not be
/// read one datagram at a time either; bind a fresh one.
#[derive(Debug)]
pub(crate) struct Tainted;

impl Reader {
    /// Picks the reader for `udp` and prepares the socket for it.
    pub(crate) fn for_socket(udp: &UdpSocket) -> Result<Reader, Tainted> {
        if !cfg!(target_os = "linux") || quinn_udp::BATCH_SIZE < 2 {
            return Ok(Reader::Single);
        }
        let Ok(SocketAddr::V4(_)) = udp.local_addr() else {
            return Ok(Reader::Single);
        };
        let before = match rustix::net::sockopt::ip_mtu_discover(udp) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "dns: reading IP_MTU_DISCOVER failed; one query per call");
                return Ok(Reader::Single);
            }
        };
        let state = match quinn_udp::UdpSocketState::new(udp.into()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "dns: batched UDP unavailable; one query per call on a fresh socket");
                return Err(Tainted);
            }
        };
        if let Err(e) = rustix::net::sockopt::set_ip_mtu_discover(udp, before) {
            // Answers must stay fragmentable.
            tracing::warn!(error = %e, "dns: could not restore IP_MTU_DISCOVER; one query per call on a fresh socket");
            return Err(Tainted);
        }
        Ok(Reader::Batched(Arc::new(state)))
    }
}

/// Answers queries on `udp` until `stop` flips.
pub(crate) async fn worker(
    udp: Arc<UdpSocket>,
    reader: Reader,
    r: Responder,
    stop: CancellationToken,
) {
    match reader {
        #[cfg(target_os = "linux")]
        Reader::Batched(state) => batched(&udp, &state, &r, &stop).await,
        #[cfg(not(target_os = "linux"))]
        Reader::Batched(_) => single(&udp, &r, &stop).await,
        Reader::Single => single(&udp, &r, &stop).await,
    }
}

async fn single(udp: &UdpSocket, r: &Responder, stop: &CancellationToken) {
    let mut buf = vec![0u8; SLOT];
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            got = udp.recv_from(&mut buf) => match got {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "dns: udp receive failed");
                    continue;
                }
            },
        };
        metrics::counter!("corro_dns_udp_reads_total").increment(1);
        if let Some(answer) = r.respond(&buf[..n], true) {
            let _ = udp.send_to(&answer, peer).await;
        }
    }
}

#[cfg(target_os = "linux")]
async fn batched(
    udp: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    r: &Responder,
    stop: &CancellationToken,
) {
    let batch = quinn_udp::BATCH_SIZE;
    // Pages are touched only as datagrams land in them.
    let mut slots = vec![0u8; SLOT * batch];
    let mut meta = vec![quinn_udp::RecvMeta::default(); batch];
    let mut answers: Vec<(SocketAddr, Vec<u8>)> = Vec::with_capacity(batch);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ready = udp.readable() => if let Err(e) = ready {
                // Only when the runtime's I/O driver is gone.
                tracing::warn!(error = %e, "dns: udp socket no longer pollable; worker ends");
                return;
            },
        }
        let got = {
            let mut bufs: Vec<IoSliceMut<'_>> =
                slots.chunks_mut(SLOT).map(IoSliceMut::new).collect();
            udp.try_io(Interest::READABLE, || {
                state.recv(udp.into(), &mut bufs, &mut meta)
            })
        };
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp receive failed");
                continue;
            }
        };
        metrics::counter!("corro_dns_udp_reads_total").increment(1);
        for (m, slot) in meta.iter().zip(slots.chunks(SLOT)).take(n) {
            let data = &slot[..m.len.min(SLOT)];
            for query in data.chunks(m.stride.max(1)) {
                if let Some(answer) = r.respond(query, true) {
                    answers.push((m.addr, answer));
                }
            }
        }
        send_all(udp, &answers).await;
        answers.clear();
    }
}

/// Sends every answer, as many per `sendmmsg` as the kernel takes; an
/// answer the kernel refuses (not for want of buffer space) is dropped,
/// as a failed `send_to` was.
#[cfg(target_os = "linux")]
async fn send_all(udp: &UdpSocket, answers: &[(SocketAddr, Vec<u8>)]) {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    let addrs: Vec<SocketAddrAny> = answers
        .iter()
        .map(|(a, _)| SocketAddrAny::from(*a))
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = answers.iter().map(|(_, b)| [IoSlice::new(b)]).collect();
    let mut sent = 0;
    while sent < answers.len() {
        // The headers hold raw pointers (not `Send`): built and dropped
        // between awaits.
        let got = {
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = (sent..answers.len())
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut msgs: Vec<MMsgHdr<'_>> = addrs[sent..]
                .iter()
                .zip(&iovs[sent..])
                .zip(controls.iter_mut())
                .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
                .collect();
            udp.try_io(Interest::WRITABLE, || {
                rustix::net::sendmmsg(udp, &mut msgs, SendFlags::empty())
                    .map_err(std::io::Error::from)
            })
        };
        match got {
            Ok(n) => sent += n.max(1).min(answers.len() - sent),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if udp.writable().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, peer = %answers[sent].0, "dns: udp send failed");
                sent += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[tokio::test]
    async fn an_ipv4_socket_is_read_in_batches_and_stays_fragmentable() {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let before = rustix::net::sockopt::ip_mtu_discover(&udp).unwrap();
        let reader = Reader::for_socket(&udp).unwrap();
        if cfg!(target_os = "linux") {
            assert!(matches!(reader, Reader::Batched(_)));
        }
        assert_eq!(rustix::net::sockopt::ip_mtu_discover(&udp).unwrap(), before);
    }

    #[tokio::test]
    async fn an_ipv6_socket_is_read_one_datagram_at_a_time() {
        let Ok(udp) = UdpSocket::bind("[::1]:0").await else {
            return; // no IPv6 loopback here
        };
        assert!(matches!(Reader::for_socket(&udp), Ok(Reader::Single)));
    }
}
