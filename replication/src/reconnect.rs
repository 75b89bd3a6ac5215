//! Reconnecting to members declared down, without IO.
//!
//! SWIM only probes members it holds as active, and the core forgets a
//! down member after a while. After a partition each side has declared
//! the other down; when the network heals nobody on either side would
//! ever talk across again, unless a node is entirely alone (it then
//! re-announces to its seeds). [`Reconnect`] remembers the addresses of
//! members declared down (for [`RECONNECT_FOR`], at most
//! [`RECONNECT_MAX`] of them) and, every [`RECONNECT_EVERY`], lets the
//! host announce itself to one of them at random. The announce is
//! answered by whoever runs there now; a member that was itself declared
//! down learns it and rejoins under a renewed identity, and the views
//! merge by gossip from there.
//!
//! Each tick a node tries with probability `down / active` (capped at 1),
//! so one crashed host costs the whole cluster about one announce per
//! interval whatever its size, while after a split every node of the
//! smaller side, and a matching share of the larger, tries every
//! interval. An address is tried again only after a back-off that doubles
//! from [`RECONNECT_EVERY`] to [`RECONNECT_BACKOFF_MAX`], and a node makes
//! at most one periodic try per interval (plus early ones, below), so
//! however many down addresses it holds (a redeployed fleet, or a hostile
//! member gossiping identities at someone else's address), one node sends
//! at most one announce per 10 s and a second.
//!
//! Merging after a partition takes one exchange per member of a side: a
//! member held as down learns it (the answer to its announce, or to the
//! announce it receives, says so), renews its identity, and only then is
//! it taken back. At one try per interval that is a coupon collector over
//! hundreds of members (minutes in the simulation at 1,000 nodes). So when
//! a member held as down comes back (a sign that a partition healed), the
//! node tries once more at once ([`Reconnect::pick_early`], with the same
//! probability, at most every [`RECONNECT_EARLY_GAP`]): each return
//! triggers more, and the merge spreads like gossip.
//!
//! A member that left with a goodbye is also "down" to the core, so its
//! address is tried too; the cost is one announce to an empty address now
//! and then until it ages out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;

use crate::membership::Output;

/// How often a node may announce itself to a member it holds as down.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(10);
/// How long a down member's address is tried (a partition longer than
/// this heals through the seeds, `corrosion cluster rejoin` or sync).
pub const RECONNECT_FOR: Duration = Duration::from_secs(24 * 3600);
/// Most addresses remembered (the oldest give way).
pub const RECONNECT_MAX: usize = 4096;
/// Shortest time between two early tries (after returns).
pub const RECONNECT_EARLY_GAP: Duration = Duration::from_secs(1);
/// Longest wait before an address is tried again.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// One remembered address (times in ms on the host's clock).
#[derive(Debug, Clone, Copy)]
struct Entry {
    since: u64,
    /// Not tried again before this.
    next: u64,
    tries: u32,
}

/// Addresses of members declared down.
#[derive(Debug, Clone)]
pub struct Reconnect {
    me: SocketAddr,
    down: HashMap<SocketAddr, Entry>,
    /// When the last early try was made.
    early: Option<u64>,
}

impl Reconnect {
    /// For the node at `me` (never a candidate).
    pub fn new(me: SocketAddr) -> Reconnect {
        Reconnect {
            me,
            down: HashMap::new(),
            early: None,
        }
    }

    /// Takes note of one of the core's outputs at `now_ms`: a member down
    /// becomes a candidate; one up no longer is (a member that comes back
    /// under a new identity is up too; a rename alone may be a down member
    /// replaced by another down one). True when a member held as down came
    /// back.
    pub fn observe(&mut self, now_ms: u64, event: &Output) -> bool {
        match event {
            Output::Down(id) if id.addr != self.me => {
                if self.down.contains_key(&id.addr) {
                    return false;
                }
                if self.down.len() >= RECONNECT_MAX {
                    let oldest = self
                        .down
                        .iter()
                        .min_by_key(|(_, e)| e.since)
                        .map(|(a, _)| *a);
                    if let Some(a) = oldest {
                        self.down.remove(&a);
                    }
                }
                let entry = Entry {
                    since: now_ms,
                    next: now_ms,
                    tries: 0,
                };
                self.down.insert(id.addr, entry);
                false
            }
            Output::Up(id) => self.down.remove(&id.addr).is_some(),
            _ => false,
        }
    }

    /// After a member held as down came back ([`Reconnect::observe`]): the
    /// address to announce to now, if any, as [`Reconnect::pick`] decides,
    /// at most once per [`RECONNECT_EARLY_GAP`].
    pub fn pick_early(
        &mut self,
        now_ms: u64,
        active: usize,
        rng: &mut impl Rng,
    ) -> Option<SocketAddr> {
        let gap = RECONNECT_EARLY_GAP.as_millis() as u64;
        if self.early.is_some_and(|t| now_ms.saturating_sub(t) < gap) {
            return None;
        }
        self.early = Some(now_ms);
        self.pick(now_ms, active, rng)
    }

