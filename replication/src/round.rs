//! A sync round driven over any [`Transport`]: the one implementation of
//! both sides that the agent runs over QUIC and the simulation
//! (`tests/sim.rs`) over a lossy in-memory network.
//!
//! The round logic is the sans-IO [`session`](crate::session) pair; this
//! module carries out their steps: it sends and receives [`Message`]s on a
//! [`RoundStream`], serves the planned requests from a [`RoundStore`] a
//! change budget at a time on a blocking thread (so serving overlaps with
//! sending), and applies received batches on a task of their own while the
//! next ones arrive. What a transport adds (framing, trailers, validation
//! of decoded input, connection reuse) and what a node does around a round
//! (choosing peers, metrics, announcing unknown initiators) stay with the
//! caller.

use std::fmt;
use std::future::Future;
use std::ops::RangeInclusive;

use corro_store::{ActorId, Changeset};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::session::{Opened, Pull, Serve, SessionError, Step};
use crate::sync::{SyncRequest, SyncState};
use crate::wire::Message;

/// Errors of a transport or a store, as the caller's types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One round's ordered, reliable message stream with one peer (a QUIC bi
/// stream in the agent). Implementations hand out only validated messages.
pub trait RoundStream: Send {
    /// Sends one message.
    fn send(&mut self, msg: Message) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// The peer's next message; `None` when the peer ended the stream.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Message>, BoxError>> + Send;
    /// This side sends nothing more.
    fn finish(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// Whether the peer answers digest rounds (the initiator then opens
    /// with a digest: see [`crate::digest`]).
    fn digest(&self) -> bool;
}

/// Opens round streams to peers.
pub trait Transport: Send + Sync {
    /// How a peer is named (a socket address in the agent).
    type Peer: Copy + Send + Sync + fmt::Debug;
    type Stream: RoundStream;
    /// A new stream for one round with `peer`.
    fn open(&self, peer: Self::Peer)
    -> impl Future<Output = Result<Self::Stream, BoxError>> + Send;
}

/// What a round needs of a node's store.
pub trait RoundStore: Clone + Send + Sync + 'static {
    /// This node's sync state now.
    fn state(&self) -> SyncState;
    /// About `budget` changes of `actor`'s `versions`, from the start of the
    /// range, and the version to continue from (`None`: the range is done).
    /// May block; called on a blocking thread.
    fn read(
        &self,
        actor: ActorId,
        versions: RangeInclusive<u64>,
        budget: usize,
    ) -> Result<(Vec<Changeset>, Option<u64>), BoxError>;
    /// Merges received changesets.
    fn apply(&self, sets: Vec<Changeset>) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Sizes of a round.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Versions served per round at most (the rest next round).
    pub max_versions: u64,
    /// Changes per apply batch (see [`crate::session::Batcher`]).
    pub batch_changes: usize,
    /// Changes read from the store per step while serving.
    pub read_budget: usize,
    /// Changesets per `SyncChanges` message.
    pub frame_changesets: usize,
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error("transport: {0}")]
    Transport(BoxError),
    #[error("store: {0}")]
    Store(BoxError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the peer ended the round early")]
    Ended,
    #[error("a round task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn transport(e: BoxError) -> RoundError {
    RoundError::Transport(e)
}

/// What a pull brought.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    /// Changesets received.
    pub received: usize,
    /// Versions received (a cleared range counts its length): as many as
    /// the responder's budget means the round was probably cut short.
    pub versions: u64,
    /// The responder's state at the end of its part (its heads: what this
    /// node should hold now). In a digest round, this node's state at the
    /// opening with the differing buckets replaced by the responder's.
    pub theirs: Option<SyncState>,
    /// The round opened with a digest.
    pub digest: bool,
}

/// What serving a round did.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// Changesets sent.
    pub sent: usize,
    /// Changesets received (from initiators that push).
    pub received: usize,
    /// The round opened with a digest.
    pub digest: bool,
    /// The initiator's state (in a digest round, for the differing buckets
    /// only; `None` when none differed).
    pub theirs: Option<SyncState>,
}

/// Applies a session's batches on a task of their own, one after the
/// other, while the round goes on receiving.
struct Applier<St: RoundStore> {
    store: St,
    running: Option<JoinHandle<Result<(), BoxError>>>,
}

impl<St: RoundStore> Applier<St> {
    fn new(store: St) -> Self {
        Applier {
            store,
            running: None,
        }
    }

    async fn apply(&mut self, sets: Vec<Changeset>) -> Result<(), RoundError> {
        self.finish().await?;
        let store = self.store.clone();
        self.running = Some(tokio::spawn(async move { store.apply(sets).await }));
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), RoundError> {
        if let Some(last) = self.running.take() {
            last.await?.map_err(RoundError::Store)?;
        }
        Ok(())
    }
}

