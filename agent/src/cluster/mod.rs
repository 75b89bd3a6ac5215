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
//! `SyncState`; the initiator answers `SyncDone` (rounds pull: each node
//! pulls what it lacks in its own rounds; a responder still accepts
//! `SyncChanges` before `SyncDone` from peers that push). The responder
//! streams from the store a few versions at a time; the initiator applies
//! in large batches cut at version boundaries, overlapping with receiving.

mod peers;
mod swim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corro_replication::broadcast;
use corro_replication::membership::{Identity, Membership};
use corro_replication::{
    Envelope, MAX_FRAME_BYTES, MAX_HOPS, Message, PROTOCOL_VERSION, SyncState, Trailer,
    decode_with_trailer, encode, encode_with_trailer, plan,
};
use corro_store::ActorId;
use corro_store::{Changeset, Store};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::config::GossipConfig;
pub(crate) use peers::Peers;

/// Versions pulled per sync round at most (the rest next round).
const SYNC_MAX_VERSIONS: u64 = 2_000;
/// Changesets received in one round from which the next round follows at
/// once (a round that brought this many was probably cut by the budget).
const CATCH_UP_ROUND: usize = 1_000;
/// Changesets per `SyncChanges` frame.
const FRAME_CHANGESETS: usize = 64;
/// Broadcast sends under way at most (beyond, the queue fills and drops).
const BROADCAST_IN_FLIGHT: usize = 256;
/// Queued local versions waiting to be broadcast; beyond this they are
/// dropped (and counted): sync repairs.
const BROADCAST_QUEUE: usize = 1024;
/// Sync interval while rounds find things to repair (jittered ±50%).
const SYNC_BASE: Duration = Duration::from_secs(1);
/// Peers each sync round exchanges bookkeeping with.
const SYNC_PEERS: usize = 3;
/// Longest sync interval after idle rounds.
const SYNC_MAX: Duration = Duration::from_secs(4);
/// How long local writes wait at start-up for a first sync round before
/// they are accepted anyway (no peer answering).
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

struct Inner {
    /// Queue of the broadcast task (forwards are queued here too).
    outgoing: mpsc::Sender<Outgoing>,
    store: Store,
    endpoint: quinn::Endpoint,
    advertised: SocketAddr,
    peers: Peers,
    /// Queue of the SWIM task.
    swim: mpsc::Sender<swim::SwimInput>,
    /// Wakes the sync loop early (a member joined, a broadcast was dropped).
    sync_soon: tokio::sync::Notify,
    /// `true` once local writes may be numbered (see the module doc).
    writes_open: watch::Sender<bool>,
    /// Peers a pull is under way from outside the periodic rounds (one at
    /// a time per peer).
    pulling: parking_lot::Mutex<std::collections::HashSet<SocketAddr>>,
    /// The periodic rounds are running back to back (catching up a long
    /// history): extra pulls would fetch the same versions twice.
    catching_up: std::sync::atomic::AtomicBool,
    /// `true` once this node has caught up with the cluster: a sync round
    /// was answered and no version is missing (or there is no peer to ask).
    caught_up: watch::Sender<bool>,
    /// Peers whose last `SyncState` carried a schema fingerprint other than
    /// ours: actor -> (address, their fingerprint).
    schema_mismatches: parking_lot::Mutex<std::collections::BTreeMap<ActorId, (SocketAddr, u64)>>,
}

