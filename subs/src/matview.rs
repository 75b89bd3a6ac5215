//! One subscription on disk: its definition, its materialized result and
//! its change log, in a SQLite file of its own (`<dir>/<id>.sqlite`).
//!
//! - `rows`: one row per result row: a stable row id (never reused), the
//!   row's key and its cells as JSON text;
//! - `row_keys`: for each result row and each source table instance, the
//!   encoded primary key of the source row, so the rows built from a changed
//!   key are found without scanning;
//! - `changes`: the change log, `id` contiguous from 1, kept by count and age
//!   (a change is purged only when it is both beyond the newest
//!   `max_changes` and older than `max_age`) and capped in size (the oldest
//!   changes go whenever the log is over `max_bytes`, whatever their age).
//!
//! Every update of the view and the log entries it produces commit in one
//! transaction, so after a crash the view and the log agree; the manager then
//! re-runs the query and logs the difference.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::SubError;
use crate::diff::{Fresh, Held, Op, diff};

/// Bytes a logged change counts besides its cells (id, kind, row, time).
pub const CHANGE_OVERHEAD: i64 = 32;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT NOT NULL PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL UNIQUE,
    cells TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS row_keys (
    src INTEGER NOT NULL,
    pk BLOB NOT NULL,
    row INTEGER NOT NULL,
    PRIMARY KEY (src, pk, row)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS row_keys_by_row ON row_keys (row);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    row INTEGER NOT NULL,
    cells TEXT NOT NULL,
    ts INTEGER NOT NULL
);
";

/// Kind of a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Insert = 0,
    Update = 1,
    Delete = 2,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
        }
    }

    fn from_i64(v: i64) -> Result<Kind, SubError> {
        Ok(match v {
            0 => Kind::Insert,
            1 => Kind::Update,
            2 => Kind::Delete,
            other => return Err(SubError::Corrupt(format!("change kind {other}"))),
        })
    }
}

/// One logged change.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedChange {
    pub id: u64,
    pub kind: Kind,
    pub rowid: i64,
    /// JSON array of the row's cells (the last ones, for a delete).
    pub cells: String,
}

/// What a subscription was created with.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub sql: String,
    /// JSON of the parameters (`[...]` positional or `{...}` named).
    pub params: String,
    pub columns: Vec<String>,
}

pub struct Matview {
    conn: Connection,
    path: PathBuf,
    last_change: u64,
    /// The primary keys of the first source's rows the result holds, when
    /// tracked ([`Matview::track_keys`]) and within [`KEYS_BUDGET`];
    /// `None`: unknown (every change may matter).
    keys: Option<KeySet>,
    tracking: bool,
}

/// Bytes of held keys one view keeps in memory at most (key bytes plus
/// [`KEY_OVERHEAD`] each); past it the view stops tracking its keys and
/// every change of its table is re-read, as without tracking.
pub const KEYS_BUDGET: usize = 4 << 20;
/// Bytes of held keys all views of the process keep at most.
pub const ALL_KEYS_BUDGET: usize = 64 << 20;
/// Counted per key besides its bytes (the set's slot, the heap block).
const KEY_OVERHEAD: usize = 80;
static ALL_KEYS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A view's held keys. Hashed with foldhash (seeded per process, so row
/// keys a writer picks cannot be made to collide on purpose): a round
/// tests every changed key against every subscription's set on its table,
/// and SipHash was a fifth of that test.
#[derive(Default)]
struct KeySet {
    keys: std::collections::HashSet<Vec<u8>, foldhash::fast::RandomState>,
    bytes: usize,
}

