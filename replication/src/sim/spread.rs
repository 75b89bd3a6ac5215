//! How writes spread at fleet size: broadcast plus anti-entropy in virtual
//! time, with the agents' own decisions.
//!
//! Every node commits writes at a steady cluster-wide rate (each from a
//! random node). A committed write is broadcast with
//! [`broadcast::Pending`](crate::broadcast::Pending) (targets of a local
//! commit; a receiver that finds it new forwards it), and every node runs
//! sync rounds on the agent's schedule ([`crate::schedule`]: a round every
//! 1 s, backing off to 4 s while rounds find nothing, each round pulling
//! from 3 peers one after the other, each peer answering with what the
//! initiator lacks). Links have a one-way delay drawn uniformly from a
//! range, and a share of broadcast sends and sync exchanges fails.
//!
//! Writes are tracked as ids (no stores: this measures reach and cost, not
//! SQLite; `tests/sim.rs` runs the real round driver over real stores).
//! Bytes are real encodings: a broadcast is the frame the agent sends for
//! one typical catalog row ([`typical_write`], a `consul_services` insert),
//! a sync round opens with the encoded [`SyncState`] of a node that has
//! heard from every node (one actor per agent: each writes its own rows),
//! and each missing write comes back as that row's changeset; plus the
//! trailer agents put on state, digest and bucket-list frames
//! ([`trailer_bytes`]), and [`WIRE_OVERHEAD`] per message for the headers
//! below the frame.
//!
//! With [`SpreadConfig::digest`] (what agents do once a peer has said it
//! answers digests) an exchange opens with the encoded [`Digest`] of such
//! a state instead; the responder answers with the buckets that differ
//! (the buckets of the writers of every write one side holds and the other
//! lacks), and only when some differ do both sides send their state for
//! those buckets' actors (encoded), the writes following as before, one
//! round trip later. Each node's actor keeps one bucket for the whole run
//! (agents draw a salt per round, which moves actors between buckets at
//! random: the same distribution of bucket sizes and differing buckets).
//!
//! Membership is static and complete here (every node knows every other):
//! [`super::SwimSim`] measures membership on its own.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

use corro_store::{ActorId, Change, Changeset, SqlValue, encode_key};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::broadcast::Pending;
use crate::digest::{Digest, bucket_of, buckets_for};
use crate::schedule::{SYNC_BASE, SYNC_PEERS, jittered, next_interval};
use crate::sync::SyncState;
use crate::wire::{Envelope, Message, PROTOCOL_VERSION};

/// Bytes counted per message for what lies below the frame (IP and UDP
/// headers, QUIC short header and STREAM frame, the length prefix): an
/// estimate.
pub const WIRE_OVERHEAD: u64 = 64;