impl Inner {
    /// Notes the schema fingerprint a peer sent with its `SyncState` (none
    /// from builds that predate it: treated as unknown, not a mismatch).
    fn schema_seen(&self, env: &Envelope, trailer: Option<Trailer>) {
        let ours = self.store.schema_fingerprint();
        let mut map = self.schema_mismatches.lock();
        match trailer {
            Some(t) if t.schema != ours => {
                let before = map.insert(env.from, (env.addr, t.schema));
                if before.map(|b| b.1) != Some(t.schema) {
                    tracing::warn!(
                        peer = %env.addr,
                        actor_id = %env.from,
                        theirs = %format!("{:016x}", t.schema),
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

    /// Opens the write fence (once); `why` goes to the log.
    fn open_writes(&self, why: &str) {
        let opened = self
            .writes_open
            .send_if_modified(|open| !std::mem::replace(open, true));
        if opened {
            metrics::gauge!("corro_writes_fenced").set(0.0);
            tracing::info!(head = self.store.head(), "{why}; accepting local writes");
        }
    }
}

/// A handle to the running cluster tasks.
#[derive(Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

/// Queues a committed local version for broadcast (never blocks: when the
/// queue is full the version is dropped and sync delivers it).
fn queue_local(inner: &Inner, sets: Vec<Changeset>) {
    if sets.is_empty() {
        return;
    }
    let out = Outgoing {
        sets,
        hops: 0,
        forward_from: None,
    };
    if inner.outgoing.try_send(out).is_err() {
        metrics::counter!("corro_gossip_broadcasts_dropped_total").increment(1);
        inner.sync_soon.notify_one();
    }
}

/// A broadcast to send: to every peer (local commits) or forwarded to a few.
struct Outgoing {
    sets: Vec<Changeset>,
    hops: u8,
    /// `None`: every known peer; `Some(sender)`: a few random peers but the sender.
    forward_from: Option<SocketAddr>,
}

impl Cluster {
    /// Binds the endpoint and starts the accept, broadcast and sync tasks.
    pub(crate) async fn start(
        store: Store,
        config: &GossipConfig,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Cluster> {
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(config.idle_timeout_secs.max(1)))
                .context("gossip.idle_timeout_secs")?,
        ));
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        if let Some(mtu) = config.max_mtu {
            let mut mtu_discovery = quinn::MtuDiscoveryConfig::default();
            mtu_discovery.upper_bound(mtu);
            transport.mtu_discovery_config(Some(mtu_discovery));
            transport.initial_mtu(mtu.min(1200));
        }
        if config.disable_gso {
            transport.enable_segmentation_offload(false);
        }
        let transport = Arc::new(transport);
        let (mut server, mut client) = match (&config.tls, config.plaintext) {
            (Some(tls), false) => (
                crate::tls::server_config(tls)?,
                crate::tls::client_config(tls)?,
            ),
            _ => (
                quinn_plaintext::server_config(),
                quinn_plaintext::client_config(),
            ),
        };
        server.transport_config(transport.clone());
        let mut endpoint = quinn::Endpoint::server(server, config.addr)
            .with_context(|| format!("binding the gossip endpoint on udp/{}", config.addr))?;
        client.transport_config(transport);
        endpoint.set_default_client_config(client);
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
        let (swim_tx, swim_rx) = mpsc::channel(swim::SWIM_QUEUE);
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
        metrics::gauge!("corro_writes_fenced").set(if fenced { 1.0 } else { 0.0 });
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
            catching_up: Default::default(),
            schema_mismatches: Default::default(),
        });
        if fenced {
            let fence = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FENCE_TIMEOUT).await;
                if !*fence.writes_open.borrow() {
                    tracing::warn!(
                        "no peer answered a sync round in {FENCE_TIMEOUT:?}; writes lost from this node's WAL by an OS crash, if any, may have their version numbers reused"
                    );
                }
                fence.open_writes("write fence timed out");
            });
        }
        tokio::spawn(swim::run(
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

        let accept = inner.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    incoming = accept.endpoint.accept() => match incoming {
                        Some(incoming) => {
                            let inner = accept.clone();
                            tokio::spawn(async move {
                                if let Err(e) = serve_connection(inner, incoming).await {
                                    tracing::debug!(error = %e, "peer connection ended");
                                }
                            });
                        }
                        None => break,
                    }
                }
            }
        });
        tokio::spawn(broadcast_loop(inner.clone(), rx));
        let sync = inner.clone();
        tokio::spawn(async move {
            let mut persisted = sync.peers.generation();
            let mut interval = SYNC_BASE;
            // The first round starts at once (it opens the write fence).
            let mut wait = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(wait) => {}
                    _ = sync.sync_soon.notified() => interval = SYNC_BASE,
                }
                metrics::gauge!("corro_gossip_members").set(sync.peers.active().len() as f64);
                persist_members(&sync, &mut persisted).await;
                // A few peers, one after the other: each pulls only what
                // the ones before it did not already bring.
                let (mut moved, mut answered) = (0, false);
                for peer in sync.peers.random_few(SYNC_PEERS) {
                    // A pull already under way with this peer covers it.
                    if !sync.pulling.lock().insert(peer) {
                        continue;
                    }
                    let result = sync_with(&sync, peer).await;
                    sync.pulling.lock().remove(&peer);
                    match result {
                        Ok(n) => (moved, answered) = (moved + n, true),
                        Err(e) => {
                            tracing::debug!(peer = %peer, error = %e, "sync round failed");
                            sync.peers.forget_connection(peer);
                        }
                    }
                }
                if answered {
                    sync.open_writes("first sync round done");
                    if !*sync.caught_up.borrow() {
                        let store = sync.store.clone();
                        let complete = tokio::task::spawn_blocking(move || {
                            store.books().values().all(|b| b.needed().is_empty())
                        })
                        .await
                        .unwrap_or(false);
                        if complete {
                            tracing::info!(head = sync.store.head(), "caught up with the cluster");
                            sync.caught_up.send_replace(true);
                        }
                    }
                    // Back off while rounds find nothing to repair.
                    interval = if moved == 0 {
                        (interval * 2).min(SYNC_MAX)
                    } else {
                        SYNC_BASE
                    };
                }
                metrics::gauge!("corro_sync_interval_seconds").set(interval.as_secs_f64());
                let streak = moved >= CATCH_UP_ROUND;
                sync.catching_up
                    .store(streak, std::sync::atomic::Ordering::Relaxed);
                wait = if streak {
                    // Catching up (a round's budget was likely cut short):
                    // the next round starts at once instead of a second
                    // later, so a long history arrives at the speed of
                    // serving and applying it.
                    Duration::ZERO
                } else {
                    interval.mul_f64(rand::rng().random_range(0.5..1.5))
                };
            }
            persist_members(&sync, &mut persisted).await;
            // Let the SWIM task say goodbye first.
            tokio::time::sleep(Duration::from_millis(150)).await;
            sync.endpoint.close(0u32.into(), b"shutting down");
        });
        Ok(cluster)
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

    /// The gossip address this node advertises.
    pub(crate) fn advertised(&self) -> SocketAddr {
        self.inner.advertised
    }

    pub(crate) fn members(&self) -> Vec<corro_client::Member> {
        self.inner.peers.members()
    }

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

    /// Waits until local writes may be numbered (see the module doc);
    /// returns at once except right after a restart.
    pub(crate) async fn writes_open(&self) {
        let mut open = self.inner.writes_open.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = open.wait_for(|o| *o).await;
    }
}