impl Drop for KeySet {
    fn drop(&mut self) {
        ALL_KEYS.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl KeySet {
    /// Adds `k`; false once over this view's or the process's budget (the
    /// set is then dropped by its owner).
    fn add(&mut self, k: &[u8]) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.keys.contains(k) {
            return true;
        }
        let n = k.len() + KEY_OVERHEAD;
        if self.bytes + n > KEYS_BUDGET || ALL_KEYS.fetch_add(n, Relaxed) + n > ALL_KEYS_BUDGET {
            if self.bytes + n <= KEYS_BUDGET {
                ALL_KEYS.fetch_sub(n, Relaxed);
            }
            return false;
        }
        self.bytes += n;
        self.keys.insert(k.to_vec());
        true
    }

    fn remove(&mut self, k: &[u8]) {
        if self.keys.remove(k) {
            let n = k.len() + KEY_OVERHEAD;
            self.bytes -= n;
            ALL_KEYS.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn of<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Option<KeySet> {
        let mut s = KeySet::default();
        for k in keys {
            if !s.add(k) {
                return None;
            }
        }
        Some(s)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Matview {
    /// Creates the file for a new subscription.
    pub fn create(path: &Path, def: &Definition) -> Result<Matview, SubError> {
        let v = Matview::open_file(path)?;
        let tx = corro_store::CachedTx::deferred(&v.conn)?;
        for (k, val) in [
            ("sql", def.sql.clone()),
            ("params", def.params.clone()),
            (
                "columns",
                serde_json::to_string(&def.columns).unwrap_or_default(),
            ),
        ] {
            tx.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
                params![k, val],
            )?;
        }
        tx.commit()?;
        Ok(v)
    }

    /// Opens an existing subscription file.
    pub fn open(path: &Path) -> Result<(Matview, Definition), SubError> {
        let v = Matview::open_file(path)?;
        let get = |k: &str| -> Result<String, SubError> {
            v.conn
                .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
                .optional()?
                .ok_or_else(|| SubError::Corrupt(format!("{}: no {k}", path.display())))
        };
        let def = Definition {
            sql: get("sql")?,
            params: get("params")?,
            columns: serde_json::from_str(&get("columns")?)
                .map_err(|e| SubError::Corrupt(e.to_string()))?,
        };
        Ok((v, def))
    }

    fn open_file(path: &Path) -> Result<Matview, SubError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(DDL)?;
        // The log's largest id, or the one `prune` recorded if larger (the
        // log emptied, or lost its newest entries to the age rule after the
        // clock stepped back): ids must never be issued twice.
        let logged: Option<i64> =
            conn.query_row("SELECT max(id) FROM changes", [], |r| r.get(0))?;
        let recorded: u64 = conn
            .query_row("SELECT v FROM meta WHERE k = 'last_change'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let last = logged.map_or(0, |l| l.max(0) as u64).max(recorded);
        Ok(Matview {
            conn,
            path: path.to_path_buf(),
            last_change: last,
            keys: None,
            tracking: false,
        })
    }

    /// Keeps the first source's held primary keys in memory from now on
    /// (for one-table subscriptions: [`Matview::may_hold`] answers without
    /// reading the file).
    pub fn track_keys(&mut self) -> Result<(), SubError> {
        self.tracking = true;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pk FROM row_keys WHERE src = 0")?;
        let mut rows = stmt.query([])?;
        let mut set = Some(KeySet::default());
        while let Some(r) = rows.next()? {
            let k: Vec<u8> = r.get(0)?;
            if !set.as_mut().is_some_and(|s| s.add(&k)) {
                set = None;
                break;
            }
        }
        drop(rows);
        drop(stmt);
        self.keys = set;
        Ok(())
    }

    /// Whether the result may hold a row built from one of `keys` (first
    /// source): false only when the keys are tracked and none is held.
    pub fn may_hold<'a>(&self, mut keys: impl Iterator<Item = &'a [u8]>) -> bool {
        match &self.keys {
            None => true,
            Some(s) => keys.any(|k| s.keys.contains(k)),
        }
    }

    /// Tracked keys after the whole result became `fresh`.
    fn retrack(&mut self, fresh: &[Fresh]) {
        if self.tracking {
            self.keys = KeySet::of(
                fresh
                    .iter()
                    .filter_map(|f| f.source_keys.first().map(Vec::as_slice)),
            );
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_change(&self) -> u64 {
        self.last_change
    }

    /// Oldest change id still in the log (`last + 1` when empty).
    pub fn oldest_change(&self) -> Result<u64, SubError> {
        let min: Option<i64> = self
            .conn
            .query_row("SELECT min(id) FROM changes", [], |r| r.get(0))?;
        Ok(min.map_or(self.last_change + 1, |m| m as u64))
    }

    /// Replaces the whole result with `rows`, logging no changes (the first
    /// run of a new subscription).
    pub fn fill(&mut self, rows: Vec<Fresh>) -> Result<(), SubError> {
        self.keys = None;
        self.retrack(&rows);
        let tx = corro_store::CachedTx::deferred(&self.conn)?;
        tx.execute("DELETE FROM rows", [])?;
        tx.execute("DELETE FROM row_keys", [])?;
        {
            let mut ins =
                tx.prepare_cached("INSERT OR IGNORE INTO rows (key, cells) VALUES (?1, ?2)")?;
            let mut keys = tx.prepare_cached(
                "INSERT OR IGNORE INTO row_keys (src, pk, row) VALUES (?1, ?2, ?3)",
            )?;
            for r in rows {
                if ins.execute(params![r.key, r.cells])? == 0 {
                    continue;
                }
                let id = tx.last_insert_rowid();
                for (src, pk) in r.source_keys.iter().enumerate() {
                    keys.execute(params![src as i64, pk, id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every held row, in row-id order: (row id, cells JSON).
    pub fn rows(&self) -> Result<Vec<(i64, String)>, SubError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, cells FROM rows ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Held rows built from any of `changed` (per source: encoded keys).
    fn held_for(&self, changed: &[Vec<Vec<u8>>]) -> Result<Vec<Held>, SubError> {
        let mut find = self
            .conn
            .prepare_cached("SELECT row FROM row_keys WHERE src = ?1 AND pk = ?2")?;
        let mut ids = std::collections::BTreeSet::new();
        for (src, pks) in changed.iter().enumerate() {
            for pk in pks {
                let rows = find.query_map(params![src as i64, pk], |r| r.get::<_, i64>(0))?;
                for r in rows {
                    ids.insert(r?);
                }
            }
        }
        let mut get = self
            .conn
            .prepare_cached("SELECT key, cells FROM rows WHERE id = ?1")?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let (key, cells): (Vec<u8>, String) =
                get.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            out.push(Held {
                rowid: id,
                key,
                cells,
            });
        }
        Ok(out)
    }

    /// Every held row (for a full re-run after a restart).
    fn held_all(&self) -> Result<Vec<Held>, SubError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, key, cells FROM rows ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Held {
                    rowid: r.get(0)?,
                    key: r.get(1)?,
                    cells: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Brings the rows built from `changed` keys to `fresh` (the current rows
    /// for those keys); logs and returns the changes, ids contiguous.
    pub fn update(
        &mut self,
        changed: &[Vec<Vec<u8>>],
        fresh: Vec<Fresh>,
    ) -> Result<Vec<LoggedChange>, SubError> {
        let held = self.held_for(changed)?;
        // The rows held for the changed keys become exactly `fresh`.
        let now: Vec<Vec<u8>> = fresh
            .iter()
            .filter_map(|f| f.source_keys.first().cloned())
            .collect();
        let keys = self.keys.take();
        let out = self.commit_ops(diff(held, fresh))?;
        if let Some(mut s) = keys {
            for k in changed.first().into_iter().flatten() {
                s.remove(k);
            }
            let within = now.iter().all(|k| s.add(k));
            self.keys = within.then_some(s);
        }
        Ok(out)
    }

    /// Compares the whole result with `fresh` (the query re-run in full).
    pub fn resync(&mut self, fresh: Vec<Fresh>) -> Result<Vec<LoggedChange>, SubError> {
        let held = self.held_all()?;
        self.keys = None;
        let tracked = self.tracking.then(|| {
            KeySet::of(
                fresh
                    .iter()
                    .filter_map(|f| f.source_keys.first().map(Vec::as_slice)),
            )
        });
        let out = self.commit_ops(diff(held, fresh))?;
        self.keys = tracked.flatten();
        Ok(out)
    }

    fn commit_ops(&mut self, ops: Vec<Op>) -> Result<Vec<LoggedChange>, SubError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let ts = now_ms();
        let mut next = self.last_change;
        let mut out = Vec::with_capacity(ops.len());
        let tx = corro_store::CachedTx::deferred(&self.conn)?;
        {
            let mut log = tx.prepare_cached(
                "INSERT INTO changes (id, kind, row, cells, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut ins = tx.prepare_cached("INSERT INTO rows (key, cells) VALUES (?1, ?2)")?;
            let mut keys = tx.prepare_cached(
                "INSERT OR IGNORE INTO row_keys (src, pk, row) VALUES (?1, ?2, ?3)",
            )?;
            let mut upd = tx.prepare_cached("UPDATE rows SET cells = ?2 WHERE id = ?1")?;
            let mut del = tx.prepare_cached("DELETE FROM rows WHERE id = ?1")?;
            let mut del_keys = tx.prepare_cached("DELETE FROM row_keys WHERE row = ?1")?;
            for op in ops {
                next += 1;
                let (kind, rowid, cells) = match op {
                    Op::Insert(f) => {
                        ins.execute(params![f.key, f.cells])?;
                        let id = tx.last_insert_rowid();
                        for (src, pk) in f.source_keys.iter().enumerate() {
                            keys.execute(params![src as i64, pk, id])?;
                        }
                        (Kind::Insert, id, f.cells)
                    }
                    Op::Update { rowid, cells } => {
                        upd.execute(params![rowid, cells])?;
                        (Kind::Update, rowid, cells)
                    }
                    Op::Delete { rowid, cells } => {
                        del.execute([rowid])?;
                        del_keys.execute([rowid])?;
                        (Kind::Delete, rowid, cells)
                    }
                };
                log.execute(params![next as i64, kind as i64, rowid, cells, ts])?;
                out.push(LoggedChange {
                    id: next,
                    kind,
                    rowid,
                    cells,
                });
            }
        }
        // `last_change` is the log's largest id; `meta` keeps it only for
        // when pruning empties the log (written there, not per commit: one
        // page fewer to write per change).
        tx.commit()?;
        self.last_change = next;
        Ok(out)
    }

    /// Logged changes with ids in `(from, upto]`, oldest first.
    pub fn changes_between(&self, from: u64, upto: u64) -> Result<Vec<LoggedChange>, SubError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, kind, row, cells FROM changes WHERE id > ?1 AND id <= ?2 ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![from as i64, upto as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, kind, rowid, cells)| {
                Ok(LoggedChange {
                    id: id as u64,
                    kind: Kind::from_i64(kind)?,
                    rowid,
                    cells,
                })
            })
            .collect()
    }

    /// Purges changes that are both beyond the newest `max_count` and older
    /// than `max_age_ms`, then the oldest ones while the log is over
    /// `max_bytes` (cells plus [`CHANGE_OVERHEAD`] per change); how many
    /// were removed.
    pub fn prune(
        &mut self,
        max_count: u64,
        max_age_ms: u64,
        max_bytes: u64,
    ) -> Result<usize, SubError> {
        let cutoff_id = self.last_change.saturating_sub(max_count) as i64;
        let cutoff_ts = now_ms() - max_age_ms as i64;
        let tx = corro_store::CachedTx::deferred(&self.conn)?;
        let mut removed = tx.execute(
            "DELETE FROM changes WHERE id <= ?1 AND ts < ?2",
            params![cutoff_id, cutoff_ts],
        )?;
        // The newest change whose suffix of the log (it and everything
        // after it) is over the cap: it and all before it go.
        let over: Option<i64> = tx
            .query_row(
                "SELECT id FROM (
                     SELECT id, sum(length(cells) + ?1) OVER (ORDER BY id DESC) AS tail
                     FROM changes
                 ) WHERE tail > ?2 ORDER BY id DESC LIMIT 1",
                params![CHANGE_OVERHEAD, max_bytes.min(i64::MAX as u64) as i64],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = over {
            removed += tx.execute("DELETE FROM changes WHERE id <= ?1", [id])?;
        }
        if removed > 0 {
            // The log may now be empty: its last id must survive that.
            tx.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('last_change', ?1)",
                [self.last_change.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Bytes the change log counts against its cap.
    pub fn log_bytes(&self) -> Result<u64, SubError> {
        let n: i64 = self.conn.query_row(
            "SELECT coalesce(sum(length(cells) + ?1), 0) FROM changes",
            [CHANGE_OVERHEAD],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Test hook: ages every logged change by `ms`.
    #[doc(hidden)]
    pub fn age_log(&mut self, ms: i64) -> Result<(), SubError> {
        self.conn.execute("UPDATE changes SET ts = ts - ?1", [ms])?;
        Ok(())
    }
}
