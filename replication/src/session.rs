//! One anti-entropy sync round as two state machines, without IO.
//!
//! [`Pull`] is the initiator's side, [`Serve`] the responder's. Each takes
//! the peer's decoded messages and answers with [`Step`]s for its driver to
//! carry out in order: changesets to apply (cut into batches at version
//! boundaries by a [`Batcher`], so a driver can apply one batch while it
//! receives the next), messages to send, the end of the round. The store
//! work (serving the planned requests, applying) and the transport stay
//! with the driver: the agent drives these over QUIC streams, the seeded
//! simulation (`tests/sim.rs`) over a lossy in-memory network, so both run
//! the same round logic.
//!
//! The round: the initiator opens with its [`SyncState`]; the responder
//! validates it, plans what the initiator lacks ([`plan`], at most
//! `max_versions` versions), streams those changesets (`SyncChanges`),
//! then its own state; the initiator applies what arrived and ends with
//! `SyncDone`. Rounds pull: the initiator does not push (a responder still
//! accepts `SyncChanges` before `SyncDone`, from peers that push).
//!
//! A digest round ([`Pull::open_digest`]) opens with a [`Digest`] of the
//! initiator's state instead; the responder answers with the buckets that
//! differ (`SyncBuckets`), the initiator sends its state for those buckets
//! only, and the round goes on as above over the actors in them (the
//! responder's closing state is restricted the same way). When no bucket
//! differs the initiator ends the round at once.

use corro_store::Changeset;

use crate::digest::{Buckets, Digest, InvalidDigest, buckets_for};
use crate::sync::{InvalidState, SyncRequest, SyncState, plan};
use crate::wire::Message;

/// Changes collected before a batch is handed out to apply, at a version
/// boundary. Small, so that a round of many small versions is applied
/// while the rest of it arrives (catch-up of single-row histories: ~80,000
/// versions/s with 200,000 here, ~100,000 with this).
pub const APPLY_BATCH_CHANGES: usize = 20_000;

/// Changes that force a batch in the middle of a version (a huge version
/// is applied in pieces, buffered until complete: slower, so only past
/// this many; at least four batches).
pub const MID_VERSION_CUT: usize = 800_000;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Apply these changesets (batches in the order given).
    Apply(Vec<Changeset>),
    /// Send this message to the peer.
    Send(Message),
    /// The round is complete once the steps before this one are done.
    Done,
}

