//! SWIM membership simulated: many [`Membership`] cores over a seeded
//! in-memory network with latency, loss and partitions, on a simulated clock.
//! No sockets, no wall-clock time: the timings printed and asserted here are
//! simulated milliseconds, identical on every run of a seed.

#![allow(clippy::print_stdout, clippy::expect_used, reason = "test code")]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::SocketAddr;

use corro_replication::membership::{Identity, Membership, Output, State, Timer};
use corro_store::ActorId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

enum Event {
    Packet {
        to: SocketAddr,
        data: Vec<u8>,
    },
    Timer {
        node: usize,
        epoch: u32,
        timer: Timer<Identity>,
    },
}

struct Node {
    core: Membership,
    /// Bumped on restart: timers of the previous run are ignored.
    epoch: u32,
    up: bool,
    /// Paused (a stalled process): packets and timers wait until then.
    paused_until: u64,
}

struct Sim {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    rng: StdRng,
    loss: f64,
    latency: (u64, u64),
    /// Nodes on the minority side of a partition.
    cut: HashSet<usize>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8787))
}

fn actor(i: usize) -> ActorId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    ActorId(b)
}

impl Sim {
    fn new(n: usize, seed: u64, loss: f64, latency: (u64, u64)) -> Sim {
        let nodes = (0..n)
            .map(|i| Node {
                core: Membership::new(
                    Identity {
                        actor: actor(i),
                        addr: addr(i),
                        ts: 1,
                    },
                    seed ^ (i as u64 * 7919),
                ),
                epoch: 0,
                up: true,
                paused_until: 0,
            })
            .collect();
        Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            rng: StdRng::seed_from_u64(seed),
            loss,
            latency,
            cut: HashSet::new(),
        }
    }

    fn index(&self, a: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.core.identity().addr == a)
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn outputs(&mut self, from: usize, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send(to, data) => {
                    let (Some(dst), true) = (self.index(to.addr), self.nodes[from].up) else {
                        continue;
                    };
                    if self.rng.random_bool(self.loss)
                        || self.cut.contains(&from) != self.cut.contains(&dst)
                    {
                        continue;
                    }
                    let delay = self.rng.random_range(self.latency.0..=self.latency.1);
                    self.push(
                        self.now + delay,
                        Event::Packet {
                            to: to.addr,
                            data: data.to_vec(),
                        },
                    );
                }
                Output::Schedule(after, timer) => {
                    let epoch = self.nodes[from].epoch;
                    self.push(
                        self.now + after.as_millis() as u64,
                        Event::Timer {
                            node: from,
                            epoch,
                            timer,
                        },
                    );
                }
                _ => {}
            }
        }
    }

    fn announce(&mut self, from: usize, to: usize) {
        let out = self.nodes[from].core.announce(addr(to));
        self.outputs(from, out);
    }

    /// Runs the network until simulated time `until` (ms).
    fn run_until(&mut self, until: u64) {
        while let Some(&Reverse((at, seq))) = self.queue.peek() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            match event {
                Event::Packet { to, data } => {
                    let Some(i) = self.index(to) else { continue };
                    if !self.nodes[i].up {
                        continue;
                    }
                    if self.nodes[i].paused_until > self.now {
                        // The socket buffers what arrives while paused.
                        let at = self.nodes[i].paused_until;
                        self.push(at, Event::Packet { to, data });
                        continue;
                    }
                    let out = self.nodes[i]
                        .core
                        .handle_data(&data)
                        .expect("packets between simulated members are valid");
                    self.outputs(i, out);
                }
                Event::Timer { node, epoch, timer } => {
                    let n = &self.nodes[node];
                    if !n.up || n.epoch != epoch {
                        continue;
                    }
                    if n.paused_until > self.now {
                        // A paused process fires its timers when it resumes.
                        let at = n.paused_until;
                        self.push(at, Event::Timer { node, epoch, timer });
                        continue;
                    }
                    // Stale timers (old tokens) are refused by foca; harmless.
                    if let Ok(out) = self.nodes[node].core.handle_timer(timer) {
                        self.outputs(node, out);
                    }
                }
            }
        }
        self.now = until;
    }

    /// Runs until `cond` holds, checking every 100 ms; the time it took.
    fn run_while_not(&mut self, limit: u64, cond: impl Fn(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now - start <= limit {
            if cond(self) {
                return Some(self.now - start);
            }
            self.run_until(self.now + 100);
        }
        None
    }

    fn state_of(&self, observer: usize, target: usize) -> Option<State> {
        let a = addr(target);
        self.nodes[observer]
            .core
            .members()
            .into_iter()
            .find(|(id, _)| id.addr == a)
            .map(|(_, s)| s)
    }

    fn everyone_sees_everyone(&self) -> bool {
        let n = self.nodes.len();
        self.nodes
            .iter()
            .filter(|x| x.up)
            .all(|x| x.core.active().len() == n - 1)
    }

    fn all_see(&self, target: usize, want: State) -> bool {
        (0..self.nodes.len())
            .filter(|&i| i != target && self.nodes[i].up)
            .all(|i| self.state_of(i, target) == Some(want))
    }

    /// A cluster of `n` that has formed by everyone announcing to node 0.
    fn formed(n: usize, seed: u64, loss: f64, latency: (u64, u64)) -> Sim {
        let mut sim = Sim::new(n, seed, loss, latency);
        for i in 1..n {
            sim.announce(i, 0);
        }
        // Announces can be lost: retry every second while alone, as the
        // agent does.
        let start = sim.now;
        while !sim.everyone_sees_everyone() {
            assert!(
                sim.now - start < 120_000,
                "seed {seed}: {n} members did not all find each other"
            );
            for i in 1..n {
                if sim.nodes[i].core.active().is_empty() {
                    sim.announce(i, 0);
                }
            }
            sim.run_until(sim.now + 1_000);
        }
        let took = sim.now - start;
        println!("seed {seed}: {n} members formed a full view in {took} ms (simulated)");
        sim
    }
}

