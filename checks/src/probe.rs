//! What the runner asks of a probe: run one check once, within its timeout,
//! and say what it found. The real probes ([`crate::net::NetProber`]) open
//! sockets and run programs; tests drive the runner with their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::definition::CheckDefinition;
use crate::status::Status;

/// One probe's finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub output: String,
}

impl Outcome {
    pub fn new(status: Status, output: impl Into<String>) -> Outcome {
        Outcome {
            status,
            output: output.into(),
        }
    }
}

/// A boxed probe future.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Runs checks. The runner also bounds every probe by the check's timeout
/// (plus a second of grace), so a probe that never returns costs a slot for
/// that long only.
pub trait Prober: Send + Sync + 'static {
    fn probe(&self, check: Arc<CheckDefinition>) -> ProbeFuture;
}

/// Looks up the health an alias check mirrors: the checks of a service and
/// of its node.
pub trait AliasSource: Send + Sync + 'static {
    /// `(name, status, output)` of each check of service `service_id` on
    /// `node` and of the node itself, without the alias check `exclude`;
    /// `None`: no such service.
    fn service_checks(
        &self,
        node: &str,
        service_id: &str,
        exclude: &str,
    ) -> Option<Vec<(String, Status, String)>>;
}
