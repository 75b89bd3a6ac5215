//! Actor identity: the 16-byte id that names a node's stream of versions.
//!
//! Actor ids are compared byte-wise; that order is the merge rule's last
//! tie-breaker, so it must be the same on every node.

use serde::{Deserialize, Serialize};

/// A node's actor id (a random UUID).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ActorId(pub [u8; 16]);

impl ActorId {
    /// A fresh random id.
    pub fn random() -> Self {
        ActorId(*uuid::Uuid::new_v4().as_bytes())
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(ActorId(b.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Display for ActorId {
    /// Hex without dashes, as the reference's logs show actor ids.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", uuid::Uuid::from_bytes(self.0).simple())
    }
}

impl std::fmt::Debug for ActorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorId({self})")
    }
}

impl std::str::FromStr for ActorId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ActorId(*uuid::Uuid::parse_str(s)?.as_bytes()))
    }
}
