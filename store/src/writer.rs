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
//! odd while anyone holds the writer, moved to the next even number when they
//! let go. A reader that saw the same even generation before and after a
//! query read the database as it still is (answers cached on that are
//! exact; `answers.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
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
}

/// Exclusive access to the writer; lets the next one in on drop.
pub(crate) struct WriterGuard<'a> {
    guard: Option<MutexGuard<'a, Writer>>,
    lock: &'a WriterLock,
    local: bool,
}

impl WriterLock {
    pub(crate) fn new(writer: Writer) -> Self {
        WriterLock {
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
        self.generation.fetch_add(1, Ordering::SeqCst);
        w
    }

    /// The data generation: even while nobody holds the writer, and
    /// different after every hold. Two equal even readings bracket a time in
    /// which no transaction committed.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> WriterStats {
        *self.gate.lock()
    }
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
        // Whatever the holder committed is visible now: even again, and
        // past every answer read before.
        self.lock.generation.fetch_add(1, Ordering::SeqCst);
        drop(self.guard.take());
        if self.local {
            self.lock.gate.lock().local_active -= 1;
        }
        self.lock.turn.notify_all();
    }
}
