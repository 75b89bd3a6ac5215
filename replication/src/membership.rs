//! SWIM membership and failure detection, without IO.
//!
//! [`Membership`] wraps a [`foca`] instance: the caller feeds it received
//! packets ([`Membership::handle_data`]), fired timers
//! ([`Membership::handle_timer`]) and join requests ([`Membership::announce`]),
//! and carries out the [`Output`]s each call returns: packets to send, timers
//! to schedule, members that came up or went down. Time and randomness come in
//! from outside (the timers' durations are the only notion of time; the rng
//! is seeded by the caller), so the simulation tests drive many members over
//! a fake network with fixed seeds, and the agent drives one over QUIC
//! datagrams.
//!
//! A member's identity is its actor id, its gossip address and a start stamp
//! ([`Identity::ts`]). The address is the identity's SWIM "address": one
//! member per address, and when two identities share an address the one with
//! the later stamp wins. A node that restarts (same actor id, later stamp) is
//! therefore a new identity that replaces its old incarnation at once instead
//! of being confused with it, and a node declared down while still running
//! renews its stamp and rejoins.
//!
//! Failure detection is tuned for discovery ([`tuned_config`]): probes every
//! second, suspicion before down (so one slow probe never flaps a member
//! out), and a suspicion time that grows with the log of the cluster size,
//! about 4 s for 20 members: a killed agent is marked down everywhere in well
//! under 10 s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use bytes::Bytes;
use corro_store::ActorId;
use foca::{
    AccumulatingRuntime, Config, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec,
};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

pub use foca::{State, Timer};

/// Largest SWIM packet: fits a QUIC datagram on a path with the minimum
/// 1,200-byte MTU (QUIC and UDP/IP headers take the rest).
pub const MAX_PACKET_BYTES: usize = 1_100;

/// A cluster member's identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub actor: ActorId,
    /// Where it accepts gossip.
    pub addr: SocketAddr,
    /// Start stamp (e.g. milliseconds since the epoch when the agent
    /// started); bumped when the member is declared down while alive.
    pub ts: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.actor, self.addr, self.ts)
    }
}

impl Identity {
    /// A stand-in for a peer known only by address (bootstrap entries,
    /// remembered peers): announcing to it reaches whoever is there, whose
    /// answer carries the real identity.
    pub fn placeholder(addr: SocketAddr) -> Self {
        Identity {
            actor: ActorId([0; 16]),
            addr,
            ts: 0,
        }
    }
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Identity {
            ts: self.ts.wrapping_add(1).max(1),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.ts, self.actor) > (adversary.ts, adversary.actor)
    }
}

/// What the caller must do after a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this packet to that member's address.
    Send(Identity, Bytes),
    /// Call [`Membership::handle_timer`] with this timer after the delay.
    Schedule(Duration, Timer<Identity>),
    /// A member became active (alive or suspect).
    Up(Identity),
    /// A member was declared down (or left).
    Down(Identity),
    /// `old` was replaced by `new` at the same address (a restart).
    Renamed { old: Identity, new: Identity },
    /// This node was declared down and rejoined under a renewed identity.
    Rejoined(Identity),
}

/// Why a call failed; membership state is intact after every variant (the
/// offending packet or timer is ignored).
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("membership packet refused: {0}")]
    Packet(foca::Error),
    #[error("membership timer failed: {0}")]
    Timer(foca::Error),
}

/// One member's view of the cluster.
pub struct Membership {
    foca: Foca<Identity, PostcardCodec, Pcg64, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<Identity>,
    /// Active members seen (for sizing the config).
    active: usize,
    /// Cluster size the current config was tuned for.
    tuned_for: u32,
}

