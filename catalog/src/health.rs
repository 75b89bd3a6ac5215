//! Check statuses and an instance's aggregated health.
//!
//! As Consul: a check is `passing`, `warning` or `critical` (any other
//! stored value reads as critical: an unknown status must not make an
//! instance look healthy). An instance's status aggregates the checks of its
//! service and the node-level checks of its node, worst first:
//! maintenance > critical > warning > passing; no checks is passing. The
//! maintenance checks Consul creates (`_node_maintenance`,
//! `_service_maintenance:<id>`) are critical checks that make the aggregate
//! `maintenance`. A node whose agent SWIM declared down gets a critical
//! `serfHealth` check, as Consul's own node check.

use serde::Serialize;

/// A check's status, or an instance's aggregated status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
    /// Only as an aggregate: a maintenance check is present.
    Maintenance,
}

impl Status {
    /// A stored check status; unknown values are critical.
    pub fn parse(s: &str) -> Status {
        match s.trim().to_ascii_lowercase().as_str() {
            "passing" => Status::Passing,
            "warning" => Status::Warning,
            _ => Status::Critical,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Maintenance => "maintenance",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a node's agent is reachable, as membership sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Alive or suspect (a suspect node is not yet critical).
    Alive,
    /// Declared down (or unknown to a settled membership view).
    Down,
    /// No node row names the agent: health comes from checks alone.
    Unknown,
}

/// The ID of Consul's node-level maintenance check.
pub const NODE_MAINTENANCE: &str = "_node_maintenance";
/// Prefix of Consul's service maintenance check IDs.
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";
/// The synthetic node check that reflects membership (Consul's name).
pub const SERF_CHECK_ID: &str = "serfHealth";

/// Whether a check ID is one of Consul's maintenance checks.
pub fn is_maintenance(check_id: &str) -> bool {
    check_id == NODE_MAINTENANCE || check_id.starts_with(SERVICE_MAINTENANCE_PREFIX)
}

/// Aggregates (check id, status) pairs into an instance's status.
pub fn aggregate<'a>(checks: impl IntoIterator<Item = (&'a str, Status)>) -> Status {
    checks
        .into_iter()
        .map(|(id, s)| {
            if is_maintenance(id) && s != Status::Passing {
                Status::Maintenance
            } else {
                s
            }
        })
        .max()
        .unwrap_or(Status::Passing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_takes_the_worst_with_maintenance_first() {
        assert_eq!(aggregate([]), Status::Passing);
        assert_eq!(
            aggregate([("a", Status::Passing), ("b", Status::Warning)]),
            Status::Warning
        );
        assert_eq!(
            aggregate([("a", Status::Critical), ("b", Status::Warning)]),
            Status::Critical
        );
        assert_eq!(
            aggregate([
                ("a", Status::Critical),
                ("_service_maintenance:web", Status::Critical)
            ]),
            Status::Maintenance
        );
        assert_eq!(
            aggregate([(NODE_MAINTENANCE, Status::Critical)]),
            Status::Maintenance
        );
    }

    #[test]
    fn unknown_statuses_are_critical() {
        assert_eq!(Status::parse("PASSING"), Status::Passing);
        assert_eq!(Status::parse("warning"), Status::Warning);
        assert_eq!(Status::parse("bogus"), Status::Critical);
        assert_eq!(Status::parse(""), Status::Critical);
    }
}
