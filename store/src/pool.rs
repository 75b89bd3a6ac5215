//! A small pool of read-only connections.
//!
//! Readers never block the writer (WAL) and never see uncommitted data. The
//! pool hands out a guard that returns the connection on drop; when every
//! connection is busy, callers wait on a condition variable.
//!
//! Client queries are prepared through [`ReadConn::prepare_user`], under an
//! authorizer that refuses ATTACH/DETACH, transaction control, PRAGMA
//! assignments and any write (the connection is read-only anyway), so a
//! client cannot leave a pooled connection in a changed state. The store's own
//! reads prepare normally.
//!
//! The same authorizer notes whether a client statement's answer depends on
//! anything but the database's content ([`ReadConn::is_pure`]): a call of
//! one of [`VOLATILE_FUNCTIONS`] or any pragma makes it volatile, and its
//! answers are never cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::error::StoreError;

/// Pragmas whose argument names what to describe rather than a new setting.
const INFO_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_info",
    "index_xinfo",
    "index_list",
    "foreign_key_list",
    "integrity_check",
    "quick_check",
];

/// SQLite's built-in functions whose result may differ between two runs over
/// the same database: random values, the connection's own counters, and the
/// date and time functions (which read the clock for `'now'` or no argument;
/// all their forms are counted, as the authorizer does not see arguments).
/// The reader connections register no functions of their own, so every
/// other function a query can call is deterministic. Pragmas, in either
/// form (`PRAGMA x` or the table-valued `pragma_x`), and `sqlite_stmt` are
/// volatile too.
pub const VOLATILE_FUNCTIONS: &[&str] = &[
    "random",
    "randomblob",
    "changes",
    "total_changes",
    "last_insert_rowid",
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
    "current_date",
    "current_time",
    "current_timestamp",
    "sqlite_offset",
];

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Purity verdicts kept per connection; the map is emptied when full.
const VERDICTS_MAX: usize = 1024;

/// Client statements longer than this are neither kept in the statement
/// cache nor judged pure (so their answers are never cached): what a
/// connection keeps per client statement stays bounded in bytes.
pub const CACHED_SQL_MAX: usize = 4096;

struct Pooled {
    conn: Connection,
    user_mode: Arc<AtomicBool>,
    /// Set by the authorizer, in user mode, when the statement being
    /// prepared calls a volatile function or reads a pragma.
    volatile: Arc<AtomicBool>,
    /// Set by the authorizer on any call in user mode: the statement was
    /// prepared (not taken from the statement cache).
    authorized: Arc<AtomicBool>,
    /// Client statement text → pure. A verdict is about the schema the
    /// statement was judged on; a statement SQLite re-prepared (the schema
    /// changed: a view may now call something else) is judged again
    /// ([`ReadConn::is_pure_as_run`]).
    verdicts: std::cell::RefCell<std::collections::HashMap<Box<str>, bool>>,
    /// When the current query must stop: nanoseconds after [`epoch`], 0
    /// for none. The connection's progress handler, installed once, reads
    /// it ([`ReadConn::set_deadline`]).
    deadline: Arc<AtomicU64>,
}

/// The zero of the pool's deadlines.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// SQLite virtual-machine steps between two looks at the deadline.
const DEADLINE_CHECK_STEPS: std::ffi::c_int = 100;

pub(crate) struct ReadPool {
    idle: Mutex<Vec<Pooled>>,
    ready: Condvar,
    size: usize,
    waits: AtomicU64,
    waited_nanos: AtomicU64,
}

/// How busy the read pool is (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadPoolStats {
    /// Connections in the pool.
    pub size: usize,
    /// Connections lent out right now.
    pub in_use: usize,
    /// Acquisitions that found no idle connection and waited, since start.
    pub waits: u64,
    /// Time spent in those waits, since start, in nanoseconds.
    pub waited_nanos: u64,
}

/// A borrowed read connection.
pub struct ReadConn<'a> {
    pool: &'a ReadPool,
    conn: Option<Pooled>,
}

