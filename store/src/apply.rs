//! Applying changes from other nodes.
//!
//! One call is one SQLite transaction on the writer's apply connection (whose
//! triggers are disabled, so remote changes are never re-captured). For each
//! changeset the bookkeeping decides: already held (skip), a cleared range
//! (mark held), a complete version (merge now) or a piece of one (buffer in
//! `__corro_buffered` until every seq is there, then merge all of it at once).
//! A version naming a table or column this node does not have yet stays
//! buffered and is retried after the next schema change; it is never dropped.
//!
//! Merging groups all changes by row, loads each row's clock once, runs the
//! pure merge in `clock.rs`, then writes the data row, the clock and the
//! version index. Bookkeeping is persisted in the same transaction.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use rusqlite::Connection;

use crate::actor::ActorId;
use crate::bookkeeping::{ActorBooks, PieceOutcome};
use crate::catalog::{Catalog, TableMeta};
use crate::change::{Change, Changeset};
use crate::clock::{Origin, RowClock, RowMerge};
use crate::error::StoreError;
use crate::feed::RowsChanged;
use crate::store::{Store, actor_index};
use crate::value::{SqlValue, decode_key};
use crate::versions::RefChanges;
use crate::write::get_clock;

/// What an [`Store::apply`] call did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ApplyOutcome {
    /// Versions merged by this call: (actor, version).
    pub applied: Vec<(ActorId, u64)>,
    /// Changes that were merged (winning or not), for re-broadcast and
    /// subscriptions.
    pub changes: usize,
    /// Versions recorded as cleared.
    pub cleared: u64,
    /// Pieces of versions that are still incomplete.
    pub buffered: usize,
    /// Changesets skipped because their version was already held.
    pub duplicates: usize,
    /// Complete versions kept aside until the schema knows their tables/columns.
    pub pending_schema: usize,
}

struct Ready {
    actor: u32,
    version: u64,
    last_seq: u64,
    ts: u64,
    changes: Vec<Change>,
}

/// Pieces of one version received in one call.
struct Pieces {
    last_seq: u64,
    ts: u64,
    pieces: Vec<(std::ops::RangeInclusive<u64>, Vec<Change>)>,
}

impl Store {
    /// Merges changesets received from peers. All-or-nothing per call.
    ///
    /// Pieces of one version passed in the same call are assembled in memory;
    /// pieces of versions that stay incomplete are buffered on disk.
    pub fn apply(&self, sets: Vec<Changeset>) -> Result<ApplyOutcome, StoreError> {
        self.inner.space.check()?;
        let r = self.apply_inner(sets);
        self.inner.space.note(&r);
        r
    }

