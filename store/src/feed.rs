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

use std::collections::HashSet;
use std::sync::Arc;

use crate::store::Store;

/// Rows changed by one commit, each (table, encoded primary key) once.
#[derive(Debug, Clone, Default)]
pub struct RowsChanged {
    pub rows: Vec<(Arc<str>, Arc<[u8]>)>,
}

impl RowsChanged {
    pub(crate) fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a Arc<str>, &'a Arc<[u8]>)>,
    ) -> Self {
        let mut seen = HashSet::new();
        let mut rows = Vec::new();
        for (t, pk) in pairs {
            if seen.insert((t.clone(), pk.clone())) {
                rows.push((t.clone(), pk.clone()));
            }
        }
        RowsChanged { rows }
    }
}

/// A change listener.
pub type ChangeListener = Arc<dyn Fn(&RowsChanged) + Send + Sync>;

impl Store {
    /// Calls `f` after every commit that changed replicated rows.
    pub fn on_change(&self, f: ChangeListener) {
        self.inner.listeners.write().push(f);
    }

    pub(crate) fn notify(&self, rows: RowsChanged) {
        if rows.rows.is_empty() {
            return;
        }
        for l in self.inner.listeners.read().iter() {
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