/// Host-local table of peers met (not replicated, kept across restarts).
const MEMBERS_DDL: &str = "CREATE TABLE IF NOT EXISTS __corro_members (
    addr TEXT NOT NULL PRIMARY KEY,
    actor_id BLOB NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID";

fn load_members(store: &Store) -> anyhow::Result<Vec<SocketAddr>> {
    let rows: Vec<String> = store.local_write(|c| {
        c.execute_batch(MEMBERS_DDL)?;
        let mut stmt = c.prepare("SELECT addr FROM __corro_members")?;
        stmt.query_map([], |r| r.get(0))?.collect()
    })?;
    Ok(rows.into_iter().filter_map(|a| a.parse().ok()).collect())
}

/// Rewrites the members table when the peer set changed since `persisted`.
async fn persist_members(inner: &Arc<Inner>, persisted: &mut u64) {
    let generation = inner.peers.generation();
    if generation == *persisted {
        return;
    }
    let members = inner.peers.active();
    let store = inner.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        store.local_write(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute("DELETE FROM __corro_members", [])?;
            for (addr, actor) in &members {
                tx.execute(
                    "INSERT INTO __corro_members (addr, actor_id, updated_at) VALUES (?1, ?2, ?3)",
                    rusqlite::params![addr.to_string(), &actor.as_bytes()[..], now],
                )?;
            }
            tx.commit()
        })
    })
    .await;
    match result {
        Ok(Ok(())) => *persisted = generation,
        Ok(Err(e)) => tracing::warn!(error = %e, "could not save the member list"),
        Err(e) => tracing::warn!(error = %e, "saving the member list failed"),
    }
}

