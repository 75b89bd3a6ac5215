//! Peers remembered across restarts (`__corro_members`, a host-local,
//! unreplicated table): a restarted node rejoins through them without its
//! bootstrap list. Rewritten whenever the active set changed.

use super::*;

/// Host-local table of peers met (not replicated, kept across restarts).
pub(super) const MEMBERS_DDL: &str = "CREATE TABLE IF NOT EXISTS __corro_members (
    addr TEXT NOT NULL PRIMARY KEY,
    actor_id BLOB NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID";

pub(super) fn load_members(store: &Store) -> anyhow::Result<Vec<SocketAddr>> {
    let rows: Vec<String> = store.local_write(|c| {
        c.execute_batch(MEMBERS_DDL)?;
        let mut stmt = c.prepare("SELECT addr FROM __corro_members")?;
        stmt.query_map([], |r| r.get(0))?.collect()
    })?;
    Ok(rows.into_iter().filter_map(|a| a.parse().ok()).collect())
}

/// Rewrites the members table when the peer set changed since `persisted`.
pub(super) async fn persist_members(inner: &Arc<Inner>, persisted: &mut u64) {
    let generation = inner.peers.generation();
    if generation == *persisted {
        return;
    }
    let members = inner.peers.active();
    let store = inner.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        store.local_write(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute("DELETE FROM __corro_members", [])?;
            for (addr, actor) in &members {
                tx.execute(
                    "INSERT INTO __corro_members (addr, actor_id, updated_at) VALUES (?1, ?2, ?3)",
                    rusqlite::params![addr.to_string(), &actor.as_bytes()[..], now],
                )?;
            }
            tx.commit()
        })
    })
    .await;
    match result {
        Ok(Ok(())) => *persisted = generation,
        Ok(Err(e)) => tracing::warn!(error = %e, "could not save the member list"),
        Err(e) => tracing::warn!(error = %e, "saving the member list failed"),
    }
}
