//! Anti-entropy sync rounds (one bi stream each), both sides.
//!
//! The initiator sends its `SyncState`; the responder (its input validated
//! in `frame::read_frame`) announces itself over SWIM to an initiator
//! membership has never seen, pulls at once from an initiator that holds
//! versions it lacks ([`pull_from`]), streams the changesets the initiator
//! lacks (read from the store a change budget at a time), then its own
//! state; the initiator applies in large batches cut at version boundaries
//! while it keeps receiving, and answers `SyncDone`. [`run_rounds`] is the
//! periodic loop: a few random members per round, jittered, backing off
//! while nothing moves, back to back while catching up a long history.

use super::*;
use corro_replication::SyncRequest;
use corro_replication::session::{APPLY_BATCH_CHANGES, Pull, Serve, Step};

/// Versions pulled per sync round at most (the rest next round).
pub(super) const SYNC_MAX_VERSIONS: u64 = 2_000;

/// Changesets received in one round from which the next round follows at
/// once (a round that brought this many was probably cut by the budget).
pub(super) const CATCH_UP_ROUND: usize = 1_000;

/// Changesets per `SyncChanges` frame.
pub(super) const FRAME_CHANGESETS: usize = 64;

/// Sync interval while rounds find things to repair (jittered ±50%).
pub(super) const SYNC_BASE: Duration = Duration::from_secs(1);

/// Peers each sync round exchanges bookkeeping with.
pub(super) const SYNC_PEERS: usize = 3;

/// Longest sync interval after idle rounds.
pub(super) const SYNC_MAX: Duration = Duration::from_secs(4);

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

/// Streams to a peer the changesets `requests` name (planned by the
/// session against the peer's state): the store is read a few versions at a time on a blocking thread
/// while frames go out, so memory stays bounded by one step and serving
/// overlaps with the peer's applying. Returns how many changesets were sent.
pub(super) async fn send_missing(
    inner: &Arc<Inner>,
    send: &mut quinn::SendStream,
    requests: Vec<SyncRequest>,
) -> anyhow::Result<usize> {
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Vec<Changeset>>>(4);
    let store = inner.store.clone();
    tokio::task::spawn_blocking(move || {
        for r in requests {
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

/// Applies a session's batches on a separate task, one after the other,
/// while the round goes on receiving.
pub(super) struct Applier {
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Applier {
    fn new() -> Self {
        Applier { running: None }
    }

    /// Starts applying `sets` once the previous batch is done.
    async fn apply(&mut self, inner: &Arc<Inner>, sets: Vec<Changeset>) -> anyhow::Result<()> {
        if let Some(previous) = self.running.take() {
            previous.await??;
        }
        let inner = inner.clone();
        self.running = Some(tokio::spawn(async move {
            apply(&inner, sets, "sync").await.map(|_| ())
        }));
        Ok(())
    }

    /// Waits for the last batch.
    async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(last) = self.running.take() {
            last.await??;
        }
        Ok(())
    }
}

/// Carries out a session's steps; true once the round is done.
async fn carry_out(
    inner: &Arc<Inner>,
    send: &mut quinn::SendStream,
    applier: &mut Applier,
    steps: Vec<Step>,
) -> anyhow::Result<bool> {
    for step in steps {
        match step {
            Step::Apply(sets) => applier.apply(inner, sets).await?,
            Step::Send(message) => {
                applier.finish().await?;
                write_frame(send, &envelope(inner, message)).await?;
            }
            Step::Done => {
                applier.finish().await?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

pub(super) fn state_of(inner: &Inner) -> SyncState {
    SyncState::from_books(&inner.store.books())
}

pub(super) async fn respond_sync(
    inner: &Arc<Inner>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let Some((first, trailer)) = read_frame(&mut recv).await? else {
        return Ok(());
    };
    inner.schema_seen(&first, trailer);
    let mine = state_of(inner);
    let (mut session, theirs, requests) =
        Serve::open(first.message, &mine, SYNC_MAX_VERSIONS, APPLY_BATCH_CHANGES)?;
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
    if !plan(&mine, &theirs, 1).is_empty() {
        pull_from(inner, first.addr);
    }
    send_missing(inner, &mut send, requests).await?;
    write_state(inner, &mut send, session.served(state_of(inner))).await?;
    let mut applier = Applier::new();
    loop {
        let Some((env, _)) = read_frame(&mut recv).await? else {
            // The initiator went away without `SyncDone`: nothing of ours
            // depends on the rest (rounds pull).
            applier.finish().await?;
            break;
        };
        let steps = session.on_message(env.message)?;
        if carry_out(inner, &mut send, &mut applier, steps).await? {
            break;
        }
    }
    metrics::counter!("corro_sync_changesets_received_total").increment(session.received() as u64);
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
pub(super) fn pull_from(inner: &Arc<Inner>, peer: SocketAddr) {
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
pub(super) async fn sync_with(inner: &Arc<Inner>, peer: SocketAddr) -> anyhow::Result<usize> {
    let conn = inner.peers.connection(&inner.endpoint, peer).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let (mut session, first) = Pull::open(state_of(inner), APPLY_BATCH_CHANGES);
    let mut theirs_heads = None;
    write_state(inner, &mut send, first).await?;
    let mut applier = Applier::new();
    loop {
        let (env, trailer) = read_frame(&mut recv)
            .await?
            .ok_or_else(|| anyhow::anyhow!("peer ended the sync round early"))?;
        if let Message::SyncState(state) = &env.message {
            inner.schema_seen(&env, trailer);
            theirs_heads = Some(state.heads.clone());
        }
        let steps = session.on_message(env.message)?;
        if carry_out(inner, &mut send, &mut applier, steps).await? {
            break;
        }
    }
    send.finish()?;
    let moved = session.received();
    if let Some(heads) = theirs_heads {
        // What we still lack of what the peer holds, now that the round's
        // changes are applied (a round moves at most SYNC_MAX_VERSIONS).
        let behind = lacking(&inner.store.books(), &heads);
        inner.behind.lock().insert(peer, behind);
        *inner.last_sync.lock() = Some(std::time::Instant::now());
    }
    metrics::counter!("corro_sync_changesets_received_total").increment(moved as u64);
    // Let the responder read everything before the stream goes away.
    let _ = recv.read_to_end(1024).await;
    metrics::counter!("corro_sync_rounds_total").increment(1);
    Ok(moved)
}

/// The periodic rounds until shutdown (see the module doc); then saves the
/// member list and closes the endpoint.
pub(super) async fn run_rounds(
    sync: Arc<Inner>,
    mut shutdown: watch::Receiver<bool>,
    swim: tokio::task::JoinHandle<()>,
) {
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
    shut_down(&sync, swim).await;
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