fn envelope(inner: &Inner, message: Message) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        from: inner.store.actor_id(),
        addr: inner.advertised,
        message,
    }
}

async fn write_frame(send: &mut quinn::SendStream, env: &Envelope) -> anyhow::Result<()> {
    write_bytes(send, &encode(env)?).await
}

async fn write_bytes(send: &mut quinn::SendStream, bytes: &[u8]) -> anyhow::Result<()> {
    send.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    send.write_all(bytes).await?;
    Ok(())
}

/// Sends this node's `SyncState`, with its schema fingerprint as trailer.
async fn write_state(inner: &Inner, send: &mut quinn::SendStream) -> anyhow::Result<()> {
    let env = envelope(inner, Message::SyncState(state_of(inner)));
    let trailer = Trailer {
        schema: inner.store.schema_fingerprint(),
    };
    write_bytes(send, &encode_with_trailer(&env, &trailer)?).await
}

/// Reads one frame and its trailer; `None` at a clean end of stream.
async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<Option<(Envelope, Option<Trailer>)>> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        anyhow::bail!("peer sent a frame of {len} bytes, over the {MAX_FRAME_BYTES} byte limit");
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await?;
    let (env, trailer) = decode_with_trailer(&buf)?;
    // Hostile until validated: nothing of a message is used before this.
    if let Err(e) = corro_replication::validate::validate(&env) {
        metrics::counter!("corro_peer_messages_refused_total", "class" => e.class()).increment(1);
        if let Message::SyncState(_) = env.message {
            metrics::counter!("corro_sync_states_refused_total").increment(1);
        }
        tracing::warn!(peer = %env.addr, actor = %env.from, class = e.class(), error = %e, "refusing a peer message");
        anyhow::bail!("refusing a message from {} ({}): {e}", env.addr, env.from);
    }
    Ok(Some((env, trailer)))
}

/// Applies changesets; true when any of them was new to this node.
async fn apply(inner: &Arc<Inner>, sets: Vec<Changeset>) -> anyhow::Result<bool> {
    if sets.is_empty() {
        return Ok(false);
    }
    let n = sets.len();
    metrics::counter!("corro_gossip_changesets_received_total").increment(n as u64);
    let store = inner.store.clone();
    let t = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || store.apply(sets)).await??;
    if !out.applied.is_empty() {
        tracing::debug!(
            versions = out.applied.len(),
            changes = out.changes,
            took = ?t.elapsed(),
            "applied remote changes"
        );
    }
    Ok(out.duplicates < n)
}

async fn serve_connection(inner: Arc<Inner>, incoming: quinn::Incoming) -> anyhow::Result<()> {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("corro_gossip_connections_refused_total").increment(1);
            tracing::warn!(peer = %remote, error = %e, "refused a peer connection");
            return Ok(());
        }
    };
    inner.peers.seen(remote);
    loop {
        tokio::select! {
            datagram = conn.read_datagram() => {
                swim::received(&inner, remote, datagram?);
            }
            uni = conn.accept_uni() => {
                let mut recv = uni?;
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = receive_changes(&inner, &mut recv).await {
                        metrics::counter!("corro_gossip_frames_refused_total").increment(1);
                        tracing::warn!(error = %e, "dropping a broadcast from a peer");
                    }
                });
            }
            bi = conn.accept_bi() => {
                let (send, recv) = bi?;
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = respond_sync(&inner, send, recv).await {
                        metrics::counter!("corro_gossip_frames_refused_total").increment(1);
                        tracing::warn!(error = %e, "sync round from a peer failed");
                    }
                });
            }
        }
    }
}