/// Why a round was abandoned (the peer broke the protocol).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SessionError {
    #[error("a sync round must start with SyncState, got {0}")]
    NotOpened(&'static str),
    #[error("unexpected {0} in a sync round")]
    Unexpected(&'static str),
    #[error("a message after the end of the round")]
    AfterDone,
    #[error("the peer's sync state: {0}")]
    State(#[from] InvalidState),
    #[error("the peer's digest or bucket list: {0}")]
    Digest(#[from] InvalidDigest),
    /// A state in a digest round naming an actor outside the buckets the
    /// round is about.
    #[error("actor {0} is outside the buckets of this digest round")]
    OutsideBuckets(corro_store::ActorId),
    /// A changeset for a version beyond what the sender's own state says
    /// it holds (a lying or broken peer).
    #[error("version {version} of {actor} is beyond the sender's advertised head {head}")]
    BeyondHeads {
        actor: corro_store::ActorId,
        version: u64,
        head: u64,
    },
}

/// The highest version a changeset names.
fn top(set: &Changeset) -> (corro_store::ActorId, u64) {
    match set {
        Changeset::Version { actor, version, .. } => (*actor, *version),
        Changeset::Cleared { actor, versions } => (*actor, *versions.end()),
    }
}

/// The first changeset beyond `heads`, as an error.
fn beyond_heads<'a>(
    sets: impl IntoIterator<Item = &'a Changeset>,
    heads: &std::collections::BTreeMap<corro_store::ActorId, u64>,
) -> Result<(), SessionError> {
    for set in sets {
        let (actor, version) = top(set);
        let head = heads.get(&actor).copied().unwrap_or(0);
        if version > head {
            return Err(SessionError::BeyondHeads {
                actor,
                version,
                head,
            });
        }
    }
    Ok(())
}

/// The name of a message's kind (for errors and logs).
pub fn kind(m: &Message) -> &'static str {
    match m {
        Message::Changes { .. } => "Changes",
        Message::SyncState(_) => "SyncState",
        Message::SyncChanges(_) => "SyncChanges",
        Message::SyncDone => "SyncDone",
        Message::SyncDigest(_) => "SyncDigest",
        Message::SyncBuckets(_) => "SyncBuckets",
    }
}

/// Cuts received changesets into batches to apply.
#[derive(Debug, Clone)]
pub struct Batcher {
    pending: Vec<Changeset>,
    pending_changes: usize,
    received: usize,
    /// Versions received whole: a cleared range counts its length, a
    /// version counts at its last piece.
    versions: u64,
    batch: usize,
    /// Per actor, the highest version received (checked against the
    /// sender's heads once they are known).
    highest: std::collections::BTreeMap<corro_store::ActorId, u64>,
}

impl Batcher {
    /// Batches of about `batch` changes.
    pub fn new(batch: usize) -> Batcher {
        Batcher {
            pending: Vec::new(),
            pending_changes: 0,
            received: 0,
            versions: 0,
            batch: batch.max(1),
            highest: Default::default(),
        }
    }

    /// Adds changesets; the batches now ready, in order.
    pub fn add(&mut self, sets: Vec<Changeset>) -> Vec<Vec<Changeset>> {
        let mut out = Vec::new();
        self.received += sets.len();
        for set in sets {
            let (actor, version) = top(&set);
            let h = self.highest.entry(actor).or_default();
            *h = (*h).max(version);
            if let Changeset::Version { changes, .. } = &set {
                self.pending_changes += changes.len();
            }
            let boundary = match &set {
                Changeset::Version { seqs, last_seq, .. } => seqs.end() == last_seq,
                Changeset::Cleared { .. } => true,
            };
            self.versions += match &set {
                Changeset::Version { .. } => u64::from(boundary),
                Changeset::Cleared { versions, .. } => versions
                    .end()
                    .saturating_sub(*versions.start())
                    .saturating_add(1),
            };
            self.pending.push(set);
            if (boundary && self.pending_changes >= self.batch)
                || self.pending_changes >= MID_VERSION_CUT.max(4 * self.batch)
            {
                out.push(std::mem::take(&mut self.pending));
                self.pending_changes = 0;
            }
        }
        out
    }

    /// What is still pending.
    pub fn rest(&mut self) -> Option<Vec<Changeset>> {
        self.pending_changes = 0;
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then_some(rest)
    }

    /// Changesets received so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Versions received so far (see the field).
    pub fn versions(&self) -> u64 {
        self.versions
    }
}

fn apply_steps(batches: Vec<Vec<Changeset>>) -> Vec<Step> {
    batches.into_iter().map(Step::Apply).collect()
}

/// The initiator's side of a round.
#[derive(Debug, Clone)]
pub struct Pull {
    batcher: Batcher,
    done: bool,
    digest: Option<DigestPull>,
    /// The responder's whole state once its part ended (in a digest round,
    /// this node's state at the opening with the differing buckets
    /// replaced by the responder's).
    theirs: Option<SyncState>,
}

/// What the initiator of a digest round keeps.
#[derive(Debug, Clone)]
struct DigestPull {
    /// This node's state at the opening.
    mine: SyncState,
    /// The digest's bucket count and salt (its hashes are not kept).
    digest: Digest,
    /// The responder's answer, once it came.
    differing: Option<Buckets>,
}

/// Checks that every actor `state` names falls in `buckets`.
fn within(state: &SyncState, buckets: &Buckets) -> Result<(), SessionError> {
    match state.heads.keys().find(|a| !buckets.contains(a)) {
        Some(a) => Err(SessionError::OutsideBuckets(*a)),
        None => Ok(()),
    }
}

impl Pull {
    /// Opens a round from state `mine`: the session and the message to
    /// send first.
    pub fn open(mine: SyncState, batch: usize) -> (Pull, Message) {
        (
            Pull {
                batcher: Batcher::new(batch),
                done: false,
                digest: None,
                theirs: None,
            },
            Message::SyncState(mine),
        )
    }

    /// Opens a digest round from state `mine`, salted with `salt` (drawn
    /// at random for each round: see [`crate::digest`]), with a responder
    /// that answers them (see [`crate::Trailer::digest`]).
    pub fn open_digest(mine: SyncState, batch: usize, salt: u64) -> (Pull, Message) {
        let digest = Digest::of(&mine, buckets_for(mine.heads.len()), salt);
        let kept = Digest {
            buckets: digest.buckets,
            salt,
            hashes: Vec::new(),
        };
        (
            Pull {
                batcher: Batcher::new(batch),
                done: false,
                digest: Some(DigestPull {
                    mine,
                    digest: kept,
                    differing: None,
                }),
                theirs: None,
            },
            Message::SyncDigest(digest),
        )
    }

    /// The responder's next message.
    pub fn on_message(&mut self, msg: Message) -> Result<Vec<Step>, SessionError> {
        if self.done {
            return Err(SessionError::AfterDone);
        }
        // A digest round: the bucket list comes first, and nothing else
        // before it.
        if let Some(d) = &mut self.digest
            && d.differing.is_none()
        {
            let Message::SyncBuckets(list) = msg else {
                return Err(SessionError::Unexpected(kind(&msg)));
            };
            let differing = Buckets::new(&d.digest, list)?;
            if differing.is_empty() {
                // Nothing differs: the responder holds what this node does.
                self.done = true;
                self.theirs = Some(std::mem::take(&mut d.mine));
                return Ok(vec![Step::Send(Message::SyncDone), Step::Done]);
            }
            let part = d.mine.restrict(&differing);
            d.differing = Some(differing);
            return Ok(vec![Step::Send(Message::SyncState(part))]);
        }
        match msg {
            Message::SyncChanges(sets) => Ok(apply_steps(self.batcher.add(sets))),
            // The responder's state ends its part: pull only, so nothing
            // is sent back but the end of the round. What it sent must be
            // within what it says it holds (checked now: its state comes
            // last; the changes are already validated one by one).
            Message::SyncState(theirs) => {
                theirs.validate()?;
                for (actor, version) in &self.batcher.highest {
                    let head = theirs.heads.get(actor).copied().unwrap_or(0);
                    if *version > head {
                        return Err(SessionError::BeyondHeads {
                            actor: *actor,
                            version: *version,
                            head,
                        });
                    }
                }
                let theirs = match &mut self.digest {
                    Some(DigestPull {
                        mine,
                        differing: Some(differing),
                        ..
                    }) => {
                        within(&theirs, differing)?;
                        std::mem::take(mine).merged(differing, &theirs)
                    }
                    _ => theirs,
                };
                self.theirs = Some(theirs);
                self.done = true;
                let mut steps: Vec<Step> =
                    self.batcher.rest().into_iter().map(Step::Apply).collect();
                steps.push(Step::Send(Message::SyncDone));
                steps.push(Step::Done);
                Ok(steps)
            }
            other => Err(SessionError::Unexpected(kind(&other))),
        }
    }

    /// Changesets received so far.
    pub fn received(&self) -> usize {
        self.batcher.received()
    }

    /// Versions received so far: a round that brought the responder's
    /// whole budget (`max_versions`) was probably cut short.
    pub fn versions_received(&self) -> u64 {
        self.batcher.versions()
    }

    /// The responder's whole state, once the round is done (see the field).
    pub fn theirs(&mut self) -> Option<SyncState> {
        self.theirs.take()
    }

    /// Whether this is a digest round.
    pub fn is_digest(&self) -> bool {
        self.digest.is_some()
    }
}

/// The responder's side of a round.
#[derive(Debug, Clone)]
pub struct Serve {
    batcher: Batcher,
    done: bool,
    /// The initiator's advertised heads: what it pushes must be within.
    theirs_heads: std::collections::BTreeMap<corro_store::ActorId, u64>,
    /// A digest round: the buckets it is about (`None`: a whole-state
    /// round).
    differing: Option<Buckets>,
    /// A digest round waits for the initiator's state for its buckets.
    awaiting_state: bool,
    max_versions: u64,
}

/// What a responder does after the opening message.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// Serve these requests, then send [`Serve::served`].
    Serve {
        /// The initiator's state.
        theirs: SyncState,
        requests: Vec<SyncRequest>,
    },
    /// A digest round: send this (the differing buckets); then, if
    /// [`Serve::awaits_state`], pass the initiator's next message to
    /// [`Serve::on_state`].
    Buckets(Message),
}

