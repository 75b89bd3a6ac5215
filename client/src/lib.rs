//! Client side of the Corrosion HTTP API.
//!
//! [`types`] holds the JSON shapes of the API (reference chapter "API"):
//! statements in their four accepted forms, SQL values as plain JSON, the
//! transaction response and the NDJSON query events. The agent serves these
//! types and [`Client`] speaks them, so the CLI, templates, the Consul bridge
//! and tests all go through one definition.

pub mod types;

mod client;

pub use client::{Client, ClientError, QueryRows, Subscription};
pub use types::{
    ChangeKind, DiscoveryAnswer, DiscoveryIndex, ExecResponse, ExecResult, HealthResponse, Member,
    NotifyEvent, NotifyKind, QueryEvent, SchemaMismatch, Statement, TableStatsRequest,
    TableStatsResponse, Value,
};
