//! Who a broadcast goes to, without IO.
//!
//! A committed local version is pushed to peers at once; receivers that
//! learn something new from it push it on. In a small cluster (up to
//! [`DIRECT_MAX`] other members) the origin sends to every member and marks
//! the message as not to be forwarded: one message per member, one hop. In a
//! bigger cluster the origin sends to [`fanout`]`(n)` random members
//! (`ln n + 5`, 12 for 1,000 members) and every member that learns
//! something new forwards it once to as many random members: an epidemic
//! that reaches every member with high probability in a few hops, about
//! `n × fanout` messages per write. What a broadcast misses, anti-entropy
//! sync repairs.
//!
//! Forwarding once, and only what was new, is what bounds the cost; the
//! hop count does not. It saturates at `MAX_HOPS - 1` when forwarded:
//! [`MAX_HOPS`] itself marks the direct sends of a small cluster (not to
//! be forwarded). An earlier rule stopped forwarding after 6 hops; with
//! link delays that vary (1-20 ms in the simulation), a member is often
//! first reached along a long chain of fast links, and then never
//! forwarded: 30 % of 1,000 members did not forward, and about one member
//! in two thousand per write waited for sync (seconds) instead of the
//! broadcast (milliseconds). Counts stay within what older builds accept
//! (to them a 5 is one more hop, then they stop).
//!
//! Since hops no longer stop a broadcast, "new" must be exact, and the
//! store's answer is not always (a cleared range, a piece of a version
//! still incomplete, a version waiting for its table all apply as "new"
//! every time they arrive). [`Forwarded`] remembers the pieces this node
//! forwarded lately, and a piece is forwarded once per node whatever the
//! store said: the cost bound holds for any input, a hostile peer's too.
//!
//! The caller passes the current active members and an rng; nothing here
//! keeps state, so the simulation and the agent make the same choices.
//! [`Pending`] is the whole decision as one value: a broadcast to send (a
//! local commit, or a received one worth forwarding: [`Pending::received`]),
//! whose targets are drawn from the members at send time.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use corro_store::Changeset;
use rand::Rng;

use crate::MAX_HOPS;

/// A broadcast waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending<P> {
    pub sets: Vec<Changeset>,
    /// Hops the message has made so far.
    pub hops: u8,
    /// `None`: committed here; `Some(peer)`: forwarded, received from `peer`.
    pub from: Option<P>,
}

impl<P: Copy + PartialEq> Pending<P> {
    /// A version committed on this node.
    pub fn local(sets: Vec<Changeset>) -> Pending<P> {
        Pending {
            sets,
            hops: 0,
            from: None,
        }
    }

    /// A broadcast received from `from` with hop count `hops`, once
    /// applied: forwarded when it brought something new (`fresh`) and was
    /// not a direct send ([`MAX_HOPS`]); `None` otherwise (duplicates stop
    /// here). The count goes up by one and saturates below [`MAX_HOPS`].
    pub fn received(from: P, hops: u8, sets: Vec<Changeset>, fresh: bool) -> Option<Pending<P>> {
        (fresh && hops < MAX_HOPS).then(|| Pending {
            sets,
            hops: hops.saturating_add(1).min(MAX_HOPS - 1),
            from: Some(from),
        })
    }

    /// Who to send it to among `members` now, and the hop count to send
    /// with (empty when no one should get it).
    pub fn targets(&self, members: &[P], rng: &mut impl Rng) -> (Vec<P>, u8) {
        match self.from {
            None => local_targets(members, rng),
            Some(from) => (
                forward_targets(members, Some(from), self.hops, rng),
                self.hops,
            ),
        }
    }
}

/// Pieces remembered by [`Forwarded`] (about 16 bytes each).
pub const FORWARDED_MAX: usize = 65_536;

/// The pieces (actor, version and seq range, or cleared range) this node
/// has forwarded lately, the oldest forgotten past [`FORWARDED_MAX`]: at
/// 100 writes a second, ten minutes of them.
#[derive(Debug, Default)]
pub struct Forwarded {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Forwarded {
    /// True when some piece of `sets` was not forwarded before (the
    /// broadcast may go on); every piece is remembered.
    pub fn first(&mut self, sets: &[Changeset]) -> bool {
        let mut any = false;
        for set in sets {
            let k = piece_key(set);
            if self.seen.insert(k) {
                any = true;
                self.order.push_back(k);
                if self.order.len() > FORWARDED_MAX
                    && let Some(old) = self.order.pop_front()
                {
                    self.seen.remove(&old);
                }
            }
        }
        any
    }

