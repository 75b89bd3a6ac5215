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

use corro_store::Changeset;

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
    }
}

/// Cuts received changesets into batches to apply.
#[derive(Debug, Clone)]
pub struct Batcher {
    pending: Vec<Changeset>,
    pending_changes: usize,
    received: usize,
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
}

fn apply_steps(batches: Vec<Vec<Changeset>>) -> Vec<Step> {
    batches.into_iter().map(Step::Apply).collect()
}

/// The initiator's side of a round.
#[derive(Debug, Clone)]
pub struct Pull {
    batcher: Batcher,
    done: bool,
}

impl Pull {
    /// Opens a round from state `mine`: the session and the message to
    /// send first.
    pub fn open(mine: SyncState, batch: usize) -> (Pull, Message) {
        (
            Pull {
                batcher: Batcher::new(batch),
                done: false,
            },
            Message::SyncState(mine),
        )
    }

    /// The responder's next message.
    pub fn on_message(&mut self, msg: Message) -> Result<Vec<Step>, SessionError> {
        if self.done {
            return Err(SessionError::AfterDone);
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
}

/// The responder's side of a round.
#[derive(Debug, Clone)]
pub struct Serve {
    batcher: Batcher,
    done: bool,
    /// The initiator's advertised heads: what it pushes must be within.
    theirs_heads: std::collections::BTreeMap<corro_store::ActorId, u64>,
}

impl Serve {
    /// The initiator's first message, checked; with this node's state
    /// `mine`: the session, the initiator's state and what to serve it.
    pub fn open(
        first: Message,
        mine: &SyncState,
        max_versions: u64,
        batch: usize,
    ) -> Result<(Serve, SyncState, Vec<SyncRequest>), SessionError> {
        let Message::SyncState(theirs) = first else {
            return Err(SessionError::NotOpened(kind(&first)));
        };
        theirs.validate()?;
        let requests = plan(&theirs, mine, max_versions);
        Ok((
            Serve {
                batcher: Batcher::new(batch),
                done: false,
                theirs_heads: theirs.heads.clone(),
            },
            theirs,
            requests,
        ))
    }

    /// The message that ends this side's part, once the requests are
    /// served: this node's state now.
    pub fn served(&self, mine: SyncState) -> Message {
        Message::SyncState(mine)
    }

    /// The initiator's next message.
    pub fn on_message(&mut self, msg: Message) -> Result<Vec<Step>, SessionError> {
        if self.done {
            return Err(SessionError::AfterDone);
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

    #[test]
    fn a_round_ends_with_done_on_both_sides() {
        let mut mine = SyncState::default();
        mine.heads.insert(ActorId([1; 16]), 3);
        let (mut pull, first) = Pull::open(SyncState::default(), 2);
        let (mut serve, _theirs, requests) = Serve::open(first, &mine, 100, 2).unwrap();
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
        let (mut serve, _, _) =
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
}
