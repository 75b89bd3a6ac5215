//! Checks on every decoded peer message, before any of it is used.
//!
//! Decoding proves a frame is well-formed postcard; [`validate`] proves it
//! is a message an honest peer could send: the sender's identity and
//! address usable, hop counts within [`MAX_HOPS`], versions non-zero and
//! under [`MAX_VERSION`], seq ranges ordered and inside their version,
//! cleared ranges ordered, names and keys of sane size, counts bounded, and
//! sync states as [`SyncState::validate`] requires. The work is proportional
//! to the message's size, never to the numbers inside it (a cleared range
//! over 2^62 versions costs two comparisons).
//!
//! The store still checks what only it can (primary keys decode, tables and
//! columns exist, causal lengths match the change kind); this module keeps
//! nonsense from reaching the range arithmetic and the writer at all.
//!
//! Out of scope: bounding changes by the sender's advertised heads (sync
//! answers arrive before the responder's state, and broadcasts carry none);
//! [`MAX_VERSION`] is the bound instead.

use std::net::SocketAddr;

use corro_store::{ActorId, Changeset};

use crate::digest::{InvalidDigest, MAX_DIGEST_BUCKETS, validate_list};
use crate::sync::{InvalidState, SyncState};
use crate::wire::{Envelope, MAX_HOPS, Message};

/// Highest version number accepted (far beyond any real history: 2^62).
pub const MAX_VERSION: u64 = 1 << 62;
/// Highest seq accepted within a version (a version's changes are counted
/// by seq; `api.max_changes` is far lower).
pub const MAX_SEQ: u64 = 1 << 40;
/// Changesets in one frame.
pub const MAX_SETS: usize = 200_000;
/// Bytes of a table or column name.
pub const MAX_NAME_BYTES: usize = 1024;
/// Bytes of an encoded primary key.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// Why a peer message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    #[error("sender actor id is all zeros")]
    NilSender,
    #[error("sender address {0} cannot be gossiped to")]
    Address(SocketAddr),
    #[error("hop count {0} over the maximum {MAX_HOPS}")]
    Hops(u8),
    #[error("{0} changesets in one frame, over {MAX_SETS}")]
    TooManySets(usize),
    #[error("version {version} of {actor} outside 1..={MAX_VERSION}")]
    Version { actor: ActorId, version: u64 },
    #[error(
        "cleared range {start}..={end} of {actor} is empty, starts at 0 or passes {MAX_VERSION}"
    )]
    Cleared {
        actor: ActorId,
        start: u64,
        end: u64,
    },
    #[error(
        "seq range {start}..={end} of {actor} v{version} is backwards or passes its last seq {last_seq}"
    )]
    Seqs {
        actor: ActorId,
        version: u64,
        start: u64,
        end: u64,
        last_seq: u64,
    },
    #[error("a change of {actor} v{version} has seq {seq} outside its piece")]
    ChangeSeq {
        actor: ActorId,
        version: u64,
        seq: u64,
    },
    #[error("a change of {actor} v{version} has a bad name or key: {what}")]
    Change {
        actor: ActorId,
        version: u64,
        what: &'static str,
    },
    #[error("sync state: {0}")]
    State(#[from] InvalidState),
    #[error("sync digest: {0}")]
    Digest(#[from] InvalidDigest),
}

impl InvalidMessage {
    /// A short label for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            InvalidMessage::NilSender => "nil_sender",
            InvalidMessage::Address(_) => "address",
            InvalidMessage::Hops(_) => "hops",
            InvalidMessage::TooManySets(_) => "too_many_sets",
            InvalidMessage::Version { .. } => "version",
            InvalidMessage::Cleared { .. } => "cleared_range",
            InvalidMessage::Seqs { .. } => "seq_range",
            InvalidMessage::ChangeSeq { .. } => "change_seq",
            InvalidMessage::Change { .. } => "change",
            InvalidMessage::State(_) => "sync_state",
            InvalidMessage::Digest(_) => "sync_digest",
        }
    }
}

/// Checks a decoded envelope (see the module doc).
pub fn validate(env: &Envelope) -> Result<(), InvalidMessage> {
    if env.from.0 == [0; 16] {
        return Err(InvalidMessage::NilSender);
    }
    if env.addr.port() == 0 || env.addr.ip().is_unspecified() || env.addr.ip().is_multicast() {
        return Err(InvalidMessage::Address(env.addr));
    }
    match &env.message {
        Message::Changes { sets, hops } => {
            if *hops > MAX_HOPS {
                return Err(InvalidMessage::Hops(*hops));
            }
            changesets(sets)
        }
        Message::SyncChanges(sets) => changesets(sets),
        Message::SyncState(state) => state_ok(state),
        Message::SyncDone => Ok(()),
        Message::SyncDigest(d) => Ok(d.validate()?),
        // The bucket count is the initiator's: the session checks the list
        // against it; here only its size and order.
        Message::SyncBuckets(list) => Ok(validate_list(list, MAX_DIGEST_BUCKETS)?),
    }
}

fn state_ok(state: &SyncState) -> Result<(), InvalidMessage> {
    state.validate()?;
    for (actor, &head) in &state.heads {
        if head > MAX_VERSION {
            return Err(InvalidMessage::Version {
                actor: *actor,
                version: head,
            });
        }
    }
    Ok(())
}

