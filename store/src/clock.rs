//! Row clocks and the merge rule, as a pure state machine.
//!
//! Each replicated row has one clock row in its table's `<table>__corro_clock`
//! shadow table: the causal length `cl` in a column, and a compact postcard
//! blob ([`RowClock`]) with the origin of the row-life sentinel and, for every
//! replicated column, its `col_version` and origin `(actor, version, seq)`.
//! One clock row per data row (instead of cr-sqlite's one per column) keeps
//! writes and disk use close to plain SQLite.
//!
//! The merge rule (see DESIGN §3): a row's `cl` is the largest seen; even means
//! deleted. A cell counts only at the row's current `cl`; among those the
//! larger `(col_version, value, actor)` wins, values compared in SQLite order.
//! When `cl` grows every column clock is reset, so a resurrected row never
//! shows columns from a previous life. [`RowMerge`] applies changes one by one
//! and records what has to be written back; it never touches SQLite itself,
//! except through the `current` callback that fetches a stored value when two
//! writes tie on `col_version`.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::actor::ActorId;
use crate::value::SqlValue;

/// Where a change came from: local actor index (see `__corro_actors`), version, seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Origin {
    pub actor: u32,
    pub version: u64,
    pub seq: u64,
}

/// Clock of one column at the row's current causal length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CellClock {
    pub col_version: u64,
    pub origin: Origin,
}

/// The per-row clock blob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RowClock {
    /// Origin of the sentinel that set the current `cl` (None until it arrives).
    pub cl_origin: Option<Origin>,
    /// One slot per replicated column, in table order; `None` = no write at this `cl`.
    pub cols: Vec<Option<CellClock>>,
    /// Latest commit time seen for this row (ms since epoch, informational).
    pub ts: u64,
}