impl Serve {
    /// The initiator's first message, checked, with this node's state
    /// `mine`: the session and what to do.
    pub fn open(
        first: Message,
        mine: &SyncState,
        max_versions: u64,
        batch: usize,
    ) -> Result<(Serve, Opened), SessionError> {
        let mut serve = Serve {
            batcher: Batcher::new(batch),
            done: false,
            theirs_heads: Default::default(),
            differing: None,
            awaiting_state: false,
            max_versions,
        };
        match first {
            Message::SyncState(theirs) => {
                theirs.validate()?;
                let requests = plan(&theirs, mine, max_versions);
                serve.theirs_heads = theirs.heads.clone();
                Ok((serve, Opened::Serve { theirs, requests }))
            }
            Message::SyncDigest(digest) => {
                digest.validate()?;
                let list = Digest::of(mine, digest.buckets, digest.salt).differing(&digest);
                let differing = Buckets::new(&digest, list.clone())?;
                serve.awaiting_state = !differing.is_empty();
                serve.differing = Some(differing);
                Ok((serve, Opened::Buckets(Message::SyncBuckets(list))))
            }
            other => Err(SessionError::NotOpened(kind(&other))),
        }
    }

    /// Whether a digest round waits for the initiator's state.
    pub fn awaits_state(&self) -> bool {
        self.awaiting_state
    }

