//! Kept client answers: the data generation that makes them exact, what
//! ends them (local writes, remote changes, group commits), and which
//! statements count as pure.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::path::Path;

use bytes::Bytes;
use corro_store::{CACHED_SQL_MAX, Store, StoreOptions};

const TODOS: &str = "CREATE TABLE todos (id BLOB NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER);";

fn open(dir: &Path, name: &str, cache: u64) -> Store {
    let s = Store::open(
        dir.join(name),
        StoreOptions {
            readers: 2,
            answer_cache_bytes: cache,
            ..Default::default()
        },
    )
    .unwrap();
    let schema = dir.join(format!("{name}.sql"));
    std::fs::write(&schema, TODOS).unwrap();
    s.apply_schema_paths(&[schema]).unwrap();
    s
}

fn insert(s: &Store, id: &str, title: &str) {
    s.transact(|tx| {
        tx.execute(
            "INSERT INTO todos (id, title) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET title = excluded.title",
            &[id.into(), title.into()],
        )
    })
    .unwrap();
}

/// Keeps `answer` for `key` the way the API does: generation first, then
/// the read, then the offer.
fn read_and_keep(s: &Store, key: &'static [u8], answer: &'static [u8]) {
    let g = s.data_generation();
    assert_eq!(g % 2, 0, "nobody holds the writer");
    s.keep_answer(Bytes::from_static(key), g, Bytes::from_static(answer));
}

#[test]
fn answers_are_kept_until_the_next_local_or_remote_write() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db", 1 << 20);
    let b = open(dir.path(), "b.db", 0);
    insert(&a, "x", "one");

    read_and_keep(&a, b"q", b"one");
    assert_eq!(a.kept_answer(b"q").as_deref(), Some(&b"one"[..]));
    assert_eq!(a.kept_answer(b"q").as_deref(), Some(&b"one"[..]));

    insert(&a, "x", "two");
    assert_eq!(a.kept_answer(b"q"), None, "a local write ends it");

    read_and_keep(&a, b"q", b"two");
    assert!(a.kept_answer(b"q").is_some());
    insert(&b, "y", "from b");
    a.apply(b.changes_for(b.actor_id(), 1..=b.head()).unwrap())
        .unwrap();
    assert_eq!(a.kept_answer(b"q"), None, "a remote change ends it");

    read_and_keep(&a, b"q", b"three");
    a.transact_grouped(|tx| tx.execute("UPDATE todos SET title = 'grouped' WHERE id = 'x'", &[]))
        .unwrap();
    assert_eq!(a.kept_answer(b"q"), None, "a group commit ends it");

    let stats = a.answer_stats();
    assert_eq!(stats.hits, 3);
    assert!(stats.bytes > 0 && stats.bytes <= stats.max_bytes);

    assert!(!b.keeps_answers());
    read_and_keep(&b, b"q", b"nothing");
    assert_eq!(b.kept_answer(b"q"), None, "0 bytes keeps nothing");
}

#[test]
fn holding_the_writer_without_committing_keeps_answers() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db", 1 << 20);
    insert(&a, "x", "one");
    let g = a.data_generation();
    read_and_keep(&a, b"q", b"one");
    // The writer is taken and only read through: nothing commits, the
    // generation goes back and the answer stays.
    let n: i64 = a
        .local_write(|c| c.query_row("SELECT count(*) FROM todos", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(a.data_generation(), g);
    assert_eq!(a.kept_answer(b"q").as_deref(), Some(&b"one"[..]));
    // Versions already held, received again (a duplicate broadcast): the
    // writer is taken, nothing commits.
    let b = open(dir.path(), "b.db", 0);
    insert(&b, "y", "from b");
    let sets = b.changes_for(b.actor_id(), 1..=b.head()).unwrap();
    a.apply(sets.clone()).unwrap();
    let g = a.data_generation();
    read_and_keep(&a, b"q", b"with b");
    let again = a.apply(sets).unwrap();
    assert_eq!(again.duplicates, 1);
    assert_eq!(a.data_generation(), g);
    assert_eq!(a.kept_answer(b"q").as_deref(), Some(&b"with b"[..]));
    // A transaction that fails commits nothing either.
    assert!(
        a.transact_grouped(|tx| tx.execute("INSERT INTO todos (id) VALUES (NULL)", &[]))
            .is_err()
    );
    assert_eq!(a.data_generation(), g);
    // A transaction that changes no row still commits: counted as a write.
    a.transact(|tx| tx.execute("UPDATE todos SET title = 'z' WHERE id = 'none'", &[]))
        .unwrap();
    assert_ne!(a.data_generation(), g);
    assert_eq!(a.kept_answer(b"q"), None);
}

#[test]
fn an_answer_read_across_a_write_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db", 1 << 20);
    let before = a.data_generation();
    insert(&a, "x", "one");
    a.keep_answer(Bytes::from_static(b"q"), before, Bytes::from_static(b"old"));
    assert_eq!(a.kept_answer(b"q"), None);

    // Read while a writer holds the database: odd, never kept.
    let (a2, key) = (a.clone(), Bytes::from_static(b"q"));
    a.transact(move |tx| {
        let during = a2.data_generation();
        assert_eq!(during % 2, 1, "odd while the writer is held");
        a2.keep_answer(key, during, Bytes::from_static(b"mid-write"));
        tx.execute("UPDATE todos SET title = 'two'", &[])
    })
    .unwrap();
    assert_eq!(a.kept_answer(b"q"), None);
    assert_ne!(a.data_generation(), before);
    assert_eq!(a.data_generation() % 2, 0);
}

