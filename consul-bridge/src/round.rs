//! One bridge round, without IO: Consul's answer and the rows the catalog
//! holds in, the statements to write out.
//!
//! Rules (DESIGN §8, issue "Service discovery I"):
//! - only rows whose content changed are written, all in one transaction;
//!   a check whose only change is its `Output` is not written unless
//!   `sync_output` (output churn would replicate every second);
//! - rows that vanished from Consul are deleted;
//! - every statement carries `source IS NULL`: rows another writer owns
//!   are never touched;
//! - a round that would delete more than half of this node's services (an
//!   ACL-filtered or half-started Consul answering `{}`) is applied only
//!   after three identical answers in a row;
//! - a failing Consul writes nothing (its last state stays) and is logged
//!   once per change of failure kind, not every poll.

use corro_store::SqlValue;

use crate::consul::{CheckRow, PollError, ServiceRow, Snapshot};

/// A statement and its parameters.
pub type Statement = (String, Vec<SqlValue>);

/// What a round writes.
#[derive(Debug, Default)]
pub struct Plan {
    pub statements: Vec<Statement>,
}

/// Identical answers needed before a mass deletion is applied.
pub const MASS_DELETE_CONFIRMATIONS: u32 = 3;

/// The bridge's memory between rounds.
#[derive(Debug)]
pub struct Bridge {
    node: String,
    sync_output: bool,
    /// Failure kind last logged (`None`: Consul answered).
    failing: Option<&'static str>,
    /// A mass-deleting answer and how many times in a row it came.
    guard: Option<(Snapshot, u32)>,
    held: bool,
}

const UPSERT_SERVICE: &str = "INSERT INTO consul_services (node, id, name, tags, meta, port, address, weights, tagged_addresses, updated_at) \
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
ON CONFLICT (node, id) DO UPDATE SET name = excluded.name, tags = excluded.tags, meta = excluded.meta, port = excluded.port, \
address = excluded.address, weights = excluded.weights, tagged_addresses = excluded.tagged_addresses, updated_at = excluded.updated_at \
WHERE consul_services.source IS NULL";
const DELETE_SERVICE: &str =
    "DELETE FROM consul_services WHERE node = ?1 AND id = ?2 AND source IS NULL";
const UPSERT_CHECK: &str = "INSERT INTO consul_checks (node, id, service_id, service_name, name, status, output, notes, type, updated_at) \
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
ON CONFLICT (node, id) DO UPDATE SET service_id = excluded.service_id, service_name = excluded.service_name, name = excluded.name, \
status = excluded.status, output = excluded.output, notes = excluded.notes, type = excluded.type, updated_at = excluded.updated_at \
WHERE consul_checks.source IS NULL";
const DELETE_CHECK: &str =
    "DELETE FROM consul_checks WHERE node = ?1 AND id = ?2 AND source IS NULL";

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> SqlValue {
    SqlValue::Text(serde_json::to_string(v).unwrap_or_default())
}

fn same_check(a: &CheckRow, b: &CheckRow, with_output: bool) -> bool {
    a.service_id == b.service_id
        && a.service_name == b.service_name
        && a.name == b.name
        && a.status == b.status
        && a.notes == b.notes
        && a.kind == b.kind
        && (!with_output || a.output == b.output)
}

impl Bridge {
    pub fn new(node: &str, sync_output: bool) -> Bridge {
        Bridge {
            node: node.to_string(),
            sync_output,
            failing: None,
            guard: None,
            held: false,
        }
    }

