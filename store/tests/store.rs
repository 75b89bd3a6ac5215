//! Behaviour of one store: capture, versions, refusals, schema changes and
//! skew, partial and cleared versions, bookkeeping reload, backup/restore and
//! bad input from peers.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::path::{Path, PathBuf};

use corro_store::{
    Change, Changeset, RestoreOptions, SqlValue, Store, StoreError, StoreOptions, chunk_version,
    encode_key,
};

const TODOS: &str = "CREATE TABLE todos (id BLOB NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER);";

fn schema_file(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, sql).unwrap();
    p
}

fn open_with(dir: &Path, name: &str, sql: &str) -> Store {
    let s = Store::open(dir.join(name), StoreOptions::default()).unwrap();
    s.apply_schema_paths(&[schema_file(dir, &format!("{name}.sql"), sql)])
        .unwrap();
    s
}

fn insert(s: &Store, id: &str, title: &str) -> corro_store::Committed<usize> {
    s.transact(|tx| {
        tx.execute(
            "INSERT INTO todos (id, title) VALUES (?, ?)",
            &[id.into(), title.into()],
        )
    })
    .unwrap()
}

fn titles(s: &Store) -> Vec<(String, String)> {
    let r = s.reader();
    let mut stmt = r
        .prepare("SELECT id, title FROM todos ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn plain_sqlite_reads_but_cannot_write_replicated_tables() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), "a.db", TODOS);
    insert(&s, "some-id", "Write some Corrosion docs!");
    // A bare connection with nothing loaded, like the sqlite3 shell.
    let bare = rusqlite::Connection::open(dir.path().join("a.db")).unwrap();
    let row: (String, String, Option<i64>) = bare
        .query_row("SELECT * FROM todos", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(
        row,
        ("some-id".into(), "Write some Corrosion docs!".into(), None)
    );
    for sql in [
        "INSERT INTO todos (id) VALUES ('x')",
        "UPDATE todos SET title = 'sneaky'",
        "DELETE FROM todos",
    ] {
        let e = bare.execute(sql, []).unwrap_err().to_string();
        assert!(
            e.contains("todos is replicated by Corrosion: write to it through the agent"),
            "{sql}: {e}"
        );
    }
    drop(bare);
    assert_eq!(
        titles(&s),
        [(
            "some-id".to_string(),
            "Write some Corrosion docs!".to_string()
        )]
    );
    s.verify().unwrap();
}

#[test]
fn versions_are_contiguous_and_empty_transactions_consume_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), "a.db", TODOS);
    assert_eq!(insert(&s, "a", "one").version, Some(1));
    let none = s
        .transact(|tx| tx.execute("UPDATE todos SET title = 'x' WHERE id = 'missing'", &[]))
        .unwrap();
    assert_eq!((none.value, none.version), (0, None));
    let same = s
        .transact(|tx| tx.execute("UPDATE todos SET title = 'one'", &[]))
        .unwrap();
    assert_eq!(
        (same.value, same.version),
        (1, None),
        "writing the current value is not a change"
    );
    let gone = s
        .transact(|tx| {
            tx.execute("INSERT INTO todos (id) VALUES ('tmp')", &[])?;
            tx.execute("DELETE FROM todos WHERE id = 'tmp'", &[])
        })
        .unwrap();
    assert_eq!(
        gone.version, None,
        "insert and delete in one transaction is nothing"
    );
    let two = insert(&s, "b", "two");
    assert_eq!(two.version, Some(2));
    let seqs: Vec<u64> = two.changes().iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert!(two.changes()[0].is_sentinel() && two.changes()[0].cl == 1);
    assert_eq!(s.head(), 2);
}

#[test]
fn failed_transactions_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), "a.db", TODOS);
    insert(&s, "a", "one");
    let e = s
        .transact(|tx| {
            tx.execute("INSERT INTO todos (id, title) VALUES ('b', 'two')", &[])?;
            tx.execute("INSERT INTO todos (id, title) VALUES ('a', 'dup')", &[])
        })
        .unwrap_err();
    assert!(e.to_string().contains("UNIQUE constraint failed"), "{e}");
    assert_eq!(titles(&s).len(), 1);
    assert_eq!(s.head(), 1);
    assert_eq!(
        insert(&s, "c", "three").version,
        Some(2),
        "the failed transaction consumed no version"
    );
    s.verify().unwrap();
}

