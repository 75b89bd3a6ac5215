//! Anti-entropy sync rounds (one bi stream each), both sides.
//!
//! A round is `corro_replication::round` (the same driver the simulation
//! runs) over this module's [`QuicTransport`]/[`QuicRound`] (frames with
//! the trailer: schema fingerprint, the member view a joiner or a
//! refreshing node asks for and the responder's first frame carries, and
//! the flag saying a node answers digest rounds; input validated in
//! `frame::read_frame`) and
//! [`NodeStore`] (served a change budget at a time, applied with metrics).
//! Around it: the responder announces itself over SWIM to an initiator
//! membership has never seen and pulls at once from an initiator that holds
//! versions it lacks ([`pull_from`]); the initiator records how far behind
//! the peer's heads it still is. Rounds open with a digest
//! (`corro_replication::digest`), except with a peer known not to answer
//! them (its frames lack the trailer's flag, or the last round with it
//! failed): a whole state then, until a round's frames from it carry the
//! flag.
//! [`run_rounds`] is the periodic loop: a few
//! random members per round, jittered, backing off while nothing moves,
//! back to back while catching up a long history.

use super::*;
use corro_replication::round::{self, BoxError, Limits, RoundStore, RoundStream, Transport};
use corro_replication::session::{APPLY_BATCH_CHANGES, SessionError};

/// Versions pulled per sync round at most (the rest next round; rounds
/// follow each other at once while catching up). 10,000 rather than 2,000:
/// fewer round trips and state exchanges for a long history of small
/// versions, and with small apply batches the applying overlaps the
/// receiving within the round.
pub(super) const SYNC_MAX_VERSIONS: u64 = 10_000;

/// Changesets received in one round from which the next round follows at
/// once (a round that brought this many was probably cut by the budget).
pub(super) const CATCH_UP_ROUND: usize = 1_000;

/// Changesets per `SyncChanges` frame.
pub(super) const FRAME_CHANGESETS: usize = 64;

use corro_replication::schedule::{SYNC_BASE, SYNC_PEERS, jittered, next_interval};

/// How long the first sync round waits for SWIM to find an active member
/// (see `run_rounds`).
const FIRST_ROUND_WAIT: Duration = Duration::from_secs(1);

/// How many of a stream's frames a responder tries to attach its member
/// view to (a frame it would make too large goes without it).
const VIEW_TRIES: u8 = 3;

/// Changes read from the store per step while serving a sync round: a step
/// ends after the version that reaches it (one big version is one step;
/// thousands of single-row versions share one).
pub(super) const SERVE_CHANGES_PER_STEP: usize = 4096;

/// Applies changesets; true when any of them was new to this node.
/// `via` names the path for the lag metric: "broadcast" or "sync".
pub(super) async fn apply(
    inner: &Arc<Inner>,
    sets: Vec<Changeset>,
    via: &'static str,
) -> anyhow::Result<bool> {
    if sets.is_empty() {
        return Ok(false);
    }
    let n = sets.len();
    metrics::counter!("corro_gossip_changesets_received_total").increment(n as u64);
    // Origin commit times, to measure how long each version took to get here.
    let origin: std::collections::HashMap<(ActorId, u64), u64> = sets
        .iter()
        .filter_map(|s| match s {
            Changeset::Version {
                actor, version, ts, ..
            } => Some(((*actor, *version), *ts)),
            Changeset::Cleared { .. } => None,
        })
        .collect();
    let store = inner.store.clone();
    let t = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || store.apply(sets)).await??;
    metrics::histogram!("corro_store_apply_duration_seconds").record(t.elapsed().as_secs_f64());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut last_lag = None;
    for v in &out.applied {
        if let Some(ts) = origin.get(v) {
            // Clocks of two hosts may disagree a little: never negative.
            let lag = now_ms.saturating_sub(*ts);
            metrics::histogram!("corro_replication_lag_seconds", "via" => via)
                .record(lag as f64 / 1000.0);
            last_lag = Some(lag);
        }
    }
    if last_lag.is_some() {
        *inner.last_lag_ms.lock() = last_lag;
    }
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

