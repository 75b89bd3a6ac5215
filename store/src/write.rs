//! Local write transactions: run statements, capture what changed, assign the
//! next version, persist clocks and bookkeeping, commit.
//!
//! At commit each touched row's first old image and last new image (from
//! `capture.rs`) are compared with its clock:
//! - old and new image: an update; every column whose value differs (same
//!   storage class and value counts as equal) gets `col_version + 1`;
//! - only a new image: an insert or re-insert; the causal length moves to the
//!   next odd number and every column is written at it, defaults included;
//! - only an old image: a delete; the causal length moves to the next even number;
//! - neither: inserted and deleted in one transaction, nothing happened.
//!
//! A primary-key update shows up as the old key's delete plus the new key's
//! insert. A transaction that changes nothing consumes no version.

use std::sync::atomic::Ordering;

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Statement};

use crate::catalog::TableMeta;
use crate::change::{CHUNK_BYTES, Change, Changeset, chunk_version};
use crate::clock::{CellClock, Origin, RowClock};
use crate::error::StoreError;
use crate::store::{Store, Writer};
use crate::value::SqlValue;
use crate::versions::RefChanges;

/// Statements of one local transaction run through this handle.
pub struct WriteTx<'a> {
    conn: &'a Connection,
    writer: &'a Writer,
}

/// A committed local transaction.
#[derive(Debug)]
pub struct Committed<T> {
    /// What the closure returned.
    pub value: T,
    /// The version issued, `None` if nothing changed.
    pub version: Option<u64>,
    /// Changes of that version, sorted by seq.
    pub changes: Vec<Change>,
    /// Commit time, ms since the epoch.
    pub ts: u64,
}

impl<T> Committed<T> {
    /// The version as changesets of about [`CHUNK_BYTES`] each, ready to broadcast.
    pub fn changesets(&self, actor: crate::ActorId) -> Vec<Changeset> {
        match self.version {
            None => Vec::new(),
            Some(v) => {
                let last_seq = self.changes.last().map_or(0, |c| c.seq);
                chunk_version(
                    actor,
                    v,
                    last_seq,
                    self.ts,
                    self.changes.clone(),
                    CHUNK_BYTES,
                )
            }
        }
    }
}

impl WriteTx<'_> {
    /// Runs one statement with positional parameters; returns rows affected.
    pub fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<usize, StoreError> {
        self.run(sql, |stmt| {
            let expected = stmt.parameter_count();
            if expected != params.len() {
                return Err(rusqlite::Error::InvalidParameterCount(
                    params.len(),
                    expected,
                ));
            }
            for (i, p) in params.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, p)?;
            }
            Ok(())
        })
    }

    /// Runs one statement with named parameters (`:name`, `@name` or `$name`).
    pub fn execute_named(
        &mut self,
        sql: &str,
        params: &[(String, SqlValue)],
    ) -> Result<usize, StoreError> {
        self.run(sql, |stmt| {
            for (name, v) in params {
                let idx = stmt
                    .parameter_index(name)?
                    .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
                stmt.raw_bind_parameter(idx, v)?;
            }
            Ok(())
        })
    }

    /// Prepares a statement to run many times in this transaction (bulk
    /// loads): checked once against the same rules as [`WriteTx::execute`].
    pub fn prepare(&self, sql: &str) -> Result<WriteStmt<'_>, StoreError> {
        let mode = &self.writer.user_mode;
        mode.store(true, Ordering::Relaxed);
        let stmt = self.conn.prepare(sql);
        mode.store(false, Ordering::Relaxed);
        Ok(WriteStmt {
            conn: self.conn,
            stmt: stmt.map_err(user_error)?,
        })
    }

    fn run(
        &mut self,
        sql: &str,
        bind: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<()>,
    ) -> Result<usize, StoreError> {
        let mode = &self.writer.user_mode;
        mode.store(true, Ordering::Relaxed);
        let out = (|| {
            // Internal statements are cached by their text and all name a
            // `__corro` table; never hand such a cached statement to a client.
            if sql.contains("__corro") {
                let mut stmt = self.conn.prepare(sql)?;
                exec(self.conn, &mut stmt, bind)
            } else {
                let mut stmt = self.conn.prepare_cached(sql)?;
                exec(self.conn, &mut stmt, bind)
            }
        })();
        mode.store(false, Ordering::Relaxed);
        out.map_err(user_error)
    }
}

/// A statement prepared by [`WriteTx::prepare`].
pub struct WriteStmt<'a> {
    conn: &'a Connection,
    stmt: Statement<'a>,
}