#[test]
fn a_failed_statement_fails_the_transaction_even_if_the_caller_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), "a.db", TODOS);
    insert(&s, "a", "one");
    // The first row of the two-row insert is written, then undone by SQLite
    // when the second one fails: capture saw it, so nothing may commit.
    let e = s
        .transact(|tx| {
            let failed = tx.execute(
                "INSERT INTO todos (id, title) VALUES ('b', 'two'), ('a', 'dup')",
                &[],
            );
            assert!(failed.is_err());
            tx.execute("INSERT INTO todos (id, title) VALUES ('c', 'three')", &[])
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("a statement of this transaction failed"),
        "{e}"
    );
    assert_eq!(titles(&s).len(), 1);
    assert_eq!(s.head(), 1);
    // A statement refused before it ran (here: a syntax error) does not.
    let c = s
        .transact(|tx| {
            assert!(tx.execute("INSERT INTO todos VALUES (", &[]).is_err());
            tx.execute("INSERT INTO todos (id, title) VALUES ('c', 'three')", &[])
        })
        .unwrap();
    assert_eq!(c.version, Some(2));
    assert_eq!(titles(&s).len(), 2);
    s.verify().unwrap();
}

#[test]
fn api_statements_cannot_touch_schema_or_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), "a.db", TODOS);
    insert(&s, "a", "one");
    for sql in [
        "CREATE TABLE evil (id INTEGER PRIMARY KEY)",
        "DROP TABLE todos",
        "ALTER TABLE todos ADD COLUMN x",
        "PRAGMA journal_mode = DELETE",
        "ATTACH 'other.db' AS other",
        "DELETE FROM __corro_versions",
        "UPDATE __corro_actors SET head = 0",
        "DELETE FROM todos__corro_clock",
        "SELECT corro_capture(1, 1, 1, 'x', 'y', NULL)",
        "BEGIN",
        "COMMIT",
    ] {
        let e = s.transact(|tx| tx.execute(sql, &[])).unwrap_err();
        assert!(matches!(e, StoreError::NotAllowed(_)), "{sql}: {e}");
    }
    assert_eq!(titles(&s).len(), 1);
    assert_eq!(s.head(), 1);
    s.verify().unwrap();
}

#[test]
fn real_primary_key_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(
        dir.path(),
        "a.db",
        "CREATE TABLE k (id NOT NULL PRIMARY KEY, v);",
    );
    let e = s
        .transact(|tx| tx.execute("INSERT INTO k (id, v) VALUES (1.5, 'x')", &[]))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("REAL primary key values are not supported"),
        "{e}"
    );
    // Integers and text are fine, and 1.0 into an INTEGER key column becomes 1.
    let s2 = open_with(
        dir.path(),
        "b.db",
        "CREATE TABLE k (id INTEGER NOT NULL PRIMARY KEY, v);",
    );
    let c = s2
        .transact(|tx| tx.execute("INSERT INTO k (id, v) VALUES (1.0, 'x')", &[]))
        .unwrap();
    assert_eq!(
        &c.changes()[0].pk[..],
        &encode_key(&[SqlValue::Integer(1)])[..]
    );
}

#[test]
fn primary_key_updates_replicate_as_delete_plus_insert() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    let b = open_with(dir.path(), "b.db", TODOS);
    let c1 = insert(&a, "old", "title");
    let c2 = a
        .transact(|tx| tx.execute("UPDATE todos SET id = 'new' WHERE id = 'old'", &[]))
        .unwrap();
    assert_eq!(c2.changes().iter().filter(|c| c.is_sentinel()).count(), 2);
    b.apply(c2.changesets(a.actor_id())).unwrap();
    b.apply(c1.changesets(a.actor_id())).unwrap();
    assert_eq!(titles(&b), [("new".to_string(), "title".to_string())]);
    assert_eq!(titles(&a), titles(&b));
}

