//! A check's status, as Consul names them.

use std::fmt;

/// `passing`, `warning` or `critical` (maintenance is a critical check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// Parses the wire name (exact, lower case, as Consul compares it).
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }

    /// The worse of two statuses (critical > warning > passing).
    pub fn worst(self, other: Status) -> Status {
        self.max(other)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_by_severity() {
        for s in [Status::Passing, Status::Warning, Status::Critical] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("Passing"), None);
        assert_eq!(Status::parse("maintenance"), None);
        assert_eq!(Status::Passing.worst(Status::Warning), Status::Warning);
        assert_eq!(Status::Critical.worst(Status::Warning), Status::Critical);
    }
}
