//! Seeded simulation of replication over real stores.
//!
//! Many nodes (each a real `Store` on disk) write concurrently to a small
//! key space (so their writes conflict), including bulk transactions that
//! travel in chunks. Committed versions are broadcast with the targeting core
//! (`broadcast::local_targets`, receivers that learn something forward with
//! `broadcast::forward_targets`), and every round each node pulls from a
//! random peer through the same sync sessions the agent runs
//! (`session::Pull`/`session::Serve`: state, plan, served changesets in
//! frames, the server's state, `SyncDone`), all over a network that loses,
//! duplicates and reorders messages. Part-way through, the cluster is partitioned and nodes crash and
//! restart from disk. After healing, every node must hold identical table
//! contents and identical bookkeeping, and every committed version must be
//! held everywhere (no acknowledged write lost). Convergence after healing
//! is printed in sync rounds.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::collections::BTreeSet;
use std::path::Path;

use corro_replication::broadcast::{forward_targets, local_targets};
use corro_replication::session::{Pull, Serve, Step};
use corro_replication::{MAX_HOPS, Message, SyncState};
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

/// `a` pulls from `b` through the sync sessions the agent runs
/// (`session::Pull` on `a`, `session::Serve` on `b`); the network may lose,
/// duplicate and reorder the changesets, split into frames of random size.
/// Returns the number of changesets delivered.
fn sync_round(a: &Store, b: &Store, net: &mut Net) -> usize {
    let (mut pull, first) = Pull::open(SyncState::from_books(&a.books()), 50);
    if net.lost() {
        return 0; // the state exchange was lost
    }
    let (mut serve, _theirs, requests) =
        Serve::open(first, &SyncState::from_books(&b.books()), 100, 50).unwrap();
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
    let carry = |steps: Vec<Step>, store: &Store| -> (Vec<Message>, bool) {
        let (mut sent, mut done) = (Vec::new(), false);
        for step in steps {
            match step {
                Step::Apply(sets) => {
                    store.apply(sets).unwrap();
                }
                Step::Send(m) => sent.push(m),
                Step::Done => done = true,
            }
        }
        (sent, done)
    };
    // Arrives in a few frames.
    let per = net.rng.random_range(1..=8usize);
    for chunk in delivered.chunks(per) {
        let steps = pull
            .on_message(Message::SyncChanges(chunk.to_vec()))
            .unwrap();
        let (sent, done) = carry(steps, a);
        assert!(sent.is_empty() && !done);
    }
    let steps = pull
        .on_message(serve.served(SyncState::from_books(&b.books())))
        .unwrap();
    let (sent, done) = carry(steps, a);
    assert!(done, "the puller ends the round on the server's state");
    for m in sent {
        let (back, done) = carry(serve.on_message(m).unwrap(), b);
        assert!(back.is_empty() && done);
    }
    n
}

fn write(store: &Store, rng: &mut StdRng) -> Option<(ActorId, u64, Vec<Changeset>)> {
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
    let v = c.version?;
    let sets = store.changes_for(store.actor_id(), v..=v).unwrap();
    Some((store.actor_id(), v, sets))
}

/// A broadcast in flight: changesets, hops so far, sender.
struct Msg {
    to: usize,
    from: usize,
    hops: u8,
    sets: Vec<Changeset>,
}

