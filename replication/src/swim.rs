//! The SWIM driver: one task runs a [`Membership`] on tokio, feeding it
//! received packets, fired timers and join requests, and handing what it
//! asks for to a [`SwimIo`] (send a packet, report members and events).
//! The agent and the gossip library both run this driver, each with its
//! own IO (QUIC datagrams framed with its own version byte, its own
//! member bookkeeping), so a fix to the loop reaches both.
//!
//! Inputs go through a bounded queue ([`SWIM_QUEUE`]): received packets
//! beyond it are dropped (SWIM tolerates loss; the caller counts them).
//! Timers live in the driver's own delay queue, read before the inputs (a
//! flood of packets does not delay probes: before an expired timer, at
//! most [`DRAIN_BEFORE_TIMER`] packets already queued are handled, so that
//! a refutation that arrived during a stall counts), and vanish with the driver
//! (foca keeps down members for a day, each with a removal timer: no task
//! per timer). While the node
//! has no active member the driver calls [`SwimIo::alone`] every
//! [`REJOIN_EVERY`], for the IO to announce this node to its seeds again;
//! and every [`RECONNECT_EVERY`] it may announce the node to one member it
//! holds as down ([`Reconnect`]), which is how the views merge again after
//! a partition heals.
//! The loop ends after [`SwimHandle::leave`] (goodbyes handed to the IO
//! first) or [`SwimHandle::stop`] (none, as a crash); both go on a control
//! channel read before the inputs, so a full queue does not delay them.
//! The driver holds a sender of its own queue (for early reconnects), so
//! it does not end by itself when its handles are dropped: the host leaves
//! or stops it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::membership::{
    Identity, Membership, MembershipError, Output, State, Timer, ViewEntry, ViewKind,
};
use crate::reconnect::{RECONNECT_EVERY, Reconnect};

/// Inputs queued for the driver beyond this are dropped (packets) or wait
/// (timers).
pub const SWIM_QUEUE: usize = 4096;

/// Queued packets handled before an expired timer (see the loop).
pub const DRAIN_BEFORE_TIMER: usize = 64;
/// How often a node with no active member asks its IO to re-announce it.
pub const REJOIN_EVERY: Duration = Duration::from_secs(2);

/// What the driver needs from its host.
pub trait SwimIo: Send + 'static {
    /// Sends one SWIM packet to `to`, best effort; must not block.
    fn send(&mut self, to: SocketAddr, packet: Bytes);

    /// After every step, before its packets are sent: the member list now
    /// (entries at this node's own address, its stale incarnations, left out),
    /// then what happened in the step (the core's outputs other than sends
    /// and timers), in order.
    fn step(&mut self, members: Vec<(Identity, State)>, events: Vec<Output>);

    /// A received packet the core refused (undecodable, or not for us).
    fn refused(&mut self, _error: MembershipError) {}

    /// Called every [`REJOIN_EVERY`] while no member is active: the IO may
    /// announce this node to its seeds ([`SwimHandle::announce`]).
    fn alone(&mut self) {}

    /// Every [`RECONNECT_EVERY`], and after an early try: the address of
    /// a member held as down that this node is announcing itself to, if
    /// any, and how many such addresses it remembers.
    fn reconnect_tick(&mut self, _announced: Option<SocketAddr>, _candidates: usize) {}
}

enum Input {
    Data(Bytes),
    Announce(SocketAddr),
    /// A copy of the whole view, for a peer that joined.
    View(oneshot::Sender<Vec<ViewEntry>>),
    /// A peer's whole view, to apply; answered once the member list that
    /// results was handed to the IO.
    ApplyView(Vec<ViewEntry>, ViewKind, oneshot::Sender<bool>),
}

/// Leaving and stopping go on their own channel, read before the inputs:
/// a full input queue must not delay them.
enum Control {
    Leave(oneshot::Sender<()>),
    Stop,
}

/// Feeds the driver (cheap to clone).
#[derive(Clone)]
pub struct SwimHandle {
    tx: mpsc::Sender<Input>,
    control: mpsc::Sender<Control>,
}

/// The driver's end of the queue, for [`run`].
pub struct SwimQueue {
    rx: mpsc::Receiver<Input>,
    tx: mpsc::Sender<Input>,
    control: mpsc::Receiver<Control>,
}

