//! A small pool of read-only connections.
//!
//! Readers never block the writer (WAL) and never see uncommitted data. The
//! pool hands out a guard that returns the connection on drop; when every
//! connection is busy, callers wait on a condition variable.

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

pub(crate) struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    ready: Condvar,
}

/// A borrowed read connection.
pub struct ReadConn<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl ReadPool {
    pub(crate) fn new(conns: Vec<Connection>) -> Self {
        ReadPool {
            idle: Mutex::new(conns),
            ready: Condvar::new(),
        }
    }

    pub(crate) fn get(&self) -> ReadConn<'_> {
        let mut idle = self.idle.lock();
        loop {
            if let Some(conn) = idle.pop() {
                return ReadConn {
                    pool: self,
                    conn: Some(conn),
                };
            }
            self.ready.wait(&mut idle);
        }
    }
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Present from creation until drop.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("read connection taken"))
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().push(conn);
            self.pool.ready.notify_one();
        }
    }
}
