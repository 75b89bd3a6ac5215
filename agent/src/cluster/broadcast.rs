//! Broadcast: every version this node commits goes to every active member
//! on a uni stream (at most [`BROADCAST_IN_FLIGHT`] sends at once, queue
//! bounded by [`BROADCAST_QUEUE`]; a full queue drops the version and wakes
//! sync, which delivers it). A receiver that learns something new forwards
//! it to a few random members while the hop count is under `MAX_HOPS`.

use super::*;

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
pub(super) struct Outgoing {
    sets: Vec<Changeset>,
    hops: u8,
    /// `None`: every known peer; `Some(sender)`: a few random peers but the sender.
    forward_from: Option<SocketAddr>,
}

pub(super) async fn receive_changes(
    inner: &Arc<Inner>,
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<()> {
    while let Some((env, _)) = read_frame(recv).await? {
        match env.message {
            Message::Changes { sets, hops } => {
                let fresh = apply(inner, sets.clone(), "broadcast").await?;
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

pub(super) async fn broadcast_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Outgoing>) {
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
            None => targets::local_targets(&members, &mut rand::rng()),
            Some(from) => (
                targets::forward_targets(&members, Some(from), hops, &mut rand::rng()),
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
                        inner.peers.forget_connection(peer);
                    }
                }
            });
        }
    }
}