#[test]
fn schema_changes_apply_additively_and_bad_ones_keep_the_old_schema() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    insert(&a, "x", "before");
    let v1 = a.schema_fingerprint();
    assert_eq!(v1, a.schema().unwrap().fingerprint());
    let p = schema_file(
        dir.path(),
        "v2.sql",
        "CREATE TABLE todos (id BLOB NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER, owner TEXT NOT NULL DEFAULT 'nobody');
         CREATE INDEX todos_owner ON todos (owner);",
    );
    let d = a.apply_schema_paths(&[&p]).unwrap();
    assert_eq!(d.new_columns.len(), 1);
    let v2 = a.schema_fingerprint();
    assert_ne!(v1, v2, "a new column changes the fingerprint");
    assert_eq!(v2, a.schema().unwrap().fingerprint());
    let c = a
        .transact(|tx| tx.execute("UPDATE todos SET owner = 'me'", &[]))
        .unwrap();
    assert_eq!(c.changes()[0].column.as_deref(), Some("owner"));
    let owner: String = a
        .reader()
        .query_row("SELECT owner FROM todos", [], |r| r.get(0))
        .unwrap();
    assert_eq!(owner, "me");

    let bad = schema_file(
        dir.path(),
        "bad.sql",
        "CREATE TABLE todos (id BLOB NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '');",
    );
    let e = a.apply_schema_paths(&[&bad]).unwrap_err().to_string();
    assert!(
        e.contains("bad.sql") && e.contains("table 'todos'") && e.contains("dropping column"),
        "{e}"
    );
    // Still the v2 schema: the column is there and writes work.
    assert_eq!(a.schema_fingerprint(), v2);
    insert(&a, "y", "after");
    assert_eq!(a.schema().unwrap().tables["todos"].columns.len(), 4);
    assert!(a.schema().unwrap().indexes.contains_key("todos_owner"));
    a.verify().unwrap();
}

#[test]
fn changes_for_unknown_columns_wait_for_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = "CREATE TABLE todos (id BLOB NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER, owner TEXT);";
    let a = open_with(dir.path(), "a.db", v2);
    let b = open_with(dir.path(), "b.db", TODOS);
    let c = a
        .transact(|tx| {
            tx.execute(
                "INSERT INTO todos (id, title, owner) VALUES ('x', 't', 'me')",
                &[],
            )
        })
        .unwrap();
    let out = b.apply(c.changesets(a.actor_id())).unwrap();
    assert_eq!((out.applied.len(), out.pending_schema), (0, 1));
    assert!(titles(&b).is_empty());
    assert!(
        !b.books()[&a.actor_id()].holds(1),
        "a version kept aside is not held"
    );
    b.apply_schema_paths(&[schema_file(dir.path(), "b2.sql", v2)])
        .unwrap();
    assert_eq!(titles(&b), [("x".to_string(), "t".to_string())]);
    assert!(b.books()[&a.actor_id()].holds(1));
    b.verify().unwrap();
}

#[test]
fn big_versions_arrive_in_chunks_survive_a_restart_and_apply_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    let c = a
        .transact(|tx| {
            for i in 0..2000 {
                tx.execute(
                    "INSERT INTO todos (id, title) VALUES (?, ?)",
                    &[format!("id-{i:05}").into(), format!("title {i}").into()],
                )?;
            }
            Ok(())
        })
        .unwrap();
    let pieces = c.changesets(a.actor_id());
    assert!(pieces.len() > 10, "{} pieces", pieces.len());
    let (first, rest) = pieces.split_at(pieces.len() / 2);
    {
        let b = open_with(dir.path(), "b.db", TODOS);
        for p in first {
            let out = b.apply(vec![p.clone()]).unwrap();
            assert_eq!(out.buffered, 1);
        }
        assert!(
            titles(&b).is_empty(),
            "nothing visible before the version is complete"
        );
        // Pieces held so far can be served onwards.
        assert_eq!(
            b.changes_for(a.actor_id(), 1..=1).unwrap().len(),
            first.len()
        );
    }
    let b = Store::open(dir.path().join("b.db"), StoreOptions::default()).unwrap();
    assert_eq!(
        b.books()[&a.actor_id()].partials.len(),
        1,
        "partial reloaded"
    );
    let out = b.apply(rest.to_vec()).unwrap();
    assert_eq!(out.applied, [(a.actor_id(), 1)]);
    assert_eq!(titles(&b), titles(&a));
    b.verify().unwrap();
}

#[test]
fn fully_overwritten_versions_are_served_as_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    let b = open_with(dir.path(), "b.db", TODOS);
    insert(&a, "x", "one");
    a.transact(|tx| tx.execute("DELETE FROM todos", &[]))
        .unwrap();
    a.transact(|tx| tx.execute("INSERT INTO todos (id, title) VALUES ('x', 'two')", &[]))
        .unwrap();
    let served = a.changes_for(a.actor_id(), 1..=3).unwrap();
    assert!(
        matches!(&served[0], Changeset::Cleared { versions, .. } if *versions == (1..=2)),
        "{served:?}"
    );
    b.apply(served).unwrap();
    assert_eq!(titles(&b), [("x".to_string(), "two".to_string())]);
    assert_eq!(b.books(), a.books());
    b.verify().unwrap();
    a.verify().unwrap();
}

