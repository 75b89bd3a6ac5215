//! Framing: streams carry length-prefixed frames (`u32` big-endian length,
//! then a postcard [`Envelope`], optionally a trailer). [`read_frame`] is
//! the one place peer input enters: size-capped, decoded, then validated
//! (`corro_replication::validate`) before anything uses it; a refused
//! message is counted by class and logged with the peer.

use super::*;

pub(super) fn envelope(inner: &Inner, message: Message) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        from: inner.store.actor_id(),
        addr: inner.advertised,
        message,
    }
}

pub(super) async fn write_frame(
    send: &mut quinn::SendStream,
    env: &Envelope,
) -> anyhow::Result<()> {
    write_bytes(send, &encode(env)?).await
}

pub(super) async fn write_bytes(send: &mut quinn::SendStream, bytes: &[u8]) -> anyhow::Result<()> {
    send.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    send.write_all(bytes).await?;
    metrics::counter!("corro_peer_sent_bytes_total", "stream" => "sync")
        .increment(bytes.len() as u64 + 4);
    Ok(())
}

/// Sends a message with a trailer: this node's schema fingerprint (read
/// from `SyncState`, `SyncDigest` and `SyncBuckets` only), whether it asks for the peer's
/// member view, its own view when the peer asked (left out, with a debug
/// line, if it would make the frame too large), and that it answers digest
/// rounds. Returns whether the view went out.
pub(super) async fn write_state(
    inner: &Inner,
    send: &mut quinn::SendStream,
    state: Message,
    want_view: bool,
    view: Option<(Vec<ViewEntry>, bool)>,
) -> anyhow::Result<bool> {
    let env = envelope(inner, state);
    let mut trailer = Trailer {
        schema: inner.store.schema_fingerprint(),
        want_view,
        view_settled: view.as_ref().is_some_and(|(_, settled)| *settled),
        view: view.map(|(entries, _)| entries),
        digest: true,
    };
    let with_view = trailer.view.is_some();
    let bytes = match encode_with_trailer(&env, &trailer) {
        Err(WireError::TooLarge(n)) if with_view => {
            tracing::debug!(
                bytes = n,
                "member view too large for this frame; sending the frame without it"
            );
            trailer.view = None;
            return write_bytes(send, &encode_with_trailer(&env, &trailer)?)
                .await
                .map(|()| false);
        }
        other => other?,
    };
    write_bytes(send, &bytes).await.map(|()| with_view)
}

/// Reads one frame and its trailer; `None` at a clean end of stream.
pub(super) async fn read_frame(
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
    metrics::counter!("corro_peer_received_bytes_total", "kind" => kind(&env.message))
        .increment(len as u64 + 4);
    // Hostile until validated: nothing of a message is used before this.
    if let Err(e) = corro_replication::validate::validate(&env) {
        metrics::counter!("corro_peer_messages_refused_total", "class" => e.class()).increment(1);
        if let Message::SyncState(_) | Message::SyncDigest(_) = env.message {
            metrics::counter!("corro_sync_states_refused_total").increment(1);
        }
        tracing::warn!(peer = %env.addr, actor = %env.from, class = e.class(), error = %e, "refusing a peer message");
        anyhow::bail!("refusing a message from {} ({}): {e}", env.addr, env.from);
    }
    Ok(Some((env, trailer)))
}

pub(super) use corro_replication::session::kind;
