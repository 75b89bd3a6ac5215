//! Peer networking: one QUIC endpoint on `gossip.addr` carrying SWIM
//! membership (datagrams, [`swim`]), broadcasts of every committed local
//! version to active members (uni streams, forwarded a bounded number of
//! hops by receivers), and anti-entropy sync rounds with a few random members
//! (bi streams), jittered and backing off while there is nothing to repair.
//!
//! Write fence: a node restarting with a history of its own (and peers to
//! ask) accepts local writes only after its first sync round has answered,
//! or after [`FENCE_TIMEOUT`]. An OS crash can lose its last commits from the
//! WAL while peers already hold them; the round pulls them back (this node's
//! own versions included) before it numbers new writes, so a version number
//! never names two different writes.
//!
//! Members are whoever SWIM reports active; the bootstrap list and the peers
//! remembered from earlier runs (`__corro_members`, a host-local table) are
//! only used to join. The decisions (membership, what to pull) are the
//! sans-IO cores in `corro-replication`; this module only moves bytes.
//!
//! Streams carry length-prefixed frames (`u32` big-endian length, then a
//! postcard [`Envelope`]). A uni stream carries `Changes` frames. A sync round
//! is one bi stream: the initiator sends its `SyncState`; the responder sends
//! the changesets the initiator lacks (`SyncChanges`...), then its own
//! `SyncState`; the initiator answers `SyncDone`. With a peer not known to
//! lack them, a round opens with a `SyncDigest` instead, the responder names
//! the buckets that differ (`SyncBuckets`), and the states that follow cover
//! those buckets' actors only (`sync`, `corro_replication::digest`). (Rounds pull: each node
//! pulls what it lacks in its own rounds; a responder still accepts
//! `SyncChanges` before `SyncDone` from peers that push). The responder
//! streams from the store a change budget at a time; the initiator applies
//! in large batches cut at version boundaries, overlapping with receiving.
//!
//! Push-pull membership: a node that has applied no member view since it
//! started or was last alone asks for one in its round's first frame's trailer;
//! the responder adds its whole SWIM view (down members and itself
//! included) to the trailer of its first frame, and the initiator applies
//! it (without gossiping it on) before that frame's changes. A joiner thus
//! knows at once every member the cluster knows and which of them are
//! down, instead of taking a dead member for alive (or not knowing it)
//! until its own probes reach it; discovery counts membership as settled
//! from then on. Peers of earlier builds neither ask nor answer (they read
//! the trailer's first field only), and the joiner waits out the settling
//! time as before. Once settled, a node asks again now and then
//! ([`corro_replication::viewpull`]: every 20 s at 50 members, 60 s at
//! 1,000; one round asks at a time) and applies the first settled view
//! that comes back, so an entry its gossip missed (a member's `Down`, a
//! rejoin) is put right within about that time instead of when its own
//! probe cycle reaches that member; a down verdict about a member it holds
//! active is taken as a suspicion (told to the member, which refutes if
//! alive), so no node's local verdict spreads this way. A responder gives
//! one view per peer per [`VIEW_PEER_GAP`].
//!
//! Submodules, one job each: [`transport`] (endpoint, accept, dispatch),
//! [`frame`] (framing; the one place peer input is decoded and validated),
//! [`sync`] (both sides of a round, the periodic loop), [`broadcast`]
//! (sending and forwarding), [`fence`] (the write fence), [`members`]
//! (peers remembered across restarts), [`peers`] (the membership view and
//! connection cache) and [`swim`] (the IO of the shared SWIM driver).

mod broadcast;
mod fence;
mod frame;
mod members;
mod peers;
mod swim;
mod sync;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use anyhow::Context;
use corro_replication::digest::WholeStatePeers;
use corro_replication::membership::{Identity, Membership, ViewEntry, ViewKind};
use corro_replication::viewpull::{Take, ViewPull};
use corro_replication::{
    Envelope, MAX_FRAME_BYTES, Message, PROTOCOL_VERSION, SyncState, Trailer, WireError,
    decode_with_trailer, encode, encode_with_trailer, plan,
};
use corro_store::ActorId;
use corro_store::{Changeset, Store};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::config::GossipConfig;
use broadcast::*;
use fence::*;
use frame::*;
use members::*;
pub(crate) use peers::Peers;
use sync::*;
use transport::*;

