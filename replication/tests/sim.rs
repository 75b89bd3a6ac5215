//! Seeded simulation of replication over real stores.
//!
//! Many nodes (each a real `Store` on disk) write concurrently to a small
//! key space (so their writes conflict), including bulk transactions that
//! travel in chunks. Committed versions are broadcast with the decisions the
//! agent uses (`broadcast::Pending`: targets of a local commit, forwarding
//! of what a receiver found new), and every round each node pulls from a
//! random peer through the very round driver the agent runs
//! (`round::pull_from` / `round::serve` over `round::Transport`), here over
//! an in-memory transport that loses the opening exchange, loses,
//! duplicates and reorders the served frames. Part-way through, the cluster
//! is partitioned and nodes crash and restart from disk. After healing,
//! every node must hold identical table contents and identical bookkeeping,
//! and every committed version must be held everywhere (no acknowledged
//! write lost). Convergence after healing is printed in sync rounds.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Arc, Mutex};

use corro_replication::broadcast::Pending;
use corro_replication::round::{self, BoxError, Limits, RoundStore, RoundStream, Transport};
use corro_replication::{Message, SyncState};
use corro_store::{ActorId, Changeset, SqlValue, Store, StoreOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

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
    /// Share of rounds that open with a digest.
    digest: f64,
}

impl Net {
    fn lost(&mut self) -> bool {
        self.rng.random_bool(self.loss)
    }
}

/// A node's store as a round uses it.
#[derive(Clone)]
struct SimStore(Store);

impl RoundStore for SimStore {
    fn state(&self) -> SyncState {
        SyncState::from_books(&self.0.books())
    }

    fn read(
        &self,
        actor: ActorId,
        versions: RangeInclusive<u64>,
        budget: usize,
    ) -> Result<(Vec<Changeset>, Option<u64>), BoxError> {
        Ok(self.0.changes_for_budget(actor, versions, budget)?)
    }

    async fn apply(&self, sets: Vec<Changeset>) -> Result<(), BoxError> {
        self.0.apply(sets)?;
        Ok(())
    }
}

/// One direction's faults, shared by the streams of a round.
struct Faults {
    rng: StdRng,
    loss: f64,
    dup: f64,
    digest: f64,
}

/// One end of an in-memory round stream. The responder's end loses,
/// duplicates and reorders `SyncChanges` frames (held back and released
/// shuffled before its next other message); other messages arrive as sent.
struct MemStream {
    /// The initiator opens with a digest (a share of the rounds, at random).
    digest: bool,
    tx: Option<mpsc::UnboundedSender<Message>>,
    rx: mpsc::UnboundedReceiver<Message>,
    faults: Option<Arc<Mutex<Faults>>>,
    held: Vec<Message>,
}

impl MemStream {
    fn pair(faults: Arc<Mutex<Faults>>) -> (MemStream, MemStream) {
        let (a_tx, b_rx) = mpsc::unbounded_channel();
        let (b_tx, a_rx) = mpsc::unbounded_channel();
        (
            MemStream {
                digest: false,
                tx: Some(a_tx),
                rx: a_rx,
                faults: None,
                held: Vec::new(),
            },
            MemStream {
                digest: false,
                tx: Some(b_tx),
                rx: b_rx,
                faults: Some(faults),
                held: Vec::new(),
            },
        )
    }

    fn flush(&mut self) {
        if let Some(f) = &self.faults {
            self.held.shuffle(&mut f.lock().unwrap().rng);
        }
        for m in self.held.drain(..) {
            if let Some(tx) = &self.tx {
                let _ = tx.send(m);
            }
        }
    }
}

impl RoundStream for MemStream {
    async fn send(&mut self, msg: Message) -> Result<(), BoxError> {
        if let (Message::SyncChanges(_), Some(f)) = (&msg, &self.faults) {
            let mut f = f.lock().unwrap();
            let (loss, dup) = (f.loss, f.dup);
            if f.rng.random_bool(loss) {
                return Ok(());
            }
            if f.rng.random_bool(dup) {
                self.held.push(msg.clone());
            }
            self.held.push(msg);
            return Ok(());
        }
        self.flush();
        match &self.tx {
            Some(tx) => tx.send(msg).map_err(|_| "the peer went away".into()),
            None => Err("send after finish".into()),
        }
    }

    async fn recv(&mut self) -> Result<Option<Message>, BoxError> {
        Ok(self.rx.recv().await)
    }

    async fn finish(&mut self) -> Result<(), BoxError> {
        self.flush();
        self.tx = None;
        Ok(())
    }

    fn digest(&self) -> bool {
        self.digest
    }
}

/// Rounds between the simulated nodes: `open(b)` connects to node `b`,
/// whose side runs `round::serve` on a task of its own (unless the opening
/// exchange is lost).
struct MemTransport<'a> {
    stores: &'a [Store],
    faults: Arc<Mutex<Faults>>,
    limits: Limits,
    responders: Mutex<Vec<tokio::task::JoinHandle<Result<round::Served, round::RoundError>>>>,
}