#[test]
fn a_version_whose_row_list_is_kept_in_parts_is_cleared_whole() {
    // More rows than fit inline (512): the row list is kept in parts.
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    let b = open_with(dir.path(), "b.db", TODOS);
    let fill = |title: &'static str, rows: std::ops::Range<u32>| {
        a.transact(move |tx| {
            for i in rows.clone() {
                tx.execute(
                    "INSERT INTO todos (id, title) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET title = excluded.title",
                    &[SqlValue::Text(format!("r{i:04}")), title.into()],
                )?;
            }
            Ok(())
        })
        .unwrap()
    };
    fill("one", 0..700);
    // Half overwritten: still live, still listed in parts.
    fill("two", 0..350);
    a.verify().unwrap();
    let served = a.changes_for(a.actor_id(), 1..=1).unwrap();
    assert!(
        matches!(&served[0], Changeset::Version { version: 1, .. }),
        "{served:?}"
    );
    // Every row deleted, one per transaction: the version is cleared on
    // the last one, and its parts go.
    for i in 0..700 {
        a.transact(|tx| {
            tx.execute(
                "DELETE FROM todos WHERE id = ?",
                &[SqlValue::Text(format!("r{i:04}"))],
            )
        })
        .unwrap();
    }
    a.verify().unwrap();
    let served = a.changes_for(a.actor_id(), 1..=1).unwrap();
    assert!(
        matches!(&served[0], Changeset::Cleared { versions, .. } if *versions == (1..=1)),
        "{served:?}"
    );
    b.apply(a.changes_for(a.actor_id(), 1..=a.head()).unwrap())
        .unwrap();
    assert_eq!(titles(&b), titles(&a));
    b.verify().unwrap();
}

#[test]
fn serving_with_a_change_budget_splits_only_between_versions() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    for i in 0..50 {
        insert(&a, &format!("r{i}"), "t");
    }
    // One 10-row version in the middle, and a cleared pair.
    a.transact(|tx| {
        for i in 0..10 {
            tx.execute(
                "INSERT INTO todos (id, title) VALUES (?, 'big')",
                &[SqlValue::Text(format!("big{i}"))],
            )?;
        }
        Ok(())
    })
    .unwrap();
    insert(&a, "gone", "t");
    a.transact(|tx| tx.execute("DELETE FROM todos WHERE id = 'gone'", &[]))
        .unwrap();
    let head = a.head();
    let whole = a.changes_for(a.actor_id(), 1..=head).unwrap();
    for budget in [1, 3, 7, 25, 1000] {
        let (mut lo, mut pieces, mut calls) = (1, Vec::new(), 0);
        loop {
            let (sets, next) = a
                .changes_for_budget(a.actor_id(), lo..=head, budget)
                .unwrap();
            calls += 1;
            pieces.extend(sets);
            match next {
                Some(n) => {
                    assert!(n > lo, "no progress at {lo} with budget {budget}");
                    lo = n;
                }
                None => break,
            }
        }
        let b = open_with(dir.path(), &format!("b{budget}.db"), TODOS);
        b.apply(pieces).unwrap();
        assert_eq!(titles(&b), titles(&a), "budget {budget}");
        assert_eq!(b.books(), a.books(), "budget {budget}");
        if budget >= 1000 {
            assert_eq!(calls, 1);
        } else {
            assert!(calls > 1, "budget {budget} served everything at once");
        }
    }
    let b = open_with(dir.path(), "whole.db", TODOS);
    b.apply(whole).unwrap();
    assert_eq!(titles(&b), titles(&a));
}

#[test]
fn bookkeeping_gaps_reload_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    let sets: Vec<Vec<Changeset>> = (0..5)
        .map(|i| insert(&a, &format!("r{i}"), "t").changesets(a.actor_id()))
        .collect();
    {
        let b = open_with(dir.path(), "b.db", TODOS);
        b.apply(sets[1].clone()).unwrap();
        b.apply(sets[4].clone()).unwrap();
        assert_eq!(b.books()[&a.actor_id()].needed(), vec![1..=1, 3..=4]);
    }
    let b = Store::open(dir.path().join("b.db"), StoreOptions::default()).unwrap();
    let books = &b.books()[&a.actor_id()];
    assert_eq!((books.head, books.needed()), (5, vec![1..=1, 3..=4]));
    b.verify().unwrap();
}

