//! SWIM in virtual time: many [`Membership`] cores (the code the agents
//! run) over a seeded in-memory network with latency, loss, partitions,
//! crashes and pauses. No sockets and no wall clock: every figure is in
//! simulated milliseconds and identical on every run of a seed. The tests
//! and `corro-bench sim` drive it.
//!
//! Each member also does what the agents' SWIM driver ([`crate::swim`])
//! does besides the core: every [`REJOIN_EVERY`], a member with no active
//! member announces itself to member 0 (its seed), and every
//! [`RECONNECT_EVERY`] it may announce itself to a member it holds as
//! down ([`Reconnect`]).
//!
//! And what the agents' sync rounds do for membership (push-pull, when
//! [`SwimSim::pull`] is on): every [`PULL_EVERY_MS`] a member updates its
//! [`ViewPull`] (joining until a settled view or 5 s with active members,
//! then a refresh now and then) and, while that asks, asks a random active
//! member (member 0 while it has none) for its whole view
//! ([`Membership::view`]), applying the answer one round trip later
//! ([`Membership::apply_view`]) as [`ViewPull::arrived`] says. The
//! exchange runs on a stream, so a lost packet is resent (up to four sends
//! each way, 200 ms apart, then the round gives up). A member with no
//! active member gives no view.
//!
//! Cost: each member keeps a view of every other, so memory grows with
//! the square of the cluster size (about 100 bytes per entry).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use corro_store::ActorId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::membership::{
    ANNOUNCE_EVERY, Identity, Membership, Output, PROBE_PERIOD, State, Timer, ViewEntry, ViewKind,
};
use crate::reconnect::{RECONNECT_EVERY, Reconnect};
use crate::swim::REJOIN_EVERY;
use crate::viewpull::{Take, ViewPull};

enum Event {
    Packet {
        to: usize,
        data: bytes::Bytes,
    },
    Timer {
        node: usize,
        epoch: u32,
        timer: Timer,
    },
    /// The host's periodic work (rejoin while alone, reconnect).
    Host {
        node: usize,
        epoch: u32,
        tick: u64,
    },
    /// A sync round's chance to ask for a member view.
    Pull {
        node: usize,
        epoch: u32,
    },
    /// A member view arriving at `to`.
    View {
        to: usize,
        epoch: u32,
        view: Vec<ViewEntry>,
        settled: bool,
    },
}

/// The agents' sync round period (a member that wants a view asks once a
/// round).
pub const PULL_EVERY_MS: u64 = 1000;

/// A sync stream's resend delay after a lost packet (QUIC's probe
/// timeout, roughly).
const STREAM_RESEND_MS: u64 = 200;
/// Sends of one direction of a sync stream before the round gives up.
const STREAM_SENDS: u32 = 4;

/// One simulated member.
pub struct SimNode {
    pub core: Membership,
    /// Bumped on restart: timers of the previous run are ignored.
    pub epoch: u32,
    pub up: bool,
    /// Paused (a stalled process): packets and timers wait until then.
    pub paused_until: u64,
    /// The start stamp this process began with.
    pub started: u64,
    /// Down members' addresses it may announce itself to.
    pub reconnect: Reconnect,
    /// When it asks for member views (push-pull).
    pub view_pull: ViewPull,
}

/// Counters over a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    /// Packets sent (lost ones included) and their bytes.
    pub packets: u64,
    pub bytes: u64,
    /// False downs: incidents, counted once per (member, incarnation), in
    /// which some member declared down a member that was running, not
    /// paused, and on the same side of any partition.
    pub false_downs: u64,
    /// Running members that renewed their identity (they were told they
    /// were down).
    pub renewals: u64,
    /// Packets a core refused (between simulated members: a finding).
    pub refused: u64,
    /// Announces to members held as down ([`Reconnect`]).
    pub reconnects: u64,
    /// Member views applied (push-pull), and their entries.
    pub views: u64,
    pub view_entries: u64,
    /// Of those, periodic refreshes (not joining).
    pub view_refreshes: u64,
    /// View exchanges given up on (every send of one direction lost).
    pub views_lost: u64,
}

