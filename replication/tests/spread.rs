//! How fast a write spreads: the broadcast targeting core
//! ([`corro_replication::broadcast`]) plus anti-entropy pulls, simulated over
//! a seeded network with 100 ms links, on a simulated clock. Writes are
//! tracked as ids (no stores: this measures the protocol's reach and cost,
//! not SQLite). Prints p50/p99 time for a write to reach every node and the
//! broadcast messages sent per write.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use corro_replication::broadcast::{forward_targets, local_targets};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

enum Ev {
    /// A client commits `write` on `node`.
    Commit { node: usize, write: usize },
    /// A broadcast of `write` arrives at `to` from `from` with `hops`.
    Broadcast {
        to: usize,
        from: usize,
        write: usize,
        hops: u8,
    },
    /// `node` starts an anti-entropy round with a random peer.
    Sync { node: usize },
    /// `to` receives the writes its sync peer held and it lacked.
    Pulled { to: usize, writes: Vec<usize> },
}

struct Sim {
    n: usize,
    rng: StdRng,
    latency_ms: u64,
    loss: f64,
    queue: BinaryHeap<Reverse<(u64, usize)>>,
    events: Vec<Option<Ev>>,
    members: Vec<Vec<usize>>,
    held: Vec<Vec<bool>>,
    committed_at: Vec<u64>,
    reached: Vec<usize>,
    last: Vec<u64>,
    done: usize,
    messages: u64,
}

struct Outcome {
    p50_ms: u64,
    p99_ms: u64,
    max_ms: u64,
    messages_per_write: f64,
}

impl Sim {
    fn push(&mut self, at: u64, e: Ev) {
        self.events.push(Some(e));
        self.queue.push(Reverse((at, self.events.len() - 1)));
    }

    fn link(&mut self) -> u64 {
        self.latency_ms * self.rng.random_range(90..=110) / 100
    }

    /// `node` gets `w`; true when it was new there.
    fn receive(&mut self, node: usize, w: usize, now: u64) -> bool {
        if self.held[node][w] {
            return false;
        }
        self.held[node][w] = true;
        self.reached[w] += 1;
        self.last[w] = now;
        if self.reached[w] == self.n {
            self.done += 1;
        }
        true
    }

    fn send(&mut self, now: u64, targets: Vec<usize>, from: usize, write: usize, hops: u8) {
        for to in targets {
            self.messages += 1;
            if !self.rng.random_bool(self.loss) {
                let at = now + self.link();
                self.push(
                    at,
                    Ev::Broadcast {
                        to,
                        from,
                        write,
                        hops,
                    },
                );
            }
        }
    }
}

/// `n` nodes, `writes` writes from random nodes over the first 10 s, links
/// of `latency_ms` ± 10%, `loss` of broadcast messages, sync rounds every
/// 1 s ± 50% per node.
fn simulate(n: usize, writes: usize, latency_ms: u64, loss: f64, seed: u64) -> Outcome {
    let mut sim = Sim {
        n,
        rng: StdRng::seed_from_u64(seed),
        latency_ms,
        loss,
        queue: BinaryHeap::new(),
        events: Vec::new(),
        members: (0..n)
            .map(|i| (0..n).filter(|&j| j != i).collect())
            .collect(),
        held: vec![vec![false; writes]; n],
        committed_at: vec![0; writes],
        reached: vec![0; writes],
        last: vec![0; writes],
        done: 0,
        messages: 0,
    };
    for write in 0..writes {
        let at = sim.rng.random_range(0..10_000);
        let node = sim.rng.random_range(0..n);
        sim.push(at, Ev::Commit { node, write });
    }
    for node in 0..n {
        let at = sim.rng.random_range(0..1_000);
        sim.push(at, Ev::Sync { node });
    }
    while let Some(Reverse((now, id))) = sim.queue.pop() {
        if sim.done == writes {
            break;
        }
        match sim.events[id].take().unwrap() {
            Ev::Commit { node, write } => {
                sim.committed_at[write] = now;
                sim.receive(node, write, now);
                let (targets, hops) = local_targets(&sim.members[node], &mut sim.rng);
                sim.send(now, targets, node, write, hops);
            }
            Ev::Broadcast {
                to,
                from,
                write,
                hops,
            } => {
                if sim.receive(to, write, now) {
                    let targets =
                        forward_targets(&sim.members[to], Some(from), hops + 1, &mut sim.rng);
                    sim.send(now, targets, to, write, hops + 1);
                }
            }
            Ev::Sync { node } => {
                let peer = sim.members[node][sim.rng.random_range(0..n - 1)];
                // State to the peer and its answer back: one round trip.
                let missing: Vec<usize> = sim.held[peer]
                    .iter()
                    .zip(&sim.held[node])
                    .enumerate()
                    .filter(|(_, (theirs, mine))| **theirs && !**mine)
                    .map(|(w, _)| w)
                    .collect();
                let rtt = sim.link() + sim.link();
                if !missing.is_empty() {
                    sim.push(
                        now + rtt,
                        Ev::Pulled {
                            to: node,
                            writes: missing,
                        },
                    );
                }
                let next = now + rtt + sim.rng.random_range(500..1_500);
                sim.push(next, Ev::Sync { node });
            }
            Ev::Pulled { to, writes } => {
                for w in writes {
                    sim.receive(to, w, now);
                }
            }
        }
    }
    assert_eq!(sim.done, writes, "every write reaches every node");
    let mut took: Vec<u64> = (0..writes)
        .map(|w| sim.last[w] - sim.committed_at[w])
        .collect();
    took.sort_unstable();
    let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    Outcome {
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: *took.last().unwrap(),
        messages_per_write: sim.messages as f64 / writes as f64,
    }
}

/// The bar: with 100 ms links, p99 time for a write to reach all of
/// 1,000 nodes under 2 s (simulated time, deterministic per seed).
#[test]
fn a_write_reaches_a_thousand_nodes_within_two_seconds_at_p99() {
    for seed in 1..=3 {
        let o = simulate(1_000, 200, 100, 0.01, seed);
        println!(
            "1000 nodes, 100 ms links, 1% loss, seed {seed}: p50 {} ms, p99 {} ms, max {} ms, {:.0} broadcast messages/write",
            o.p50_ms, o.p99_ms, o.max_ms, o.messages_per_write
        );
        assert!(o.p99_ms < 2_000, "seed {seed}: p99 {} ms", o.p99_ms);
    }
}

/// Small clusters: one direct message per member, one hop.
#[test]
fn a_write_reaches_twenty_nodes_in_one_hop() {
    let o = simulate(20, 200, 100, 0.0, 9);
    println!(
        "20 nodes, 100 ms links: p50 {} ms, p99 {} ms, {:.0} messages/write",
        o.p50_ms, o.p99_ms, o.messages_per_write
    );
    assert_eq!(o.messages_per_write, 19.0);
    assert!(o.max_ms <= 110, "{}", o.max_ms);
}
