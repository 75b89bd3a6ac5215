//! The Consul bridge: mirrors what the host's local Consul agent has
//! registered (`GET /v1/agent/services`, `GET /v1/agent/checks`) into the
//! replicated `consul_services` and `consul_checks` rows of this node.
//!
//! - [`consul`]: the HTTP side (token, TLS, timeout, body cap) and the
//!   lenient parsing of Consul's documented JSON into [`Snapshot`]s;
//! - [`round`]: the sans-IO core deciding, from Consul's answer and the rows
//!   the catalog holds, which statements a round writes (only rows whose
//!   content changed, deletions of vanished ones, never rows with a
//!   non-null `source`), the mass-delete guard and the error-state log;
//! - [`Sink`]: where rows are read and written: in-process in the agent, or
//!   through the agent's HTTP API for `corrosion consul sync`.
//!
//! [`run`] ties them together: one poll per interval, backing off while
//! Consul fails, one transaction per round that changes anything.

pub mod consul;
pub mod round;

use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use consul::{ConsulClient, ConsulSettings, PollError, Snapshot};
pub use round::{Bridge, Plan, Statement, current_from_index};

/// Where the bridge reads the node's current rows and writes its rounds.
pub trait Sink: Send + Sync {
    /// This node's rows as the catalog holds them (bridge-owned rows only,
    /// i.e. `source` null), and whether the bridge may run now (false while
    /// another agent with the same node name has precedence).
    fn current(&self, node: &str) -> impl Future<Output = Result<(Snapshot, bool), String>> + Send;

    /// Runs the statements as one transaction.
    fn write(&self, statements: Vec<Statement>) -> impl Future<Output = Result<(), String>> + Send;
}

/// How the bridge runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub consul: ConsulSettings,
    /// Time between polls while Consul answers.
    pub interval: Duration,
    /// Write checks whose only change is their output.
    pub sync_output: bool,
}

/// Longest pause between polls while Consul keeps failing (and at most 30
/// poll intervals).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Polls Consul and mirrors it until `stop` flips.
pub async fn run<S: Sink>(settings: Settings, node: &str, sink: S, stop: CancellationToken) {
    let client = match ConsulClient::new(&settings.consul) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "consul bridge cannot start");
            return;
        }
    };
    tracing::info!(consul = %settings.consul.addr, node, "consul bridge started");
    let mut bridge = Bridge::new(node, settings.sync_output);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let answer = client.snapshot().await;
        metrics::counter!("corro_consul_polls_total").increment(1);
        if answer.is_err() {
            metrics::counter!("corro_consul_poll_errors_total").increment(1);
        }
        wait = if answer.is_ok() {
            settings.interval
        } else {
            (wait.max(settings.interval) * 2).min(MAX_BACKOFF.min(settings.interval * 30))
        };
        let (current, allowed) = match sink.current(node).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "consul bridge: cannot read this node's rows");
                continue;
            }
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let plan = bridge.round(answer, &current, allowed, now_ms);
        if plan.statements.is_empty() {
            continue;
        }
        let n = plan.statements.len();
        match sink.write(plan.statements).await {
            Ok(()) => {
                metrics::counter!("corro_consul_rows_written_total").increment(n as u64);
                tracing::debug!(statements = n, "consul bridge round written");
            }
            Err(e) => {
                metrics::counter!("corro_consul_write_errors_total").increment(1);
                tracing::warn!(error = %e, "consul bridge: writing a round failed; retrying next round");
            }
        }
    }
    tracing::info!("consul bridge stopped");
}
