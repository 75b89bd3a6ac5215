//! The rows of the discovery tables, parsed.
//!
//! JSON columns (`tags`, `meta`, `weights`, `tagged_addresses`) are decoded
//! leniently: a value that is not the expected JSON reads as empty (and the
//! weights as Consul's default), because a row can be half-arrived (a column
//! change before its row's insert shows defaults) or written by hand, and a
//! reader must never fail on one bad row. Values are kept as written; the
//! renderers (HTTP, DNS) decide how to show them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::health::Status;

/// A service's DNS SRV weights by health, as Consul's `Weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    #[serde(rename = "Passing")]
    pub passing: i64,
    #[serde(rename = "Warning")]
    pub warning: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One tagged address of a service (`lan_ipv4`, `wan`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedAddress {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Port")]
    pub port: i64,
}

/// A row of `consul_services`: one service instance on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub node: String,
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub port: i64,
    /// Empty: the node's address.
    pub address: String,
    pub weights: Weights,
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    pub updated_at: i64,
    /// `None`: written by the Consul bridge.
    pub source: Option<String>,
}

impl Service {
    /// Whether the service carries `tag` (compared case-insensitively, as
    /// Consul compares tags in the HTTP API and DNS).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| crate::index::same_name(t, tag))
    }
}

/// The columns of a `consul_checks` row its writer chooses (the node, ID
/// and `source` are the writer's own): what the Consul bridge mirrors and
/// what native registrations want written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub service_id: String,
    pub service_name: String,
    pub name: String,
    /// `passing`, `warning` or `critical` (anything else reads as critical).
    pub status: String,
    pub output: String,
    pub notes: String,
    pub kind: String,
}

/// A row of `consul_checks`.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub node: String,
    pub id: String,
    /// Empty for a node-level check (it applies to every service of the node).
    pub service_id: String,
    pub service_name: String,
    pub name: String,
    pub status: Status,
    pub output: String,
    pub notes: String,
    pub kind: String,
    pub updated_at: i64,
    pub source: Option<String>,
}

/// A row of `consul_nodes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub node: String,
    /// The actor id of the agent that owns the node (hex, as logged).
    pub actor_id: String,
    pub address: String,
    pub datacenter: String,
    pub meta: BTreeMap<String, String>,
    pub updated_at: i64,
}

/// A row of `consul_node_claims`: `actor_id` says it is node `node` since
/// `started_at` (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    pub node: String,
    pub actor_id: String,
    pub started_at: i64,
}

/// Tags from a JSON array of strings (anything else: none).
pub fn parse_tags(json: &str) -> Vec<String> {
    serde_json::from_str::<Vec<serde_json::Value>>(json)
        .map(|v| {
            v.into_iter()
                .filter_map(|t| match t {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Meta from a JSON object; non-string values are kept as their JSON text.
pub fn parse_meta(json: &str) -> BTreeMap<String, String> {
    serde_json::from_str::<BTreeMap<String, serde_json::Value>>(json)
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Weights from JSON (`{"Passing": n, "Warning": n}`, either case);
/// Consul's default (1, 1) otherwise.
pub fn parse_weights(json: &str) -> Weights {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Weights::default();
    };
    let get = |k: &str| {
        m.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .and_then(|(_, v)| v.as_i64())
    };
    Weights {
        passing: get("passing").unwrap_or(1),
        warning: get("warning").unwrap_or(1),
    }
}

/// Tagged addresses from JSON: `{"tag": {"Address": a, "Port": p}}` with
/// keys in either case (Consul's agent API and catalog differ).
pub fn parse_tagged_addresses(json: &str) -> BTreeMap<String, TaggedAddress> {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(json) else {
        return BTreeMap::new();
    };
    m.into_iter()
        .filter_map(|(tag, v)| {
            let serde_json::Value::Object(o) = v else {
                return None;
            };
            let get = |k: &str| {
                o.iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v)
            };
            Some((
                tag,
                TaggedAddress {
                    address: get("address")
                        .and_then(|a| a.as_str())
                        .unwrap_or_default()
                        .to_string(),
                    port: get("port").and_then(|p| p.as_i64()).unwrap_or(0),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_columns_parse_leniently() {
        assert_eq!(parse_tags(r#"["a","b",3]"#), vec!["a", "b"]);
        assert!(parse_tags("not json").is_empty());
        assert_eq!(parse_meta(r#"{"a":"x","n":3}"#)["n"], "3");
        assert!(parse_meta("[]").is_empty());
        assert_eq!(
            parse_weights(r#"{"passing":10}"#),
            Weights {
                passing: 10,
                warning: 1
            }
        );
        assert_eq!(parse_weights("null"), Weights::default());
        let t = parse_tagged_addresses(
            r#"{"lan":{"address":"10.0.0.1","port":80},"wan":{"Address":"1.2.3.4","Port":8080},"bad":3}"#,
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t["lan"].address, "10.0.0.1");
        assert_eq!(t["wan"].port, 8080);
    }
}
