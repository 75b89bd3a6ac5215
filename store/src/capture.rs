//! Change capture for local writes.
//!
//! Local statements run on the writer's capture connection, where the guard
//! triggers stored in the database file are switched off
//! (`SQLITE_DBCONFIG_ENABLE_TRIGGER`, which still fires TEMP triggers). Rows
//! are captured two ways:
//!
//! - **Inserts into rowid tables** are seen by the update hook, which records
//!   only the table and rowid. The new row is read back at commit, in rowid
//!   runs. No trigger runs for a plain `INSERT`, so SQLite needs no statement
//!   journal for it: a trigger on INSERT made every bulk-loaded row copy its
//!   table and index pages once more, about a third of the insert cost.
//! - **Updates and deletes** (and inserts into `WITHOUT ROWID` tables, which
//!   the update hook does not report) go through TEMP triggers on the capture
//!   connection that call `corro_capture` with an *old image* (the row before
//!   an update or delete) or a *new image* (the row after an insert or update).
//!   An old image carries the row's rowid, so a row whose insert is still
//!   waiting to be read back is first placed where its insert happened.
//!
//! Per touched row the buffer keeps the first old image and the last new image
//! of the transaction, in the order rows were first touched; at commit the
//! store compares them with the row's clock to decide what changed (see
//! `write.rs`). Only the final state at commit matters, so a row inserted and
//! deleted in one transaction produces nothing.
//!
//! The capture connection runs with `recursive_triggers = ON` so that
//! `INSERT OR REPLACE` reports the row it replaces as a delete.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::Action;
use rusqlite::types::ValueRef;

use crate::catalog::{Catalog, TableMeta, quote};
use crate::error::StoreError;
use crate::value::{SqlValue, encode_key, encode_key_refs};

/// Before/after images of one row within the current transaction.
#[derive(Debug, Default)]
pub(crate) struct RowImage {
    pub before: Option<Vec<SqlValue>>,
    pub after: Option<Vec<SqlValue>>,
}

/// An inserted row read back at commit: its encoded key and non-key values.
pub(crate) type ReadBack = (Arc<[u8]>, Vec<SqlValue>);

/// A touched row: (table id, encoded key).
pub(crate) type RowKey = (u32, Arc<[u8]>);

/// One position in the order rows were first touched.
#[derive(Debug)]
enum Slot {
    Row(RowKey, RowImage),
    /// Inserted into a rowid table; read back at commit.
    Inserted,
    /// An insert that turned out to touch a row already in the buffer.
    Merged,
}

/// Rows touched by the current local transaction, in the order they were first
/// touched (so seqs follow the statements, and clock writes follow the data
/// writes' locality).
#[derive(Debug, Default)]
pub(crate) struct CaptureBuffer {
    pub active: bool,
    /// A statement failed after it may have written rows; what was captured
    /// can no longer be matched with the table, so the transaction must fail.
    pub poisoned: bool,
    index: HashMap<RowKey, usize>,
    /// Inserts seen by the update hook, in order: (table id, rowid, slot).
    /// Those whose slot is still [`Slot::Inserted`] are read back at commit.
    hooked_rows: Vec<(u32, i64, usize)>,
    /// Lookup over `hooked_rows[..indexed]`, built only once a trigger
    /// reports an old image (a pure bulk insert never needs it).
    inserted: HashMap<(u32, i64), usize>,
    indexed: usize,
    slots: Vec<Slot>,
    /// Tables whose inserts the update hook reports, by name.
    hooked: HashMap<Box<str>, u32>,
    /// Every replicated table, by lower-case name (for the authorizer).
    replicated: HashMap<Box<str>, u32>,
}

impl CaptureBuffer {
    /// Starts (or ends) capturing with an empty buffer.
    pub(crate) fn reset(&mut self, active: bool) {
        self.active = active;
        self.poisoned = false;
        self.index.clear();
        self.hooked_rows.clear();
        self.inserted.clear();
        self.indexed = 0;
        self.slots.clear();
    }

    /// Whether `name` is a replicated table (any case).
    pub(crate) fn is_replicated(&self, name: &str) -> bool {
        self.replicated
            .contains_key(name.to_ascii_lowercase().as_str())
    }

