//! Opening the store, its connections and the schema it replicates.
//!
//! `Store::open` creates the internal tables, loads (or creates) this node's
//! actor id, sets up change capture (`capture.rs`) and the authorizer on the
//! writer connection, and reloads bookkeeping. A database file copied to another path
//! or machine (different device/inode) gets a fresh actor id, so two nodes
//! never issue versions under one id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use corro_schema::{Schema, SchemaDiff};
use parking_lot::RwLock;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::actor::ActorId;
use crate::bookkeeping::ActorBooks;
use crate::capture::{self, SharedCapture};
use crate::catalog::{Catalog, FORMAT_VERSION, INTERNAL_DDL, TableMeta};
use crate::error::StoreError;
use crate::pool::{ReadConn, ReadPool};
use crate::writer::{WriterLock, WriterStats};

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Read-only connections in the pool.
    pub readers: usize,
    /// How long a connection waits for a lock before failing.
    pub busy_timeout: std::time::Duration,
    /// Bytes of client query answers kept until the data changes
    /// ([`Store::kept_answer`]); 0 keeps none.
    pub answer_cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            readers: 4,
            busy_timeout: std::time::Duration::from_secs(5),
            answer_cache_bytes: 0,
        }
    }
}

/// The replicated store (cheap to clone; all clones share one database).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub path: PathBuf,
    pub actor: ActorId,
    pub self_idx: u32,
    pub writer: WriterLock,
    pub readers: ReadPool,
    pub catalog: RwLock<Arc<Catalog>>,
    /// Committed bookkeeping, by actor index (updated after each commit).
    pub books: RwLock<HashMap<u32, ActorBooks>>,
    /// Change-feed listeners ([`Store::on_change`]).
    pub listeners: RwLock<Vec<crate::feed::ChangeListener>>,
    /// Local-commit listeners ([`Store::on_local_commit`]).
    pub commit_listeners: RwLock<Vec<crate::feed::CommitListener>>,
    /// [`Schema::fingerprint`] of the live replicated schema.
    pub schema_fingerprint: std::sync::atomic::AtomicU64,
    /// Whether writes are refused for a full disk.
    pub space: crate::space::Space,
    /// Transactions waiting to be committed together ([`Store::transact_grouped`]).
    pub group: crate::group::GroupQueue,
    /// Client query answers, while the data is unchanged.
    pub answers: Option<crate::answers::AnswerCache>,
}

pub(crate) struct Writer {
    /// Captures local writes (stored triggers off, capture TEMP triggers and
    /// update hook on, authorizer on).
    pub local: Connection,
    /// Applies remote changes (triggers off).
    pub apply: Connection,
    pub capture: SharedCapture,
    /// What the authorizer allows on `local` right now (see [`Mode`]).
    pub mode: Arc<AtomicU8>,
}

/// Who is preparing statements on the capture connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// The store itself: everything allowed.
    Internal = 0,
    /// A client's statements in [`Store::transact`].
    User = 1,
    /// [`Store::local_write`]: anything but writes to replicated tables.
    HostLocal = 2,
}

impl Writer {
    /// Runs `f` with the authorizer in `mode`, then back to internal.
    pub(crate) fn in_mode<T>(&self, mode: Mode, f: impl FnOnce() -> T) -> T {
        self.mode.store(mode as u8, Ordering::Relaxed);
        let out = f();
        self.mode.store(Mode::Internal as u8, Ordering::Relaxed);
        out
    }
}

fn pragmas(conn: &Connection, busy: std::time::Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", false)?;
    // 64 MiB of page cache for the writer connections: big transactions and
    // merges touch the data table, its clock table and the version index.
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(())
}

