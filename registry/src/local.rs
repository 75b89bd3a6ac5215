//! This agent's registrations as plain data: services, checks with their
//! current state, maintenance flags, and the rows they mean in the
//! replicated tables. No IO here; [`crate::Registry`] drives it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use corro_checks::{CheckDefinition, Status};
use serde_json::{Value, json};

use crate::service::ServiceDefinition;

/// Consul's maintenance check IDs and default reasons.
pub const NODE_MAINT_ID: &str = "_node_maintenance";
pub const SERVICE_MAINT_PREFIX: &str = "_service_maintenance:";
pub const DEFAULT_NODE_MAINT_REASON: &str = "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.";
pub const DEFAULT_SERVICE_MAINT_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

/// Where a service came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The agent API or the CLI.
    Api,
    /// A service definition file.
    File(String),
}

#[derive(Clone, Debug)]
pub struct LocalService {
    pub def: ServiceDefinition,
    /// The registration body as received, as compact JSON text (keys
    /// sorted; a parsed `Value` took five times the memory). Definition
    /// file reloads compare with it.
    pub raw: Box<str>,
    pub origin: Origin,
}

#[derive(Clone, Debug)]
pub struct LocalCheck {
    /// Shared with the runner (one copy per check).
    pub def: Arc<CheckDefinition>,
    /// Where it came from (script checks are allowed by origin).
    pub origin: Origin,
    pub status: Status,
    /// The latest output (served by this agent's API).
    pub output: String,
    /// The output the replicated row carries (updated with every status
    /// change, and lazily for output-only changes).
    pub published_output: String,
    /// When a pending output-only change gets published.
    pub output_due: Option<Instant>,
    /// Since when the check has been critical (for
    /// `DeregisterCriticalServiceAfter`; tracked locally only, as Consul).
    pub critical_since: Option<Instant>,
    /// TTL checks: wall-clock expiry (ms), saved for restarts.
    pub ttl_expires_at_ms: Option<i64>,
    /// The `seq` of the last runner update applied (older ones are dropped).
    pub seq: u64,
    /// This check's [`corro_checks::runner::Start::epoch`]: updates of a
    /// check it replaced are dropped.
    pub epoch: u64,
}

/// A row of `consul_checks` as this agent wants it.
pub use corro_catalog::model::CheckRow;

/// Everything registered here.
#[derive(Default, Debug)]
pub struct Local {
    pub services: BTreeMap<String, LocalService>,
    pub checks: BTreeMap<String, LocalCheck>,
    /// Maintenance reasons: `""` for the node, else a service ID.
    pub maintenance: BTreeMap<String, String>,
}

impl Local {
    /// The check rows this agent wants replicated (maintenance included).
    pub fn check_rows(&self) -> BTreeMap<String, CheckRow> {
        let mut out = BTreeMap::new();
        for (id, c) in &self.checks {
            out.insert(id.clone(), self.row_of(c, &c.published_output));
        }
        for (target, reason) in &self.maintenance {
            let (id, row) = maintenance_row(self, target, reason);
            out.insert(id, row);
        }
        out
    }

    /// The wanted row of one check (maintenance checks included); `None`
    /// when no such check is registered.
    pub fn check_row(&self, id: &str) -> Option<CheckRow> {
        if let Some(c) = self.checks.get(id) {
            return Some(self.row_of(c, &c.published_output));
        }
        let target = if id == NODE_MAINT_ID {
            ""
        } else {
            id.strip_prefix(SERVICE_MAINT_PREFIX)?
        };
        let reason = self.maintenance.get(target)?;
        Some(maintenance_row(self, target, reason).1)
    }

    /// The checks `/v1/agent/checks` lists, as Consul's `HealthCheck`.
    pub fn checks_json(&self, node: &str) -> BTreeMap<String, Value> {
        let mut out: BTreeMap<String, Value> = self
            .checks
            .iter()
            .map(|(id, c)| (id.clone(), self.check_json(node, id, c)))
            .collect();
        for (target, reason) in &self.maintenance {
            let (id, row) = maintenance_row(self, target, reason);
            let v = self.row_json(node, &id, &row, None);
            out.insert(id, v);
        }
        out
    }

