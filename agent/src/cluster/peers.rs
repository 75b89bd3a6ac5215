//! Known peers and cached QUIC connections to them.
//!
//! Until SWIM membership lands, a peer is known from the bootstrap list or
//! because it contacted this node (every frame names the sender's advertised
//! address and actor id). This node's own address is never a peer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use corro_store::ActorId;
use parking_lot::Mutex;
use rand::seq::IteratorRandom;

struct Peer {
    actor: Option<ActorId>,
    last_seen: Option<Instant>,
}

pub(crate) struct Peers {
    me: SocketAddr,
    /// Bumped whenever a peer is added or its actor id changes.
    generation: std::sync::atomic::AtomicU64,
    known: Mutex<BTreeMap<SocketAddr, Peer>>,
    conns: Mutex<BTreeMap<SocketAddr, quinn::Connection>>,
}

impl Peers {
    pub(crate) fn new(me: SocketAddr) -> Self {
        Peers {
            me,
            generation: Default::default(),
            known: Mutex::new(BTreeMap::new()),
            conns: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records a peer (with its actor id once it has spoken).
    pub(crate) fn add(&self, addr: SocketAddr, actor: Option<ActorId>) {
        if addr == self.me {
            return;
        }
        let mut known = self.known.lock();
        let p = known.entry(addr).or_insert_with(|| {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Peer {
                actor: None,
                last_seen: None,
            }
        });
        if let Some(a) = actor {
            if p.actor != Some(a) {
                tracing::info!(peer = %addr, actor = %a, "new peer");
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            p.actor = Some(a);
            p.last_seen = Some(Instant::now());
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Peers that have spoken, for persisting: (address, actor id).
    pub(crate) fn identified(&self) -> Vec<(SocketAddr, ActorId)> {
        self.known
            .lock()
            .iter()
            .filter_map(|(addr, p)| p.actor.map(|a| (*addr, a)))
            .collect()
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.known.lock().keys().copied().collect()
    }

    pub(crate) fn random(&self) -> Option<SocketAddr> {
        self.known.lock().keys().copied().choose(&mut rand::rng())
    }

    /// A live connection to `addr`, reusing the cached one.
    pub(crate) async fn connection(
        &self,
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> anyhow::Result<quinn::Connection> {
        if let Some(c) = self
            .conns
            .lock()
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
        {
            return Ok(c.clone());
        }
        // Server certificates name the node's IP (`corrosion tls server generate <IP>`).
        let conn = endpoint.connect(addr, &addr.ip().to_string())?.await?;
        self.conns.lock().insert(addr, conn.clone());
        Ok(conn)
    }

    pub(crate) fn forget_connection(&self, addr: SocketAddr) {
        self.conns.lock().remove(&addr);
    }

    /// Peers for `GET /v1/members`: "alive" once heard from in the last 30 s.
    pub(crate) fn members(&self) -> Vec<corro_client::Member> {
        let conns = self.conns.lock();
        self.known
            .lock()
            .iter()
            .map(|(addr, p)| corro_client::Member {
                actor_id: p.actor.map(|a| a.to_string()).unwrap_or_default(),
                addr: addr.to_string(),
                state: match p.last_seen {
                    Some(t) if t.elapsed().as_secs() < 30 => "alive",
                    Some(_) => "unreachable",
                    None => "unknown",
                }
                .into(),
                rtt_ms: conns.get(addr).map(|c| c.rtt().as_secs_f64() * 1000.0),
            })
            .collect()
    }
}

/// Resolves a bootstrap entry: `ip:port` or `host:port` (system resolver).
/// The reference's `host:port@dns-server` form uses the system resolver too,
/// with a warning.
pub(crate) async fn resolve(entry: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let host = match entry.split_once('@') {
        Some((host, server)) => {
            tracing::warn!(
                entry,
                server,
                "custom DNS servers for bootstrap are not supported yet; using the system resolver"
            );
            host
        }
        None => entry,
    };
    Ok(tokio::net::lookup_host(host).await?.collect())
}
