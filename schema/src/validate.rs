//! The rules a table must follow to be replicated.
//!
//! They come from the CRDT layer: every row needs a stable, non-null identity
//! (the primary key) compared byte-wise, and every column must be fillable by a
//! default when a row arrives column by column from other nodes. Unique indexes
//! and foreign keys cannot hold across concurrent writers, so they are refused
//! up front instead of failing later at merge time.

use crate::SchemaError;
use crate::model::Schema;
use crate::parse::is_internal_name;

/// Checks every table and index of `schema` against the replication rules.
pub fn validate(schema: &Schema) -> Result<(), SchemaError> {
    for t in schema.tables.values() {
        let fail = |reason: String| Err(SchemaError::table(&t.file, &t.name, reason));
        if is_internal_name(&t.name) {
            return fail("table names starting with '__corro' or 'sqlite_', or containing '__corro_', are reserved".into());
        }
        let pk = t.pk_columns();
        if pk.is_empty() {
            return fail("a replicated table needs an explicit PRIMARY KEY".into());
        }
        for c in &pk {
            if !c.notnull {
                return fail(format!(
                    "primary key column '{}' must be declared NOT NULL",
                    c.name
                ));
            }
            if c.generated {
                return fail(format!(
                    "primary key column '{}' cannot be a generated column",
                    c.name
                ));
            }
        }
        for coll in &t.pk_collations {
            if !coll.eq_ignore_ascii_case("BINARY") {
                return fail(format!(
                    "primary key columns must use the BINARY collation, found {coll}"
                ));
            }
        }
        for c in &t.columns {
            if c.pk == 0 && c.notnull && c.default.is_none() && !c.generated {
                return fail(format!(
                    "column '{}' is NOT NULL without a DEFAULT; non-null columns need a default so rows can arrive column by column",
                    c.name
                ));
            }
        }
        if t.foreign_keys > 0 {
            return fail("foreign keys are not supported on replicated tables".into());
        }
        if t.unique_constraints > 0 {
            return fail("UNIQUE constraints are not supported on replicated tables (concurrent writers cannot uphold them)".into());
        }
    }
    for i in schema.indexes.values() {
        if i.unique {
            return Err(SchemaError::table(
                &i.file,
                &i.table,
                format!(
                    "index '{}': UNIQUE indexes are not supported on replicated tables",
                    i.name
                ),
            ));
        }
    }
    Ok(())
}
