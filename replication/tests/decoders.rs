//! Every decoder of peer input, fed arbitrary bytes and mutated valid
//! frames: it returns an error or a value, never panics, and whatever it
//! accepts passes through validation without panicking either. 10,000 cases
//! each in the normal suite; `PROPTEST_CASES=1000000 cargo test --release
//! -p corro-replication --test decoders` is the longer run.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::net::SocketAddr;
use std::sync::Arc;

use corro_replication::membership::{Identity, Membership};
use corro_replication::validate::validate;
use corro_replication::{
    Envelope, Message, PROTOCOL_VERSION, SyncState, decode_with_trailer, encode,
};
use corro_store::{ActorId, Change, Changeset, SqlValue, encode_key};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// A valid frame of each message kind.
fn valid_frames() -> Vec<Vec<u8>> {
    let actor = ActorId([3; 16]);
    let addr: SocketAddr = "127.0.0.1:8787".parse().unwrap();
    let change = |seq: u64| Change {
        table: Arc::from("todos"),
        pk: encode_key(&[SqlValue::Text(format!("id-{seq}"))]).into(),
        column: Some(Arc::from("title")),
        value: SqlValue::Text("hello".into()),
        col_version: 1,
        cl: 1,
        seq,
    };
    let sets = vec![
        Changeset::Version {
            actor,
            version: 7,
            seqs: 0..=2,
            last_seq: 2,
            ts: 1,
            changes: (0..3).map(change).collect(),
        },
        Changeset::Cleared {
            actor,
            versions: 1..=6,
        },
    ];
    let mut state = SyncState::default();
    state.heads.insert(actor, 9);
    state.needs.insert(actor, vec![2..=3, 5..=5]);
    let env = |message| Envelope {
        version: PROTOCOL_VERSION,
        from: actor,
        addr,
        message,
    };
    [
        Message::Changes {
            sets: sets.clone(),
            hops: 1,
        },
        Message::SyncChanges(sets),
        Message::SyncState(state),
        Message::SyncDone,
    ]
    .into_iter()
    .map(|m| encode(&env(m)).unwrap())
    .collect()
}

fn check(frame: &[u8]) {
    if let Ok((env, _)) = decode_with_trailer(frame) {
        let _ = validate(&env);
    }
}

#[test]
fn valid_frames_decode_and_validate() {
    for f in valid_frames() {
        let (env, _) = decode_with_trailer(&f).unwrap();
        validate(&env).unwrap();
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes);
        // With this build's version prefix, so decoding goes past it.
        let mut v = PROTOCOL_VERSION.to_le_bytes().to_vec();
        v.extend_from_slice(&bytes);
        check(&v);
    }

    #[test]
    fn mutated_valid_frames_never_panic_the_frame_decoder(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut f = valid_frames().swap_remove(which);
        for (at, byte) in flips {
            let i = at.index(f.len());
            f[i] = byte;
        }
        if truncate {
            f.truncate(cut.index(f.len() + 1));
        }
        check(&f);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_swim_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let me = Identity::placeholder("127.0.0.1:1".parse().unwrap());
        let mut m = Membership::new(me, 7);
        let _ = m.handle_data(&bytes);
    }
}
