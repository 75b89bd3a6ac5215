//! Sync state exchange and request planning.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;

use corro_store::{ActorBooks, ActorId};
use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};

/// What a node holds, as sent to a peer at the start of a sync round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// Per actor: highest version seen.
    pub heads: BTreeMap<ActorId, u64>,
    /// Per actor: versions at or below the head not fully held (missing or
    /// partial). Absent means "nothing needed".
    pub needs: BTreeMap<ActorId, Vec<RangeInclusive<u64>>>,
}

/// Most actors a peer's state may name.
pub const MAX_STATE_ACTORS: usize = 100_000;
/// Most needed ranges a peer's state may list, over all actors.
pub const MAX_STATE_RANGES: usize = 1_000_000;

/// Why a peer's [`SyncState`] is refused (nothing in it is used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidState {
    #[error("{0} actors, over the limit of {MAX_STATE_ACTORS}")]
    TooManyActors(usize),
    #[error("{0} needed ranges, over the limit of {MAX_STATE_RANGES}")]
    TooManyRanges(usize),
    #[error("actor {0} has needed ranges but no head")]
    NeedsWithoutHead(ActorId),
    #[error(
        "actor {actor}: needed range {start}..={end} is empty, starts at 0 or ends past the head {head}"
    )]
    BadRange {
        actor: ActorId,
        start: u64,
        end: u64,
        head: u64,
    },
}

impl SyncState {
    /// Checks a state received from a peer before any of it is used: every
    /// needed range non-empty, ordered, within 1..=head of its actor, and
    /// the counts bounded. Work is proportional to the state's size.
    pub fn validate(&self) -> Result<(), InvalidState> {
        if self.heads.len() > MAX_STATE_ACTORS {
            return Err(InvalidState::TooManyActors(self.heads.len()));
        }
        let ranges: usize = self.needs.values().map(Vec::len).sum();
        if ranges > MAX_STATE_RANGES {
            return Err(InvalidState::TooManyRanges(ranges));
        }
        for (actor, needs) in &self.needs {
            let Some(&head) = self.heads.get(actor) else {
                return Err(InvalidState::NeedsWithoutHead(*actor));
            };
            for r in needs {
                let (start, end) = (*r.start(), *r.end());
                if start == 0 || start > end || end > head {
                    return Err(InvalidState::BadRange {
                        actor: *actor,
                        start,
                        end,
                        head,
                    });
                }
            }
        }
        Ok(())
    }

    /// The state of a store's bookkeeping.
    pub fn from_books(books: &HashMap<ActorId, ActorBooks>) -> Self {
        let mut s = SyncState::default();
        for (actor, b) in books {
            if b.head == 0 {
                continue;
            }
            s.heads.insert(*actor, b.head);
            let needed = b.needed();
            if !needed.is_empty() {
                s.needs.insert(*actor, needed);
            }
        }
        s
    }

    /// Versions of `actor` this node holds, as a set.
    fn held(&self, actor: &ActorId) -> RangeInclusiveSet<u64> {
        let mut set = RangeInclusiveSet::new();
        if let Some(&head) = self.heads.get(actor).filter(|h| **h > 0) {
            set.insert(1..=head);
            for r in self.needs.get(actor).into_iter().flatten() {
                set.remove(r.clone());
            }
        }
        set
    }

    /// Versions of `actor` this node lacks, up to `up_to`.
    fn lacking(&self, actor: &ActorId, up_to: u64) -> RangeInclusiveSet<u64> {
        let mut set = RangeInclusiveSet::new();
        if up_to == 0 {
            return set;
        }
        set.insert(1..=up_to);
        let held = self.held(actor);
        for r in held.iter() {
            set.remove(r.clone());
        }
        set
    }
}

/// Versions of one actor to pull from a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub actor: ActorId,
    pub versions: RangeInclusive<u64>,
}