impl RowClock {
    /// Encodes the clock. Most rows hold a *uniform* clock: every column and
    /// the sentinel come from one version at consecutive seqs with
    /// col_version 1 (a row inserted and not changed since). Those take a tag
    /// and four varints; anything else is the postcard form behind another tag.
    pub(crate) fn encode(&self) -> Vec<u8> {
        if let Some(origin) = self.uniform() {
            return encode_uniform(origin, self.cols.len(), self.ts);
        }
        let mut out = vec![TAG_FULL];
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, postcard::Error> {
        match b.split_first() {
            Some((&TAG_UNIFORM, rest)) => {
                let mut r = rest;
                let mut next =
                    || read_varint(&mut r).ok_or(postcard::Error::DeserializeUnexpectedEnd);
                let (actor, version, seq, ncols, ts) =
                    (next()?, next()?, next()?, next()?, next()?);
                let actor =
                    u32::try_from(actor).map_err(|_| postcard::Error::DeserializeBadVarint)?;
                Ok(uniform_clock(actor, version, seq, ncols as usize, ts))
            }
            Some((&TAG_FULL, rest)) => postcard::from_bytes(rest),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        }
    }

    /// The sentinel origin if this clock is uniform.
    fn uniform(&self) -> Option<Origin> {
        let o = self.cl_origin?;
        let all = self.cols.iter().enumerate().all(|(i, c)| {
            *c == Some(CellClock {
                col_version: 1,
                origin: Origin {
                    seq: o.seq + 1 + i as u64,
                    ..o
                },
            })
        });
        all.then_some(o)
    }

    /// Every origin this clock references (for the version -> rows index).
    pub(crate) fn origins(&self) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self
            .cl_origin
            .iter()
            .chain(self.cols.iter().flatten().map(|c| &c.origin))
            .map(|o| (o.actor, o.version))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub(crate) fn col(&self, i: usize) -> Option<CellClock> {
        self.cols.get(i).copied().flatten()
    }

    pub(crate) fn set_col(&mut self, i: usize, c: Option<CellClock>) {
        if self.cols.len() <= i {
            self.cols.resize(i + 1, None);
        }
        self.cols[i] = c;
    }
}

const TAG_UNIFORM: u8 = 1;
const TAG_FULL: u8 = 2;

/// The clock of a row (re)inserted by one version: the sentinel at `seq`,
/// column `i` at `seq + 1 + i`, every col_version 1.
pub(crate) fn uniform_clock(actor: u32, version: u64, seq: u64, ncols: usize, ts: u64) -> RowClock {
    let origin = |s: u64| Origin {
        actor,
        version,
        seq: s,
    };
    RowClock {
        cl_origin: Some(origin(seq)),
        cols: (0..ncols as u64)
            .map(|i| {
                Some(CellClock {
                    col_version: 1,
                    origin: origin(seq + 1 + i),
                })
            })
            .collect(),
        ts,
    }
}

/// The encoding of [`uniform_clock`], without building it.
pub(crate) fn encode_uniform(origin: Origin, ncols: usize, ts: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.push(TAG_UNIFORM);
    for v in [
        u64::from(origin.actor),
        origin.version,
        origin.seq,
        ncols as u64,
        ts,
    ] {
        write_varint(&mut out, v);
    }
    out
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Merge state of one row while a batch of changes is applied to it.
#[derive(Debug, Clone)]
pub(crate) struct RowMerge {
    /// `cl` before the batch (0 = row never seen).
    pub old_cl: u64,
    pub cl: u64,
    pub clock: RowClock,
    /// Values written by this batch, per column.
    pub written: Vec<Option<SqlValue>>,
    /// The clock blob must be rewritten.
    pub clock_dirty: bool,
}

impl RowMerge {
    pub(crate) fn new(cl: u64, clock: RowClock, ncols: usize) -> Self {
        RowMerge {
            old_cl: cl,
            cl,
            clock,
            written: vec![None; ncols],
            clock_dirty: false,
        }
    }

    /// True when the row's life changed (deleted, created or resurrected).
    pub(crate) fn life_changed(&self) -> bool {
        self.cl != self.old_cl
    }

    pub(crate) fn alive(&self) -> bool {
        self.cl % 2 == 1
    }

    fn new_life(&mut self, cl: u64) {
        self.cl = cl;
        self.clock.cl_origin = None;
        for c in self.clock.cols.iter_mut() {
            *c = None;
        }
        for w in self.written.iter_mut() {
            *w = None;
        }
        self.clock_dirty = true;
    }

    /// Applies a row-life sentinel. Returns true if it won (changed anything).
    pub(crate) fn sentinel(
        &mut self,
        cl: u64,
        origin: Origin,
        actor_of: &dyn Fn(u32) -> ActorId,
    ) -> bool {
        match cl.cmp(&self.cl) {
            Ordering::Greater => {
                self.new_life(cl);
                self.clock.cl_origin = Some(origin);
                true
            }
            Ordering::Equal => {
                // Several actors may reach the same cl; keep the largest origin so
                // every replica records the same one.
                let better = match self.clock.cl_origin {
                    None => true,
                    Some(cur) => origin_key(&origin, actor_of) > origin_key(&cur, actor_of),
                };
                if better {
                    self.clock.cl_origin = Some(origin);
                    self.clock_dirty = true;
                }
                better
            }
            Ordering::Less => false,
        }
    }

    /// Applies a cell write. `current` fetches the stored value of a column
    /// (only called on a `col_version` tie). Returns true if the write won.
    #[expect(
        clippy::too_many_arguments,
        reason = "the inputs are one change's fields plus two lookups; a struct per call would only move them"
    )]
    pub(crate) fn cell<E>(
        &mut self,
        col: usize,
        cl: u64,
        col_version: u64,
        value: &SqlValue,
        origin: Origin,
        actor_of: &dyn Fn(u32) -> ActorId,
        current: &mut dyn FnMut(usize) -> Result<SqlValue, E>,
    ) -> Result<bool, E> {
        if cl < self.cl {
            return Ok(false);
        }
        if cl > self.cl {
            // The insert of this life has not arrived yet: the row lives at `cl`
            // with defaults until it does.
            self.new_life(cl);
        }
        let wins = match self.clock.col(col) {
            None => true,
            Some(cur) => match col_version.cmp(&cur.col_version) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal => {
                    let stored = match &self.written[col] {
                        Some(v) => v.clone(),
                        None => current(col)?,
                    };
                    match value.sqlite_cmp(&stored) {
                        Ordering::Greater => true,
                        Ordering::Less => false,
                        Ordering::Equal => {
                            origin_key(&origin, actor_of) > origin_key(&cur.origin, actor_of)
                        }
                    }
                }
            },
        };
        if wins {
            self.clock.set_col(
                col,
                Some(CellClock {
                    col_version,
                    origin,
                }),
            );
            if self.written.len() <= col {
                self.written.resize(col + 1, None);
            }
            self.written[col] = Some(value.clone());
            self.clock_dirty = true;
        }
        Ok(wins)
    }
}

