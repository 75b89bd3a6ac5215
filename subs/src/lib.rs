//! SQL subscriptions: a query's result kept up to date as rows change, with
//! a durable, resumable log of changes.
//!
//! - [`query`]: which SQL is accepted and how it is rewritten so each result
//!   row carries the primary keys of the rows it was built from;
//! - [`diff`]: the pure comparison of old and new result rows that yields
//!   insert/update/delete events;
//! - [`matview`]: one SQLite file per subscription holding the materialized
//!   result and the change log;
//! - [`manager`]: the registry the agent uses: creates or finds
//!   subscriptions, feeds them the store's change feed, serves listeners
//!   (initial rows, replay from a change id, live changes) and expires idle
//!   ones.

pub mod diff;
pub mod manager;
pub mod matview;
pub mod query;
pub mod values;

pub use manager::{Event, Listener, SubConfig, Subscriptions};
pub use query::SubQuery;

/// Why a subscription request failed.
#[derive(Debug, thiserror::Error)]
pub enum SubError {
    #[error("invalid subscription query: {0}")]
    Parse(String),
    #[error("unsupported subscription query: {0}")]
    Unsupported(String),
    #[error("unknown table {0:?}: subscriptions read replicated tables")]
    UnknownTable(String),
    #[error("no subscription with id {0}")]
    NotFound(String),
    #[error(
        "change {from} is no longer retained (the log starts after change {oldest}); resubscribe without `from`"
    )]
    FromTooOld { from: u64, oldest: u64 },
    #[error("change {from} is ahead of this subscription's last change {last}")]
    FromAhead { from: u64, last: u64 },
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Store(#[from] corro_store::StoreError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt subscription data: {0}")]
    Corrupt(String),
}
