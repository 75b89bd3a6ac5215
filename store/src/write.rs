//! Local write transactions: run statements, capture what changed, assign the
//! next version, persist clocks and bookkeeping, commit.
//!
//! A statement that fails during execution fails the whole transaction: it
//! may have written (and SQLite undone) rows that capture already saw.
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

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Statement};

use crate::catalog::{CLOCK_BATCH, TableMeta};
use crate::change::{CHUNK_BYTES, Change, Changeset, chunk_version};
use crate::clock::{CellClock, Origin, RowClock, encode_uniform, uniform_clock};
use crate::error::StoreError;
use crate::store::{Mode, Store, Writer};
use crate::value::{SqlValue, bind_named, bind_positional};
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
    /// Commit time, ms since the epoch.
    pub ts: u64,
    /// What changed, one compact record per row; [`Change`]s are produced
    /// from it on demand (a bulk load would otherwise hold three ~100-byte
    /// structs per row).
    pub(crate) rows: Vec<RowChange>,
    pub(crate) last_seq: u64,
}

/// One row's part of a local version.
#[derive(Debug)]
pub(crate) struct RowChange {
    pub(crate) meta: Arc<TableMeta>,
    pub(crate) pk: Arc<[u8]>,
    /// Causal length after the change.
    pub(crate) cl: u64,
    /// Seq of the first change of this row; the rest follow consecutively.
    first_seq: u64,
    op: RowOp,
}

#[derive(Debug)]
enum RowOp {
    /// Sentinel, then every column in table order.
    Insert(Vec<SqlValue>),
    /// Changed columns: (column index, col_version, value).
    Update(Vec<(usize, u64, SqlValue)>),
    /// Sentinel only.
    Delete,
}

impl RowChange {
    fn push_changes(&self, out: &mut Vec<Change>) {
        let cell = |i: usize, col_version: u64, value: &SqlValue, seq: u64| Change {
            table: self.meta.name.clone(),
            pk: self.pk.clone(),
            column: Some(self.meta.cols[i].clone()),
            value: value.clone(),
            col_version,
            cl: self.cl,
            seq,
        };
        let sentinel = || Change {
            table: self.meta.name.clone(),
            pk: self.pk.clone(),
            column: None,
            value: SqlValue::Null,
            col_version: 0,
            cl: self.cl,
            seq: self.first_seq,
        };
        match &self.op {
            RowOp::Insert(values) => {
                out.push(sentinel());
                for (i, v) in values.iter().enumerate() {
                    out.push(cell(i, 1, v, self.first_seq + 1 + i as u64));
                }
            }
            RowOp::Update(cells) => {
                for (n, (i, cv, v)) in cells.iter().enumerate() {
                    out.push(cell(*i, *cv, v, self.first_seq + n as u64));
                }
            }
            RowOp::Delete => out.push(sentinel()),
        }
    }
}

impl<T> Committed<T> {
    /// Every change of the version, sorted by seq.
    pub fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for r in &self.rows {
            r.push_changes(&mut out);
        }
        out
    }

    /// Number of changes in the version.
    pub fn change_count(&self) -> u64 {
        if self.version.is_some() {
            self.last_seq + 1
        } else {
            0
        }
    }

    /// The version as changesets of about [`CHUNK_BYTES`] each, ready to
    /// broadcast; built row by row without materializing the whole version.
    pub fn changesets(&self, actor: crate::ActorId) -> Vec<Changeset> {
        let Some(v) = self.version else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        let changes = self.rows.iter().flat_map(|r| {
            buf.clear();
            r.push_changes(&mut buf);
            std::mem::take(&mut buf)
        });
        chunk_version(actor, v, self.last_seq, self.ts, changes, CHUNK_BYTES)
    }
}

impl<'a> WriteTx<'a> {
    pub(crate) fn new(conn: &'a Connection, writer: &'a Writer) -> Self {
        WriteTx { conn, writer }
    }

