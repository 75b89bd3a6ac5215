//! Group commit: concurrent callers' write transactions committed together.
//!
//! [`Store::transact_grouped`] queues the caller's transaction. One caller
//! at a time leads: it takes the writer and every queued transaction (up to
//! [`MAX_GROUP`]), runs them in arrival order inside one SQLite transaction,
//! each in its own savepoint, commits once and answers each caller. If more
//! transactions queued up meanwhile, it hands the lead to the owner of the
//! first of them and returns; the others sleep until their answer (or the
//! lead) arrives, so only the leader ever waits for the writer.
//!
//! Each caller still gets its own result and its own version (consecutive,
//! in the order the transactions ran, exactly as if they had committed one
//! after the other), and is answered only after the shared commit. A
//! transaction that fails is rolled back to its savepoint and fails alone;
//! the others commit. A statement that makes SQLite roll back the whole
//! transaction (`INSERT OR ROLLBACK`, an I/O error) fails its own caller;
//! the transactions before it are run again and committed, and those after
//! it form the next SQLite transaction, so none runs more than twice. That
//! is why the closure is `FnMut`: only its last run counts. A full disk
//! fails the rest of the group with the same error. A failed commit fails
//! every caller of its transaction with SQLite's own error (nothing of it
//! was written).
//!
//! Async callers use [`Store::submit_grouped`] instead: the outcome goes to
//! a callback run on the leader's thread, nobody blocks on a slot, and a
//! caller starts a leader (on a thread that may block) only when none is
//! running. Such a leader keeps running groups while the next queued job is
//! a callback job, so under load requests reach the writer without a
//! thread hop each; a caller's own thread leads one group and returns,
//! handing a callback job at the head to a fresh leader. Outcomes are
//! delivered after the writer is released, and a callback that panics is
//! logged without stopping the lead.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::error::StoreError;
use crate::store::{Store, Writer};
use crate::write::{BEGIN, COMMIT, Committed, TxGuard, WriteTx, now_ms};

/// Most transactions committed together.
pub const MAX_GROUP: usize = 256;

type AnyValue = Box<dyn Any + Send>;
type Outcome = Result<Committed<AnyValue>, StoreError>;
type Run = Box<dyn FnMut(&mut WriteTx<'_>) -> Result<AnyValue, StoreError> + Send>;

/// Where a queued transaction's caller waits.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    /// The caller leads the next group.
    Lead,
    Done(Outcome),
}

impl Slot {
    fn set(&self, s: SlotState) {
        *self.state.lock() = s;
        self.cv.notify_one();
    }
}

/// Where a queued transaction's outcome goes.
enum Reply {
    /// A caller's thread waits on the slot (and may be handed the lead).
    Wait(Arc<Slot>),
    /// Called once with the outcome, on the leader's thread; `None` once
    /// called.
    Call(Option<Callback>),
}

type Callback = Box<dyn FnOnce(Outcome) + Send>;

/// One caller's transaction and where its outcome goes.
pub(crate) struct Job {
    run: Run,
    reply: Reply,
    /// The outcome, once the group has settled it; delivered after the
    /// writer is released ([`Job::deliver`]).
    settled: Option<Outcome>,
}

impl Job {
    fn new(run: Run, reply: Reply) -> Job {
        Job {
            run,
            reply,
            settled: None,
        }
    }

    fn is_mine(&self, mine: Option<&Arc<Slot>>) -> bool {
        matches!((&self.reply, mine), (Reply::Wait(s), Some(m)) if Arc::ptr_eq(s, m))
    }

    /// Records the outcome (the first one counts).
    fn settle(&mut self, outcome: Outcome) {
        if self.settled.is_none() {
            self.settled = Some(outcome);
        }
    }

    /// Delivers the settled outcome, or an error if the group was
    /// interrupted before settling it. A callback that panics is logged:
    /// it cannot stop the lead.
    fn deliver(self) {
        let outcome = self.settled.unwrap_or_else(|| {
            Err(StoreError::Panicked(
                "the group commit was interrupted by a panic; this transaction may or may not have been written".into(),
            ))
        });
        match self.reply {
            Reply::Wait(slot) => slot.set(SlotState::Done(outcome)),
            Reply::Call(cb) => {
                if let Some(cb) = cb
                    && let Err(panic) =
                        std::panic::catch_unwind(AssertUnwindSafe(move || cb(outcome)))
                {
                    tracing::error!(
                        panic = %panic_text(&*panic),
                        "a group commit caller's callback panicked"
                    );
                }
            }
        }
    }
}

