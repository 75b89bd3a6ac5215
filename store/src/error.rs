//! The store's error type.
//!
//! Errors from a local write leave the database as it was before the
//! transaction (it is rolled back); errors from applying remote changes roll
//! back the whole batch, so bookkeeping never claims data that is not there.

use std::path::PathBuf;

/// Everything the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or preparing the database file failed.
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite refused a statement or the database failed underneath.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A statement tried something the store does not allow (DDL, PRAGMA,
    /// ATTACH, writes to bookkeeping tables, ...).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The schema files were rejected; the old schema stays in force.
    #[error(transparent)]
    Schema(#[from] corro_schema::SchemaError),
    /// Stored bookkeeping could not be decoded.
    #[error("corrupt bookkeeping: {0}")]
    Corrupt(String),
    /// A change from a peer is malformed (it is rejected, nothing is applied).
    #[error("invalid change from {actor}: {reason}")]
    InvalidChange { actor: String, reason: String },
    /// Backup or restore could not proceed.
    #[error("{0}")]
    Backup(String),
    /// Code run inside a transaction panicked (the transaction was rolled
    /// back, or, when the panic came after the commit, see the message).
    #[error("{0}")]
    Panicked(String),
    /// An invariant check failed (see [`crate::Store::verify`]).
    #[error("integrity: {0}")]
    Integrity(String),
    /// The disk holding the database is full: writes are refused until
    /// space is freed (see [`crate::Store::recheck_space`]).
    #[error("the disk is full ({0}); writes are refused until space is freed")]
    DiskFull(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<postcard::Error> for StoreError {
    fn from(e: postcard::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