    /// The touched rows in first-touched order, leaving the buffer empty.
    /// Inserts seen by the update hook are read back with `read`, which gets
    /// a table and its pending rowids in ascending order and returns each
    /// row's key and non-key values in the same order.
    pub(crate) fn take(
        &mut self,
        mut read: impl FnMut(u32, &[i64]) -> Result<Vec<ReadBack>, StoreError>,
    ) -> Result<Vec<(RowKey, RowImage)>, StoreError> {
        let mut pending = std::mem::take(&mut self.hooked_rows);
        pending.retain(|&(_, _, slot)| matches!(self.slots[slot], Slot::Inserted));
        pending.sort_unstable();
        self.inserted.clear();
        self.indexed = 0;
        for group in pending.chunk_by(|a, b| a.0 == b.0) {
            let tbl = group[0].0;
            let rowids: Vec<i64> = group.iter().map(|p| p.1).collect();
            let rows = read(tbl, &rowids)?;
            for ((_, _, slot), (key, vals)) in group.iter().zip(rows) {
                let (key, slot) = ((tbl, key), *slot);
                // A row still waiting here was not touched again after its
                // insert, but it may have been deleted before it.
                let earlier = if self.index.is_empty() {
                    None
                } else {
                    self.index.get(&key).copied()
                };
                match earlier {
                    Some(first) => {
                        if let Slot::Row(_, img) = &mut self.slots[first] {
                            img.after = Some(vals);
                        }
                        self.slots[slot] = Slot::Merged;
                    }
                    None => {
                        self.slots[slot] = Slot::Row(
                            key,
                            RowImage {
                                before: None,
                                after: Some(vals),
                            },
                        );
                    }
                }
            }
        }
        self.index.clear();
        Ok(std::mem::take(&mut self.slots)
            .into_iter()
            .filter_map(|s| match s {
                Slot::Row(k, img) => Some((k, img)),
                Slot::Inserted | Slot::Merged => None,
            })
            .collect())
    }

    /// The update hook saw a row inserted into `table`.
    fn hook_insert(&mut self, table: &str, rowid: i64) {
        if !self.active {
            return;
        }
        if let Some(&tbl) = self.hooked.get(table) {
            self.hooked_rows.push((tbl, rowid, self.slots.len()));
            self.slots.push(Slot::Inserted);
        }
    }

    /// A trigger reported an image: `op` 0 is an old image (with the row's
    /// rowid, if the table has one), 1 a new image.
    fn record(&mut self, tbl: u32, rowid: Option<i64>, key: Vec<u8>, op: i64, vals: Vec<SqlValue>) {
        let key: RowKey = (tbl, key.into());
        if let Some(slot) = rowid.and_then(|r| self.waiting_insert(tbl, r)) {
            // The row was inserted earlier in this transaction and not read
            // back yet: it enters the buffer where its insert happened (its
            // image then is this old image, which the event below replaces).
            if self.index.contains_key(&key) {
                self.slots[slot] = Slot::Merged;
            } else {
                self.index.insert(key.clone(), slot);
                self.slots[slot] = Slot::Row(key.clone(), RowImage::default());
            }
        }
        match self.index.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => {
                if let Slot::Row(_, img) = &mut self.slots[*e.get()] {
                    img.after = if op == 0 { None } else { Some(vals) };
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                let img = if op == 0 {
                    RowImage {
                        before: Some(vals),
                        after: None,
                    }
                } else {
                    RowImage {
                        before: None,
                        after: Some(vals),
                    }
                };
                let key = e.key().clone();
                e.insert(self.slots.len());
                self.slots.push(Slot::Row(key, img));
            }
        }
    }

    /// The slot of a hooked insert of (`tbl`, `rowid`) not placed yet.
    fn waiting_insert(&mut self, tbl: u32, rowid: i64) -> Option<usize> {
        if self.hooked_rows.is_empty() {
            return None;
        }
        for &(t, r, slot) in &self.hooked_rows[self.indexed..] {
            self.inserted.insert((t, r), slot);
        }
        self.indexed = self.hooked_rows.len();
        let slot = self.inserted.remove(&(tbl, rowid))?;
        matches!(self.slots[slot], Slot::Inserted).then_some(slot)
    }