async fn receive_changes(inner: &Arc<Inner>, recv: &mut quinn::RecvStream) -> anyhow::Result<()> {
    while let Some((env, _)) = read_frame(recv).await? {
        match env.message {
            Message::Changes { sets, hops } => {
                let fresh = apply(inner, sets.clone()).await?;
                if fresh && hops < MAX_HOPS {
                    let out = Outgoing {
                        sets,
                        hops: hops + 1,
                        forward_from: Some(env.addr),
                    };
                    if inner.outgoing.try_send(out).is_err() {
                        metrics::counter!("corro_gossip_broadcasts_dropped_total").increment(1);
                    }
                }
            }
            other => anyhow::bail!("unexpected {} on a broadcast stream", kind(&other)),
        }
    }
    Ok(())
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Changes { .. } => "Changes",
        Message::SyncState(_) => "SyncState",
        Message::SyncChanges(_) => "SyncChanges",
        Message::SyncDone => "SyncDone",
    }
}

/// Changes read from the store per step while serving a sync round: a step
/// ends after the version that reaches it (one big version is one step;
/// thousands of single-row versions share one).
const SERVE_CHANGES_PER_STEP: usize = 4096;
/// Changes accumulated from a sync round before they are applied (applied
/// earlier only at a version boundary, so big versions skip the piece
/// buffer); the hard cap is four times this.
const APPLY_BATCH_CHANGES: usize = 200_000;

/// Streams to a peer in state `theirs` the changesets it lacks and this node
/// holds: the store is read a few versions at a time on a blocking thread
/// while frames go out, so memory stays bounded by one step and serving
/// overlaps with the peer's applying. Returns how many changesets were sent.
async fn send_missing(
    inner: &Arc<Inner>,
    send: &mut quinn::SendStream,
    theirs: SyncState,
) -> anyhow::Result<usize> {
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Vec<Changeset>>>(4);
    let store = inner.store.clone();
    tokio::task::spawn_blocking(move || {
        let mine = SyncState::from_books(&store.books());
        for r in plan(&theirs, &mine, SYNC_MAX_VERSIONS) {
            let (mut lo, hi) = (*r.versions.start(), *r.versions.end());
            loop {
                let t = std::time::Instant::now();
                let (sets, next) =
                    match store.changes_for_budget(r.actor, lo..=hi, SERVE_CHANGES_PER_STEP) {
                        Ok((sets, next)) => (Ok(sets), next),
                        Err(e) => (Err(e.into()), None),
                    };
                tracing::debug!(actor = %r.actor, from = lo, next = ?next, took = ?t.elapsed(), "read versions to serve");
                let failed = sets.is_err();
                if tx.blocking_send(sets).is_err() || failed {
                    return;
                }
                match next {
                    Some(n) if n <= hi => lo = n,
                    _ => break,
                }
            }
        }
    });
    let mut sent = 0;
    while let Some(sets) = rx.recv().await {
        let sets = sets?;
        sent += sets.len();
        for chunk in sets.chunks(FRAME_CHANGESETS) {
            write_frame(send, &envelope(inner, Message::SyncChanges(chunk.to_vec()))).await?;
        }
    }
    metrics::counter!("corro_sync_changesets_sent_total").increment(sent as u64);
    Ok(sent)
}