impl Transport for MemTransport<'_> {
    type Peer = usize;
    type Stream = MemStream;

    async fn open(&self, peer: usize) -> Result<MemStream, BoxError> {
        let lost = {
            let mut f = self.faults.lock().unwrap();
            let loss = f.loss;
            f.rng.random_bool(loss)
        };
        if lost {
            return Err("the opening exchange was lost".into());
        }
        let (mut mine, mut theirs) = MemStream::pair(self.faults.clone());
        mine.digest = {
            let mut f = self.faults.lock().unwrap();
            let share = f.digest;
            f.rng.random_bool(share)
        };
        let store = SimStore(self.stores[peer].clone());
        let limits = self.limits;
        self.responders
            .lock()
            .unwrap()
            .push(tokio::spawn(async move {
                let first = theirs
                    .recv()
                    .await
                    .map_err(round::RoundError::Transport)?
                    .ok_or(round::RoundError::Ended)?;
                round::serve(&mut theirs, first, &store.state(), &store, &limits).await
            }));
        Ok(mine)
    }
}

/// `a` pulls from `b` through the agent's round driver over the lossy
/// in-memory transport (frames of a random size, a small read budget so
/// serving takes several steps). Returns the number of changesets `a`
/// received.
fn sync_round(
    rt: &tokio::runtime::Runtime,
    stores: &[Store],
    a: usize,
    b: usize,
    net: &mut Net,
) -> usize {
    let transport = MemTransport {
        stores,
        faults: Arc::new(Mutex::new(Faults {
            rng: StdRng::seed_from_u64(net.rng.random()),
            loss: net.loss,
            dup: net.dup,
            digest: net.digest,
        })),
        limits: Limits {
            max_versions: 100,
            batch_changes: 50,
            read_budget: net.rng.random_range(1..=200),
            frame_changesets: net.rng.random_range(1..=8),
        },
        responders: Mutex::new(Vec::new()),
    };
    let store = SimStore(stores[a].clone());
    rt.block_on(async {
        let pulled = round::pull_from(&transport, b, &store, &transport.limits).await;
        let responders = std::mem::take(&mut *transport.responders.lock().unwrap());
        for r in responders {
            let served = r.await.unwrap();
            assert!(served.is_ok(), "the responder failed: {served:?}");
        }
        match pulled {
            Ok(p) => {
                assert!(p.theirs.is_some(), "a pull ends on the responder's state");
                p.received
            }
            // Only the opening exchange is ever lost.
            Err(round::RoundError::Transport(e)) => {
                assert_eq!(e.to_string(), "the opening exchange was lost");
                0
            }
            Err(e) => panic!("round failed: {e}"),
        }
    })
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

/// A broadcast in flight: to, from, hops so far, changesets.
struct Msg {
    to: usize,
    from: usize,
    hops: u8,
    sets: Vec<Changeset>,
}

/// Delivers broadcasts (and the forwards they cause) until none is in
/// flight; `reachable(a, b)` says whether the network connects a and b.
/// A receiver's decision to forward is the agent's
/// (`Pending::received`, then `Pending::targets`).
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
                let fresh = out.duplicates < m.sets.len();
                if let Some(fwd) = Pending::received(m.from, m.hops, m.sets.clone(), fresh) {
                    let (targets, hops) = fwd.targets(&members[m.to], &mut net.rng);
                    for t in targets {
                        next.push(Msg {
                            to: t,
                            from: m.to,
                            hops,
                            sets: fwd.sets.clone(),
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

fn simulate(seed: u64, nodes: usize, rounds: usize, writes_per_round: usize, digest: f64) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut stores: Vec<Store> = (0..nodes).map(|i| open(dir.path(), i)).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut net = Net {
        rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        loss: 0.1,
        dup: 0.1,
        digest,
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
                let (targets, hops) =
                    Pending::<usize>::local(sets.clone()).targets(&members[w], &mut net.rng);
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
        for (a, peers) in members.iter().enumerate() {
            let b = peers[rng.random_range(0..nodes - 1)];
            if reachable(a, b) {
                sync_round(&rt, &stores, a, b, &mut net);
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
        for (a, peers) in members.iter().enumerate() {
            let b = peers[rng.random_range(0..nodes - 1)];
            sync_round(&rt, &stores, a, b, &mut net);
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
    // Half the rounds open with a digest (a cluster in a rolling upgrade
    // mixes both).
    for seed in 1..=2 {
        let rounds = simulate(seed, 100, 12, 4, 0.5);
        println!("seed {seed}: 100 nodes identical {rounds} sync rounds after healing");
    }
}

#[test]
fn small_clusters_converge_under_many_seeds() {
    // Whole-state rounds only, then digest rounds only.
    for seed in 10..=25 {
        let digest = if seed < 18 { 0.0 } else { 1.0 };
        let rounds = simulate(seed, 6, 40, 3, digest);
        println!(
            "seed {seed}: 6 nodes identical {rounds} sync rounds after healing (digest share {digest})"
        );
    }
}
