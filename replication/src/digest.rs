//! Digests of a sync state: the opening of a round in bytes that do not
//! grow with every actor.
//!
//! A whole [`SyncState`] names every actor the node has heard from (~19
//! bytes each), and a round opens with one each way: at 10,000 agents that
//! is 190 KB per exchange, most of the sync traffic of a fleet at rest.
//! Two nodes of a settled cluster hold the same versions of nearly every
//! actor, so a round now opens with a [`Digest`] instead: the actors are
//! spread over buckets by a hash of their id ([`bucket_of`]), and each
//! bucket is summarised by one 8-byte hash of its actors' heads and needed
//! ranges ([`Digest::of`]). The responder computes its own digest with the
//! same bucket count, answers with the buckets that differ
//! ([`Digest::differing`]), and the round goes on as a whole-state round
//! restricted to the actors of those buckets ([`SyncState::restrict`]): the
//! initiator sends its state for them, the responder plans and serves what
//! it lacks there and ends with its own state for them. Equal buckets hold
//! equal states (up to a 64-bit hash collision), so nothing outside the
//! differing buckets needs to move.
//!
//! The bucket count is chosen by the initiator from its own actor count
//! ([`buckets_for`]: about [`ACTORS_PER_BUCKET`] actors a bucket, so the
//! digest is ~0.5 byte per actor and a differing bucket costs ~16 actors'
//! entries each way). The hashes are SipHash-1-3 over a fixed byte layout
//! ([`entry_hash`]), keyed by a salt the initiator draws for each round and
//! sends with the digest, so every build on every platform computes the
//! same digest for a round, and a collision (two different states with
//! equal bucket hashes) lasts one round: it cannot be found ahead of time
//! by a peer that crafts actor ids, nor repeat between the same two
//! states.

use std::collections::BTreeMap;
use std::hash::Hasher;

use corro_store::ActorId;
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

use crate::sync::SyncState;

/// Actors per bucket the initiator aims for.
pub const ACTORS_PER_BUCKET: usize = 16;

/// Most buckets a digest may have (a digest of this many is 512 KiB; a
/// state of [`crate::MAX_STATE_ACTORS`] actors needs 6,250).
pub const MAX_DIGEST_BUCKETS: u32 = 65_536;

/// Keys of the digest's hashes, mixed with the round's salt: part of the
/// protocol.
const KEYS: (u64, u64) = (0x636f_7272_6f73_696f, 0x6e2d_6469_6765_7374);

/// One hash per bucket of a node's sync state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// How many buckets the actors are spread over.
    pub buckets: u32,
    /// The round's salt (drawn by the initiator), mixed into every hash.
    pub salt: u64,
    /// Per bucket, in order: the sum (wrapping) of its actors' entry
    /// hashes; all zeros for an empty bucket. Fixed 8 bytes each on the
    /// wire (a random 64-bit number costs 9-10 bytes as a varint).
    pub hashes: Vec<[u8; 8]>,
}

/// Why a peer's digest or bucket list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDigest {
    #[error("{0} buckets, outside 1..={MAX_DIGEST_BUCKETS}")]
    Buckets(u32),
    #[error("{hashes} hashes for {buckets} buckets")]
    Hashes { buckets: u32, hashes: usize },
    #[error("bucket list is not strictly increasing below {buckets} (at {at})")]
    List { buckets: u32, at: u32 },
}

/// The bucket count an initiator whose state names `actors` actors uses.
pub fn buckets_for(actors: usize) -> u32 {
    actors
        .div_ceil(ACTORS_PER_BUCKET)
        .clamp(1, MAX_DIGEST_BUCKETS as usize) as u32
}

/// The bucket of `actor` among `buckets` (at least 1) in a round salted
/// with `salt`.
pub fn bucket_of(actor: &ActorId, buckets: u32, salt: u64) -> u32 {
    let mut h = SipHasher13::new_with_keys(KEYS.1 ^ salt, KEYS.0);
    h.write(&actor.0);
    (h.finish() % u64::from(buckets.max(1))) as u32
}