    /// In a digest round, the initiator's state for the differing buckets,
    /// with this node's state `mine`: the initiator's state and the
    /// requests to serve.
    pub fn on_state(
        &mut self,
        msg: Message,
        mine: &SyncState,
    ) -> Result<(SyncState, Vec<SyncRequest>), SessionError> {
        let (true, Some(differing)) = (self.awaiting_state, &self.differing) else {
            return Err(SessionError::Unexpected(kind(&msg)));
        };
        let Message::SyncState(theirs) = msg else {
            return Err(SessionError::Unexpected(kind(&msg)));
        };
        theirs.validate()?;
        within(&theirs, differing)?;
        let requests = plan(&theirs, &mine.restrict(differing), self.max_versions);
        self.theirs_heads = theirs.heads.clone();
        self.awaiting_state = false;
        Ok((theirs, requests))
    }

    /// The message that ends this side's part, once the requests are
    /// served: this node's state now (in a digest round, for the round's
    /// buckets).
    pub fn served(&self, mine: SyncState) -> Message {
        match &self.differing {
            Some(d) => Message::SyncState(mine.restrict(d)),
            None => Message::SyncState(mine),
        }
    }

    /// The initiator's next message.
    pub fn on_message(&mut self, msg: Message) -> Result<Vec<Step>, SessionError> {
        if self.done {
            return Err(SessionError::AfterDone);
        }
        if self.awaiting_state {
            return Err(SessionError::Unexpected(kind(&msg)));
        }
        match msg {
            Message::SyncChanges(sets) => {
                beyond_heads(&sets, &self.theirs_heads)?;
                Ok(apply_steps(self.batcher.add(sets)))
            }
            Message::SyncDone => {
                self.done = true;
                let mut steps: Vec<Step> =
                    self.batcher.rest().into_iter().map(Step::Apply).collect();
                steps.push(Step::Done);
                Ok(steps)
            }
            other => Err(SessionError::Unexpected(kind(&other))),
        }
    }

    /// Changesets received so far (from pushing peers).
    pub fn received(&self) -> usize {
        self.batcher.received()
    }

