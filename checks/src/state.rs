//! One check's published state as a plain state machine: probe outcomes
//! through the thresholds, TTL updates and expiry, and what to publish.
//! Nothing is published when neither status nor output changed.

use crate::definition::CheckDefinition;
use crate::output;
use crate::probe::Outcome;
use crate::status::Status;
use crate::thresholds::Thresholds;

/// A change to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub id: String,
    pub status: Status,
    pub output: String,
    /// The runner's order of updates (increasing): whoever applies them
    /// drops one older than what it already applied.
    pub seq: u64,
    /// The [`crate::runner::Start::epoch`] the check was added with.
    pub epoch: u64,
}

/// What a check shows now.
#[derive(Clone, Debug)]
pub struct CheckState {
    pub id: String,
    pub status: Status,
    pub output: String,
    thresholds: Thresholds,
    max_output: usize,
    /// Echoed in updates (see [`Update::epoch`]).
    pub epoch: u64,
}

impl CheckState {
    /// Starts at `status`/`output` (restored, or the definition's initial
    /// status, critical by default).
    pub fn new(def: &CheckDefinition, status: Status, output: String) -> CheckState {
        CheckState {
            id: def.id.clone(),
            status,
            output,
            thresholds: Thresholds::new(
                def.success_before_passing,
                def.failures_before_warning,
                def.failures_before_critical,
            ),
            max_output: def.output_max_size,
            epoch: 0,
        }
    }

    fn publish(&mut self, status: Status, output: String) -> Option<Update> {
        if status == self.status && output == self.output {
            return None;
        }
        self.status = status;
        self.output = output;
        Some(Update {
            id: self.id.clone(),
            status,
            output: self.output.clone(),
            seq: 0,
            epoch: self.epoch,
        })
    }

    /// A probe's outcome, through the thresholds.
    pub fn on_outcome(&mut self, o: Outcome) -> Option<Update> {
        let status = self.thresholds.record(o.status)?;
        self.publish(status, o.output)
    }

    /// A TTL update (`pass`/`warn`/`fail`/`update`): applied as given, the
    /// note capped as Consul caps it.
    pub fn on_ttl(&mut self, status: Status, note: &str) -> Option<Update> {
        let out = output::ttl_note(note, self.max_output);
        self.publish(status, out)
    }

    /// The TTL ran out: critical, with Consul's text and the last output.
    pub fn on_ttl_expired(&mut self) -> Option<Update> {
        let out = if self.output.is_empty() {
            "TTL expired".to_string()
        } else if self.output.starts_with("TTL expired") {
            self.output.clone()
        } else {
            format!(
                "TTL expired (last output before timeout follows): {}",
                self.output
            )
        };
        self.publish(Status::Critical, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{CheckDefinition, Kind};
    use std::time::Duration;

    fn ttl_def() -> CheckDefinition {
        CheckDefinition::decode(
            serde_json::json!({"Name": "t", "ID": "t", "TTL": "10s", "OutputMaxSize": 8})
                .as_object()
                .unwrap(),
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn unchanged_results_publish_nothing() {
        let d = ttl_def();
        assert_eq!(
            d.kind,
            Kind::Ttl {
                ttl: Duration::from_secs(10)
            }
        );
        let mut s = CheckState::new(&d, Status::Critical, String::new());
        assert!(s.on_outcome(Outcome::new(Status::Critical, "")).is_none());
        let u = s.on_outcome(Outcome::new(Status::Passing, "ok")).unwrap();
        assert_eq!((u.status, u.output.as_str()), (Status::Passing, "ok"));
        assert!(s.on_outcome(Outcome::new(Status::Passing, "ok")).is_none());
        // Output alone is a change too (the registry decides how urgent).
        assert!(s.on_outcome(Outcome::new(Status::Passing, "ok2")).is_some());
    }

    #[test]
    fn ttl_expiry_keeps_the_last_note() {
        let mut s = CheckState::new(&ttl_def(), Status::Critical, String::new());
        s.on_ttl(Status::Passing, "fine");
        let u = s.on_ttl_expired().unwrap();
        assert_eq!(u.status, Status::Critical);
        assert_eq!(
            u.output,
            "TTL expired (last output before timeout follows): fine"
        );
        // Expiring again changes nothing.
        assert!(s.on_ttl_expired().is_none());
        let mut s = CheckState::new(&ttl_def(), Status::Passing, String::new());
        assert_eq!(s.on_ttl_expired().unwrap().output, "TTL expired");
        // Long notes are cut as Consul cuts them.
        let u = s.on_ttl(Status::Warning, "0123456789").unwrap();
        assert_eq!(u.output, "01234567 ... (captured 8 of 10 bytes)");
    }
}