    fn apply_inner(&self, sets: Vec<Changeset>) -> Result<ApplyOutcome, StoreError> {
        let w = self.inner.writer.remote();
        let conn = &w.apply;
        // New actors get their index in a transaction of their own: the actor
        // table only grows, and the catalog must never name an index that a
        // rolled-back transaction removed.
        let mut catalog = self.inner.catalog.read().clone();
        let unknown: Vec<ActorId> = sets
            .iter()
            .map(Changeset::actor)
            .filter(|a| !catalog.actor_idx.contains_key(a))
            .collect();
        if !unknown.is_empty() {
            let tx = crate::txn::CachedTx::deferred(conn)?;
            let mut cat = (*catalog).clone();
            for a in unknown {
                let idx = actor_index(&tx, &a)?;
                cat.add_actor(idx, a);
            }
            tx.commit()?;
            catalog = Arc::new(cat);
            *self.inner.catalog.write() = catalog.clone();
        }

        let tx = crate::txn::CachedTx::deferred(conn)?;
        let mut out = ApplyOutcome::default();
        let mut staged: HashMap<u32, ActorBooks> = HashMap::default();
        let mut groups: BTreeMap<(u32, u64), Pieces> = BTreeMap::new();
        let mut ready: Vec<Ready> = Vec::new();
        {
            let committed = self.inner.books.read();
            for set in sets {
                let idx = catalog.actor_idx[&set.actor()];
                let books = staged
                    .entry(idx)
                    .or_insert_with(|| committed.get(&idx).cloned().unwrap_or_default());
                match set {
                    Changeset::Cleared { versions, .. } => {
                        let (lo, hi) = (*versions.start(), *versions.end());
                        if lo == 0 || lo > hi {
                            continue;
                        }
                        let newly = books.lacking_in(lo..=hi);
                        books.mark_held(lo..=hi);
                        tx.prepare_cached(
                            "DELETE FROM __corro_buffered WHERE actor = ?1 AND version BETWEEN ?2 AND ?3",
                        )?
                        .execute(rusqlite::params![idx, lo, hi])?;
                        groups.retain(|(a, v), _| *a != idx || *v < lo || *v > hi);
                        out.cleared += newly;
                    }
                    Changeset::Version {
                        actor,
                        version,
                        seqs,
                        last_seq,
                        ts,
                        changes,
                    } => {
                        validate_piece(&actor, version, &seqs, last_seq, &changes)?;
                        if books.holds(version) {
                            out.duplicates += 1;
                            continue;
                        }
                        let g = groups.entry((idx, version)).or_insert_with(|| Pieces {
                            last_seq,
                            ts,
                            pieces: Vec::new(),
                        });
                        g.pieces.push((seqs, changes));
                    }
                }
            }
        }
        for ((idx, version), g) in groups {
            let books = staged.entry(idx).or_default();
            let had_partial = books.partials.contains_key(&version);
            let mut complete = false;
            for (seqs, _) in &g.pieces {
                complete |= books.add_piece(version, seqs.clone(), g.last_seq, g.ts)
                    == PieceOutcome::Complete;
            }
            if !complete {
                for (seqs, changes) in &g.pieces {
                    buffer(&tx, idx, version, seqs, changes)?;
                }
                out.buffered += g.pieces.len();
                continue;
            }
            let mut changes: Vec<Change> = if had_partial {
                take_buffered(&tx, idx, version)?
            } else {
                Vec::new()
            };
            for (_, mut c) in g.pieces {
                changes.append(&mut c);
            }
            changes.sort_by_key(|c| c.seq);
            changes.dedup_by_key(|c| c.seq);
            ready.push(Ready {
                actor: idx,
                version,
                last_seq: g.last_seq,
                ts: g.ts,
                changes,
            });
        }

        // Versions whose tables or columns are unknown wait for a schema change.
        let (ready, pending): (Vec<Ready>, Vec<Ready>) = ready
            .into_iter()
            .partition(|r| schema_knows(&catalog, &r.changes));
        for p in pending {
            tracing::warn!(actor = %catalog.actor(p.actor), version = p.version, "version names a table or column this node does not have yet; keeping it until the schema catches up");
            buffer(&tx, p.actor, p.version, &(0..=p.last_seq), &p.changes)?;
            out.pending_schema += 1;
        }

        if ready.is_empty() && out.cleared == 0 && out.buffered == 0 && out.pending_schema == 0 {
            // Nothing new (duplicates, ranges already held): roll back
            // rather than commit unchanged books, so nothing commits (the
            // data generation stays; answers kept by readers stay valid).
            return Ok(out);
        }
        merge(&tx, &catalog, &ready)?;
        for r in &ready {
            if let Some(b) = staged.get_mut(&r.actor) {
                b.mark_held(r.version..=r.version);
            }
            out.applied.push((catalog.actor(r.actor), r.version));
            out.changes += r.changes.len();
        }
        self.commit_applied(tx, staged, &ready)?;
        Ok(out)
    }

    /// Persists the staged bookkeeping with the merged data, commits,
    /// publishes the books and reports the merged rows to the change feed.
    fn commit_applied(
        &self,
        tx: crate::txn::CachedTx<'_>,
        staged: HashMap<u32, ActorBooks>,
        ready: &[Ready],
    ) -> Result<(), StoreError> {
        persist_books(&tx, &staged)?;
        tx.commit()?;
        {
            let mut books = self.inner.books.write();
            for (idx, b) in staged {
                books.insert(idx, b);
            }
        }
        self.notify(|| {
            RowsChanged::from_rows(
                ready
                    .iter()
                    .flat_map(|r| r.changes.iter().map(|c| (&c.table, &c.pk, c.cl))),
                false,
            )
        });
        Ok(())
    }