/// One run.
#[derive(Debug, Clone)]
pub struct SpreadConfig {
    pub nodes: usize,
    pub seed: u64,
    /// Writes committed per second across the cluster.
    pub writes_per_sec: f64,
    /// Writes flow this long before measuring (sync intervals settle).
    pub warm_ms: u64,
    /// Writes committed in this window are measured, and bytes sent in it.
    pub measure_ms: u64,
    /// After the window, how long measured writes get to reach everyone.
    pub drain_ms: u64,
    /// One-way delay range, ms.
    pub latency: (u64, u64),
    /// Share of broadcast sends and of sync exchanges that fail.
    pub loss: f64,
    /// Sync exchanges open with a digest (see the module doc); otherwise
    /// with a whole state.
    pub digest: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct SpreadReport {
    /// Writes committed in the window.
    pub writes: usize,
    /// Time until 99 % of nodes held a write: p50, p99 over writes (ms).
    pub reach_99: (u64, u64),
    /// Time until every node held it: p50, p99, max (ms).
    pub reach_all: (u64, u64, u64),
    /// Measured writes some node still lacked at the end.
    pub unreached: usize,
    /// Broadcast messages sent per write.
    pub broadcasts_per_write: f64,
    /// Broadcast receipts of a write already held, per delivery (a
    /// delivery: a node getting a write it lacked, by either path).
    pub redundant_per_delivery: f64,
    /// Share of deliveries made by sync rather than broadcast (most race
    /// the broadcast while it spreads).
    pub by_sync: f64,
    /// Deliveries by sync more than a second after the commit, per write:
    /// nodes the broadcast missed.
    pub repaired_per_write: f64,
    /// Sent per node per second in the window: broadcast frames, sync
    /// states, sync changes (bytes).
    pub broadcast_bytes: f64,
    pub state_bytes: f64,
    pub sync_change_bytes: f64,
    /// Sync rounds started per node per second in the window.
    pub rounds_per_sec: f64,
    /// Encoded sizes used: one broadcast frame, one sync-state frame, one
    /// digest frame (of that state).
    pub write_frame: usize,
    pub state_frame: usize,
    pub digest_frame: usize,
    /// Digest exchanges in the window that found some bucket differing,
    /// out of all digest exchanges.
    pub digest_differing: f64,
}

/// A typical catalog write: one `consul_services` row inserted (a
/// sentinel and ten columns), as the store would produce it.
pub fn typical_write(actor: ActorId, version: u64) -> Changeset {
    let pk: std::sync::Arc<[u8]> = encode_key(&[
        SqlValue::Text("ip-10-12-34-56".into()),
        SqlValue::Text("web-8080".into()),
    ])
    .into();
    let cols: [(&str, SqlValue); 10] = [
        ("name", SqlValue::Text("web".into())),
        ("tags", SqlValue::Text(r#"["primary","v2"]"#.into())),
        ("meta", SqlValue::Text(r#"{"version":"1.4.2"}"#.into())),
        ("port", SqlValue::Integer(8080)),
        ("address", SqlValue::Text("10.12.34.56".into())),
        (
            "weights",
            SqlValue::Text(r#"{"Passing":1,"Warning":1}"#.into()),
        ),
        ("tagged_addresses", SqlValue::Text("{}".into())),
        ("updated_at", SqlValue::Integer(1_795_000_000_000)),
        ("source", SqlValue::Null),
        ("node", SqlValue::Text("ip-10-12-34-56".into())),
    ];
    let table: std::sync::Arc<str> = "consul_services".into();
    let mut changes = vec![Change {
        table: table.clone(),
        pk: pk.clone(),
        column: None,
        value: SqlValue::Null,
        col_version: 1,
        cl: 1,
        seq: 0,
    }];
    for (i, (c, v)) in cols.into_iter().enumerate() {
        changes.push(Change {
            table: table.clone(),
            pk: pk.clone(),
            column: Some(c.into()),
            value: v,
            col_version: 1,
            cl: 1,
            seq: i as u64 + 1,
        });
    }
    Changeset::Version {
        actor,
        version,
        seqs: 0..=10,
        last_seq: 10,
        ts: 1_795_000_000_000,
        changes,
    }
}

fn envelope(message: Message) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        from: ActorId([7; 16]),
        addr: SocketAddr::from(([10, 12, 34, 56], 8787)),
        message,
    }
}

/// Encoded size of the broadcast of one typical write.
pub fn write_frame_bytes() -> usize {
    let sets = vec![typical_write(ActorId([7; 16]), 123_456)];
    let frame = crate::wire::encode(&envelope(Message::Changes { sets, hops: 1 }));
    frame.map_or(0, |f| f.len())
}

/// Encoded size of one typical write inside a sync answer.
pub fn sync_write_bytes() -> usize {
    postcard::to_stdvec(&typical_write(ActorId([7; 16]), 123_456)).map_or(0, |b| b.len())
}

/// The sync state of a node that knows `actors` actors (heads drawn
/// between 10,000 and 1,000,000; nothing needed).
fn typical_state(actors: usize, seed: u64) -> SyncState {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut state = SyncState::default();
    for _ in 0..actors {
        state
            .heads
            .insert(ActorId(rng.random()), rng.random_range(10_000..1_000_000));
    }
    state
}

/// Encoded size of the sync state of a node that knows `actors` actors
/// (heads drawn between 10,000 and 1,000,000; nothing needed).
pub fn state_frame_bytes(actors: usize, seed: u64) -> usize {
    let state = typical_state(actors, seed);
    crate::wire::encode(&envelope(Message::SyncState(state))).map_or(0, |f| f.len())
}

/// Encoded size of the digest that opens a round of a node that knows
/// `actors` actors.
pub fn digest_frame_bytes(actors: usize, seed: u64) -> usize {
    let state = typical_state(actors, seed);
    // A salt is a random 64-bit number (9-10 bytes as a varint).
    let salt = StdRng::seed_from_u64(seed ^ 0x5a17).random();
    let digest = Digest::of(&state, buckets_for(actors), salt);
    crate::wire::encode(&envelope(Message::SyncDigest(digest))).map_or(0, |f| f.len())
}

/// Encoded size of the trailer agents put on state, digest and bucket-list
/// frames (a schema fingerprint, the flags; no member view).
pub fn trailer_bytes(seed: u64) -> usize {
    let trailer = crate::Trailer {
        schema: StdRng::seed_from_u64(seed ^ 0x5c4e).random(),
        digest: true,
        ..Default::default()
    };
    postcard::to_stdvec(&trailer).map_or(0, |b| b.len())
}

fn frame_bytes(message: Message) -> u64 {
    crate::wire::encode(&envelope(message)).map_or(0, |f| f.len()) as u64
}

enum Ev {
    Commit {
        node: u32,
    },
    Broadcast {
        to: u32,
        from: u32,
        write: u32,
        hops: u8,
    },
    /// `node` starts a sync round.
    Round {
        node: u32,
    },
    /// The round's current peer receives `node`'s state (or digest) and
    /// answers.
    Serve {
        node: u32,
    },
    /// A digest round with differing buckets: the peer receives `node`'s
    /// state for them and answers with the writes `node` lacks.
    ServePart {
        node: u32,
    },
    /// `node` receives the writes it lacked from its current peer.
    Pulled {
        node: u32,
        writes: Vec<u32>,
    },
}

/// A node's sync round under way.
#[derive(Clone, Default)]
struct RoundState {
    peers: Vec<u32>,
    next: usize,
    moved: usize,
    interval_ms: u64,
    /// In a digest exchange, actors in the differing buckets.
    part_actors: usize,
}

struct Sim {
    cfg: SpreadConfig,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: std::collections::HashMap<u64, Ev>,
    /// Every node id; a node's peers are all of it but itself (swapped to
    /// the end while choosing).
    all: Vec<u32>,
    /// Per node, a bitset over writes.
    held: Vec<Vec<u64>>,
    rounds: Vec<RoundState>,
    committed_at: Vec<u64>,
    count: Vec<u32>,
    at_99: Vec<Option<u64>>,
    at_all: Vec<Option<u64>>,
    need_99: u32,
    next_write: u32,
    /// Measured writes held everywhere, and how many there are.
    measured_done: usize,
    measured_total: usize,
    // Counters (whole run unless "window").
    broadcasts: u64,
    redundant: u64,
    delivered_broadcast: u64,
    delivered_sync: u64,
    repaired: u64,
    w_broadcast_bytes: u64,
    w_state_bytes: u64,
    w_change_bytes: u64,
    w_rounds: u64,
    write_frame: u64,
    sync_write: u64,
    state_frame: u64,
    /// Digest rounds: per node its actor's bucket, actors per bucket, the
    /// digest frame, encoded partial states by actor count, the end frame.
    bucket: Vec<u32>,
    bucket_actors: Vec<u32>,
    digest_frame: u64,
    /// The trailer on every state, digest and bucket-list frame.
    trailer: u64,
    part_frames: std::collections::HashMap<usize, u64>,
    done_frame: u64,
    /// Per write, the node that committed it (its actor).
    writer: Vec<u32>,
    w_digests: u64,
    w_digests_differing: u64,
}

impl Sim {
    fn push(&mut self, at: u64, e: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn link(&mut self) -> u64 {
        let (a, b) = self.cfg.latency;
        self.rng.random_range(a..=b.max(a))
    }

    fn in_window(&self) -> bool {
        self.now >= self.cfg.warm_ms && self.now < self.cfg.warm_ms + self.cfg.measure_ms
    }

    fn holds(&self, node: u32, w: u32) -> bool {
        let (i, b) = (w as usize / 64, w % 64);
        self.held[node as usize][i] & (1 << b) != 0
    }

    /// `node` gets write `w`; true when it was new there.
    fn receive(&mut self, node: u32, w: u32) -> bool {
        if self.holds(node, w) {
            return false;
        }
        let (i, b) = (w as usize / 64, w % 64);
        self.held[node as usize][i] |= 1 << b;
        let w = w as usize;
        self.count[w] += 1;
        let took = self.now - self.committed_at[w];
        if self.count[w] == self.need_99 {
            self.at_99[w] = Some(took);
        }
        if self.count[w] as usize == self.cfg.nodes {
            self.at_all[w] = Some(took);
            if self.measured(w) {
                self.measured_done += 1;
            }
        }
        true
    }

    /// Runs `f` with `node`'s peers (every other node).
    fn with_peers<R>(&mut self, node: u32, f: impl FnOnce(&[u32], &mut StdRng) -> R) -> R {
        let last = self.all.len() - 1;
        self.all.swap(node as usize, last);
        let r = f(&self.all[..last], &mut self.rng);
        self.all.swap(node as usize, last);
        r
    }

    fn send(&mut self, from: u32, pending: &Pending<u32>, write: u32) {
        let (targets, hops) = self.with_peers(from, |peers, rng| pending.targets(peers, rng));
        for to in targets {
            self.broadcasts += 1;
            if self.in_window() {
                self.w_broadcast_bytes += self.write_frame + WIRE_OVERHEAD;
            }
            if self.rng.random_bool(self.cfg.loss) {
                continue;
            }
            let at = self.now + self.link();
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

    fn start_exchange(&mut self, node: u32) {
        let r = &self.rounds[node as usize];
        if r.next >= r.peers.len() {
            // The round is over: back off or not, then the next one.
            let interval = next_interval(std::time::Duration::from_millis(r.interval_ms), r.moved);
            let jitter = self.rng.random_range(0.5..1.5);
            let wait = jittered(interval, jitter).as_millis() as u64;
            self.rounds[node as usize].interval_ms = interval.as_millis() as u64;
            self.push(self.now + wait.max(1), Ev::Round { node });
            return;
        }
        if self.in_window() {
            let opening = if self.cfg.digest {
                self.digest_frame
            } else {
                self.state_frame
            };
            self.w_state_bytes += opening + self.trailer + WIRE_OVERHEAD;
        }
        if self.rng.random_bool(self.cfg.loss) {
            // The exchange fails; the round goes on with the next peer.
            let at = self.now + self.link();
            let writes = Vec::new();
            self.push(at, Ev::Pulled { node, writes });
            return;
        }
        let at = self.now + self.link();
        self.push(at, Ev::Serve { node });
    }

    fn run(&mut self) {
        let end_writes = self.cfg.warm_ms + self.cfg.measure_ms;
        let end = end_writes + self.cfg.drain_ms;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            if self.now >= end_writes && self.measured_done == self.measured_total {
                break;
            }
            let Some(e) = self.events.remove(&seq) else {
                continue;
            };
            match e {
                Ev::Commit { node } => {
                    let w = self.next_write;
                    self.next_write += 1;
                    self.committed_at[w as usize] = self.now;
                    self.receive(node, w);
                    let p = Pending::<u32>::local(Vec::new());
                    self.send(node, &p, w);
                }
                Ev::Broadcast {
                    to,
                    from,
                    write,
                    hops,
                } => {
                    let fresh = self.receive(to, write);
                    if fresh {
                        self.delivered_broadcast += 1;
                    } else {
                        self.redundant += 1;
                    }
                    if let Some(p) = Pending::received(from, hops, Vec::new(), fresh) {
                        self.send(to, &p, write);
                    }
                }
                Ev::Round { node } => {
                    if self.in_window() {
                        self.w_rounds += 1;
                    }
                    let peers = self.with_peers(node, |peers, rng| {
                        rand::seq::index::sample(rng, peers.len(), SYNC_PEERS.min(peers.len()))
                            .into_iter()
                            .map(|i| peers[i])
                            .collect()
                    });
                    let r = &mut self.rounds[node as usize];
                    r.peers = peers;
                    r.next = 0;
                    r.moved = 0;
                    self.start_exchange(node);
                }
                Ev::Serve { node } => {
                    if !self.cfg.digest {
                        self.answer(node);
                        continue;
                    }
                    // The responder compares digests: the buckets of the
                    // writers of what one side holds and the other lacks.
                    let r = &self.rounds[node as usize];
                    let peer = r.peers[r.next] as usize;
                    let mut differing: Vec<u32> = Vec::new();
                    for (i, (t, m)) in self.held[peer]
                        .iter()
                        .zip(&self.held[node as usize])
                        .enumerate()
                    {
                        let mut diff = t ^ m;
                        while diff != 0 {
                            let b = diff.trailing_zeros();
                            let w = (i * 64) as u32 + b;
                            differing.push(self.bucket[self.writer[w as usize] as usize]);
                            diff &= diff - 1;
                        }
                    }
                    differing.sort_unstable();
                    differing.dedup();
                    let window = self.in_window();
                    if window {
                        self.w_digests += 1;
                        self.w_digests_differing += u64::from(!differing.is_empty());
                    }
                    let at = self.now + self.link();
                    if differing.is_empty() {
                        // Nothing differs: the bucket list back, the end.
                        if window {
                            self.w_state_bytes += frame_bytes(Message::SyncBuckets(Vec::new()))
                                + self.trailer
                                + self.done_frame
                                + 2 * WIRE_OVERHEAD;
                        }
                        self.push(
                            at,
                            Ev::Pulled {
                                node,
                                writes: Vec::new(),
                            },
                        );
                        continue;
                    }
                    let actors: usize = differing
                        .iter()
                        .map(|b| self.bucket_actors[*b as usize] as usize)
                        .sum();
                    self.rounds[node as usize].part_actors = actors;
                    if window {
                        // The list back, then each side's state for those
                        // buckets (the responder's closes its answer, in
                        // `answer`).
                        let part = self.part_frame(actors);
                        self.w_state_bytes += frame_bytes(Message::SyncBuckets(differing))
                            + part
                            + 2 * (self.trailer + WIRE_OVERHEAD);
                    }
                    let at = at + self.link();
                    self.push(at, Ev::ServePart { node });
                }
                Ev::ServePart { node } => self.answer(node),
                Ev::Pulled { node, writes } => {
                    let mut moved = 0;
                    for w in writes {
                        if self.receive(node, w) {
                            self.delivered_sync += 1;
                            if self.now - self.committed_at[w as usize] > 1_000 {
                                self.repaired += 1;
                            }
                            moved += 1;
                        }
                    }
                    let r = &mut self.rounds[node as usize];
                    r.moved += moved;
                    r.next += 1;
                    self.start_exchange(node);
                }
            }
        }
    }

    /// The round's current peer answers `node` with the writes it lacks,
    /// then its own state (whole, or for the differing buckets).
    fn answer(&mut self, node: u32) {
        let r = &self.rounds[node as usize];
        let peer = r.peers[r.next] as usize;
        let mine = &self.held[node as usize];
        let theirs = &self.held[peer];
        let mut missing = Vec::new();
        for (i, (t, m)) in theirs.iter().zip(mine).enumerate() {
            let mut lack = t & !m;
            while lack != 0 {
                let b = lack.trailing_zeros();
                missing.push((i * 64) as u32 + b);
                lack &= lack - 1;
            }
        }
        if self.in_window() {
            // The answer: the writes, then the peer's own state; then the
            // initiator's end of the round.
            self.w_change_bytes += missing.len() as u64 * self.sync_write;
            let closing = if self.cfg.digest {
                // The same buckets' actors as the initiator's part.
                let actors = self.rounds[node as usize].part_actors;
                self.part_frame(actors)
            } else {
                self.state_frame
            };
            self.w_state_bytes += closing + self.trailer + self.done_frame + 2 * WIRE_OVERHEAD;
        }
        let at = self.now + self.link();
        self.push(
            at,
            Ev::Pulled {
                node,
                writes: missing,
            },
        );
    }

    /// Encoded size of a state naming `actors` actors (cached by count).
    fn part_frame(&mut self, actors: usize) -> u64 {
        let seed = self.cfg.seed;
        *self
            .part_frames
            .entry(actors)
            .or_insert_with(|| state_frame_bytes(actors, seed) as u64)
    }

    fn measured(&self, w: usize) -> bool {
        let t = self.committed_at[w];
        t >= self.cfg.warm_ms && t < self.cfg.warm_ms + self.cfg.measure_ms
    }
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0)
}

/// Runs one configuration.
pub fn simulate(cfg: SpreadConfig) -> SpreadReport {
    let n = cfg.nodes.max(2);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let total_ms = cfg.warm_ms + cfg.measure_ms;
    // Commit times: a Poisson process at the configured rate.
    let mut commits = Vec::new();
    let mut t = 0.0f64;
    let mean_gap = 1000.0 / cfg.writes_per_sec.max(1e-9);
    loop {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        t += -u.ln() * mean_gap;
        if t >= total_ms as f64 {
            break;
        }
        commits.push((t as u64, rng.random_range(0..n) as u32));
    }
    let writes = commits.len();
    let words = writes.div_ceil(64).max(1);
    let mut sim = Sim {
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: std::collections::HashMap::new(),
        all: (0..n as u32).collect(),
        held: vec![vec![0; words]; n],
        rounds: vec![
            RoundState {
                interval_ms: SYNC_BASE.as_millis() as u64,
                ..Default::default()
            };
            n
        ],
        committed_at: vec![0; writes],
        count: vec![0; writes],
        at_99: vec![None; writes],
        at_all: vec![None; writes],
        need_99: ((n as f64) * 0.99).ceil() as u32,
        next_write: 0,
        measured_done: 0,
        measured_total: 0,
        broadcasts: 0,
        redundant: 0,
        delivered_broadcast: 0,
        delivered_sync: 0,
        repaired: 0,
        w_broadcast_bytes: 0,
        w_state_bytes: 0,
        w_change_bytes: 0,
        w_rounds: 0,
        write_frame: write_frame_bytes() as u64,
        sync_write: sync_write_bytes() as u64,
        state_frame: state_frame_bytes(n, cfg.seed) as u64,
        bucket: Vec::new(),
        bucket_actors: Vec::new(),
        digest_frame: digest_frame_bytes(n, cfg.seed) as u64,
        trailer: trailer_bytes(cfg.seed) as u64,
        part_frames: Default::default(),
        done_frame: frame_bytes(Message::SyncDone),
        writer: commits.iter().map(|(_, node)| *node).collect(),
        w_digests: 0,
        w_digests_differing: 0,
        cfg: SpreadConfig { nodes: n, ..cfg },
    };
    // Each node's actor, and its bucket in a digest of n actors.
    let buckets = buckets_for(n);
    let mut ids = StdRng::seed_from_u64(sim.cfg.seed ^ 0xac70);
    sim.bucket = (0..n)
        .map(|_| bucket_of(&ActorId(ids.random()), buckets, 0))
        .collect();
    sim.bucket_actors = vec![0; buckets as usize];
    for b in &sim.bucket {
        sim.bucket_actors[*b as usize] += 1;
    }
    for (w, &(at, node)) in commits.iter().enumerate() {
        // Write ids follow commit order (commits are generated in order).
        sim.committed_at[w] = at;
        sim.push(at, Ev::Commit { node });
    }
    sim.measured_total = (0..writes).filter(|&w| sim.measured(w)).count();
    for node in 0..n as u32 {
        let at = sim.rng.random_range(0..SYNC_BASE.as_millis() as u64);
        sim.push(at, Ev::Round { node });
    }
    sim.run();

    let measured: Vec<usize> = (0..writes).filter(|&w| sim.measured(w)).collect();
    let mut r99: Vec<u64> = measured.iter().filter_map(|&w| sim.at_99[w]).collect();
    let mut rall: Vec<u64> = measured.iter().filter_map(|&w| sim.at_all[w]).collect();
    let unreached = measured.len() - rall.len();
    let secs = sim.cfg.measure_ms as f64 / 1000.0;
    let per_node = |b: u64| b as f64 / secs / n as f64;
    let deliveries = (sim.delivered_broadcast + sim.delivered_sync).max(1) as f64;
    SpreadReport {
        writes: measured.len(),
        reach_99: (pct(&mut r99, 0.5), pct(&mut r99, 0.99)),
        reach_all: (
            pct(&mut rall, 0.5),
            pct(&mut rall, 0.99),
            pct(&mut rall, 1.0),
        ),
        unreached,
        broadcasts_per_write: sim.broadcasts as f64 / writes.max(1) as f64,
        redundant_per_delivery: sim.redundant as f64 / deliveries,
        by_sync: sim.delivered_sync as f64 / deliveries,
        repaired_per_write: sim.repaired as f64 / writes.max(1) as f64,
        broadcast_bytes: per_node(sim.w_broadcast_bytes),
        state_bytes: per_node(sim.w_state_bytes),
        sync_change_bytes: per_node(sim.w_change_bytes),
        rounds_per_sec: sim.w_rounds as f64 / secs / n as f64,
        write_frame: sim.write_frame as usize,
        state_frame: sim.state_frame as usize,
        digest_frame: sim.digest_frame as usize,
        digest_differing: sim.w_digests_differing as f64 / sim.w_digests.max(1) as f64,
    }
}
