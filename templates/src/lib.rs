//! Live config templates (DESIGN §7): consul-template's job inside
//! Corrosion.
//!
//! A template is text with Rhai code in `<% %>` and `<%= %>` tags
//! ([`syntax`]); it reads replicated tables with `sql()` and the discovery
//! model with helpers such as `service("web")` ([`engine`], [`discovery`]).
//! Each render records what it read ([`source::Deps`]); any change to those
//! tables or to the discovery model re-renders it after a quiescence wait
//! ([`wait`]). Output goes to the destination atomically, only when it
//! changed, optionally followed by a command ([`output`], [`command`]).
//! [`runner`] ties these together for one template and its file watch.
//!
//! The data comes through a [`Source`]: the agent implements it over its
//! store and catalog; `corrosion template` over the agent's HTTP API.

/// The `tracing` target of template logs (as the reference prints them).
pub const LOG_TARGET: &str = "corrosion::command::tpl";

pub mod command;
pub mod discovery;
pub mod engine;
pub mod output;
pub mod runner;
pub mod source;
pub mod status;
pub mod syntax;
pub mod values;
pub mod wait;

pub use discovery::{DiscoveryCall, answer as discovery_answer};
pub use engine::{Compiled, Limits, RenderError, Rendered, Renderer};
pub use runner::{Spec, TemplateSet};
pub use source::{Deps, Hub, Params, QueryLimits, Source, SourceError};
pub use status::{StatusBoard, TemplateStatus};
pub use values::Rows;
pub use wait::Wait;
