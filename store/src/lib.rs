//! Corrosion's replicated SQLite store.
//!
//! The database is a plain SQLite file: user tables hold exactly the data a
//! reader expects, and `sqlite3 state.db 'SELECT * FROM todos'` works with
//! nothing loaded. Replication state lives beside it in `__corro_*` tables and
//! one `<table>__corro_clock` shadow table per replicated table. The CRDT
//! semantics follow cr-sqlite (per-column last-write-wins, causal-length row
//! deletes), implemented here in Rust:
//!
//! - [`Store::transact`] runs a local write transaction; triggers capture what
//!   changed, and at commit the store assigns the next version of this node's
//!   actor and returns the [`Change`]s to broadcast;
//! - [`Store::apply`] merges [`Changeset`]s from other nodes, buffering
//!   versions that arrive in pieces until they are complete;
//! - [`Store::changes_for`] serves stored versions to peers (anti-entropy),
//!   reporting versions whose changes were all overwritten as cleared;
//! - [`Store::books`] exposes per-actor bookkeeping ([`ActorBooks`]);
//! - [`Store::kept_answer`] serves client query answers read since the last
//!   write ([`Store::data_generation`], `answers.rs`).
//!
//! There is one writer (two connections behind one lock: one that captures
//! local writes, one with triggers disabled for remote changes) and a pool of
//! read-only connections. All calls block; async callers run them on blocking
//! threads. The pure pieces (merge rule, bookkeeping algebra, chunking) live in
//! their own modules and are tested without SQLite.

mod actor;
mod answers;
mod apply;
mod backup;
mod bookkeeping;
mod capture;
mod catalog;
mod change;
mod clock;
mod error;
mod feed;
mod group;
mod pool;
mod serve;
mod space;
mod store;
mod txn;
mod value;
mod verify;
mod versions;
mod write;
mod writer;

pub use actor::ActorId;
pub use answers::AnswerStats;
pub use apply::ApplyOutcome;
pub use backup::{RestoreOptions, backup, restore};
pub use bookkeeping::{ActorBooks, Partial, PieceOutcome};
pub use change::{CHUNK_BYTES, Change, Changeset, chunk_version};
pub use corro_schema::{Schema, SchemaDiff};
pub use error::StoreError;
pub use feed::{ChangeListener, CommitListener, RowChanged, RowsChanged};
pub use group::{GroupLead, GroupStats, MAX_GROUP};
pub use pool::{CACHED_SQL_MAX, ReadConn, ReadPoolStats, UserStatement, VOLATILE_FUNCTIONS};
pub use space::MIN_FREE;
pub use store::{Store, StoreOptions};
pub use txn::CachedTx;
pub use value::{SqlValue, bind_named, bind_positional, decode_key, encode_key};
pub use write::{Committed, WriteStmt, WriteTx};
pub use writer::{MAX_REMOTE_WAIT, WriterStats};