    /// Replaces the set of replicated tables (after open or a schema change).
    fn set_tables(&mut self, catalog: &Catalog) {
        self.hooked.clear();
        self.replicated.clear();
        for meta in catalog.tables.values() {
            self.replicated
                .insert(meta.name.to_ascii_lowercase().into(), meta.id);
            if meta.rowid.is_some() {
                self.hooked.insert(meta.name.as_ref().into(), meta.id);
            }
        }
    }
}

pub(crate) type SharedCapture = Arc<Mutex<CaptureBuffer>>;

fn user_err(msg: &str) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(msg.to_string().into())
}

const REAL_KEY: &str = "REAL primary key values are not supported (1 and 1.0 would name one row but replicate as two); use INTEGER or TEXT keys";
const NOT_CAPTURING: &str = "writes to replicated tables must go through the corrosion agent";

/// The encoded key of a row from its primary-key values.
fn row_key<'a>(
    pk: impl ExactSizeIterator<Item = ValueRef<'a>> + Clone,
) -> Result<Vec<u8>, &'static str> {
    if pk.clone().any(|v| matches!(v, ValueRef::Real(_))) {
        return Err(REAL_KEY);
    }
    Ok(match encode_key_refs(pk.clone()) {
        Some(k) => k,
        None => encode_key(&pk.map(SqlValue::from_ref).collect::<Vec<_>>()),
    })
}

/// Registers `corro_capture(table_id, op, npk, rowid, pk..., cols...)` and the
/// update hook on the capture connection.
pub(crate) fn register(conn: &mut Connection, buffer: SharedCapture) -> rusqlite::Result<()> {
    let hook_buffer = buffer.clone();
    conn.update_hook(Some(
        move |action: Action, db: &str, table: &str, rowid: i64| {
            if action == Action::SQLITE_INSERT && db == "main" {
                hook_buffer.lock().hook_insert(table, rowid);
            }
        },
    ))?;
    conn.create_scalar_function(
        "corro_capture",
        -1,
        FunctionFlags::SQLITE_UTF8,
        move |ctx| {
            if ctx.len() < 4 {
                return Err(user_err("corro_capture: too few arguments"));
            }
            let tbl = ctx.get::<i64>(0)? as u32;
            let op = ctx.get::<i64>(1)?;
            let npk = ctx.get::<i64>(2)? as usize;
            let rowid = ctx.get::<Option<i64>>(3)?;
            if ctx.len() < 4 + npk {
                return Err(user_err("corro_capture: too few arguments"));
            }
            let key = row_key((4..4 + npk).map(|i| ctx.get_raw(i))).map_err(user_err)?;
            let vals: Vec<SqlValue> = (4 + npk..ctx.len())
                .map(|i| SqlValue::from_ref(ctx.get_raw(i)))
                .collect();
            let mut buf = buffer.lock();
            if !buf.active {
                return Err(user_err(NOT_CAPTURING));
            }
            buf.record(tbl, rowid, key, op, vals);
            Ok(None::<i64>)
        },
    )
}

