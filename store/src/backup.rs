//! Backup and restore.
//!
//! A backup is a consistent copy (`VACUUM INTO` from a read connection, so the
//! writer keeps going) with this node's identity removed, so a node seeded from
//! it gets its own actor id while keeping every other actor's history. Restore
//! writes a backup into a database through SQLite's online backup API, which
//! takes the database lock and swaps the content atomically for other
//! connections. The caller (the agent's CLI) makes sure no agent is running.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::StoreError;
use crate::store::Store;

/// Options for [`restore`].
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Keep the actor id of the database being replaced (only for restoring a
    /// node's own backup after losing its disk; never for seeding another node).
    pub keep_actor: bool,
}

impl Store {
    /// Writes a consistent copy of the database to `dest` without this node's
    /// actor id. `dest` must not exist.
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<(), StoreError> {
        copy_without_identity(&self.reader(), dest.as_ref())
    }
}

/// [`Store::backup`] of the database at `db` through one read-only
/// connection: what `corrosion backup` runs, possibly beside a running agent.
/// Nothing is written to `db` (opening a [`Store`] would set up its writer
/// and could rewrite its identity).
pub fn backup(db: &Path, dest: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    copy_without_identity(&conn, dest)
}

fn copy_without_identity(conn: &Connection, dest: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if dest.exists() {
        return Err(StoreError::Backup(format!(
            "{} already exists",
            dest.display()
        )));
    }
    // Written beside `dest` and published once the identity is gone, so a
    // backup that fails never leaves a copy that still names this node. The
    // partial file is created empty first, by this call alone and readable
    // by its owner only (SQLite writes into an existing empty file and keeps
    // its mode; it would create a new one world-readable).
    let name = dest
        .file_name()
        .ok_or_else(|| StoreError::Backup(format!("{} names no file", dest.display())))?;
    let partial = dest.with_file_name(format!(
        ".{}.partial-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let partial_str = partial
        .to_str()
        .ok_or_else(|| StoreError::Backup(format!("{} is not valid UTF-8", dest.display())))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| StoreError::Backup(format!("creating {}: {e}", partial.display())))?;
    let written = (|| -> Result<(), StoreError> {
        conn.execute("VACUUM INTO ?1", [partial_str])?;
        let copy = Connection::open(&partial)?;
        let tx = copy.unchecked_transaction()?;
        crate::store::retire_identity(&tx)?;
        tx.commit()?;
        drop(copy);
        // A hard link fails if `dest` appeared meanwhile: never replaces
        // it. Filesystems without hard links get a rename after one more
        // look.
        let published = match std::fs::hard_link(&partial, dest) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !dest.exists() => {
                std::fs::rename(&partial, dest)
            }
            other => other,
        };
        published.map_err(|e| {
            StoreError::Backup(format!(
                "publishing {} as {}: {e}",
                partial.display(),
                dest.display()
            ))
        })
    })();
    let _ = std::fs::remove_file(&partial);
    written?;
    tracing::info!(dest = %dest.display(), "backup written");
    Ok(())
}

/// Replaces the database at `db_path` with the backup at `backup`.
pub fn restore(
    db_path: impl AsRef<Path>,
    backup: impl AsRef<Path>,
    opts: RestoreOptions,
) -> Result<(), StoreError> {
    let (db_path, backup) = (db_path.as_ref(), backup.as_ref());
    let bad = |m: String| StoreError::Backup(format!("{}: {m}", backup.display()));
    {
        let src = Connection::open_with_flags(backup, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| bad(e.to_string()))?;
        let format: Option<i64> = src
            .query_row(
                "SELECT value FROM __corro_meta WHERE key = 'format'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|_| bad("not a corrosion database".into()))?;
        if format.is_none() {
            return Err(bad("not a corrosion database".into()));
        }
        let check: String = src
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| bad(e.to_string()))?;
        if check != "ok" {
            return Err(bad(format!("integrity check failed: {check}")));
        }
    }
    let keep: Option<Vec<u8>> = if opts.keep_actor && db_path.exists() {
        let cur = Connection::open_with_flags(db_path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        cur.query_row(
            "SELECT value FROM __corro_meta WHERE key = 'actor_id'",
            [],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    let mut dst = Connection::open(db_path).map_err(|source| StoreError::Open {
        path: PathBuf::from(db_path),
        source,
    })?;
    dst.busy_timeout(std::time::Duration::from_secs(10))?;
    dst.restore(
        rusqlite::MAIN_DB,
        backup,
        None::<fn(rusqlite::backup::Progress)>,
    )?;
    dst.pragma_update(None, "journal_mode", "WAL")?;
    let tx = dst.transaction()?;
    crate::store::retire_identity(&tx)?;
    if let Some(a) = keep {
        tx.execute(
            "INSERT INTO __corro_meta (key, value) VALUES ('actor_id', ?1)",
            [a],
        )?;
    }
    tx.commit()?;
    tracing::info!(db = %db_path.display(), backup = %backup.display(), keep_actor = opts.keep_actor, "restored");
    Ok(())
}