#[test]
fn backup_has_no_identity_and_restore_replaces_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    insert(&a, "x", "one");
    let backup = dir.path().join("backup.db");
    a.backup(&backup).unwrap();
    assert!(
        a.backup(&backup)
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
    let id: Option<Vec<u8>> = rusqlite::Connection::open(&backup)
        .unwrap()
        .query_row(
            "SELECT value FROM __corro_meta WHERE key = 'actor_id'",
            [],
            |r| r.get(0),
        )
        .ok();
    assert_eq!(id, None);
    // Seed a new node from it: same rows, new actor, old actor's history kept.
    let seeded = Store::open(&backup, StoreOptions::default()).unwrap();
    assert_ne!(seeded.actor_id(), a.actor_id());
    assert_eq!(titles(&seeded), titles(&a));
    assert!(seeded.books()[&a.actor_id()].holds(1));
    seeded.verify().unwrap();
    drop(seeded);

    // Restore over another node's database (not running), keeping its actor.
    let target = dir.path().join("b.db");
    let b_actor = {
        let b = open_with(dir.path(), "b.db", TODOS);
        insert(&b, "y", "other");
        b.actor_id()
    };
    corro_store::restore(&target, &backup, RestoreOptions { keep_actor: true }).unwrap();
    let b = Store::open(&target, StoreOptions::default()).unwrap();
    assert_eq!(b.actor_id(), b_actor);
    assert_eq!(titles(&b), [("x".to_string(), "one".to_string())]);
    b.verify().unwrap();
    drop(b);
    corro_store::restore(&target, &backup, RestoreOptions::default()).unwrap();
    let b = Store::open(&target, StoreOptions::default()).unwrap();
    assert_ne!(
        b.actor_id(),
        b_actor,
        "without keep_actor a restore gets a fresh id"
    );

    let junk = schema_file(dir.path(), "junk.db", "not a database");
    assert!(corro_store::restore(&target, &junk, RestoreOptions::default()).is_err());
}

#[test]
fn a_copied_database_file_gets_a_fresh_actor_id() {
    let dir = tempfile::tempdir().unwrap();
    let actor = {
        let a = open_with(dir.path(), "a.db", TODOS);
        insert(&a, "x", "one");
        a.actor_id()
    };
    std::fs::copy(dir.path().join("a.db"), dir.path().join("copy.db")).unwrap();
    let copy = Store::open(dir.path().join("copy.db"), StoreOptions::default()).unwrap();
    assert_ne!(copy.actor_id(), actor);
    assert!(copy.books()[&actor].holds(1));
    let again = Store::open(dir.path().join("a.db"), StoreOptions::default()).unwrap();
    assert_eq!(again.actor_id(), actor, "the original keeps its id");
    assert_eq!(again.head(), 1);
}

#[test]
fn host_local_tables_live_beside_replicated_ones() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    a.local_write(|c| c.execute_batch("CREATE TABLE local_notes (k TEXT PRIMARY KEY, v); INSERT INTO local_notes VALUES ('a', 1);"))
        .unwrap();
    insert(&a, "kept", "replicated");
    for sql in [
        "INSERT INTO todos (id) VALUES ('x')",
        "INSERT INTO TODOS (id) SELECT k FROM local_notes",
        "UPDATE todos SET title = 'sneaky'",
        "DELETE FROM todos",
    ] {
        let e = a.local_write(|c| c.execute(sql, [])).unwrap_err();
        assert!(
            e.to_string()
                .contains("must go through the corrosion agent"),
            "{sql}: {e}"
        );
    }
    assert_eq!(titles(&a), [("kept".to_string(), "replicated".to_string())]);
    // Host-local writes still work, and leave nothing to replicate behind.
    a.local_write(|c| c.execute("UPDATE local_notes SET v = 2", []))
        .unwrap();
    assert_eq!(insert(&a, "next", "one").version, Some(2));
    a.verify().unwrap();
    // Schema reloads ignore host-local tables.
    let d = a
        .apply_schema_paths(&[schema_file(dir.path(), "same.sql", TODOS)])
        .unwrap();
    assert!(d.kept_tables.is_empty() && d.is_empty());
    let n: i64 = a
        .reader()
        .query_row("SELECT count(*) FROM local_notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(a.tables(), ["todos"]);
}