/// Collects the changesets received in a sync round and applies them in
/// large batches on a separate task (receiving continues meanwhile).
struct Receiver {
    pending: Vec<Changeset>,
    pending_changes: usize,
    received: usize,
    applier: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            pending: Vec::new(),
            pending_changes: 0,
            received: 0,
            applier: None,
        }
    }

    async fn add(&mut self, inner: &Arc<Inner>, sets: Vec<Changeset>) -> anyhow::Result<()> {
        self.received += sets.len();
        for set in sets {
            if let Changeset::Version { changes, .. } = &set {
                self.pending_changes += changes.len();
            }
            let boundary = match &set {
                Changeset::Version { seqs, last_seq, .. } => seqs.end() == last_seq,
                Changeset::Cleared { .. } => true,
            };
            self.pending.push(set);
            if (boundary && self.pending_changes >= APPLY_BATCH_CHANGES)
                || self.pending_changes >= 4 * APPLY_BATCH_CHANGES
            {
                self.flush(inner).await?;
            }
        }
        Ok(())
    }

    /// Starts applying what is pending (after the previous batch finished).
    async fn flush(&mut self, inner: &Arc<Inner>) -> anyhow::Result<()> {
        if let Some(previous) = self.applier.take() {
            previous.await??;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let sets = std::mem::take(&mut self.pending);
        self.pending_changes = 0;
        let inner = inner.clone();
        self.applier = Some(tokio::spawn(async move {
            apply(&inner, sets).await.map(|_| ())
        }));
        Ok(())
    }

    /// Applies the rest and waits; how many changesets arrived.
    async fn finish(mut self, inner: &Arc<Inner>) -> anyhow::Result<usize> {
        self.flush(inner).await?;
        if let Some(last) = self.applier.take() {
            last.await??;
        }
        metrics::counter!("corro_sync_changesets_received_total").increment(self.received as u64);
        Ok(self.received)
    }
}

fn state_of(inner: &Inner) -> SyncState {
    SyncState::from_books(&inner.store.books())
}

async fn respond_sync(
    inner: &Arc<Inner>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let Some((first, trailer)) = read_frame(&mut recv).await? else {
        return Ok(());
    };
    inner.schema_seen(&first, trailer);
    let Message::SyncState(theirs) = first.message else {
        anyhow::bail!(
            "a sync round must start with SyncState, got {}",
            kind(&first.message)
        );
    };
    // A peer syncing with us that membership has not told us of yet: ask
    // it to join, so the next broadcast reaches it (a cluster bootstrapped
    // as a chain otherwise learns of its far ends a second or two late).
    // (Only an address membership has never seen: a restarted member at a
    // known address rejoins through SWIM's own announce and renaming.)
    if !inner.peers.knows(first.addr) && first.addr != inner.advertised {
        let _ = inner.swim.try_send(swim::SwimInput::Announce(first.addr));
    }
    // The peer holds versions we lack: pull them now rather than at a
    // later round that may pick other peers.
    let mine = state_of(inner);
    if !plan(&mine, &theirs, 1).is_empty() {
        pull_from(inner, first.addr);
    }
    send_missing(inner, &mut send, theirs).await?;
    write_state(inner, &mut send).await?;
    let mut receiver = Receiver::new();
    while let Some((env, _)) = read_frame(&mut recv).await? {
        match env.message {
            Message::SyncChanges(sets) => receiver.add(inner, sets).await?,
            Message::SyncDone => break,
            other => anyhow::bail!("unexpected {} in a sync round", kind(&other)),
        }
    }
    receiver.finish(inner).await?;
    send.finish()?;
    metrics::counter!("corro_sync_rounds_total").increment(1);
    Ok(())
}

/// A sync round with `peer` on its own task, outside the periodic rounds:
/// with a peer whose sync state shows versions we lack. At most one at a
/// time per peer.
///
/// (Syncing at once with every member SWIM reports up was tried as well: it
/// kept a restarted member from rejoining in `discovery`'s kill -9 test,
/// and the pull below plus the announce made it unnecessary for formation.)
fn pull_from(inner: &Arc<Inner>, peer: SocketAddr) {
    if inner.catching_up.load(std::sync::atomic::Ordering::Relaxed)
        || !inner.pulling.lock().insert(peer)
    {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let result = sync_with(&inner, peer).await;
        inner.pulling.lock().remove(&peer);
        match result {
            Ok(n) => {
                metrics::counter!("corro_sync_pulls_total").increment(1);
                tracing::debug!(peer = %peer, changesets = n, "pulled from a peer that held more");
            }
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "pull from a peer failed");
                inner.peers.forget_connection(peer);
            }
        }
    });
}

