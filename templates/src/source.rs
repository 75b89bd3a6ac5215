//! Where a template's data comes from, and how it learns of changes.
//!
//! A [`Source`] answers `sql()` and the discovery helpers. The agent's own
//! templates read its store and catalog directly; `corrosion template`, a
//! separate process, asks the agent over its HTTP API. Both feed a
//! [`Hub`]: the set of replicated tables changed and whether the discovery
//! model changed, handed to every template's [`Slot`].
//!
//! Dependencies are tracked per table, not per query: a render records
//! which tables its `sql()` calls read ([`tables_read`], from the parsed
//! SQL), so a template that calls `sql()` inside a loop over 1,000 rows
//! watches the one or two tables those calls read, not 1,000 queries. A
//! query whose tables cannot be told (SQL the parser does not know) depends
//! on every table.

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Weak};

use corro_client::Value;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::discovery::DiscoveryCall;
use crate::values::Rows;

/// Parameters of one `sql()` call.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    None,
    Positional(Vec<Value>),
    Named(Vec<(String, Value)>),
}

/// Why a source could not answer (the message goes to the render error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// What one `sql()` call may use: rows read and time (the render's own
/// deadline). A source stops at the first row past `max_rows` and stops
/// the statement itself (inside SQLite, or by dropping the stream) at the
/// deadline, so a runaway query costs neither unbounded memory nor CPU.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_rows: usize,
    pub deadline: std::time::Instant,
}

impl QueryLimits {
    /// The error for a statement that passed the row limit.
    pub fn too_many_rows(&self) -> SourceError {
        SourceError(format!(
            "more than {} rows, over the limit per query",
            self.max_rows
        ))
    }

    /// The error for a statement still running at the deadline.
    pub fn too_slow(&self) -> SourceError {
        SourceError("the query was still running at the render's time limit".into())
    }
}

/// Answers a template's data calls. Called on a blocking thread.
pub trait Source: Send + Sync + 'static {
    /// Runs one read-only statement within `limits`.
    fn query(&self, sql: &str, params: &Params, limits: QueryLimits) -> Result<Rows, SourceError>;
    /// Answers one discovery helper call.
    fn discovery(&self, call: &DiscoveryCall) -> Result<serde_json::Value, SourceError>;
    /// Called after each render with the tables it read, so a source that
    /// must ask for change notifications (the HTTP one) can start them.
    fn watch(&self, _deps: &Deps) {}
}

/// What one render read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deps {
    /// Replicated tables its queries read (lower case).
    pub tables: BTreeSet<String>,
    /// A query read tables that could not be told apart: any change counts.
    pub any_table: bool,
    /// A discovery helper was called.
    pub discovery: bool,
    /// KV keys read (`key()`, `key_or_default()`, `key_exists()`).
    pub kv_keys: BTreeSet<String>,
    /// KV prefixes read (`ls()`, `tree()`): any key under one counts.
    pub kv_prefixes: BTreeSet<String>,
}

impl Deps {
    /// Records the tables `sql` reads.
    pub fn add_query(&mut self, sql: &str) {
        match tables_read(sql) {
            Some(t) => self.tables.extend(t),
            None => self.any_table = true,
        }
    }
}

/// The tables (and views, and CTE names: harmless extras) a statement
/// reads, lower-cased; `None` when the SQL cannot be parsed here.
pub fn tables_read(sql: &str) -> Option<BTreeSet<String>> {
    let dialect = sqlparser::dialect::SQLiteDialect {};
    let statements = sqlparser::parser::Parser::parse_sql(&dialect, sql).ok()?;
    let mut out = BTreeSet::new();
    for s in &statements {
        let _ = sqlparser::ast::visit_relations(s, |name| {
            if let Some(last) = name.0.last() {
                out.insert(last.to_string().trim_matches('"').to_ascii_lowercase());
            }
            ControlFlow::<()>::Continue(())
        });
    }
    Some(out)
}

/// Changes seen by one template since it last took them.
#[derive(Debug, Default)]
pub struct Slot {
    pending: Mutex<Pending>,
    notify: Notify,
}

/// What a [`Slot`] has collected.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    pub tables: HashSet<String>,
    pub discovery: bool,
    /// KV keys changed (a watched prefix may stand for its keys).
    pub kv: HashSet<String>,
    /// Any KV key may have changed (a reload, a reconnection, or more
    /// changed keys than [`KV_PENDING_MAX`]).
    pub kv_all: bool,
}

/// Changed KV keys a slot keeps one by one; past this, "any key".
pub const KV_PENDING_MAX: usize = 4096;