    /// Runs one statement with positional parameters; returns rows affected.
    pub fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<usize, StoreError> {
        self.run(sql, |stmt| bind_positional(stmt, params))
    }

    /// Runs one statement with named parameters (`:name`, `@name` or `$name`).
    pub fn execute_named(
        &mut self,
        sql: &str,
        params: &[(String, SqlValue)],
    ) -> Result<usize, StoreError> {
        self.run(sql, |stmt| bind_named(stmt, params))
    }

    /// Prepares a statement to run many times in this transaction (bulk
    /// loads): checked once against the same rules as [`WriteTx::execute`].
    pub fn prepare(&self, sql: &str) -> Result<WriteStmt<'_>, StoreError> {
        let stmt = self.writer.in_mode(Mode::User, || self.conn.prepare(sql));
        Ok(WriteStmt {
            conn: self.conn,
            writer: self.writer,
            stmt: stmt.map_err(user_error)?,
        })
    }

    fn run(
        &mut self,
        sql: &str,
        bind: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<()>,
    ) -> Result<usize, StoreError> {
        // Internal statements are cached by their text and all name a
        // `__corro` table; never hand such a cached statement to a client.
        let mut stmt = self
            .writer
            .in_mode(Mode::User, || {
                if sql.contains("__corro") {
                    self.conn.prepare(sql).map(Prepared::Fresh)
                } else {
                    self.conn.prepare_cached(sql).map(Prepared::Cached)
                }
            })
            .map_err(user_error)?;
        let stmt = match &mut stmt {
            Prepared::Fresh(s) => s,
            Prepared::Cached(s) => &mut **s,
        };
        exec(self.conn, self.writer, stmt, bind).map_err(user_error)
    }
}

/// A client statement: freshly prepared or from the statement cache.
enum Prepared<'c> {
    Fresh(Statement<'c>),
    Cached(rusqlite::CachedStatement<'c>),
}

/// A statement prepared by [`WriteTx::prepare`].
pub struct WriteStmt<'a> {
    conn: &'a Connection,
    writer: &'a Writer,
    stmt: Statement<'a>,
}