/// The hash of one actor's entry in a state, in a round salted with
/// `salt`: its id, head and needed ranges, as little-endian bytes in that
/// order.
pub fn entry_hash(
    salt: u64,
    actor: &ActorId,
    head: u64,
    needs: &[std::ops::RangeInclusive<u64>],
) -> u64 {
    let mut h = SipHasher13::new_with_keys(KEYS.0, KEYS.1 ^ salt);
    h.write(&actor.0);
    h.write(&head.to_le_bytes());
    h.write(&(needs.len() as u64).to_le_bytes());
    for r in needs {
        h.write(&r.start().to_le_bytes());
        h.write(&r.end().to_le_bytes());
    }
    h.finish()
}

impl Digest {
    /// The digest of `state` over `buckets` buckets (clamped to the valid
    /// range), salted with `salt`.
    pub fn of(state: &SyncState, buckets: u32, salt: u64) -> Digest {
        let buckets = buckets.clamp(1, MAX_DIGEST_BUCKETS);
        let mut sums = vec![0u64; buckets as usize];
        for (actor, &head) in &state.heads {
            let needs = state.needs.get(actor).map_or(&[][..], Vec::as_slice);
            let b = bucket_of(actor, buckets, salt) as usize;
            sums[b] = sums[b].wrapping_add(entry_hash(salt, actor, head, needs));
        }
        Digest {
            buckets,
            salt,
            hashes: sums.into_iter().map(u64::to_le_bytes).collect(),
        }
    }

    /// Checks a digest received from a peer before any of it is used.
    pub fn validate(&self) -> Result<(), InvalidDigest> {
        if self.buckets == 0 || self.buckets > MAX_DIGEST_BUCKETS {
            return Err(InvalidDigest::Buckets(self.buckets));
        }
        if self.hashes.len() != self.buckets as usize {
            return Err(InvalidDigest::Hashes {
                buckets: self.buckets,
                hashes: self.hashes.len(),
            });
        }
        Ok(())
    }

    /// The buckets whose hashes differ between `self` and `other` (both
    /// of the same bucket count), in increasing order.
    pub fn differing(&self, other: &Digest) -> Vec<u32> {
        self.hashes
            .iter()
            .zip(&other.hashes)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i as u32)
            .collect()
    }
}

/// Checks a bucket list (strictly increasing, each below `buckets`).
pub fn validate_list(list: &[u32], buckets: u32) -> Result<(), InvalidDigest> {
    let mut prev: Option<u32> = None;
    for &b in list {
        if b >= buckets || prev.is_some_and(|p| p >= b) {
            return Err(InvalidDigest::List { buckets, at: b });
        }
        prev = Some(b);
    }
    Ok(())
}

/// A set of buckets out of a count (in a round's salt), for restricting
/// states to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    count: u32,
    salt: u64,
    /// Sorted, unique, each below `count`.
    list: Vec<u32>,
}

impl Buckets {
    /// `list` (validated with [`validate_list`]) out of the buckets of
    /// `digest`.
    pub fn new(digest: &Digest, list: Vec<u32>) -> Result<Buckets, InvalidDigest> {
        validate_list(&list, digest.buckets)?;
        Ok(Buckets {
            count: digest.buckets,
            salt: digest.salt,
            list,
        })
    }