fn origin_key(o: &Origin, actor_of: &dyn Fn(u32) -> ActorId) -> (ActorId, u64, u64) {
    (actor_of(o.actor), o.version, o.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(i: u32) -> ActorId {
        ActorId([i as u8; 16])
    }

    fn o(actor: u32, version: u64) -> Origin {
        Origin {
            actor,
            version,
            seq: 0,
        }
    }

    fn no_current(_: usize) -> Result<SqlValue, ()> {
        panic!("stored value not needed")
    }

    #[test]
    fn higher_col_version_wins_regardless_of_order() {
        for flip in [false, true] {
            let mut m = RowMerge::new(1, RowClock::default(), 1);
            let a = (2, SqlValue::from("a"), o(1, 1));
            let b = (3, SqlValue::from("0"), o(2, 1));
            let (first, second) = if flip { (&b, &a) } else { (&a, &b) };
            m.cell(0, 1, first.0, &first.1, first.2, &actor, &mut no_current)
                .unwrap();
            m.cell(0, 1, second.0, &second.1, second.2, &actor, &mut no_current)
                .unwrap();
            assert_eq!(m.written[0], Some(SqlValue::from("0")));
            assert_eq!(m.clock.col(0).unwrap().col_version, 3);
        }
    }

    #[test]
    fn tie_on_col_version_takes_larger_value_then_larger_actor() {
        let mut m = RowMerge::new(1, RowClock::default(), 1);
        m.cell(
            0,
            1,
            2,
            &SqlValue::from("destroyed"),
            o(2, 5),
            &actor,
            &mut no_current,
        )
        .unwrap();
        m.cell(
            0,
            1,
            2,
            &SqlValue::from("started"),
            o(1, 3),
            &actor,
            &mut no_current,
        )
        .unwrap();
        assert_eq!(m.written[0], Some(SqlValue::from("started")));
        // Same value from a larger actor: the clock moves to that actor.
        m.cell(
            0,
            1,
            2,
            &SqlValue::from("started"),
            o(9, 1),
            &actor,
            &mut no_current,
        )
        .unwrap();
        assert_eq!(m.clock.col(0).unwrap().origin.actor, 9);
        // Tie-break against a stored value fetched from the table.
        let mut stored = RowMerge::new(1, m.clock.clone(), 1);
        let won = stored
            .cell(0, 1, 2, &SqlValue::Integer(1), o(3, 1), &actor, &mut |_| {
                Ok::<_, ()>(SqlValue::from("started"))
            })
            .unwrap();
        assert!(!won, "a number is smaller than text");
    }

    #[test]
    fn higher_causal_length_resets_columns() {
        let mut m = RowMerge::new(1, RowClock::default(), 2);
        m.cell(
            0,
            1,
            7,
            &SqlValue::from("old"),
            o(1, 1),
            &actor,
            &mut no_current,
        )
        .unwrap();
        assert!(m.sentinel(2, o(2, 1), &actor));
        assert!(!m.alive());
        assert!(m.clock.col(0).is_none() && m.written[0].is_none());
        // A stale cell from the previous life is ignored.
        assert!(
            !m.cell(
                0,
                1,
                99,
                &SqlValue::from("zombie"),
                o(1, 2),
                &actor,
                &mut no_current
            )
            .unwrap()
        );
        // A cell of the next life arriving before its sentinel revives the row.
        assert!(
            m.cell(
                1,
                3,
                1,
                &SqlValue::from("new"),
                o(3, 1),
                &actor,
                &mut no_current
            )
            .unwrap()
        );
        assert!(m.alive() && m.clock.cl_origin.is_none());
        assert!(m.sentinel(3, o(3, 1), &actor));
        assert_eq!(m.clock.cl_origin, Some(o(3, 1)));
        assert_eq!(m.written[1], Some(SqlValue::from("new")));
    }

    #[test]
    fn equal_sentinels_keep_the_largest_origin() {
        let mut a = RowMerge::new(1, RowClock::default(), 0);
        let mut b = RowMerge::new(1, RowClock::default(), 0);
        a.sentinel(2, o(1, 4), &actor);
        a.sentinel(2, o(7, 1), &actor);
        b.sentinel(2, o(7, 1), &actor);
        b.sentinel(2, o(1, 4), &actor);
        assert_eq!(a.clock, b.clock);
        assert_eq!(a.clock.cl_origin, Some(o(7, 1)));
    }

    #[test]
    fn uniform_clocks_use_the_short_form_and_round_trip() {
        let c = uniform_clock(3, 70_000, 129, 4, 1_700_000_000_000);
        let short = c.encode();
        assert_eq!(short[0], TAG_UNIFORM);
        assert!(short.len() < 20, "{} bytes", short.len());
        assert_eq!(short, encode_uniform(c.cl_origin.unwrap(), 4, c.ts));
        assert_eq!(RowClock::decode(&short).unwrap(), c);
        // One column changed later: the full form.
        let mut d = c.clone();
        d.set_col(
            2,
            Some(CellClock {
                col_version: 2,
                origin: o(9, 1),
            }),
        );
        let full = d.encode();
        assert_eq!(full[0], TAG_FULL);
        assert_eq!(RowClock::decode(&full).unwrap(), d);
        // A table with no value columns, and a tombstone.
        let e = uniform_clock(1, 1, 0, 0, 0);
        assert_eq!(RowClock::decode(&e.encode()).unwrap(), e);
        let t = RowClock {
            cl_origin: Some(o(1, 2)),
            cols: vec![],
            ts: 5,
        };
        assert_eq!(RowClock::decode(&t.encode()).unwrap(), t);
        assert!(
            RowClock::decode(&[]).is_err()
                && RowClock::decode(&[9, 1]).is_err()
                && RowClock::decode(&[TAG_UNIFORM, 0x80]).is_err()
        );
    }

    #[test]
    fn clock_blob_round_trips_and_lists_origins() {
        let mut c = RowClock {
            cl_origin: Some(o(1, 2)),
            ..Default::default()
        };
        c.set_col(
            2,
            Some(CellClock {
                col_version: 3,
                origin: o(4, 5),
            }),
        );
        c.set_col(
            0,
            Some(CellClock {
                col_version: 1,
                origin: o(1, 2),
            }),
        );
        assert_eq!(RowClock::decode(&c.encode()).unwrap(), c);
        assert_eq!(c.origins(), vec![(1, 2), (4, 5)]);
    }
}