    /// Decides one round. `current`: this node's bridge-owned rows as the
    /// catalog holds them; `allowed`: false while another agent has
    /// precedence over this node name; `now_ms` stamps `updated_at`.
    pub fn round(
        &mut self,
        answer: Result<Snapshot, PollError>,
        current: &Snapshot,
        allowed: bool,
        now_ms: i64,
    ) -> Plan {
        let answer = match answer {
            Ok(a) => {
                if let Some(kind) = self.failing.take() {
                    tracing::info!(was = kind, "consul answers again");
                }
                a
            }
            Err(e) => {
                if self.failing != Some(e.kind()) {
                    tracing::warn!(error = %e, "consul bridge: no usable answer from consul; keeping the last known state and retrying with backoff");
                    self.failing = Some(e.kind());
                }
                return Plan::default();
            }
        };
        if !allowed {
            if !self.held {
                tracing::error!(node = %self.node, "consul bridge held: another live agent with this node name started earlier");
                self.held = true;
            }
            return Plan::default();
        }
        if std::mem::take(&mut self.held) {
            tracing::info!(node = %self.node, "consul bridge resumes");
        }
        let gone = current
            .services
            .keys()
            .filter(|id| !answer.services.contains_key(*id))
            .count();
        if gone > 0 && gone * 2 > current.services.len() {
            let count = match &self.guard {
                Some((prev, n)) if *prev == answer => n + 1,
                _ => 1,
            };
            if count < MASS_DELETE_CONFIRMATIONS {
                if count == 1 {
                    tracing::warn!(
                        gone,
                        of = current.services.len(),
                        "consul's answer would delete more than half of this node's services; applying it only if the next answers are identical"
                    );
                }
                self.guard = Some((answer, count));
                return Plan::default();
            }
            tracing::warn!(
                gone,
                "consul's answer confirmed {MASS_DELETE_CONFIRMATIONS} times; deleting"
            );
        }
        self.guard = None;
        self.plan(&answer, current, now_ms)
    }

    fn plan(&self, answer: &Snapshot, current: &Snapshot, now_ms: i64) -> Plan {
        let node = text(&self.node);
        let mut st = Vec::new();
        for (id, s) in &answer.services {
            if current.services.get(id) != Some(s) {
                st.push((
                    UPSERT_SERVICE.to_string(),
                    service_params(&node, id, s, now_ms),
                ));
            }
        }
        for id in current.services.keys() {
            if !answer.services.contains_key(id) {
                st.push((DELETE_SERVICE.to_string(), vec![node.clone(), text(id)]));
            }
        }
        for (id, c) in &answer.checks {
            let changed = current
                .checks
                .get(id)
                .is_none_or(|cur| !same_check(cur, c, self.sync_output));
            if changed {
                st.push((
                    UPSERT_CHECK.to_string(),
                    vec![
                        node.clone(),
                        text(id),
                        text(&c.service_id),
                        text(&c.service_name),
                        text(&c.name),
                        text(&c.status),
                        text(&c.output),
                        text(&c.notes),
                        text(&c.kind),
                        SqlValue::Integer(now_ms),
                    ],
                ));
            }
        }
        for id in current.checks.keys() {
            if !answer.checks.contains_key(id) {
                st.push((DELETE_CHECK.to_string(), vec![node.clone(), text(id)]));
            }
        }
        Plan { statements: st }
    }
}

fn service_params(node: &SqlValue, id: &str, s: &ServiceRow, now_ms: i64) -> Vec<SqlValue> {
    vec![
        node.clone(),
        text(id),
        text(&s.name),
        json(&s.tags),
        json(&s.meta),
        SqlValue::Integer(s.port),
        text(&s.address),
        json(&s.weights),
        json(&s.tagged_addresses),
        SqlValue::Integer(now_ms),
    ]
}

