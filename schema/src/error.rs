//! Errors raised while loading, parsing, validating or diffing schema files.
//!
//! Every variant names the file it came from (and the table when one is
//! involved) so an operator can fix the right line; the live schema is never
//! touched when any of these is returned.

use std::path::PathBuf;

/// A schema problem; the message names the file, the table and the reason.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A schema path could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused a statement (syntax error, duplicate table, ...).
    #[error("{file}: {message}")]
    Sql { file: PathBuf, message: String },
    /// A statement kind other than CREATE TABLE / CREATE INDEX / DROP INDEX.
    #[error(
        "{file}: only CREATE TABLE, CREATE INDEX and DROP INDEX IF EXISTS are allowed in schema files, found {found}"
    )]
    StatementNotAllowed { file: PathBuf, found: String },
    /// A table breaks a replication rule or an unsupported change was requested.
    #[error("{file}: table '{table}': {reason}")]
    Table {
        file: PathBuf,
        table: String,
        reason: String,
    },
    /// Reading the live schema failed.
    #[error("reading the live schema: {0}")]
    Live(#[source] rusqlite::Error),
}

impl SchemaError {
    pub(crate) fn table(file: &std::path::Path, table: &str, reason: impl Into<String>) -> Self {
        SchemaError::Table {
            file: file.to_path_buf(),
            table: table.to_string(),
            reason: reason.into(),
        }
    }
}
