//! Comparing the wanted schema (from files) with the live one.
//!
//! Only additive changes are allowed: new tables, new columns that are
//! nullable or defaulted, and index additions, replacements and removals.
//! Everything else (dropping or retyping a column, changing the primary key,
//! switching `WITHOUT ROWID`) is an error naming the file, table and reason;
//! the caller then keeps the old schema in force. A live table missing from the
//! files is kept and reported in [`SchemaDiff::kept_tables`].

use crate::SchemaError;
use crate::model::{Column, Index, Schema, Table};

/// The additive changes that bring a live schema to the wanted one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SchemaDiff {
    /// Tables to create, with their original `CREATE TABLE` text.
    pub new_tables: Vec<Table>,
    /// Columns to add to existing tables: (table, column).
    pub new_columns: Vec<(String, Column)>,
    /// Indexes to create (new or replaced).
    pub create_indexes: Vec<Index>,
    /// Index names to drop (removed or replaced).
    pub drop_indexes: Vec<String>,
    /// Live tables absent from the files: kept, with a warning.
    pub kept_tables: Vec<String>,
}

impl SchemaDiff {
    pub fn is_empty(&self) -> bool {
        self.new_tables.is_empty()
            && self.new_columns.is_empty()
            && self.create_indexes.is_empty()
            && self.drop_indexes.is_empty()
    }
}

/// Computes the changes from `live` to `wanted`, or the first unsupported one.
pub fn diff(live: &Schema, wanted: &Schema) -> Result<SchemaDiff, SchemaError> {
    let mut out = SchemaDiff::default();
    for (name, want) in &wanted.tables {
        let Some(have) = live
            .tables
            .values()
            .find(|t| t.name.eq_ignore_ascii_case(name))
        else {
            out.new_tables.push(want.clone());
            continue;
        };
        let fail = |reason: String| Err(SchemaError::table(&want.file, &want.name, reason));
        if have.without_rowid != want.without_rowid {
            return fail("switching WITHOUT ROWID on or off is not supported".into());
        }
        let key = |t: &Table| -> Vec<String> {
            t.pk_columns()
                .iter()
                .map(|c| c.name.to_ascii_lowercase())
                .collect()
        };
        if key(have) != key(want) {
            return fail(format!(
                "changing the primary key ({} -> {}) is not supported",
                key(have).join(", "),
                key(want).join(", ")
            ));
        }
        for old in &have.columns {
            match want.column(&old.name) {
                None => {
                    return fail(format!("dropping column '{}' is not supported", old.name));
                }
                Some(new) => {
                    let what = if !old.decl_type.eq_ignore_ascii_case(&new.decl_type) {
                        Some(format!(
                            "type {} -> {}",
                            show(&old.decl_type),
                            show(&new.decl_type)
                        ))
                    } else if old.notnull != new.notnull {
                        Some("NOT NULL constraint".to_string())
                    } else if old.default != new.default {
                        Some(format!(
                            "default {} -> {}",
                            old.default.as_deref().unwrap_or("none"),
                            new.default.as_deref().unwrap_or("none")
                        ))
                    } else if old.generated != new.generated {
                        Some("generated-ness".to_string())
                    } else if !old.collation.eq_ignore_ascii_case(&new.collation) {
                        Some(format!("collation {} -> {}", old.collation, new.collation))
                    } else {
                        None
                    };
                    if let Some(what) = what {
                        return fail(format!(
                            "changing column '{}' ({what}) is not supported",
                            old.name
                        ));
                    }
                }
            }
        }
        // New columns must come after the existing ones: SQLite appends on ALTER.
        let mut seen_new = false;
        for (pos, col) in want.columns.iter().enumerate() {
            let exists = have.column(&col.name).is_some();
            if exists && seen_new {
                return fail(format!(
                    "new columns must be added after the existing ones (column '{}' moved)",
                    col.name
                ));
            }
            if exists {
                if have.columns.get(pos).map(|c| c.name.to_ascii_lowercase())
                    != Some(col.name.to_ascii_lowercase())
                {
                    return fail(format!(
                        "reordering columns is not supported (column '{}')",
                        col.name
                    ));
                }
                continue;
            }
            seen_new = true;
            if col.generated {
                return fail(format!(
                    "adding generated column '{}' to an existing table is not supported",
                    col.name
                ));
            }
            if col.notnull && col.default.is_none() {
                return fail(format!(
                    "new column '{}' is NOT NULL without a DEFAULT",
                    col.name
                ));
            }
            out.new_columns.push((have.name.clone(), col.clone()));
        }
    }
    for name in live.tables.keys() {
        if !wanted.tables.keys().any(|w| w.eq_ignore_ascii_case(name)) {
            out.kept_tables.push(name.clone());
        }
    }
    for (name, want) in &wanted.indexes {
        match live.indexes.get(name) {
            Some(have) if normalize(&have.sql) == normalize(&want.sql) => {}
            Some(_) => {
                out.drop_indexes.push(name.clone());
                out.create_indexes.push(want.clone());
            }
            None => out.create_indexes.push(want.clone()),
        }
    }
    for (name, have) in &live.indexes {
        // Indexes of tables kept outside the files stay as they are.
        let table_kept = out
            .kept_tables
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&have.table));
        if !wanted.indexes.contains_key(name) && !table_kept {
            out.drop_indexes.push(name.clone());
        }
    }
    Ok(out)
}

fn show(t: &str) -> &str {
    if t.is_empty() { "(none)" } else { t }
}

/// Collapses whitespace so cosmetic edits do not rebuild an index.
fn normalize(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}
