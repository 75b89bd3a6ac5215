//! Property tests of the merge laws, pushing real SQL through the capture
//! triggers.
//!
//! - convergence: replicas that receive the same changes in any order, with
//!   duplicates, in chunks, or through anti-entropy serving from another
//!   replica's current state, end with identical tables and bookkeeping;
//! - intent: when every writer has seen every earlier change before writing,
//!   the merged state equals running the same statements one after another on
//!   a plain SQLite table (the oracle).

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::path::Path;

use corro_store::{Changeset, SqlValue, Store, StoreOptions, chunk_version};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;

const SCHEMA: &str = "
CREATE TABLE t (
    k TEXT NOT NULL PRIMARY KEY,
    i INTEGER,
    r REAL,
    x TEXT,
    b BLOB,
    n NUMERIC,
    a,
    d TEXT NOT NULL DEFAULT 'dflt'
);
CREATE TABLE u (k1 INTEGER NOT NULL, k2 TEXT NOT NULL, v, PRIMARY KEY (k1, k2)) WITHOUT ROWID;
CREATE TABLE p (id INTEGER NOT NULL PRIMARY KEY, v);
CREATE TABLE s (rowid TEXT NOT NULL PRIMARY KEY, _rowid_, oid);
";

const COLS: [&str; 7] = ["i", "r", "x", "b", "n", "a", "d"];

fn value(i: u8) -> SqlValue {
    match i % 8 {
        0 => SqlValue::Integer(1),
        1 => SqlValue::Real(1.0),
        2 => SqlValue::Text("1".into()),
        3 => SqlValue::Blob(vec![1]),
        4 => SqlValue::Null,
        5 => SqlValue::Integer(2),
        6 => SqlValue::Text("a".into()),
        _ => SqlValue::Real(2.5),
    }
}

fn key(k: u8) -> SqlValue {
    SqlValue::Text(format!("k{}", k % 4))
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, usize, u8),
    InsertOrReplace(u8, usize, u8),
    Upsert(u8, usize, u8),
    Update(u8, usize, u8),
    UpdateAll(usize, u8),
    UpdatePk(u8, u8),
    Delete(u8),
    InsertThenDelete(u8),
    NoopUpdate(u8, usize),
    UInsert(u8, u8, u8),
    UDelete(u8),
    PInsert(u8, u8),
    PDelete(u8),
    /// Two rows in one statement (the same key twice replaces within it).
    MultiInsert(u8, u8, u8),
    /// Many rows moved by one `INSERT ... SELECT`.
    PShift(u8),
    /// A table whose columns hide every rowid alias.
    SInsert(u8, u8),
    SDelete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..COLS.len();
    prop_oneof![
        4 => (any::<u8>(), c.clone(), any::<u8>()).prop_map(|(k, c, v)| Op::Insert(k, c, v)),
        2 => (any::<u8>(), c.clone(), any::<u8>()).prop_map(|(k, c, v)| Op::InsertOrReplace(k, c, v)),
        2 => (any::<u8>(), c.clone(), any::<u8>()).prop_map(|(k, c, v)| Op::Upsert(k, c, v)),
        4 => (any::<u8>(), c.clone(), any::<u8>()).prop_map(|(k, c, v)| Op::Update(k, c, v)),
        1 => (c.clone(), any::<u8>()).prop_map(|(c, v)| Op::UpdateAll(c, v)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::UpdatePk(a, b)),
        2 => any::<u8>().prop_map(Op::Delete),
        1 => any::<u8>().prop_map(Op::InsertThenDelete),
        1 => (any::<u8>(), c).prop_map(|(k, c)| Op::NoopUpdate(k, c)),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, v)| Op::UInsert(a, b, v)),
        1 => any::<u8>().prop_map(Op::UDelete),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, v)| Op::PInsert(a, v)),
        1 => any::<u8>().prop_map(Op::PDelete),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, v)| Op::MultiInsert(a, b, v)),
        1 => any::<u8>().prop_map(Op::PShift),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, v)| Op::SInsert(a, v)),
        1 => any::<u8>().prop_map(Op::SDelete),
    ]
}