/// Delivers broadcasts (and the forwards they cause) until none is in
/// flight; `reachable(a, b)` says whether the network connects a and b.
fn spread(
    stores: &[Store],
    mut flight: Vec<Msg>,
    net: &mut Net,
    reachable: &dyn Fn(usize, usize) -> bool,
) -> usize {
    let members: Vec<Vec<usize>> = (0..stores.len())
        .map(|i| (0..stores.len()).filter(|&j| j != i).collect())
        .collect();
    let mut delivered = 0;
    while !flight.is_empty() {
        flight.shuffle(&mut net.rng);
        let mut next = Vec::new();
        for m in flight {
            if !reachable(m.from, m.to) || net.lost() {
                continue;
            }
            delivered += 1;
            let copies = if net.rng.random_bool(net.dup) { 2 } else { 1 };
            for _ in 0..copies {
                let out = stores[m.to].apply(m.sets.clone()).unwrap();
                if out.duplicates < m.sets.len() && m.hops < MAX_HOPS {
                    for t in forward_targets(&members[m.to], Some(m.from), m.hops + 1, &mut net.rng)
                    {
                        next.push(Msg {
                            to: t,
                            from: m.to,
                            hops: m.hops + 1,
                            sets: m.sets.clone(),
                        });
                    }
                }
            }
        }
        flight = next;
    }
    delivered
}

fn dump(s: &Store) -> Vec<(i64, Option<String>, i64)> {
    let r = s.reader();
    let mut stmt = r.prepare("SELECT k, v, n FROM kv ORDER BY k").unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn simulate(seed: u64, nodes: usize, rounds: usize, writes_per_round: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let mut stores: Vec<Store> = (0..nodes).map(|i| open(dir.path(), i)).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut net = Net {
        rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        loss: 0.1,
        dup: 0.1,
    };
    let members: Vec<Vec<usize>> = (0..nodes)
        .map(|i| (0..nodes).filter(|&j| j != i).collect())
        .collect();
    let mut committed: BTreeSet<(ActorId, u64)> = BTreeSet::new();
    // Partitioned from a third of the way until the writes stop.
    let (cut_from, cut_to) = (rounds / 3, rounds);
    for round in 0..rounds {
        // Two sides that cannot reach each other for a while.
        let partitioned = (cut_from..cut_to).contains(&round);
        let reachable =
            move |a: usize, b: usize| !partitioned || (a < nodes / 2) == (b < nodes / 2);
        if round == (cut_from + cut_to) / 2 {
            // Crash and restart a node on each side from its file.
            for i in [0, nodes - 1] {
                stores[i] = open(dir.path(), i);
            }
        }
        let mut flight = Vec::new();
        for _ in 0..writes_per_round {
            let w = rng.random_range(0..nodes);
            if let Some((actor, v, sets)) = write(&stores[w], &mut rng) {
                committed.insert((actor, v));
                let (targets, hops) = local_targets(&members[w], &mut net.rng);
                for t in targets {
                    flight.push(Msg {
                        to: t,
                        from: w,
                        hops,
                        sets: sets.clone(),
                    });
                }
            }
        }
        spread(&stores, flight, &mut net, &reachable);
        for a in 0..nodes {
            let b = members[a][rng.random_range(0..nodes - 1)];
            if reachable(a, b) {
                sync_round(&stores[a], &stores[b], &mut net);
            }
        }
    }
    // Heal (the network stays lossy): every node pulls from a random peer
    // each round until all hold the same.
    let identical = |stores: &[Store]| {
        let books = stores[0].books();
        stores.iter().all(|s| s.books() == books)
    };
    let mut healed_rounds = 0;
    while !identical(&stores) {
        healed_rounds += 1;
        assert!(
            healed_rounds < 100,
            "seed {seed}: no convergence after {healed_rounds} healed rounds"
        );
        for a in 0..nodes {
            let b = members[a][rng.random_range(0..nodes - 1)];
            sync_round(&stores[a], &stores[b], &mut net);
        }
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
    healed_rounds
}

#[test]
fn a_hundred_nodes_converge_through_loss_partitions_and_crashes() {
    for seed in 1..=2 {
        let rounds = simulate(seed, 100, 12, 4);
        println!("seed {seed}: 100 nodes identical {rounds} sync rounds after healing");
    }
}

#[test]
fn small_clusters_converge_under_many_seeds() {
    for seed in 10..=25 {
        let rounds = simulate(seed, 6, 40, 3);
        println!("seed {seed}: 6 nodes identical {rounds} sync rounds after healing");
    }
}