    fn check_json(&self, node: &str, id: &str, c: &LocalCheck) -> Value {
        // This agent's API shows the latest output, not the replicated one.
        let row = self.row_of(c, &c.output);
        self.row_json(node, id, &row, Some(c))
    }

    /// The row of a registered check, with `output`.
    fn row_of(&self, c: &LocalCheck, output: &str) -> CheckRow {
        CheckRow {
            service_id: c.def.service_id.clone(),
            service_name: self
                .services
                .get(&c.def.service_id)
                .map(|s| s.def.name.clone())
                .unwrap_or_default(),
            name: c.def.name.clone(),
            status: c.status.as_str().to_string(),
            output: output.to_string(),
            notes: c.def.notes.clone(),
            kind: c.def.kind.type_name().to_string(),
        }
    }

    fn row_json(&self, node: &str, id: &str, row: &CheckRow, local: Option<&LocalCheck>) -> Value {
        let tags = self
            .services
            .get(&row.service_id)
            .map_or(json!([]), |s| json!(s.def.tags));
        let (interval, timeout, definition) = match local {
            Some(c) => (
                corro_checks::duration::format(c.def.interval),
                corro_checks::duration::format(c.def.timeout.unwrap_or_default()),
                c.def.definition_json(),
            ),
            None => (String::new(), String::new(), json!({})),
        };
        json!({
            "Node": node,
            "CheckID": id,
            "Name": row.name,
            "Status": row.status,
            "Notes": row.notes,
            "Output": row.output,
            "ServiceID": row.service_id,
            "ServiceName": row.service_name,
            "ServiceTags": tags,
            "Type": row.kind,
            "Interval": interval,
            "Timeout": timeout,
            "ExposedPort": 0,
            "Definition": definition,
            "CreateIndex": 0,
            "ModifyIndex": 0,
        })
    }

    /// A service's checks and its node's (maintenance included), as
    /// `HealthCheck` objects, and the aggregated status: `maintenance` when
    /// a maintenance check applies, else the worst (Consul's
    /// `ChecksForService(id, true)`).
    pub fn service_health(&self, node: &str, service_id: &str) -> (String, Vec<Value>) {
        let mut worst = Status::Passing;
        let mut maint = false;
        let mut list = Vec::new();
        for (id, c) in &self.checks {
            if c.def.service_id == service_id || c.def.service_id.is_empty() {
                worst = worst.worst(c.status);
                list.push(self.check_json(node, id, c));
            }
        }
        for (target, reason) in &self.maintenance {
            if target.is_empty() || target == service_id {
                maint = true;
                let (id, row) = maintenance_row(self, target, reason);
                list.push(self.row_json(node, &id, &row, None));
            }
        }
        let status = if maint {
            "maintenance".to_string()
        } else {
            worst.as_str().to_string()
        };
        (status, list)
    }
}

/// The maintenance check's ID for `target` (`""` for the node).
pub fn maintenance_id(target: &str) -> String {
    if target.is_empty() {
        NODE_MAINT_ID.to_string()
    } else {
        format!("{SERVICE_MAINT_PREFIX}{target}")
    }
}

fn maintenance_row(local: &Local, target: &str, reason: &str) -> (String, CheckRow) {
    if target.is_empty() {
        (
            NODE_MAINT_ID.to_string(),
            CheckRow {
                service_id: String::new(),
                service_name: String::new(),
                name: "Node Maintenance Mode".into(),
                status: "critical".into(),
                output: String::new(),
                notes: reason.to_string(),
                kind: "maintenance".into(),
            },
        )
    } else {
        (
            maintenance_id(target),
            CheckRow {
                service_id: target.to_string(),
                service_name: local
                    .services
                    .get(target)
                    .map(|s| s.def.name.clone())
                    .unwrap_or_default(),
                name: "Service Maintenance Mode".into(),
                status: "critical".into(),
                output: String::new(),
                notes: reason.to_string(),
                kind: "maintenance".into(),
            },
        )
    }
}