/// The statements of one op: (sql, params).
fn statements(op: &Op) -> Vec<(String, Vec<SqlValue>)> {
    let s = |sql: String, p: Vec<SqlValue>| (sql, p);
    match op {
        Op::Insert(k, c, v) => vec![s(
            format!("INSERT INTO t (k, {}) VALUES (?, ?)", COLS[*c]),
            vec![key(*k), value(*v)],
        )],
        Op::InsertOrReplace(k, c, v) => vec![s(
            format!("INSERT OR REPLACE INTO t (k, {}) VALUES (?, ?)", COLS[*c]),
            vec![key(*k), value(*v)],
        )],
        Op::Upsert(k, c, v) => vec![s(
            format!(
                "INSERT INTO t (k, {0}) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET {0} = excluded.{0}",
                COLS[*c]
            ),
            vec![key(*k), value(*v)],
        )],
        Op::Update(k, c, v) => vec![s(
            format!("UPDATE t SET {} = ? WHERE k = ?", COLS[*c]),
            vec![value(*v), key(*k)],
        )],
        Op::UpdateAll(c, v) => vec![s(format!("UPDATE t SET {} = ?", COLS[*c]), vec![value(*v)])],
        Op::UpdatePk(a, b) => vec![s(
            "UPDATE t SET k = ? WHERE k = ?".into(),
            vec![key(*b), key(*a)],
        )],
        Op::Delete(k) => vec![s("DELETE FROM t WHERE k = ?".into(), vec![key(*k)])],
        Op::InsertThenDelete(k) => vec![
            s(
                "INSERT OR REPLACE INTO t (k, x) VALUES (?, 'tmp')".into(),
                vec![key(*k)],
            ),
            s("DELETE FROM t WHERE k = ?".into(), vec![key(*k)]),
        ],
        Op::NoopUpdate(k, c) => vec![s(
            format!("UPDATE t SET {0} = {0} WHERE k = ?", COLS[*c]),
            vec![key(*k)],
        )],
        Op::UInsert(a, b, v) => vec![s(
            "INSERT OR REPLACE INTO u (k1, k2, v) VALUES (?, ?, ?)".into(),
            vec![SqlValue::Integer(i64::from(*a % 3)), key(*b), value(*v)],
        )],
        Op::UDelete(a) => vec![s(
            "DELETE FROM u WHERE k1 = ?".into(),
            vec![SqlValue::Integer(i64::from(*a % 3))],
        )],
        Op::PInsert(a, v) => vec![s(
            "INSERT OR REPLACE INTO p (id, v) VALUES (?, ?)".into(),
            vec![SqlValue::Integer(i64::from(*a % 4)), value(*v)],
        )],
        Op::PDelete(a) => vec![s(
            "DELETE FROM p WHERE id = ?".into(),
            vec![SqlValue::Integer(i64::from(*a % 4))],
        )],
        Op::MultiInsert(a, b, v) => vec![s(
            "INSERT OR REPLACE INTO t (k, x) VALUES (?, 'first'), (?, ?)".into(),
            vec![key(*a), key(*b), value(*v)],
        )],
        Op::PShift(d) => vec![s(
            "INSERT OR REPLACE INTO p (id, v) SELECT (id + ?) % 4, v FROM p".into(),
            vec![SqlValue::Integer(i64::from(*d % 4))],
        )],
        Op::SInsert(a, v) => vec![s(
            "INSERT OR REPLACE INTO s (rowid, oid) VALUES (?, ?)".into(),
            vec![key(*a), value(*v)],
        )],
        Op::SDelete(a) => vec![s("DELETE FROM s WHERE rowid = ?".into(), vec![key(*a)])],
    }
}

