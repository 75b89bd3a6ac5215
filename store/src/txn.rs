//! Transactions begun and ended through cached statements.
//!
//! rusqlite's `Transaction` runs `BEGIN` and `COMMIT` with `execute_batch`,
//! which parses and prepares the text on every call: about a tenth of a
//! subscription's refresh, and a share of every remote apply and sync
//! serve. [`CachedTx`] prepares them once per connection (its statement
//! cache) and otherwise behaves the same: it rolls back on drop unless it
//! was committed.

use std::ops::Deref;

use rusqlite::Connection;

const BEGIN_DEFERRED: &str = "BEGIN DEFERRED /* __corro */";
const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE /* __corro */";
const COMMIT: &str = "COMMIT /* __corro */";
const ROLLBACK: &str = "ROLLBACK /* __corro */";

/// An open transaction on a shared connection, rolled back on drop unless
/// [`CachedTx::commit`] succeeded.
#[must_use = "a transaction is rolled back when dropped"]
pub struct CachedTx<'c> {
    conn: &'c Connection,
    committed: bool,
}

impl<'c> CachedTx<'c> {
    /// `BEGIN DEFERRED`: the first read or write takes the locks.
    pub fn deferred(conn: &'c Connection) -> rusqlite::Result<Self> {
        Self::begin(conn, BEGIN_DEFERRED)
    }

    /// `BEGIN IMMEDIATE`: the write lock is taken now.
    pub fn immediate(conn: &'c Connection) -> rusqlite::Result<Self> {
        Self::begin(conn, BEGIN_IMMEDIATE)
    }

    fn begin(conn: &'c Connection, sql: &str) -> rusqlite::Result<Self> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(CachedTx {
            conn,
            committed: false,
        })
    }

    /// Commits. On an error the transaction is still open and is rolled
    /// back when `self` drops.
    pub fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached(COMMIT)?.execute([])?;
        self.committed = true;
        Ok(())
    }
}

impl Deref for CachedTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for CachedTx<'_> {
    fn drop(&mut self) {
        if !self.committed && !self.conn.is_autocommit() {
            let rolled_back = self
                .conn
                .prepare_cached(ROLLBACK)
                .and_then(|mut s| s.execute([]));
            if let Err(e) = rolled_back {
                // The connection stays inside the transaction; its next
                // BEGIN fails and says so.
                tracing::error!(error = %e, "rolling back a transaction failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        c
    }

    fn count(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn commits_and_rolls_back_on_drop() {
        let c = conn();
        let tx = CachedTx::deferred(&c).unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        tx.commit().unwrap();
        assert_eq!(count(&c), 1);
        {
            let tx = CachedTx::immediate(&c).unwrap();
            tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
        }
        assert!(c.is_autocommit());
        assert_eq!(count(&c), 1);
        // Reused from the cache, again and again.
        for i in 0..3 {
            let tx = CachedTx::deferred(&c).unwrap();
            tx.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            tx.commit().unwrap();
        }
        assert_eq!(count(&c), 4);
    }

    #[test]
    fn a_failed_commit_leaves_nothing_open() {
        let c = conn();
        c.execute_batch("PRAGMA foreign_keys = ON; CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE ch (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)").unwrap();
        let tx = CachedTx::deferred(&c).unwrap();
        tx.execute("INSERT INTO ch VALUES (7)", []).unwrap();
        assert!(tx.commit().is_err());
        assert!(c.is_autocommit());
        let n: i64 = c
            .query_row("SELECT count(*) FROM ch", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