fn cell(pk: &str, column: Option<&str>, cl: u64, seq: u64) -> Change {
    Change {
        table: "todos".into(),
        pk: encode_key(&[SqlValue::Text(pk.into())]).into(),
        column: column.map(Into::into),
        value: SqlValue::Text("v".into()),
        col_version: 1,
        cl,
        seq,
    }
}

#[test]
fn malformed_changes_from_peers_are_rejected_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_with(dir.path(), "b.db", TODOS);
    let actor = corro_store::ActorId::random();
    let good = chunk_version(
        actor,
        1,
        1,
        0,
        vec![cell("a", None, 1, 0), cell("a", Some("title"), 1, 1)],
        8192,
    );
    let mut bad_pk = cell("a", Some("title"), 1, 0);
    bad_pk.pk = vec![0xff, 0xff].into();
    let cases: Vec<(Changeset, &str)> = vec![
        (
            chunk_version(actor, 2, 0, 0, vec![cell("b", Some("title"), 2, 0)], 8192).remove(0),
            "impossible causal length",
        ),
        (
            chunk_version(actor, 2, 0, 0, vec![bad_pk], 8192).remove(0),
            "undecodable primary key",
        ),
        (
            Changeset::Version {
                actor,
                version: 2,
                seqs: 0..=5,
                last_seq: 3,
                ts: 0,
                changes: vec![],
            },
            "outside 0..=3",
        ),
        (
            Changeset::Version {
                actor,
                version: 2,
                seqs: 0..=0,
                last_seq: 3,
                ts: 0,
                changes: vec![cell("c", None, 1, 2)],
            },
            "outside its piece",
        ),
        (
            // Never held, so never taken out of the buffer again.
            Changeset::Version {
                actor,
                version: 0,
                seqs: 0..=0,
                last_seq: 3,
                ts: 0,
                changes: vec![cell("d", None, 1, 0)],
            },
            "version 0",
        ),
    ];
    for (set, want) in cases {
        let mut batch = good.clone();
        batch.push(set);
        let e = b.apply(batch).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(&actor.to_string()), "{e}");
        assert!(titles(&b).is_empty(), "the whole batch is rejected");
    }
    b.apply(good).unwrap();
    assert_eq!(titles(&b).len(), 1);
    let buffered: i64 = b
        .reader()
        .query_row("SELECT count(*) FROM __corro_buffered", [], |r| r.get(0))
        .unwrap();
    assert_eq!(buffered, 0, "nothing of a refused batch stays buffered");
    b.verify().unwrap();
}

/// Waits (bounded) until `cond` holds.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn local_writes_go_before_waiting_remote_application() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    let b = open_with(dir.path(), "b.db", TODOS);
    let remote = insert(&b, "from-b", "remote").changesets(b.actor_id());
    let order = std::sync::Mutex::new(Vec::new());
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        // A local transaction holds the writer until told to finish.
        let a_ref = &a;
        let order_ref = &order;
        s.spawn(move || {
            a_ref
                .transact(|tx| {
                    release_rx.recv().unwrap();
                    tx.execute("INSERT INTO todos (id) VALUES ('first')", &[])
                })
                .unwrap();
            order_ref.lock().unwrap().push("first local");
        });
        wait_for("the first local transaction", || {
            a.writer_stats().local_active == 1
        });
        s.spawn(|| {
            a.apply(remote.clone()).unwrap();
            order.lock().unwrap().push("remote");
        });
        wait_for("the remote application to queue", || {
            a.writer_stats().remote_waiting == 1
        });
        s.spawn(|| {
            insert(&a, "second", "local");
            order.lock().unwrap().push("second local");
        });
        wait_for("the second local transaction to queue", || {
            a.writer_stats().local_active == 2
        });
        release_tx.send(()).unwrap();
    });
    assert_eq!(order.lock().unwrap().len(), 3);
    // Rowids are assigned under the writer, so they give the real order.
    let r = a.reader();
    let mut stmt = r.prepare("SELECT id FROM todos ORDER BY rowid").unwrap();
    let ids: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ids, ["first", "second", "from-b"]);
    assert_eq!(a.writer_stats(), corro_store::WriterStats::default());
}

