//! Seeded simulation of anti-entropy over real stores.
//!
//! Several nodes (each a real `Store` on disk) write concurrently to a small
//! key space (so their writes conflict), including bulk transactions that
//! travel in chunks, and converge through sync rounds alone: each round a node
//! sends its `SyncState` to a random peer, plans what to pull, and receives
//! what the peer serves, over a network that loses, duplicates and reorders
//! messages. Part-way through, the cluster is partitioned and one node is
//! restarted from disk. After healing, every node must hold identical table
//! contents and identical bookkeeping, and every committed version must be
//! held everywhere (no acknowledged write lost).

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::collections::BTreeSet;
use std::path::Path;

use corro_replication::{SyncState, plan};
use corro_store::{ActorId, Changeset, SqlValue, Store, StoreOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const SCHEMA: &str =
    "CREATE TABLE kv (k INTEGER NOT NULL PRIMARY KEY, v TEXT, n INTEGER NOT NULL DEFAULT 0);";

fn open(dir: &Path, i: usize) -> Store {
    let s = Store::open(
        dir.join(format!("n{i}.db")),
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
    s.apply_schema_paths(&[schema]).unwrap();
    s
}

struct Net {
    rng: StdRng,
    loss: f64,
    dup: f64,
}

impl Net {
    fn lost(&mut self) -> bool {
        self.rng.random_bool(self.loss)
    }
}

/// `a` pulls from `b`. Returns the number of changesets delivered.
fn sync_round(a: &Store, b: &Store, net: &mut Net) -> usize {
    let mine = SyncState::from_books(&a.books());
    let theirs = SyncState::from_books(&b.books());
    if net.lost() {
        return 0; // the state exchange was lost
    }
    let requests = plan(&mine, &theirs, 100);
    let mut pieces: Vec<Changeset> = Vec::new();
    for r in requests {
        pieces.extend(b.changes_for(r.actor, r.versions).unwrap());
    }
    let mut delivered = Vec::new();
    for p in pieces {
        if net.lost() {
            continue;
        }
        if net.rng.random_bool(net.dup) {
            delivered.push(p.clone());
        }
        delivered.push(p);
    }
    delivered.shuffle(&mut net.rng);
    let n = delivered.len();
    // Arrives in a few messages.
    let per = net.rng.random_range(1..=8usize);
    for chunk in delivered.chunks(per) {
        a.apply(chunk.to_vec()).unwrap();
    }
    n
}

fn write(store: &Store, rng: &mut StdRng) -> Option<(ActorId, u64)> {
    let c = store
        .transact(|tx| {
            if rng.random_bool(0.05) {
                // A bulk transaction: travels as several chunks.
                let base = rng.random_range(0..1000i64);
                let mut stmt = tx.prepare("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)")?;
                for i in 0..300 {
                    stmt.execute(&[SqlValue::Integer(1000 + base + i), SqlValue::Text(format!("bulk-{base}-{i}-{}", "x".repeat(40)))])?;
                }
                return Ok(());
            }
            for _ in 0..rng.random_range(1..4) {
                let k = SqlValue::Integer(rng.random_range(0..20));
                match rng.random_range(0..4) {
                    0 => tx.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", &[k, SqlValue::Text(format!("r{}", rng.random::<u16>()))])?,
                    1 => tx.execute("UPDATE kv SET n = n + 1 WHERE k = ?", &[k])?,
                    2 => tx.execute("DELETE FROM kv WHERE k = ?", &[k])?,
                    _ => tx.execute(
                        "INSERT INTO kv (k, v) VALUES (?, 'new') ON CONFLICT (k) DO UPDATE SET v = v || '+'",
                        &[k],
                    )?,
                };
            }
            Ok(())
        })
        .unwrap();
    c.version.map(|v| (store.actor_id(), v))
}

fn dump(s: &Store) -> Vec<(i64, Option<String>, i64)> {
    let r = s.reader();
    let mut stmt = r.prepare("SELECT k, v, n FROM kv ORDER BY k").unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn simulate(seed: u64, nodes: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let mut stores: Vec<Store> = (0..nodes).map(|i| open(dir.path(), i)).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut net = Net {
        rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        loss: 0.1,
        dup: 0.1,
    };
    let mut committed: BTreeSet<(ActorId, u64)> = BTreeSet::new();
    for round in 0..40 {
        // Rounds 10..25: two sides that cannot reach each other.
        let partitioned = (10..25).contains(&round);
        if round == 18 {
            // Restart node 0 from its file mid-partition.
            let i = 0;
            stores[i] = open(dir.path(), i);
        }
        for _ in 0..nodes / 2 {
            let w = rng.random_range(0..nodes);
            if let Some(v) = write(&stores[w], &mut rng) {
                committed.insert(v);
            }
        }
        for a in 0..nodes {
            let b = rng.random_range(0..nodes);
            if a == b || (partitioned && (a < nodes / 2) != (b < nodes / 2)) {
                continue;
            }
            sync_round(&stores[a], &stores[b], &mut net);
        }
    }
    // Heal: no loss, every node pulls from every other until nothing moves.
    net.loss = 0.0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut moved = 0;
        for a in 0..nodes {
            for b in 0..nodes {
                if a != b {
                    moved += sync_round(&stores[a], &stores[b], &mut net);
                }
            }
        }
        if moved == 0 {
            break;
        }
        assert!(
            rounds < 50,
            "seed {seed}: no convergence after {rounds} healed rounds"
        );
    }
    let first = dump(&stores[0]);
    let books = stores[0].books();
    for (i, s) in stores.iter().enumerate() {
        s.verify().unwrap();
        assert_eq!(dump(s), first, "seed {seed}: node {i} differs");
        assert_eq!(
            s.books(),
            books,
            "seed {seed}: node {i} bookkeeping differs"
        );
    }
    for (actor, v) in &committed {
        assert!(
            books[actor].holds(*v),
            "seed {seed}: committed version {v} of {actor} lost"
        );
    }
    assert!(!first.is_empty());
    rounds
}

#[test]
fn nodes_converge_through_lossy_anti_entropy_partitions_and_restarts() {
    for seed in 1..=6 {
        let rounds = simulate(seed, 6);
        println!("seed {seed}: converged after {rounds} full healed rounds");
    }
}