fn file_id(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(format!("{}:{}", m.dev(), m.ino()))
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut local = Connection::open(&path).map_err(open_err)?;
        pragmas(&local, opts.busy_timeout).map_err(open_err)?;
        local
            .pragma_update(None, "recursive_triggers", true)
            .map_err(open_err)?;
        // The guard triggers stored in the file are for other programs;
        // this connection captures through TEMP triggers and the update hook.
        local
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
            .map_err(open_err)?;
        local.execute_batch(INTERNAL_DDL).map_err(open_err)?;

        let (actor, self_idx) = init_identity(&local, &path)?;

        let capture: SharedCapture = Arc::default();
        capture::register(&mut local, capture.clone()).map_err(open_err)?;
        let mode = Arc::new(AtomicU8::new(Mode::Internal as u8));
        install_authorizer(&mut local, mode.clone(), capture.clone()).map_err(open_err)?;

        let mut apply = Connection::open(&path).map_err(open_err)?;
        pragmas(&apply, opts.busy_timeout).map_err(open_err)?;
        apply
            .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
            .map_err(open_err)?;

        let mut readers = Vec::with_capacity(opts.readers.max(1));
        for _ in 0..opts.readers.max(1) {
            let r = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(open_err)?;
            r.busy_timeout(opts.busy_timeout).map_err(open_err)?;
            r.set_prepared_statement_cache_capacity(128);
            readers.push(r);
        }

        let readers = ReadPool::new(readers).map_err(open_err)?;
        let catalog = load_catalog(&local)?;
        capture::install(&local, &capture, &catalog).map_err(open_err)?;
        let fingerprint = live_schema(&local)?.fingerprint();
        let books = load_books(&local, self_idx)?;
        tracing::info!(actor_id = %actor, path = %path.display(), tables = catalog.tables.len(), "store opened");
        let space = crate::space::Space::new(&path);
        // From here on every write goes through the writer lock, whose data
        // generation learns from these hooks whether anything committed.
        let committed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        crate::writer::commit_flag(&mut local, &committed).map_err(open_err)?;
        crate::writer::commit_flag(&mut apply, &committed).map_err(open_err)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                actor,
                self_idx,
                writer: WriterLock::new(
                    Writer {
                        local,
                        apply,
                        capture,
                        mode,
                    },
                    committed,
                ),
                readers,
                answers: crate::answers::AnswerCache::new(opts.answer_cache_bytes),
                catalog: RwLock::new(Arc::new(catalog)),
                books: RwLock::new(books),
                listeners: RwLock::new(Vec::new()),
                commit_listeners: RwLock::new(Vec::new()),
                schema_fingerprint: fingerprint.into(),
                space,
                group: Default::default(),
            }),
        })
    }

    /// Why writes are refused, while the disk holding the database is full
    /// (see the `space` module).
    pub fn disk_full(&self) -> Option<String> {
        self.inner.space.reason()
    }

    /// While the disk is full: tries whether writes work again (enough free
    /// space and a probe commit); true when writes are accepted. Blocks.
    pub fn recheck_space(&self) -> bool {
        if self.inner.space.reason().is_none() {
            return true;
        }
        if self
            .inner
            .space
            .available()
            .is_some_and(|free| free < crate::space::MIN_FREE)
        {
            return false;
        }
        let probe = {
            let w = self.inner.writer.remote();
            w.apply
                .execute(
                    "INSERT OR REPLACE INTO __corro_meta (key, value) VALUES ('space_probe', randomblob(4096))",
                    [],
                )
                .map_err(StoreError::from)
        };
        match probe {
            Ok(_) => {
                self.inner.space.clear();
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "the disk is still full");
                false
            }
        }
    }

    /// This node's actor id.
    pub fn actor_id(&self) -> ActorId {
        self.inner.actor
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Names of the replicated tables.
    pub fn tables(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .catalog
            .read()
            .tables
            .values()
            .map(|t| t.name.to_string())
            .collect();
        v.sort();
        v
    }

    /// Writer queue depths (local transactions, waiting remote applications).
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// Read pool size, connections in use and waits for one.
    pub fn read_pool_stats(&self) -> crate::ReadPoolStats {
        self.inner.readers.stats()
    }

    /// A read-only connection from the pool.
    pub fn reader(&self) -> ReadConn<'_> {
        self.inner.readers.get()
    }

    /// A read-only connection if one is idle right now (never waits).
    pub fn try_reader(&self) -> Option<ReadConn<'_>> {
        self.inner.readers.try_get()
    }

    /// The data generation: odd while a writer holds the database; after a
    /// hold, a new even number if anything committed, the even number from
    /// before otherwise. Read it before a read whose answer may be kept
    /// ([`Store::keep_answer`]).
    pub fn data_generation(&self) -> u64 {
        self.inner.writer.generation()
    }

    /// The answer kept for `key`, if it was read at the current data
    /// generation (nothing was written since). Always `None` when answers
    /// are not kept (`answer_cache_bytes` = 0).
    pub fn kept_answer(&self, key: &[u8]) -> Option<bytes::Bytes> {
        let answers = self.inner.answers.as_ref()?;
        answers.get(key, self.data_generation())
    }

    /// Keeps `answer` for `key`, read by a query that started at data
    /// generation `generation` and has finished (its read transaction
    /// ended); kept only if the generation was even and has not moved
    /// since, and only for pure statements (the caller asks
    /// [`ReadConn::is_pure_as_run`]).
    pub fn keep_answer(&self, key: bytes::Bytes, generation: u64, answer: bytes::Bytes) {
        let Some(answers) = self.inner.answers.as_ref() else {
            return;
        };
        if generation.is_multiple_of(2) && self.data_generation() == generation {
            answers.put(key, generation, answer);
        }
    }

    /// Whether answers are kept at all.
    pub fn keeps_answers(&self) -> bool {
        self.inner.answers.is_some()
    }

    /// What the answer cache holds and did (zeros when answers are not kept).
    pub fn answer_stats(&self) -> crate::AnswerStats {
        self.inner
            .answers
            .as_ref()
            .map(|a| a.stats())
            .unwrap_or_default()
    }

    /// Snapshot of the bookkeeping of every actor this node knows a version of.
    pub fn books(&self) -> HashMap<ActorId, ActorBooks> {
        let cat = self.inner.catalog.read().clone();
        self.inner
            .books
            .read()
            .iter()
            .filter(|(_, b)| b.head > 0)
            .map(|(idx, b)| (cat.actor(*idx), b.clone()))
            .collect()
    }

    /// Versions of any actor known to exist and not (fully) held yet.
    pub fn missing_versions(&self) -> u64 {
        self.inner
            .books
            .read()
            .values()
            .map(|b| {
                b.needed()
                    .iter()
                    .map(|r| r.end() - r.start() + 1)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Highest version this node has issued (or received back) for itself.
    pub fn head(&self) -> u64 {
        self.inner
            .books
            .read()
            .get(&self.inner.self_idx)
            .map_or(0, |b| b.head)
    }

    /// Runs `f` on the writer connection for host-local (non-replicated)
    /// tables. Writes to replicated tables fail inside it: they must go through
    /// [`Store::transact`].
    pub fn local_write<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.inner.space.check()?;
        let r = self.local_write_inner(f);
        self.inner.space.note(&r);
        r
    }

    fn local_write_inner<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let w = self.inner.writer.local();
        w.in_mode(Mode::HostLocal, || f(&w.local)).map_err(|e| {
            if e.to_string().contains("not authorized") {
                StoreError::NotAllowed(
                    "writes to replicated tables must go through the corrosion agent (Store::transact)"
                        .into(),
                )
            } else {
                StoreError::Sqlite(e)
            }
        })
    }

    /// Brings the live schema to `wanted`: creates new tables (and their
    /// replication bookkeeping), adds columns, replaces indexes, all in one
    /// transaction. Destructive or unsupported changes are rejected and
    /// nothing is applied. Returns what was done.
    pub fn apply_schema(&self, wanted: &Schema) -> Result<SchemaDiff, StoreError> {
        self.inner.space.check()?;
        let r = self.apply_schema_inner(wanted);
        self.inner.space.note(&r);
        r
    }

    fn apply_schema_inner(&self, wanted: &Schema) -> Result<SchemaDiff, StoreError> {
        corro_schema::validate(wanted)?;
        let w = self.inner.writer.remote();
        let conn = &w.local;
        let live = live_schema(conn)?;
        let diff = corro_schema::diff(&live, wanted)?;
        for t in &diff.kept_tables {
            tracing::warn!(table = %t, "table is no longer in the schema files; keeping it (tables are never dropped)");
        }
        if diff.is_empty() {
            return Ok(diff);
        }
        let tx = conn.unchecked_transaction()?;
        let ctx = |table: &str, e: rusqlite::Error| {
            StoreError::Schema(corro_schema::SchemaError::Table {
                file: wanted
                    .tables
                    .get(table)
                    .map(|t| t.file.clone())
                    .unwrap_or_default(),
                table: table.to_string(),
                reason: e.to_string(),
            })
        };
        for name in &diff.drop_indexes {
            tx.execute_batch(&format!(
                "DROP INDEX IF EXISTS {}",
                crate::catalog::quote(name)
            ))?;
        }
        for t in &diff.new_tables {
            tracing::info!(table = %t.name, "creating table");
            tx.execute_batch(&t.sql).map_err(|e| ctx(&t.name, e))?;
            tx.execute("INSERT INTO __corro_tables (name) VALUES (?1)", [&t.name])?;
        }
        for (table, col) in &diff.new_columns {
            tracing::info!(table = %table, column = %col.name, "adding column");
            tx.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {}",
                crate::catalog::quote(table),
                col.definition()
            ))
            .map_err(|e| ctx(table, e))?;
        }
        for idx in &diff.create_indexes {
            tx.execute_batch(&idx.sql).map_err(|e| ctx(&idx.table, e))?;
        }
        // (Re)generate shadow tables and triggers for every new or altered table.
        let catalog = load_catalog(&tx)?;
        let touched: Vec<&str> = diff
            .new_tables
            .iter()
            .map(|t| t.name.as_str())
            .chain(diff.new_columns.iter().map(|(t, _)| t.as_str()))
            .collect();
        for name in touched {
            if let Some(meta) = catalog.table_by_name(name) {
                tx.execute_batch(&meta.replication_ddl())
                    .map_err(|e| ctx(name, e))?;
            }
        }
        tx.commit()?;
        capture::install(conn, &w.capture, &catalog)?;
        let fingerprint = live_schema(conn)?.fingerprint();
        self.inner
            .schema_fingerprint
            .store(fingerprint, Ordering::Relaxed);
        *self.inner.catalog.write() = Arc::new(catalog);
        drop(w);
        // Changes that named these tables or columns before they existed.
        self.retry_pending()?;
        Ok(diff)
    }

    /// Loads, validates and applies the schema files under `paths`.
    pub fn apply_schema_paths<P: AsRef<Path>>(
        &self,
        paths: &[P],
    ) -> Result<SchemaDiff, StoreError> {
        let wanted = corro_schema::from_paths(paths)?;
        self.apply_schema(&wanted)
    }

    /// [`Schema::fingerprint`] of the live replicated schema (kept current
    /// by schema changes); peers compare theirs with it.
    pub fn schema_fingerprint(&self) -> u64 {
        self.inner.schema_fingerprint.load(Ordering::Relaxed)
    }

    /// The live replicated schema.
    pub fn schema(&self) -> Result<Schema, StoreError> {
        let r = self.reader();
        live_schema(&r)
    }
}

