//! The agent's IO for the SWIM driver ([`corro_replication::swim`], the
//! same driver the gossip library runs): packets go out as QUIC datagrams,
//! the member list goes to [`Peers`](super::Peers) after every step, and
//! members coming up or going down start syncs or drop connections.
//!
//! Datagrams start with the protocol version (`u16`, big-endian); packets of
//! another version or that the core refuses are counted and dropped. While
//! this node has no active member it re-announces itself to its seeds (the
//! bootstrap list, re-resolved each time, and up to [`ALONE_FANOUT`]
//! remembered peers: the [`ALONE_NEWEST`] most recently seen, the rest
//! picked at random) every two seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use corro_replication::PROTOCOL_VERSION;
use corro_replication::membership::{Identity, Membership, MembershipError, Output, State};
use corro_replication::swim::{SwimIo, SwimQueue};
use rand::seq::IteratorRandom;
use tokio_util::sync::CancellationToken;

use super::Inner;

/// How many remembered peers a node with no active member announces
/// itself to per attempt (besides every bootstrap address) ...
const ALONE_FANOUT: usize = 16;
/// ... of which the most recently seen (the rest are picked at random).
const ALONE_NEWEST: usize = 8;

/// Prefixes a SWIM packet with the protocol version.
fn datagram(packet: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(packet.len() + 2);
    b.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    b.extend_from_slice(packet);
    Bytes::from(b)
}

/// Hands a received datagram to the SWIM driver (never blocks).
pub(crate) fn received(inner: &Inner, from: SocketAddr, data: Bytes) {
    metrics::counter!("corro_swim_packets_received_total").increment(1);
    if data.len() < 2 || data[..2] != PROTOCOL_VERSION.to_be_bytes() {
        metrics::counter!("corro_swim_packets_refused_total").increment(1);
        tracing::debug!(peer = %from, len = data.len(), "dropping a datagram of another protocol version");
        return;
    }
    if !inner.swim.received(data.slice(2..)) {
        metrics::counter!("corro_swim_packets_dropped_total").increment(1);
    }
}

/// Runs the SWIM driver until shutdown, then announces this node's
/// departure (the goodbyes are queued when this returns; `run_rounds`
/// waits for them to leave before it closes the endpoint).
pub(crate) async fn run(
    inner: Arc<Inner>,
    core: Membership,
    queue: SwimQueue,
    bootstrap: Vec<String>,
    shutdown: CancellationToken,
) {
    let handle = inner.swim.clone();
    let leave = crate::tasks::spawn(async move {
        shutdown.cancelled().await;
        handle.leave().await;
        tracing::debug!("left the cluster");
    });
    let io = AgentIo {
        inner,
        bootstrap: Arc::new(bootstrap),
        resolving: Arc::default(),
    };
    corro_replication::swim::run(core, queue, io).await;
    leave.abort();
}

struct AgentIo {
    inner: Arc<Inner>,
    bootstrap: Arc<Vec<String>>,
    /// A re-announce (with its name lookups) is under way: a slow DNS
    /// server must not pile lookups up, one per tick.
    resolving: Arc<AtomicBool>,
}

impl SwimIo for AgentIo {
    fn send(&mut self, to: SocketAddr, packet: Bytes) {
        send(&self.inner, to, datagram(&packet));
    }

    fn step(&mut self, members: Vec<(Identity, State)>, events: Vec<Output>) {
        let active = members.iter().filter(|(_, s)| *s != State::Down).count();
        member_state_gauges(&members);
        // The view first, then the events: a sync round that a member
        // coming up starts must find that member (and save it among the
        // remembered peers), whichever thread it runs on.
        self.inner.peers.set_members(members);
        // Alone (at start, or cut off): the next peer to answer a sync
        // round is asked for its whole view; connected for a while without
        // any (a cluster started all at once, peers of earlier builds): its
        // own gossip has told it what there is to know; settled: a refresh
        // now and then.
        let now = self.inner.started.elapsed().as_millis() as u64;
        let jitter = rand::random::<f64>();
        self.inner.view_pull.lock().members(now, active, jitter);
        events.into_iter().for_each(|o| event(&self.inner, o));
        metrics::gauge!("corro_swim_members_active").set(active as f64);
        metrics::gauge!("corro_swim_queue_depth").set(self.inner.swim.queue_depth() as f64);
    }

    fn refused(&mut self, error: MembershipError) {
        metrics::counter!("corro_swim_packets_refused_total").increment(1);
        tracing::debug!(error = %error, "dropping a SWIM packet");
    }

    fn reconnect_tick(&mut self, announced: Option<SocketAddr>, candidates: usize) {
        metrics::gauge!("corro_swim_reconnect_candidates").set(candidates as f64);
        if let Some(to) = announced {
            tracing::debug!(peer = %to, candidates, "announcing to a member held as down");
            metrics::counter!("corro_swim_reconnects_total").increment(1);
        }
    }

    fn alone(&mut self) {
        // Resolving may take a while: off the driver's loop, one at a time.
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let (inner, bootstrap) = (self.inner.clone(), self.bootstrap.clone());
        let resolving = self.resolving.clone();
        crate::tasks::spawn(async move {
            let mut targets = std::collections::BTreeSet::new();
            for b in bootstrap.iter() {
                if let Ok(addrs) = super::peers::resolve(b).await {
                    for a in addrs {
                        inner.peers.add_seed(a);
                        targets.insert(a);
                    }
                }
            }
            // Every bootstrap address, and a few of the remembered peers
            // (there may be thousands, most of them gone): the most
            // recently seen ones, and a different random few each time.
            let remembered: Vec<SocketAddr> = inner
                .peers
                .seeds()
                .into_iter()
                .filter(|a| !targets.contains(a))
                .collect();
            let (newest, rest) = remembered.split_at(ALONE_NEWEST.min(remembered.len()));
            targets.extend(newest);
            targets.extend(
                rest.iter()
                    .choose_multiple(&mut rand::rng(), ALONE_FANOUT - ALONE_NEWEST),
            );
            tracing::debug!(seeds = ?targets, "no active member: announcing to seeds");
            for seed in targets {
                inner.swim.announce(seed);
            }
            resolving.store(false, Ordering::Release);
        });
    }
}

/// `corro_cluster_members{state}`: members by SWIM state (this node excluded).
fn member_state_gauges(members: &[(Identity, State)]) {
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

fn event(inner: &Arc<Inner>, o: Output) {
    match o {
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
        // Sends and timers are the driver's.
        Output::Send(..) | Output::Schedule(..) => {}
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