/// The sizes of the agent's rounds.
fn limits() -> Limits {
    Limits {
        max_versions: SYNC_MAX_VERSIONS,
        batch_changes: APPLY_BATCH_CHANGES,
        read_budget: SERVE_CHANGES_PER_STEP,
        frame_changesets: FRAME_CHANGESETS,
    }
}

/// The node's store as a round uses it: served by change budget, applied
/// with the metrics of [`apply`].
#[derive(Clone)]
pub(super) struct NodeStore(pub Arc<Inner>);

impl RoundStore for NodeStore {
    fn state(&self) -> SyncState {
        state_of(&self.0)
    }

    fn read(
        &self,
        actor: ActorId,
        versions: std::ops::RangeInclusive<u64>,
        budget: usize,
    ) -> Result<(Vec<Changeset>, Option<u64>), BoxError> {
        let t = std::time::Instant::now();
        let from = *versions.start();
        let read = self.0.store.changes_for_budget(actor, versions, budget)?;
        tracing::debug!(actor = %actor, from, next = ?read.1, took = ?t.elapsed(), "read versions to serve");
        Ok(read)
    }

    async fn apply(&self, sets: Vec<Changeset>) -> Result<(), BoxError> {
        apply(&self.0, sets, "sync")
            .await
            .map(|_| ())
            .map_err(Into::into)
    }
}

/// One round's QUIC bi stream: frames with the schema trailer on
/// `SyncState`, every received message validated (`read_frame`).
pub(super) struct QuicRound {
    inner: Arc<Inner>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The initiator waits for the responder's end of stream before
    /// dropping it; the responder does not wait on the initiator.
    initiator: bool,
    /// The connection's remote address (responder side: whom a member
    /// view goes to, see [`Inner::view_for_peer`]).
    remote: Option<SocketAddr>,
    /// The address the last received message came from.
    from: Option<SocketAddr>,
    /// The initiator asked for this node's member view (responder side).
    peer_wants_view: bool,
    /// Frames this stream tried to attach the view to (responder side;
    /// [`VIEW_TRIES`] once it went out or cannot).
    view_tries: u8,
    /// This node asked for the responder's view and has not had it yet
    /// (initiator side): a view nobody asked for is ignored.
    view_asked: bool,
    /// The round opens with a digest (initiator side: the peer is not
    /// known not to answer them).
    digest: bool,
    /// The peer this node dialed (initiator side): what it learns of the
    /// peer's digest support is recorded under this address.
    dialed: Option<SocketAddr>,
    /// This side has sent its first frame (the initiator asks for the
    /// member view in its first frame only).
    sent_first: bool,
}

impl RoundStream for QuicRound {
    async fn send(&mut self, msg: Message) -> Result<(), BoxError> {
        // The responder's first frame, whatever it is, carries its member
        // view when the initiator asked: the initiator applies it before
        // the changes in that frame (a joiner must know a dead member is
        // down before the rows naming it arrive). A frame the view would
        // make too large goes without it, and the next one tries again
        // (up to VIEW_TRIES frames).
        let view = if !self.initiator && self.peer_wants_view && self.view_tries < VIEW_TRIES {
            self.view_tries += 1;
            let view = match self.remote {
                Some(remote) => self.inner.view_for_peer(remote).await,
                None => None,
            };
            if view.is_none() {
                // Alone, or SWIM too slow: no view this round.
                self.view_tries = VIEW_TRIES;
            }
            view
        } else {
            None
        };
        let first = !std::mem::replace(&mut self.sent_first, true);
        let sent = if matches!(
            msg,
            Message::SyncState(_) | Message::SyncDigest(_) | Message::SyncBuckets(_)
        ) {
            // The initiator asks for the view while it wants one, in the
            // round's first frame (a digest round sends a state later too).
            let want = self.initiator && first && self.inner.ask_for_view();
            self.view_asked |= want;
            write_state(&self.inner, &mut self.send, msg, want, view).await
        } else if view.is_some() {
            write_state(&self.inner, &mut self.send, msg, false, view).await
        } else {
            write_frame(&mut self.send, &envelope(&self.inner, msg))
                .await
                .map(|()| false)
        };
        if sent.as_ref().is_ok_and(|with_view| *with_view) {
            self.view_tries = VIEW_TRIES;
            if let Some(remote) = self.remote {
                self.inner.view_given(remote);
            }
        }
        sent.map(drop).map_err(Into::into)
    }

