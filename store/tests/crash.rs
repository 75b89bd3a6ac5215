//! Crash safety: a writer killed with SIGKILL mid-stream, and a transaction
//! abandoned by a panic, leave data, clocks, the version index and
//! bookkeeping in agreement, and no acknowledged commit is lost.
//!
//! The killed writer is this test binary re-executed with
//! `CORRO_CRASH_CHILD` set (see `crash_child_writer`), so the crash is a real
//! process death, not a simulated one.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corro_store::{SqlValue, Store, StoreOptions};

const SCHEMA: &str =
    "CREATE TABLE kv (k INTEGER NOT NULL PRIMARY KEY, v TEXT, n INTEGER NOT NULL DEFAULT 0);";

fn open(path: &std::path::Path) -> Store {
    let s = Store::open(path, StoreOptions::default()).unwrap();
    let schema = path.with_extension("sql");
    std::fs::write(&schema, SCHEMA).unwrap();
    s.apply_schema_paths(&[schema]).unwrap();
    s
}

/// Not a test of its own: the writer process that `kill_9_*` kills. It does
/// nothing unless `CORRO_CRASH_CHILD` names a database.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var("CORRO_CRASH_CHILD") else {
        return;
    };
    let s = open(std::path::Path::new(&path));
    let mut i: i64 = 0;
    loop {
        i += 1;
        let c = s
            .transact(|tx| {
                // A mix of inserts, updates of older rows and deletes, several
                // rows per version.
                for j in 0..20 {
                    let k = (i * 7 + j) % 500;
                    tx.execute(
                        "INSERT INTO kv (k, v, n) VALUES (?, ?, 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1",
                        &[SqlValue::Integer(k), SqlValue::Text(format!("v{i}"))],
                    )?;
                }
                tx.execute("DELETE FROM kv WHERE k = ?", &[SqlValue::Integer((i * 13) % 500)])
            })
            .unwrap();
        if let Some(v) = c.version {
            println!("committed {v}");
        }
    }
}

#[test]
fn kill_9_mid_write_leaves_data_and_bookkeeping_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut last_acked = 0u64;
    for round in 1..=3u64 {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CORRO_CRASH_CHILD", &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = BufReader::new(stdout).lines();
        let target = last_acked + 40 * round;
        while let Some(Ok(line)) = lines.next() {
            if let Some(v) = line.strip_prefix("committed ") {
                last_acked = v.trim().parse().unwrap();
                if last_acked >= target {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "child made no progress");
        }
        child.kill().unwrap(); // SIGKILL, while it keeps writing
        child.wait().unwrap();
        assert!(last_acked >= target, "child stopped early at {last_acked}");

        let s = open(&db);
        s.verify().unwrap();
        assert!(
            s.head() >= last_acked,
            "acknowledged version {last_acked} lost (head {})",
            s.head()
        );
        last_acked = s.head();
    }
}

#[test]
fn a_panicking_transaction_rolls_back_and_consumes_no_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("p.db"));
    s.transact(|tx| tx.execute("INSERT INTO kv (k, v) VALUES (1, 'a')", &[]))
        .unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = s.transact(|tx| {
            tx.execute("INSERT INTO kv (k, v) VALUES (2, 'b')", &[])?;
            panic!("client went away mid-transaction");
            #[allow(unreachable_code)]
            Ok(())
        });
    }));
    assert!(r.is_err());
    let n: i64 = s
        .reader()
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    // Capture is off again: host-local writes cannot sneak rows into replicated tables.
    assert!(
        s.local_write(|c| c.execute("INSERT INTO kv (k) VALUES (3)", []))
            .is_err()
    );
    let c = s
        .transact(|tx| tx.execute("INSERT INTO kv (k, v) VALUES (4, 'd')", &[]))
        .unwrap();
    assert_eq!(c.version, Some(2));
    s.verify().unwrap();
}