#[test]
fn members_find_each_other_through_one_contact() {
    for seed in 0..3 {
        Sim::formed(100, seed, 0.10, (1, 20));
    }
}

/// The failure-detection bar, in simulation: a member that dies is
/// marked down by every other member of a 20-member cluster within 10 s.
#[test]
fn a_dead_member_is_marked_down_everywhere_within_ten_seconds() {
    let mut worst = 0;
    for seed in 0..10 {
        let mut sim = Sim::formed(20, seed, 0.10, (1, 20));
        let victim = 1 + (seed as usize % 19);
        sim.nodes[victim].up = false;
        let took = sim
            .run_while_not(30_000, |s| s.all_see(victim, State::Down))
            .unwrap_or_else(|| panic!("seed {seed}: member {victim} never marked down everywhere"));
        worst = worst.max(took);
        assert!(
            took < 10_000,
            "seed {seed}: marked down everywhere only after {took} ms"
        );
    }
    println!("kill -> down on all 19 others: worst {worst} ms over 10 seeds (simulated)");
}

/// Suspicion before down: a member that stalls for less than the suspicion
/// time (a GC pause, a slow disk) is suspected at most, never declared down.
#[test]
fn a_briefly_paused_member_is_not_declared_down() {
    for seed in 0..5 {
        let mut sim = Sim::formed(20, seed, 0.0, (1, 5));
        let paused = 3;
        sim.nodes[paused].paused_until = sim.now + 2_500;
        let end = sim.now + 10_000;
        while sim.now < end {
            sim.run_until(sim.now + 100);
            if std::env::var("SWIM_TRACE").is_ok() {
                let states: Vec<_> = (0..20)
                    .filter(|&i| i != paused)
                    .map(|i| {
                        format!("{:?}", sim.state_of(i, paused))
                            .chars()
                            .nth(5)
                            .unwrap_or('?')
                    })
                    .collect();
                eprintln!("{} {}", sim.now, states.into_iter().collect::<String>());
            }
            for i in (0..20).filter(|&i| i != paused) {
                assert_ne!(
                    sim.state_of(i, paused),
                    Some(State::Down),
                    "seed {seed}: member {i} declared the paused member down"
                );
            }
        }
        assert!(sim.all_see(paused, State::Alive), "seed {seed}");
    }
}

/// A member that restarts with the same actor id and a later stamp replaces
/// its old incarnation: one entry per address, alive, with the new stamp.
#[test]
fn a_restarted_member_replaces_its_old_incarnation() {
    let mut sim = Sim::formed(10, 7, 0.0, (1, 5));
    let r = 4;
    sim.nodes[r].up = false;
    sim.run_until(sim.now + 1_000);
    sim.nodes[r] = Node {
        core: Membership::new(
            Identity {
                actor: actor(r),
                addr: addr(r),
                ts: 2,
            },
            99,
        ),
        epoch: sim.nodes[r].epoch + 1,
        up: true,
        paused_until: 0,
    };
    sim.announce(r, 0);
    sim.run_while_not(20_000, |s| {
        (0..10).filter(|&i| i != r).all(|i| {
            let m = s.nodes[i].core.members();
            let entries: Vec<_> = m.iter().filter(|(id, _)| id.addr == addr(r)).collect();
            entries.len() == 1 && entries[0].0.ts == 2 && entries[0].1 == State::Alive
        })
    })
    .expect("every member sees the restarted incarnation, once, alive");
}

/// A partition: each side declares the other down; after healing, periodic
/// announces to down members merge the views again.
#[test]
fn views_merge_after_a_partition_heals() {
    let mut sim = Sim::formed(30, 11, 0.05, (1, 20));
    sim.cut = (0..10).collect();
    sim.run_while_not(60_000, |s| {
        s.all_see(0, State::Down) || {
            // Members on node 0's side keep it alive; check the other side.
            (10..30).all(|i| s.state_of(i, 0) == Some(State::Down))
        }
    })
    .expect("the majority side declares the minority down");
    sim.cut.clear();
    let took = sim
        .run_while_not(120_000, |s| s.everyone_sees_everyone())
        .expect("views merge after healing");
    println!("partition healed: full view again after {took} ms (simulated)");
}