fn open(dir: &Path, name: &str) -> Store {
    let store = Store::open(
        dir.join(format!("{name}.db")),
        StoreOptions {
            readers: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let schema = dir.join("schema.sql");
    if !schema.exists() {
        std::fs::write(&schema, SCHEMA).unwrap();
    }
    store.apply_schema_paths(&[schema]).unwrap();
    store
}

/// Runs one transaction (a few ops) on a store; Err if any statement failed.
fn run_store(store: &Store, ops: &[Op]) -> Result<Vec<Changeset>, String> {
    let committed = store
        .transact(|tx| {
            for op in ops {
                for (sql, params) in statements(op) {
                    tx.execute(&sql, &params)?;
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    Ok(committed.changesets(store.actor_id()))
}

fn run_oracle(conn: &Connection, ops: &[Op]) -> Result<(), String> {
    let tx = conn.unchecked_transaction().map_err(|e| e.to_string())?;
    for op in ops {
        for (sql, params) in statements(op) {
            tx.execute(&sql, rusqlite::params_from_iter(params.iter()))
                .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

type Dump = Vec<(String, Vec<Vec<SqlValue>>)>;

fn dump(conn: &Connection) -> Dump {
    [
        "SELECT * FROM t ORDER BY k",
        "SELECT * FROM u ORDER BY k1, k2",
        "SELECT * FROM p ORDER BY id",
        "SELECT * FROM s ORDER BY rowid",
    ]
    .iter()
    .map(|q| {
        let mut stmt = conn.prepare(q).unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get::<_, SqlValue>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (q.to_string(), rows)
    })
    .collect()
}

/// Re-chunks a complete changeset into small pieces.
fn rechunk(set: &Changeset, max: usize) -> Vec<Changeset> {
    match set {
        Changeset::Version {
            actor,
            version,
            last_seq,
            ts,
            changes,
            seqs,
        } if *seqs.start() == 0 && seqs.end() == last_seq => {
            chunk_version(*actor, *version, *last_seq, *ts, changes.clone(), max)
        }
        other => vec![other.clone()],
    }
}

fn check_same(stores: &[&Store]) {
    let first = dump(&stores[0].reader());
    let books = stores[0].books();
    for s in stores {
        s.verify().unwrap();
        assert_eq!(dump(&s.reader()), first, "table contents differ");
        assert_eq!(s.books(), books, "bookkeeping differs");
    }
    for b in books.values() {
        assert!(
            b.needed().is_empty(),
            "a replica still needs versions: {b:?}"
        );
    }
}

/// Convergence: concurrent writes with partial exchanges, then full delivery
/// in any order.
fn converge(steps: Vec<(usize, Vec<Op>, u64)>, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let actors: Vec<Store> = (0..3).map(|i| open(dir.path(), &format!("a{i}"))).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log: Vec<Changeset> = Vec::new();
    for (who, ops, mask) in steps {
        let store = &actors[who % 3];
        // Concurrent writers: each has seen only a random part of the log.
        let seen: Vec<Changeset> = log
            .iter()
            .enumerate()
            .filter(|(i, _)| mask >> (i % 64) & 1 == 1)
            .map(|(_, c)| c.clone())
            .collect();
        store.apply(seen).unwrap();
        if let Ok(sets) = run_store(store, &ops) {
            log.extend(sets);
        }
    }
    // A fresh replica gets everything shuffled, duplicated and in small pieces,
    // one piece per call.
    let fresh = open(dir.path(), "fresh");
    let mut pieces: Vec<Changeset> = log.iter().flat_map(|c| rechunk(c, 48)).collect();
    let dups: Vec<Changeset> = pieces
        .iter()
        .filter(|_| rng.random_bool(0.3))
        .cloned()
        .collect();
    pieces.extend(dups);
    pieces.shuffle(&mut rng);
    for p in pieces {
        fresh.apply(vec![p]).unwrap();
    }
    // The original actors get everything in one shuffled batch.
    for a in &actors {
        let mut all = log.clone();
        all.shuffle(&mut rng);
        a.apply(all).unwrap();
    }
    // Anti-entropy: a replica fed only by what another serves from its current
    // state (overwritten changes missing, cleared versions reported as such).
    let synced = open(dir.path(), "synced");
    for (actor, b) in actors[1].books() {
        let served = actors[1].changes_for(actor, 1..=b.head).unwrap();
        synced.apply(served).unwrap();
    }
    let mut all: Vec<&Store> = actors.iter().collect();
    all.push(&fresh);
    all.push(&synced);
    check_same(&all);
}

/// Intent: sequential history on random actors equals the plain oracle.
fn intent(steps: Vec<(usize, Vec<Op>)>) {
    let dir = tempfile::tempdir().unwrap();
    let actors: Vec<Store> = (0..3).map(|i| open(dir.path(), &format!("a{i}"))).collect();
    let oracle = Connection::open_in_memory().unwrap();
    oracle.execute_batch(SCHEMA).unwrap();
    let mut log: Vec<Changeset> = Vec::new();
    for (who, ops) in steps {
        let store = &actors[who % 3];
        store.apply(log.clone()).unwrap();
        let ours = run_store(store, &ops);
        let theirs = run_oracle(&oracle, &ops);
        assert_eq!(
            ours.is_ok(),
            theirs.is_ok(),
            "store said {ours:?}, plain SQLite said {theirs:?} for {ops:?}"
        );
        if let Ok(sets) = ours {
            log.extend(sets);
        }
        assert_eq!(dump(&store.reader()), dump(&oracle), "after {ops:?}");
    }
    for a in &actors {
        a.apply(log.clone()).unwrap();
        assert_eq!(dump(&a.reader()), dump(&oracle));
    }
    let refs: Vec<&Store> = actors.iter().collect();
    check_same(&refs);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn replicas_converge_whatever_the_delivery_order(
        steps in prop::collection::vec((0usize..3, prop::collection::vec(op(), 1..4), any::<u64>()), 1..14),
        seed in any::<u64>(),
    ) {
        converge(steps, seed);
    }

    #[test]
    fn sequential_histories_match_plain_sqlite(
        steps in prop::collection::vec((0usize..3, prop::collection::vec(op(), 1..4)), 1..14),
    ) {
        intent(steps);
    }
}
