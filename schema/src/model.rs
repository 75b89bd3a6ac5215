//! The schema as plain data: tables, their columns and their indexes.
//!
//! Values here are read back from SQLite (never hand-parsed), so two schemas
//! compare equal when SQLite sees the same definitions.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A full schema: tables and explicit indexes, keyed by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub tables: BTreeMap<String, Table>,
    pub indexes: BTreeMap<String, Index>,
}

/// One table as SQLite reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    /// All columns in table order, generated ones included.
    pub columns: Vec<Column>,
    pub without_rowid: bool,
    /// The `CREATE TABLE` text as SQLite stores it.
    pub sql: String,
    /// The file that defined it (the database path for a live schema).
    pub file: PathBuf,
    /// Foreign keys declared on the table (only used to reject them).
    pub foreign_keys: usize,
    /// Unique constraints declared inline (`UNIQUE` column or table constraint).
    pub unique_constraints: usize,
    /// Collation of each primary-key column, in key order (from the key's index).
    pub pk_collations: Vec<String>,
}

/// One column as `pragma_table_xinfo` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub decl_type: String,
    pub notnull: bool,
    /// Default expression text, if any.
    pub default: Option<String>,
    /// 1-based position in the primary key, 0 when not part of it.
    pub pk: u32,
    /// Generated (virtual or stored) columns are not replicated.
    pub generated: bool,
    /// Declared collation (BINARY when none).
    pub collation: String,
}

/// One explicit index (`CREATE INDEX`).
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    pub name: String,
    pub table: String,
    pub unique: bool,
    pub sql: String,
    pub file: PathBuf,
}

impl Schema {
    /// A fingerprint of the replicated tables (names, columns with their
    /// type, constraints, default, key position and collation, rowid or
    /// not), for telling peers' schemas apart. Indexes are left out: they do
    /// not change what replicates. FNV-1a over a canonical text, so every
    /// build computes the same value for the same schema.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::Hasher;
        let mut h = fnv::FnvHasher::default();
        for t in self.tables.values() {
            h.write(format!("T\u{1f}{}\u{1f}{}\u{1e}", t.name, t.without_rowid).as_bytes());
            for c in &t.columns {
                h.write(
                    format!(
                        "C\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1e}",
                        c.name,
                        c.decl_type.to_ascii_uppercase(),
                        c.notnull,
                        c.default.as_deref().unwrap_or("\u{0}"),
                        c.pk,
                        c.generated,
                        c.collation.to_ascii_uppercase(),
                    )
                    .as_bytes(),
                );
            }
        }
        h.finish()
    }
}

impl Table {
    /// Primary-key columns in key order.
    pub fn pk_columns(&self) -> Vec<&Column> {
        let mut pk: Vec<&Column> = self.columns.iter().filter(|c| c.pk > 0).collect();
        pk.sort_by_key(|c| c.pk);
        pk
    }

    /// Replicated non-key columns in table order (generated columns excluded).
    pub fn value_columns(&self) -> Vec<&Column> {
        self.columns
            .iter()
            .filter(|c| c.pk == 0 && !c.generated)
            .collect()
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

impl Column {
    /// The column definition used by `ALTER TABLE ... ADD COLUMN`.
    pub fn definition(&self) -> String {
        let mut def = format!("\"{}\"", self.name.replace('"', "\"\""));
        if !self.decl_type.is_empty() {
            def.push(' ');
            def.push_str(&self.decl_type);
        }
        if self.notnull {
            def.push_str(" NOT NULL");
        }
        if let Some(d) = &self.default {
            def.push_str(" DEFAULT ");
            // Expressions other than literals must be parenthesised to stay valid.
            def.push_str(&format!("({d})"));
        }
        if !self.collation.eq_ignore_ascii_case("BINARY") {
            def.push_str(" COLLATE ");
            def.push_str(&self.collation);
        }
        def
    }
}