struct Inner {
    /// Queue of the broadcast task (forwards are queued here too).
    outgoing: mpsc::Sender<Pending<SocketAddr>>,
    store: Store,
    endpoint: quinn::Endpoint,
    advertised: SocketAddr,
    peers: Peers,
    /// Queue of the SWIM task.
    swim: corro_replication::swim::SwimHandle,
    /// Wakes the sync loop early (a member joined, a broadcast was dropped).
    sync_soon: tokio::sync::Notify,
    /// `true` once local writes may be numbered (see the module doc).
    writes_open: watch::Sender<bool>,
    /// Peers a pull is under way from outside the periodic rounds (one at
    /// a time per peer).
    pulling: parking_lot::Mutex<std::collections::HashSet<SocketAddr>>,
    /// Broadcast pieces forwarded lately (each is forwarded once).
    forwarded: parking_lot::Mutex<corro_replication::broadcast::Forwarded>,
    /// The periodic rounds are running back to back (catching up a long
    /// history): extra pulls would fetch the same versions twice.
    catching_up: std::sync::atomic::AtomicBool,
    /// When a sync round last completed with any peer.
    last_sync: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Origin commit to merge here of the last version a peer sent, in ms.
    last_lag_ms: parking_lot::Mutex<Option<u64>>,
    /// Per peer: versions this node still lacked of the peer's heads after
    /// the last round with it (0: caught up with that peer).
    behind: parking_lot::Mutex<std::collections::HashMap<SocketAddr, u64>>,
    /// SWIM datagram sends in flight (waited for at shutdown, so the
    /// goodbyes leave before the endpoint closes).
    sends: tokio_util::task::TaskTracker,
    /// Becomes true once the cluster has shut down (goodbyes sent, member
    /// list saved, endpoint closed).
    stopped: watch::Sender<bool>,
    /// `true` once this node has caught up with the cluster: a sync round
    /// was answered and no version is missing (or there is no peer to ask).
    caught_up: watch::Sender<bool>,
    /// When this node asks the peers it syncs with for their whole member
    /// view: joining (from start and whenever it has no active member,
    /// until a settled view was applied or it has had active members for
    /// [`corro_replication::viewpull::SETTLED_AFTER_MS`]; the views it
    /// gives meanwhile say it is not settled), then a refresh now and
    /// then. The SWIM driver's IO updates it after every step (with
    /// milliseconds since [`Inner::started`]); see the module doc.
    view_pull: parking_lot::Mutex<ViewPull>,
    /// The clock [`Inner::view_pull`] counts from.
    started: std::time::Instant,
    /// When a member view last went to each peer (connection address).
    views_given: parking_lot::Mutex<std::collections::HashMap<SocketAddr, std::time::Instant>>,
    /// Whether a peer's whole member view has been applied since start
    /// (membership then counts as settled for discovery).
    view_applied: watch::Sender<bool>,
    /// Up to which member-state change the catalog has taken in (`None`:
    /// no consumer): see [`Cluster::member_changes_taken`].
    members_taken: watch::Sender<Option<u64>>,
    /// The last copy of this node's member view given to a peer, and when.
    view_cache: parking_lot::Mutex<Option<(std::time::Instant, Vec<ViewEntry>)>>,
    /// Peers whose last state, digest or bucket-list frame carried a schema fingerprint other than
    /// ours: actor -> (address, their fingerprint).
    schema_mismatches: parking_lot::Mutex<std::collections::BTreeMap<ActorId, (SocketAddr, u64)>>,
    /// Peers (gossip addresses) rounds open with a whole state with: known
    /// not to answer digest rounds (see [`WholeStatePeers`]).
    whole_state_peers: parking_lot::Mutex<WholeStatePeers<SocketAddr>>,
}

impl Inner {
    /// Notes a state, digest or bucket-list frame from the peer at `addr`
    /// with or without the digest flag (`dialed`: in a round this node
    /// opened with it).
    fn digest_seen(&self, addr: SocketAddr, digest: bool, dialed: bool) {
        let mut peers = self.whole_state_peers.lock();
        if peers.frame(addr, digest, dialed) {
            tracing::debug!(peer = %addr, "peer answers digest rounds");
        }
        metrics::gauge!("corro_sync_whole_state_peers").set(peers.len() as f64);
    }

