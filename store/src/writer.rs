//! The single writer and who gets it next.
//!
//! Local write transactions (API clients waiting on a response) and remote
//! change application (gossip, sync) share one SQLite writer. Local writes go
//! first: remote application waits while any local transaction is queued or
//! running, but never longer than [`MAX_REMOTE_WAIT`], so a steady stream of
//! local writes cannot starve replication. Neither side waits for more than
//! one transaction of the other once it is at the front.
//!
//! The lock also keeps the store's data generation ([`WriterLock::generation`]):
//! odd while anyone holds the writer; when they let go, the next even number
//! if a transaction committed meanwhile (the writer connections' commit
//! hooks say so), or back to the even number it was otherwise. A reader that
//! saw the same even generation before and after a query read the database
//! as it still is (answers cached on that are exact; `answers.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::store::Writer;

/// Longest remote application yields to local writes before taking its turn.
pub const MAX_REMOTE_WAIT: Duration = Duration::from_millis(100);

/// Queue depths of the writer, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Local transactions waiting for or holding the writer.
    pub local_active: usize,
    /// Remote applications waiting for their turn.
    pub remote_waiting: usize,
}

pub(crate) struct WriterLock {
    writer: Mutex<Writer>,
    gate: Mutex<WriterStats>,
    turn: Condvar,
    generation: AtomicU64,
    /// Set by the writer connections' commit hooks.
    committed: Arc<AtomicBool>,
}

/// Exclusive access to the writer; lets the next one in on drop.
pub(crate) struct WriterGuard<'a> {
    guard: Option<MutexGuard<'a, Writer>>,
    lock: &'a WriterLock,
    local: bool,
}

impl WriterLock {
    /// `committed` must be set by a commit hook on every connection of
    /// `writer` (see [`commit_flag`]).
    pub(crate) fn new(writer: Writer, committed: Arc<AtomicBool>) -> Self {
        WriterLock {
            committed,
            writer: Mutex::new(writer),
            gate: Mutex::new(WriterStats::default()),
            turn: Condvar::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// For a local write transaction: ahead of remote application.
    pub(crate) fn local(&self) -> WriterGuard<'_> {
        self.gate.lock().local_active += 1;
        WriterGuard {
            guard: Some(self.acquire()),
            lock: self,
            local: true,
        }
    }

    /// For remote application and maintenance: after queued local writes,
    /// or after [`MAX_REMOTE_WAIT`] at the latest.
    pub(crate) fn remote(&self) -> WriterGuard<'_> {
        let deadline = Instant::now() + MAX_REMOTE_WAIT;
        {
            let mut gate = self.gate.lock();
            gate.remote_waiting += 1;
            while gate.local_active > 0 && !self.turn.wait_until(&mut gate, deadline).timed_out() {}
            gate.remote_waiting -= 1;
        }
        WriterGuard {
            guard: Some(self.acquire()),
            lock: self,
            local: false,
        }
    }

    /// Takes the writer and makes the generation odd: from here until the
    /// guard drops, a commit may land.
    fn acquire(&self) -> MutexGuard<'_, Writer> {
        let w = self.writer.lock();
        self.committed.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        w
    }

    /// The data generation: even while nobody holds the writer, a new even
    /// value after every hold in which a transaction committed, the same
    /// value after one in which none did. Two equal even readings bracket a
    /// time in which no transaction committed.
    ///
    /// What a commit hook does not see: `VACUUM` commits through SQLite's
    /// copy path, not a commit. None of the store's own code runs it on the
    /// writer, and client statements cannot: they always run inside a
    /// transaction, where SQLite refuses `VACUUM`.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> WriterStats {
        *self.gate.lock()
    }
}

/// Installs a commit hook on `conn` that raises `flag` (before each commit of
/// a write transaction, DDL included; read-only transactions do not commit).
pub(crate) fn commit_flag(
    conn: &mut rusqlite::Connection,
    flag: &Arc<AtomicBool>,
) -> rusqlite::Result<()> {
    let flag = flag.clone();
    conn.commit_hook(Some(move || {
        flag.store(true, Ordering::SeqCst);
        false // let the commit go on
    }))
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        self.guard
            .as_ref()
            .unwrap_or_else(|| unreachable!("held until drop"))
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        // Whatever the holder committed is visible now: even again, and past
        // every answer read before; back where it was if nothing committed
        // (the hook runs before each commit, so a failed commit counts too).
        if self.lock.committed.load(Ordering::SeqCst) {
            self.lock.generation.fetch_add(1, Ordering::SeqCst);
        } else {
            self.lock.generation.fetch_sub(1, Ordering::SeqCst);
        }
        drop(self.guard.take());
        if self.local {
            self.lock.gate.lock().local_active -= 1;
        }
        self.lock.turn.notify_all();
    }
}