    /// On a tick: the address to announce to now, if any, among those
    /// whose back-off has passed. `active` is the number of members the
    /// node holds as active. Entries older than [`RECONNECT_FOR`] are
    /// dropped first.
    pub fn pick(&mut self, now_ms: u64, active: usize, rng: &mut impl Rng) -> Option<SocketAddr> {
        let window = RECONNECT_FOR.as_millis() as u64;
        self.down
            .retain(|_, e| now_ms.saturating_sub(e.since) < window);
        if self.down.is_empty() {
            return None;
        }
        let p = (self.down.len() as f64 / active.max(1) as f64).min(1.0);
        if !rng.random_bool(p) {
            return None;
        }
        let mut due: Vec<SocketAddr> = self
            .down
            .iter()
            .filter(|(_, e)| e.next <= now_ms)
            .map(|(a, _)| *a)
            .collect();
        if due.is_empty() {
            return None;
        }
        // In address order, not the map's (seeded per process): the same
        // seed picks the same address, so a simulation run repeats.
        due.sort_unstable();
        let to = due[rng.random_range(0..due.len())];
        if let Some(e) = self.down.get_mut(&to) {
            e.tries = e.tries.saturating_add(1);
            let base = RECONNECT_EVERY.as_millis() as u64;
            let cap = RECONNECT_BACKOFF_MAX.as_millis() as u64;
            let wait = base.saturating_mul(1 << (e.tries - 1).min(16)).min(cap);
            e.next = now_ms + wait;
        }
        Some(to)
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.down.len()
    }

    /// True when no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.down.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Identity;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn id(i: u16, ts: u64) -> Identity {
        Identity {
            actor: corro_store::ActorId([i as u8; 16]),
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
            ts,
        }
    }

    #[test]
    fn down_members_are_tried_until_they_come_back_or_age_out() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut r = Reconnect::new(id(0, 1).addr);
        assert_eq!(r.pick(0, 10, &mut rng), None);
        // Its own address is never a candidate.
        r.observe(0, &Output::Down(id(0, 1)));
        assert!(r.is_empty());
        r.observe(0, &Output::Down(id(1, 1)));
        r.observe(5, &Output::Down(id(2, 1)));
        assert_eq!(r.len(), 2);
        // With as many down as active, a tick picks one of them; each is
        // then left alone for its back-off.
        let a = r.pick(10, 2, &mut rng).expect("p = 1");
        let b = r.pick(11, 2, &mut rng).expect("the other one is due");
        assert_ne!(a, b);
        assert!([id(1, 1).addr, id(2, 1).addr].contains(&a));
        assert_eq!(r.pick(12, 2, &mut rng), None, "both backing off");
        let every = RECONNECT_EVERY.as_millis() as u64;
        assert!(r.pick(10 + 2 * every, 2, &mut rng).is_some());
        // A rename alone does not take an address off (a down member may
        // be replaced by another down one); coming back up does (a new
        // incarnation counts).
        assert!(!r.observe(
            20,
            &Output::Renamed {
                old: id(2, 1),
                new: id(2, 2),
            },
        ));
        assert_eq!(r.len(), 2);
        assert!(r.observe(20, &Output::Up(id(1, 2))));
        assert!(r.observe(20, &Output::Up(id(2, 2))));
        assert!(r.is_empty());
        assert!(!r.observe(20, &Output::Up(id(4, 1))), "never held down");
        r.observe(100, &Output::Down(id(3, 1)));
        let window = RECONNECT_FOR.as_millis() as u64;
        assert!(r.pick(100 + window - 1, 1, &mut rng).is_some());
        assert_eq!(r.pick(100 + window, 1, &mut rng), None);
        assert!(r.is_empty());
    }

    #[test]
    fn an_address_is_tried_with_a_doubling_back_off() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut r = Reconnect::new(id(0, 1).addr);
        r.observe(0, &Output::Down(id(1, 1)));
        let mut tries = Vec::new();
        for t in (0..3_600_000u64).step_by(1_000) {
            if r.pick(t, 1, &mut rng).is_some() {
                tries.push(t / 1000);
            }
        }
        // 10, 20, 40, 80, 160 s apart, then every 300 s.
        let gaps: Vec<u64> = tries.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(&gaps[..7], &[10, 20, 40, 80, 160, 300, 300], "{tries:?}");
        assert!(tries.len() < 20);
    }

    #[test]
    fn early_tries_are_spaced() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut r = Reconnect::new(id(0, 1).addr);
        r.observe(0, &Output::Down(id(1, 1)));
        r.observe(0, &Output::Down(id(2, 1)));
        r.observe(0, &Output::Down(id(3, 1)));
        assert!(r.pick_early(1_000, 1, &mut rng).is_some());
        assert_eq!(r.pick_early(1_999, 1, &mut rng), None);
        assert!(r.pick_early(2_000, 1, &mut rng).is_some());
        // The periodic tick is not affected by the gap.
        assert!(r.pick(2_001, 1, &mut rng).is_some());
    }

    #[test]
    fn the_chance_follows_down_over_active_and_the_list_is_bounded() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut r = Reconnect::new(id(0, 1).addr);
        r.observe(0, &Output::Down(id(1, 1)));
        // One down among 100 active: about 1 % of ticks (ticks 5 min apart,
        // past any back-off).
        let hits = (0..280u64)
            .filter(|t| r.pick(t * 300_000, 100, &mut rng).is_some())
            .count();
        assert!(hits <= 12, "{hits}");
        let mut r = Reconnect::new(id(0, 1).addr);
        for i in 1..=50u16 {
            r.observe(0, &Output::Down(id(i, 1)));
        }
        // 50 down among 100 active: about half the ticks.
        let hits = (0..280u64)
            .filter(|t| r.pick(t * 300_000, 100, &mut rng).is_some())
            .count();
        assert!((100..180).contains(&hits), "{hits}");
        // Past the cap the oldest entry gives way.
        let mut r = Reconnect::new(id(0, 1).addr);
        for i in 0..=RECONNECT_MAX as u64 {
            let addr = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1 + (i >> 16) as u16));
            let who = Identity { addr, ..id(1, 1) };
            r.observe(i, &Output::Down(who));
        }
        assert_eq!(r.len(), RECONNECT_MAX);
        let first = SocketAddr::from(([10, 0, 0, 0], 1));
        assert!(!r.down.contains_key(&first), "the oldest was evicted");
    }
}