impl Pending {
    /// Whether these changes touch what `deps` read.
    pub fn touches(&self, deps: &Deps) -> bool {
        let reads_kv = !deps.kv_keys.is_empty() || !deps.kv_prefixes.is_empty();
        (deps.discovery && self.discovery)
            || (!self.tables.is_empty()
                && (deps.any_table || self.tables.iter().any(|t| deps.tables.contains(t))))
            || (reads_kv && self.kv_all)
            || (reads_kv
                && self.kv.iter().any(|k| {
                    deps.kv_keys.contains(k)
                        || deps.kv_prefixes.iter().any(|p| k.starts_with(p.as_str()))
                }))
    }
}

impl Slot {
    /// Takes what has collected since the last call.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock())
    }

    /// Waits until something is collected.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

/// Hands changes to every live template slot.
#[derive(Debug, Default, Clone)]
pub struct Hub {
    slots: Arc<Mutex<Vec<Weak<Slot>>>>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// A slot that collects changes from now on.
    pub fn slot(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let mut slots = self.slots.lock();
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    }

    /// Tables changed (names in any case). Quick: called from the store's
    /// commit path.
    pub fn tables_changed<'a>(&self, tables: impl IntoIterator<Item = &'a str> + Clone) {
        for slot in self.slots.lock().iter().filter_map(Weak::upgrade) {
            {
                let mut p = slot.pending.lock();
                for t in tables.clone() {
                    if !p.tables.contains(t) {
                        p.tables.insert(t.to_ascii_lowercase());
                    }
                }
            }
            slot.notify.notify_one();
        }
    }

    /// KV keys changed (`None`: any may have).
    pub fn kv_changed(&self, keys: Option<&[String]>) {
        for slot in self.slots.lock().iter().filter_map(Weak::upgrade) {
            {
                let mut p = slot.pending.lock();
                match keys {
                    Some(keys) if !p.kv_all && p.kv.len() + keys.len() <= KV_PENDING_MAX => {
                        p.kv.extend(keys.iter().cloned());
                    }
                    _ => {
                        p.kv_all = true;
                        p.kv.clear();
                    }
                }
            }
            slot.notify.notify_one();
        }
    }

    /// The discovery model changed.
    pub fn discovery_changed(&self) {
        for slot in self.slots.lock().iter().filter_map(Weak::upgrade) {
            slot.pending.lock().discovery = true;
            slot.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_of_joins_subqueries_and_ctes() {
        let t = tables_read(
            "WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN \"B\" ON 1 WHERE id IN (SELECT id FROM c)",
        )
        .unwrap();
        assert!(
            t.contains("a") && t.contains("b") && t.contains("c"),
            "{t:?}"
        );
    }

    #[test]
    fn a_change_touches_only_templates_that_read_it() {
        let hub = Hub::new();
        let slot = hub.slot();
        let mut deps = Deps::default();
        deps.add_query("SELECT * FROM todos");
        hub.tables_changed(["other"]);
        assert!(!slot.take().touches(&deps));
        hub.tables_changed(["TODOS"]);
        assert!(slot.take().touches(&deps));
        hub.discovery_changed();
        assert!(!slot.take().touches(&deps));
        deps.discovery = true;
        hub.discovery_changed();
        assert!(slot.take().touches(&deps));
    }

    #[test]
    fn a_kv_change_touches_templates_reading_that_key_or_prefix_only() {
        let hub = Hub::new();
        let slot = hub.slot();
        let mut deps = Deps::default();
        deps.kv_keys.insert("cfg/max".into());
        deps.kv_prefixes.insert("app/".into());
        hub.kv_changed(Some(&["cfg/min".to_string(), "ap".to_string()]));
        assert!(!slot.take().touches(&deps));
        hub.kv_changed(Some(&["cfg/max".to_string()]));
        assert!(slot.take().touches(&deps));
        hub.kv_changed(Some(&["app/x/y".to_string()]));
        assert!(slot.take().touches(&deps));
        hub.kv_changed(None);
        assert!(slot.take().touches(&deps));
        // A template reading no key is not touched by any.
        hub.kv_changed(None);
        assert!(!slot.take().touches(&Deps::default()));
        // Too many keys at once become "any key".
        let many: Vec<String> = (0..KV_PENDING_MAX + 1).map(|i| format!("k{i}")).collect();
        hub.kv_changed(Some(&many));
        let p = slot.take();
        assert!(p.kv_all && p.kv.is_empty());
    }
}