    /// A round with the peer at `addr` failed: the next opens with a whole
    /// state (an older build fails digest rounds).
    fn round_failed(&self, addr: SocketAddr) {
        let mut peers = self.whole_state_peers.lock();
        peers.failed(addr);
        metrics::gauge!("corro_sync_whole_state_peers").set(peers.len() as f64);
    }

    /// Whether rounds with the peer at `addr` open with a digest.
    fn speaks_digest(&self, addr: SocketAddr) -> bool {
        self.whole_state_peers.lock().digest(&addr)
    }

    /// Notes the schema fingerprint a peer sent with a state, digest or bucket-list frame (none
    /// from builds that predate it: treated as unknown, not a mismatch).
    fn schema_seen(&self, env: &Envelope, schema: Option<u64>) {
        let ours = self.store.schema_fingerprint();
        let mut map = self.schema_mismatches.lock();
        match schema {
            Some(theirs) if theirs != ours => {
                let before = map.insert(env.from, (env.addr, theirs));
                if before.map(|b| b.1) != Some(theirs) {
                    tracing::warn!(
                        peer = %env.addr,
                        actor_id = %env.from,
                        theirs = %format!("{theirs:016x}"),
                        ours = %format!("{ours:016x}"),
                        "peer has a different replicated schema; changes naming tables or columns a node lacks wait there until the schema files match"
                    );
                }
            }
            _ => {
                if map.remove(&env.from).is_some() {
                    tracing::info!(peer = %env.addr, actor_id = %env.from, "peer schema matches ours again");
                }
            }
        }
        metrics::gauge!("corro_schema_mismatched_peers").set(map.len() as f64);
    }

    /// Applies the whole member view a round's responder sent (this node
    /// asked for it: see [`Inner::view_pull`]), waiting at most
    /// [`VIEW_APPLY_WAIT`] for the SWIM driver. A view from a settled
    /// responder ends joining, or the due refresh (taken once, so of
    /// several rounds answering at once one such view is applied); one
    /// from a responder that is not settled itself is applied while
    /// joining, for what it holds, and the next round asks again.
    async fn view_received(&self, from: SocketAddr, view: Vec<ViewEntry>, settled: bool) {
        let take = self.view_pull.lock().arrived(settled);
        if take == Take::Drop {
            return;
        }
        let (entries, down) = (view.len(), view.iter().filter(|e| e.state == 2).count());
        let kind = match take {
            Take::Refresh => ViewKind::Refresh,
            _ => ViewKind::Join,
        };
        let applied = tokio::time::timeout(VIEW_APPLY_WAIT, self.swim.apply_view(view, kind)).await;
        match applied {
            Ok(true) => {}
            Ok(false) => {
                // Refused (too long), or not queued: a joiner asks the
                // next peer (a refresh waits for the next one).
                if take == Take::Join {
                    self.view_pull.lock().refused();
                }
                tracing::debug!(peer = %from, entries, "a peer's member view was not applied");
                return;
            }
            Err(_) => {
                // Queued, and applied when the driver gets to it: not
                // asked again, but not counted as settled either.
                tracing::debug!(peer = %from, entries, "the SWIM driver is slow to apply a peer's member view");
                return;
            }
        }
        metrics::counter!("corro_swim_views_applied_total", "kind" => match take {
            Take::Refresh => "refresh",
            _ => "join",
        })
        .increment(1);
        // The catalog takes in the new states before this round's rows.
        let n = *self.peers.state_changes().borrow();
        let mut taken = self.members_taken.subscribe();
        if taken.borrow().is_some() {
            let _ = tokio::time::timeout(
                VIEW_APPLY_WAIT,
                taken.wait_for(|t| t.is_some_and(|t| t >= n)),
            )
            .await;
        }
        let before = *self.view_applied.borrow();
        if settled {
            self.view_applied.send_replace(true);
        }
        if !before && take == Take::Join {
            // Until a settled one: a few lines at start, one a round.
            tracing::info!(peer = %from, entries, down, settled, "applied a peer's member view");
        } else {
            tracing::debug!(peer = %from, entries, down, settled, "applied a peer's member view");
        }
    }