    /// Pieces remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A piece's identity (a collision only stops one forward; sync repairs).
fn piece_key(set: &Changeset) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match set {
        Changeset::Version {
            actor,
            version,
            seqs,
            ..
        } => (0u8, actor.0, *version, *seqs.start(), *seqs.end()).hash(&mut h),
        Changeset::Cleared { actor, versions } => {
            (1u8, actor.0, *versions.start(), *versions.end()).hash(&mut h)
        }
    }
    h.finish()
}

/// Up to this many other members, the origin sends to all of them directly.
pub const DIRECT_MAX: usize = 32;

/// How many members a broadcast goes to in a cluster of `n` other members:
/// `ln n + 5`. A member is missed by every sender with probability about
/// `e^-fanout`, so about `e^-5` (0.7 %) of writes miss some member whatever
/// the size and wait for sync (seconds); with `+ 4` it was 1.8 %, and the
/// p99 time for a write to reach every one of 1,000 members was 1.6-2.3 s
/// in the simulation instead of 35-40 ms, for 9 % fewer bytes.
pub fn fanout(n: usize) -> usize {
    let f = (n.max(1) as f64).ln().ceil() as usize + 5;
    f.min(n)
}

/// Targets of a local commit, and the hop count to send (receivers forward
/// while it is under [`MAX_HOPS`]).
pub fn local_targets<T: Copy + PartialEq>(members: &[T], rng: &mut impl Rng) -> (Vec<T>, u8) {
    if members.len() <= DIRECT_MAX {
        (members.to_vec(), MAX_HOPS)
    } else {
        (pick(members, None, fanout(members.len()), rng), 0)
    }
}

/// Where a member that learned something new from a broadcast (received
/// with `hops` hops so far, from `from`) forwards it; empty when the hop
/// budget is spent.
pub fn forward_targets<T: Copy + PartialEq>(
    members: &[T],
    from: Option<T>,
    hops: u8,
    rng: &mut impl Rng,
) -> Vec<T> {
    if hops >= MAX_HOPS {
        return Vec::new();
    }
    let n = members.len().saturating_sub(usize::from(from.is_some()));
    pick(members, from, fanout(n), rng)
}

/// `k` distinct random members other than `skip`, in O(k).
fn pick<T: Copy + PartialEq>(
    members: &[T],
    skip: Option<T>,
    k: usize,
    rng: &mut impl Rng,
) -> Vec<T> {
    let want = (k + 1).min(members.len());
    rand::seq::index::sample(rng, members.len(), want)
        .into_iter()
        .map(|i| members[i])
        .filter(|m| Some(*m) != skip)
        .take(k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn small_clusters_get_direct_sends_that_are_not_forwarded() {
        let mut rng = StdRng::seed_from_u64(1);
        let members: Vec<u32> = (0..20).collect();
        let (targets, hops) = local_targets(&members, &mut rng);
        assert_eq!(targets, members);
        assert!(forward_targets(&members, Some(3), hops, &mut rng).is_empty());
    }

    #[test]
    fn a_received_broadcast_is_forwarded_only_when_new_and_under_the_hop_budget() {
        let mut rng = StdRng::seed_from_u64(3);
        let members: Vec<u32> = (0..100).collect();
        assert_eq!(Pending::received(5u32, 0, vec![], false), None);
        assert_eq!(Pending::received(5u32, MAX_HOPS, vec![], true), None);
        let p = Pending::received(5u32, 1, vec![], true).unwrap();
        assert_eq!((p.hops, p.from), (2, Some(5)));
        // Forwarded broadcasts never run out of hops (forwarding once per
        // version bounds the cost); only direct sends stop.
        let q = Pending::received(5u32, MAX_HOPS - 1, vec![], true).unwrap();
        assert_eq!(q.hops, MAX_HOPS - 1);
        assert_eq!(q.targets(&members, &mut rng).0.len(), fanout(99));
        let (to, hops) = p.targets(&members, &mut rng);
        assert_eq!(hops, 2);
        assert_eq!(to.len(), fanout(99));
        assert!(!to.contains(&5));
        // A small cluster's local commit: everyone, not to be forwarded.
        let (to, hops) = Pending::<u32>::local(vec![]).targets(&members[..10], &mut rng);
        assert_eq!((to.len(), hops), (10, MAX_HOPS));
        assert_eq!(Pending::received(1u32, hops, vec![], true), None);
    }

    #[test]
    fn a_piece_is_forwarded_once_whatever_the_store_says() {
        use corro_store::ActorId;
        let cleared = Changeset::Cleared {
            actor: ActorId([1; 16]),
            versions: 3..=9,
        };
        let piece = |start, end| Changeset::Version {
            actor: ActorId([2; 16]),
            version: 7,
            seqs: start..=end,
            last_seq: 20,
            ts: 0,
            changes: vec![],
        };
        let mut f = Forwarded::default();
        assert!(f.first(std::slice::from_ref(&cleared)));
        assert!(
            !f.first(std::slice::from_ref(&cleared)),
            "a repeat is not forwarded"
        );
        assert!(f.first(&[piece(0, 9)]));
        assert!(!f.first(&[piece(0, 9)]));
        // Another piece of the same version is its own.
        assert!(f.first(&[piece(10, 20), piece(0, 9)]));
        assert_eq!(f.len(), 3);
        // Bounded: the oldest are forgotten.
        for v in 0..FORWARDED_MAX as u64 {
            f.first(&[Changeset::Cleared {
                actor: ActorId([3; 16]),
                versions: v + 1..=v + 1,
            }]);
        }
        assert_eq!(f.len(), FORWARDED_MAX);
        assert!(f.first(std::slice::from_ref(&cleared)), "forgotten by now");
    }

    #[test]
    fn big_clusters_get_a_logarithmic_fanout_that_excludes_the_sender() {
        let mut rng = StdRng::seed_from_u64(2);
        let members: Vec<u32> = (0..1000).collect();
        let (targets, hops) = local_targets(&members, &mut rng);
        assert_eq!((targets.len(), hops), (12, 0));
        for _ in 0..100 {
            let fwd = forward_targets(&members, Some(7), 1, &mut rng);
            assert_eq!(fwd.len(), 12);
            assert!(!fwd.contains(&7));
        }
        assert!(forward_targets(&members, Some(7), MAX_HOPS, &mut rng).is_empty());
        assert_eq!(fanout(0), 0);
        assert_eq!(fanout(2), 2);
    }
}
