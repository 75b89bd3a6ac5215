//! The IO shell around the SWIM core: one task owns the
//! [`Membership`] state machine and feeds it received datagrams, fired
//! timers and join requests; it carries out what the core asks (send a
//! packet as a QUIC datagram, schedule a timer) and publishes the member
//! list to [`Peers`](super::Peers) after every event.
//!
//! Datagrams start with the protocol version (`u16`, big-endian); packets of
//! another version or that the core refuses are counted and dropped. While
//! this node has no active member it re-announces itself to its seeds (the
//! bootstrap list, re-resolved each time, and remembered peers) every two
//! seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corro_replication::PROTOCOL_VERSION;
use corro_replication::membership::{Identity, Membership, Output, Timer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Inner;

/// Inputs queued for the SWIM task beyond this are dropped (packets) or
/// wait (timers, which must all be delivered).
pub(crate) const SWIM_QUEUE: usize = 4096;
/// How often a node with no active member re-announces itself.
const REJOIN_EVERY: Duration = Duration::from_secs(2);

pub(crate) enum SwimInput {
    Data(Bytes),
    Timer(Timer<Identity>),
    /// Ask the node at this address to join us (a peer that synced with us
    /// before SWIM told us of it: announcing makes it a member at once, so
    /// our next broadcast reaches it).
    Announce(SocketAddr),
}

/// Prefixes a SWIM packet with the protocol version.
fn datagram(packet: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(packet.len() + 2);
    b.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    b.extend_from_slice(packet);
    Bytes::from(b)
}

/// Hands a received datagram to the SWIM task (never blocks).
pub(crate) fn received(inner: &Inner, from: SocketAddr, data: Bytes) {
    metrics::counter!("corro_swim_packets_received_total").increment(1);
    if data.len() < 2 || data[..2] != PROTOCOL_VERSION.to_be_bytes() {
        metrics::counter!("corro_swim_packets_refused_total").increment(1);
        tracing::debug!(peer = %from, len = data.len(), "dropping a datagram of another protocol version");
        return;
    }
    if inner
        .swim
        .try_send(SwimInput::Data(data.slice(2..)))
        .is_err()
    {
        metrics::counter!("corro_swim_packets_dropped_total").increment(1);
    }
}

/// Runs the SWIM core until shutdown, then announces this node's departure.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut core: Membership,
    mut rx: mpsc::Receiver<SwimInput>,
    bootstrap: Vec<String>,
    shutdown: CancellationToken,
) {
    let mut rejoin = tokio::time::interval(REJOIN_EVERY);
    loop {
        let out = tokio::select! {
            _ = shutdown.cancelled() => break,
            input = rx.recv() => match input {
                None => break,
                Some(SwimInput::Data(data)) => match core.handle_data(&data) {
                    Ok(out) => out,
                    Err(e) => {
                        metrics::counter!("corro_swim_packets_refused_total").increment(1);
                        tracing::debug!(error = %e, "dropping a SWIM packet");
                        continue;
                    }
                },
                // Stale timers (from before an identity change) are refused
                // by the core; nothing to do.
                Some(SwimInput::Timer(t)) => core.handle_timer(t).unwrap_or_default(),
                Some(SwimInput::Announce(addr)) => core.announce(addr),
            },
            _ = rejoin.tick() => {
                if !core.active().is_empty() {
                    continue;
                }
                for b in &bootstrap {
                    if let Ok(addrs) = super::peers::resolve(b).await {
                        addrs.into_iter().for_each(|a| inner.peers.add_seed(a));
                    }
                }
                let mut out = Vec::new();
                for seed in inner.peers.seeds() {
                    out.extend(core.announce(seed));
                }
                out
            }
        };
        carry_out(&inner, out);
        inner.peers.set_members(core.members());
        metrics::gauge!("corro_swim_members_active").set(core.active().len() as f64);
        member_state_gauges(&core.members());
        metrics::gauge!("corro_swim_queue_depth").set((SWIM_QUEUE - inner.swim.capacity()) as f64);
    }
    // The goodbyes are queued here; `sync::run_rounds` waits for them to
    // leave before it closes the endpoint.
    let out = core.leave();
    let goodbyes = out.iter().filter(|o| matches!(o, Output::Send(..))).count();
    tracing::debug!(goodbyes, "leaving the cluster");
    carry_out(&inner, out);
}

/// `corro_cluster_members{state}`: members by SWIM state (this node excluded).
fn member_state_gauges(members: &[(Identity, corro_replication::membership::State)]) {
    use corro_replication::membership::State;
    let (mut alive, mut suspect, mut down) = (0u32, 0u32, 0u32);
    for (_, st) in members {
        match st {
            State::Alive => alive += 1,
            State::Suspect => suspect += 1,
            State::Down => down += 1,
        }
    }
    metrics::gauge!("corro_cluster_members", "state" => "alive").set(f64::from(alive));
    metrics::gauge!("corro_cluster_members", "state" => "suspect").set(f64::from(suspect));
    metrics::gauge!("corro_cluster_members", "state" => "down").set(f64::from(down));
}

fn carry_out(inner: &Arc<Inner>, out: Vec<Output>) {
    for o in out {
        match o {
            Output::Send(to, packet) => send(inner, to.addr, datagram(&packet)),
            Output::Schedule(after, timer) => {
                let tx = inner.swim.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(SwimInput::Timer(timer)).await;
                });
            }
            Output::Up(id) => {
                tracing::info!(peer = %id.addr, actor = %id.actor, "member up");
                metrics::counter!("corro_swim_member_up_total").increment(1);
                inner.sync_soon.notify_one();
            }
            Output::Down(id) => {
                tracing::warn!(peer = %id.addr, actor = %id.actor, "member down");
                metrics::counter!("corro_swim_member_down_total").increment(1);
                inner.peers.forget_connection(id.addr);
            }
            Output::Renamed { old, new } => {
                tracing::info!(peer = %new.addr, old = ?old, new = ?new, "member restarted");
                // A new incarnation: the connection we held went to the old
                // process (which would only time out after a while).
                inner.peers.forget_connection(new.addr);
                inner.sync_soon.notify_one();
            }
            Output::Rejoined(id) => {
                tracing::warn!(identity = ?id, "this node was declared down; rejoined");
            }
        }
    }
}

fn send(inner: &Arc<Inner>, to: SocketAddr, data: Bytes) {
    let task = inner.clone();
    inner.sends.spawn(async move {
        let inner = task;
        let Some(conn) = inner.peers.try_connection(&inner.endpoint, to).await else {
            metrics::counter!("corro_swim_packets_dropped_total").increment(1);
            return;
        };
        let result = conn.and_then(|c| Ok(c.send_datagram(data)?));
        match result {
            Ok(()) => metrics::counter!("corro_swim_packets_sent_total").increment(1),
            Err(e) => {
                metrics::counter!("corro_swim_packets_dropped_total").increment(1);
                tracing::debug!(peer = %to, error = %e, "SWIM packet not sent");
            }
        }
    });
}