    /// Whether `actor` falls in one of these buckets.
    pub fn contains(&self, actor: &ActorId) -> bool {
        !self.list.is_empty()
            && self
                .list
                .binary_search(&bucket_of(actor, self.count, self.salt))
                .is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl SyncState {
    /// The part of this state about the actors in `buckets`.
    pub fn restrict(&self, buckets: &Buckets) -> SyncState {
        let heads: BTreeMap<ActorId, u64> = self
            .heads
            .iter()
            .filter(|(a, _)| buckets.contains(a))
            .map(|(a, h)| (*a, *h))
            .collect();
        let needs = self
            .needs
            .iter()
            .filter(|(a, _)| heads.contains_key(a))
            .map(|(a, n)| (*a, n.clone()))
            .collect();
        SyncState { heads, needs }
    }

    /// This state with the actors in `buckets` replaced by `part` (a
    /// peer's state restricted to them): what the peer's whole state is
    /// when every other bucket was equal.
    pub fn merged(mut self, buckets: &Buckets, part: &SyncState) -> SyncState {
        self.heads.retain(|a, _| !buckets.contains(a));
        self.needs.retain(|a, _| !buckets.contains(a));
        for (a, h) in &part.heads {
            self.heads.insert(*a, *h);
        }
        for (a, n) in &part.needs {
            self.needs.insert(*a, n.clone());
        }
        self
    }
}

/// Most peers remembered as not answering digest rounds (past it the
/// record starts over: an older build then fails one more digest round).
pub const WHOLE_STATE_PEERS_MAX: usize = 65_536;

/// Which peers a node opens its rounds with by a whole state: those known
/// not to answer digest rounds. A peer is marked when a frame of its
/// lacks the trailer's `digest` flag, or when a round with it failed (an
/// older build fails a digest round); the mark comes off when a frame
/// with the flag arrives in a round this node opened with it (dialed by
/// this node, so the address is not merely the sender's claim: a
/// responder only ever adds marks). Bounded by [`WHOLE_STATE_PEERS_MAX`].
#[derive(Debug, Clone)]
pub struct WholeStatePeers<A> {
    marked: std::collections::HashSet<A>,
    max: usize,
}

impl<A: std::hash::Hash + Eq + Copy> Default for WholeStatePeers<A> {
    fn default() -> Self {
        Self::with_max(WHOLE_STATE_PEERS_MAX)
    }
}

impl<A: std::hash::Hash + Eq + Copy> WholeStatePeers<A> {
    /// At most `max` marks.
    pub fn with_max(max: usize) -> Self {
        WholeStatePeers {
            marked: Default::default(),
            max: max.max(1),
        }
    }

    /// A state, digest or bucket-list frame from `peer`, with or without
    /// the flag; `dialed`: in a round this node opened with `peer`.
    /// Returns true when the peer's mark came off.
    pub fn frame(&mut self, peer: A, flag: bool, dialed: bool) -> bool {
        match (flag, dialed) {
            (true, true) => self.marked.remove(&peer),
            (true, false) => false,
            (false, _) => {
                self.mark(peer);
                false
            }
        }
    }

    /// A round with `peer` failed.
    pub fn failed(&mut self, peer: A) {
        self.mark(peer);
    }

    fn mark(&mut self, peer: A) {
        if self.marked.len() >= self.max && !self.marked.contains(&peer) {
            self.marked.clear();
        }
        self.marked.insert(peer);
    }

    /// Whether a round with `peer` opens with a digest.
    pub fn digest(&self, peer: &A) -> bool {
        !self.marked.contains(peer)
    }

    /// Peers marked.
    pub fn len(&self) -> usize {
        self.marked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(i: u32) -> ActorId {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id[15] = 1;
        ActorId(id)
    }

    fn state(n: u32) -> SyncState {
        let mut s = SyncState::default();
        for i in 0..n {
            s.heads.insert(actor(i), u64::from(i) * 7 + 1);
        }
        s
    }

    #[test]
    fn equal_states_have_equal_digests_and_a_change_marks_its_bucket_only() {
        let a = state(1000);
        let buckets = buckets_for(a.heads.len());
        assert_eq!(buckets, 63);
        let salt = 0x5a17;
        let mut b = a.clone();
        let da = Digest::of(&a, buckets, salt);
        assert!(da.differing(&Digest::of(&b, buckets, salt)).is_empty());
        // A newer head of one actor.
        *b.heads.get_mut(&actor(17)).unwrap() += 1;
        let diff = da.differing(&Digest::of(&b, buckets, salt));
        assert_eq!(diff, vec![bucket_of(&actor(17), buckets, salt)]);
        // A needed range of another, and an actor only one side knows.
        b.needs.insert(actor(400), vec![3..=5]);
        b.heads.insert(actor(5000), 9);
        let diff = da.differing(&Digest::of(&b, buckets, salt));
        let mut want: Vec<u32> = [17, 400, 5000]
            .iter()
            .map(|i| bucket_of(&actor(*i), buckets, salt))
            .collect();
        want.sort_unstable();
        want.dedup();
        assert_eq!(diff, want);
        // Restricted to the differing buckets, the states hold every
        // difference, and merging gives back the other side's whole state.
        let set = Buckets::new(&da, diff).unwrap();
        let (ra, rb) = (a.restrict(&set), b.restrict(&set));
        assert!(ra.heads.len() < 100, "{} actors", ra.heads.len());
        assert_eq!(rb.heads[&actor(5000)], 9);
        assert_eq!(rb.needs[&actor(400)], vec![3..=5]);
        assert_eq!(a.clone().merged(&set, &rb), b);
        assert_eq!(b.merged(&set, &ra), a);
    }

    #[test]
    fn the_digest_is_fixed_by_the_protocol() {
        // Every build must compute the same bytes for a round: a changed
        // hash or layout would make every bucket differ between versions.
        let d = Digest::of(&state(3), 2, 0);
        assert_eq!(
            d.hashes
                .iter()
                .map(|h| u64::from_le_bytes(*h))
                .collect::<Vec<_>>(),
            [0x7c1f_e4f6_a15c_830a, 0xb44c_d338_45fd_3a7a]
        );
        let bytes = postcard::to_stdvec(&d).unwrap();
        assert_eq!(
            bytes.len(),
            3 + 2 * 8,
            "bucket count, salt, hash count, then 8 bytes a bucket"
        );
        // Another salt: other hashes, and (over enough actors) other
        // buckets, so a collision does not repeat between two states.
        let s = state(1000);
        let (x, y) = (Digest::of(&s, 63, 1), Digest::of(&s, 63, 2));
        assert_eq!(x.differing(&y).len(), 63);
        assert!((0..1000).any(|i| bucket_of(&actor(i), 63, 1) != bucket_of(&actor(i), 63, 2)));
    }

    #[test]
    fn hostile_digests_and_lists_are_refused() {
        let ok = Digest::of(&state(10), 4, 9);
        assert_eq!(ok.validate(), Ok(()));
        let mut short = ok.clone();
        short.hashes.pop();
        assert!(matches!(
            short.validate(),
            Err(InvalidDigest::Hashes { .. })
        ));
        let none = Digest {
            buckets: 0,
            salt: 0,
            hashes: vec![],
        };
        assert_eq!(none.validate(), Err(InvalidDigest::Buckets(0)));
        let huge = Digest {
            buckets: MAX_DIGEST_BUCKETS + 1,
            salt: 0,
            hashes: vec![],
        };
        assert!(huge.validate().is_err());
        assert!(validate_list(&[0, 3], 4).is_ok());
        assert!(validate_list(&[0, 4], 4).is_err(), "past the count");
        assert!(validate_list(&[2, 2], 4).is_err(), "repeated");
        assert!(validate_list(&[3, 1], 4).is_err(), "unordered");
        assert!(Buckets::new(&ok, vec![1, 0]).is_err());
        // An empty set restricts to nothing.
        let empty = Buckets::new(&ok, vec![]).unwrap();
        assert_eq!(state(10).restrict(&empty), SyncState::default());
    }

    #[test]
    fn bucket_counts_stay_bounded() {
        assert_eq!(buckets_for(0), 1);
        assert_eq!(buckets_for(16), 1);
        assert_eq!(buckets_for(17), 2);
        assert_eq!(buckets_for(10_000), 625);
        assert_eq!(buckets_for(usize::MAX), MAX_DIGEST_BUCKETS);
        assert_eq!(Digest::of(&state(5), 0, 0).buckets, 1);
    }

    #[test]
    fn peers_known_not_to_answer_digests_get_whole_states_until_a_dialed_round_says_otherwise() {
        let mut p = WholeStatePeers::with_max(3);
        // Everyone is asked with a digest until shown otherwise.
        assert!(p.digest(&1));
        // An older build: its frames lack the flag, or a digest round
        // with it fails.
        p.frame(1, false, false);
        p.failed(2);
        assert!(!p.digest(&1) && !p.digest(&2));
        // A responder never takes a mark off on the initiator's claimed
        // address...
        assert!(!p.frame(1, true, false));
        assert!(!p.digest(&1));
        // ...a round this node opened does (the peer was upgraded, or the
        // failure was the network).
        assert!(p.frame(1, true, true));
        assert!(p.digest(&1));
        // Bounded: past the limit the record starts over.
        p.failed(3);
        p.failed(4);
        assert_eq!(p.len(), 3);
        p.failed(5);
        assert_eq!(p.len(), 1);
        assert!(p.digest(&2) && !p.digest(&5));
    }
}
