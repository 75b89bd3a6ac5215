//! Consul's success and failure thresholds (`SuccessBeforePassing`,
//! `FailuresBeforeWarning`, `FailuresBeforeCritical`) as a plain state
//! machine: each probe result goes in, what to publish (if anything) comes
//! out.
//!
//! As Consul's status handler: the counters start at their thresholds, so
//! the first result is published at once; passing and warning results count
//! as successes; a critical result below the critical threshold publishes
//! `warning` once the warning threshold is reached, and nothing before.
//! While nothing is published the check keeps its last status and output.

use crate::status::Status;

/// Threshold counters of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    success_before_passing: u32,
    failures_before_warning: u32,
    failures_before_critical: u32,
    successes: u32,
    failures: u32,
}

impl Thresholds {
    /// `failures_before_warning` of `None` means "same as critical" (Consul's
    /// default); a value above the critical threshold is capped to it.
    pub fn new(
        success_before_passing: u32,
        failures_before_warning: Option<u32>,
        failures_before_critical: u32,
    ) -> Thresholds {
        let warning = failures_before_warning
            .unwrap_or(failures_before_critical)
            .min(failures_before_critical);
        Thresholds {
            success_before_passing,
            failures_before_warning: warning,
            failures_before_critical,
            successes: success_before_passing,
            failures: failures_before_critical,
        }
    }

    /// Feeds one probe result; the status to publish, or `None` to keep the
    /// current one (and its output).
    pub fn record(&mut self, result: Status) -> Option<Status> {
        match result {
            Status::Passing | Status::Warning => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                (self.successes >= self.success_before_passing).then_some(result)
            }
            Status::Critical => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                if self.failures >= self.failures_before_critical {
                    Some(Status::Critical)
                } else if self.failures >= self.failures_before_warning {
                    Some(Status::Warning)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    fn run(t: &mut Thresholds, results: &[Status]) -> Vec<Option<Status>> {
        results.iter().map(|r| t.record(*r)).collect()
    }

    #[test]
    fn no_thresholds_publish_every_result() {
        let mut t = Thresholds::new(0, None, 0);
        assert_eq!(
            run(&mut t, &[Critical, Passing, Warning, Critical]),
            vec![Some(Critical), Some(Passing), Some(Warning), Some(Critical)]
        );
    }

    #[test]
    fn the_first_result_applies_at_once() {
        let mut t = Thresholds::new(3, None, 3);
        assert_eq!(t.record(Passing), Some(Passing));
        let mut t = Thresholds::new(3, None, 3);
        assert_eq!(t.record(Critical), Some(Critical));
    }

    #[test]
    fn a_flapping_target_needs_its_streaks() {
        let mut t = Thresholds::new(2, Some(1), 3);
        // Starts applied; a failure streak: warning after 1, critical after 3.
        assert_eq!(t.record(Passing), Some(Passing));
        assert_eq!(
            run(&mut t, &[Critical, Critical, Critical]),
            vec![Some(Warning), Some(Warning), Some(Critical)]
        );
        // One success is not enough to pass again; a failure resets it.
        assert_eq!(
            run(&mut t, &[Passing, Critical, Passing, Passing]),
            vec![None, Some(Warning), None, Some(Passing)]
        );
    }

    #[test]
    fn warning_threshold_defaults_to_and_is_capped_by_critical() {
        let mut t = Thresholds::new(0, None, 2);
        t.record(Passing);
        assert_eq!(
            run(&mut t, &[Critical, Critical]),
            vec![None, Some(Critical)]
        );
        let mut t = Thresholds::new(0, Some(5), 2);
        t.record(Passing);
        assert_eq!(
            run(&mut t, &[Critical, Critical]),
            vec![None, Some(Critical)]
        );
    }
}