    /// Retries complete versions that were waiting for the schema.
    pub(crate) fn retry_pending(&self) -> Result<usize, StoreError> {
        let w = self.inner.writer.remote();
        let catalog = self.inner.catalog.read().clone();
        let pending: Vec<(u32, u64, u64, u64)> = self
            .inner
            .books
            .read()
            .iter()
            .flat_map(|(idx, b)| {
                b.partials
                    .iter()
                    .filter(|(_, p)| p.is_complete())
                    .map(|(v, p)| (*idx, *v, p.last_seq, p.ts))
                    .collect::<Vec<_>>()
            })
            .collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let tx = crate::txn::CachedTx::deferred(&w.apply)?;
        let mut ready = Vec::new();
        for (idx, version, last_seq, ts) in pending {
            let changes = read_buffered(&tx, idx, version)?;
            if schema_knows(&catalog, &changes) {
                take_buffered(&tx, idx, version)?;
                ready.push(Ready {
                    actor: idx,
                    version,
                    last_seq,
                    ts,
                    changes,
                });
            }
        }
        if ready.is_empty() {
            return Ok(0);
        }
        merge(&tx, &catalog, &ready)?;
        let mut staged: HashMap<u32, ActorBooks> = HashMap::default();
        {
            let books = self.inner.books.read();
            for r in &ready {
                staged
                    .entry(r.actor)
                    .or_insert_with(|| books.get(&r.actor).cloned().unwrap_or_default())
                    .mark_held(r.version..=r.version);
            }
        }
        self.commit_applied(tx, staged, &ready)?;
        let n = ready.len();
        tracing::info!(
            versions = n,
            "applied versions that were waiting for the schema"
        );
        Ok(n)
    }
}

fn persist_books(conn: &Connection, staged: &HashMap<u32, ActorBooks>) -> Result<(), StoreError> {
    for (idx, b) in staged {
        conn.prepare_cached("UPDATE __corro_actors SET head = ?1, books = ?2 WHERE idx = ?3")?
            .execute(rusqlite::params![b.head, b.encode(), idx])?;
    }
    Ok(())
}

fn validate_piece(
    actor: &ActorId,
    version: u64,
    seqs: &std::ops::RangeInclusive<u64>,
    last_seq: u64,
    changes: &[Change],
) -> Result<(), StoreError> {
    let bad = |reason: String| StoreError::InvalidChange {
        actor: actor.to_string(),
        reason,
    };
    // Versions count from 1: a piece of version 0 could never be held,
    // so it would sit in the buffer table for good.
    if version == 0 {
        return Err(bad("version 0 (versions start at 1)".into()));
    }
    if seqs.start() > seqs.end() || *seqs.end() > last_seq {
        return Err(bad(format!("seq range {seqs:?} outside 0..={last_seq}")));
    }
    let mut prev_pk: Option<&[u8]> = None;
    for c in changes {
        if !seqs.contains(&c.seq) {
            return Err(bad(format!(
                "change seq {} outside its piece {seqs:?}",
                c.seq
            )));
        }
        if c.cl == 0 || (!c.is_sentinel() && c.cl % 2 == 0) {
            return Err(bad(format!(
                "impossible causal length {} for a {} change",
                c.cl,
                if c.is_sentinel() { "row" } else { "cell" }
            )));
        }
        // Consecutive changes usually share a row; check each key once.
        if prev_pk.is_some_and(|p: &[u8]| p == &c.pk[..]) {
            continue;
        }
        prev_pk = Some(&c.pk[..]);
        if decode_key(&c.pk).is_err() {
            return Err(bad("undecodable primary key".into()));
        }
    }
    Ok(())
}

fn schema_knows(catalog: &Catalog, changes: &[Change]) -> bool {
    changes
        .iter()
        .all(|c| match catalog.table_by_name(&c.table) {
            None => false,
            Some(meta) => match &c.column {
                None => key_arity(&c.pk) == Some(meta.pk.len()),
                Some(col) => meta.col(col).is_some(),
            },
        })
}

/// Number of values in an encoded key, read from its length prefix.
fn key_arity(key: &[u8]) -> Option<usize> {
    match key.first() {
        Some(&n) if n < 0x80 => Some(usize::from(n)),
        _ => decode_key(key).ok().map(|k| k.len()),
    }
}

fn buffer(
    conn: &Connection,
    actor: u32,
    version: u64,
    seqs: &std::ops::RangeInclusive<u64>,
    changes: &[Change],
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO __corro_buffered (actor, version, first_seq, end_seq, changes) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(rusqlite::params![actor, version, seqs.start(), seqs.end(), postcard::to_stdvec(changes)?])?;
    Ok(())
}