#[test]
fn remote_application_is_not_starved_by_local_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    let b = open_with(dir.path(), "b.db", TODOS);
    let remote = insert(&b, "from-b", "remote").changesets(b.actor_id());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Two writers keep a local transaction queued at all times.
        for w in 0..2 {
            let (a, stop) = (&a, &stop);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    insert(a, &format!("w{w}-{i}"), "busy");
                }
            });
        }
        wait_for("local writers", || a.writer_stats().local_active > 0);
        let started = std::time::Instant::now();
        a.apply(remote.clone()).unwrap();
        let waited = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Bounded by MAX_REMOTE_WAIT plus one local transaction; generous
        // slack because this only guards against starvation, not speed.
        assert!(
            waited < corro_store::MAX_REMOTE_WAIT * 20,
            "remote waited {waited:?}"
        );
    });
    assert!(titles(&a).iter().any(|(id, _)| id == "from-b"));
}

#[test]
fn bulk_reinserts_over_tombstones_get_the_next_causal_length() {
    let dir = tempfile::tempdir().unwrap();
    let a = open_with(dir.path(), "a.db", TODOS);
    let b = open_with(dir.path(), "b.db", TODOS);
    let mut sets = Vec::new();
    let bulk = |range: std::ops::Range<usize>, title: &'static str| {
        move |tx: &mut corro_store::WriteTx<'_>| {
            let mut stmt = tx.prepare("INSERT INTO todos (id, title) VALUES (?, ?)")?;
            for i in range.clone() {
                stmt.execute(&[format!("id-{i:04}").into(), title.into()])?;
            }
            Ok(())
        }
    };
    sets.extend(
        a.transact(bulk(0..300, "first"))
            .unwrap()
            .changesets(a.actor_id()),
    );
    // Tombstones on every other row.
    sets.extend(
        a.transact(|tx| {
            tx.execute(
                "DELETE FROM todos WHERE CAST(substr(id, 4) AS INTEGER) % 2 = 0",
                &[],
            )
        })
        .unwrap()
        .changesets(a.actor_id()),
    );
    // One transaction re-inserting them among brand-new rows (several batches,
    // each mixing fresh keys and tombstoned ones).
    let c = a
        .transact(|tx| {
            let mut stmt = tx.prepare("INSERT INTO todos (id, title) VALUES (?, ?)")?;
            for i in (0..300).filter(|i| i % 2 == 0).chain(300..500) {
                stmt.execute(&[format!("id-{i:04}").into(), "second".into()])?;
            }
            Ok(())
        })
        .unwrap();
    let sentinels: Vec<(Vec<u8>, u64)> = c
        .changes()
        .iter()
        .filter(|c| c.is_sentinel())
        .map(|c| (c.pk.to_vec(), c.cl))
        .collect();
    assert_eq!(sentinels.len(), 350);
    let key = |i: usize| encode_key(&[SqlValue::Text(format!("id-{i:04}"))]);
    for (pk, cl) in &sentinels {
        let reinserted = (0..300).step_by(2).any(|i| key(i) == *pk);
        assert_eq!(*cl, if reinserted { 3 } else { 1 }, "key {pk:?}");
    }
    sets.extend(c.changesets(a.actor_id()));
    a.verify().unwrap();
    b.apply(sets).unwrap();
    assert_eq!(titles(&a), titles(&b));
    assert_eq!(titles(&a).len(), 500);
    b.verify().unwrap();
}

#[test]
fn client_queries_are_read_only_and_cannot_change_pooled_connections() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(
        dir.path().join("a.db"),
        StoreOptions {
            readers: 1,
            ..Default::default()
        },
    )
    .unwrap();
    a.apply_schema_paths(&[schema_file(dir.path(), "s.sql", TODOS)])
        .unwrap();
    insert(&a, "x", "one");
    let r = a.reader();
    for sql in [
        "INSERT INTO todos (id) VALUES ('y')",
        "DELETE FROM todos",
        "ATTACH 'other.db' AS other",
        "BEGIN",
        "PRAGMA query_only = 0",
        "CREATE TABLE t (x)",
        "SELECT load_extension('evil')",
    ] {
        let e = r.prepare_user(sql).map(|_| ()).unwrap_err();
        assert!(matches!(e, StoreError::NotAllowed(_)), "{sql}: {e}");
    }
    let mut ok = r.prepare_user("SELECT title FROM todos").unwrap();
    let title: String = ok.query_row([], |row| row.get(0)).unwrap();
    assert_eq!(title, "one");
    // Reading pragmas is fine.
    r.prepare_user("PRAGMA table_info(todos)").unwrap();
    assert!(
        r.prepare_user("SELECT 1; SELECT 2").is_err(),
        "one statement only"
    );
}

