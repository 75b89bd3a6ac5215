//! The shared catalog handle: the [`Index`] behind a lock, fed from the
//! store's change feed and from membership, with change notification.
//!
//! The feed listener runs on the store's committing thread, so it only
//! queues the touched rows; [`Catalog::process_pending`] (run by the task
//! [`Catalog::run`] starts, on a blocking thread) re-reads them from a read
//! connection and updates the index. Rows are re-read rather than taken
//! from the changes because a remote change may lose the merge: what the
//! table says after the commit is the truth.
//!
//! After every batch that changed something, the index value advances and
//! [`Catalog::subscribe`]rs (catalog topics) or [`Catalog::subscribe_kv`]rs
//! (KV keys) are woken with it; [`Catalog::watch`]ers only when one of
//! their topics changed (see [`crate::wakers`]).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

use corro_store::{RowChanged, Store};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use tokio::sync::{Notify, watch};

use crate::counter::IndexCounter;
use crate::index::{Index, MemberState, Topic};
use crate::sql;
use crate::wakers::{self, TopicWatch, Wakers};

/// Why the catalog could not load or refresh.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the discovery tables: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the X-Consul-Index counter file: {0}")]
    Counter(#[from] std::io::Error),
}

struct Shared {
    store: Store,
    index: RwLock<Index>,
    /// Rows the change feed reported, not yet re-read.
    pending: Mutex<Vec<RowChanged>>,
    /// Held while a batch is read and applied (batches never interleave).
    processing: Mutex<()>,
    wake: Notify,
    /// Catalog topics changed (value: the new index).
    changed: watch::Sender<u64>,
    /// KV keys changed (value: the new index).
    kv_changes: watch::Sender<u64>,
    /// A member's SWIM state changed (value: [`Index::member_generation`]).
    member_changes: watch::Sender<u64>,
    counter: Mutex<IndexCounter>,
    /// The last counter write failed (logged once per streak).
    counter_failing: AtomicBool,
    kv_listeners: Mutex<Vec<KvListener>>,
    /// Held queries' topics.
    wakers: Mutex<Wakers>,
}

/// Called after KV keys changed in the index, with the keys (`None`: any
/// key may have, after a full reload).
pub type KvListener = Arc<dyn Fn(Option<&[String]>) + Send + Sync>;

/// The discovery model, shared by every reader (cheap to clone).
#[derive(Clone)]
pub struct Catalog {
    shared: Arc<Shared>,
}

impl Catalog {
    /// Loads the discovery tables of `store` and starts listening to its
    /// change feed (changes queue until [`Catalog::run`] or
    /// [`Catalog::process_pending`] handles them). `counter`: the file
    /// persisting the `X-Consul-Index` counter (`None`: in memory). Blocks.
    pub fn open(store: &Store, counter: Option<&Path>) -> Result<Catalog, CatalogError> {
        let (counter, start) = IndexCounter::open(counter)?;
        let index = Index::new(&store.actor_id().to_string(), start);
        let shared = Arc::new(Shared {
            store: store.clone(),
            index: RwLock::new(index),
            pending: Mutex::new(Vec::new()),
            processing: Mutex::new(()),
            wake: Notify::new(),
            changed: watch::channel(start).0,
            kv_changes: watch::channel(start).0,
            member_changes: watch::channel(0).0,
            counter: Mutex::new(counter),
            counter_failing: AtomicBool::new(false),
            kv_listeners: Mutex::new(Vec::new()),
            wakers: Mutex::new(Wakers::default()),
        });
        // Listen first, then load: a commit in between is queued and
        // re-read (re-reading is idempotent).
        let weak = Arc::downgrade(&shared);
        store.on_change(Arc::new(move |rows| {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let mut queued = false;
            let mut pending = shared.pending.lock();
            for r in &rows.rows {
                if sql::TABLES.iter().any(|t| r.table.eq_ignore_ascii_case(t)) {
                    pending.push(r.clone());
                    queued = true;
                }
            }
            drop(pending);
            if queued {
                shared.wake.notify_one();
            }
        }));
        let catalog = Catalog { shared };
        catalog.reload()?;
        Ok(catalog)
    }

