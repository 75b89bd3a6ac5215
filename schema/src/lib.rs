//! Schema handling for Corrosion.
//!
//! Operators describe the replicated schema in `.sql` files (`db.schema_paths`).
//! This crate turns those files into a [`Schema`] value and compares it with the
//! schema a live database already has:
//!
//! - [`load`] reads files and directories (every `*.sql`, sorted by name);
//! - [`parse`] runs the statements in a scratch in-memory SQLite database and reads
//!   the result back with `pragma_table_xinfo`, `pragma_index_list` and friends, so
//!   SQLite itself is the parser; an authorizer lets only `CREATE TABLE`,
//!   `CREATE INDEX` and `DROP INDEX` through;
//! - [`validate`] enforces the replication rules (non-null primary key, defaults on
//!   non-null columns, no unique indexes, no foreign keys, reserved names);
//! - [`diff`] computes the additive changes to apply and rejects destructive ones,
//!   naming the file, the table and the reason.
//!
//! Applying a diff is the store's job (it also creates the CRDT bookkeeping for new
//! tables); this crate knows nothing about replication or networking.

mod diff;
mod error;
mod load;
mod model;
mod parse;
mod validate;

pub use diff::{SchemaDiff, diff};
pub use error::SchemaError;
pub use load::{SchemaSource, load};
pub use model::{Column, Index, Schema, Table};
pub use parse::{is_internal_name, parse, read_live};
pub use validate::validate;

/// Loads, parses and validates the schema files under `paths` in one call.
pub fn from_paths<P: AsRef<std::path::Path>>(paths: &[P]) -> Result<Schema, SchemaError> {
    let sources = load(paths)?;
    let schema = parse(&sources)?;
    validate(&schema)?;
    Ok(schema)
}
