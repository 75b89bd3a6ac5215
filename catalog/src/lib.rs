//! The discovery model (DESIGN §8): services, checks, nodes and SWIM
//! membership, joined into one in-memory index with each instance's health.
//!
//! Every discovery reader (the Consul-compatible HTTP API, DNS, template
//! helpers) reads the [`Catalog`]; none of them runs SQL per request. The
//! catalog is kept current from the store's change feed (rows of
//! `consul_services`, `consul_checks`, `consul_nodes`,
//! `consul_node_claims` and `consul_kv`, re-read after each commit) and from membership
//! snapshots the agent hands it ([`Catalog::set_membership`]).
//!
//! - [`model`]: the rows, parsed (JSON columns decoded leniently: a
//!   malformed value reads as empty, never as an error for the reader);
//! - [`health`]: check statuses and how an instance's status is aggregated;
//! - [`index`]: the plain state (no IO, no locks), with per-topic
//!   modification indexes for blocking queries;
//! - [`kv`]: Consul's KV store in the index (keys, values, per-directory
//!   stamps for blocking queries on prefixes);
//! - [`catalog`](Catalog): the shared handle: loading from the store, the
//!   feed hookup, the persisted `X-Consul-Index` counter, change
//!   notification.
//!
//! Out of scope: writing rows (the Consul bridge and the agent do that) and
//! any wire format (the HTTP API and DNS render what they read here).

mod catalog;
mod counter;
pub mod health;
pub mod index;
pub mod kv;
pub mod model;
mod sql;
pub mod wakers;

pub use catalog::{Catalog, CatalogError, KvListener};
pub use counter::IndexCounter;
pub use health::{Liveness, Status};
pub use index::{Entry, Index, Instance, MemberState, Rows, Topic, fold, same_name};
pub use kv::{KvEntry, KvRow};
pub use model::{Check, Claim, Node, Service, TaggedAddress, Weights};
pub use sql::TABLES;
pub use wakers::{Closed, TopicWatch};
