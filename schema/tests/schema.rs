//! Schema files: what is accepted, what is rejected (with the message an
//! operator sees), and how a wanted schema diffs against a live one.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::path::{Path, PathBuf};

use corro_schema::{SchemaError, diff, from_paths, parse, read_live, validate};

fn write(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, sql).unwrap();
    p
}

fn load(sql: &str) -> Result<corro_schema::Schema, SchemaError> {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "s.sql", sql);
    from_paths(&[p])
}

fn err(sql: &str) -> String {
    load(sql)
        .expect_err("schema should be rejected")
        .to_string()
}

#[test]
fn reference_examples_are_accepted() {
    let s = load(
        "CREATE TABLE todos (
            id BLOB NOT NULL PRIMARY KEY,
            title TEXT NOT NULL DEFAULT '',
            completed_at INTEGER
        );",
    )
    .unwrap();
    let t = &s.tables["todos"];
    assert_eq!(t.pk_columns()[0].name, "id");
    assert_eq!(t.value_columns().len(), 2);
    let s = load(
        r#"CREATE TABLE apps (
            id INT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL DEFAULT "",
            user_id INT NOT NULL DEFAULT 0
        );
        CREATE INDEX apps_user_id ON apps (user_id);"#,
    )
    .unwrap();
    assert!(s.indexes.contains_key("apps_user_id"));
}

#[test]
fn composite_keys_without_rowid_generated_columns_and_drop_index_are_accepted() {
    let s = load(
        "CREATE TABLE svc (node TEXT NOT NULL, id TEXT NOT NULL, port INTEGER NOT NULL DEFAULT 0,
             twice INTEGER GENERATED ALWAYS AS (port * 2) VIRTUAL,
             PRIMARY KEY (node, id)) WITHOUT ROWID;
         CREATE INDEX svc_port ON svc (port);
         DROP INDEX IF EXISTS svc_port;
         DROP INDEX IF EXISTS never_existed;",
    )
    .unwrap();
    let t = &s.tables["svc"];
    assert!(t.without_rowid);
    assert_eq!(t.pk_columns().len(), 2);
    assert_eq!(
        t.value_columns().len(),
        1,
        "generated columns are not replicated"
    );
    assert!(s.indexes.is_empty());
}

#[test]
fn directories_load_every_sql_file_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.sql", "CREATE INDEX a_v ON a (v);");
    write(
        dir.path(),
        "a.sql",
        "CREATE TABLE a (id INTEGER NOT NULL PRIMARY KEY, v);",
    );
    write(dir.path(), "notes.txt", "this is not sql");
    let s = from_paths(&[dir.path()]).unwrap();
    assert!(s.tables.contains_key("a") && s.indexes.contains_key("a_v"));
    assert_eq!(s.indexes["a_v"].file, dir.path().join("b.sql"));
}

#[test]
fn missing_paths_name_the_path() {
    let e = from_paths(&[Path::new("/nonexistent/schema.sql")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/schema.sql"), "{e}");
}

#[test]
fn replication_rules_are_enforced_with_clear_reasons() {
    let cases = [
        (
            "CREATE TABLE t (a TEXT, b TEXT);",
            "needs an explicit PRIMARY KEY",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, b TEXT);",
            "primary key column 'id' must be declared NOT NULL",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, b TEXT NOT NULL);",
            "column 'b' is NOT NULL without a DEFAULT",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, b TEXT UNIQUE);",
            "UNIQUE constraints are not supported",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, b TEXT); CREATE UNIQUE INDEX t_b ON t (b);",
            "index 't_b': UNIQUE indexes are not supported",
        ),
        (
            "CREATE TABLE p (id TEXT NOT NULL PRIMARY KEY); CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, p TEXT REFERENCES p(id));",
            "foreign keys are not supported",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL COLLATE NOCASE PRIMARY KEY);",
            "BINARY collation, found NOCASE",
        ),
        (
            "CREATE TABLE __corro_x (id TEXT NOT NULL PRIMARY KEY);",
            "reserved",
        ),
    ];
    for (sql, want) in cases {
        let e = err(sql);
        assert!(e.contains(want), "{sql}\n  got: {e}\n  want: {want}");
        assert!(
            e.contains("s.sql") && e.contains("table '"),
            "error names file and table: {e}"
        );
    }
}

#[test]
fn only_table_and_index_statements_are_allowed() {
    let cases = [
        ("CREATE VIEW v AS SELECT 1;", "CREATE VIEW"),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY); CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;",
            "CREATE TRIGGER",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY); INSERT INTO t VALUES ('x');",
            "INSERT",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY); DROP TABLE t;",
            "DROP TABLE",
        ),
        ("PRAGMA journal_mode = DELETE;", "PRAGMA journal_mode"),
        ("SELECT 1;", "SELECT"),
        (
            "CREATE TEMP TABLE t (id TEXT NOT NULL PRIMARY KEY);",
            "TEMP",
        ),
        ("ATTACH 'x.db' AS x;", "ATTACH"),
    ];
    for (sql, want) in cases {
        let e = err(sql);
        assert!(
            e.contains("only CREATE TABLE, CREATE INDEX and DROP INDEX IF EXISTS are allowed"),
            "{sql}: {e}"
        );
        assert!(e.contains(want), "{sql}\n  got: {e}\n  want: {want}");
    }
}

