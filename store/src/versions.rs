//! The version index: for every (actor, version) that still has changes in
//! the database, which rows reference it and how many.
//!
//! `__corro_versions` has one small row per version (last seq, commit time,
//! `live` = number of rows whose clock still references the version, and the
//! row list inline when short); long row lists go to `__corro_version_rows` in
//! parts. A version's row list is written once, when the version is applied
//! or committed. Later, when a row's clock stops referencing a version (its
//! cells were overwritten), only the small row's `live` count is decremented;
//! at zero the version is *cleared*: held, but nothing left to send. This
//! costs one index write per version instead of one per row, and serving a
//! version costs what the version holds, not what the database holds.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};

use crate::error::StoreError;

/// Row lists longer than this are stored in parts of this many rows.
const INLINE_ROWS: usize = 512;

/// A row reference: (table id, encoded key).
pub(crate) type RowRef = (u32, Arc<[u8]>);

/// Reference changes accumulated over one write or apply transaction.
#[derive(Default)]
pub(crate) struct RefChanges {
    added: BTreeMap<(u32, u64), Vec<RowRef>>,
    removed: HashMap<(u32, u64), i64>,
}

impl RefChanges {
    /// Records that row (tbl, key) referenced `before` and now references `after`.
    pub(crate) fn row(
        &mut self,
        tbl: u32,
        key: &Arc<[u8]>,
        before: &[(u32, u64)],
        after: &[(u32, u64)],
    ) {
        for o in before.iter().filter(|o| !after.contains(o)) {
            *self.removed.entry(*o).or_default() += 1;
        }
        for o in after.iter().filter(|o| !before.contains(o)) {
            self.added.entry(*o).or_default().push((tbl, key.clone()));
        }
    }

    /// Writes the accumulated changes. `meta(actor, version)` gives the
    /// (last_seq, ts) of versions gaining references.
    pub(crate) fn persist(
        self,
        conn: &Connection,
        meta: &dyn Fn(u32, u64) -> (u64, u64),
    ) -> Result<(), StoreError> {
        for ((actor, version), rows) in self.added {
            let (last_seq, ts) = meta(actor, version);
            let inline = (rows.len() <= INLINE_ROWS)
                .then(|| postcard::to_stdvec(&rows))
                .transpose()?;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO __corro_versions (actor, version, last_seq, ts, live, rows)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (actor, version) DO NOTHING",
                )?
                .execute(rusqlite::params![
                    actor,
                    version,
                    last_seq,
                    ts,
                    rows.len() as i64,
                    inline
                ])?;
            if inserted == 1 {
                if inline.is_none() {
                    write_parts(conn, actor, version, &rows)?;
                }
                continue;
            }
            // Only reachable if a version gains references twice; keep the
            // union so serving still finds every row.
            let live: i64 = conn
                .prepare_cached(
                    "SELECT live FROM __corro_versions WHERE actor = ?1 AND version = ?2",
                )?
                .query_row(rusqlite::params![actor, version], |r| r.get(0))?;
            let mut all = version_rows(conn, actor, version)?;
            all.extend(rows.iter().cloned());
            conn.prepare_cached(
                "DELETE FROM __corro_version_rows WHERE actor = ?1 AND version = ?2",
            )?
            .execute(rusqlite::params![actor, version])?;
            let inline = (all.len() <= INLINE_ROWS)
                .then(|| postcard::to_stdvec(&all))
                .transpose()?;
            conn.prepare_cached("UPDATE __corro_versions SET live = ?3, rows = ?4 WHERE actor = ?1 AND version = ?2")?
                .execute(rusqlite::params![actor, version, live + rows.len() as i64, inline])?;
            if inline.is_none() {
                write_parts(conn, actor, version, &all)?;
            }
        }
        for ((actor, version), n) in self.removed {
            // One statement in the common case. At zero the version is
            // cleared: its small row stays (it records the version existed)
            // and its row list goes. An inline list is dropped here; a list
            // kept in parts (`rows` NULL) leaves an empty blob behind as a
            // mark, and its parts are deleted below.
            let left: Option<(i64, bool)> = conn
                .prepare_cached(
                    "UPDATE __corro_versions SET live = max(live - ?3, 0),
                       rows = CASE WHEN live - ?3 > 0 THEN rows WHEN rows IS NULL THEN X'' ELSE NULL END
                     WHERE actor = ?1 AND version = ?2 RETURNING live, rows IS NOT NULL",
                )?
                .query_row(rusqlite::params![actor, version, n], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((l, true)) = left
                && l <= 0
            {
                conn.prepare_cached(
                    "DELETE FROM __corro_version_rows WHERE actor = ?1 AND version = ?2",
                )?
                .execute(rusqlite::params![actor, version])?;
                conn.prepare_cached(
                    "UPDATE __corro_versions SET rows = NULL WHERE actor = ?1 AND version = ?2",
                )?
                .execute(rusqlite::params![actor, version])?;
            }
        }
        Ok(())
    }
}

fn write_parts(
    conn: &Connection,
    actor: u32,
    version: u64,
    rows: &[RowRef],
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO __corro_version_rows (actor, version, part, rows) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (part, chunk) in rows.chunks(INLINE_ROWS * 4).enumerate() {
        stmt.execute(rusqlite::params![
            actor,
            version,
            part as u64,
            postcard::to_stdvec(chunk)?
        ])?;
    }
    Ok(())
}

/// What the index says about one version.
pub(crate) struct VersionEntry {
    pub last_seq: u64,
    pub ts: u64,
    pub live: i64,
}

pub(crate) fn version_entry(
    conn: &Connection,
    actor: u32,
    version: u64,
) -> Result<Option<VersionEntry>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT last_seq, ts, live FROM __corro_versions WHERE actor = ?1 AND version = ?2",
        )?
        .query_row(rusqlite::params![actor, version], |r| {
            Ok(VersionEntry {
                last_seq: r.get(0)?,
                ts: r.get(1)?,
                live: r.get(2)?,
            })
        })
        .optional()?)
}

/// Rows that referenced the version when it was applied (some may no longer).
pub(crate) fn version_rows(
    conn: &Connection,
    actor: u32,
    version: u64,
) -> Result<Vec<RowRef>, StoreError> {
    let inline: Option<Option<Vec<u8>>> = conn
        .prepare_cached("SELECT rows FROM __corro_versions WHERE actor = ?1 AND version = ?2")?
        .query_row(rusqlite::params![actor, version], |r| r.get(0))
        .optional()?;
    if let Some(Some(blob)) = inline {
        return Ok(postcard::from_bytes(&blob)?);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT rows FROM __corro_version_rows WHERE actor = ?1 AND version = ?2 ORDER BY part",
    )?;
    let parts: Vec<Vec<u8>> = stmt
        .query_map(rusqlite::params![actor, version], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for p in parts {
        let mut rows: Vec<RowRef> = postcard::from_bytes(&p)?;
        out.append(&mut rows);
    }
    Ok(out)
}

/// Highest version of `actor` in the index (this node's own head survives in
/// it even when every change of the version was overwritten).
pub(crate) fn max_version(conn: &Connection, actor: u32) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT max(version) FROM __corro_versions WHERE actor = ?1")?
        .query_row([actor], |r| r.get::<_, Option<u64>>(0))?
        .unwrap_or(0))
}
