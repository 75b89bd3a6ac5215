//! Health checks run by the agent, as Consul's agent runs them (issue
//! "Consul removable"; `shared/reference/consul-agent-api.md` §2).
//!
//! - [`definition`]: a check in Consul's JSON format, decoded
//!   ([`fields`]: CamelCase and snake_case keys; [`duration`]: Go durations
//!   or nanoseconds) and validated with Consul's messages.
//! - [`thresholds`] and [`state`]: plain state machines, the success and
//!   failure thresholds and what a check publishes (TTL updates and expiry
//!   included); [`output`]: Consul's output caps.
//! - [`runner`]: one task schedules every check and runs probes on a
//!   bounded set of tasks; [`probe`]: the small trait probes implement, so
//!   tests drive the runner without sockets; [`net`]: the real probes.
//! - [`status`]: passing, warning, critical.

pub mod definition;
pub mod duration;
pub mod fields;
pub mod net;
pub mod output;
pub mod probe;
pub mod runner;
pub mod state;
pub mod status;
pub mod thresholds;
pub mod tls;

pub use definition::{CheckDefinition, CheckError, Kind};
pub use probe::{AliasSource, Outcome, Prober};
pub use runner::{Runner, RunnerConfig, Start};
pub use state::Update;
pub use status::Status;