impl WriteStmt<'_> {
    /// Runs the statement with positional parameters; returns rows affected.
    pub fn execute(&mut self, params: &[SqlValue]) -> Result<usize, StoreError> {
        exec(self.conn, &mut self.stmt, |stmt| {
            let expected = stmt.parameter_count();
            if expected != params.len() {
                return Err(rusqlite::Error::InvalidParameterCount(
                    params.len(),
                    expected,
                ));
            }
            for (i, p) in params.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, p)?;
            }
            Ok(())
        })
        .map_err(user_error)
    }
}

/// Maps SQLite's refusal of a client statement to [`StoreError::NotAllowed`].
fn user_error(e: rusqlite::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("not authorized") {
        StoreError::NotAllowed(format!(
            "{text} (DDL, PRAGMA, ATTACH, transaction control and writes to internal tables are refused)"
        ))
    } else {
        StoreError::Sqlite(e)
    }
}

fn exec(
    conn: &Connection,
    stmt: &mut Statement<'_>,
    bind: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<usize> {
    stmt.clear_bindings();
    bind(stmt)?;
    if stmt.column_count() == 0 {
        stmt.raw_execute()
    } else {
        let mut rows = stmt.raw_query();
        while rows.next()?.is_some() {}
        Ok(conn.changes() as usize)
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Ends a local transaction however the closure exits (including a panic):
/// capture is switched off, and the transaction is rolled back unless it
/// was committed.
struct TxGuard<'a> {
    writer: &'a Writer,
    armed: bool,
}

impl Drop for TxGuard<'_> {
    fn drop(&mut self) {
        {
            self.writer.capture.lock().reset(false);
        }
        if self.armed {
            let _ = self.writer.local.execute_batch("ROLLBACK");
        }
    }
}

pub(crate) fn get_clock(
    conn: &Connection,
    meta: &TableMeta,
    key: &[u8],
) -> Result<(u64, RowClock), StoreError> {
    let row: Option<(u64, Vec<u8>)> = conn
        .prepare_cached(&meta.sql_get_clock)?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match row {
        Some((cl, blob)) => (cl, RowClock::decode(&blob)?),
        None => (0, RowClock::default()),
    })
}

impl Store {
    /// Runs `f` as one local write transaction. All or nothing: if `f` or the
    /// commit fails, nothing is written and no version is consumed.
    pub fn transact<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<Committed<T>, StoreError> {
        let w = self.inner.writer.local();
        let conn = &w.local;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut guard = TxGuard {
            writer: &w,
            armed: true,
        };
        w.capture.lock().reset(true);
        let result = (|| -> Result<_, StoreError> {
            let value = f(&mut WriteTx { conn, writer: &w })?;
            let version = self.head() + 1;
            let ts = now_ms();
            let changes = self.flush(&w, version, ts)?;
            Ok((value, version, ts, changes))
        })();
        let (value, version, ts, changes) = result?;
        conn.execute_batch("COMMIT")?;
        guard.armed = false;
        let version = if changes.is_empty() {
            None
        } else {
            let mut books = self.inner.books.write();
            books
                .entry(self.inner.self_idx)
                .or_default()
                .mark_held(version..=version);
            Some(version)
        };
        Ok(Committed {
            value,
            version,
            changes,
            ts,
        })
    }