impl WriteStmt<'_> {
    /// Runs the statement with positional parameters; returns rows affected.
    pub fn execute(&mut self, params: &[SqlValue]) -> Result<usize, StoreError> {
        exec(self.conn, self.writer, &mut self.stmt, |stmt| {
            bind_positional(stmt, params)
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

/// Binds and runs a client statement. A failure while it runs poisons the
/// transaction (see the module doc).
fn exec(
    conn: &Connection,
    writer: &Writer,
    stmt: &mut Statement<'_>,
    bind: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<usize> {
    stmt.clear_bindings();
    bind(stmt)?;
    let out = if stmt.column_count() == 0 {
        stmt.raw_execute()
    } else {
        let mut rows = stmt.raw_query();
        (|| {
            while rows.next()?.is_some() {}
            Ok(conn.changes() as usize)
        })()
    };
    if out.is_err() {
        writer.capture.lock().poisoned = true;
    }
    out
}

/// Transaction control, prepared once: the comment names `__corro` so a
/// client's `BEGIN`/`COMMIT` is never served these cached statements (see
/// [`WriteTx::execute`]).
pub(crate) const BEGIN: &str = "BEGIN IMMEDIATE /* __corro */";
pub(crate) const COMMIT: &str = "COMMIT /* __corro */";

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Ends a local transaction however the closure exits (including a panic):
/// capture is switched off, and the transaction is rolled back unless it
/// was committed (or SQLite already rolled it back).
pub(crate) struct TxGuard<'a> {
    pub(crate) writer: &'a Writer,
    pub(crate) armed: bool,
}

impl Drop for TxGuard<'_> {
    fn drop(&mut self) {
        {
            self.writer.capture.lock().reset(false);
        }
        if self.armed
            && !self.writer.local.is_autocommit()
            && let Err(e) = self.writer.local.execute_batch("ROLLBACK")
        {
            // The connection stays inside the transaction; the next BEGIN
            // fails and says so.
            tracing::error!(error = %e, "rolling back a local transaction failed");
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
        self.inner.space.check()?;
        let r = self.transact_inner(f);
        self.inner.space.note(&r);
        r
    }

    fn transact_inner<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<Committed<T>, StoreError> {
        let w = self.inner.writer.local();
        let conn = &w.local;
        conn.prepare_cached(BEGIN)?.raw_execute()?;
        let mut guard = TxGuard {
            writer: &w,
            armed: true,
        };
        w.capture.lock().reset(true);
        let result = (|| -> Result<_, StoreError> {
            let value = f(&mut WriteTx { conn, writer: &w })?;
            let version = self.head() + 1;
            let ts = now_ms();
            let (rows, nchanges) = self.flush(&w, version, ts)?;
            Ok((value, version, ts, rows, nchanges))
        })();
        let (value, version, ts, rows, nchanges) = result?;
        conn.prepare_cached(COMMIT)?.raw_execute()?;
        guard.armed = false;
        Ok(self.announce(value, version, ts, rows, nchanges))
    }

    /// After a commit: marks `version` held (when the transaction changed
    /// anything) and tells the change and commit listeners.
    pub(crate) fn announce<T>(
        &self,
        value: T,
        version: u64,
        ts: u64,
        rows: Vec<RowChange>,
        nchanges: u64,
    ) -> Committed<T> {
        let version = if nchanges == 0 {
            None
        } else {
            {
                let mut books = self.inner.books.write();
                books
                    .entry(self.inner.self_idx)
                    .or_default()
                    .mark_held(version..=version);
            }
            self.notify(|| {
                crate::feed::RowsChanged::from_rows(
                    rows.iter().map(|r| (&r.meta.name, &r.pk, r.cl)),
                    true,
                )
            });
            Some(version)
        };
        let committed = Committed {
            value,
            version,
            ts,
            rows,
            last_seq: nchanges.saturating_sub(1),
        };
        if version.is_some() {
            self.notify_commit(|| committed.changesets(self.inner.actor));
        }
        committed
    }

    /// Turns the captured row images into clock updates and per-row change
    /// records; returns them with the number of changes (the next seq).
    pub(crate) fn flush(
        &self,
        w: &Writer,
        version: u64,
        ts: u64,
    ) -> Result<(Vec<RowChange>, u64), StoreError> {
        let conn = &w.local;
        let catalog = self.inner.catalog.read().clone();
        let rows = {
            let mut buf = w.capture.lock();
            if buf.poisoned {
                return Err(StoreError::NotAllowed(
                    "a statement of this transaction failed; nothing was committed".into(),
                ));
            }
            buf.take(|tbl, rowids| {
                let meta = catalog.table(tbl).ok_or_else(|| {
                    StoreError::Corrupt(format!("capture for unknown table id {tbl}"))
                })?;
                crate::capture::read_inserted(conn, meta, rowids)
            })?
        };
        if rows.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let me = self.inner.self_idx;
        let mine = [(me, version)];
        let origin = |seq: u64| Origin {
            actor: me,
            version,
            seq,
        };
        let mut seq = 0u64;
        let mut out = Vec::with_capacity(rows.len());
        let mut refs = RefChanges::default();
        let mut pending: Vec<NewRow> = Vec::with_capacity(CLOCK_BATCH);
        // Statements are prepared on first use in each run of rows of the
        // same table.
        let mut stmts: TableStmts<'_> = None;
        for ((tbl, key), img) in rows {
            let meta = catalog.table(tbl).ok_or_else(|| {
                StoreError::Corrupt(format!("capture for unknown table id {tbl}"))
            })?;
            if stmts.as_ref().is_none_or(|(t, _)| *t != tbl) {
                write_pending(
                    conn,
                    &catalog,
                    &mut stmts,
                    &mut pending,
                    &mut out,
                    &mut refs,
                    &mine,
                )?;
                stmts = Some((
                    tbl,
                    [
                        LazyStmt::new(conn, &meta.sql_get_clock),
                        LazyStmt::new(conn, &meta.sql_put_clock),
                        LazyStmt::new(conn, &meta.sql_new_clock),
                    ],
                ));
            }
            let Some((_, [get, put, fresh])) = stmts.as_mut() else {
                unreachable!("prepared above")
            };
            let ncols = meta.cols.len();
            let first_seq = seq;
            let row = |cl: u64, op: RowOp| RowChange {
                meta: meta.clone(),
                pk: key.clone(),
                cl,
                first_seq,
                op,
            };
            match (img.before, img.after) {
                (None, None) => {}
                (None, Some(mut a)) => {
                    // A new row: its clock goes in at cl 1 with the next batch;
                    // if a tombstone is there it becomes a re-insert instead.
                    let blob = encode_uniform(origin(seq), ncols, ts);
                    a.resize(ncols, SqlValue::Null);
                    seq += 1 + ncols as u64;
                    pending.push(NewRow {
                        key: key.clone(),
                        blob,
                        out: out.len(),
                    });
                    out.push(row(1, RowOp::Insert(a)));
                    if pending.len() == CLOCK_BATCH {
                        insert_new_clocks(
                            conn,
                            meta,
                            get,
                            put,
                            fresh,
                            &mut pending,
                            &mut out,
                            &mut refs,
                            &mine,
                        )?;
                    }
                }
                (before_img, after_img) => {
                    let (cl, old) = read_clock(get.stmt()?, &key)?;
                    let before = old.origins();
                    let mut clock = old;
                    let (new_cl, op) = match (before_img, after_img) {
                        (Some(b), Some(a)) if cl % 2 == 1 => {
                            let mut cells = Vec::new();
                            for (i, new_v) in a.into_iter().enumerate().take(ncols) {
                                if b.get(i).is_some_and(|old_v| old_v.same_as(&new_v)) {
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
                                cells.push((i, col_version, new_v));
                                seq += 1;
                            }
                            if cells.is_empty() {
                                continue; // every value written was the current one
                            }
                            (cl, RowOp::Update(cells))
                        }
                        (_, Some(mut a)) => {
                            // The clock says the row is gone although it existed:
                            // treat it as a re-insert.
                            let new_cl = if cl % 2 == 1 { cl + 2 } else { cl + 1 };
                            clock = uniform_clock(me, version, seq, ncols, ts);
                            a.resize(ncols, SqlValue::Null);
                            seq += 1 + ncols as u64;
                            (new_cl, RowOp::Insert(a))
                        }
                        (_, None) => {
                            let new_cl = if cl % 2 == 1 { cl + 1 } else { cl + 2 };
                            clock = RowClock {
                                cl_origin: Some(origin(seq)),
                                cols: Vec::new(),
                                ts,
                            };
                            seq += 1;
                            (new_cl, RowOp::Delete)
                        }
                    };
                    clock.ts = ts;
                    put.stmt()?
                        .execute(rusqlite::params![&key[..], new_cl, clock.encode()])?;
                    refs.row(tbl, &key, &before, &clock.origins());
                    out.push(row(new_cl, op));
                }
            }
        }
        write_pending(
            conn,
            &catalog,
            &mut stmts,
            &mut pending,
            &mut out,
            &mut refs,
            &mine,
        )?;
        drop(stmts);
        if seq > 0 {
            let last_seq = seq - 1;
            // The version's own index entry also records this node's head, so a
            // local commit writes no separate bookkeeping row.
            refs.persist(conn, &|_, _| (last_seq, ts))?;
        }
        Ok((out, seq))
    }
}

/// The flush's statements (get, put, new clock) for the table whose rows are
/// being written.
type TableStmts<'c> = Option<(u32, [LazyStmt<'c>; 3])>;

/// A cached statement prepared on first use (a one-row transaction needs
/// only one of the three clock statements).
struct LazyStmt<'c> {
    conn: &'c Connection,
    sql: &'c str,
    stmt: Option<rusqlite::CachedStatement<'c>>,
}

impl<'c> LazyStmt<'c> {
    fn new(conn: &'c Connection, sql: &'c str) -> Self {
        LazyStmt {
            conn,
            sql,
            stmt: None,
        }
    }

    fn stmt(&mut self) -> rusqlite::Result<&mut rusqlite::CachedStatement<'c>> {
        if self.stmt.is_none() {
            self.stmt = Some(self.conn.prepare_cached(self.sql)?);
        }
        match self.stmt.as_mut() {
            Some(s) => Ok(s),
            None => unreachable!("prepared above"),
        }
    }
}