    async fn recv(&mut self) -> Result<Option<Message>, BoxError> {
        let Some((env, trailer)) = read_frame(&mut self.recv).await? else {
            return Ok(None);
        };
        // The initiator's side: the peer dialed is this node under another
        // of its addresses (a seed that names it: a NAT address, another
        // interface), or a copy of its database on another host. No round
        // with itself; the responder (this same node, then) serves the
        // first frame so that the initiator can tell.
        if let Some(dialed) = self.dialed
            && env.from == self.inner.store.actor_id()
        {
            if self.inner.peers.is_this_node(dialed) {
                tracing::warn!(peer = %dialed, actor_id = %env.from, "a seed answers with this node's own actor id (another address of this node, or a copy of its database elsewhere): no longer used as a seed");
            }
            return Err("the peer has this node's actor id".into());
        }
        if let Message::SyncState(_) | Message::SyncDigest(_) | Message::SyncBuckets(_) =
            &env.message
        {
            self.inner
                .schema_seen(&env, trailer.as_ref().map(|t| t.schema));
            // The initiator records what it learns under the address it
            // dialed (the one its next round uses). A responder only notes
            // an initiator that lacks the flag: the address is the
            // sender's claim, and taking a mark off on it would let any
            // peer point digest rounds at an older build.
            let flag = trailer.as_ref().is_some_and(|t| t.digest);
            match self.dialed {
                Some(dialed) => self.inner.digest_seen(dialed, flag, true),
                None => self.inner.digest_seen(env.addr, flag, false),
            }
            if !self.initiator {
                self.peer_wants_view |= trailer.as_ref().is_some_and(|t| t.want_view);
            }
        }
        if self.view_asked
            && let Some((view, settled)) = trailer.and_then(|t| Some((t.view?, t.view_settled)))
        {
            self.view_asked = false;
            self.inner.view_received(env.addr, view, settled).await;
        }
        self.from = Some(env.addr);
        Ok(Some(env.message))
    }

    async fn finish(&mut self) -> Result<(), BoxError> {
        self.send.finish()?;
        if self.initiator {
            // Let the responder read everything before the stream goes away.
            let _ = self.recv.read_to_end(1024).await;
        }
        Ok(())
    }

    fn digest(&self) -> bool {
        self.digest
    }
}

/// Rounds to peers over this node's QUIC endpoint and connection cache.
pub(super) struct QuicTransport(pub Arc<Inner>);

impl Transport for QuicTransport {
    type Peer = SocketAddr;
    type Stream = QuicRound;

    async fn open(&self, peer: SocketAddr) -> Result<QuicRound, BoxError> {
        let conn = self.0.peers.connection(&self.0.endpoint, peer).await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(QuicRound {
            inner: self.0.clone(),
            send,
            recv,
            initiator: true,
            remote: None,
            from: None,
            peer_wants_view: false,
            view_tries: 0,
            view_asked: false,
            digest: self.0.speaks_digest(peer),
            dialed: Some(peer),
            sent_first: false,
        })
    }
}