/// A caller's outcome with its value back in the caller's type.
fn typed<T: 'static>(c: Committed<AnyValue>) -> Result<Committed<T>, StoreError> {
    let value = c
        .value
        .downcast::<T>()
        .map_err(|_| StoreError::Integrity("a grouped transaction's value changed type".into()))?;
    Ok(Committed {
        value: *value,
        version: c.version,
        ts: c.ts,
        rows: c.rows,
        last_seq: c.last_seq,
    })
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// The lead of the group commit, taken by [`Store::submit_grouped`] when no
/// leader was running: [`GroupLead::run`] runs the queued groups on the
/// current thread (which may block on the writer). Dropping it runs them
/// too, so the queue never stalls.
#[must_use = "queued transactions wait until the lead runs"]
pub struct GroupLead {
    store: Option<Store>,
}

impl GroupLead {
    /// Runs groups until the queue is empty or a waiting caller's thread
    /// takes the lead over.
    pub fn run(mut self) {
        if let Some(store) = self.store.take() {
            store.lead_from_queue();
        }
    }
}

impl Drop for GroupLead {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            store.lead_from_queue();
        }
    }
}

#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    /// A caller is leading (running a group or about to).
    led: bool,
}

/// Transactions waiting for the next leader, and what the groups did.
#[derive(Default)]
pub(crate) struct GroupQueue {
    queue: Mutex<Queue>,
    groups: AtomicU64,
    transactions: AtomicU64,
    reruns: AtomicU64,
}

/// Group commit counters ([`Store::group_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Transactions queued for the next group right now.
    pub waiting: usize,
    /// A leader is running groups (or about to).
    pub leading: bool,
    /// Groups committed (or failed) so far.
    pub groups: u64,
    /// Transactions run in those groups.
    pub transactions: u64,
    /// Statements that made SQLite roll back a group's whole transaction
    /// (each costs one extra run of the jobs before it).
    pub reruns: u64,
}

/// SQL of each job's savepoint (named `__corro` so a client's statements
/// are never served these cached statements).
const SAVEPOINT: &str = "SAVEPOINT corro_job /* __corro */";
const RELEASE: &str = "RELEASE corro_job /* __corro */";
const UNDO: &str = "ROLLBACK TO corro_job /* __corro */";

/// One transaction's run inside the group, before the commit.
struct Ran {
    value: AnyValue,
    version: u64,
    /// Commit time as stored in the clocks and the version index.
    ts: u64,
    rows: Vec<crate::write::RowChange>,
    nchanges: u64,
}