    /// Re-reads every discovery row (at start, and after a schema change
    /// that may have created the tables). Blocks. Rows are read without
    /// the index lock; the index then takes only the differences, under
    /// the lock, so unchanged rows keep their entry indexes and a
    /// membership change made meanwhile is neither lost nor able to move
    /// the index backwards.
    pub fn reload(&self) -> Result<(), CatalogError> {
        let _one_at_a_time = self.shared.processing.lock();
        // Everything queued so far is covered by this read.
        self.shared.pending.lock().clear();
        let conn = self.shared.store.reader();
        let rows = sql::read_all(&conn)?;
        drop(conn);
        let mut index = self.shared.index.write();
        index.replace_rows(rows);
        let (changed, wakes) = self.finish(&mut index, None);
        drop(index);
        wakers::send(wakes);
        if changed {
            self.kv_changed(None);
        }
        Ok(())
    }

    /// Calls `f` after KV keys change in the index (after the index shows
    /// them, so a reader woken by it reads the new values).
    pub fn on_kv_change(&self, f: KvListener) {
        self.shared.kv_listeners.lock().push(f);
    }

    fn kv_changed(&self, keys: Option<&[String]>) {
        let listeners = self.shared.kv_listeners.lock().clone();
        for l in listeners {
            l(keys);
        }
    }

    /// Re-reads the rows the change feed queued and applies them; true when
    /// the index changed. Blocks (one read transaction). Rows are read
    /// without holding the index lock (readers such as DNS keep answering
    /// during a large catch-up); batches are processed one at a time, so an
    /// older read never overwrites a newer one.
    pub fn process_pending(&self) -> Result<bool, CatalogError> {
        let _one_at_a_time = self.shared.processing.lock();
        let rows = std::mem::take(&mut *self.shared.pending.lock());
        if rows.is_empty() {
            return Ok(false);
        }
        let fresh = match Self::read_rows(&self.shared.store, &rows) {
            Ok(f) => f,
            Err(e) => {
                // Not lost: queued again (ahead of anything newer) for the
                // next attempt.
                let mut pending = self.shared.pending.lock();
                let newer = std::mem::replace(&mut *pending, rows);
                pending.extend(newer);
                return Err(e.into());
            }
        };
        let kv_keys: Vec<String> = fresh.iter().filter_map(sql::Fresh::kv_key).collect();
        let mut index = self.shared.index.write();
        for f in fresh {
            sql::apply(&mut index, f);
        }
        let (changed, wakes) = self.finish(&mut index, Some(&kv_keys));
        drop(index);
        wakers::send(wakes);
        if !kv_keys.is_empty() {
            self.kv_changed(Some(&kv_keys));
        }
        Ok(changed)
    }

    /// Re-reads the rows `rows` name (the latest report of each key).
    fn read_rows(store: &Store, rows: &[RowChanged]) -> rusqlite::Result<Vec<sql::Fresh>> {
        let conn = store.reader();
        let mut seen = std::collections::HashSet::new();
        let mut fresh = Vec::with_capacity(rows.len());
        for r in rows.iter().rev() {
            if !seen.insert((&*r.table, &*r.pk)) {
                continue;
            }
            let Ok(pk) = corro_store::decode_key(&r.pk) else {
                tracing::warn!(table = %r.table, "undecodable primary key in the change feed");
                continue;
            };
            let table = r.table.to_ascii_lowercase();
            fresh.push(sql::read_row(&conn, &table, &pk)?);
        }
        Ok(fresh)
    }

    /// Replaces the membership view (see [`Index::set_members`]).
    pub fn set_membership(
        &self,
        members: Vec<(String, MemberState, Option<f64>)>,
        settled: bool,
    ) -> Result<bool, CatalogError> {
        let mut index = self.shared.index.write();
        index.set_members(members, settled);
        let generation = index.member_generation();
        let (changed, wakes) = self.finish(&mut index, Some(&[]));
        drop(index);
        wakers::send(wakes);
        self.shared.member_changes.send_if_modified(|g| {
            let moved = *g != generation;
            *g = generation;
            moved
        });
        Ok(changed)
    }