/// Counts and logs a round refused because the peer sent versions beyond
/// its own advertised heads, or broke a digest round (a bucket past the
/// count, a state about actors outside the round's buckets); other
/// failures are logged by the caller.
fn refused(e: &round::RoundError, peer: Option<SocketAddr>) {
    let class = match e {
        round::RoundError::Session(SessionError::BeyondHeads { .. }) => "beyond_heads",
        round::RoundError::Session(SessionError::Digest(_) | SessionError::OutsideBuckets(_)) => {
            "sync_digest"
        }
        _ => return,
    };
    metrics::counter!("corro_peer_messages_refused_total", "class" => class).increment(1);
    tracing::warn!(peer = ?peer, error = %e, class, "refusing a peer's sync round");
}

pub(super) fn state_of(inner: &Inner) -> SyncState {
    SyncState::from_books(&inner.store.books())
}

/// A round another node opened (`corro_replication::round::serve`), after
/// acting on the initiator's state.
pub(super) async fn respond_sync(
    inner: &Arc<Inner>,
    remote: SocketAddr,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let mut stream = QuicRound {
        inner: inner.clone(),
        send,
        recv,
        initiator: false,
        remote: Some(remote),
        from: None,
        peer_wants_view: false,
        view_tries: 0,
        view_asked: false,
        digest: false,
        dialed: None,
        sent_first: false,
    };
    let Some(first) = stream.recv().await.map_err(|e| anyhow::anyhow!(e))? else {
        return Ok(());
    };
    // This node's state, read once: for the decisions below and the plan.
    let mine = state_of(inner);
    if let (Message::SyncState(_) | Message::SyncDigest(_), Some(from)) = (&first, stream.from) {
        // A peer syncing with us that membership has not told us of yet,
        // or holds as down (it can reach us: a healed partition): ask it
        // to join, so the next broadcast reaches it (a cluster bootstrapped
        // as a chain otherwise learns of its far ends a second or two
        // late). (Not for an active member: a restarted member at a known
        // address rejoins through SWIM's own announce and renaming.)
        if !inner.peers.knows_active(from) && from != inner.advertised {
            inner.swim.announce(from);
        }
        // The peer holds versions we lack: pull them now rather than at a
        // later round that may pick other peers. (A digest round shows
        // them only once the round is under way: see below.)
        if let Message::SyncState(theirs) = &first
            && theirs.validate().is_ok()
            && !plan(&mine, theirs, 1).is_empty()
        {
            pull_from(inner, from);
        }
    }
    let served = round::serve(
        &mut stream,
        first,
        &mine,
        &NodeStore(inner.clone()),
        &limits(),
    )
    .await
    .inspect_err(|e| refused(e, stream.from))?;
    // A digest round showed the initiator's state for the differing
    // buckets only now: pull if it holds versions we lack there.
    if served.digest
        && let (Some(theirs), Some(from)) = (&served.theirs, stream.from)
        && !plan(&mine, theirs, 1).is_empty()
    {
        pull_from(inner, from);
    }
    metrics::counter!("corro_sync_changesets_sent_total").increment(served.sent as u64);
    metrics::counter!("corro_sync_changesets_received_total").increment(served.received as u64);
    metrics::counter!("corro_sync_rounds_total", "opening" => opening(served.digest)).increment(1);
    Ok(())
}

/// A sync round with `peer` on its own task, outside the periodic rounds:
/// with a peer whose sync state shows versions we lack. At most one at a
/// time per peer.
///
/// (Syncing at once with every member SWIM reports up was tried as well: it
/// kept a restarted member from rejoining in `discovery`'s kill -9 test,
/// and the pull below plus the announce made it unnecessary for formation.)
pub(super) fn pull_from(inner: &Arc<Inner>, peer: SocketAddr) {
    if inner.catching_up.load(std::sync::atomic::Ordering::Relaxed)
        || !inner.pulling.lock().insert(peer)
    {
        return;
    }
    let inner = inner.clone();
    crate::tasks::spawn(async move {
        // Connected first, so that a peer never reached is not taken for
        // one that fails digest rounds.
        let result = match inner.peers.connection(&inner.endpoint, peer).await {
            Ok(_) => Some(sync_with(&inner, peer).await),
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "pull from a peer: no connection");
                None
            }
        };
        inner.pulling.lock().remove(&peer);
        match result {
            Some(Ok(pull)) => {
                metrics::counter!("corro_sync_pulls_total").increment(1);
                tracing::debug!(peer = %peer, changesets = pull.changesets, "pulled from a peer that held more");
            }
            Some(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "pull from a peer failed");
                inner.peers.forget_connection(peer);
                inner.round_failed(peer);
            }
            None => {}
        }
    });
}