impl Store {
    /// What group commit has done so far.
    pub fn group_stats(&self) -> GroupStats {
        let g = &self.inner.group;
        let q = g.queue.lock();
        GroupStats {
            waiting: q.jobs.len(),
            leading: q.led,
            groups: g.groups.load(Ordering::Relaxed),
            transactions: g.transactions.load(Ordering::Relaxed),
            reruns: g.reruns.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` as one local write transaction, committed together with
    /// other callers' concurrent transactions (see the module doc). All or
    /// nothing for this caller, like [`Store::transact`]; `f` may run more
    /// than once (only its last run is committed), so it must not have
    /// effects outside the transaction it cannot repeat.
    pub fn transact_grouped<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<Committed<T>, StoreError> {
        self.inner.space.check()?;
        let slot: Arc<Slot> = Arc::default();
        let lead = {
            let mut q = self.inner.group.queue.lock();
            q.jobs.push_back(Job::new(
                Box::new(move |tx| f(tx).map(|v| Box::new(v) as AnyValue)),
                Reply::Wait(slot.clone()),
            ));
            !std::mem::replace(&mut q.led, true)
        };
        if !lead {
            let mut st = slot.state.lock();
            while matches!(*st, SlotState::Waiting) {
                slot.cv.wait(&mut st);
            }
        }
        let outcome = loop {
            let state = std::mem::take(&mut *slot.state.lock());
            match state {
                SlotState::Done(o) => break o,
                SlotState::Lead | SlotState::Waiting => {
                    // Ours is the first queued job: the one before us
                    // handed over only with jobs left, and a fresh leader
                    // found the queue empty.
                    if let Err(panic) = self.lead(Some(&slot)) {
                        std::panic::resume_unwind(panic);
                    }
                }
            }
        };
        self.inner.space.note(&outcome);
        outcome.and_then(typed)
    }

    /// Queues `f` like [`Store::transact_grouped`] without blocking: `done`
    /// is called with the outcome, on the thread that runs the group (keep
    /// it short: send it somewhere). When no leader is running, the caller
    /// gets the lead and must run it on a thread that may block
    /// ([`GroupLead::run`]); otherwise the running leader takes `f` in a
    /// coming group. `f` may run more than once, as with `transact_grouped`.
    pub fn submit_grouped<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
        done: impl FnOnce(Result<Committed<T>, StoreError>) + Send + 'static,
    ) -> Result<Option<GroupLead>, StoreError> {
        self.inner.space.check()?;
        let store = self.clone();
        let reply: Callback = Box::new(move |outcome: Outcome| {
            store.inner.space.note(&outcome);
            done(outcome.and_then(typed));
        });
        let mut q = self.inner.group.queue.lock();
        q.jobs.push_back(Job::new(
            Box::new(move |tx| f(tx).map(|v| Box::new(v) as AnyValue)),
            Reply::Call(Some(reply)),
        ));
        let lead = !std::mem::replace(&mut q.led, true);
        Ok(lead.then(|| GroupLead {
            store: Some(self.clone()),
        }))
    }

    /// Leads for a [`GroupLead`]: no transaction of its own; a panic in a
    /// listener is logged (its callers were answered).
    fn lead_from_queue(&self) {
        if let Err(panic) = self.lead(None) {
            tracing::error!(panic = %panic_text(&*panic), "a group commit panicked; its callers were answered");
        }
    }

    /// Runs groups (the first with the leader's own transaction, `mine`,
    /// first), then hands the lead to the next queued caller that waits on
    /// its thread, or gives it up when the queue is empty. While the next
    /// queued job is answered by a callback, a leader without a caller of
    /// its own (`mine` is `None`) runs the next group itself; a caller's
    /// thread hands such a job to a fresh leader and returns with its own
    /// outcome. However a group ends (even by a panic in a change
    /// listener), every caller in it is answered, after the writer is
    /// released, and the lead moves on.
    fn lead(&self, mine: Option<&Arc<Slot>>) -> Result<(), Box<dyn Any + Send>> {
        let mut result = Ok(());
        loop {
            // The writer first: what queues while it is busy joins this group.
            let w = self.inner.writer.local();
            let mut jobs: Vec<Job> = {
                let mut q = self.inner.group.queue.lock();
                let n = q.jobs.len().min(MAX_GROUP);
                q.jobs.drain(..n).collect()
            };
            if let Err(e) = self.inner.space.check() {
                // The disk filled up since these were queued.
                for j in &mut jobs {
                    j.settle(Err(share(&e)));
                }
            } else {
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.run_group(&w, &mut jobs, mine)
                }))
                .unwrap_or_else(Err);
                if r.is_err() && result.is_ok() {
                    result = r;
                }
            }
            drop(w);
            for j in jobs {
                j.deliver();
            }
            let mut q = self.inner.group.queue.lock();
            match q.jobs.front() {
                Some(Job {
                    reply: Reply::Wait(slot),
                    ..
                }) => {
                    slot.set(SlotState::Lead);
                    return result;
                }
                Some(_) if mine.is_some() => {
                    // A callback job, and this thread's caller is answered:
                    // it goes back to its caller; a fresh leader goes on.
                    drop(q);
                    self.hand_over();
                    return result;
                }
                Some(_) => {}
                None => {
                    q.led = false;
                    return result;
                }
            }
        }
    }

    /// Gives the lead to a fresh thread (the current leader must return).
    fn hand_over(&self) {
        let store = self.clone();
        let spawned = std::thread::Builder::new()
            .name("corro-group".into())
            .spawn(move || store.lead_from_queue());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a group commit leader; leading on this thread");
            self.lead_from_queue();
        }
    }

    /// Runs `jobs` and delivers each outcome to its slot: normally one
    /// SQLite transaction; when a statement makes SQLite roll back the
    /// whole transaction, the jobs before it (known to run) are run again
    /// and committed, and the ones after it form the next transaction, so
    /// no job runs more than twice whatever its neighbours do. `Err`
    /// carries a panic of the leader's own transaction (`mine`), re-raised
    /// by the caller once the others are answered.
    fn run_group(
        &self,
        w: &Writer,
        jobs: &mut [Job],
        mine: Option<&Arc<Slot>>,
    ) -> Result<(), Box<dyn Any + Send>> {
        let n = jobs.len();
        let g = &self.inner.group;
        g.groups.fetch_add(1, Ordering::Relaxed);
        g.transactions.fetch_add(n as u64, Ordering::Relaxed);
        // Failures that are final, by job.
        let mut failed: Vec<Option<StoreError>> = (0..n).map(|_| None).collect();
        let mut my_panic = None;
        let mut start = 0;
        while start < n {
            let mut end = n;
            let mut next = n;
            let done = loop {
                match self.try_group(w, jobs, start..end, &mut failed, mine, &mut my_panic) {
                    Attempt::Done(r) => break r,
                    Attempt::Killed(k) => {
                        g.reruns.fetch_add(1, Ordering::Relaxed);
                        let disk_full = failed[k].as_ref().is_some_and(StoreError::is_disk_full);
                        if disk_full {
                            // Nothing more will commit: every other job
                            // fails with the same error.
                            let e = failed[k].as_ref().map(share);
                            for f in failed[start..n].iter_mut().filter(|f| f.is_none()) {
                                *f = e.as_ref().map(share);
                            }
                            self.inner.space.note::<()>(&Err(share(
                                failed[k]
                                    .as_ref()
                                    .unwrap_or(&StoreError::DiskFull(String::new())),
                            )));
                            next = n;
                            end = start;
                        } else {
                            next = k + 1;
                            end = k;
                        }
                        if end == start {
                            break Ok(Vec::new());
                        }
                    }
                }
            };
            match done {
                Ok(ran) => {
                    // Committed: bookkeeping and listeners in version
                    // order, then each caller is answered.
                    let mut ran = ran.into_iter().peekable();
                    for i in start..end {
                        let outcome = match failed[i].take() {
                            Some(e) => Err(e),
                            None => match ran.next_if(|(j, _)| *j == i) {
                                Some((_, r)) => self.committed_guarded(r),
                                None => Err(StoreError::Integrity(
                                    "a grouped transaction has no outcome".into(),
                                )),
                            },
                        };
                        jobs[i].settle(outcome);
                    }
                }
                Err(e) => {
                    self.inner.space.note::<()>(&Err(share(&e)));
                    for i in start..end {
                        let outcome = failed[i].take().unwrap_or_else(|| share(&e));
                        jobs[i].settle(Err(outcome));
                    }
                }
            }
            // Jobs between `end` and `next` failed on their own.
            for i in end..next {
                if let Some(e) = failed[i].take() {
                    jobs[i].settle(Err(e));
                }
            }
            start = next;
        }
        match my_panic {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    /// Marks a committed run's version held and tells the listeners. A
    /// listener that panics does not stop the runs after it from being
    /// announced (their versions would otherwise stay unheld and be
    /// reused); its caller gets an error saying its transaction was
    /// written, and the panic is logged.
    fn committed_guarded(&self, r: Ran) -> Outcome {
        let version = r.version;
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.announce(r.value, r.version, r.ts, r.rows, r.nchanges)
        }))
        .map_err(|panic| {
            let text = panic_text(&*panic);
            tracing::error!(version, panic = %text, "a change listener panicked after a group commit");
            StoreError::Panicked(format!(
                "written as version {version}, but a change listener panicked: {text}"
            ))
        })
    }

    /// One SQLite transaction over `range` of the jobs (those not failed
    /// yet), each in its own savepoint, then the commit.
    fn try_group(
        &self,
        w: &Writer,
        jobs: &mut [Job],
        range: std::ops::Range<usize>,
        failed: &mut [Option<StoreError>],
        mine: Option<&Arc<Slot>>,
        my_panic: &mut Option<Box<dyn Any + Send>>,
    ) -> Attempt {
        let conn = &w.local;
        let begun = conn.prepare_cached(BEGIN).and_then(|mut s| s.raw_execute());
        if let Err(e) = begun {
            return Attempt::Done(Err(e.into()));
        }
        let mut guard = TxGuard {
            writer: w,
            armed: true,
        };
        let mut version = self.head() + 1;
        let ts = now_ms();
        let mut ran: Vec<(usize, Ran)> = Vec::with_capacity(range.len());
        for i in range {
            if failed[i].is_some() {
                continue;
            }
            let job = &mut jobs[i];
            if let Err(e) = conn
                .prepare_cached(SAVEPOINT)
                .and_then(|mut s| s.raw_execute())
            {
                return Attempt::Done(Err(e.into()));
            }
            w.capture.lock().reset(true);
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let value = (job.run)(&mut WriteTx::new(conn, w))?;
                let (rows, nchanges) = self.flush(w, version, ts)?;
                Ok::<_, StoreError>((value, rows, nchanges))
            }));
            w.capture.lock().reset(false);
            let result = match result {
                Ok(r) => r,
                Err(panic) => {
                    if job.is_mine(mine) {
                        *my_panic = Some(panic);
                    }
                    Err(StoreError::Panicked(
                        "the transaction's code panicked; nothing of it was written".into(),
                    ))
                }
            };
            match result {
                Ok((value, rows, nchanges)) => {
                    if let Err(e) = conn
                        .prepare_cached(RELEASE)
                        .and_then(|mut s| s.raw_execute())
                    {
                        return Attempt::Done(Err(e.into()));
                    }
                    ran.push((
                        i,
                        Ran {
                            value,
                            version,
                            ts,
                            rows,
                            nchanges,
                        },
                    ));
                    if nchanges > 0 {
                        version += 1;
                    }
                }
                Err(e) if conn.is_autocommit() => {
                    // SQLite rolled the whole transaction back.
                    guard.armed = false;
                    failed[i] = Some(e);
                    return Attempt::Killed(i);
                }
                Err(e) => {
                    let undone = conn
                        .prepare_cached(UNDO)
                        .and_then(|mut s| s.raw_execute())
                        .and_then(|_| conn.prepare_cached(RELEASE)?.raw_execute());
                    failed[i] = Some(e);
                    if let Err(e) = undone {
                        return Attempt::Done(Err(e.into()));
                    }
                }
            }
        }
        if ran.is_empty() {
            // Every job failed: nothing to commit. The guard rolls back, so
            // no commit happens (and answers kept by readers stay valid).
            return Attempt::Done(Ok(ran));
        }
        if let Err(e) = conn
            .prepare_cached(COMMIT)
            .and_then(|mut s| s.raw_execute())
        {
            return Attempt::Done(Err(e.into()));
        }
        guard.armed = false;
        Attempt::Done(Ok(ran))
    }
}

/// The same error for another caller of a failed group: SQLite's code and
/// message are kept (so a full disk or a busy database is reported as such).
fn share(e: &StoreError) -> StoreError {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, m)) => {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(*f, m.clone()))
        }
        StoreError::DiskFull(s) => StoreError::DiskFull(s.clone()),
        // An I/O error for lack of space stays a full disk for every caller.
        other if other.is_disk_full() => StoreError::DiskFull(other.to_string()),
        other => StoreError::Integrity(format!("the group commit failed: {other}")),
    }
}

enum Attempt {
    /// Committed (the runs of the jobs that did not fail) or failed as a
    /// whole.
    Done(Result<Vec<(usize, Ran)>, StoreError>),
    /// Job `.0` made SQLite roll back the whole transaction.
    Killed(usize),
}