#[test]
fn only_statements_whose_answers_depend_on_the_data_alone_are_pure() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db", 1 << 20);
    insert(&a, "x", "one");
    let r = a.reader();
    let volatile = [
        "SELECT random()",
        "SELECT abs(random()) % 10 FROM todos",
        "SELECT randomblob(4)",
        "SELECT datetime('now')",
        "SELECT CURRENT_TIMESTAMP",
        "SELECT current_date, title FROM todos",
        "SELECT strftime('%s', 'now')",
        "SELECT unixepoch()",
        "SELECT julianday('2024-01-01')",
        "SELECT changes()",
        "SELECT total_changes()",
        "SELECT last_insert_rowid()",
        "PRAGMA table_info(todos)",
        "SELECT name FROM pragma_table_info('todos')",
        "SELECT title FROM todos WHERE completed_at < unixepoch()",
    ];
    let pure = [
        "SELECT title FROM todos WHERE id = ?",
        "SELECT upper(title), length(title), json_object('t', title) FROM todos",
        "SELECT count(*), group_concat(title) FROM todos",
        "SELECT title, row_number() OVER (ORDER BY id) FROM todos",
        "SELECT value FROM json_each('[1,2,3]')",
        "SELECT 1",
    ];
    // Asked first (prepared just to judge), then again after prepare_user
    // (remembered from the authorizer): the same verdict both ways.
    for sql in volatile {
        assert!(!r.is_pure(sql), "{sql} must not be pure");
        r.prepare_user(sql).unwrap();
        assert!(!r.is_pure(sql), "{sql} must not be pure");
    }
    for sql in pure {
        r.prepare_user(sql).unwrap();
        assert!(r.is_pure(sql), "{sql} is pure");
    }
    // Judged on the other connection without a prepare_user first.
    drop(r);
    let (r1, r2) = (a.reader(), a.reader());
    for sql in pure {
        assert!(r1.is_pure(sql) && r2.is_pure(sql), "{sql}");
    }
    for sql in volatile {
        assert!(!r1.is_pure(sql) && !r2.is_pure(sql), "{sql}");
    }
    assert!(
        !r1.is_pure("SELECT nonsense FROM nowhere"),
        "does not prepare"
    );
    let long = format!("SELECT '{}'", "x".repeat(CACHED_SQL_MAX));
    assert!(!r1.is_pure(&long), "over CACHED_SQL_MAX: never kept");
    let mut stmt = r1.prepare_user(&long).unwrap();
    let v: String = stmt.query_row([], |row| row.get(0)).unwrap();
    assert_eq!(v.len(), CACHED_SQL_MAX);
}

#[test]
fn a_view_redefined_to_call_random_makes_its_readers_volatile() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(
        dir.path().join("a.db"),
        StoreOptions {
            readers: 1,
            answer_cache_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    a.local_write(|c| c.execute_batch("CREATE VIEW v AS SELECT 1 AS x"))
        .unwrap();
    let sql = "SELECT x FROM v";
    let run = |expect_pure: bool| {
        let r = a.reader();
        let mut stmt = r.prepare_user(sql).unwrap();
        let _: i64 = stmt.query_row([], |row| row.get(0)).unwrap();
        assert_eq!(r.is_pure_as_run(&stmt, sql), expect_pure, "{sql}");
    };
    run(true);
    run(true); // from the statement cache, verdict remembered
    // The view now calls random(); the cached statement is re-prepared by
    // SQLite when it next runs, outside the client rules.
    a.local_write(|c| c.execute_batch("DROP VIEW v; CREATE VIEW v AS SELECT random() AS x"))
        .unwrap();
    run(false);
    run(false);
}

#[test]
fn a_failed_backup_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), "a.db", 0);
    insert(&a, "x", "one");
    let dest = dir.path().join("b.db");
    corro_store::backup(&dir.path().join("a.db"), &dest).unwrap();
    assert!(dest.exists());
    assert!(
        corro_store::backup(&dir.path().join("a.db"), &dest).is_err(),
        "exists"
    );
    // Not a database: VACUUM INTO fails; no copy, no partial file.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not sqlite at all, just bytes").unwrap();
    let dest2 = dir.path().join("c.db");
    assert!(corro_store::backup(&junk, &dest2).is_err());
    // A SQLite file that is not a store: the copy is made, removing the
    // identity fails, and the copy is gone.
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let dest3 = dir.path().join("d.db");
    assert!(corro_store::backup(&other, &dest3).is_err());
    assert!(!dest3.exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a backup is readable by its owner only");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n == "c.db" || n == "d.db")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
