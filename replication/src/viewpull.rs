//! When a node asks its sync peers for their whole member view (push-pull),
//! without IO.
//!
//! SWIM spreads membership by piggybacking updates on probes, a bounded
//! number of times each; a node that misses every copy of one (it joined
//! late, it was busy, a partition healed and hundreds of updates competed
//! for the same packets) holds a stale entry until its own probe cycle
//! reaches that member, which at 1,000 members and 250 ms a probe is
//! minutes away. So a node also pulls a peer's whole view, down members
//! included, in a sync round (the request rides on the round's opening
//! state, the view on the answer):
//!
//! - **Joining**: from its start, and whenever it has no active member,
//!   until a settled peer's view was applied or it has had active members
//!   for [`SETTLED_AFTER_MS`] on its own gossip. Meanwhile it is not
//!   settled: the views it gives say so, and are applied by the asker
//!   without ending its asking.
//! - **Refreshing**: once settled, every [`refresh_every_ms`] (longer in
//!   larger clusters, like memberlist's push-pull, so the bytes stay
//!   bounded) it asks once more ([`ViewPull::ask`]: one round at a time,
//!   again after [`REFRESH_RETRY_MS`]), and applies the first settled view
//!   that comes back, a down verdict about a member it holds active as a
//!   suspicion only (`ViewKind::Refresh` in `membership`).
//!
//! [`ViewPull`] holds that state; the agent and the simulation both drive
//! it, the agent with milliseconds since its start, the simulation with
//! its virtual clock.

/// A node with active members for this long, without a settled view,
/// counts as settled on its own gossip.
pub const SETTLED_AFTER_MS: u64 = 5_000;

/// The refresh interval of a cluster of at most [`REFRESH_SCALE_FROM`]
/// members; larger ones wait longer.
pub const REFRESH_BASE_MS: u64 = 10_000;

/// A due refresh is asked of one sync round at a time: again only after
/// this long without a settled view (the rounds of one node run side by
/// side; each would otherwise ask, and all views but one be dropped).
pub const REFRESH_RETRY_MS: u64 = 5_000;

/// Clusters up to this size refresh every [`REFRESH_BASE_MS`].
pub const REFRESH_SCALE_FROM: usize = 32;

/// How often a settled node in a cluster of `members` pulls a peer's view:
/// the base interval, times one more for each doubling of the cluster
/// beyond [`REFRESH_SCALE_FROM`] (10 s up to 32 members, 20 s at 50, 60 s
/// at 1,000, 100 s at 10,000). A view costs 31 bytes per member over
/// IPv4 (down members included), so with the jitter a node receives about
/// 0.4 KB/s at 1,000 members and 2.5 KB/s at 10,000.
pub fn refresh_every_ms(members: usize) -> u64 {
    if members <= REFRESH_SCALE_FROM {
        return REFRESH_BASE_MS;
    }
    let ratio = members.div_ceil(REFRESH_SCALE_FROM);
    // ceil(log2(ratio)) doublings.
    let doublings = u64::from(usize::BITS - (ratio - 1).leading_zeros());
    REFRESH_BASE_MS * (1 + doublings)
}

/// What to do with a view that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Not asked for (any more): drop it.
    Drop,
    /// Apply it; the node is joining. If the apply fails, call
    /// [`ViewPull::refused`] so that it asks again.
    Join,
    /// Apply it: a periodic refresh.
    Refresh,
}

/// One node's push-pull state.
#[derive(Clone, Debug)]
pub struct ViewPull {
    /// Joining: asks for a view, and the views it gives are not settled.
    want: bool,
    /// A refresh is due: asks for a view until a settled one came.
    refresh: bool,
    /// Since when it has had active members without a break.
    active_since: Option<u64>,
    /// When the next refresh is due (set once settled).
    next_refresh: Option<u64>,
    /// When a round last asked for the due refresh.
    refresh_asked: Option<u64>,
}

impl Default for ViewPull {
    fn default() -> Self {
        Self::new()
    }
}

impl ViewPull {
    /// A node that has just started: it wants a view.
    pub fn new() -> Self {
        ViewPull {
            want: true,
            refresh: false,
            active_since: None,
            next_refresh: None,
            refresh_asked: None,
        }
    }

    /// Whether its sync rounds ask for a view (some round will).
    pub fn asks(&self) -> bool {
        self.want || self.refresh
    }

    /// Whether the round starting `now` asks for a view: every round while
    /// joining; one round per [`REFRESH_RETRY_MS`] while a refresh is due.
    pub fn ask(&mut self, now: u64) -> bool {
        if self.want {
            return true;
        }
        if !self.refresh {
            return false;
        }
        if self
            .refresh_asked
            .is_some_and(|at| now.saturating_sub(at) < REFRESH_RETRY_MS)
        {
            return false;
        }
        self.refresh_asked = Some(now);
        true
    }

    /// Whether it is settled (not joining): the views it gives say so.
    pub fn settled(&self) -> bool {
        !self.want
    }

