//! Registrations kept across restarts in a host-local (unreplicated) table,
//! `__corro_native`: each service as registered (its raw body, so it comes
//! back exactly as sent), each standalone check's body, each check's state
//! (status, output, TTL deadline) and each maintenance flag. Check states
//! are written in batches (a TTL check updated every few seconds costs one
//! row write per batch, not one per update).

use corro_store::{Store, StoreError};
use serde_json::Value;

const DDL: &str = "CREATE TABLE IF NOT EXISTS __corro_native (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID";

/// What a row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKind {
    /// `{"body": <registration>, "file": <path or null>}`
    Service,
    /// `{"body": <the check's object as sent>, "id", "name", "service_id",
    /// "file"}`: every check, its service's or registered on its own
    Check,
    /// `{"status", "output", "ttl_expires_at_ms"}`
    CheckState,
    /// `{"reason"}`; id `""` is the node
    Maintenance,
    /// `{"name"}` under id `node`: the node name the rows were written as
    Meta,
}

impl RowKind {
    fn as_str(self) -> &'static str {
        match self {
            RowKind::Service => "service",
            RowKind::Check => "check",
            RowKind::CheckState => "check_state",
            RowKind::Maintenance => "maintenance",
            RowKind::Meta => "meta",
        }
    }

    fn parse(s: &str) -> Option<RowKind> {
        Some(match s {
            "service" => RowKind::Service,
            "check" => RowKind::Check,
            "check_state" => RowKind::CheckState,
            "maintenance" => RowKind::Maintenance,
            "meta" => RowKind::Meta,
            _ => return None,
        })
    }
}

/// One write: a row's new body, or `None` to delete it.
pub type Write = ((RowKind, String), Option<Value>);

/// Every saved row (unparsable bodies are skipped with a warning). Reads
/// only (a read connection): an agent restarted on a full disk still gets
/// its registrations back; the table is created by the first save.
pub fn load(store: &Store) -> Result<Vec<(RowKind, String, Value)>, StoreError> {
    let conn = store.reader();
    let exists: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '__corro_native'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String, String)> = {
        let mut stmt = conn.prepare("SELECT kind, id, body FROM __corro_native")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut out = Vec::with_capacity(rows.len());
    for (kind, id, body) in rows {
        match (RowKind::parse(&kind), serde_json::from_str(&body)) {
            (Some(k), Ok(v)) => out.push((k, id, v)),
            _ => tracing::warn!(%kind, %id, "skipping an unreadable saved registration row"),
        }
    }
    Ok(out)
}

/// Applies `writes` in one transaction.
pub fn save(store: &Store, writes: &[Write]) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    store.local_write(|c| {
        c.execute_batch(DDL)?;
        let tx = c.unchecked_transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO __corro_native (kind, id, body) VALUES (?1, ?2, ?3)",
            )?;
            let mut del =
                tx.prepare_cached("DELETE FROM __corro_native WHERE kind = ?1 AND id = ?2")?;
            for ((kind, id), body) in writes {
                match body {
                    Some(b) => put.execute(rusqlite::params![kind.as_str(), id, b.to_string()])?,
                    None => del.execute(rusqlite::params![kind.as_str(), id])?,
                };
            }
        }
        tx.commit()
    })
}
