//! A new agent with an empty database catches up a large one (1M rows by
//! default; `CATCHUP_ROWS` overrides) and a long history of single-row
//! versions (discovery's shape) through anti-entropy sync alone, and ends
//! with exactly the same rows and bookkeeping.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::time::{Duration, Instant};

use common::Node;

#[test]
fn a_new_agent_catches_up_a_large_database() {
    let rows: u64 = std::env::var("CATCHUP_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    agent_a.bulk_load(rows);

    let start = Instant::now();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();
    let deadline = start + Duration::from_secs(600);
    loop {
        if a.books() == b.books() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not catch up: {}",
            b.books()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    println!(
        "caught up {rows} rows in {took:?}: {:.0} rows/s (includes agent start)",
        rows as f64 / took.as_secs_f64()
    );

    assert_eq!(same_rows(&a, &b), rows);
    drop(agent_b);
}

#[test]
fn a_new_agent_catches_up_many_single_row_versions() {
    let versions = 30_000u64;
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    {
        // Written straight into the store before the agent starts: one
        // version per row, as fast as the store takes them.
        let store = corro_store::Store::open(&a.db, corro_store::StoreOptions::default()).unwrap();
        store.apply_schema_paths(&[a.dir.join("schema")]).unwrap();
        for i in 0..versions {
            store
                .transact(|tx| {
                    tx.execute(
                        "INSERT INTO todos (id, title) VALUES (?, 'v')",
                        &[corro_store::SqlValue::Text(format!("v-{i:08}"))],
                    )
                })
                .unwrap();
        }
    }
    let agent_a = a.start();
    let start = Instant::now();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();
    let deadline = start + Duration::from_secs(120);
    while a.books() != b.books() {
        assert!(
            Instant::now() < deadline,
            "B did not catch up: {}",
            b.books()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "caught up {versions} single-row versions in {:?} (includes agent start)",
        start.elapsed()
    );
    assert_eq!(same_rows(&a, &b), versions);
    drop(agent_b);
}

/// Compares both databases row by row; the row count.
fn same_rows(a: &Node, b: &Node) -> u64 {
    let open = |n: &Node| {
        rusqlite::Connection::open_with_flags(&n.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
    };
    let (ca, cb) = (open(a), open(b));
    let sql = "SELECT id, title, completed_at FROM todos ORDER BY id";
    let (mut sa, mut sb) = (ca.prepare(sql).unwrap(), cb.prepare(sql).unwrap());
    type Cell = rusqlite::types::Value;
    let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(Cell, Cell, Cell)> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    };
    let mut ra = sa.query_map([], read).unwrap();
    let mut rb = sb.query_map([], read).unwrap();
    let mut count = 0u64;
    loop {
        match (ra.next(), rb.next()) {
            (None, None) => break,
            (x, y) => {
                let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
                assert_eq!(x, y, "row {count} differs");
                count += 1;
            }
        }
    }
    count
}
