//! Who the peers are, and cached QUIC connections to them.
//!
//! Membership comes from SWIM (`super::swim` publishes a snapshot of the
//! [`Membership`](corro_replication::membership::Membership) core after every
//! event): broadcasts go to active members, each sync round picks a few at
//! random.
//! Seeds (the bootstrap list and peers remembered from earlier runs) are only
//! used to join, and as sync targets while no member is known yet.
//!
//! Connections: this node sends only on connections it opened (uni streams
//! for broadcasts, bi streams for sync rounds, datagrams for SWIM) and reads
//! on connections it accepted, so each pair of nodes holds at most two. One
//! connection attempt per peer at a time; datagram senders skip a peer whose
//! connection is still being set up instead of queueing behind it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use corro_replication::membership::{Identity, State};
use corro_store::ActorId;
use parking_lot::Mutex;
use rand::seq::IteratorRandom;

/// How long a connection attempt may take before the peer is skipped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The cached connection to one peer, and a signal that aborts a
/// connection attempt under way when the peer shows signs of life (an
/// attempt started while it was down would otherwise block sends to it
/// until the attempt times out).
#[derive(Default)]
struct SlotInner {
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    seen: tokio::sync::Notify,
    /// When the last connection attempt failed (cleared by a success, or
    /// when the peer connects to this node).
    failed_at: Mutex<Option<std::time::Instant>>,
}

/// After a failed connection attempt, further attempts to that peer fail
/// at once for this long instead of each waiting its own
/// [`CONNECT_TIMEOUT`] in turn: the broadcasts queued behind the attempt
/// (each holding one of the node's in-flight sends) drain at once instead
/// of over minutes, until SWIM declares the peer down or it connects to
/// this node ([`Peers::seen`]).
const RETRY_AFTER: Duration = Duration::from_secs(2);

type Slot = Arc<SlotInner>;

/// How long a SWIM send waits for another task's connection attempt.
const SEND_WAIT: Duration = Duration::from_millis(50);

pub(crate) struct Peers {
    me: SocketAddr,
    /// Bumped whenever the set of active members changes.
    generation: AtomicU64,
    members: Mutex<BTreeMap<SocketAddr, (Identity, State)>>,
    /// Bumped whenever any member's state changes (the catalog follows).
    states: tokio::sync::watch::Sender<u64>,
    /// Addresses to join through, in the order added (remembered peers
    /// come most recently seen first).
    seeds: Mutex<(Vec<SocketAddr>, std::collections::HashSet<SocketAddr>)>,
    /// Addresses found to reach this node itself (never seeds again).
    aliases: Mutex<std::collections::HashSet<SocketAddr>>,
    conns: Mutex<BTreeMap<SocketAddr, Slot>>,
}

/// Most addresses remembered as this node's own ([`Peers::is_this_node`]).
const ALIASES_MAX: usize = 64;

