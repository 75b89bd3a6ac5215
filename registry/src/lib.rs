//! This host's natively registered services and checks: what the Consul
//! agent used to hold (issue "Consul removable").
//!
//! - [`service`]: a service definition in Consul's format, validated with
//!   Consul's messages and shown back exactly as registered.
//! - [`local`]: the registrations as plain data and the rows they mean.
//! - [`files`]: service definition files (JSON and HCL), loaded and
//!   reconciled at start and on reload.
//! - [`registry`]: the [`Registry`] handle: registration, TTL updates,
//!   maintenance, reads for the agent API; it runs the checks
//!   (`corro-checks`), keeps everything across restarts ([`persist`], a
//!   host-local table) and writes the replicated rows (`source =
//!   'native'`), status changes at once and output-only changes lazily.

pub mod files;
pub mod local;
pub mod persist;
pub mod registry;
pub mod service;

pub use local::Origin;
pub use registry::{Registry, RegistryConfig, RegistryError, SOURCE};
pub use service::{ServiceDefinition, ServiceError};
