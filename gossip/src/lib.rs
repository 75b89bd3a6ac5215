//! Typed gossip for other programs, over the membership and transport
//! Corrosion's agents use: SWIM failure detection
//! ([`corro_replication::membership`], run by the same driver as the
//! agent's, [`corro_replication::swim`]) carried in QUIC datagrams,
//! messages on QUIC streams.
//!
//! ```no_run
//! # async fn demo() -> Result<(), corro_gossip::GossipError> {
//! use corro_gossip::{GossipConfig, Node};
//! let node = Node::bind(GossipConfig::plaintext("127.0.0.1:0".parse().unwrap())).await?;
//! node.join(&["127.0.0.1:7000".parse().unwrap()]);
//! let mut chat = node.subscribe::<String>("chat");
//! node.broadcast("chat", &"hello".to_string())?;
//! while let Some((from, text)) = chat.recv().await {
//!     println!("{from}: {text}");
//! }
//! # Ok(()) }
//! ```
//!
//! # Semantics
//! - **Delivery**: a message goes to every member the sender knows as alive
//!   when it is sent; each receiver that sees it for the first time passes
//!   it to up to [`FORWARD_FANOUT`] random members once more (so members the
//!   sender did not know yet still get it). Best effort: no acknowledgement,
//!   no retry, no persistence; a member that joins later does not receive
//!   earlier messages.
//! - **Once**: each node hands each message to its subscribers at most once
//!   (message ids remembered for the last [`SEEN_WINDOW`] messages); a node
//!   does not receive its own messages.
//! - **Order**: none across senders; messages from one sender may arrive
//!   out of order (each goes on its own stream).
//! - **Kinds**: a message has a kind (a string); [`Node::subscribe`] receives
//!   the messages of one kind, decoded as `T` (postcard). A message that
//!   does not decode as the subscriber's `T` is dropped and counted.
//! - **Membership events** ([`Node::events`]): `Joined` when SWIM reports a
//!   member up, `Suspect` when it stops answering probes, `Down` when it is
//!   declared dead, `Left` when it said goodbye ([`Node::leave`]).
//!
//! Transport security: [`GossipConfig::plaintext`] for trusted networks and
//! tests, or any `quinn` server/client config pair (TLS, mutual TLS) in
//! [`GossipConfig::tls`].

mod node;
mod wire;

pub use node::{Member, MemberEvent, Messages, Node, NodeId};

use std::net::SocketAddr;

/// Receivers forward a message seen for the first time to this many random
/// members.
pub const FORWARD_FANOUT: usize = 3;
/// Message ids remembered per node to suppress duplicates.
pub const SEEN_WINDOW: usize = 100_000;

/// How a node binds and secures its endpoint.
#[derive(Clone)]
pub struct GossipConfig {
    pub addr: SocketAddr,
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

impl GossipConfig {
    /// No encryption (trusted networks, tests).
    pub fn plaintext(addr: SocketAddr) -> GossipConfig {
        GossipConfig {
            addr,
            server: quinn_plaintext::server_config(),
            client: quinn_plaintext::client_config(),
        }
    }

    /// TLS or mutual TLS with the given quinn configs.
    pub fn tls(addr: SocketAddr, server: quinn::ServerConfig, client: quinn::ClientConfig) -> Self {
        GossipConfig {
            addr,
            server,
            client,
        }
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("encoding a message: {0}")]
    Encode(#[from] postcard::Error),
    #[error("message of {0} bytes is over the {max} byte limit", max = wire::MAX_FRAME_BYTES)]
    TooLarge(usize),
    #[error("the node has left")]
    Closed,
}