    /// Whether this round asks its responder for a member view (see
    /// [`ViewPull::ask`]: a joiner asks every round, a due refresh once
    /// per [`corro_replication::viewpull::REFRESH_RETRY_MS`]).
    fn ask_for_view(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.view_pull.lock().ask(now)
    }

    /// Notes that a member view went to `peer` (see [`Inner::view_for_peer`]).
    fn view_given(&self, peer: SocketAddr) {
        let now = std::time::Instant::now();
        let mut given = self.views_given.lock();
        if given.len() >= VIEWS_GIVEN_MAX {
            given.retain(|_, at| now.duration_since(*at) < VIEW_PEER_GAP);
        }
        if given.len() < VIEWS_GIVEN_MAX {
            given.insert(peer, now);
        }
    }

    /// This node's member view for a peer that asked, and whether this
    /// node is settled itself (it is not joining: see
    /// [`Inner::view_pull`]); `None` while it has no active member (its
    /// view would say everyone is down) or SWIM is slow. One copy serves
    /// every peer asking within [`VIEW_CACHE_FOR`]: asking costs the SWIM
    /// driver a pass over every member.
    async fn view_for_peer(&self, peer: SocketAddr) -> Option<(Vec<ViewEntry>, bool)> {
        {
            // One view per connection address per VIEW_PEER_GAP, and none
            // while the record of whom views went to is full: a peer
            // asking in every stream gets no more.
            let given = self.views_given.lock();
            let recent = given
                .get(&peer)
                .is_some_and(|at| at.elapsed() < VIEW_PEER_GAP);
            if recent || (given.len() >= VIEWS_GIVEN_MAX && !given.contains_key(&peer)) {
                metrics::counter!("corro_swim_views_withheld_total").increment(1);
                return None;
            }
        }
        let settled = self.view_pull.lock().settled();
        if !self.peers.any_active() {
            return None;
        }
        if let Some((at, view)) = &*self.view_cache.lock()
            && at.elapsed() < VIEW_CACHE_FOR
        {
            return Some((view.clone(), settled));
        }
        let view = tokio::time::timeout(VIEW_READ_WAIT, self.swim.view())
            .await
            .ok()
            .flatten()?;
        *self.view_cache.lock() = Some((std::time::Instant::now(), view.clone()));
        Some((view, settled))
    }
}

/// How long a responder waits for the SWIM driver's copy of its member
/// view (the answer goes without it after that).
const VIEW_READ_WAIT: Duration = Duration::from_millis(500);

/// A peer (by connection address) gets at most one member view per this
/// long: a joiner asks every round (about a second apart), a settled node
/// once per refresh, so an honest peer never hits it.
const VIEW_PEER_GAP: Duration = Duration::from_secs(2);

/// Peers [`Inner::view_given`] remembers at once (entries older than
/// [`VIEW_PEER_GAP`] are dropped when it fills; while it is full of recent
/// ones, new peers get no view).
const VIEWS_GIVEN_MAX: usize = 4096;

/// How long one copy of this node's member view answers peers asking.
const VIEW_CACHE_FOR: Duration = Duration::from_secs(1);

/// How long a sync round waits for the SWIM driver to apply a peer's
/// member view (the round goes on without it after that).
const VIEW_APPLY_WAIT: Duration = Duration::from_secs(1);

/// Replication health as this node sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncHealth {
    /// Most versions this node lacked of any active peer's heads after the
    /// last round with it.
    pub behind: u64,
    /// Since the last completed sync round (`None`: never).
    pub last_sync: Option<Duration>,
    pub members_down: usize,
    /// Whether there is anyone to sync with (seeds or members).
    pub has_peers: bool,
    pub broadcast_queue: usize,
    /// See [`Inner::last_lag_ms`].
    pub lag: Option<Duration>,
}