/// Writes the clocks of the pending new rows of the current table.
fn write_pending(
    conn: &Connection,
    catalog: &crate::catalog::Catalog,
    stmts: &mut TableStmts<'_>,
    pending: &mut Vec<NewRow>,
    out: &mut [RowChange],
    refs: &mut RefChanges,
    mine: &[(u32, u64)],
) -> Result<(), StoreError> {
    let Some((t, [get, put, fresh])) = stmts.as_mut() else {
        return Ok(());
    };
    let meta = catalog
        .table(*t)
        .ok_or_else(|| StoreError::Corrupt("table vanished".into()))?;
    insert_new_clocks(conn, meta, get, put, fresh, pending, out, refs, mine)
}

/// A row inserted by this transaction whose clock is not written yet.
struct NewRow {
    key: Arc<[u8]>,
    blob: Vec<u8>,
    /// Its record in the flush output (the cl is fixed up on a tombstone).
    out: usize,
}

/// Writes the clocks of new rows: a full batch with one statement, a partial
/// one row by row. A row whose key has a tombstone is re-inserted at the next
/// odd causal length.
#[expect(
    clippy::too_many_arguments,
    reason = "the flush's statements and accumulators"
)]
fn insert_new_clocks(
    conn: &Connection,
    meta: &TableMeta,
    get: &mut LazyStmt<'_>,
    put: &mut LazyStmt<'_>,
    fresh: &mut LazyStmt<'_>,
    pending: &mut Vec<NewRow>,
    out: &mut [RowChange],
    refs: &mut RefChanges,
    mine: &[(u32, u64)],
) -> Result<(), StoreError> {
    // A full batch goes in with one statement. Usually every row is new; if
    // not, each row is checked: a stored clock equal to ours carries this
    // version's unique origins, so it is the one just written.
    let batched = pending.len() == CLOCK_BATCH;
    let all_in = batched && {
        let mut stmt = conn.prepare_cached(&meta.sql_new_clock_batch)?;
        for (i, r) in pending.iter().enumerate() {
            stmt.raw_bind_parameter(2 * i + 1, &r.key[..])?;
            stmt.raw_bind_parameter(2 * i + 2, &r.blob)?;
        }
        stmt.raw_execute()? == CLOCK_BATCH
    };
    for r in pending.drain(..) {
        let inserted = if all_in {
            true
        } else if batched {
            let stored: Option<(u64, Vec<u8>)> = get
                .stmt()?
                .query_row([&r.key[..]], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            stored.is_some_and(|(cl, blob)| cl == 1 && blob == r.blob)
        } else {
            fresh
                .stmt()?
                .execute(rusqlite::params![&r.key[..], 1u64, &r.blob])?
                == 1
        };
        if inserted {
            refs.row(meta.id, &r.key, &[], mine);
            continue;
        }
        let (old_cl, old) = read_clock(get.stmt()?, &r.key)?;
        let cl = if old_cl % 2 == 1 {
            old_cl + 2
        } else {
            old_cl + 1
        };
        put.stmt()?
            .execute(rusqlite::params![&r.key[..], cl, &r.blob])?;
        refs.row(meta.id, &r.key, &old.origins(), mine);
        out[r.out].cl = cl;
    }
    Ok(())
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
