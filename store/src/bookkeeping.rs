//! Per-actor bookkeeping: which versions of each actor this node holds.
//!
//! For every actor the store keeps the highest version seen (`head`), the set
//! of versions at or below it that are missing, and for versions received only
//! in part the seq ranges held so far. A version is *held* when it is at or
//! below `head`, not missing and not partial. This module is pure data and
//! algebra (no SQLite); the store persists an [`ActorBooks`] in the same
//! transaction as the data it describes.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};

/// A version received in pieces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Partial {
    /// Seq ranges held so far.
    pub seqs: RangeInclusiveSet<u64>,
    /// The version's last seq.
    pub last_seq: u64,
    /// Commit time at the origin (informational).
    pub ts: u64,
}

impl Partial {
    /// True once every seq in `0..=last_seq` is held.
    pub fn is_complete(&self) -> bool {
        self.seqs.gaps(&(0..=self.last_seq)).next().is_none()
    }
}

/// What this node holds of one actor's versions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActorBooks {
    pub head: u64,
    pub missing: RangeInclusiveSet<u64>,
    pub partials: BTreeMap<u64, Partial>,
}

/// Result of recording a piece of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceOutcome {
    /// The version was already held: nothing to do.
    AlreadyHeld,
    /// Recorded; the version is still incomplete.
    Incomplete,
    /// With this piece every seq of the version is present.
    Complete,
}

impl ActorBooks {
    /// True if `version` is fully held.
    pub fn holds(&self, version: u64) -> bool {
        version != 0
            && version <= self.head
            && !self.missing.contains(&version)
            && !self.partials.contains_key(&version)
    }

    /// How many versions of `versions` are not fully held, counted by
    /// ranges (work proportional to the bookkeeping, never to the range's
    /// width: a peer may name 1..=u64::MAX).
    pub fn lacking_in(&self, versions: RangeInclusive<u64>) -> u64 {
        let (lo, hi) = (*versions.start(), *versions.end());
        if lo == 0 || lo > hi {
            return 0;
        }
        let above_head = if hi > self.head {
            hi - lo.max(self.head + 1) + 1
        } else {
            0
        };
        if lo > self.head {
            return above_head;
        }
        let below = lo..=hi.min(self.head);
        let missing: u64 = self
            .missing
            .overlapping(below.clone())
            .map(|r| r.end().min(below.end()) - r.start().max(below.start()) + 1)
            .sum();
        let partial = self
            .partials
            .range(below)
            .filter(|(v, _)| !self.missing.contains(v))
            .count() as u64;
        above_head + missing + partial
    }

    /// Records versions as fully held (applied or cleared).
    pub fn mark_held(&mut self, versions: RangeInclusive<u64>) {
        let (lo, hi) = (*versions.start(), *versions.end());
        if lo == 0 || lo > hi {
            return;
        }
        self.extend_head(hi);
        self.missing.remove(lo..=hi);
        let inside: Vec<u64> = self.partials.range(lo..=hi).map(|(v, _)| *v).collect();
        for v in inside {
            self.partials.remove(&v);
        }
    }

    /// Records a piece of `version` covering `seqs`.
    pub fn add_piece(
        &mut self,
        version: u64,
        seqs: RangeInclusive<u64>,
        last_seq: u64,
        ts: u64,
    ) -> PieceOutcome {
        if version == 0 || self.holds(version) {
            return PieceOutcome::AlreadyHeld;
        }
        self.extend_head(version);
        let partial = self.partials.entry(version).or_insert_with(|| Partial {
            seqs: RangeInclusiveSet::new(),
            last_seq,
            ts,
        });
        if *seqs.start() <= *seqs.end() {
            partial.seqs.insert(seqs);
        }
        self.missing.remove(version..=version);
        if partial.is_complete() {
            PieceOutcome::Complete
        } else {
            PieceOutcome::Incomplete
        }
    }

    /// Raises `head`, recording every skipped version as missing.
    fn extend_head(&mut self, version: u64) {
        if version > self.head {
            if version > self.head + 1 {
                self.missing.insert(self.head + 1..=version - 1);
            }
            self.head = version;
        }
    }

    /// Versions at or below `head` that are not held (missing or partial), in order.
    pub fn needed(&self) -> Vec<RangeInclusive<u64>> {
        let mut set = self.missing.clone();
        for v in self.partials.keys() {
            set.insert(*v..=*v);
        }
        set.iter().cloned().collect()
    }

