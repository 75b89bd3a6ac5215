//! Turning schema text into a [`Schema`] with SQLite as the parser.
//!
//! Each file's statements are prepared one by one on a scratch in-memory
//! database. An authorizer watches what each statement would do: only table
//! creation, index creation and index removal pass; anything else (views,
//! triggers, `INSERT`, `PRAGMA`, `DROP TABLE`, ...) is refused with the
//! statement kind named. The scratch database is then read back through the
//! same code that reads a live database ([`read_live`]), so files and live
//! schema are described identically.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fallible_iterator::FallibleIterator;
use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::model::{Column, Index, Schema, Table};
use crate::{SchemaError, SchemaSource};

/// True for names the store reserves for its own bookkeeping tables, triggers
/// and indexes (and SQLite's own `sqlite_*` objects).
pub fn is_internal_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("__corro") || lower.contains("__corro_") || lower.starts_with("sqlite_")
}

/// Parses the given sources into a schema (not yet validated).
pub fn parse(sources: &[SchemaSource]) -> Result<Schema, SchemaError> {
    let sql_err = |file: &Path, e: rusqlite::Error| SchemaError::Sql {
        file: file.to_path_buf(),
        message: e.to_string(),
    };
    let mut conn = Connection::open_in_memory().map_err(|e| sql_err(Path::new(":memory:"), e))?;
    let refused: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = refused.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        match classify(&ctx.action) {
            Ok(()) => Authorization::Allow,
            Err(kind) => {
                if let Ok(mut slot) = seen.lock() {
                    slot.get_or_insert(kind);
                }
                Authorization::Deny
            }
        }
    }))
    .map_err(|e| sql_err(Path::new(":memory:"), e))?;

    // Which file created each object, to name it in later errors.
    let mut origin: std::collections::HashMap<String, PathBuf> = Default::default();
    for src in sources {
        let mut batch = rusqlite::Batch::new(&conn, &src.sql);
        loop {
            if let Ok(mut slot) = refused.lock() {
                *slot = None;
            }
            let stmt = match batch.next() {
                Ok(Some(stmt)) => stmt,
                Ok(None) => break,
                Err(e) => {
                    return Err(match refused.lock().ok().and_then(|mut s| s.take()) {
                        Some(found) => SchemaError::StatementNotAllowed {
                            file: src.path.clone(),
                            found,
                        },
                        None => sql_err(&src.path, e),
                    });
                }
            };
            let mut stmt = stmt;
            if !stmt.readonly() || stmt.column_count() == 0 {
                stmt.raw_execute().map_err(|e| sql_err(&src.path, e))?;
            } else {
                return Err(SchemaError::StatementNotAllowed {
                    file: src.path.clone(),
                    found: "SELECT".into(),
                });
            }
        }
        let mut names = conn
            .prepare("SELECT name FROM sqlite_schema")
            .map_err(|e| sql_err(&src.path, e))?;
        let all: Vec<String> = names
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| sql_err(&src.path, e))?;
        for name in all {
            origin.entry(name).or_insert_with(|| src.path.clone());
        }
    }
    // Internal names are invisible to `read_live`, so refuse them here.
    for (name, file) in &origin {
        if is_internal_name(name) && !name.starts_with("sqlite_autoindex") {
            return Err(SchemaError::table(
                file,
                name,
                "names starting with '__corro' or 'sqlite_', or containing '__corro_', are reserved",
            ));
        }
    }
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
        .map_err(|e| sql_err(Path::new(":memory:"), e))?;
    let mut schema = read_live(&conn, Path::new("<schema files>")).map_err(|e| match e {
        SchemaError::Live(e) => sql_err(Path::new("<schema files>"), e),
        other => other,
    })?;
    for t in schema.tables.values_mut() {
        if let Some(f) = origin.get(&t.name) {
            t.file = f.clone();
        }
    }
    for i in schema.indexes.values_mut() {
        if let Some(f) = origin.get(&i.name) {
            i.file = f.clone();
        }
    }
    Ok(schema)
}