    /// Stamps what changed, persists the counter, wakes subscribers; true
    /// when something changed. A counter file that cannot be written is
    /// logged and counted, and watchers are woken all the same: the change
    /// is in the index already (the counter retries on the next change).
    /// `kv_keys`: the KV keys the batch changed (`None`: unknown, every KV
    /// watcher is woken). Returns the held queries' senders to wake, for
    /// the caller to [`wakers::send`] once the index lock is released.
    fn finish(
        &self,
        index: &mut Index,
        kv_keys: Option<&[String]>,
    ) -> (bool, Vec<Arc<watch::Sender<()>>>) {
        let watched = self.shared.wakers.lock().len() > 0;
        let dirty: Vec<Topic> = if watched {
            index.dirty().cloned().collect()
        } else {
            Vec::new()
        };
        let Some(value) = index.finish() else {
            return (false, Vec::new());
        };
        match self.shared.counter.lock().reach(value) {
            Ok(()) => {
                if self.shared.counter_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        index = value,
                        "the X-Consul-Index counter file is written again"
                    );
                }
            }
            Err(e) => {
                metrics::counter!("corro_catalog_counter_errors_total").increment(1);
                // Once per streak: a full disk would otherwise log each change.
                if !self.shared.counter_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, index = value, "persisting the X-Consul-Index counter failed; retrying at each change");
                }
            }
        }
        metrics::gauge!("corro_catalog_index").set(value as f64);
        metrics::gauge!("corro_catalog_stamped_topics").set(index.stamped_topics() as f64);
        let (keys, bytes) = index.kv_size();
        metrics::gauge!("corro_kv_keys").set(keys as f64);
        metrics::gauge!("corro_kv_value_bytes").set(bytes as f64);
        let moved = index.moved();
        let wakes = if watched {
            let kv_keys = if moved.kv { kv_keys } else { Some(&[][..]) };
            self.shared.wakers.lock().collect(&dirty, kv_keys)
        } else {
            Vec::new()
        };
        if moved.catalog {
            self.shared.changed.send_replace(value);
        }
        if moved.kv {
            self.shared.kv_changes.send_replace(value);
        }
        (true, wakes)
    }

    /// What a held query waits on: it wakes when one of `topics` may have
    /// changed (any change when `topics` is empty). Made before the answer
    /// is first computed, so a change in between still wakes it.
    pub fn watch(&self, topics: &[Topic]) -> TopicWatch {
        let mut wakers = self.shared.wakers.lock();
        let receivers = if topics.is_empty() {
            vec![wakers.any()]
        } else {
            topics
                .iter()
                .map(|t| wakers.receiver(t.folded().into_owned()))
                .collect()
        };
        metrics::gauge!("corro_catalog_watched_topics").set(wakers.len() as f64);
        TopicWatch::new(receivers)
    }

    /// Read access to the index (hold it briefly: writers wait).
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.shared.index.read()
    }

    /// A receiver that changes whenever a catalog topic (services, nodes,
    /// checks, members) does; value: the new index. KV writes do not wake
    /// it ([`Catalog::subscribe_kv`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// A receiver that changes whenever a member's SWIM state does (alive,
    /// suspect, down; not RTT), whether or not the catalog index moved.
    pub fn subscribe_members(&self) -> watch::Receiver<u64> {
        self.shared.member_changes.subscribe()
    }

    /// A receiver that changes whenever a KV key does (value: the new index).
    pub fn subscribe_kv(&self) -> watch::Receiver<u64> {
        self.shared.kv_changes.subscribe()
    }

    /// The index of the latest change to a catalog topic (KV changes do
    /// not move it).
    pub fn last_catalog_change(&self) -> u64 {
        *self.shared.changed.borrow()
    }

    /// [`Index::member_generation`] as last published.
    pub fn member_generation(&self) -> u64 {
        *self.shared.member_changes.borrow()
    }

    /// Handles queued feed rows until `stop` flips: the task that keeps the
    /// index current. Errors are logged and the rows retried on the next
    /// wake-up (a full reload after an error).
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.shared.wake.notified() => {}
            }
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || me.process_pending()).await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "catalog refresh failed; reloading");
                    let me = self.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.reload()).await {
                        tracing::error!(error = %e, "catalog reload failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "catalog refresh task failed"),
            }
        }
    }
}