/// The simulated cluster.
pub struct SwimSim {
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    pub nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    rng: StdRng,
    /// Share of packets lost.
    pub loss: f64,
    /// One-way delay, uniformly in this range (ms).
    pub latency: (u64, u64),
    /// Nodes on the minority side of a partition.
    pub cut: HashSet<usize>,
    pub traffic: Traffic,
    /// (member, start stamp) already counted as a false down.
    falsely_downed: HashSet<(usize, u64)>,
    /// Push-pull of member views in sync rounds (on by default, as in the
    /// agents; off to see what it changes).
    pub pull: bool,
}

/// The simulated address of member `i`.
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8787))
}

/// The simulated actor id of member `i`.
pub fn actor(i: usize) -> ActorId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    ActorId(b)
}

/// A core for member `i` (start stamp `ts`).
pub fn core(i: usize, ts: u64, seed: u64) -> Membership {
    Membership::new(
        Identity {
            actor: actor(i),
            addr: addr(i),
            ts,
        },
        seed ^ (i as u64).wrapping_mul(7919),
    )
}

impl SwimSim {
    /// `n` members that know nobody yet.
    pub fn new(n: usize, seed: u64, loss: f64, latency: (u64, u64)) -> SwimSim {
        let nodes = (0..n)
            .map(|i| SimNode {
                core: core(i, 1, seed),
                epoch: 0,
                up: true,
                paused_until: 0,
                started: 1,
                reconnect: Reconnect::new(addr(i)),
                view_pull: ViewPull::new(),
            })
            .collect();
        let mut sim = SwimSim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes,
            by_addr: (0..n).map(|i| (addr(i), i)).collect(),
            rng: StdRng::seed_from_u64(seed),
            loss,
            latency,
            cut: HashSet::new(),
            traffic: Traffic::default(),
            falsely_downed: HashSet::new(),
            pull: true,
        };
        for i in 0..n {
            sim.start_host(i);
        }
        sim
    }

    /// `n` members that start formed, as a settled cluster is: each has
    /// applied a whole view holding every other member alive (the agents'
    /// join push-pull, [`Membership::apply_view`]), starts its probe cycle
    /// at a random point of the first [`PROBE_PERIOD`] and its periodic
    /// announce at a random point of the first [`ANNOUNCE_EVERY`].
    ///
    /// For sizes where forming by announcing through a seed takes hours of
    /// wall time: foca searches its member list linearly for every update,
    /// and gossip delivers each join to each member many times. Here each
    /// member still does ~N²/2 comparisons to learn the others (5×10¹¹ in
    /// all at 10,000 members), but once per member, on every core of the
    /// machine.
    ///
    /// One difference from a cluster formed by gossip: every member is
    /// tuned for exactly `n` members (suspicion `max(2 s, log10 n)`),
    /// while members that learned the cluster a few at a time re-tune only
    /// when the size doubles and may settle tuned for as few as n/2 (up to
    /// ~0.3 s less suspicion). An agent that joins by pulling a whole view
    /// is tuned as here.
    pub fn preformed(n: usize, seed: u64, loss: f64, latency: (u64, u64)) -> SwimSim {
        let mut sim = SwimSim::new(n, seed, loss, latency);
        let everyone: Vec<ViewEntry> = sim
            .nodes
            .iter()
            .map(|x| ViewEntry {
                id: *x.core.identity(),
                incarnation: 0,
                state: 0,
            })
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let chunk = n.div_ceil(threads).max(1);
        let everyone = &everyone;
        let formed: Vec<(Vec<Output>, bool)> = std::thread::scope(|s| {
            let workers: Vec<_> = sim
                .nodes
                .chunks_mut(chunk)
                .map(|nodes| {
                    s.spawn(move || {
                        nodes
                            .iter_mut()
                            .map(|node| {
                                let me = *node.core.identity();
                                let view =
                                    everyone.iter().filter(|e| e.id != me).copied().collect();
                                let (out, result) = node.core.apply_view(view, ViewKind::Join);
                                if result.is_ok() {
                                    node.view_pull.arrived(true);
                                }
                                // Every other member came up: nothing the
                                // host does with that at start.
                                let mut out: Vec<Output> = out
                                    .into_iter()
                                    .filter(|o| !matches!(o, Output::Up(_)))
                                    .collect();
                                // (Collected in place: without this each
                                // keeps room for N outputs until the end.)
                                out.shrink_to_fit();
                                (out, result.is_ok())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let period = PROBE_PERIOD.as_millis() as u64;
        let announce = ANNOUNCE_EVERY.as_millis() as u64;
        for (i, (out, ok)) in formed.into_iter().enumerate() {
            if !ok {
                sim.traffic.refused += 1;
            }
            // Each member starts at its own point of the probe cycle, and
            // of the periodic announce (after formation by gossip those
            // are spread over the formation time).
            let start = Duration::from_millis(sim.rng.random_range(0..period));
            let out = out
                .into_iter()
                .map(|o| match o {
                    Output::Schedule(after, t @ Timer::Swim(foca::Timer::PeriodicAnnounce(_))) => {
                        let shift = sim.rng.random_range(0..announce);
                        Output::Schedule(after + Duration::from_millis(shift), t)
                    }
                    Output::Schedule(after, t) => Output::Schedule(after + start, t),
                    other => other,
                })
                .collect();
            sim.outputs(i, out);
        }
        sim
    }

    /// Schedules member `i`'s first host tick, at a random offset.
    fn start_host(&mut self, i: usize) {
        let every = REJOIN_EVERY.as_millis() as u64;
        let at = self.now + self.rng.random_range(1..=every);
        let epoch = self.nodes[i].epoch;
        self.push(
            at,
            Event::Host {
                node: i,
                epoch,
                tick: 1,
            },
        );
        let at = self.now + self.rng.random_range(1..=PULL_EVERY_MS);
        self.push(at, Event::Pull { node: i, epoch });
    }

    /// Member `i`'s sync round: update its [`ViewPull`]; while that asks,
    /// ask a random active member (member 0 while it has none) for a view.
    fn pull_tick(&mut self, i: usize) {
        let now = self.now;
        let jitter = self.rng.random::<f64>();
        let n = &mut self.nodes[i];
        let active = n.core.active_count();
        n.view_pull.members(now, active, jitter);
        let epoch = n.epoch;
        if self.pull && n.view_pull.ask(now) {
            let peer = if active > 0 {
                let members = n.core.active();
                let pick = members[self.rng.random_range(0..members.len())];
                self.by_addr.get(&pick.addr).copied()
            } else {
                (i != 0).then_some(0)
            };
            let reachable = |s: &SwimSim, p: usize| {
                let x = &s.nodes[p];
                x.up && x.paused_until <= now && s.cut.contains(&i) == s.cut.contains(&p)
            };
            if let Some(p) = peer.filter(|&p| reachable(self, p))
                && self.nodes[p].core.active_count() > 0
            {
                let there = self.stream_delay();
                let back = self.stream_delay();
                if let (Some(there), Some(back)) = (there, back) {
                    let view = self.nodes[p].core.view();
                    let settled = self.nodes[p].view_pull.settled();
                    self.push(
                        now + there + back,
                        Event::View {
                            to: i,
                            epoch,
                            view,
                            settled,
                        },
                    );
                } else {
                    self.traffic.views_lost += 1;
                }
            }
        }
        self.push(now + PULL_EVERY_MS, Event::Pull { node: i, epoch });
    }

    /// One direction of a sync stream (QUIC): each send is lost with the
    /// link's loss and resent after [`STREAM_RESEND_MS`]; after
    /// [`STREAM_SENDS`] lost sends the round gives up (`None`).
    fn stream_delay(&mut self) -> Option<u64> {
        let mut waited = 0;
        for _ in 0..STREAM_SENDS {
            let latency = self.rng.random_range(self.latency.0..=self.latency.1);
            if !self.rng.random_bool(self.loss) {
                return Some(waited + latency);
            }
            waited += STREAM_RESEND_MS;
        }
        None
    }

    /// Member `i`'s host tick: rejoin through member 0 while alone; every
    /// [`RECONNECT_EVERY`], maybe announce to a member held as down.
    fn host_tick(&mut self, i: usize, tick: u64) {
        if i != 0 && self.nodes[i].core.active_count() == 0 {
            self.announce(i, 0);
        }
        let every = (RECONNECT_EVERY.as_millis() / REJOIN_EVERY.as_millis()).max(1) as u64;
        if tick.is_multiple_of(every) {
            let (now, active) = (self.now, self.nodes[i].core.active_count());
            let picked = self.nodes[i].reconnect.pick(now, active, &mut self.rng);
            if let Some(to) = picked {
                self.traffic.reconnects += 1;
                let out = self.nodes[i].core.announce(to);
                self.outputs(i, out);
            }
        }
        let epoch = self.nodes[i].epoch;
        self.push(
            self.now + REJOIN_EVERY.as_millis() as u64,
            Event::Host {
                node: i,
                epoch,
                tick: tick + 1,
            },
        );
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn outputs(&mut self, from: usize, out: Vec<Output>) {
        let mut returned = false;
        for o in out {
            match o {
                Output::Send(to, data) => {
                    let (Some(&dst), true) = (self.by_addr.get(&to.addr), self.nodes[from].up)
                    else {
                        continue;
                    };
                    self.traffic.packets += 1;
                    self.traffic.bytes += data.len() as u64;
                    if self.rng.random_bool(self.loss)
                        || self.cut.contains(&from) != self.cut.contains(&dst)
                    {
                        continue;
                    }
                    let delay = self.rng.random_range(self.latency.0..=self.latency.1);
                    self.push(self.now + delay, Event::Packet { to: dst, data });
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
                Output::Down(id) => {
                    returned |= self.nodes[from]
                        .reconnect
                        .observe(self.now, &Output::Down(id));
                    let Some(&i) = self.by_addr.get(&id.addr) else {
                        continue;
                    };
                    let n = &self.nodes[i];
                    // The running process's own incarnations only (a
                    // member renews its stamp when it finds itself down).
                    let running = n.up && n.paused_until <= self.now && n.started <= id.ts;
                    let same_side = self.cut.contains(&from) == self.cut.contains(&i);
                    if running && same_side && self.falsely_downed.insert((i, id.ts)) {
                        self.traffic.false_downs += 1;
                    }
                }
                Output::Rejoined(_) => self.traffic.renewals += 1,
                other @ Output::Up(_) => {
                    returned |= self.nodes[from].reconnect.observe(self.now, &other);
                }
                _ => {}
            }
        }
        if returned && self.nodes[from].up {
            let (now, active) = (self.now, self.nodes[from].core.active_count());
            let picked = self.nodes[from]
                .reconnect
                .pick_early(now, active, &mut self.rng);
            if let Some(to) = picked {
                self.traffic.reconnects += 1;
                let out = self.nodes[from].core.announce(to);
                self.outputs(from, out);
            }
        }
    }

    /// Member `from` asks member `to` to let it join.
    pub fn announce(&mut self, from: usize, to: usize) {
        let out = self.nodes[from].core.announce(addr(to));
        self.outputs(from, out);
    }

    /// Member `i` stops (a crash: no goodbye).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// Member `i` starts again as a new incarnation (stamp `ts`) and
    /// announces itself to `seed`.
    pub fn restart(&mut self, i: usize, ts: u64, seed: usize) {
        let epoch = self.nodes[i].epoch + 1;
        let s = self.rng.random();
        self.nodes[i] = SimNode {
            core: core(i, ts, s),
            epoch,
            up: true,
            paused_until: 0,
            started: ts,
            reconnect: Reconnect::new(addr(i)),
            view_pull: ViewPull::new(),
        };
        self.start_host(i);
        self.announce(i, seed);
    }

    /// Runs the network until simulated time `until` (ms).
    pub fn run_until(&mut self, until: u64) {
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
                    if !self.nodes[to].up {
                        continue;
                    }
                    if self.nodes[to].paused_until > self.now {
                        // The socket buffers what arrives while paused.
                        let at = self.nodes[to].paused_until;
                        self.push(at, Event::Packet { to, data });
                        continue;
                    }
                    // Packets between simulated members are valid; a
                    // refused one is a finding of its own (counted).
                    let (out, result) = self.nodes[to].core.handle_data(&data);
                    if result.is_err() {
                        self.traffic.refused += 1;
                    }
                    self.outputs(to, out);
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
                    // Stale timers (old tokens) are ignored by foca; an
                    // error (an incomplete probe cycle) still comes with
                    // outputs to carry out.
                    let (out, _) = self.nodes[node].core.handle_timer(timer);
                    self.outputs(node, out);
                }
                Event::Host { node, epoch, tick } => {
                    let n = &self.nodes[node];
                    if !n.up || n.epoch != epoch {
                        continue;
                    }
                    if n.paused_until > self.now {
                        let at = n.paused_until;
                        self.push(at, Event::Host { node, epoch, tick });
                        continue;
                    }
                    self.host_tick(node, tick);
                }
                Event::Pull { node, epoch } => {
                    let n = &self.nodes[node];
                    if !n.up || n.epoch != epoch {
                        continue;
                    }
                    if n.paused_until > self.now {
                        let at = n.paused_until;
                        self.push(at, Event::Pull { node, epoch });
                        continue;
                    }
                    self.pull_tick(node);
                }
                Event::View {
                    to,
                    epoch,
                    view,
                    settled,
                } => {
                    let n = &self.nodes[to];
                    if !n.up || n.epoch != epoch {
                        continue;
                    }
                    if n.paused_until > self.now {
                        let at = n.paused_until;
                        let e = Event::View {
                            to,
                            epoch,
                            view,
                            settled,
                        };
                        self.push(at, e);
                        continue;
                    }
                    let take = self.nodes[to].view_pull.arrived(settled);
                    if take == Take::Drop {
                        continue;
                    }
                    let entries = view.len() as u64;
                    let kind = match take {
                        Take::Refresh => ViewKind::Refresh,
                        _ => ViewKind::Join,
                    };
                    let (out, result) = self.nodes[to].core.apply_view(view, kind);
                    if result.is_ok() {
                        self.traffic.views += 1;
                        self.traffic.view_entries += entries;
                        if take == Take::Refresh {
                            self.traffic.view_refreshes += 1;
                        }
                    } else {
                        self.traffic.refused += 1;
                        if take == Take::Join {
                            self.nodes[to].view_pull.refused();
                        }
                    }
                    self.outputs(to, out);
                }
            }
        }
        self.now = until;
    }

    /// Runs until `cond` holds, checking every `step` ms, for at most
    /// `limit` ms; the time it took.
    pub fn run_while_not(
        &mut self,
        limit: u64,
        step: u64,
        cond: impl Fn(&SwimSim) -> bool,
    ) -> Option<u64> {
        let start = self.now;
        while self.now - start <= limit {
            if cond(self) {
                return Some(self.now - start);
            }
            self.run_until(self.now + step);
        }
        None
    }

    /// The member at a simulated address.
    pub fn index_of(&self, a: SocketAddr) -> Option<usize> {
        self.by_addr.get(&a).copied()
    }

    /// How `observer` sees `target` (`None`: not in its view).
    pub fn state_of(&self, observer: usize, target: usize) -> Option<State> {
        self.nodes[observer].core.state_of(addr(target))
    }

    /// Every running member has every other running member active.
    pub fn everyone_sees_everyone(&self) -> bool {
        let up = self.nodes.iter().filter(|x| x.up).count();
        self.nodes
            .iter()
            .filter(|x| x.up)
            .all(|x| x.core.active_count() >= up - 1)
    }

    /// Every running member other than `target` sees it as `want`
    /// (for `Down`: or has forgotten it).
    pub fn all_see(&self, target: usize, want: State) -> bool {
        (0..self.nodes.len())
            .filter(|&i| i != target && self.nodes[i].up)
            .all(|i| match self.state_of(i, target) {
                None => want == State::Down,
                s => s == Some(want),
            })
    }

    /// A cluster of `n` formed by everyone announcing to member 0 (retried
    /// by the host ticks while alone, as the agents do); with the time it
    /// took.
    pub fn formed(
        n: usize,
        seed: u64,
        loss: f64,
        latency: (u64, u64),
        limit: u64,
    ) -> Option<(SwimSim, u64)> {
        let mut sim = SwimSim::new(n, seed, loss, latency);
        for i in 1..n {
            sim.announce(i, 0);
        }
        let took = sim.rejoin_until(limit, SwimSim::everyone_sees_everyone)?;
        Some((sim, took))
    }

    /// Runs until `cond` holds, checked every [`REJOIN_EVERY`], for at
    /// most `limit` ms; the time it took.
    pub fn rejoin_until(&mut self, limit: u64, cond: impl Fn(&SwimSim) -> bool) -> Option<u64> {
        self.run_while_not(limit, REJOIN_EVERY.as_millis() as u64, cond)
    }
}