/// The catalog's rows of `node` written by the bridge (`source` null), as a
/// [`Snapshot`] to compare answers with.
pub fn current_from_index(index: &corro_catalog::Index, node: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    // Exactly this node's spelling: the index matches node names in any
    // case, but another host registered under another spelling owns its
    // own rows, and the bridge must never take them for its own.
    for s in index.exact_node_services(node) {
        if s.source.is_some() {
            continue;
        }
        snap.services.insert(
            s.id.clone(),
            ServiceRow {
                name: s.name.clone(),
                tags: s.tags.clone(),
                meta: s.meta.clone(),
                port: s.port,
                address: s.address.clone(),
                weights: s.weights,
                tagged_addresses: s.tagged_addresses.clone(),
            },
        );
    }
    for c in index.exact_node_checks(node).filter(|c| c.source.is_none()) {
        snap.checks.insert(
            c.id.clone(),
            CheckRow {
                service_id: c.service_id.clone(),
                service_name: c.service_name.clone(),
                name: c.name.clone(),
                status: c.status.as_str().to_string(),
                output: c.output.clone(),
                notes: c.notes.clone(),
                kind: c.kind.clone(),
            },
        );
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;
    use corro_catalog::model::Weights;

    fn svc(name: &str) -> ServiceRow {
        ServiceRow {
            name: name.into(),
            tags: vec![],
            meta: Default::default(),
            port: 80,
            address: String::new(),
            weights: Weights::default(),
            tagged_addresses: Default::default(),
        }
    }

    fn chk(status: &str, output: &str) -> CheckRow {
        CheckRow {
            service_id: "web".into(),
            service_name: "web".into(),
            name: "c".into(),
            status: status.into(),
            output: output.into(),
            notes: String::new(),
            kind: String::new(),
        }
    }

    fn snap(services: &[&str], checks: &[(&str, CheckRow)]) -> Snapshot {
        Snapshot {
            services: services.iter().map(|s| (s.to_string(), svc(s))).collect(),
            checks: checks
                .iter()
                .map(|(i, c)| (i.to_string(), c.clone()))
                .collect(),
        }
    }

    #[test]
    fn only_changed_rows_are_written() {
        let mut b = Bridge::new("n1", false);
        let cur = snap(&["web", "db"], &[("c1", chk("passing", "ok"))]);
        let same = b.round(Ok(cur.clone()), &cur, true, 1);
        assert!(same.statements.is_empty());
        let output_only = snap(&["web", "db"], &[("c1", chk("passing", "ok again"))]);
        assert!(
            b.round(Ok(output_only), &cur, true, 1)
                .statements
                .is_empty()
        );
        let status = snap(&["web", "db"], &[("c1", chk("critical", "down"))]);
        let p = b.round(Ok(status), &cur, true, 1);
        assert_eq!(p.statements.len(), 1);
        assert!(p.statements[0].0.starts_with("INSERT INTO consul_checks"));
        assert!(
            p.statements
                .iter()
                .all(|(sql, _)| sql.contains("source IS NULL"))
        );
        let mut with_output = Bridge::new("n1", true);
        let output_only = snap(&["web", "db"], &[("c1", chk("passing", "ok again"))]);
        assert_eq!(
            with_output
                .round(Ok(output_only), &cur, true, 1)
                .statements
                .len(),
            1
        );
    }

    #[test]
    fn vanished_rows_are_deleted() {
        let mut b = Bridge::new("n1", false);
        let cur = snap(&["a", "b", "c"], &[("c1", chk("passing", ""))]);
        let p = b.round(Ok(snap(&["a", "b"], &[])), &cur, true, 1);
        let sql: Vec<&str> = p.statements.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(sql, vec![DELETE_SERVICE, DELETE_CHECK]);
    }

    #[test]
    fn a_mass_delete_needs_three_identical_answers() {
        let mut b = Bridge::new("n1", false);
        let cur = snap(&["a", "b", "c", "d"], &[]);
        let empty = snap(&[], &[]);
        assert!(
            b.round(Ok(empty.clone()), &cur, true, 1)
                .statements
                .is_empty()
        );
        assert!(
            b.round(Ok(empty.clone()), &cur, true, 1)
                .statements
                .is_empty()
        );
        // A different answer in between restarts the count.
        assert!(
            b.round(Ok(snap(&["a"], &[])), &cur, true, 1)
                .statements
                .is_empty()
        );
        assert!(
            b.round(Ok(empty.clone()), &cur, true, 1)
                .statements
                .is_empty()
        );
        assert!(
            b.round(Ok(empty.clone()), &cur, true, 1)
                .statements
                .is_empty()
        );
        assert_eq!(b.round(Ok(empty), &cur, true, 1).statements.len(), 4);
        // Half is not more than half.
        let mut b = Bridge::new("n1", false);
        assert_eq!(
            b.round(Ok(snap(&["a", "b"], &[])), &cur, true, 1)
                .statements
                .len(),
            2
        );
    }

    #[test]
    fn failures_and_conflicts_write_nothing() {
        let mut b = Bridge::new("n1", false);
        let cur = snap(&["a"], &[]);
        for e in [
            PollError::Unreachable("refused".into()),
            PollError::AclDenied("denied".into()),
            PollError::Malformed("x".into()),
        ] {
            assert!(b.round(Err(e), &cur, true, 1).statements.is_empty());
        }
        assert!(
            b.round(Ok(snap(&["a", "b"], &[])), &cur, false, 1)
                .statements
                .is_empty()
        );
        assert_eq!(
            b.round(Ok(snap(&["a", "b"], &[])), &cur, true, 1)
                .statements
                .len(),
            1
        );
    }
}
