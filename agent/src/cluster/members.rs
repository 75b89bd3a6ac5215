//! Peers remembered across restarts (`__corro_members`, a host-local,
//! unreplicated table): a restarted node rejoins through them without its
//! bootstrap list. Active members are added whenever the active set
//! changed; see [`save_members`] for what is forgotten.

use super::*;

/// Host-local table of peers met (not replicated, kept across restarts).
pub(super) const MEMBERS_DDL: &str = "CREATE TABLE IF NOT EXISTS __corro_members (
    addr TEXT NOT NULL PRIMARY KEY,
    actor_id BLOB NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS __corro_members_actor ON __corro_members (actor_id)";

/// The remembered peers, most recently seen first (ties, such as every
/// member stamped by one save, in random order: otherwise every node would
/// try the same few addresses first).
pub(super) fn load_members(store: &Store) -> anyhow::Result<Vec<SocketAddr>> {
    let rows: Vec<String> = store.local_write(|c| {
        c.execute_batch(MEMBERS_DDL)?;
        let mut stmt =
            c.prepare("SELECT addr FROM __corro_members ORDER BY updated_at DESC, random()")?;
        stmt.query_map([], |r| r.get(0))?.collect()
    })?;
    Ok(rows.into_iter().filter_map(|a| a.parse().ok()).collect())
}

/// How long a peer not seen active is remembered (Consul's default
/// `reconnect_timeout`): long enough for a host that was off over a long
/// weekend to find its way back.
pub(super) const REMEMBER_FOR_SECS: i64 = 72 * 3600;

/// At most this many remembered peers that are not active now (addresses
/// that changed, hosts gone), the most recently seen kept.
pub(super) const REMEMBER_INACTIVE: i64 = 1024;

/// How often the active members are stamped again while the peer set does
/// not change (the 72-hour rule counts from a member's last stamp).
pub(super) const RESTAMP_EVERY: Duration = Duration::from_secs(3600);

/// What was last saved: the peer set's generation, and when.
#[derive(Default)]
pub(super) struct Persisted {
    generation: Option<u64>,
    at: Option<std::time::Instant>,
}

/// Records the active members when the peer set changed since the last
/// save, or it is [`RESTAMP_EVERY`] old.
pub(super) async fn persist_members(inner: &Arc<Inner>, persisted: &mut Persisted) {
    let generation = inner.peers.generation();
    let fresh = persisted.at.is_some_and(|t| t.elapsed() < RESTAMP_EVERY);
    if persisted.generation == Some(generation) && fresh {
        return;
    }
    let members = inner.peers.active();
    let saved = Persisted {
        generation: Some(generation),
        at: Some(std::time::Instant::now()),
    };
    if members.is_empty() {
        // Nothing to stamp, and nothing is forgotten while alone.
        *persisted = saved;
        return;
    }
    let store = inner.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        save_members(&store, &members, now)
    })
    .await;
    match result {
        Ok(Ok(())) => *persisted = saved,
        Ok(Err(e)) => tracing::warn!(error = %e, "could not save the member list"),
        Err(e) => tracing::warn!(error = %e, "saving the member list failed"),
    }
}

/// Adds or refreshes `active` (stamped `now`; [`persist_members`] saves at
/// every change of the active set and at least hourly) in the members
/// table. Peers no longer active stay remembered: a member this node holds as down (a
/// partition, its own stall) is still the way back after a restart, and a
/// node that knows nobody at the moment forgets nothing. Forgotten: an
/// actor's older address when it shows up at a new one, and, while some
/// member is active, peers not seen for [`REMEMBER_FOR_SECS`] and the
/// oldest beyond [`REMEMBER_INACTIVE`].
pub(super) fn save_members(
    store: &Store,
    active: &[(SocketAddr, ActorId)],
    now: i64,
) -> Result<(), corro_store::StoreError> {
    store.local_write(|c| {
        let tx = c.unchecked_transaction()?;
        for (addr, actor) in active {
            let (addr, actor) = (addr.to_string(), &actor.as_bytes()[..]);
            tx.execute(
                "DELETE FROM __corro_members WHERE actor_id = ?1 AND addr <> ?2",
                rusqlite::params![actor, addr],
            )?;
            tx.execute(
                "INSERT INTO __corro_members (addr, actor_id, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (addr) DO UPDATE SET actor_id = excluded.actor_id,
                     updated_at = excluded.updated_at",
                rusqlite::params![addr, actor, now],
            )?;
        }
        if !active.is_empty() {
            tx.execute(
                "DELETE FROM __corro_members WHERE updated_at < ?1 AND (updated_at < ?2
                 OR addr IN (SELECT addr FROM __corro_members WHERE updated_at < ?1
                             ORDER BY updated_at DESC LIMIT -1 OFFSET ?3))",
                rusqlite::params![now, now - REMEMBER_FOR_SECS, REMEMBER_INACTIVE],
            )?;
        }
        tx.commit()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corro_store::StoreOptions;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn remembered(store: &Store) -> Vec<SocketAddr> {
        let mut v = load_members(store).unwrap();
        v.sort();
        v
    }

    #[test]
    fn members_are_remembered_until_long_gone_and_an_actor_at_one_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.db"), StoreOptions::default()).unwrap();
        load_members(&store).unwrap();
        let (a, b, c) = (ActorId::random(), ActorId::random(), ActorId::random());
        let t = 1_000_000;
        save_members(&store, &[(addr(1), a), (addr(2), b)], t).unwrap();
        // b goes down, then every member does: nobody is forgotten.
        save_members(&store, &[(addr(1), a)], t + 10).unwrap();
        save_members(&store, &[], t + 20).unwrap();
        assert_eq!(remembered(&store), vec![addr(1), addr(2)]);
        // a restarts on another port: its old address goes.
        save_members(&store, &[(addr(3), a)], t + 30).unwrap();
        assert_eq!(remembered(&store), vec![addr(2), addr(3)]);
        // Alone for longer than the limit: still nothing forgotten.
        save_members(&store, &[], t + 30 + REMEMBER_FOR_SECS + 1).unwrap();
        assert_eq!(remembered(&store), vec![addr(2), addr(3)]);
        // With a member active, peers unseen for longer than the limit go.
        save_members(&store, &[(addr(4), c)], t + 30 + REMEMBER_FOR_SECS + 1).unwrap();
        assert_eq!(remembered(&store), vec![addr(4)]);
    }

    #[test]
    fn inactive_peers_are_capped_newest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.db"), StoreOptions::default()).unwrap();
        load_members(&store).unwrap();
        let n = REMEMBER_INACTIVE as u16 + 10;
        for i in 0..n {
            save_members(
                &store,
                &[(addr(10 + i), ActorId::random())],
                1000 + i64::from(i),
            )
            .unwrap();
        }
        let me = (addr(1), ActorId::random());
        save_members(&store, &[me], 1000 + i64::from(n)).unwrap();
        let kept = remembered(&store);
        assert_eq!(kept.len(), REMEMBER_INACTIVE as usize + 1);
        assert!(kept.contains(&addr(1)));
        // The oldest ten went.
        assert!(!kept.contains(&addr(10 + 9)) && kept.contains(&addr(10 + 10)));
        // Loaded most recently seen first (announces try those first).
        let loaded = load_members(&store).unwrap();
        assert_eq!(loaded[..3], [addr(1), addr(10 + n - 1), addr(10 + n - 2)]);
    }
}