/// A handle to the running cluster tasks.
#[derive(Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Binds the endpoint and starts the accept, broadcast and sync tasks.
    pub(crate) async fn start(
        store: Store,
        config: &GossipConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Cluster> {
        let endpoint = endpoint(config)?;
        let local = endpoint.local_addr()?;
        tracing::info!("Starting peer API on udp/{local} (QUIC)");
        let advertised = config.external_addr.unwrap_or(local);
        let peers = Peers::new(advertised);
        // Peers met in earlier runs: a restarted node rejoins without bootstrap.
        let store_for_load = store.clone();
        let remembered =
            tokio::task::spawn_blocking(move || load_members(&store_for_load)).await??;
        for addr in remembered {
            peers.add_seed(addr);
        }
        for b in &config.bootstrap {
            match peers::resolve(b).await {
                Ok(addrs) => addrs.into_iter().for_each(|a| peers.add_seed(a)),
                Err(e) => {
                    tracing::warn!(bootstrap = %b, error = %e, "cannot resolve bootstrap peer (retrying while alone)")
                }
            }
        }
        let (tx, rx) = mpsc::channel(BROADCAST_QUEUE);
        let (swim_tx, swim_rx) = corro_replication::swim::queue();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let me = Identity {
            actor: store.actor_id(),
            addr: advertised,
            ts: started,
        };
        let core = Membership::new(me, rand::rng().random());
        let peers_empty = peers.seeds().is_empty();
        let fenced = store.head() > 0 && !peers_empty;
        metrics::gauge!("corro_cluster_writes_fenced").set(if fenced { 1.0 } else { 0.0 });
        if fenced {
            tracing::info!(
                head = store.head(),
                "holding local writes until a peer has answered a sync round"
            );
        }
        let inner = Arc::new(Inner {
            outgoing: tx,
            store,
            endpoint,
            advertised,
            peers,
            swim: swim_tx,
            sync_soon: tokio::sync::Notify::new(),
            writes_open: watch::channel(!fenced).0,
            caught_up: watch::channel(peers_empty).0,
            pulling: Default::default(),
            forwarded: Default::default(),
            catching_up: Default::default(),
            sends: tokio_util::task::TaskTracker::new(),
            last_sync: Default::default(),
            last_lag_ms: Default::default(),
            behind: Default::default(),
            stopped: watch::channel(false).0,
            schema_mismatches: Default::default(),
            whole_state_peers: Default::default(),
            view_pull: parking_lot::Mutex::new(ViewPull::new()),
            started: std::time::Instant::now(),
            views_given: Default::default(),
            view_applied: watch::channel(false).0,
            view_cache: Default::default(),
            members_taken: watch::channel(None).0,
        });
        if fenced {
            spawn_fence_timeout(&inner);
        }
        let swim_task = crate::tasks::spawn(swim::run(
            inner.clone(),
            core,
            swim_rx,
            config.bootstrap.clone(),
            shutdown.clone(),
        ));
        let cluster = Cluster {
            inner: inner.clone(),
        };
        // Every version this node commits goes out from where it is
        // committed, whoever wrote it (HTTP API, Consul bridge, node
        // identity): a writer cannot forget to replicate. Weak: the store
        // must not keep the cluster alive.
        let weak = Arc::downgrade(&inner);
        inner.store.on_local_commit(Arc::new(move |sets| {
            if let Some(inner) = weak.upgrade() {
                queue_local(&inner, sets);
            }
        }));

        spawn_accept(&inner, shutdown.clone());
        crate::tasks::spawn(broadcast_loop(inner.clone(), rx, shutdown.clone()));
        crate::tasks::spawn(run_rounds(inner.clone(), shutdown, swim_task));
        Ok(cluster)
    }

    /// Announces this node again to its seeds and every member it knows
    /// (down ones included) and starts a sync round: `corrosion cluster
    /// rejoin`, after a partition or a network change. How many addresses
    /// were asked.
    pub(crate) fn rejoin(&self) -> usize {
        let mut addrs: std::collections::BTreeSet<SocketAddr> =
            self.inner.peers.seeds().into_iter().collect();
        addrs.extend(self.inner.peers.known_addrs());
        addrs.remove(&self.inner.advertised);
        for a in &addrs {
            self.inner.swim.announce(*a);
        }
        self.inner.sync_soon.notify_one();
        tracing::info!(
            peers = addrs.len(),
            "rejoining: announced to seeds and known members"
        );
        addrs.len()
    }

    /// Whether a peer's whole member view has been applied since start:
    /// from then on this node knows every member the cluster knows,
    /// down ones included (discovery counts membership as settled).
    pub(crate) fn view_applied(&self) -> watch::Receiver<bool> {
        self.inner.view_applied.subscribe()
    }

    /// Starts a sync round now instead of at the next interval (after the
    /// store refused changes for a while, say).
    pub(crate) fn sync_now(&self) {
        self.inner.sync_soon.notify_one();
    }

    /// What `GET /v1/health` reports of replication (see [`SyncHealth`]).
    pub(crate) fn sync_health(&self) -> SyncHealth {
        let active: std::collections::BTreeSet<SocketAddr> =
            self.inner.peers.active_addrs().into_iter().collect();
        let behind = self
            .inner
            .behind
            .lock()
            .iter()
            .filter(|(a, _)| active.contains(a))
            .map(|(_, b)| *b)
            .max()
            .unwrap_or(0);
        let members = self.inner.peers.members();
        SyncHealth {
            behind,
            last_sync: self.inner.last_sync.lock().map(|t| t.elapsed()),
            members_down: members.iter().filter(|m| m.state == "down").count(),
            has_peers: !members.is_empty() || !self.inner.peers.seeds().is_empty(),
            broadcast_queue: BROADCAST_QUEUE - self.inner.outgoing.capacity(),
            lag: self.inner.last_lag_ms.lock().map(Duration::from_millis),
        }
    }

    /// Becomes true once this node has caught up with the cluster (see
    /// `Inner::caught_up`).
    pub(crate) fn caught_up(&self) -> watch::Receiver<bool> {
        self.inner.caught_up.subscribe()
    }

    /// Changes whenever a member's state changes.
    pub(crate) fn member_changes(&self) -> watch::Receiver<u64> {
        self.inner.peers.state_changes()
    }

    /// The consumer of [`Cluster::member_changes`] (discovery's catalog)
    /// has taken in the member states up to change `n`. A sync round that
    /// applied a peer's member view waits for this (briefly) before it
    /// applies that round's changes: rows naming a member the view says is
    /// down must not be served as if the member were alive meanwhile.
    pub(crate) fn member_changes_taken(&self, n: u64) {
        self.inner.members_taken.send_replace(Some(n));
    }

    /// The gossip address this node advertises.
    pub(crate) fn advertised(&self) -> SocketAddr {
        self.inner.advertised
    }

    pub(crate) fn members(&self) -> Vec<corro_client::Member> {
        self.inner.peers.members()
    }
}