    /// Turns the captured row images into clock updates and changes.
    fn flush(&self, w: &Writer, version: u64, ts: u64) -> Result<Vec<Change>, StoreError> {
        let rows = w.capture.lock().take();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let conn = &w.local;
        let catalog = self.inner.catalog.read().clone();
        let me = self.inner.self_idx;
        let mine = [(me, version)];
        let origin = |seq: u64| Origin {
            actor: me,
            version,
            seq,
        };
        let mut seq = 0u64;
        let mut changes = Vec::with_capacity(rows.len() * 2);
        let mut refs = RefChanges::default();
        // Rows come sorted by table, so statements are prepared once per table.
        let mut stmts: Option<(u32, [rusqlite::CachedStatement<'_>; 3])> = None;
        for ((tbl, key), img) in rows {
            let meta = catalog.table(tbl).ok_or_else(|| {
                StoreError::Corrupt(format!("capture for unknown table id {tbl}"))
            })?;
            if stmts.as_ref().is_none_or(|(t, _)| *t != tbl) {
                stmts = Some((
                    tbl,
                    [
                        conn.prepare_cached(&meta.sql_get_clock)?,
                        conn.prepare_cached(&meta.sql_put_clock)?,
                        conn.prepare_cached(&meta.sql_new_clock)?,
                    ],
                ));
            }
            let Some((_, [get, put, fresh])) = stmts.as_mut() else {
                unreachable!("prepared above")
            };
            let ncols = meta.cols.len();
            match (img.before, img.after) {
                (None, None) => {}
                (None, Some(a)) => {
                    // A new row: write its clock at cl 1 unless a tombstone is
                    // there, in which case this is a re-insert at the next odd cl.
                    let clock = insert_clock(ncols, seq, version, me, ts);
                    let blob = clock.encode();
                    let (cl, before) =
                        if fresh.execute(rusqlite::params![&key[..], 1u64, &blob])? == 1 {
                            (1, Vec::new())
                        } else {
                            let (old_cl, old) = read_clock(get, &key)?;
                            let cl = if old_cl % 2 == 1 {
                                old_cl + 2
                            } else {
                                old_cl + 1
                            };
                            put.execute(rusqlite::params![&key[..], cl, &blob])?;
                            (cl, old.origins())
                        };
                    push_insert(&mut changes, meta, &key, cl, &mut seq, a);
                    refs.row(tbl, &key, &before, &mine);
                }
                (before_img, after_img) => {
                    let (cl, old) = read_clock(get, &key)?;
                    let before = old.origins();
                    let mut clock = old;
                    let new_cl = match (before_img, after_img) {
                        (Some(b), Some(a)) if cl % 2 == 1 => {
                            let first = seq;
                            for i in 0..ncols {
                                let (old_v, new_v) = (
                                    b.get(i).unwrap_or(&SqlValue::Null),
                                    a.get(i).unwrap_or(&SqlValue::Null),
                                );
                                if old_v.same_as(new_v) {
                                    continue;
                                }
                                let col_version = clock.col(i).map_or(0, |c| c.col_version) + 1;
                                clock.set_col(
                                    i,
                                    Some(CellClock {
                                        col_version,
                                        origin: origin(seq),
                                    }),
                                );
                                changes.push(Change {
                                    table: meta.name.clone(),
                                    pk: key.clone(),
                                    column: Some(meta.cols[i].clone()),
                                    value: new_v.clone(),
                                    col_version,
                                    cl,
                                    seq,
                                });
                                seq += 1;
                            }
                            if seq == first {
                                continue; // every value written was the current one
                            }
                            cl
                        }
                        (_, Some(a)) => {
                            // The clock says the row is gone although it existed:
                            // treat it as a re-insert.
                            let new_cl = if cl % 2 == 1 { cl + 2 } else { cl + 1 };
                            clock = insert_clock(ncols, seq, version, me, ts);
                            push_insert(&mut changes, meta, &key, new_cl, &mut seq, a);
                            new_cl
                        }
                        (_, None) => {
                            let new_cl = if cl % 2 == 1 { cl + 1 } else { cl + 2 };
                            clock = RowClock {
                                cl_origin: Some(origin(seq)),
                                cols: Vec::new(),
                                ts,
                            };
                            changes.push(sentinel(meta, &key, new_cl, seq));
                            seq += 1;
                            new_cl
                        }
                    };
                    clock.ts = ts;
                    put.execute(rusqlite::params![&key[..], new_cl, clock.encode()])?;
                    refs.row(tbl, &key, &before, &clock.origins());
                }
            }
        }
        drop(stmts);
        if changes.is_empty() {
            return Ok(changes);
        }
        let last_seq = seq - 1;
        // The version's own index entry also records this node's head, so a
        // local commit writes no separate bookkeeping row.
        refs.persist(conn, &|_, _| (last_seq, ts))?;
        Ok(changes)
    }
}

fn read_clock(
    stmt: &mut rusqlite::CachedStatement<'_>,
    key: &[u8],
) -> Result<(u64, RowClock), StoreError> {
    let row: Option<(u64, Vec<u8>)> = stmt
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match row {
        Some((cl, blob)) => (cl, RowClock::decode(&blob)?),
        None => (0, RowClock::default()),
    })
}

/// Clock of a row (re)inserted by this version: the sentinel at `seq`, then
/// every column at col_version 1 with the following seqs.
fn insert_clock(ncols: usize, seq: u64, version: u64, me: u32, ts: u64) -> RowClock {
    let origin = |s: u64| Origin {
        actor: me,
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

/// The changes of an insert: a sentinel, then every column (defaults included).
fn push_insert(
    changes: &mut Vec<Change>,
    meta: &TableMeta,
    key: &Arc<[u8]>,
    cl: u64,
    seq: &mut u64,
    values: Vec<SqlValue>,
) {
    changes.push(sentinel(meta, key, cl, *seq));
    *seq += 1;
    for (i, v) in values.into_iter().enumerate().take(meta.cols.len()) {
        changes.push(Change {
            table: meta.name.clone(),
            pk: key.clone(),
            column: Some(meta.cols[i].clone()),
            value: v,
            col_version: 1,
            cl,
            seq: *seq,
        });
        *seq += 1;
    }
}

fn sentinel(meta: &TableMeta, key: &Arc<[u8]>, cl: u64, seq: u64) -> Change {
    Change {
        table: meta.name.clone(),
        pk: key.clone(),
        column: None,
        value: SqlValue::Null,
        col_version: 0,
        cl,
        seq,
    }
}