/// What one round with a peer brought.
pub(super) struct Pull {
    pub changesets: usize,
    /// The round was cut short by its version budget (it brought the
    /// budget's worth, or [`CATCH_UP_ROUND`] changesets from a responder
    /// whose budget may differ) and the peer still held versions this node
    /// lacks: more to come.
    pub cut: bool,
}

/// One sync round with `peer` (`corro_replication::round::pull_from`).
pub(super) async fn sync_with(inner: &Arc<Inner>, peer: SocketAddr) -> anyhow::Result<Pull> {
    let pulled = round::pull_from(
        &QuicTransport(inner.clone()),
        peer,
        &NodeStore(inner.clone()),
        &limits(),
    )
    .await
    .inspect_err(|e| refused(e, Some(peer)))?;
    let mut behind = 0;
    if let Some(theirs) = pulled.theirs {
        // What we still lack of what the peer holds, now that the round's
        // changes are applied (a round moves at most SYNC_MAX_VERSIONS).
        behind = lacking(&inner.store.books(), &theirs.heads);
        inner.behind.lock().insert(peer, behind);
        *inner.last_sync.lock() = Some(std::time::Instant::now());
    }
    metrics::counter!("corro_sync_changesets_received_total").increment(pulled.received as u64);
    metrics::counter!("corro_sync_rounds_total", "opening" => opening(pulled.digest)).increment(1);
    let full = pulled.versions >= SYNC_MAX_VERSIONS || pulled.received >= CATCH_UP_ROUND;
    Ok(Pull {
        changesets: pulled.received,
        cut: full && behind > 0,
    })
}

/// The `opening` label of a round's metrics.
fn opening(digest: bool) -> &'static str {
    if digest { "digest" } else { "state" }
}

/// The periodic rounds until shutdown (see the module doc); then saves the
/// member list and closes the endpoint.
pub(super) async fn run_rounds(
    sync: Arc<Inner>,
    shutdown: CancellationToken,
    swim: tokio::task::JoinHandle<()>,
) {
    // Nothing saved yet: the first round saves whoever is active by then.
    let mut persisted = Persisted::default();
    let mut interval = SYNC_BASE;
    // The first round starts at once (it opens the write fence), once SWIM
    // has found an active member if there are seeds to join through (for
    // at most FIRST_ROUND_WAIT): with none yet, the round would go to a
    // few seeds picked at random, perhaps remembered peers that are gone,
    // and the member view this node asks for could come a round later,
    // while it serves the rows on its disk with every member unknown.
    if !sync.peers.any_active() && sync.peers.has_seeds() {
        let mut changes = sync.peers.state_changes();
        let found = async {
            while !sync.peers.any_active() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::timeout(FIRST_ROUND_WAIT, found) => {}
        }
    }
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = sync.sync_soon.notified() => interval = SYNC_BASE,
        }
        metrics::gauge!("corro_gossip_members").set(sync.peers.active().len() as f64);
        persist_members(&sync, &mut persisted).await;
        let Round {
            moved,
            answered,
            cut,
        } = one_round(&sync).await;
        if answered {
            // Back off while rounds find nothing to repair.
            interval = next_interval(interval, moved);
        }
        metrics::gauge!("corro_sync_interval_seconds").set(interval.as_secs_f64());
        let streak = moved >= CATCH_UP_ROUND || cut;
        sync.catching_up
            .store(streak, std::sync::atomic::Ordering::Relaxed);
        wait = if streak {
            // Catching up (a round's budget was likely cut short):
            // the next round starts at once instead of a second
            // later, so a long history arrives at the speed of
            // serving and applying it.
            Duration::ZERO
        } else {
            jittered(interval, rand::rng().random_range(0.5..1.5))
        };
    }
    persist_members(&sync, &mut persisted).await;
    shut_down(&sync, swim).await;
}

