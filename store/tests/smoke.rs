//! The reference quick start at store level: a row written on one node is
//! readable on another, and an update flows back.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use corro_store::{SqlValue, Store, StoreOptions};

fn schema(dir: &std::path::Path, sql: &str) -> std::path::PathBuf {
    let p = dir.join("schema.sql");
    std::fs::write(&p, sql).unwrap();
    p
}

#[test]
fn two_stores_converge_on_quick_start_rows() {
    let dir = tempfile::tempdir().unwrap();
    let s = schema(
        dir.path(),
        "CREATE TABLE todos (id BLOB NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER);",
    );
    let a = Store::open(dir.path().join("a.db"), StoreOptions::default()).unwrap();
    let b = Store::open(dir.path().join("b.db"), StoreOptions::default()).unwrap();
    a.apply_schema_paths(&[&s]).unwrap();
    b.apply_schema_paths(&[&s]).unwrap();
    let c = a
        .transact(|tx| {
            tx.execute(
                "INSERT INTO todos (id, title) VALUES (?, ?)",
                &["some-id".into(), "Write some Corrosion docs!".into()],
            )
        })
        .unwrap();
    assert_eq!(c.value, 1);
    assert_eq!(c.version, Some(1));
    assert_eq!(c.changes().len(), 3);
    let out = b.apply(c.changesets(a.actor_id())).unwrap();
    assert_eq!(out.applied.len(), 1);
    let title: String = b
        .reader()
        .query_row("SELECT title FROM todos", [], |r| r.get(0))
        .unwrap();
    assert_eq!(title, "Write some Corrosion docs!");
    let c2 = b
        .transact(|tx| {
            tx.execute(
                "UPDATE todos SET completed_at = ?",
                &[SqlValue::Integer(1234567890)],
            )
        })
        .unwrap();
    assert_eq!(c2.changes().len(), 1);
    a.apply(c2.changesets(b.actor_id())).unwrap();
    let done: i64 = a
        .reader()
        .query_row("SELECT completed_at FROM todos", [], |r| r.get(0))
        .unwrap();
    assert_eq!(done, 1234567890);
    a.verify().unwrap();
    b.verify().unwrap();
    // Served from current state: B's update overwrote version 1's completed_at
    // cell, so 2 of its 3 changes remain, still covering seqs 0..=2.
    let served = a.changes_for(a.actor_id(), 1..=1).unwrap();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].changes().len(), 2);
    assert!(served[0].is_complete());
}