impl ReadPool {
    pub(crate) fn new(conns: Vec<Connection>) -> rusqlite::Result<Self> {
        let mut pooled = Vec::with_capacity(conns.len());
        for mut conn in conns {
            let user_mode = Arc::new(AtomicBool::new(false));
            let volatile = Arc::new(AtomicBool::new(false));
            let authorized = Arc::new(AtomicBool::new(false));
            let flag = user_mode.clone();
            let (seen_volatile, seen) = (volatile.clone(), authorized.clone());
            conn.authorizer(Some(move |ctx: AuthContext<'_>| {
                if !flag.load(Ordering::Relaxed) {
                    return Authorization::Allow;
                }
                seen.store(true, Ordering::Relaxed);
                match ctx.action {
                    AuthAction::Function { function_name }
                        if VOLATILE_FUNCTIONS
                            .iter()
                            .any(|f| f.eq_ignore_ascii_case(function_name)) =>
                    {
                        seen_volatile.store(true, Ordering::Relaxed);
                    }
                    AuthAction::Pragma { .. } => seen_volatile.store(true, Ordering::Relaxed),
                    // Pragmas as table-valued functions, and the list of
                    // this connection's own statements.
                    AuthAction::Read { table_name, .. }
                        if starts_with_ignore_case(table_name, "pragma_")
                            || table_name.eq_ignore_ascii_case("sqlite_stmt") =>
                    {
                        seen_volatile.store(true, Ordering::Relaxed)
                    }
                    _ => {}
                }
                match ctx.action {
                    AuthAction::Read { .. } | AuthAction::Select | AuthAction::Recursive => {
                        Authorization::Allow
                    }
                    AuthAction::Function { function_name }
                        if !function_name.eq_ignore_ascii_case("load_extension") =>
                    {
                        Authorization::Allow
                    }
                    // Reading pragmas is fine; setting them is not.
                    AuthAction::Pragma {
                        pragma_value: None, ..
                    } => Authorization::Allow,
                    AuthAction::Pragma { pragma_name, .. }
                        if INFO_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str()) =>
                    {
                        Authorization::Allow
                    }
                    _ => Authorization::Deny,
                }
            }))?;
            let deadline = Arc::new(AtomicU64::new(0));
            let at = deadline.clone();
            conn.progress_handler(
                DEADLINE_CHECK_STEPS,
                Some(move || {
                    let d = at.load(Ordering::Relaxed);
                    d != 0 && epoch().elapsed().as_nanos() as u64 > d
                }),
            )?;
            pooled.push(Pooled {
                conn,
                user_mode,
                volatile,
                authorized,
                verdicts: Default::default(),
                deadline,
            });
        }
        Ok(ReadPool {
            size: pooled.len(),
            idle: Mutex::new(pooled),
            ready: Condvar::new(),
            waits: AtomicU64::new(0),
            waited_nanos: AtomicU64::new(0),
        })
    }

    /// A connection if one is idle right now.
    pub(crate) fn try_get(&self) -> Option<ReadConn<'_>> {
        self.idle.lock().pop().map(|conn| ReadConn {
            pool: self,
            conn: Some(conn),
        })
    }

    pub(crate) fn get(&self) -> ReadConn<'_> {
        let mut idle = self.idle.lock();
        let mut waiting_since: Option<Instant> = None;
        loop {
            if let Some(conn) = idle.pop() {
                if let Some(t) = waiting_since {
                    self.waits.fetch_add(1, Ordering::Relaxed);
                    self.waited_nanos
                        .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                return ReadConn {
                    pool: self,
                    conn: Some(conn),
                };
            }
            waiting_since.get_or_insert_with(Instant::now);
            self.ready.wait(&mut idle);
        }
    }

    pub(crate) fn stats(&self) -> ReadPoolStats {
        let idle = self.idle.lock().len();
        ReadPoolStats {
            size: self.size,
            in_use: self.size.saturating_sub(idle),
            waits: self.waits.load(Ordering::Relaxed),
            waited_nanos: self.waited_nanos.load(Ordering::Relaxed),
        }
    }
}

