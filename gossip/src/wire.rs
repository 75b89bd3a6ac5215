//! Frames on the gossip streams (versioned, postcard) and the datagram
//! prefix that marks SWIM packets of this protocol.

use serde::{Deserialize, Serialize};

/// Protocol of this crate (independent of the agent's replication
/// protocol): first byte of every datagram and field of every frame.
pub(crate) const VERSION: u8 = 1;
/// Largest frame accepted.
pub(crate) const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// One frame on a uni stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// An application message.
    Message {
        version: u8,
        id: [u8; 16],
        /// The node that broadcast it.
        origin: [u8; 16],
        kind: String,
        /// 0 from the origin, 1 when forwarded (forwarded once at most).
        hops: u8,
        payload: Vec<u8>,
    },
    /// The sender is leaving (sent before its SWIM goodbye).
    Leave { version: u8, node: [u8; 16] },
}