/// SWIM settings for a cluster of `size` members: probe every second with a
/// 500 ms round trip allowance and 3 indirect probes; piggyback each update
/// on at least 8 messages; suspect for
/// `3 s × max(1, log10(size))` before declaring down; gossip to 3 members
/// every 200 ms; re-announce every 10 s (to 2 down members too, so a healed
/// partition merges); forget down members after 2 minutes.
pub fn tuned_config(size: u32) -> Config {
    let size = NonZeroU32::new(size.max(1)).unwrap_or(NonZeroU32::MIN);
    let mut c = Config::new_lan(size);
    // Piggybacked updates are cheap; send each often enough to survive
    // loss in clusters of any size up to ~100 (more for bigger ones).
    c.max_transmissions =
        Config::new_lan(size.max(NonZeroU32::new(100).unwrap_or(size))).max_transmissions;
    let factor = f64::from(size.get()).log10().max(1.0);
    c.suspect_to_down_after = Duration::from_secs_f64(3.0 * factor);
    c.max_packet_size = NonZeroUsize::new(MAX_PACKET_BYTES).unwrap_or(NonZeroUsize::MIN);
    c.remove_down_after = Some(Duration::from_secs(120));
    c.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::MIN,
    });
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    c
}

impl Membership {
    /// A member with identity `me`; `seed` seeds its random choices.
    pub fn new(me: Identity, seed: u64) -> Self {
        use rand_pcg::rand_core::SeedableRng;
        Membership {
            foca: Foca::new(
                me,
                tuned_config(1),
                Pcg64::seed_from_u64(seed),
                PostcardCodec,
            ),
            runtime: AccumulatingRuntime::new(),
            active: 0,
            tuned_for: 1,
        }
    }

    pub fn identity(&self) -> &Identity {
        self.foca.identity()
    }

    /// Asks the member at `addr` to let this node join (bootstrap, rejoin
    /// after restart, retries while alone).
    pub fn announce(&mut self, addr: SocketAddr) -> Vec<Output> {
        // Sending to a placeholder never fails in foca (it only encodes).
        let _ = self
            .foca
            .announce(Identity::placeholder(addr), &mut self.runtime);
        self.drain()
    }

    /// Handles a received packet.
    pub fn handle_data(&mut self, data: &[u8]) -> Result<Vec<Output>, MembershipError> {
        let result = self.foca.handle_data(data, &mut self.runtime);
        let out = self.drain();
        match result {
            Ok(()) => Ok(out),
            // Our own echo (e.g. an announce that looped back) is harmless.
            Err(foca::Error::DataFromOurselves) => Ok(out),
            Err(e) => Err(MembershipError::Packet(e)),
        }
    }

    /// Handles a timer scheduled by an earlier [`Output::Schedule`].
    pub fn handle_timer(&mut self, timer: Timer<Identity>) -> Result<Vec<Output>, MembershipError> {
        let result = self.foca.handle_timer(timer, &mut self.runtime);
        let out = self.drain();
        result.map(|()| out).map_err(MembershipError::Timer)
    }

    /// Tells the cluster this node is leaving (on shutdown).
    pub fn leave(&mut self) -> Vec<Output> {
        let _ = self.foca.leave_cluster(&mut self.runtime);
        self.drain()
    }

    /// Every member this node knows, with its state (down members are
    /// kept for a while).
    pub fn members(&self) -> Vec<(Identity, State)> {
        self.foca
            .iter_membership_state()
            .map(|m| (*m.id(), m.state()))
            .collect()
    }

    /// Active members (alive or suspect).
    pub fn active(&self) -> Vec<Identity> {
        self.foca.iter_members().map(|m| *m.id()).collect()
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => out.push(Output::Up(id)),
                OwnedNotification::MemberDown(id) => out.push(Output::Down(id)),
                OwnedNotification::Rename(old, new) => out.push(Output::Renamed { old, new }),
                OwnedNotification::Rejoin(id) => out.push(Output::Rejoined(id)),
                _ => {}
            }
        }
        while let Some((to, data)) = self.runtime.to_send() {
            out.push(Output::Send(to, data));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            out.push(Output::Schedule(after, timer));
        }
        self.retune();
        out
    }

    /// Re-tunes timings when the cluster size moved by a factor of two.
    fn retune(&mut self) {
        let active = self.foca.num_members() + 1;
        if active == self.active {
            return;
        }
        self.active = active;
        let active = u32::try_from(active).unwrap_or(u32::MAX);
        let moved = active > self.tuned_for.saturating_mul(2) || active < self.tuned_for / 2;
        if moved && self.foca.set_config(tuned_config(active)).is_ok() {
            self.tuned_for = active;
        }
    }
}

/// Active members by address, as the IO layer tracks them from outputs.
pub type MemberMap = BTreeMap<SocketAddr, Identity>;
