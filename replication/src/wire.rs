//! Peer messages and their encoding.
//!
//! Every frame is an [`Envelope`]: the protocol version, the sender's actor id
//! and advertised gossip address, and one [`Message`], encoded with postcard.
//! The version comes first and is checked before the rest is decoded, so a
//! peer speaking another version is refused cleanly (and, during a rolling
//! upgrade, newer nodes keep accepting this version). Frames are capped at
//! [`MAX_FRAME_BYTES`]; corrupt frames are errors for the caller to log and
//! drop, never panics.
//!
//! A frame may carry a [`Trailer`] after the envelope: decoders stop at the
//! envelope's end (earlier builds of this protocol version included), so
//! fields added there need no new version and mixed builds keep talking.

use std::net::SocketAddr;

use corro_store::{ActorId, Changeset};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::membership::ViewEntry;
use crate::sync::SyncState;

/// The protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest hop count a broadcast carries; one carrying it is not
/// forwarded (a small cluster's direct sends). Forwarded broadcasts count
/// up to one below and stay there (see [`crate::broadcast`]).
pub const MAX_HOPS: u8 = 6;

/// Largest frame accepted (a broadcast carries ~8 KiB chunks; a sync answer
/// is split into frames well under this).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// One frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub from: ActorId,
    /// Where the sender accepts gossip (its `external_addr` or `addr`).
    pub addr: SocketAddr,
    pub message: Message,
}

/// What peers say to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Freshly committed or applied changes, pushed on a uni stream.
    /// `hops` counts forwards so far; receivers that learn something new
    /// forward it while `hops` is under [`MAX_HOPS`].
    Changes { sets: Vec<Changeset>, hops: u8 },
    /// Opens a sync round: what the sender holds.
    SyncState(SyncState),
    /// A batch of the changesets a sync peer lacks.
    SyncChanges(Vec<Changeset>),
    /// Ends one direction of a sync round.
    SyncDone,
    /// Opens a digest round: a hash per bucket of the sender's state
    /// (see [`crate::digest`]). Not sent to peers known not to answer it
    /// (their trailer lacks [`Trailer::digest`], or a round with them
    /// failed).
    SyncDigest(Digest),
    /// The responder's answer to a digest: the buckets whose hashes
    /// differ, in increasing order. The round goes on over their actors
    /// only (empty: nothing differs, the initiator ends the round).
    SyncBuckets(Vec<u32>),
}

