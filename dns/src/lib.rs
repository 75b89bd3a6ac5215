//! The DNS responder (DESIGN §8): Consul's DNS names (`web.service.consul`,
//! `<node>.node.consul`, RFC 2782 SRV names, `<hex>.addr.consul`, PTR) answered
//! from the discovery catalog, over UDP and TCP.
//!
//! - [`name`]: parsing a question name into a [`Lookup`] (case-insensitive,
//!   trailing-dot tolerant), without IO;
//! - [`answer`]: building the records and response code for a lookup from
//!   the catalog index, with Consul's health rules (critical instances and
//!   instances of down nodes excluded; warning included unless
//!   `only_passing`);
//! - [`Responder`]: one packet in, one packet out: parsing, response codes
//!   for everything that is not a plain question (FORMERR, NOTIMP,
//!   REFUSED), truncation for UDP, answer shuffling;
//! - [`serve`]: the UDP and TCP listeners ([`serve_after`]: answering only
//!   once a future resolves).
//!
//! Out of scope here: writing anything (DNS only reads the catalog).

pub mod answer;
pub mod name;
mod responder;
mod server;
mod settings;
mod udp;

pub use name::Lookup;
pub use responder::Responder;
pub use server::{Listeners, serve, serve_after};
pub use settings::{DnsSettings, SoaSettings};