impl Peers {
    pub(crate) fn new(me: SocketAddr) -> Self {
        Peers {
            me,
            generation: AtomicU64::new(0),
            members: Mutex::new(BTreeMap::new()),
            states: tokio::sync::watch::channel(0).0,
            seeds: Mutex::default(),
            aliases: Mutex::default(),
            conns: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds an address to join through.
    pub(crate) fn add_seed(&self, addr: SocketAddr) {
        // Held while the seed goes in: `is_this_node` takes the same two
        // locks in the same order, so an alias is never added back.
        let aliases = self.aliases.lock();
        if aliases.contains(&addr) {
            return;
        }
        let mut seeds = self.seeds.lock();
        if addr != self.me && seeds.1.insert(addr) {
            seeds.0.push(addr);
        }
    }

    /// `addr` answered with this node's own actor id: it is no longer a
    /// seed, and is not taken as one again (at most [`ALIASES_MAX`]
    /// remembered). True the first time.
    pub(crate) fn is_this_node(&self, addr: SocketAddr) -> bool {
        let mut aliases = self.aliases.lock();
        if aliases.contains(&addr) || aliases.len() >= ALIASES_MAX {
            return false;
        }
        aliases.insert(addr);
        let mut seeds = self.seeds.lock();
        if seeds.1.remove(&addr) {
            seeds.0.retain(|a| *a != addr);
        }
        true
    }

    /// Whether there is any address to join through.
    pub(crate) fn has_seeds(&self) -> bool {
        !self.seeds.lock().0.is_empty()
    }

    pub(crate) fn seeds(&self) -> Vec<SocketAddr> {
        self.seeds.lock().0.clone()
    }

    /// Replaces the membership snapshot (from the SWIM core).
    pub(crate) fn set_members(&self, members: Vec<(Identity, State)>) {
        let mut map = self.members.lock();
        let active = |m: &BTreeMap<SocketAddr, (Identity, State)>| -> Vec<(SocketAddr, ActorId)> {
            m.iter()
                .filter(|(_, (_, s))| *s != State::Down)
                .map(|(a, (id, _))| (*a, id.actor))
                .collect()
        };
        let before = active(&map);
        let next: BTreeMap<SocketAddr, (Identity, State)> = members
            .into_iter()
            .filter(|(id, _)| id.addr != self.me)
            .map(|(id, s)| (id.addr, (id, s)))
            .collect();
        if next != *map {
            self.states.send_modify(|n| *n += 1);
        }
        *map = next;
        if active(&map) != before {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Changes whenever any member's identity or state changes.
    pub(crate) fn state_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.states.subscribe()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Active members (alive or suspect): address and actor id.
    pub(crate) fn active(&self) -> Vec<(SocketAddr, ActorId)> {
        self.members
            .lock()
            .iter()
            .filter(|(_, (_, s))| *s != State::Down)
            .map(|(a, (id, _))| (*a, id.actor))
            .collect()
    }

    /// Every address membership knows, in any state.
    pub(crate) fn known_addrs(&self) -> Vec<SocketAddr> {
        self.members.lock().keys().copied().collect()
    }

    /// Whether membership knows `addr` in any state (down included).
    /// True when membership holds a member at `addr` as alive or suspect.
    pub(crate) fn knows_active(&self, addr: SocketAddr) -> bool {
        self.members
            .lock()
            .get(&addr)
            .is_some_and(|(_, s)| *s != State::Down)
    }

    /// Whether any member is active (alive or suspect).
    pub(crate) fn any_active(&self) -> bool {
        self.members.lock().values().any(|(_, s)| *s != State::Down)
    }

    pub(crate) fn active_addrs(&self) -> Vec<SocketAddr> {
        self.active().into_iter().map(|(a, _)| a).collect()
    }

    /// Up to `n` distinct random active members; while no member is
    /// known, up to `n` random seeds (a round dials its peers at once, so
    /// a seed that is gone costs the others nothing).
    pub(crate) fn random_few(&self, n: usize) -> Vec<SocketAddr> {
        let members = self.active_addrs();
        if members.is_empty() {
            self.seeds
                .lock()
                .0
                .iter()
                .copied()
                .choose_multiple(&mut rand::rng(), n)
        } else {
            members.into_iter().choose_multiple(&mut rand::rng(), n)
        }
    }

    fn slot(&self, addr: SocketAddr) -> Slot {
        self.conns.lock().entry(addr).or_default().clone()
    }

    /// A live connection to `addr`, reusing the cached one (waits for an
    /// attempt already under way).
    pub(crate) async fn connection(
        &self,
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> anyhow::Result<quinn::Connection> {
        let slot = self.slot(addr);
        let mut guard = slot.conn.lock().await;
        connect_in(&mut guard, &slot, endpoint, addr, true).await
    }

    /// Like [`Self::connection`], but gives up when another task's
    /// connection attempt to `addr` is still under way after a moment (SWIM
    /// packets are not worth queueing).
    pub(crate) async fn try_connection(
        &self,
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Option<anyhow::Result<quinn::Connection>> {
        let slot = self.slot(addr);
        let mut guard = tokio::time::timeout(SEND_WAIT, slot.conn.lock())
            .await
            .ok()?;
        // SWIM packets skip the fast failure after a failed attempt: they
        // do not queue, and a probe or ack to a peer that came back (and
        // kept its old connection to this node, so `seen` was not called)
        // must not be dropped for 2 s.
        Some(connect_in(&mut guard, &slot, endpoint, addr, false).await)
    }

    /// A peer connected to this node from `addr`: abort a connection attempt
    /// to it that may have started while it was down.
    pub(crate) fn seen(&self, addr: SocketAddr) {
        if let Some(slot) = self.conns.lock().get(&addr) {
            *slot.failed_at.lock() = None;
            slot.seen.notify_waiters();
        }
    }

    /// Drops the cached connection if it is still `conn` (a send on it
    /// failed; another task may have replaced it with a working one since).
    pub(crate) fn forget_connection_if(&self, addr: SocketAddr, conn: &quinn::Connection) {
        let mut conns = self.conns.lock();
        let Some(slot) = conns.get(&addr) else {
            return;
        };
        let Ok(mut c) = slot.conn.try_lock() else {
            // An attempt is under way: it replaces the connection anyway.
            return;
        };
        if c.as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            if let Some(old) = c.take() {
                old.close(0u32.into(), b"peer replaced");
            }
            drop(c);
            conns.remove(&addr);
        }
    }

    /// Drops the cached connection (the peer restarted, died or failed).
    pub(crate) fn forget_connection(&self, addr: SocketAddr) {
        if let Some(slot) = self.conns.lock().remove(&addr)
            && let Ok(mut c) = slot.conn.try_lock()
            && let Some(conn) = c.take()
        {
            conn.close(0u32.into(), b"peer replaced");
        }
    }

    /// The connections currently open (for the shutdown flush).
    pub(crate) async fn open_connections(&self) -> Vec<quinn::Connection> {
        let slots: Vec<Slot> = self.conns.lock().values().cloned().collect();
        let mut out = Vec::new();
        for s in slots {
            if let Some(c) = s.conn.lock().await.as_ref() {
                out.push(c.clone());
            }
        }
        out
    }

    /// Members for `GET /v1/members` and `corrosion cluster members`.
    pub(crate) fn members(&self) -> Vec<corro_client::Member> {
        let conns: BTreeMap<SocketAddr, Slot> = self.conns.lock().clone();
        self.members
            .lock()
            .iter()
            .map(|(addr, (id, state))| corro_client::Member {
                actor_id: id.actor.to_string(),
                addr: addr.to_string(),
                state: match state {
                    State::Alive => "alive",
                    State::Suspect => "suspect",
                    State::Down => "down",
                }
                .into(),
                rtt_ms: conns
                    .get(addr)
                    .and_then(|s| s.conn.try_lock().ok().and_then(|c| c.clone()))
                    .filter(|c| c.close_reason().is_none())
                    .map(|c| c.rtt().as_secs_f64() * 1000.0),
            })
            .collect()
    }
}

async fn connect_in(
    cached: &mut Option<quinn::Connection>,
    slot: &SlotInner,
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    fast_fail: bool,
) -> anyhow::Result<quinn::Connection> {
    if let Some(c) = cached.as_ref().filter(|c| c.close_reason().is_none()) {
        return Ok(c.clone());
    }
    if let Some(ago) = slot.failed_at.lock().map(|at| at.elapsed())
        && fast_fail
        && ago < RETRY_AFTER
    {
        anyhow::bail!("{addr} did not answer a connection attempt {ago:.1?} ago");
    }
    let failed = |e: anyhow::Error| {
        metrics::counter!("corro_gossip_connect_failures_total").increment(1);
        *slot.failed_at.lock() = Some(std::time::Instant::now());
        e
    };
    // Server certificates name the node's IP (`corrosion tls server generate <IP>`).
    let connecting = match endpoint.connect(addr, &addr.ip().to_string()) {
        Ok(c) => c,
        // Shutting down: not the peer's failure.
        Err(e @ quinn::ConnectError::EndpointStopping) => return Err(e.into()),
        Err(e) => return Err(failed(e.into())),
    };
    let conn = tokio::select! {
        c = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => c
            .map_err(|_| anyhow::anyhow!("no answer from {addr} within {CONNECT_TIMEOUT:?}"))
            .and_then(|c| Ok(c?))
            .map_err(failed)?,
        // Not a failure: the attempt is dropped for a fresh one.
        _ = slot.seen.notified() => anyhow::bail!("{addr} came back; connecting afresh"),
    };
    metrics::counter!("corro_gossip_connections_opened_total").increment(1);
    *slot.failed_at.lock() = None;
    *cached = Some(conn.clone());
    Ok(conn)
}

/// Resolves a bootstrap entry: `ip:port`, `host:port` (system resolver), or
/// the reference's `host:port@dns-server[:port]`, which asks that DNS server
/// (UDP, then TCP; port 53 unless given) instead of the system's.
pub(crate) async fn resolve(entry: &str) -> anyhow::Result<Vec<SocketAddr>> {
    match entry.split_once('@') {
        Some((host, server)) => resolve_via(host, server).await,
        None => Ok(tokio::net::lookup_host(entry).await?.collect()),
    }
}

/// `host:port` looked up through the DNS server at `server`.
async fn resolve_via(host_port: &str, server: &str) -> anyhow::Result<Vec<SocketAddr>> {
    use hickory_resolver::Resolver;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{host_port:?}: expected host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("{host_port:?}: bad port"))?;
    if let Ok(ip) = host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let server: SocketAddr = match server.parse() {
        Ok(s) => s,
        Err(_) => SocketAddr::new(
            server
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| anyhow::anyhow!("{server:?}: expected a DNS server ip[:port]"))?,
            53,
        ),
    };
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for c in &mut ns.connections {
        c.port = server.port();
    }
    let resolver = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .build()?;
    let name = if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    };
    let ips = resolver.lookup_ip(name.as_str()).await?;
    Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn member(port: u16, state: State) -> (Identity, State) {
        (
            Identity {
                actor: ActorId::random(),
                addr: addr(port),
                ts: 1,
            },
            state,
        )
    }

    /// A peer that did not answer a connection attempt is not dialed again
    /// for [`RETRY_AFTER`] (attempts fail at once), until it connects to
    /// this node. The "peer" is a UDP socket that never answers.
    #[tokio::test]
    async fn a_peer_that_did_not_answer_is_not_dialed_again_at_once() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config: crate::config::GossipConfig =
            toml::from_str("addr = \"127.0.0.1:0\"\nplaintext = true").unwrap();
        let endpoint = super::super::transport::endpoint(&config).unwrap();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = silent.local_addr().unwrap();
        let peers = Peers::new(endpoint.local_addr().unwrap());
        let first = peers.connection(&endpoint, dead).await.unwrap_err();
        assert!(first.to_string().contains("no answer"), "{first}");
        let second = peers.connection(&endpoint, dead).await.unwrap_err();
        assert!(
            second
                .to_string()
                .contains("did not answer a connection attempt"),
            "{second}"
        );
        // It connected to this node: the next attempt is a real one.
        peers.seen(dead);
        let third = peers.connection(&endpoint, dead).await.unwrap_err();
        assert!(third.to_string().contains("no answer"), "{third}");
    }

    #[test]
    fn sync_targets_are_a_few_distinct_active_members() {
        let peers = Peers::new(addr(1));
        peers.add_seed(addr(9));
        assert_eq!(peers.random_few(3), [addr(9)], "a seed while alone");
        for p in 10..14 {
            peers.add_seed(addr(p));
        }
        let seeds = peers.random_few(3);
        let distinct: BTreeSet<_> = seeds.iter().copied().collect();
        assert_eq!((seeds.len(), distinct.len()), (3, 3), "{seeds:?}");
        assert!(distinct.iter().all(|a| (9..14).contains(&a.port())));
        // A seed that turns out to be this node is dropped for good.
        assert!(peers.is_this_node(addr(10)));
        assert!(!peers.is_this_node(addr(10)), "once");
        peers.add_seed(addr(10));
        assert!(!peers.seeds().contains(&addr(10)));
        for _ in 0..20 {
            assert!(!peers.random_few(3).contains(&addr(10)));
        }
        peers.set_members(vec![
            member(1, State::Alive), // this node
            member(2, State::Alive),
            member(3, State::Suspect),
            member(4, State::Down),
        ]);
        let mut two = peers.random_few(3);
        two.sort();
        assert_eq!(
            two,
            [addr(2), addr(3)],
            "active members other than this node"
        );
        peers.set_members((2..12).map(|p| member(p, State::Alive)).collect());
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let few = peers.random_few(3);
            let distinct: BTreeSet<_> = few.iter().copied().collect();
            assert_eq!((few.len(), distinct.len()), (3, 3), "{few:?}");
            seen.extend(few);
        }
        assert!(seen.len() > 3, "the choice is random: {seen:?}");
    }
}
