//! A new agent with an empty database catches up a large one (1M rows by
//! default; `CATCHUP_ROWS` overrides) through anti-entropy sync alone, and
//! ends with exactly the same rows and bookkeeping.

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

    // Row-by-row comparison of both databases.
    let open = |n: &Node| {
        rusqlite::Connection::open_with_flags(&n.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
    };
    let (ca, cb) = (open(&a), open(&b));
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
    assert_eq!(count, rows);
    drop(agent_b);
}