impl ReadConn<'_> {
    fn pooled(&self) -> &Pooled {
        // Present from creation until drop.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("read connection taken"))
    }

    /// Prepares a client's query: one read-only statement; ATTACH, PRAGMA
    /// assignments, transaction control and writes are refused with
    /// [`StoreError::NotAllowed`].
    ///
    /// Statements are cached per connection, under their text with
    /// [`CLIENT_TAG`] in front. That is safe because the authorizer runs
    /// when a statement is prepared: a client's cached statement passed the
    /// client rules, and the tag keeps client text from ever matching one
    /// of the store's own cached statements (prepared under the internal
    /// rules, which allow `__corro` objects). Errors are reported for the
    /// text as the client sent it. Statements over [`CACHED_SQL_MAX`] bytes
    /// are prepared every time.
    pub fn prepare_user(&self, sql: &str) -> Result<UserStatement<'_>, StoreError> {
        let p = self.pooled();
        p.user_mode.store(true, Ordering::Relaxed);
        p.volatile.store(false, Ordering::Relaxed);
        p.authorized.store(false, Ordering::Relaxed);
        let stmt = if sql.len() > CACHED_SQL_MAX {
            p.conn.prepare(sql).map(UserStatement::Fresh)
        } else {
            let mut tagged = String::with_capacity(CLIENT_TAG.len() + sql.len());
            tagged.push_str(CLIENT_TAG);
            tagged.push_str(sql);
            match p.conn.prepare_cached(&tagged) {
                Ok(s) => {
                    if p.authorized.load(Ordering::Relaxed) {
                        // Prepared just now: the authorizer saw every call.
                        self.remember(sql, !p.volatile.load(Ordering::Relaxed));
                    }
                    Ok(UserStatement::Cached(s))
                }
                // Prepared again untagged, so the error (and any offset in
                // it) is about the client's own text. Should that succeed
                // (a transient failure), the verdict is judged again later.
                Err(_) => {
                    p.verdicts.borrow_mut().remove(sql);
                    p.conn.prepare(sql).map(UserStatement::Fresh)
                }
            }
        };
        p.user_mode.store(false, Ordering::Relaxed);
        let stmt = stmt.map_err(|e| {
            let text = e.to_string();
            if text.contains("not authorized") {
                StoreError::NotAllowed(format!(
                    "{text} (queries must be read-only: writes, ATTACH, PRAGMA assignments and transaction control are refused)"
                ))
            } else {
                StoreError::Sqlite(e)
            }
        })?;
        if !stmt.readonly() {
            return Err(StoreError::NotAllowed(
                "queries must be read-only; use /v1/transactions to write".into(),
            ));
        }
        Ok(stmt)
    }

    /// Whether the answers of the client statement `sql` depend only on
    /// the database's content (no volatile function, no pragma; see
    /// [`VOLATILE_FUNCTIONS`]). Known from [`ReadConn::prepare_user`] when
    /// it prepared `sql`; otherwise `sql` is prepared once more, uncached,
    /// to find out. `false` when it does not prepare.
    pub fn is_pure(&self, sql: &str) -> bool {
        let p = self.pooled();
        if sql.len() > CACHED_SQL_MAX {
            return false;
        }
        if let Some(v) = p.verdicts.borrow().get(sql) {
            return *v;
        }
        p.user_mode.store(true, Ordering::Relaxed);
        p.volatile.store(false, Ordering::Relaxed);
        let prepared = p.conn.prepare(sql).is_ok();
        p.user_mode.store(false, Ordering::Relaxed);
        let pure = prepared && !p.volatile.load(Ordering::Relaxed);
        if prepared {
            self.remember(sql, pure);
        }
        pure
    }

    /// [`ReadConn::is_pure`] for a client statement `stmt` (of text `sql`)
    /// that has just run: if SQLite re-prepared it since it was judged (the
    /// schema changed underneath; the re-prepare ran without the client
    /// rules, so the authorizer did not see it), it is judged again on the
    /// schema it ran against.
    pub fn is_pure_as_run(&self, stmt: &rusqlite::Statement<'_>, sql: &str) -> bool {
        if stmt.reset_status(rusqlite::StatementStatus::RePrepare) > 0 {
            self.pooled().verdicts.borrow_mut().remove(sql);
        }
        self.is_pure(sql)
    }

    fn remember(&self, sql: &str, pure: bool) {
        let mut v = self.pooled().verdicts.borrow_mut();
        if v.len() >= VERDICTS_MAX {
            v.clear();
        }
        v.insert(sql.into(), pure);
    }
}

/// Put in front of a client's statement text for the statement cache, so
/// that client text never finds a statement the store prepared for itself.
/// A comment: SQLite skips it.
const CLIENT_TAG: &str = "/* client */ ";

/// A client statement from [`ReadConn::prepare_user`].
pub enum UserStatement<'a> {
    Cached(rusqlite::CachedStatement<'a>),
    Fresh(rusqlite::Statement<'a>),
}

impl<'a> std::ops::Deref for UserStatement<'a> {
    type Target = rusqlite::Statement<'a>;
    fn deref(&self) -> &Self::Target {
        match self {
            UserStatement::Cached(s) => s,
            UserStatement::Fresh(s) => s,
        }
    }
}

impl std::ops::DerefMut for UserStatement<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            UserStatement::Cached(s) => s,
            UserStatement::Fresh(s) => s,
        }
    }
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.pooled().conn
    }
}

impl ReadConn<'_> {
    /// Interrupts whatever this connection runs after `at` (the statement
    /// fails with SQLite's interrupt error), until the connection returns
    /// to the pool. Cheaper than installing a progress handler per query:
    /// one is installed per connection, once. (Do not install another: it
    /// would replace it.)
    pub fn set_deadline(&self, at: Instant) {
        let nanos = at.saturating_duration_since(epoch()).as_nanos() as u64;
        if let Some(c) = &self.conn {
            c.deadline.store(nanos.max(1), Ordering::Relaxed);
        }
    }
}

impl std::ops::DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self
            .conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("read connection taken"))
            .conn
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // A query's deadline does not outlive it.
            conn.deadline.store(0, Ordering::Relaxed);
            self.pool.idle.lock().push(conn);
            self.pool.ready.notify_one();
        }
    }
}
