//! Broadcast: every version this node commits goes to every active member
//! on a uni stream (at most [`BROADCAST_IN_FLIGHT`] sends at once, queue
//! bounded by [`BROADCAST_QUEUE`]; a full queue drops the version and wakes
//! sync, which delivers it). A receiver that learns something new forwards
//! it to a few random members while the hop count is under `MAX_HOPS`.
//! Those decisions (forward or not, to whom, with which hop count) are
//! `corro_replication::broadcast::Pending`, shared with the simulation;
//! this module moves the bytes.

use super::*;
pub(super) use corro_replication::broadcast::Pending;

/// Broadcast sends under way at most (beyond, the queue fills and drops).
pub(super) const BROADCAST_IN_FLIGHT: usize = 256;

/// Queued local versions waiting to be broadcast; beyond this they are
/// dropped (and counted): sync repairs.
pub(super) const BROADCAST_QUEUE: usize = 1024;

/// Queues a committed local version for broadcast (never blocks: when the
/// queue is full the version is dropped and sync delivers it).
pub(super) fn queue_local(inner: &Inner, sets: Vec<Changeset>) {
    if sets.is_empty() {
        return;
    }
    if inner.outgoing.try_send(Pending::local(sets)).is_err() {
        metrics::counter!("corro_gossip_broadcasts_dropped_total").increment(1);
        inner.sync_soon.notify_one();
    }
}

pub(super) async fn receive_changes(
    inner: &Arc<Inner>,
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<()> {
    while let Some((env, _)) = read_frame(recv).await? {
        match env.message {
            Message::Changes { sets, hops } => {
                let fresh = apply(inner, sets.clone(), "broadcast").await?;
                // Forwarded once per piece, whatever the store said (see
                // `corro_replication::broadcast`).
                let fresh = fresh && inner.forwarded.lock().first(&sets);
                if let Some(forward) = Pending::received(env.addr, hops, sets, fresh)
                    && inner.outgoing.try_send(forward).is_err()
                {
                    metrics::counter!("corro_gossip_broadcasts_dropped_total").increment(1);
                }
            }
            other => anyhow::bail!("unexpected {} on a broadcast stream", kind(&other)),
        }
    }
    Ok(())
}

pub(super) async fn broadcast_loop(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Pending<SocketAddr>>,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BROADCAST_IN_FLIGHT));
    loop {
        let pending = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
        };
        metrics::gauge!("corro_gossip_broadcast_queue_depth")
            .set((BROADCAST_QUEUE - inner.outgoing.capacity()) as f64);
        let members = inner.peers.active_addrs();
        let (targets, hops) = pending.targets(&members, &mut rand::rng());
        let sets = pending.sets;
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
                let mut connected = None;
                let result = async {
                    let conn = inner.peers.connection(&inner.endpoint, peer).await?;
                    connected = Some(conn.clone());
                    let mut send = conn.open_uni().await?;
                    for f in frames.iter() {
                        send.write_all(&(f.len() as u32).to_be_bytes()).await?;
                        send.write_all(f).await?;
                    }
                    send.finish()?;
                    let bytes: usize = frames.iter().map(|f| f.len() + 4).sum();
                    metrics::counter!("corro_peer_sent_bytes_total", "stream" => "broadcast")
                        .increment(bytes as u64);
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
                        // The connection this send used, if it had one (no
                        // connection: nothing to forget, and the peer's
                        // record of a failed attempt stays).
                        if let Some(conn) = connected {
                            inner.peers.forget_connection_if(peer, &conn);
                        }
                    }
                }
            });
        }
    }
}
