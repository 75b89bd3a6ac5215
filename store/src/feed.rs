//! Change feed: which rows each commit touched, for subscriptions and update
//! feeds.
//!
//! Listeners registered with [`Store::on_change`] are called after every
//! commit that changed replicated rows (local transactions, remote versions
//! applied, versions applied after a schema change), with the commit's rows
//! as (table, encoded primary key) pairs. They run on the committing thread
//! while the writer is still held, so they see commits in commit order and
//! must be quick (hand the rows to another task). Remote rows are reported
//! whether or not their changes won the merge: a listener re-reads the rows
//! it cares about, so over-reporting costs a lookup, never a wrong answer.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use crate::store::Store;

/// One row a commit touched.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChanged {
    pub table: Arc<str>,
    /// Encoded primary key (see [`crate::decode_key`]).
    pub pk: Arc<[u8]>,
    /// The row is deleted after the commit (for remote changes: the highest
    /// causal length received for it is even).
    pub deleted: bool,
}

/// Rows changed by one commit, each once.
#[derive(Debug, Clone, Default)]
pub struct RowsChanged {
    pub rows: Vec<RowChanged>,
}

impl RowsChanged {
    /// From (table, key, causal length) triples; a row's highest causal
    /// length decides whether it is deleted. `unique`: the caller knows each
    /// row appears once (local commits), so no de-duplication is needed.
    pub(crate) fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a Arc<str>, &'a Arc<[u8]>, u64)>,
        unique: bool,
    ) -> Self {
        let row = |t: &Arc<str>, pk: &Arc<[u8]>, cl: u64| RowChanged {
            table: t.clone(),
            pk: pk.clone(),
            deleted: cl.is_multiple_of(2),
        };
        if unique {
            return RowsChanged {
                rows: rows.into_iter().map(|(t, pk, cl)| row(t, pk, cl)).collect(),
            };
        }
        let mut slot: HashMap<(&'a str, &'a [u8]), usize> = HashMap::default();
        let mut out: Vec<(RowChanged, u64)> = Vec::new();
        for (t, pk, cl) in rows {
            match slot.get(&(&**t, &**pk)) {
                Some(&i) => {
                    if cl > out[i].1 {
                        out[i].1 = cl;
                        out[i].0.deleted = cl.is_multiple_of(2);
                    }
                }
                None => {
                    slot.insert((&**t, &**pk), out.len());
                    out.push((row(t, pk, cl), cl));
                }
            }
        }
        RowsChanged {
            rows: out.into_iter().map(|(r, _)| r).collect(),
        }
    }
}

/// A change listener.
pub type ChangeListener = Arc<dyn Fn(&RowsChanged) + Send + Sync>;

/// A local-commit listener: gets every version this node commits, as
/// changesets ready to send (see [`Store::on_local_commit`]).
pub type CommitListener = Arc<dyn Fn(Vec<crate::Changeset>) + Send + Sync>;

impl Store {
    /// Calls `f` after every commit that changed replicated rows.
    pub fn on_change(&self, f: ChangeListener) {
        self.inner.listeners.write().push(f);
    }

    /// Calls `f` with every version committed by a local transaction
    /// ([`Store::transact`]), whoever ran it: the HTTP API, the Consul
    /// bridge, the agent's own bookkeeping writes. This is where the cluster
    /// layer hooks its broadcast, so no writer can forget to replicate.
    /// Called on the committing thread after the commit, in version order;
    /// it must not block (queue the changesets for another task).
    pub fn on_local_commit(&self, f: CommitListener) {
        self.inner.commit_listeners.write().push(f);
    }

    /// Hands a committed local version to the commit listeners (changesets
    /// are built only when someone listens).
    pub(crate) fn notify_commit(&self, sets: impl FnOnce() -> Vec<crate::Changeset>) {
        let listeners = self.inner.commit_listeners.read();
        match listeners.as_slice() {
            [] => {}
            [only] => only(sets()),
            many => {
                let sets = sets();
                for l in many {
                    l(sets.clone());
                }
            }
        }
    }

    /// Calls the listeners with the rows `rows` builds; builds nothing
    /// when there is no listener (bulk loads pay nothing for the feed).
    pub(crate) fn notify(&self, rows: impl FnOnce() -> RowsChanged) {
        let listeners = self.inner.listeners.read();
        if listeners.is_empty() {
            return;
        }
        let rows = rows();
        if rows.rows.is_empty() {
            return;
        }
        for l in listeners.iter() {
            l(&rows);
        }
    }

    /// Primary-key columns of a replicated table (matched without regard to
    /// case), in key order.
    pub fn table_pk(&self, table: &str) -> Option<Vec<String>> {
        self.inner
            .catalog
            .read()
            .tables
            .values()
            .find(|t| t.name.eq_ignore_ascii_case(table))
            .map(|t| t.pk.clone())
    }
}