/// What `mine` should request from a peer whose state is `theirs`: every
/// version the peer holds that `mine` lacks, as ranges, at most `max_versions`
/// versions in total (the rest is left for the next round, so one round's
/// work stays bounded).
pub fn plan(mine: &SyncState, theirs: &SyncState, max_versions: u64) -> Vec<SyncRequest> {
    let mut out = Vec::new();
    let mut budget = max_versions;
    for (actor, &their_head) in &theirs.heads {
        if budget == 0 {
            break;
        }
        let lacking = mine.lacking(actor, their_head);
        if lacking.is_empty() {
            continue;
        }
        let theirs_held = theirs.held(actor);
        for lack in lacking.iter() {
            for held in theirs_held.overlapping(lack) {
                let lo = (*lack.start()).max(*held.start());
                let hi = (*lack.end()).min(*held.end());
                if lo > hi || budget == 0 {
                    continue;
                }
                let hi = hi.min(lo + budget - 1);
                budget -= hi - lo + 1;
                out.push(SyncRequest {
                    actor: *actor,
                    versions: lo..=hi,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(i: u8) -> ActorId {
        ActorId([i; 16])
    }

    fn state(entries: &[(u8, u64, &[RangeInclusive<u64>])]) -> SyncState {
        let mut s = SyncState::default();
        for (a, head, needs) in entries {
            s.heads.insert(actor(*a), *head);
            if !needs.is_empty() {
                s.needs.insert(actor(*a), needs.to_vec());
            }
        }
        s
    }

    fn req(a: u8, r: RangeInclusive<u64>) -> SyncRequest {
        SyncRequest {
            actor: actor(a),
            versions: r,
        }
    }

    #[test]
    fn requests_exactly_what_the_peer_holds_and_we_lack() {
        let mine = state(&[(1, 5, &[2..=3]), (2, 10, &[])]);
        let theirs = state(&[(1, 9, &[3..=3, 7..=7]), (2, 10, &[]), (3, 2, &[])]);
        assert_eq!(
            plan(&mine, &theirs, 1000),
            vec![req(1, 2..=2), req(1, 6..=6), req(1, 8..=9), req(3, 1..=2)]
        );
        // Nothing to ask from a peer that has less.
        assert!(plan(&theirs, &theirs, 1000).is_empty());
        // The other way: they lack 3 and 7 of actor 1, but we lack 3 too.
        assert!(plan(&theirs, &mine, 1000).is_empty());
        let mine = state(&[(1, 8, &[])]);
        assert_eq!(
            plan(&theirs, &mine, 1000),
            vec![req(1, 3..=3), req(1, 7..=7)]
        );
    }

    #[test]
    fn a_round_is_bounded() {
        let mine = SyncState::default();
        let theirs = state(&[(1, 100, &[]), (2, 100, &[])]);
        let p = plan(&mine, &theirs, 30);
        assert_eq!(p, vec![req(1, 1..=30)]);
        let total: u64 = plan(&mine, &theirs, 150)
            .iter()
            .map(|r| r.versions.end() - r.versions.start() + 1)
            .sum();
        assert_eq!(total, 150);
    }

    #[test]
    fn state_comes_from_bookkeeping() {
        let mut b = ActorBooks::default();
        b.mark_held(5..=5);
        b.add_piece(7, 0..=1, 9, 0);
        let books = HashMap::from([(actor(1), b), (actor(2), ActorBooks::default())]);
        let s = SyncState::from_books(&books);
        assert_eq!(s.heads, BTreeMap::from([(actor(1), 7)]));
        assert_eq!(s.needs[&actor(1)], vec![1..=4, 6..=7]);
    }

    #[test]
    fn hostile_states_are_refused_before_use() {
        #[expect(clippy::reversed_empty_ranges, reason = "the hostile input under test")]
        let backwards = state(&[(1, 9, &[5..=3])]);
        assert!(matches!(
            backwards.validate(),
            Err(InvalidState::BadRange { .. })
        ));
        assert!(state(&[(1, 9, &[0..=2])]).validate().is_err(), "version 0");
        assert!(
            state(&[(1, 9, &[8..=10])]).validate().is_err(),
            "past the head"
        );
        let mut orphan = state(&[(1, 9, &[])]);
        orphan.needs.insert(actor(2), vec![1..=1]);
        assert_eq!(
            orphan.validate(),
            Err(InvalidState::NeedsWithoutHead(actor(2)))
        );
        let mut many = SyncState::default();
        many.heads.insert(actor(1), u64::MAX);
        many.needs
            .insert(actor(1), vec![1..=1; MAX_STATE_RANGES + 1]);
        assert!(matches!(
            many.validate(),
            Err(InvalidState::TooManyRanges(_))
        ));
        assert_eq!(state(&[(1, 9, &[2..=3, 7..=9])]).validate(), Ok(()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 10_000, .. Default::default() })]

        /// Any state that passes validation can be planned against without
        /// panicking, whatever numbers it holds.
        #[test]
        fn validated_states_never_panic_the_planner(
            heads in proptest::collection::vec((0u8..4, proptest::num::u64::ANY), 0..4),
            needs in proptest::collection::vec((0u8..4, proptest::num::u64::ANY, proptest::num::u64::ANY), 0..6),
        ) {
            let mut theirs = SyncState::default();
            for (a, h) in heads {
                theirs.heads.insert(actor(a), h);
            }
            for (a, x, y) in needs {
                theirs.needs.entry(actor(a)).or_default().push(x..=y);
            }
            if theirs.validate().is_ok() {
                let mine = state(&[(1, 5, &[2..=3])]);
                let _ = plan(&mine, &theirs, 2_000);
                let _ = plan(&theirs, &mine, 2_000);
            }
        }
    }
}