/// Buffered pieces of a version: (seq range, changes).
pub(crate) type Piece = (std::ops::RangeInclusive<u64>, Vec<Change>);

pub(crate) fn buffered_pieces(
    conn: &Connection,
    actor: u32,
    version: u64,
) -> Result<Vec<Piece>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT first_seq, end_seq, changes FROM __corro_buffered WHERE actor = ?1 AND version = ?2 ORDER BY first_seq",
    )?;
    let rows: Vec<(u64, u64, Vec<u8>)> = stmt
        .query_map(rusqlite::params![actor, version], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(a, b, blob)| Ok((a..=b, postcard::from_bytes(&blob)?)))
        .collect()
}

/// All buffered changes of a version, by seq, without duplicates.
fn read_buffered(conn: &Connection, actor: u32, version: u64) -> Result<Vec<Change>, StoreError> {
    let mut all: Vec<Change> = buffered_pieces(conn, actor, version)?
        .into_iter()
        .flat_map(|(_, c)| c)
        .collect();
    all.sort_by_key(|c| c.seq);
    all.dedup_by_key(|c| c.seq);
    Ok(all)
}

fn take_buffered(conn: &Connection, actor: u32, version: u64) -> Result<Vec<Change>, StoreError> {
    let changes = read_buffered(conn, actor, version)?;
    conn.prepare_cached("DELETE FROM __corro_buffered WHERE actor = ?1 AND version = ?2")?
        .execute(rusqlite::params![actor, version])?;
    Ok(changes)
}

/// A row in a merge batch: (table id, encoded key).
type RowId<'a> = (u32, &'a Arc<[u8]>);

/// The changes to one row in a merge batch, with their origins.
type RowChanges<'a> = Vec<(Origin, &'a Change)>;

/// Merges complete versions into the tables.
fn merge(conn: &Connection, catalog: &Catalog, ready: &[Ready]) -> Result<(), StoreError> {
    // Rows in first-seen order (a version's changes come in key order, which
    // keeps B-tree writes local); hashing beats ordered maps on long keys.
    let mut slot: HashMap<RowId<'_>, usize> = HashMap::default();
    let mut rows: Vec<(RowId<'_>, RowChanges<'_>)> = Vec::new();
    let mut last_seqs: HashMap<(u32, u64), u64> = HashMap::default();
    let mut ts_of: HashMap<(u32, u64), u64> = HashMap::default();
    for r in ready {
        last_seqs.insert((r.actor, r.version), r.last_seq);
        ts_of.insert((r.actor, r.version), r.ts);
        for c in &r.changes {
            let Some(meta) = catalog.table_by_name(&c.table) else {
                continue;
            };
            let origin = Origin {
                actor: r.actor,
                version: r.version,
                seq: c.seq,
            };
            let i = *slot.entry((meta.id, &c.pk)).or_insert_with(|| {
                rows.push(((meta.id, &c.pk), Vec::new()));
                rows.len() - 1
            });
            rows[i].1.push((origin, c));
        }
    }
    drop(slot);
    let actor_of = |idx: u32| catalog.actor(idx);
    let mut refs = RefChanges::default();
    for ((tbl, key), changes) in rows {
        let Some(meta) = catalog.table(tbl) else {
            continue;
        };
        // Fast path: most rows a peer sends are new here. Merge as if the row
        // had no history and create its clock only if none exists; a conflict
        // means it has history, and the full merge below runs instead.
        let mut fresh = RowMerge::new(0, RowClock::default(), meta.cols.len());
        merge_row(&mut fresh, &changes, meta, &actor_of, &ts_of, &mut |_| {
            Ok(SqlValue::Null)
        })?;
        if fresh.clock_dirty
            && conn
                .prepare_cached(&meta.sql_new_clock)?
                .execute(rusqlite::params![&key[..], fresh.cl, fresh.clock.encode()])?
                == 1
        {
            write_row(conn, meta, key, &fresh)?;
            refs.row(meta.id, key, &[], &fresh.clock.origins());
            continue;
        }
        let (cl, clock) = get_clock(conn, meta, key)?;
        let before = clock.origins();
        let mut m = RowMerge::new(cl, clock, meta.cols.len());
        let mut stored: Option<Vec<SqlValue>> = None;
        merge_row(&mut m, &changes, meta, &actor_of, &ts_of, &mut |i| {
            if stored.is_none() {
                stored = Some(load_values(conn, meta, key)?);
            }
            Ok(stored
                .as_ref()
                .and_then(|v| v.get(i).cloned())
                .unwrap_or(SqlValue::Null))
        })?;
        if !m.clock_dirty {
            continue;
        }
        write_row(conn, meta, key, &m)?;
        conn.prepare_cached(&meta.sql_put_clock)?
            .execute(rusqlite::params![key, m.cl, m.clock.encode()])?;
        refs.row(meta.id, key, &before, &m.clock.origins());
    }
    refs.persist(conn, &|a, v| {
        (
            last_seqs.get(&(a, v)).copied().unwrap_or(0),
            ts_of.get(&(a, v)).copied().unwrap_or(0),
        )
    })?;
    Ok(())
}