/// What the Consul routes read of membership.
impl corro_consul_api::Membership for Cluster {
    fn members(&self) -> Vec<corro_consul_api::MemberInfo> {
        Cluster::members(self)
            .into_iter()
            .filter_map(|m| {
                Some(corro_consul_api::MemberInfo {
                    addr: m.addr.parse().ok()?,
                    down: m.state == "down",
                    actor_id: m.actor_id,
                })
            })
            .collect()
    }

    fn advertised(&self) -> SocketAddr {
        Cluster::advertised(self)
    }
}

impl Cluster {
    /// Active members whose replicated schema differs from ours, as last
    /// seen in a sync round: (actor, address, their fingerprint).
    pub(crate) fn schema_mismatches(&self) -> Vec<(ActorId, SocketAddr, u64)> {
        let active: std::collections::BTreeSet<ActorId> = self
            .inner
            .peers
            .active()
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        self.inner
            .schema_mismatches
            .lock()
            .iter()
            .filter(|(actor, _)| active.contains(actor))
            .map(|(actor, (addr, fp))| (*actor, *addr, *fp))
            .collect()
    }

    /// Waits (at most `limit`) until the cluster has shut down after the
    /// shutdown signal: goodbyes sent, member list saved, endpoint closed.
    pub(crate) async fn stopped(&self, limit: Duration) {
        let mut rx = self.inner.stopped.subscribe();
        if tokio::time::timeout(limit, rx.wait_for(|s| *s))
            .await
            .is_err()
        {
            tracing::warn!(?limit, "the cluster did not shut down in time");
        }
    }

    /// The write fence's state (true: local writes may be numbered), for
    /// writers outside this crate's tasks.
    pub(crate) fn writes_open_watch(&self) -> watch::Receiver<bool> {
        self.inner.writes_open.subscribe()
    }

    /// Waits until local writes may be numbered (see the module doc);
    /// returns at once except right after a restart.
    pub(crate) async fn writes_open(&self) {
        let mut open = self.inner.writes_open.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = open.wait_for(|o| *o).await;
    }
}