/// A new queue: the handle to feed the driver, and its end for [`run`].
pub fn queue() -> (SwimHandle, SwimQueue) {
    let (tx, rx) = mpsc::channel(SWIM_QUEUE);
    let (control_tx, control) = mpsc::channel(4);
    let handle = SwimHandle {
        tx: tx.clone(),
        control: control_tx,
    };
    (handle, SwimQueue { rx, tx, control })
}

impl SwimHandle {
    /// Queues a received packet (version framing already removed); false
    /// when the queue is full or the driver is gone (the packet is
    /// dropped).
    pub fn received(&self, packet: Bytes) -> bool {
        self.tx.try_send(Input::Data(packet)).is_ok()
    }

    /// Asks the node at `addr` to let this node join; false when it could
    /// not be queued.
    pub fn announce(&self, addr: SocketAddr) -> bool {
        self.tx.try_send(Input::Announce(addr)).is_ok()
    }

    /// Leaves: the goodbyes are handed to the IO, then the driver stops.
    /// Returns once they are (or at once if the driver is gone).
    pub async fn leave(&self) {
        let (done, wait) = oneshot::channel();
        if self.control.send(Control::Leave(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Stops the driver without a goodbye (as a crash would); it stops
    /// before it handles any other input.
    pub async fn stop(&self) {
        let _ = self.control.send(Control::Stop).await;
    }

    /// This node's whole member view, down members included
    /// ([`Membership::view`]); `None` when the queue is full or the driver
    /// is gone.
    pub async fn view(&self) -> Option<Vec<ViewEntry>> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(Input::View(tx)).ok()?;
        rx.await.ok()
    }

    /// Applies a peer's whole view ([`Membership::apply_view`]); returns
    /// true once the member list that results has been handed to the IO
    /// ([`SwimIo::step`]), false when it could not be queued, the core
    /// refused it (too long, or foca failed part-way) or the driver is gone.
    pub async fn apply_view(&self, view: Vec<ViewEntry>, kind: ViewKind) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.try_send(Input::ApplyView(view, kind, tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Inputs waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        SWIM_QUEUE - self.tx.capacity()
    }
}

/// Hands one queued input to the core; answers to send once the step's
/// member list went to the IO go to `after_step`.
fn handle_input<I: SwimIo>(
    core: &mut Membership,
    io: &mut I,
    input: Input,
    after_step: &mut Vec<(oneshot::Sender<bool>, bool)>,
) -> Vec<Output> {
    match input {
        Input::Data(d) => {
            // What the core did before an error still counts.
            let (out, result) = core.handle_data(&d);
            if let Err(e) = result {
                io.refused(e);
            }
            out
        }
        Input::Announce(a) => core.announce(a),
        Input::View(reply) => {
            let _ = reply.send(core.view());
            Vec::new()
        }
        Input::ApplyView(view, kind, done) => {
            let (out, result) = core.apply_view(view, kind);
            let ok = result.is_ok();
            if let Err(e) = result {
                io.refused(e);
            }
            after_step.push((done, ok));
            out
        }
    }
}

/// Runs `core` until [`SwimHandle::leave`] or [`SwimHandle::stop`].
pub async fn run<I: SwimIo>(mut core: Membership, queue: SwimQueue, mut io: I) {
    let SwimQueue {
        mut rx,
        tx,
        mut control,
    } = queue;
    let mut rejoin = tokio::time::interval(REJOIN_EVERY);
    rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = tokio::time::Instant::now();
    let mut reconnect = Reconnect::new(core.identity().addr);
    let mut reconnect_tick = tokio::time::interval_at(start + RECONNECT_EVERY, RECONNECT_EVERY);
    reconnect_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(rand::random());
    let mut timers: tokio_util::time::DelayQueue<Timer> = tokio_util::time::DelayQueue::new();
    let mut after_step = Vec::new();
    loop {
        let (out, done) = tokio::select! {
            biased;
            c = control.recv() => match c {
                None | Some(Control::Stop) => break,
                Some(Control::Leave(done)) => (core.leave(), Some(done)),
            },
            // A timer's error (an incomplete probe cycle after a stall)
            // comes with outputs to carry out: the next probe.
            Some(t) = std::future::poll_fn(|cx| timers.poll_expired(cx)), if !timers.is_empty() => {
                // Packets that arrived before the timer is handled go
                // first: after this process stalled (a saturated CPU), a
                // suspect's refutation waiting in the queue must clear the
                // suspicion before the suspicion's own timer, which
                // expired during the stall too, declares it down. Bounded,
                // so a flood delays a timer (and a stop) by at most that
                // many packets.
                let mut out = Vec::new();
                for _ in 0..DRAIN_BEFORE_TIMER {
                    match rx.try_recv() {
                        Ok(input) => {
                            out.extend(handle_input(&mut core, &mut io, input, &mut after_step))
                        }
                        Err(_) => break,
                    }
                }
                out.extend(core.handle_timer(t.into_inner()).0);
                (out, None)
            }
            input = rx.recv() => match input {
                None => break,
                Some(input) => (handle_input(&mut core, &mut io, input, &mut after_step), None),
            },
            _ = rejoin.tick() => {
                if core.active_count() == 0 {
                    io.alone();
                }
                continue;
            }
            _ = reconnect_tick.tick() => {
                let now = start.elapsed().as_millis() as u64;
                let picked = reconnect.pick(now, core.active_count(), &mut rng);
                io.reconnect_tick(picked, reconnect.len());
                match picked {
                    Some(to) => (core.announce(to), None),
                    None => continue,
                }
            }
        };
        let now = start.elapsed().as_millis() as u64;
        // Events first: a member down or restarted drops its connection
        // before this step's packets (a reply to the new incarnation) go.
        let (mut events, mut sends) = (Vec::new(), Vec::new());
        let mut returned = false;
        for o in out {
            match o {
                Output::Send(to, packet) => sends.push((to.addr, packet)),
                Output::Schedule(after, timer) => {
                    timers.insert(timer, after);
                }
                other => {
                    returned |= reconnect.observe(now, &other);
                    events.push(other);
                }
            }
        }
        let me = core.identity().addr;
        let members = core.members().into_iter().filter(|(id, _)| id.addr != me);
        io.step(members.collect(), events);
        for (done, ok) in after_step.drain(..) {
            let _ = done.send(ok);
        }
        for (to, packet) in sends {
            io.send(to, packet);
        }
        if returned
            && let Some(to) = reconnect.pick_early(now, core.active_count(), &mut rng)
            && tx.try_send(Input::Announce(to)).is_ok()
        {
            io.reconnect_tick(Some(to), reconnect.len());
        }
        if let Some(done) = done {
            // Give the goodbyes' sends a turn before acknowledging.
            tokio::task::yield_now().await;
            let _ = done.send(());
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// Delivers packets between drivers in memory.
    type Net = Arc<Mutex<HashMap<SocketAddr, SwimHandle>>>;

    struct MemIo {
        net: Net,
        members: Arc<Mutex<Vec<(Identity, State)>>>,
        seeds: Vec<SocketAddr>,
        me: SocketAddr,
    }

    impl SwimIo for MemIo {
        fn send(&mut self, to: SocketAddr, packet: Bytes) {
            if let Some(h) = self.net.lock().unwrap_or_else(|e| e.into_inner()).get(&to) {
                h.received(packet);
            }
        }
        fn step(&mut self, members: Vec<(Identity, State)>, _events: Vec<Output>) {
            *self.members.lock().unwrap_or_else(|e| e.into_inner()) = members;
        }
        fn alone(&mut self) {
            let net = self.net.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = net.get(&self.me) {
                self.seeds.iter().for_each(|s| {
                    h.announce(*s);
                });
            }
        }
    }

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000 + i))
    }

    type Started = (
        SwimHandle,
        Arc<Mutex<Vec<(Identity, State)>>>,
        tokio::task::JoinHandle<()>,
    );

    fn start(net: &Net, i: u16, seeds: Vec<SocketAddr>) -> Started {
        let me = Identity {
            actor: corro_store::ActorId::random(),
            addr: addr(i),
            ts: 1,
        };
        let (handle, queue) = queue();
        net.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(me.addr, handle.clone());
        let members = Arc::new(Mutex::new(Vec::new()));
        let io = MemIo {
            net: net.clone(),
            members: members.clone(),
            seeds,
            me: me.addr,
        };
        let task = tokio::spawn(run(Membership::new(me, u64::from(i)), queue, io));
        (handle, members, task)
    }

    fn states(m: &Arc<Mutex<Vec<(Identity, State)>>>) -> Vec<(SocketAddr, State)> {
        let mut v: Vec<_> = m
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, s)| (id.addr, *s))
            .collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// Waits (virtual time) until `cond` holds; the time it took.
    async fn until(limit: Duration, cond: impl Fn() -> bool) -> Option<Duration> {
        let mut waited = Duration::ZERO;
        while !cond() {
            if waited >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        Some(waited)
    }

    fn sees(m: &Arc<Mutex<Vec<(Identity, State)>>>, i: u16, want: Option<State>) -> bool {
        let s = states(m);
        s.iter().find(|(a, _)| *a == addr(i)).map(|(_, st)| *st) == want
    }

    #[tokio::test(start_paused = true)]
    async fn members_join_through_rejoin_and_see_a_leave_and_a_crash() {
        let net: Net = Arc::default();
        // b and c only know a as a seed, and a is not reachable yet: their
        // first announces are lost, the rejoin tick retries them.
        let (b, _bm, bt) = start(&net, 1, vec![addr(0)]);
        let (c, cm, ct) = start(&net, 2, vec![addr(0)]);
        tokio::time::sleep(3 * REJOIN_EVERY).await;
        assert!(states(&cm).is_empty(), "joined an unreachable seed");
        let (_a, am, _at) = start(&net, 0, vec![]);
        let all_alive = |m: &Arc<Mutex<Vec<(Identity, State)>>>, n: usize| {
            let s = states(m);
            s.len() == n && s.iter().all(|(_, st)| *st == State::Alive)
        };
        until(Duration::from_secs(30), || {
            all_alive(&am, 2) && all_alive(&cm, 2)
        })
        .await
        .unwrap_or_else(|| panic!("no join: {:?}", states(&am)));
        // b leaves with a goodbye: a sees it down at once (probing alone
        // takes seconds), and b's driver ends.
        b.leave().await;
        tokio::time::timeout(Duration::from_secs(5), bt)
            .await
            .expect("the driver ends after leaving")
            .ok();
        until(Duration::from_millis(500), || {
            sees(&am, 1, Some(State::Down)) || sees(&am, 1, None)
        })
        .await
        .expect("the goodbye marks b down at once");
        // c stops as a crash: no goodbye, so a still sees it alive for a
        // while, then probes mark it down.
        c.stop().await;
        tokio::time::timeout(Duration::from_secs(5), ct)
            .await
            .expect("the driver ends when stopped")
            .ok();
        // (Probes may already suspect it: suspicion is not down.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            sees(&am, 2, Some(State::Alive)) || sees(&am, 2, Some(State::Suspect)),
            "a crash said goodbye: {:?}",
            states(&am)
        );
        until(Duration::from_secs(60), || {
            sees(&am, 2, Some(State::Down)) || sees(&am, 2, None)
        })
        .await
        .expect("the crash is detected by probes");
    }

    /// Push-pull through the driver: a copy of one node's whole view,
    /// applied by another, is in the second's member list (the list the IO
    /// gets) by the time `apply_view` returns, down members included.
    #[tokio::test(start_paused = true)]
    async fn a_view_copied_through_the_driver_is_in_the_member_list_when_applied() {
        let net: Net = Arc::default();
        let (a, am, _at) = start(&net, 0, vec![]);
        let (_b, _bm, _bt) = start(&net, 1, vec![addr(0)]);
        let (c, _cm, _ct) = start(&net, 2, vec![addr(0)]);
        until(Duration::from_secs(30), || states(&am).len() == 2)
            .await
            .expect("b and c joined a");
        // c crashes; a holds it as down.
        c.stop().await;
        until(Duration::from_secs(60), || sees(&am, 2, Some(State::Down)))
            .await
            .expect("a holds c as down");
        let view = a.view().await.expect("a's view");
        assert_eq!(view.len(), 3, "b, c and a itself: {view:?}");
        // d is isolated (nobody knows it): only the view tells it anything.
        let d_net: Net = Arc::default();
        let (d, dm, _dt) = start(&d_net, 3, vec![]);
        assert!(d.apply_view(view, ViewKind::Join).await);
        assert_eq!(
            states(&dm),
            vec![
                (addr(0), State::Alive),
                (addr(1), State::Alive),
                (addr(2), State::Down)
            ]
        );
    }
}