/// Optional fields after the envelope (see the module doc). Sent with
/// `SyncState`, `SyncDigest` and `SyncBuckets` (and with any frame a
/// member view rides on). Fields are only ever appended: a decoder reads the fields
/// it knows while bytes remain ([`decode_with_trailer`]), so a trailer from
/// an earlier build (fewer fields) or a later one (more) decodes here, and
/// builds that know only `schema` read it and ignore the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    /// The sender's replicated-schema fingerprint.
    pub schema: u64,
    /// The sender (a round's initiator joining, or refreshing its view:
    /// see `viewpull`) asks for the responder's whole member view with
    /// its answer.
    pub want_view: bool,
    /// The sender's whole member view, down members included, when asked
    /// (push-pull membership; see `Membership::view`).
    pub view: Option<Vec<ViewEntry>>,
    /// The view comes from a settled node (one that applied a settled
    /// peer's view, or has been connected a while on its own gossip): it
    /// names every member the cluster knows. A view from a node that just
    /// started is applied all the same but the asker asks again.
    pub view_settled: bool,
    /// The sender answers digest rounds ([`Message::SyncDigest`]). A frame
    /// without it (an older build) makes the receiver open its rounds with
    /// the sender by a whole state.
    pub digest: bool,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES} byte limit")]
    TooLarge(usize),
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes an envelope (the caller adds the length prefix).
pub fn encode(env: &Envelope) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_stdvec(env)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Encodes an envelope followed by a trailer.
pub fn encode_with_trailer(env: &Envelope, trailer: &Trailer) -> Result<Vec<u8>, WireError> {
    let mut bytes = postcard::to_stdvec(env)?;
    bytes.extend_from_slice(&postcard::to_stdvec(trailer)?);
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a frame and its trailer, if it has one (a malformed trailer is
/// ignored: the envelope alone is a valid frame).
pub fn decode_with_trailer(frame: &[u8]) -> Result<(Envelope, Option<Trailer>), WireError> {
    let env = decode(frame)?;
    let (_, rest) = postcard::take_from_bytes::<Envelope>(frame)?;
    Ok((env, decode_trailer(rest)))
}

/// Reads a trailer's fields in order while bytes remain (see [`Trailer`]);
/// `None` when there is none or its first field is malformed. A malformed
/// later field ends the reading: what came before it counts.
fn decode_trailer(bytes: &[u8]) -> Option<Trailer> {
    if bytes.is_empty() {
        return None;
    }
    let (schema, rest) = postcard::take_from_bytes::<u64>(bytes).ok()?;
    let mut t = Trailer {
        schema,
        ..Trailer::default()
    };
    let Ok((want_view, rest)) = postcard::take_from_bytes::<bool>(rest) else {
        return Some(t);
    };
    t.want_view = want_view;
    let Ok((view, rest)) = postcard::take_from_bytes::<Option<Vec<ViewEntry>>>(rest) else {
        return Some(t);
    };
    t.view = view;
    let Ok((settled, rest)) = postcard::take_from_bytes::<bool>(rest) else {
        return Some(t);
    };
    t.view_settled = settled;
    if let Ok((digest, _)) = postcard::take_from_bytes::<bool>(rest) {
        t.digest = digest;
    }
    Some(t)
}

/// Decodes a frame, checking size and version first.
pub fn decode(frame: &[u8]) -> Result<Envelope, WireError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(frame.len()));
    }
    // The version is the envelope's first field: read it alone before
    // trusting the rest of the layout.
    let (version, _) = postcard::take_from_bytes::<u16>(frame)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version(version));
    }
    Ok(postcard::from_bytes(frame)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(message: Message) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            from: ActorId([7; 16]),
            addr: "127.0.0.1:8787".parse().unwrap(),
            message,
        }
    }

    #[test]
    fn frames_round_trip() {
        let cs = Changeset::Cleared {
            actor: ActorId([1; 16]),
            versions: 3..=9,
        };
        for m in [
            Message::Changes {
                sets: vec![cs.clone()],
                hops: 1,
            },
            Message::SyncState(SyncState::default()),
            Message::SyncChanges(vec![cs]),
            Message::SyncDone,
            Message::SyncDigest(Digest::of(&SyncState::default(), 3, 11)),
            Message::SyncBuckets(vec![0, 2]),
        ] {
            let e = env(m);
            assert_eq!(decode(&encode(&e).unwrap()).unwrap(), e);
        }
    }

    #[test]
    fn trailers_are_optional_and_invisible_to_plain_decoding() {
        let e = env(Message::SyncState(SyncState::default()));
        let t = Trailer {
            schema: 0xfeed_beef,
            ..Trailer::default()
        };
        let with = encode_with_trailer(&e, &t).unwrap();
        // What an earlier build does with it: the envelope, nothing else.
        assert_eq!(decode(&with).unwrap(), e);
        assert_eq!(
            decode_with_trailer(&with).unwrap(),
            (e.clone(), Some(t.clone()))
        );
        let without = encode(&e).unwrap();
        assert_eq!(decode_with_trailer(&without).unwrap(), (e.clone(), None));
        let mut junk = without.clone();
        junk.push(0xff); // an unterminated varint: no trailer, still a frame
        assert_eq!(decode_with_trailer(&junk).unwrap(), (e, None));
    }

    #[test]
    fn other_versions_and_garbage_are_refused_without_panicking() {
        let mut e = env(Message::SyncDone);
        e.version = 2;
        let bytes = postcard::to_stdvec(&e).unwrap();
        assert!(matches!(decode(&bytes), Err(WireError::Version(2))));
        assert!(matches!(decode(&[]), Err(WireError::Malformed(_))));
        let good = encode(&env(Message::SyncDone)).unwrap();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut flipped = encode(&env(Message::Changes {
            sets: vec![],
            hops: 0,
        }))
        .unwrap();
        let last = flipped.len() - 1;
        flipped[last] = 0xff;
        let _ = decode(&flipped); // must not panic
        assert!(matches!(
            decode(&vec![0; MAX_FRAME_BYTES + 1]),
            Err(WireError::TooLarge(_))
        ));
    }

    /// The trailer of the build before the member view (`schema` alone).
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct SchemaOnly {
        schema: u64,
    }

    #[test]
    fn trailers_decode_across_builds_with_fewer_or_more_fields() {
        let e = env(Message::SyncState(SyncState::default()));
        let id = crate::membership::Identity {
            actor: ActorId([3; 16]),
            addr: "127.0.0.1:9000".parse().unwrap(),
            ts: 42,
        };
        let full = Trailer {
            schema: 7,
            want_view: true,
            view: Some(vec![ViewEntry {
                id,
                incarnation: 2,
                state: 2,
            }]),
            view_settled: true,
            digest: true,
        };
        let bytes = encode_with_trailer(&e, &full).unwrap();
        assert_eq!(decode_with_trailer(&bytes).unwrap().1, Some(full.clone()));
        // An earlier build reads the schema and ignores the rest.
        let (_, rest) = postcard::take_from_bytes::<Envelope>(&bytes).unwrap();
        let old: SchemaOnly = postcard::from_bytes(rest).unwrap();
        assert_eq!(old, SchemaOnly { schema: 7 });
        // Its trailer decodes here, with the newer fields at their defaults.
        let mut from_old = encode(&e).unwrap();
        from_old.extend(postcard::to_stdvec(&SchemaOnly { schema: 9 }).unwrap());
        let want = Trailer {
            schema: 9,
            ..Trailer::default()
        };
        assert_eq!(decode_with_trailer(&from_old).unwrap().1, Some(want));
        // A later build's extra field is ignored.
        let mut from_later = bytes.clone();
        from_later.extend([0x05, 0x01]);
        assert_eq!(decode_with_trailer(&from_later).unwrap().1, Some(full));
        // A truncated view: the fields before it count.
        let cut = &bytes[..bytes.len() - 4];
        let t = decode_with_trailer(cut).unwrap().1.unwrap();
        assert_eq!(
            (t.schema, t.want_view, t.view, t.view_settled),
            (7, true, None, false)
        );
        // The build before digest rounds: no digest flag, so rounds with
        // it stay whole-state rounds.
        let no_digest = &bytes[..bytes.len() - 1];
        let t = decode_with_trailer(no_digest).unwrap().1.unwrap();
        assert_eq!((t.view_settled, t.digest), (true, false));
        // A view without the settled flag (the first build that sent
        // views): applied, not settled.
        let no_flag = &bytes[..bytes.len() - 2];
        let t = decode_with_trailer(no_flag).unwrap().1.unwrap();
        assert_eq!((t.view.is_some(), t.view_settled), (true, false));
    }
}