/// Live schema restricted to replicated tables and their indexes (host-local
/// tables are not managed by schema files).
pub(crate) fn live_schema(conn: &Connection) -> Result<Schema, StoreError> {
    let mut s = corro_schema::read_live(conn, Path::new("<database>"))?;
    let mut stmt = conn.prepare_cached("SELECT name FROM __corro_tables")?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    s.tables
        .retain(|n, _| lower.contains(&n.to_ascii_lowercase()));
    s.indexes
        .retain(|_, i| lower.contains(&i.table.to_ascii_lowercase()));
    Ok(s)
}

pub(crate) fn load_catalog(conn: &Connection) -> Result<Catalog, StoreError> {
    let schema = corro_schema::read_live(conn, Path::new("<database>"))?;
    let mut cat = Catalog::default();
    let mut stmt = conn.prepare_cached("SELECT id, name FROM __corro_tables")?;
    let rows: Vec<(u32, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, name) in rows {
        if let Some(t) = schema.tables.get(&name) {
            cat.add_table(TableMeta::new(id, t));
        } else {
            tracing::warn!(table = %name, "replicated table is missing from the database");
        }
    }
    let mut stmt = conn.prepare_cached("SELECT idx, actor_id FROM __corro_actors")?;
    let actors: Vec<(u32, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (idx, id) in actors {
        let a =
            ActorId::from_slice(&id).ok_or_else(|| StoreError::Corrupt("bad actor id".into()))?;
        cat.add_actor(idx, a);
    }
    Ok(cat)
}

/// Loads every actor's bookkeeping. This node's own commits are recorded only
/// in the version index (one write fewer per commit), so versions
/// `1..=max(own version in index)` are added to its books here.
pub(crate) fn load_books(
    conn: &Connection,
    self_idx: u32,
) -> Result<HashMap<u32, ActorBooks>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT idx, head, books FROM __corro_actors")?;
    let rows: Vec<(u32, u64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = HashMap::new();
    for (idx, head, b) in rows {
        out.insert(idx, ActorBooks::decode(head, &b)?);
    }
    let own_head = crate::versions::max_version(conn, self_idx)?;
    if own_head > 0 {
        out.entry(self_idx).or_default().mark_held(1..=own_head);
    }
    Ok(out)
}

/// Index of `actor` in `__corro_actors`, inserting it if new.
pub(crate) fn actor_index(conn: &Connection, actor: &ActorId) -> rusqlite::Result<u32> {
    conn.prepare_cached("INSERT OR IGNORE INTO __corro_actors (actor_id) VALUES (?1)")?
        .execute([&actor.0[..]])?;
    conn.prepare_cached("SELECT idx FROM __corro_actors WHERE actor_id = ?1")?
        .query_row([&actor.0[..]], |r| r.get(0))
}

/// Removes this database's actor identity (for a backup, a restore or a copied
/// file), first writing that actor's own versions into its bookkeeping row:
/// while it was this node's identity they were recorded only in the version
/// index.
pub(crate) fn retire_identity(conn: &Connection) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM __corro_meta WHERE key = 'actor_id'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(actor) = stored.as_deref().and_then(ActorId::from_slice) {
        let idx = actor_index(conn, &actor)?;
        let own = crate::versions::max_version(conn, idx)?;
        let (head, blob): (u64, Vec<u8>) = conn.query_row(
            "SELECT head, books FROM __corro_actors WHERE idx = ?1",
            [idx],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut books = ActorBooks::decode(head, &blob)?;
        if own > 0 {
            books.mark_held(1..=own);
        }
        conn.execute(
            "UPDATE __corro_actors SET head = ?1, books = ?2 WHERE idx = ?3",
            rusqlite::params![books.head, books.encode(), idx],
        )?;
    }
    conn.execute(
        "DELETE FROM __corro_meta WHERE key IN ('actor_id', 'file_id')",
        [],
    )?;
    Ok(())
}

/// Loads this node's actor id, creating one for a new database and rotating it
/// for a file that was copied from elsewhere.
fn init_identity(conn: &Connection, path: &Path) -> Result<(ActorId, u32), StoreError> {
    let tx = conn.unchecked_transaction()?;
    let format: Option<i64> = tx
        .query_row(
            "SELECT value FROM __corro_meta WHERE key = 'format'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match format {
        None => {
            tx.execute(
                "INSERT INTO __corro_meta (key, value) VALUES ('format', ?1)",
                [FORMAT_VERSION],
            )?;
        }
        Some(v) if v > FORMAT_VERSION => {
            return Err(StoreError::Corrupt(format!(
                "database format {v} is newer than this build understands ({FORMAT_VERSION})"
            )));
        }
        Some(v) if v < FORMAT_VERSION => {
            return Err(StoreError::Corrupt(format!(
                "database format {v} predates this build's format {FORMAT_VERSION} and cannot be upgraded in place; start from an empty database and let peers fill it"
            )));
        }
        Some(_) => {}
    }
    let stored: Option<Vec<u8>> = tx
        .query_row(
            "SELECT value FROM __corro_meta WHERE key = 'actor_id'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let recorded_file: Option<String> = tx
        .query_row(
            "SELECT value FROM __corro_meta WHERE key = 'file_id'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let here = file_id(path);
    let actor = match stored.as_deref().and_then(ActorId::from_slice) {
        Some(a) if recorded_file.is_none() || recorded_file == here => a,
        Some(old) => {
            let new = ActorId::random();
            tracing::warn!(old_actor = %old, new_actor = %new, "database file was copied or moved from elsewhere; using a fresh actor id so two nodes never share one");
            retire_identity(&tx)?;
            new
        }
        None => ActorId::random(),
    };
    tx.execute(
        "INSERT OR REPLACE INTO __corro_meta (key, value) VALUES ('actor_id', ?1)",
        [&actor.0[..]],
    )?;
    if let Some(f) = here {
        tx.execute(
            "INSERT OR REPLACE INTO __corro_meta (key, value) VALUES ('file_id', ?1)",
            [f],
        )?;
    }
    let idx = actor_index(&tx, &actor)?;
    tx.commit()?;
    Ok((actor, idx))
}

/// Names of internal objects API statements may not write.
fn is_internal(name: &str) -> bool {
    corro_schema::is_internal_name(name)
}

/// While [`Mode::User`] is set (statements from API clients), refuse DDL,
/// PRAGMA, ATTACH, transaction control and writes to internal tables; while
/// [`Mode::HostLocal`] is set, refuse writes to replicated tables (inserts
/// into them would otherwise go uncaptured). The authorizer runs when a
/// statement is prepared, so internal statements prepared in internal mode
/// keep working from the statement cache.
fn install_authorizer(
    conn: &mut Connection,
    mode: Arc<AtomicU8>,
    capture: SharedCapture,
) -> rusqlite::Result<()> {
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let mode = mode.load(Ordering::Relaxed);
        if mode == Mode::Internal as u8 {
            return Authorization::Allow;
        }
        if mode == Mode::HostLocal as u8 {
            return match ctx.action {
                AuthAction::Insert { table_name }
                | AuthAction::Delete { table_name }
                | AuthAction::Update { table_name, .. }
                    if capture.lock().is_replicated(table_name) =>
                {
                    Authorization::Deny
                }
                _ => Authorization::Allow,
            };
        }
        match ctx.action {
            AuthAction::Insert { table_name }
            | AuthAction::Delete { table_name }
            | AuthAction::Update { table_name, .. } => {
                if is_internal(table_name) {
                    Authorization::Deny
                } else {
                    Authorization::Allow
                }
            }
            AuthAction::Function { function_name } => {
                // The capture function may only run inside our triggers.
                if function_name.eq_ignore_ascii_case("corro_capture") && ctx.accessor.is_none() {
                    Authorization::Deny
                } else {
                    Authorization::Allow
                }
            }
            AuthAction::Read { .. } | AuthAction::Select | AuthAction::Recursive => {
                Authorization::Allow
            }
            _ => Authorization::Deny,
        }
    }))
}