/// One sync round with `peer`; how many changesets moved either way.
async fn sync_with(inner: &Arc<Inner>, peer: SocketAddr) -> anyhow::Result<usize> {
    let mut moved = 0;
    let conn = inner.peers.connection(&inner.endpoint, peer).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_state(inner, &mut send).await?;
    let mut receiver = Receiver::new();
    loop {
        let (env, trailer) = read_frame(&mut recv)
            .await?
            .ok_or_else(|| anyhow::anyhow!("peer ended the sync round early"))?;
        match env.message {
            Message::SyncChanges(sets) => receiver.add(inner, sets).await?,
            Message::SyncState(_) => {
                inner.schema_seen(&env, trailer);
                // Pull only: the peer pulls what it lacks in its own rounds
                // (pushing too would make two nodes that sync each other at
                // the same moment transfer everything twice).
                moved += receiver.finish(inner).await?;
                write_frame(&mut send, &envelope(inner, Message::SyncDone)).await?;
                send.finish()?;
                break;
            }
            other => anyhow::bail!("unexpected {} in a sync round", kind(&other)),
        }
    }
    // Let the responder read everything before the stream goes away.
    let _ = recv.read_to_end(1024).await;
    metrics::counter!("corro_sync_rounds_total").increment(1);
    Ok(moved)
}

async fn broadcast_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Outgoing>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BROADCAST_IN_FLIGHT));
    while let Some(Outgoing {
        sets,
        hops,
        forward_from,
    }) = rx.recv().await
    {
        metrics::gauge!("corro_gossip_broadcast_queue_depth")
            .set((BROADCAST_QUEUE - inner.outgoing.capacity()) as f64);
        let members = inner.peers.active_addrs();
        let (targets, hops) = match forward_from {
            None => broadcast::local_targets(&members, &mut rand::rng()),
            Some(from) => (
                broadcast::forward_targets(&members, Some(from), hops, &mut rand::rng()),
                hops,
            ),
        };
        if targets.is_empty() {
            continue;
        }
        // Encoded once for every target: frames of at most FRAME_CHANGESETS
        // chunks (~8 KiB each) on one uni stream.
        let frames: anyhow::Result<Vec<bytes::Bytes>> = sets
            .chunks(FRAME_CHANGESETS)
            .map(|chunk| {
                let env = envelope(
                    &inner,
                    Message::Changes {
                        sets: chunk.to_vec(),
                        hops,
                    },
                );
                Ok(bytes::Bytes::from(encode(&env)?))
            })
            .collect();
        let frames = match frames {
            Ok(f) => Arc::new(f),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a broadcast; sync will deliver it");
                continue;
            }
        };
        for peer in targets {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let inner = inner.clone();
            let frames = frames.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let result = async {
                    let conn = inner.peers.connection(&inner.endpoint, peer).await?;
                    let mut send = conn.open_uni().await?;
                    for f in frames.iter() {
                        send.write_all(&(f.len() as u32).to_be_bytes()).await?;
                        send.write_all(f).await?;
                    }
                    send.finish()?;
                    anyhow::Ok(())
                }
                .await;
                match result {
                    Ok(()) => {
                        metrics::counter!("corro_gossip_broadcasts_sent_total").increment(1);
                    }
                    Err(e) => {
                        metrics::counter!("corro_gossip_broadcasts_failed_total").increment(1);
                        tracing::debug!(peer = %peer, error = %e, "broadcast failed; sync will repair");
                        inner.peers.forget_connection(peer);
                    }
                }
            });
        }
    }
}