/// How long a round waits, once a peer has answered it, for connections
/// to its other peers that are still being set up. A live peer on a LAN
/// connects in milliseconds (or is connected already); one that is still
/// connecting after this is most likely dead, and waiting out its
/// connection timeout would hold up the fence, `caught_up` and the next
/// round.
const ROUND_DIAL_GRACE: Duration = Duration::from_millis(500);

/// One periodic round: a few random members (or seeds), dialed at once,
/// then pulled from one after the other in the order their connections
/// came up (each pulls only what the ones before it did not already
/// bring). Dialing at once keeps a peer that died but is still held active
/// (a crash SWIM has not declared yet; a member a restarted node learned
/// from a first answer before its death was known) from holding up the
/// others for its connection timeout. Once a peer has answered, the round
/// waits [`ROUND_DIAL_GRACE`] more for connections still being set up and
/// leaves the rest to finish on their own (a connection that comes up is
/// cached for later rounds). Then, if any peer answered, it opens the write
/// fence and checks whether the node caught up: after every peer that
/// connected in time was pulled from, as the fence requires.
async fn one_round(sync: &Arc<Inner>) -> Round {
    use futures::stream::{FuturesUnordered, StreamExt};
    // A pull already under way with a peer covers it.
    let peers: Vec<SocketAddr> = sync
        .peers
        .random_few(SYNC_PEERS)
        .into_iter()
        .filter(|&peer| sync.pulling.lock().insert(peer))
        .collect();
    let mut dials: FuturesUnordered<_> = peers
        .into_iter()
        .map(|peer| {
            let inner = sync.clone();
            // A task, so the attempt goes on while another peer is pulled
            // from (the connection is cached for the round's stream).
            let dial = tokio::spawn(async move {
                let dialed = inner.peers.connection(&inner.endpoint, peer).await;
                if dialed.is_err() {
                    // At once, not when the round gets to it: a pull from
                    // this peer (it may connect to us meanwhile) is not
                    // held off by a round that will not pull from it.
                    inner.pulling.lock().remove(&peer);
                }
                dialed.map(drop)
            });
            async move { (peer, dial.await) }
        })
        .collect();
    let (mut moved, mut answered, mut cut) = (0, false, false);
    let mut grace_ends: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace_ends {
            None => dials.next().await,
            Some(at) => match tokio::time::timeout_at(at, dials.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((peer, dialed)) = next else {
            break;
        };
        match dialed {
            Ok(Ok(())) => {}
            // Never reached (no connection to forget; `pulling` was
            // cleared by the attempt): nothing is learned of its build,
            // so the next round with it still opens with a digest.
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "sync round: no connection");
                continue;
            }
            Err(e) => {
                sync.pulling.lock().remove(&peer);
                tracing::debug!(peer = %peer, error = %e, "sync round: the connection attempt ended");
                continue;
            }
        }
        let result = sync_with(sync, peer).await;
        sync.pulling.lock().remove(&peer);
        match result {
            Ok(pull) => {
                moved += pull.changesets;
                answered = true;
                // Cut by its budget: more to come. (Not any lag at all:
                // under steady writes a peer is always a little ahead.)
                cut |= pull.cut;
                grace_ends.get_or_insert_with(|| tokio::time::Instant::now() + ROUND_DIAL_GRACE);
            }
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "sync round failed");
                sync.peers.forget_connection(peer);
                // A peer rolled back to a build without digest rounds
                // fails them: the next round opens with a whole state.
                sync.round_failed(peer);
            }
        }
    }
    if !dials.is_empty() {
        // Still connecting after the grace: not pulled from this round.
        let inner = sync.clone();
        tokio::spawn(async move {
            while let Some((peer, dialed)) = dials.next().await {
                if !matches!(dialed, Ok(Err(_))) {
                    inner.pulling.lock().remove(&peer);
                }
            }
        });
    }
    if answered {
        round_answered(sync, cut).await;
    } else if !sync.peers.has_seeds() && !sync.peers.any_active() {
        // Every seed turned out to be this node itself: a node without
        // peers, which has nobody to wait for.
        sync.open_writes("no peer to ask: the only seeds were this node's own addresses");
        if !sync.caught_up.send_replace(true) {
            tracing::info!("caught up: no peer to ask");
        }
    }
    Round {
        moved,
        answered,
        cut,
    }
}