#[test]
fn sql_errors_name_the_file() {
    let e = err("CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY,,);");
    assert!(e.contains("s.sql") && e.contains("syntax error"), "{e}");
    let e = err(
        "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY); CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY);",
    );
    assert!(e.contains("already exists"), "{e}");
}

fn live(sql: &str) -> corro_schema::Schema {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(sql).unwrap();
    read_live(&conn, Path::new("live")).unwrap()
}

fn wanted(sql: &str) -> corro_schema::Schema {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "want.sql", sql);
    let s = parse(&corro_schema::load(&[p]).unwrap()).unwrap();
    validate(&s).unwrap();
    s
}

const BASE: &str = "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER, b TEXT NOT NULL DEFAULT 'x'); CREATE INDEX t_a ON t (a);";

#[test]
fn additive_changes_are_diffed() {
    let d = diff(
        &live(BASE),
        &wanted(
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER, b TEXT NOT NULL DEFAULT 'x', c REAL, e TEXT NOT NULL DEFAULT 'y');
             CREATE INDEX t_b ON t (b);
             CREATE TABLE n (id INTEGER NOT NULL PRIMARY KEY);",
        ),
    )
    .unwrap();
    assert_eq!(
        d.new_tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["n"]
    );
    assert_eq!(
        d.new_columns
            .iter()
            .map(|(t, c)| format!("{t}.{}", c.name))
            .collect::<Vec<_>>(),
        ["t.c", "t.e"]
    );
    assert_eq!(
        d.create_indexes
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["t_b"]
    );
    assert_eq!(d.drop_indexes, ["t_a"]);
    // A changed index definition is dropped and recreated; whitespace is not a change.
    let d = diff(&live(BASE), &wanted("CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER, b TEXT NOT NULL DEFAULT 'x'); CREATE INDEX t_a ON t (a, b);")).unwrap();
    assert_eq!(
        (d.drop_indexes.clone(), d.create_indexes.len()),
        (vec!["t_a".to_string()], 1)
    );
    let d = diff(&live(BASE), &wanted("CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER, b TEXT NOT NULL DEFAULT 'x');\nCREATE   INDEX t_a ON t (a);")).unwrap();
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn tables_missing_from_files_are_kept() {
    let d = diff(
        &live(BASE),
        &wanted("CREATE TABLE other (id TEXT NOT NULL PRIMARY KEY);"),
    )
    .unwrap();
    assert_eq!(d.kept_tables, ["t"]);
    assert!(d.drop_indexes.is_empty(), "indexes of kept tables stay");
}

#[test]
fn destructive_changes_are_rejected_with_file_table_and_reason() {
    let cases = [
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER);",
            "dropping column 'b' is not supported",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a TEXT, b TEXT NOT NULL DEFAULT 'x');",
            "changing column 'a' (type INTEGER -> TEXT)",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER NOT NULL DEFAULT 0, b TEXT NOT NULL DEFAULT 'x');",
            "changing column 'a' (NOT NULL constraint)",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER, b TEXT NOT NULL DEFAULT 'z');",
            "changing column 'b' (default 'x' -> 'z')",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL, a INTEGER NOT NULL, b TEXT NOT NULL DEFAULT 'x', PRIMARY KEY (id, a));",
            "changing the primary key",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER, b TEXT NOT NULL DEFAULT 'x') WITHOUT ROWID;",
            "WITHOUT ROWID",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, b TEXT NOT NULL DEFAULT 'x', a INTEGER);",
            "reordering columns",
        ),
        (
            "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, a INTEGER, b TEXT NOT NULL DEFAULT 'x', g INTEGER GENERATED ALWAYS AS (a) VIRTUAL);",
            "adding generated column 'g'",
        ),
    ];
    for (sql, want) in cases {
        let e = diff(&live(BASE), &wanted(sql)).expect_err(sql).to_string();
        assert!(e.contains(want), "{sql}\n  got: {e}\n  want: {want}");
        assert!(e.contains("want.sql") && e.contains("table 't'"), "{e}");
    }
}

#[test]
fn fingerprints_follow_what_replicates_not_how_it_is_written() {
    let base = wanted("CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, v TEXT DEFAULT 'x');");
    let spaced = wanted(
        "create table t (\n  id integer not null primary key,\n  v text default 'x'\n);\nCREATE INDEX t_v ON t (v);",
    );
    assert_eq!(
        base.fingerprint(),
        spaced.fingerprint(),
        "layout, case and indexes do not count"
    );
    assert_eq!(
        base.fingerprint(),
        live("CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, v TEXT DEFAULT 'x');").fingerprint(),
        "files and the live database agree"
    );
    for other in [
        "CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, v TEXT DEFAULT 'x', w);",
        "CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, v TEXT DEFAULT 'y');",
        "CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, v BLOB DEFAULT 'x');",
        "CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, v TEXT DEFAULT 'x') WITHOUT ROWID;",
        "CREATE TABLE t2 (id INTEGER NOT NULL PRIMARY KEY, v TEXT DEFAULT 'x');",
        "CREATE TABLE t (id INTEGER NOT NULL PRIMARY KEY, v TEXT DEFAULT 'x'); CREATE TABLE u (k TEXT NOT NULL PRIMARY KEY);",
    ] {
        assert_ne!(base.fingerprint(), wanted(other).fingerprint(), "{other}");
    }
}