    /// Whether this is a digest round.
    pub fn is_digest(&self) -> bool {
        self.differing.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corro_store::ActorId;

    fn cleared(v: u64) -> Changeset {
        Changeset::Cleared {
            actor: ActorId([1; 16]),
            versions: v..=v,
        }
    }

    /// A cleared range counts its length; a version counts once, at the
    /// piece that ends it.
    #[test]
    fn the_batcher_counts_versions_received() {
        let actor = ActorId([1; 16]);
        let piece = |seqs: std::ops::RangeInclusive<u64>| Changeset::Version {
            actor,
            version: 9,
            seqs,
            last_seq: 3,
            ts: 1,
            changes: Vec::new(),
        };
        let mut b = Batcher::new(100);
        b.add(vec![
            Changeset::Cleared {
                actor,
                versions: 1..=6,
            },
            piece(0..=1),
        ]);
        assert_eq!((b.received(), b.versions()), (2, 6));
        b.add(vec![piece(2..=3), cleared(8)]);
        assert_eq!((b.received(), b.versions()), (4, 8));
    }

    #[test]
    fn a_round_ends_with_done_on_both_sides() {
        let mut mine = SyncState::default();
        mine.heads.insert(ActorId([1; 16]), 3);
        let (mut pull, first) = Pull::open(SyncState::default(), 2);
        let (mut serve, opened) = Serve::open(first, &mine, 100, 2).unwrap();
        let Opened::Serve { requests, .. } = opened else {
            panic!("a whole-state round")
        };
        assert_eq!(requests.len(), 1);
        let steps = pull
            .on_message(Message::SyncChanges(vec![
                cleared(1),
                cleared(2),
                cleared(3),
            ]))
            .unwrap();
        assert!(
            steps.is_empty(),
            "cleared ranges carry no changes: {steps:?}"
        );
        let steps = pull.on_message(serve.served(mine)).unwrap();
        assert_eq!(steps.len(), 3);
        assert!(matches!(&steps[0], Step::Apply(s) if s.len() == 3));
        assert_eq!(steps[1], Step::Send(Message::SyncDone));
        assert_eq!(steps[2], Step::Done);
        assert_eq!(
            serve.on_message(Message::SyncDone).unwrap(),
            vec![Step::Done]
        );
        assert_eq!(
            serve.on_message(Message::SyncDone),
            Err(SessionError::AfterDone)
        );
    }

    #[test]
    fn changes_beyond_the_senders_advertised_heads_are_refused() {
        let actor = ActorId([1; 16]);
        // Pull: the responder sent version 5 but says it holds up to 3.
        let (mut pull, _) = Pull::open(SyncState::default(), 100);
        pull.on_message(Message::SyncChanges(vec![cleared(5)]))
            .unwrap();
        let mut liar = SyncState::default();
        liar.heads.insert(actor, 3);
        assert_eq!(
            pull.on_message(Message::SyncState(liar)),
            Err(SessionError::BeyondHeads {
                actor,
                version: 5,
                head: 3
            })
        );
        // Within its heads: fine.
        let (mut pull, _) = Pull::open(SyncState::default(), 100);
        pull.on_message(Message::SyncChanges(vec![cleared(3)]))
            .unwrap();
        let mut honest = SyncState::default();
        honest.heads.insert(actor, 3);
        assert!(pull.on_message(Message::SyncState(honest)).is_ok());
        // Serve: a pushing initiator that advertised head 2 pushes 4,
        // refused before anything is applied.
        let mut theirs = SyncState::default();
        theirs.heads.insert(actor, 2);
        let (mut serve, _) =
            Serve::open(Message::SyncState(theirs), &SyncState::default(), 10, 10).unwrap();
        assert!(matches!(
            serve.on_message(Message::SyncChanges(vec![cleared(4)])),
            Err(SessionError::BeyondHeads {
                version: 4,
                head: 2,
                ..
            })
        ));
    }

    #[test]
    fn protocol_breaks_are_errors() {
        assert!(matches!(
            Serve::open(Message::SyncDone, &SyncState::default(), 10, 10),
            Err(SessionError::NotOpened("SyncDone"))
        ));
        let (mut pull, _) = Pull::open(SyncState::default(), 10);
        assert_eq!(
            pull.on_message(Message::SyncDone),
            Err(SessionError::Unexpected("SyncDone"))
        );
    }

    fn heads(entries: &[(u8, u64)]) -> SyncState {
        let mut s = SyncState::default();
        for (a, h) in entries {
            s.heads.insert(ActorId([*a; 16]), *h);
        }
        s
    }

    #[test]
    fn a_digest_round_exchanges_only_the_differing_buckets() {
        // 40 actors (3 buckets); the responder holds two more versions of
        // actor 5 and knows actor 200, which the initiator does not.
        let common: Vec<(u8, u64)> = (1..=40).map(|a| (a, 10)).collect();
        let initiator = heads(&common);
        let mut responder = initiator.clone();
        responder.heads.insert(ActorId([5; 16]), 12);
        responder.heads.insert(ActorId([200; 16]), 1);
        let (mut pull, first) = Pull::open_digest(initiator.clone(), 100, 7);
        assert!(matches!(&first, Message::SyncDigest(d) if d.buckets == 3));
        let (mut serve, opened) = Serve::open(first, &responder, 100, 100).unwrap();
        let Opened::Buckets(buckets) = opened else {
            panic!("a digest round")
        };
        assert!(serve.awaits_state());
        // Refused before the initiator's state: anything else.
        assert!(serve.clone().on_message(Message::SyncDone).is_err());
        let steps = pull.on_message(buckets).unwrap();
        let [Step::Send(part)] = &steps[..] else {
            panic!("{steps:?}")
        };
        let Message::SyncState(part_state) = part else {
            panic!("{part:?}")
        };
        assert!(part_state.heads.len() < 40, "only the differing buckets");
        assert!(part_state.heads.contains_key(&ActorId([5; 16])));
        let (_, requests) = serve.on_state(part.clone(), &responder).unwrap();
        let mut got: Vec<(ActorId, (u64, u64))> = requests
            .into_iter()
            .map(|r| (r.actor, (*r.versions.start(), *r.versions.end())))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![(ActorId([5; 16]), (11, 12)), (ActorId([200; 16]), (1, 1))]
        );
        let end = serve.served(responder.clone());
        let Message::SyncState(end_state) = &end else {
            panic!()
        };
        assert!(
            end_state.heads.len() < 41,
            "restricted: {}",
            end_state.heads.len()
        );
        let steps = pull.on_message(end).unwrap();
        assert_eq!(steps, vec![Step::Send(Message::SyncDone), Step::Done]);
        // What the initiator learns is the responder's whole state.
        assert_eq!(pull.theirs(), Some(responder));
        assert_eq!(
            serve.on_message(Message::SyncDone).unwrap(),
            vec![Step::Done]
        );
    }