/// What a periodic round did.
struct Round {
    /// Changesets pulled.
    moved: usize,
    /// A peer answered.
    answered: bool,
    /// A pull was cut short by its budget with more left at the peer.
    cut: bool,
}

/// A round that a peer answered: opens the write fence (once), and says
/// the node caught up once nothing is missing from its books and the
/// round was not cut by its budget with versions left at a peer (a round
/// moves at most [`SYNC_MAX_VERSIONS`], and a cut history has no gaps to
/// show).
async fn round_answered(sync: &Arc<Inner>, cut: bool) {
    sync.open_writes("first sync round done");
    if *sync.caught_up.borrow() || cut {
        return;
    }
    let store = sync.store.clone();
    let complete =
        tokio::task::spawn_blocking(move || store.books().values().all(|b| b.needed().is_empty()))
            .await
            .unwrap_or(false);
    if complete {
        tracing::info!(head = sync.store.head(), "caught up with the cluster");
        sync.caught_up.send_replace(true);
    }
}

/// The end of the cluster: the SWIM task has queued its goodbyes; wait for
/// their sends and for each connection's datagram queue to drain (bounded),
/// then close the endpoint and wait for the close to reach peers.
async fn shut_down(inner: &Arc<Inner>, swim: tokio::task::JoinHandle<()>) {
    const LIMIT: Duration = Duration::from_secs(1);
    const EMPTY_SLACK: usize = 64;
    let started = std::time::Instant::now();
    let _ = tokio::time::timeout(LIMIT, swim).await;
    inner.sends.close();
    let _ = tokio::time::timeout(LIMIT, inner.sends.wait()).await;
    tracing::debug!(took = ?started.elapsed(), "SWIM goodbyes handed to the connections");
    let drained = async {
        for conn in inner.peers.open_connections().await {
            // quinn reports the buffer less its fixed bookkeeping even when
            // empty; any queued SWIM packet (data plus bookkeeping) is
            // larger than this slack.
            while conn.close_reason().is_none()
                && DATAGRAM_SEND_BUFFER
                    - conn.datagram_send_buffer_space().min(DATAGRAM_SEND_BUFFER)
                    > EMPTY_SLACK
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let flushed = tokio::time::timeout(LIMIT, drained).await.is_ok();
    tracing::info!(
        peers = inner.peers.active().len(),
        flushed,
        took = ?started.elapsed(),
        "goodbyes sent; closing the peer endpoint"
    );
    inner.endpoint.close(0u32.into(), b"shutting down");
    let _ = tokio::time::timeout(LIMIT, inner.endpoint.wait_idle()).await;
    tracing::debug!(took = ?started.elapsed(), "peer endpoint closed");
    inner.stopped.send_replace(true);
}

/// Versions up to `heads` (per actor) that `books` does not hold.
fn lacking(
    books: &std::collections::HashMap<ActorId, corro_store::ActorBooks>,
    heads: &std::collections::BTreeMap<ActorId, u64>,
) -> u64 {
    heads
        .iter()
        .map(|(actor, &head)| match books.get(actor) {
            None => head,
            Some(b) => b.lacking_in(1..=head),
        })
        .sum()
}