#[test]
fn change_feed_reports_the_rows_of_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        open_with(dir.path(), "a.db", TODOS),
        open_with(dir.path(), "b.db", TODOS),
    );
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<Vec<(String, Vec<SqlValue>, bool)>>>>;
    let listen = |s: &Store| -> Seen {
        let seen: Seen = Default::default();
        let sink = seen.clone();
        s.on_change(std::sync::Arc::new(
            move |rows: &corro_store::RowsChanged| {
                sink.lock().unwrap().push(
                    rows.rows
                        .iter()
                        .map(|r| {
                            (
                                r.table.to_string(),
                                corro_store::decode_key(&r.pk).unwrap(),
                                r.deleted,
                            )
                        })
                        .collect(),
                );
            },
        ));
        seen
    };
    let (seen_a, seen_b) = (listen(&a), listen(&b));
    let c = insert(&a, "x", "one");
    a.transact(|tx| {
        tx.execute("UPDATE todos SET title = 'two' WHERE id = 'x'", &[])?;
        tx.execute("UPDATE todos SET title = 'two' WHERE id = 'x'", &[])?;
        tx.execute("INSERT INTO todos (id) VALUES ('y')", &[])
    })
    .unwrap();
    // A transaction that changes nothing notifies nothing.
    a.transact(|tx| tx.execute("DELETE FROM todos WHERE id = 'nope'", &[]))
        .unwrap();
    a.transact(|tx| tx.execute("DELETE FROM todos WHERE id = 'y'", &[]))
        .unwrap();
    let key = |k: &str, deleted| ("todos".to_string(), vec![SqlValue::Text(k.into())], deleted);
    assert_eq!(
        *seen_a.lock().unwrap(),
        vec![
            vec![key("x", false)],
            vec![key("x", false), key("y", false)],
            vec![key("y", true)]
        ]
    );
    // Remote application reports the rows it merged, once per commit, with
    // their state after it.
    let sets = a.changes_for(a.actor_id(), 1..=3).unwrap();
    b.apply(sets.clone()).unwrap();
    b.apply(sets).unwrap(); // duplicates: nothing merged, nothing reported
    assert_eq!(
        *seen_b.lock().unwrap(),
        vec![vec![key("x", false), key("y", true)]],
        "{:?}",
        c.version
    );
}

#[test]
fn a_cleared_range_as_wide_as_versions_go_is_applied_by_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(dir.path(), "a", TODOS);
    let actor = corro_store::ActorId::random();
    // Counted version by version, this took longer than any test runs.
    let widest = i64::MAX as u64;
    let out = s
        .apply(vec![Changeset::Cleared {
            actor,
            versions: 1..=widest,
        }])
        .unwrap();
    assert_eq!(out.cleared, widest);
    assert_eq!(s.books()[&actor].head, widest);
    // Past what SQLite stores: refused, nothing recorded.
    let other = corro_store::ActorId::random();
    assert!(
        s.apply(vec![Changeset::Cleared {
            actor: other,
            versions: 1..=u64::MAX,
        }])
        .is_err()
    );
    assert!(!s.books().contains_key(&other));
}

#[test]
fn a_database_of_a_newer_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    drop(open_with(dir.path(), "a.db", TODOS));
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "UPDATE __corro_meta SET value = 99 WHERE key = 'format'",
        [],
    )
    .unwrap();
    drop(c);
    let e = Store::open(&path, StoreOptions::default())
        .err()
        .expect("a newer format must be refused")
        .to_string();
    assert!(e.contains("format 99 is newer than this build"), "{e}");
}

#[test]
fn a_read_deadline_stops_its_query_and_ends_with_the_borrow() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path().join("a.db"),
        StoreOptions {
            readers: 1,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    {
        let conn = s.reader();
        conn.set_deadline(std::time::Instant::now() + std::time::Duration::from_millis(50));
        let t = std::time::Instant::now();
        let e = conn
            .query_row(endless, [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(e.to_string().contains("interrupt"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
    // The same (only) connection, borrowed again: no deadline left.
    let conn = s.reader();
    let n: i64 = conn
        .query_row(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) FROM c",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 300_000);
}