    /// Its member list changed or a timer fired: `active` members other
    /// than itself, at `now` (ms). `jitter` in `[0, 1)` spreads refreshes:
    /// the next one is due after `refresh_every_ms(active + 1) × (1 +
    /// jitter / 2)`.
    pub fn members(&mut self, now: u64, active: usize, jitter: f64) {
        if active == 0 {
            // Alone (at start, or cut off): join again.
            self.active_since = None;
            self.want = true;
            self.refresh = false;
            self.next_refresh = None;
            return;
        }
        let since = *self.active_since.get_or_insert(now);
        if self.want && now.saturating_sub(since) >= SETTLED_AFTER_MS {
            self.want = false;
        }
        if self.want {
            return;
        }
        let every = refresh_every_ms(active + 1);
        let spread = (every as f64 * jitter.clamp(0.0, 1.0) / 2.0) as u64;
        match self.next_refresh {
            None => self.next_refresh = Some(now + every + spread),
            Some(at) if now >= at => {
                self.refresh = true;
                self.refresh_asked = None;
                self.next_refresh = Some(now + every + spread);
            }
            Some(_) => {}
        }
    }

    /// A view arrived from a peer that says whether it is `settled`. A
    /// settled view ends joining (taken once, so of several rounds
    /// answering together one view is applied) or the due refresh; an
    /// unsettled one is applied while joining, and the asking goes on.
    pub fn arrived(&mut self, settled: bool) -> Take {
        if self.want {
            if settled {
                self.want = false;
                self.refresh = false;
            }
            Take::Join
        } else if self.refresh && settled {
            self.refresh = false;
            Take::Refresh
        } else {
            Take::Drop
        }
    }

    /// A joining view could not be applied: ask again.
    pub fn refused(&mut self) {
        self.want = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_interval_grows_with_each_doubling() {
        assert_eq!(refresh_every_ms(1), 10_000);
        assert_eq!(refresh_every_ms(32), 10_000);
        assert_eq!(refresh_every_ms(33), 20_000);
        assert_eq!(refresh_every_ms(50), 20_000);
        assert_eq!(refresh_every_ms(64), 20_000);
        assert_eq!(refresh_every_ms(65), 30_000);
        assert_eq!(refresh_every_ms(1_000), 60_000);
        assert_eq!(refresh_every_ms(10_000), 100_000);
        assert_eq!(refresh_every_ms(40_000), 120_000);
        assert_eq!(refresh_every_ms(usize::MAX), 10_000 * 60);
    }

    #[test]
    fn a_new_node_asks_until_a_settled_view_then_refreshes_on_schedule() {
        let mut p = ViewPull::new();
        assert!(p.asks() && !p.settled());
        p.members(0, 3, 0.0);
        assert_eq!(p.arrived(false), Take::Join, "unsettled: applied");
        assert!(p.asks(), "and asked again");
        assert_eq!(p.arrived(true), Take::Join);
        assert!(!p.asks() && p.settled());
        assert_eq!(p.arrived(true), Take::Drop, "one settled view is taken");
        p.members(1_000, 3, 0.0);
        assert!(!p.asks());
        p.members(10_999, 3, 0.0);
        assert!(!p.asks());
        p.members(11_000, 3, 0.0);
        assert!(p.asks() && p.settled(), "refresh due; still settled");
        assert!(p.ask(11_000), "one round asks");
        assert!(!p.ask(11_001), "not the rounds beside it");
        assert!(!p.ask(15_999));
        assert!(p.ask(16_000), "again after REFRESH_RETRY_MS without a view");
        assert_eq!(
            p.arrived(false),
            Take::Drop,
            "a refresh wants a settled view"
        );
        assert!(p.asks(), "and goes on asking after an unsettled one");
        assert_eq!(p.arrived(true), Take::Refresh);
        assert!(!p.ask(30_000), "not asked again once it came");
        assert!(!p.asks());
        p.members(21_000, 3, 0.0);
        assert!(p.asks(), "the next one 10 s later");
    }

    #[test]
    fn settles_on_its_own_gossip_and_joins_again_when_alone() {
        let mut p = ViewPull::new();
        p.members(0, 0, 0.0);
        assert!(!p.settled());
        p.members(100, 2, 0.0);
        p.members(5_099, 2, 0.0);
        assert!(!p.settled());
        p.members(5_100, 2, 0.0);
        assert!(p.settled() && !p.asks());
        p.members(6_000, 0, 0.0);
        assert!(!p.settled() && p.asks(), "alone: joining again");
        p.members(6_100, 2, 0.0);
        assert!(!p.settled(), "the 5 s start over");
        assert_eq!(p.arrived(true), Take::Join);
        p.refused();
        assert!(!p.settled(), "a view it could not apply: asks again");
    }

    #[test]
    fn jitter_delays_a_refresh_by_up_to_half_an_interval() {
        let mut p = ViewPull::new();
        p.members(0, 3, 0.99);
        assert_eq!(p.arrived(true), Take::Join);
        p.members(0, 3, 0.99);
        p.members(14_000, 3, 0.99);
        assert!(!p.asks());
        p.members(14_950, 3, 0.99);
        assert!(p.asks());
    }
}