/// (Re)creates the capture connection's TEMP triggers for every replicated
/// table and tells the buffer which tables the update hook covers.
pub(crate) fn install(
    conn: &Connection,
    buffer: &SharedCapture,
    catalog: &Catalog,
) -> rusqlite::Result<()> {
    let old: Vec<String> = conn
        .prepare("SELECT name FROM temp.sqlite_master WHERE type = 'trigger' AND name LIKE '%__corro_cap_%'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut ddl = String::new();
    for name in old {
        ddl.push_str(&format!("DROP TRIGGER IF EXISTS temp.{};\n", quote(&name)));
    }
    for meta in catalog.tables.values() {
        ddl.push_str(&meta.capture_ddl());
    }
    conn.execute_batch(&ddl)?;
    buffer.lock().set_tables(catalog);
    Ok(())
}

/// Reads rows inserted into `meta`'s table back by rowid (ascending): their
/// keys and non-key values, in the same order. Runs of nearby rowids are read
/// with one range scan each.
pub(crate) fn read_inserted(
    conn: &Connection,
    meta: &TableMeta,
    rowids: &[i64],
) -> Result<Vec<ReadBack>, StoreError> {
    /// Rowids further apart than this start a new scan.
    const GAP: i64 = 64;
    let sql = meta
        .sql_select_inserted
        .as_deref()
        .ok_or_else(|| StoreError::Corrupt(format!("{} has no rowid", meta.name)))?;
    let mut stmt = conn.prepare_cached(sql)?;
    let npk = meta.pk.len();
    let mut out = Vec::with_capacity(rowids.len());
    let mut i = 0;
    while i < rowids.len() {
        let mut j = i + 1;
        while j < rowids.len() && rowids[j] - rowids[j - 1] <= GAP {
            j += 1;
        }
        let run = &rowids[i..j];
        let mut rows = stmt.query([run[0], run[run.len() - 1]])?;
        let mut want = run.iter().peekable();
        while let Some(&&next) = want.peek() {
            let Some(row) = rows.next()? else { break };
            let rowid: i64 = row.get(0)?;
            if rowid != next {
                continue; // a row of an earlier transaction between ours
            }
            want.next();
            let key = row_key((1..1 + npk).map(|c| row.get_ref_unwrap(c)))
                .map_err(|m| StoreError::NotAllowed(m.to_string()))?;
            let vals = (1 + npk..1 + npk + meta.cols.len())
                .map(|c| SqlValue::from_ref(row.get_ref_unwrap(c)))
                .collect();
            out.push((Arc::from(key), vals));
        }
        if want.peek().is_some() {
            return Err(StoreError::Corrupt(format!(
                "a row inserted into {} in this transaction is gone",
                meta.name
            )));
        }
        i = j;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<SqlValue> {
        vec![SqlValue::Text(s.into())]
    }

    fn key(k: &str) -> Vec<u8> {
        encode_key(&[SqlValue::Text(k.into())])
    }

    fn rows(buf: &mut CaptureBuffer, read: &[(&str, &str)]) -> Vec<(Vec<u8>, RowImage)> {
        let read: Vec<ReadBack> = read
            .iter()
            .map(|(k, v)| (Arc::from(key(k)), text(v)))
            .collect();
        buf.take(|_, rowids| {
            assert_eq!(rowids.len(), read.len());
            Ok(read.clone())
        })
        .unwrap()
        .into_iter()
        .map(|((_, k), img)| (k.to_vec(), img))
        .collect()
    }

    fn buffer() -> CaptureBuffer {
        let mut b = CaptureBuffer::default();
        b.hooked.insert("t".into(), 1);
        b.reset(true);
        b
    }

    #[test]
    fn hooked_inserts_keep_their_place_among_trigger_events() {
        let mut b = buffer();
        b.record(1, Some(7), key("old"), 0, text("was"));
        b.hook_insert("t", 8);
        b.hook_insert("other", 9); // not a replicated table
        let got = rows(&mut b, &[("new", "v")]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, key("old"));
        assert!(got[0].1.before.is_some() && got[0].1.after.is_none());
        assert_eq!(got[1].0, key("new"));
        assert_eq!(got[1].1.after, Some(text("v")));
        assert!(got[1].1.before.is_none());
    }

    #[test]
    fn an_insert_touched_again_is_placed_where_it_was_inserted() {
        let mut b = buffer();
        b.hook_insert("t", 1);
        b.record(1, None, key("b"), 1, text("other row"));
        // Row 1 ("a") updated later in the transaction.
        b.record(1, Some(1), key("a"), 0, text("first"));
        b.record(1, None, key("a"), 1, text("second"));
        let got = rows(&mut b, &[]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, key("a"));
        assert!(got[0].1.before.is_none(), "an insert has no old image");
        assert_eq!(got[0].1.after, Some(text("second")));
        assert_eq!(got[1].0, key("b"));
    }

    #[test]
    fn inserted_then_deleted_leaves_no_image() {
        let mut b = buffer();
        b.hook_insert("t", 1);
        b.record(1, Some(1), key("a"), 0, text("x"));
        let got = rows(&mut b, &[]);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.before.is_none() && got[0].1.after.is_none());
    }

    #[test]
    fn deleted_then_inserted_again_is_one_row_with_both_images() {
        let mut b = buffer();
        b.record(1, Some(3), key("a"), 0, text("old"));
        b.hook_insert("t", 4);
        let got = rows(&mut b, &[("a", "new")]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.before, Some(text("old")));
        assert_eq!(got[0].1.after, Some(text("new")));
    }

    #[test]
    fn nothing_is_recorded_while_inactive() {
        let mut b = buffer();
        b.reset(false);
        b.hook_insert("t", 1);
        assert!(rows(&mut b, &[]).is_empty());
    }
}