/// Allowed actions while preparing a schema statement; `Err` names the
/// statement kind that is not allowed.
fn classify(action: &AuthAction<'_>) -> Result<(), String> {
    let schema_table = |t: &str| {
        let t = t.to_ascii_lowercase();
        t == "sqlite_master" || t == "sqlite_schema" || t == "sqlite_temp_master"
    };
    match action {
        AuthAction::CreateTable { .. }
        | AuthAction::CreateIndex { .. }
        | AuthAction::DropIndex { .. } => Ok(()),
        // Expressions in defaults, checks and partial indexes.
        AuthAction::Function { .. } | AuthAction::Read { .. } | AuthAction::Select => Ok(()),
        // SQLite maintains its own catalog while creating objects.
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
            if schema_table(table_name) =>
        {
            Ok(())
        }
        AuthAction::Reindex { .. } => Ok(()),
        AuthAction::Insert { .. } => Err("INSERT".into()),
        AuthAction::Update { .. } => Err("UPDATE".into()),
        AuthAction::Delete { .. } => Err("DELETE".into()),
        AuthAction::CreateView { .. } | AuthAction::CreateTempView { .. } => {
            Err("CREATE VIEW".into())
        }
        AuthAction::CreateTrigger { .. } | AuthAction::CreateTempTrigger { .. } => {
            Err("CREATE TRIGGER".into())
        }
        AuthAction::CreateTempTable { .. } | AuthAction::CreateTempIndex { .. } => {
            Err("a TEMP object".into())
        }
        AuthAction::CreateVtable { .. } => Err("CREATE VIRTUAL TABLE".into()),
        AuthAction::DropTable { .. } | AuthAction::DropTempTable { .. } => Err("DROP TABLE".into()),
        AuthAction::DropView { .. } | AuthAction::DropTempView { .. } => Err("DROP VIEW".into()),
        AuthAction::DropTrigger { .. } | AuthAction::DropTempTrigger { .. } => {
            Err("DROP TRIGGER".into())
        }
        AuthAction::AlterTable { .. } => Err("ALTER TABLE".into()),
        AuthAction::Pragma { pragma_name, .. } => Err(format!("PRAGMA {pragma_name}")),
        AuthAction::Attach { .. } => Err("ATTACH".into()),
        AuthAction::Detach { .. } => Err("DETACH".into()),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Err("a transaction statement".into())
        }
        AuthAction::Analyze { .. } => Err("ANALYZE".into()),
        other => Err(format!("{other:?}")),
    }
}

/// Reads the user schema of a database: every table and explicit index that is
/// not internal. `file` is recorded as the origin of each object.
pub fn read_live(conn: &Connection, file: &Path) -> Result<Schema, SchemaError> {
    read(conn, file).map_err(SchemaError::Live)
}

fn read(conn: &Connection, file: &Path) -> rusqlite::Result<Schema> {
    let mut schema = Schema::default();
    let mut stmt = conn.prepare(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema
         WHERE type IN ('table','index') ORDER BY name",
    )?;
    let objects: Vec<(String, String, String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (kind, name, tbl, sql) in objects {
        if is_internal_name(&name) || is_internal_name(&tbl) {
            continue;
        }
        if kind == "table" {
            schema.tables.insert(
                name.clone(),
                read_table(conn, &name, sql.unwrap_or_default(), file)?,
            );
        } else if let Some(sql) = sql {
            // Explicit indexes only; automatic ones (sql NULL) belong to their table.
            let unique: bool = conn.query_row(
                "SELECT \"unique\" FROM pragma_index_list(?1) WHERE name = ?2",
                [&tbl, &name],
                |r| r.get(0),
            )?;
            schema.indexes.insert(
                name.clone(),
                Index {
                    name,
                    table: tbl,
                    unique,
                    sql,
                    file: file.to_path_buf(),
                },
            );
        }
    }
    Ok(schema)
}

fn read_table(conn: &Connection, name: &str, sql: String, file: &Path) -> rusqlite::Result<Table> {
    let mut stmt = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
    )?;
    let raw: Vec<(String, String, bool, Option<String>, u32, i64)> = stmt
        .query_map([name], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut columns = Vec::with_capacity(raw.len());
    for (cname, decl_type, notnull, default, pk, hidden) in raw {
        let generated = hidden == 2 || hidden == 3;
        let collation = if generated {
            "BINARY".to_string()
        } else {
            conn.column_metadata(None::<&str>, name, &cname)
                .map(|(_, coll, ..)| coll.map(|c| c.to_string_lossy().into_owned()))?
                .unwrap_or_else(|| "BINARY".into())
        };
        columns.push(Column {
            name: cname,
            decl_type,
            notnull,
            default,
            pk,
            generated,
            collation,
        });
    }
    let without_rowid: bool = conn.query_row(
        "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    let foreign_keys = conn.query_row(
        "SELECT count(*) FROM pragma_foreign_key_list(?1)",
        [name],
        |r| r.get::<_, i64>(0),
    )? as usize;
    let unique_constraints = conn.query_row(
        "SELECT count(*) FROM pragma_index_list(?1) WHERE origin = 'u'",
        [name],
        |r| r.get::<_, i64>(0),
    )? as usize;
    // The key's collations come from the index SQLite builds for the primary
    // key; an INTEGER PRIMARY KEY (rowid alias) has none and compares as integers.
    let pk_index: Option<String> = conn
        .query_row(
            "SELECT name FROM pragma_index_list(?1) WHERE origin = 'pk'",
            [name],
            |r| r.get(0),
        )
        .ok();
    let pk_collations = match pk_index {
        Some(idx) => {
            let mut s = conn
                .prepare("SELECT coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno")?;
            s.query_map([idx], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<_>>()?
        }
        None => vec!["BINARY".to_string()],
    };
    Ok(Table {
        name: name.to_string(),
        columns,
        without_rowid,
        sql,
        file: file.to_path_buf(),
        foreign_keys,
        unique_constraints,
        pk_collations,
    })
}