    /// Serialized form persisted next to the data.
    pub fn encode(&self) -> Vec<u8> {
        let persisted = Persisted {
            missing: self
                .missing
                .iter()
                .map(|r| (*r.start(), *r.end()))
                .collect(),
            partials: self
                .partials
                .iter()
                .map(|(v, p)| {
                    (
                        *v,
                        p.seqs.iter().map(|r| (*r.start(), *r.end())).collect(),
                        p.last_seq,
                        p.ts,
                    )
                })
                .collect(),
        };
        postcard::to_stdvec(&persisted).unwrap_or_default()
    }

    /// Rebuilds books from `head` and [`ActorBooks::encode`]'s output.
    pub fn decode(head: u64, bytes: &[u8]) -> Result<Self, postcard::Error> {
        let mut books = ActorBooks {
            head,
            ..Default::default()
        };
        if bytes.is_empty() {
            return Ok(books);
        }
        let p: Persisted = postcard::from_bytes(bytes)?;
        for (a, b) in p.missing {
            books.missing.insert(a..=b);
        }
        for (v, seqs, last_seq, ts) in p.partials {
            let mut set = RangeInclusiveSet::new();
            for (a, b) in seqs {
                set.insert(a..=b);
            }
            books.partials.insert(
                v,
                Partial {
                    seqs: set,
                    last_seq,
                    ts,
                },
            );
        }
        Ok(books)
    }
}

type PartialRow = (u64, Vec<(u64, u64)>, u64, u64);

#[derive(Serialize, Deserialize)]
struct Persisted {
    missing: Vec<(u64, u64)>,
    partials: Vec<PartialRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_recorded_and_closed() {
        let mut b = ActorBooks::default();
        b.mark_held(5..=5);
        assert_eq!(b.head, 5);
        assert_eq!(b.needed(), vec![1..=4]);
        b.mark_held(2..=3);
        assert_eq!(b.needed(), vec![1..=1, 4..=4]);
        assert!(b.holds(2) && b.holds(5) && !b.holds(1) && !b.holds(6) && !b.holds(0));
        b.mark_held(1..=4);
        assert!(b.needed().is_empty());
    }

    #[test]
    fn partial_versions_complete_by_seq_ranges() {
        let mut b = ActorBooks::default();
        assert_eq!(b.add_piece(3, 0..=9, 29, 0), PieceOutcome::Incomplete);
        assert_eq!(b.needed(), vec![1..=3]);
        assert!(!b.holds(3));
        assert_eq!(b.add_piece(3, 20..=29, 29, 0), PieceOutcome::Incomplete);
        // A duplicate piece changes nothing.
        assert_eq!(b.add_piece(3, 0..=9, 29, 0), PieceOutcome::Incomplete);
        assert_eq!(b.add_piece(3, 10..=19, 29, 0), PieceOutcome::Complete);
        b.mark_held(3..=3);
        assert!(b.holds(3));
        assert_eq!(b.add_piece(3, 0..=29, 29, 0), PieceOutcome::AlreadyHeld);
        assert_eq!(b.needed(), vec![1..=2]);
    }

    #[test]
    fn cleared_ranges_close_gaps_and_partials() {
        let mut b = ActorBooks::default();
        b.add_piece(4, 0..=0, 5, 0);
        b.mark_held(10..=10);
        b.mark_held(1..=9);
        assert!(b.needed().is_empty());
        assert!(b.partials.is_empty());
    }

    #[test]
    fn lacking_versions_are_counted_by_ranges() {
        let mut b = ActorBooks::default();
        b.mark_held(10..=10);
        b.mark_held(3..=4);
        b.add_piece(7, 0..=0, 5, 0);
        // Held: 3, 4, 10. Missing: 1-2, 5-9 (7 also partial).
        let slow =
            |b: &ActorBooks, lo: u64, hi: u64| (lo..=hi).filter(|v| !b.holds(*v)).count() as u64;
        for (lo, hi) in [
            (1, 10),
            (1, 20),
            (3, 4),
            (5, 9),
            (7, 7),
            (11, 15),
            (2, 12),
            (0, 5),
            (6, 2),
        ] {
            let want = if lo == 0 || lo > hi {
                0
            } else {
                slow(&b, lo, hi)
            };
            assert_eq!(b.lacking_in(lo..=hi), want, "{lo}..={hi}");
        }
        // A range as wide as a hostile peer can name is counted at once.
        assert_eq!(b.lacking_in(1..=u64::MAX), u64::MAX - 3);
    }

    #[test]
    fn encoding_round_trips() {
        let mut b = ActorBooks::default();
        b.mark_held(7..=7);
        b.mark_held(2..=2);
        b.add_piece(9, 3..=4, 10, 99);
        let back = ActorBooks::decode(b.head, &b.encode()).unwrap();
        assert_eq!(back, b);
        assert_eq!(ActorBooks::decode(0, &[]).unwrap(), ActorBooks::default());
    }
}
