//! Replication decisions without IO.
//!
//! Nodes converge by anti-entropy: a node sends a peer its [`SyncState`] (per
//! actor: the head version and the versions it still needs), the peer answers
//! with its own, and each side computes with [`plan`] exactly which versions to
//! pull: those the peer holds and it lacks. The answer to a request is what
//! the store serves ([`corro_store::Store::changes_for`]: versions rebuilt from
//! current state, cleared ranges, held pieces of partial versions), applied
//! with [`corro_store::Store::apply`]. Cost follows what is missing, not the
//! database size.
//!
//! A round between nodes that both speak it opens with a [`digest`] of the
//! state instead (a hash per bucket of actors), and only the buckets that
//! differ are exchanged in full.
//!
//! [`session`] runs one sync round as two state machines ([`session::Pull`],
//! [`session::Serve`]); [`round`] drives them over any [`round::Transport`]
//! (the agent's QUIC streams, the simulation's lossy in-memory network), so
//! both run the same code. [`broadcast::Relay`] decides what a received
//! broadcast becomes. [`swim`] runs the SWIM core ([`membership`]) on
//! tokio for the agent and the gossip library alike, each over its own IO;
//! [`reconnect`] decides when it talks to members it holds as down;
//! [`viewpull`] when a node pulls a sync peer's whole member view;
//! [`sim`] runs many of those cores, and the spread of writes, in virtual
//! time; [`schedule`] says when sync rounds run.
//! [`wire`](Envelope) defines the versioned peer messages;
//! [`validate`](validate::validate) checks each decoded one before use.
//!
//! No sockets here, and no clocks outside [`swim`]'s timers: the
//! cluster's IO layer provides the transport, and the simulation tests provide an in-memory network with
//! loss, duplication and reordering.

pub mod broadcast;
pub mod digest;
pub mod membership;
pub mod reconnect;
pub mod round;
pub mod schedule;
pub mod session;
pub mod sim;
pub mod swim;
mod sync;
pub mod validate;
pub mod viewpull;
mod wire;

pub use sync::{InvalidState, MAX_STATE_ACTORS, MAX_STATE_RANGES, SyncRequest, SyncState, plan};
pub use wire::{
    Envelope, MAX_FRAME_BYTES, MAX_HOPS, Message, PROTOCOL_VERSION, Trailer, WireError, decode,
    decode_with_trailer, encode, encode_with_trailer,
};