/// Runs one row's changes through the merge state machine.
fn merge_row(
    m: &mut RowMerge,
    changes: &RowChanges<'_>,
    meta: &TableMeta,
    actor_of: &dyn Fn(u32) -> ActorId,
    ts_of: &HashMap<(u32, u64), u64>,
    current: &mut dyn FnMut(usize) -> Result<SqlValue, StoreError>,
) -> Result<(), StoreError> {
    for (origin, c) in changes {
        match &c.column {
            None => {
                m.sentinel(c.cl, *origin, actor_of);
            }
            Some(col) => {
                let Some(i) = meta.col(col) else { continue };
                m.cell(i, c.cl, c.col_version, &c.value, *origin, actor_of, current)?;
            }
        }
        if let Some(ts) = ts_of.get(&(origin.actor, origin.version)) {
            m.clock.ts = m.clock.ts.max(*ts);
        }
    }
    Ok(())
}

fn bind_key(stmt: &mut rusqlite::CachedStatement<'_>, key: &[SqlValue]) -> rusqlite::Result<()> {
    for (i, v) in key.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, v)?;
    }
    Ok(())
}

/// Binds the key, then the written columns, for the statements of `write_row`.
fn bind_row(
    stmt: &mut rusqlite::CachedStatement<'_>,
    pk: &[SqlValue],
    written: &[usize],
    m: &RowMerge,
) -> rusqlite::Result<()> {
    bind_key(stmt, pk)?;
    for (n, i) in written.iter().enumerate() {
        stmt.raw_bind_parameter(
            pk.len() + n + 1,
            m.written[*i].as_ref().unwrap_or(&SqlValue::Null),
        )?;
    }
    Ok(())
}

fn load_values(
    conn: &Connection,
    meta: &TableMeta,
    key: &[u8],
) -> Result<Vec<SqlValue>, StoreError> {
    let pk = decode_key(key)?;
    let mut stmt = conn.prepare_cached(&meta.sql_select_values)?;
    bind_key(&mut stmt, &pk)?;
    let mut rows = stmt.raw_query();
    match rows.next()? {
        Some(row) => (0..meta.cols.len())
            .map(|i| row.get::<_, SqlValue>(i).map_err(StoreError::from))
            .collect(),
        None => Ok(vec![SqlValue::Null; meta.cols.len()]),
    }
}

/// Writes the data row so it matches the merged clock.
fn write_row(
    conn: &Connection,
    meta: &TableMeta,
    key: &[u8],
    m: &RowMerge,
) -> Result<(), StoreError> {
    let was_alive = m.old_cl % 2 == 1;
    let pk = decode_key(key)?;
    let delete = |conn: &Connection| -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(&meta.sql_delete_row)?;
        bind_key(&mut stmt, &pk)?;
        stmt.raw_execute()?;
        Ok(())
    };
    let written: Vec<usize> = (0..m.written.len())
        .filter(|i| m.written[*i].is_some())
        .collect();
    if !m.alive() {
        if was_alive {
            delete(conn)?;
        }
        return Ok(());
    }
    if was_alive && !m.life_changed() {
        if written.is_empty() {
            return Ok(());
        }
        let mut stmt = conn.prepare_cached(&meta.sql_write(false, &written))?;
        bind_row(&mut stmt, &pk, &written, m)?;
        stmt.raw_execute()?;
        return Ok(());
    }
    if was_alive {
        // A new life: columns from the previous one must not survive.
        delete(conn)?;
    }
    let mut stmt = conn.prepare_cached(&meta.sql_write(true, &written))?;
    bind_row(&mut stmt, &pk, &written, m)?;
    stmt.raw_execute()?;
    Ok(())
}