    #[test]
    fn a_digest_round_between_equal_states_ends_after_the_bucket_list() {
        let s = heads(&(1..=100).map(|a| (a, 3)).collect::<Vec<_>>());
        let (mut pull, first) = Pull::open_digest(s.clone(), 100, 7);
        let (mut serve, opened) = Serve::open(first, &s, 100, 100).unwrap();
        assert_eq!(opened, Opened::Buckets(Message::SyncBuckets(vec![])));
        assert!(!serve.awaits_state());
        let steps = pull.on_message(Message::SyncBuckets(vec![])).unwrap();
        assert_eq!(steps, vec![Step::Send(Message::SyncDone), Step::Done]);
        assert_eq!(pull.theirs(), Some(s));
        assert_eq!(
            serve.on_message(Message::SyncDone).unwrap(),
            vec![Step::Done]
        );
    }

    #[test]
    fn a_lying_digest_responder_is_refused() {
        let s = heads(&(1..=40).map(|a| (a, 3)).collect::<Vec<_>>());
        // A bucket past the count, or changes before the bucket list.
        let (mut pull, _) = Pull::open_digest(s.clone(), 100, 7);
        assert!(matches!(
            pull.clone().on_message(Message::SyncBuckets(vec![7])),
            Err(SessionError::Digest(_))
        ));
        assert!(matches!(
            pull.clone().on_message(Message::SyncChanges(vec![])),
            Err(SessionError::Unexpected("SyncChanges"))
        ));
        // A closing state about actors outside the asked buckets.
        pull.on_message(Message::SyncBuckets(vec![0])).unwrap();
        let outside = (1..=40u8)
            .map(|a| ActorId([a; 16]))
            .find(|a| crate::digest::bucket_of(a, 3, 7) != 0)
            .unwrap();
        let mut lie = SyncState::default();
        lie.heads.insert(outside, 3);
        assert_eq!(
            pull.on_message(Message::SyncState(lie)),
            Err(SessionError::OutsideBuckets(outside))
        );
        // The responder side: a state outside the differing buckets.
        let mut other = s.clone();
        let inside = ActorId([1; 16]);
        *other.heads.get_mut(&inside).unwrap() = 4;
        let (_, first) = Pull::open_digest(other, 100, 7);
        let (mut serve, _) = Serve::open(first, &s, 100, 100).unwrap();
        let mut lie = SyncState::default();
        let far = (1..=40u8)
            .map(|a| ActorId([a; 16]))
            .find(|a| crate::digest::bucket_of(a, 3, 7) != crate::digest::bucket_of(&inside, 3, 7))
            .unwrap();
        lie.heads.insert(far, 3);
        assert_eq!(
            serve.on_state(Message::SyncState(lie), &s).map(|_| ()),
            Err(SessionError::OutsideBuckets(far))
        );
    }
}
