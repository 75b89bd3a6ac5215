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
//! [`Catalog::subscribe`]rs are woken with it.

use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use corro_store::{RowChanged, Store};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use tokio::sync::{Notify, watch};

use crate::counter::IndexCounter;
use crate::index::{Index, MemberState};
use crate::sql;

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
    changed: watch::Sender<u64>,
    counter: Mutex<IndexCounter>,
}

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
            counter: Mutex::new(counter),
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
    /// that may have created the tables). Blocks.
    pub fn reload(&self) -> Result<(), CatalogError> {
        let _one_at_a_time = self.shared.processing.lock();
        let conn = self.shared.store.reader();
        let mut fresh = self.shared.index.read().clone();
        // Rebuild from scratch, keeping stamps and membership: remove what
        // is no longer there, then load what is.
        let before: Vec<_> = fresh
            .services()
            .map(|s| (s.node.clone(), s.id.clone()))
            .collect();
        for (n, i) in before {
            fresh.remove_service(&n, &i);
        }
        let before: Vec<_> = fresh
            .check_rows()
            .map(|c| (c.node.clone(), c.id.clone()))
            .collect();
        for (n, i) in before {
            fresh.remove_check(&n, &i);
        }
        let before: Vec<_> = fresh.nodes().map(|n| n.node.clone()).collect();
        for n in before {
            fresh.remove_node(&n);
        }
        for c in fresh.all_claims() {
            fresh.remove_claim(&c.node, &c.actor_id);
        }
        sql::load_all(&conn, &mut fresh)?;
        drop(conn);
        let mut index = self.shared.index.write();
        // Rows the feed reported meanwhile are re-read by the next
        // process_pending; membership set meanwhile wins over the copy's.
        fresh.set_members(index.members(), index.settled());
        *index = fresh;
        self.finish(&mut index)?;
        Ok(())
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
        let conn = self.shared.store.reader();
        let mut seen = std::collections::HashSet::new();
        let mut fresh = Vec::with_capacity(rows.len());
        for r in rows.iter().rev() {
            if !seen.insert((r.table.clone(), r.pk.clone())) {
                continue;
            }
            let Ok(pk) = corro_store::decode_key(&r.pk) else {
                tracing::warn!(table = %r.table, "undecodable primary key in the change feed");
                continue;
            };
            let table = r.table.to_ascii_lowercase();
            fresh.push(sql::read_row(&conn, &table, &pk)?);
        }
        drop(conn);
        let mut index = self.shared.index.write();
        for f in fresh {
            sql::apply(&mut index, f);
        }
        self.finish(&mut index)
    }

    /// Replaces the membership view (see [`Index::set_members`]).
    pub fn set_membership(
        &self,
        members: Vec<(String, MemberState, Option<f64>)>,
        settled: bool,
    ) -> Result<bool, CatalogError> {
        let mut index = self.shared.index.write();
        index.set_members(members, settled);
        self.finish(&mut index)
    }

    /// Stamps what changed, persists the counter, wakes subscribers.
    fn finish(&self, index: &mut Index) -> Result<bool, CatalogError> {
        let Some(value) = index.finish() else {
            return Ok(false);
        };
        self.shared.counter.lock().reach(value)?;
        metrics::gauge!("corro_catalog_index").set(value as f64);
        self.shared.changed.send_replace(value);
        Ok(true)
    }

    /// Read access to the index (hold it briefly: writers wait).
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.shared.index.read()
    }

    /// A receiver that changes whenever the index does (value: the new
    /// index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
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
