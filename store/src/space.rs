//! A full disk: writes refused with a clear error until space returns.
//!
//! When a write (local transaction, remote changes, host-local write) fails
//! because the filesystem holding the database is full, SQLite has rolled
//! that transaction back: the file and the bookkeeping are as they were.
//! The store then enters the *full* state: every later write is refused at
//! once with [`StoreError::DiskFull`] naming the path and the cause, without
//! touching the file, while reads go on. Remote changes refused meanwhile
//! stay missing in the bookkeeping, so anti-entropy fetches them again once
//! writes work.
//!
//! [`crate::Store::recheck_space`] leaves the state when the filesystem has
//! [`MIN_FREE`] bytes available again **and** a small probe commit succeeds
//! (the agent calls it every second while full). Nothing here uses a clock
//! or a thread of its own.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::StoreError;

/// Free bytes the filesystem must report before writes are tried again (a
/// few kilobytes free would only fail the next write).
pub const MIN_FREE: u64 = 4 << 20;

/// `ENOSPC`.
const ENOSPC: i32 = 28;

pub(crate) struct Space {
    db: PathBuf,
    full: Mutex<Option<String>>,
}

impl StoreError {
    /// Whether this error means the disk holding the database is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            | StoreError::Open {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            } => f.code == rusqlite::ErrorCode::DiskFull,
            StoreError::Io { source, .. } => {
                source.raw_os_error() == Some(ENOSPC)
                    || source.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }
}

impl Space {
    pub(crate) fn new(db: &Path) -> Space {
        Space {
            db: db.to_path_buf(),
            full: Mutex::new(None),
        }
    }

    /// Refuses a write while the disk is full.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match &*self.full.lock() {
            Some(reason) => Err(StoreError::DiskFull(reason.clone())),
            None => Ok(()),
        }
    }

    /// Enters the full state when `r` failed for lack of space.
    pub(crate) fn note<T>(&self, r: &Result<T, StoreError>) {
        if let Err(e) = r
            && !matches!(e, StoreError::DiskFull(_))
            && e.is_disk_full()
        {
            let mut full = self.full.lock();
            if full.is_none() {
                let reason = format!("{}: {e}", self.db.display());
                tracing::error!(
                    reason,
                    "the disk holding the database is full; refusing writes until space is freed"
                );
                *full = Some(reason);
            }
        }
    }

    /// Why writes are refused, when they are.
    pub(crate) fn reason(&self) -> Option<String> {
        self.full.lock().clone()
    }

    /// Bytes available to the agent on the database's filesystem.
    pub(crate) fn available(&self) -> Option<u64> {
        let dir = match self.db.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let st = rustix::fs::statvfs(dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Leaves the full state.
    pub(crate) fn clear(&self) {
        if self.full.lock().take().is_some() {
            tracing::info!(path = %self.db.display(), "disk space is back; writes are accepted again");
        }
    }
}
