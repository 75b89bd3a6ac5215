//! Serving stored versions to peers (the data side of anti-entropy sync).
//!
//! A version is rebuilt from current state: the version index (`versions.rs`)
//! lists the rows that referenced it, and each row's clock says which of
//! its cells (and whether its row-life sentinel) came from that version; the
//! values come from the data table. Changes that were overwritten since are
//! simply absent, and the pieces still cover the whole seq range. A held
//! version with nothing left is answered as cleared. Versions held only in
//! part are served from the buffer, one piece per held seq range.
//!
//! Everything is read in one read transaction, bookkeeping included, so the
//! answer is a consistent snapshot even while the writer commits.

use std::ops::RangeInclusive;

use rusqlite::OptionalExtension;

use crate::actor::ActorId;
use crate::apply::buffered_pieces;
use crate::bookkeeping::ActorBooks;
use crate::change::{CHUNK_BYTES, Change, Changeset, chunk_version};
use crate::clock::RowClock;
use crate::error::StoreError;
use crate::store::Store;
use crate::value::{SqlValue, decode_key};
use crate::versions::{version_entry, version_rows};

impl Store {
    /// The changesets for `versions` of `actor` that this node can provide.
    /// Versions it does not hold at all are skipped.
    pub fn changes_for(
        &self,
        actor: ActorId,
        versions: RangeInclusive<u64>,
    ) -> Result<Vec<Changeset>, StoreError> {
        self.changes_for_budget(actor, versions, usize::MAX)
            .map(|(sets, _)| sets)
    }

    /// Like [`Store::changes_for`], stopping after the version at which the
    /// answer holds `max_changes` changes or more (a version is never split
    /// across calls). Also returns the first version not yet served, `None`
    /// when the range is done. Serving many small versions a budget at a
    /// time pays the per-call cost (snapshot, bookkeeping, schema) once per
    /// budget instead of once per version.
    pub fn changes_for_budget(
        &self,
        actor: ActorId,
        versions: RangeInclusive<u64>,
        max_changes: usize,
    ) -> Result<(Vec<Changeset>, Option<u64>), StoreError> {
        let conn = self.reader();
        let tx = crate::txn::CachedTx::deferred(&conn)?;
        let row: Option<(u32, u64, Vec<u8>)> = tx
            .prepare_cached("SELECT idx, head, books FROM __corro_actors WHERE actor_id = ?1")?
            .query_row([&actor.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((idx, head, books)) = row else {
            return Ok((Vec::new(), None));
        };
        let mut books = ActorBooks::decode(head, &books)?;
        if idx == self.inner.self_idx {
            // Own commits are recorded only in the version index.
            let own = crate::versions::max_version(&tx, idx)?;
            if own > 0 {
                books.mark_held(1..=own);
            }
        }
        let catalog = self.inner.catalog.read().clone();
        let mut out = Vec::new();
        let mut cleared: Option<RangeInclusive<u64>> = None;
        let flush_cleared =
            |out: &mut Vec<Changeset>, cleared: &mut Option<RangeInclusive<u64>>| {
                if let Some(r) = cleared.take() {
                    out.push(Changeset::Cleared { actor, versions: r });
                }
            };
        let hi = (*versions.end()).min(books.head);
        let mut served = 0usize;
        for v in (*versions.start()).max(1)..=hi {
            if served >= max_changes {
                flush_cleared(&mut out, &mut cleared);
                return Ok((out, Some(v)));
            }
            if books.partials.contains_key(&v) {
                flush_cleared(&mut out, &mut cleared);
                let p = &books.partials[&v];
                for (seqs, changes) in buffered_pieces(&tx, idx, v)? {
                    served += changes.len().max(1);
                    out.push(Changeset::Version {
                        actor,
                        version: v,
                        seqs,
                        last_seq: p.last_seq,
                        ts: p.ts,
                        changes,
                    });
                }
                continue;
            }
            if !books.holds(v) {
                flush_cleared(&mut out, &mut cleared);
                continue;
            }
            let entry = version_entry(&tx, idx, v)?.filter(|e| e.live > 0);
            let Some(entry) = entry else {
                cleared = Some(match cleared.take() {
                    Some(r) => *r.start()..=v,
                    None => v..=v,
                });
                continue;
            };
            let rows = version_rows(&tx, idx, v)?;
            flush_cleared(&mut out, &mut cleared);
            let mut changes = Vec::new();
            for (tbl, key) in rows {
                let Some(meta) = catalog.table(tbl) else {
                    continue;
                };
                let Some((cl, clock)) = tx
                    .prepare_cached(&meta.sql_get_clock)?
                    .query_row([&key], |r| {
                        Ok((r.get::<_, u64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .optional()?
                else {
                    continue;
                };
                let clock = RowClock::decode(&clock)?;
                if let Some(o) = clock.cl_origin.filter(|o| o.actor == idx && o.version == v) {
                    changes.push(Change {
                        table: meta.name.clone(),
                        pk: key.clone(),
                        column: None,
                        value: SqlValue::Null,
                        col_version: 0,
                        cl,
                        seq: o.seq,
                    });
                }
                let mine: Vec<usize> = (0..meta.cols.len())
                    .filter(|i| {
                        clock
                            .col(*i)
                            .is_some_and(|c| c.origin.actor == idx && c.origin.version == v)
                    })
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let pk = decode_key(&key)?;
                let mut stmt = tx.prepare_cached(&meta.sql_select_values)?;
                for (i, p) in pk.iter().enumerate() {
                    stmt.raw_bind_parameter(i + 1, p)?;
                }
                let mut q = stmt.raw_query();
                let Some(row) = q.next()? else { continue };
                for i in mine {
                    let c = clock
                        .col(i)
                        .unwrap_or_else(|| unreachable!("filtered above"));
                    changes.push(Change {
                        table: meta.name.clone(),
                        pk: key.clone(),
                        column: Some(meta.cols[i].clone()),
                        value: row.get::<_, SqlValue>(i)?,
                        col_version: c.col_version,
                        cl,
                        seq: c.origin.seq,
                    });
                }
            }
            changes.sort_by_key(|c| c.seq);
            served += changes.len().max(1);
            out.extend(chunk_version(
                actor,
                v,
                entry.last_seq,
                entry.ts,
                changes,
                CHUNK_BYTES,
            ));
        }
        flush_cleared(&mut out, &mut cleared);
        Ok((out, None))
    }
}