/// Checks changesets (exposed for callers that receive them otherwise).
pub fn changesets(sets: &[Changeset]) -> Result<(), InvalidMessage> {
    if sets.len() > MAX_SETS {
        return Err(InvalidMessage::TooManySets(sets.len()));
    }
    for set in sets {
        match set {
            Changeset::Cleared { actor, versions } => {
                let (start, end) = (*versions.start(), *versions.end());
                if start == 0 || start > end || end > MAX_VERSION {
                    return Err(InvalidMessage::Cleared {
                        actor: *actor,
                        start,
                        end,
                    });
                }
            }
            Changeset::Version {
                actor,
                version,
                seqs,
                last_seq,
                changes,
                ..
            } => {
                let (actor, version) = (*actor, *version);
                if version == 0 || version > MAX_VERSION {
                    return Err(InvalidMessage::Version { actor, version });
                }
                let (start, end) = (*seqs.start(), *seqs.end());
                if start > end || end > *last_seq || *last_seq > MAX_SEQ {
                    return Err(InvalidMessage::Seqs {
                        actor,
                        version,
                        start,
                        end,
                        last_seq: *last_seq,
                    });
                }
                for c in changes {
                    if !seqs.contains(&c.seq) {
                        return Err(InvalidMessage::ChangeSeq {
                            actor,
                            version,
                            seq: c.seq,
                        });
                    }
                    let what = if c.table.is_empty() || c.table.len() > MAX_NAME_BYTES {
                        "table name"
                    } else if c
                        .column
                        .as_ref()
                        .is_some_and(|n| n.is_empty() || n.len() > MAX_NAME_BYTES)
                    {
                        "column name"
                    } else if c.pk.is_empty() || c.pk.len() > MAX_KEY_BYTES {
                        "primary key size"
                    } else if c.cl == 0 {
                        "causal length 0"
                    } else {
                        continue;
                    };
                    return Err(InvalidMessage::Change {
                        actor,
                        version,
                        what,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Every class of invalid message, built from a valid one: for tests that
/// send each over a real connection (`tests/faults.rs`) and for the
/// property tests here.
pub fn invalid_examples(valid: &Envelope) -> Vec<(&'static str, Envelope)> {
    let with = |m: Message| Envelope {
        message: m,
        ..valid.clone()
    };
    let actor = valid.from;
    let version = |v: u64, seqs: std::ops::RangeInclusive<u64>, last: u64| Changeset::Version {
        actor,
        version: v,
        seqs,
        last_seq: last,
        ts: 0,
        changes: Vec::new(),
    };
    let mut state = SyncState::default();
    state.heads.insert(actor, 3);
    state
        .needs
        .insert(actor, vec![std::ops::RangeInclusive::new(5, 3)]);
    let mut huge_head = SyncState::default();
    huge_head.heads.insert(actor, u64::MAX);
    vec![
        (
            "nil_sender",
            Envelope {
                from: ActorId([0; 16]),
                ..valid.clone()
            },
        ),
        (
            "address",
            Envelope {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                ..valid.clone()
            },
        ),
        (
            "hops",
            with(Message::Changes {
                sets: Vec::new(),
                hops: MAX_HOPS + 1,
            }),
        ),
        (
            "version",
            with(Message::SyncChanges(vec![version(0, 0..=0, 0)])),
        ),
        (
            "version",
            with(Message::Changes {
                sets: vec![version(u64::MAX, 0..=0, 0)],
                hops: 0,
            }),
        ),
        (
            "cleared_range",
            with(Message::Changes {
                sets: vec![Changeset::Cleared {
                    actor,
                    versions: 1..=u64::MAX,
                }],
                hops: 0,
            }),
        ),
        (
            "cleared_range",
            with(Message::SyncChanges(vec![Changeset::Cleared {
                actor,
                versions: std::ops::RangeInclusive::new(9, 2),
            }])),
        ),
        (
            "seq_range",
            with(Message::SyncChanges(vec![version(
                1,
                std::ops::RangeInclusive::new(5, 2),
                9,
            )])),
        ),
        (
            "seq_range",
            with(Message::SyncChanges(vec![version(1, 0..=9, 3)])),
        ),
        ("sync_state", with(Message::SyncState(state))),
        ("version", with(Message::SyncState(huge_head))),
        (
            "sync_digest",
            with(Message::SyncDigest(crate::digest::Digest {
                buckets: 4,
                salt: 0,
                hashes: vec![[0; 8]; 3],
            })),
        ),
        ("sync_digest", with(Message::SyncBuckets(vec![3, 1]))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Envelope {
        Envelope {
            version: crate::PROTOCOL_VERSION,
            from: ActorId([7; 16]),
            addr: SocketAddr::from(([127, 0, 0, 1], 8787)),
            message: Message::SyncDone,
        }
    }

    #[test]
    fn every_invalid_example_is_refused_with_its_class() {
        assert_eq!(validate(&valid()), Ok(()));
        for (class, env) in invalid_examples(&valid()) {
            let e = validate(&env).expect_err(class);
            assert_eq!(e.class(), class, "{e}");
        }
    }
}
