//! The protocol in virtual time, for the tests and `corro-bench sim`:
//! [`SwimSim`] runs many SWIM cores (membership and failure detection);
//! [`spread`] runs the spread of writes (broadcast and anti-entropy) over
//! the same decisions the agents make. No sockets and no wall clock: every
//! figure is in simulated milliseconds and identical on every run of a
//! seed.

pub mod spread;
mod swim;

pub use swim::{PULL_EVERY_MS, SimNode, SwimSim, Traffic, actor, addr, core};