/// Carries out a session's steps; true once the round is done.
async fn carry_out<S: RoundStream, St: RoundStore>(
    stream: &mut S,
    applier: &mut Applier<St>,
    steps: Vec<Step>,
) -> Result<bool, RoundError> {
    for step in steps {
        match step {
            Step::Apply(sets) => applier.apply(sets).await?,
            Step::Send(message) => {
                applier.finish().await?;
                stream.send(message).await.map_err(transport)?;
            }
            Step::Done => {
                applier.finish().await?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The initiator's side on an open stream: sends this node's state, applies
/// what the responder serves, ends the round.
pub async fn pull<S: RoundStream, St: RoundStore>(
    stream: &mut S,
    store: &St,
    limits: &Limits,
) -> Result<Pulled, RoundError> {
    let (mut session, first) = if stream.digest() {
        Pull::open_digest(store.state(), limits.batch_changes, rand::random())
    } else {
        Pull::open(store.state(), limits.batch_changes)
    };
    stream.send(first).await.map_err(transport)?;
    let mut applier = Applier::new(store.clone());
    loop {
        let msg = stream
            .recv()
            .await
            .map_err(transport)?
            .ok_or(RoundError::Ended)?;
        let steps = session.on_message(msg)?;
        if carry_out(stream, &mut applier, steps).await? {
            break;
        }
    }
    stream.finish().await.map_err(transport)?;
    Ok(Pulled {
        received: session.received(),
        versions: session.versions_received(),
        digest: session.is_digest(),
        theirs: session.theirs(),
    })
}

/// One round with `peer` over `transport`, this node initiating.
pub async fn pull_from<T: Transport, St: RoundStore>(
    transport: &T,
    peer: T::Peer,
    store: &St,
    limits: &Limits,
) -> Result<Pulled, RoundError> {
    let mut stream = transport.open(peer).await.map_err(self::transport)?;
    pull(&mut stream, store, limits).await
}

/// The responder's side, given the initiator's first message and this
/// node's state `mine` (both read by the caller, who may act on them
/// first): in a digest round, answers with the differing buckets and reads
/// the initiator's state for them; serves what the initiator lacks, sends
/// this node's state then, takes anything pushed until `SyncDone`.
pub async fn serve<S: RoundStream, St: RoundStore>(
    stream: &mut S,
    first: Message,
    mine: &SyncState,
    store: &St,
    limits: &Limits,
) -> Result<Served, RoundError> {
    let (mut session, opened) =
        Serve::open(first, mine, limits.max_versions, limits.batch_changes)?;
    let (theirs, requests) = match opened {
        Opened::Serve { theirs, requests } => (Some(theirs), Some(requests)),
        Opened::Buckets(list) => {
            stream.send(list).await.map_err(transport)?;
            if session.awaits_state() {
                let msg = stream
                    .recv()
                    .await
                    .map_err(transport)?
                    .ok_or(RoundError::Ended)?;
                let (theirs, requests) = session.on_state(msg, mine)?;
                (Some(theirs), Some(requests))
            } else {
                (None, None)
            }
        }
    };
    let mut sent = 0;
    if let Some(requests) = requests {
        sent = send_missing(stream, store, requests, limits).await?;
        stream
            .send(session.served(store.state()))
            .await
            .map_err(transport)?;
    }
    let mut applier = Applier::new(store.clone());
    loop {
        let Some(msg) = stream.recv().await.map_err(transport)? else {
            // The initiator went away without `SyncDone`: nothing of ours
            // depends on the rest (rounds pull).
            applier.finish().await?;
            break;
        };
        let steps = session.on_message(msg)?;
        if carry_out(stream, &mut applier, steps).await? {
            break;
        }
    }
    stream.finish().await.map_err(transport)?;
    Ok(Served {
        sent,
        received: session.received(),
        digest: session.is_digest(),
        theirs,
    })
}

/// Streams the changesets `requests` name: the store is read a budget at a
/// time on a blocking thread while messages go out, so memory stays bounded
/// by one step and serving overlaps with the peer's applying.
async fn send_missing<S: RoundStream, St: RoundStore>(
    stream: &mut S,
    store: &St,
    requests: Vec<SyncRequest>,
    limits: &Limits,
) -> Result<usize, RoundError> {
    let (tx, mut rx) = mpsc::channel::<Result<Vec<Changeset>, BoxError>>(4);
    let store = store.clone();
    let budget = limits.read_budget.max(1);
    let reader = tokio::task::spawn_blocking(move || {
        for r in requests {
            let (mut lo, hi) = (*r.versions.start(), *r.versions.end());
            loop {
                let step = store.read(r.actor, lo..=hi, budget);
                let next = step.as_ref().ok().and_then(|(_, n)| *n);
                let failed = step.is_err();
                if tx.blocking_send(step.map(|(sets, _)| sets)).is_err() || failed {
                    return;
                }
                match next {
                    Some(n) if n <= hi && n > lo => lo = n,
                    _ => break,
                }
            }
        }
    });
    let mut sent = 0;
    while let Some(sets) = rx.recv().await {
        let sets = sets.map_err(RoundError::Store)?;
        sent += sets.len();
        for chunk in sets.chunks(limits.frame_changesets.max(1)) {
            stream
                .send(Message::SyncChanges(chunk.to_vec()))
                .await
                .map_err(transport)?;
        }
    }
    reader.await?;
    Ok(sent)
}
