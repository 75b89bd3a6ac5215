//! Discovery helpers: what `services()`, `service()`, `checks()`, `nodes()`,
//! `node()` and the KV helpers (`key()`, `ls()`, `tree()`...) return, computed from the discovery model's [`Index`] with
//! the same health rules as the Consul HTTP catalog (an instance's status
//! is the worst of its checks, its node's checks and the node's membership
//! check `serfHealth`).
//!
//! A [`DiscoveryCall`] is plain data so a template process outside the agent
//! can send it to the agent (`POST /v1/discovery`) and get the same answer
//! the agent's own templates compute. Answers are JSON values with
//! snake_case keys (see `docs/TEMPLATES.md` for each shape).

use corro_catalog::{Index, Instance, Status, health};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One discovery helper call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum DiscoveryCall {
    /// Every service name with the union of its instances' tags.
    Services,
    /// Instances of a service, optionally only those with `tag`; passing
    /// ones only unless `any`.
    Instances {
        service: String,
        #[serde(default)]
        tag: Option<String>,
        #[serde(default)]
        any: bool,
    },
    /// The checks of a service's instances (their own checks).
    Checks { service: String },
    /// Every node with its aggregated node-level status.
    Nodes,
    /// One node (`None`: the local node) with its services, or `()`.
    Node {
        #[serde(default)]
        name: Option<String>,
    },
    /// One KV key: `{value, flags}`, or `()` when it does not exist.
    Key { key: String },
    /// The KV entries directly in the folder `prefix` (one level), keys
    /// relative to it.
    Ls { prefix: String },
    /// Every KV entry under the folder `prefix`, keys relative to it,
    /// folder keys (ending in `/`) left out.
    Tree { prefix: String },
}

/// The folder a template's `ls()`/`tree()` names: without a leading `/`,
/// with a trailing one (`"app"` and `"/app/"` are `"app/"`; `""` is the
/// whole store), as consul-template reads it.
pub fn kv_folder(prefix: &str) -> String {
    let p = prefix.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

fn kv_value(e: &corro_catalog::KvEntry) -> Value {
    json!({
        "value": String::from_utf8_lossy(&e.value),
        "flags": e.flags,
    })
}

fn kv_list(index: &Index, prefix: &str, one_level: bool) -> Value {
    let folder = kv_folder(prefix);
    Value::Array(
        index
            .kv_under(&folder)
            .filter_map(|e| {
                let rel = &e.key[folder.len()..];
                let skip = rel.is_empty() || rel.ends_with('/') || (one_level && rel.contains('/'));
                (!skip).then(|| {
                    json!({
                        "key": rel,
                        "value": String::from_utf8_lossy(&e.value),
                        "flags": e.flags,
                    })
                })
            })
            .collect(),
    )
}

/// Answers `call` from the index; `local_node` is this host's node name.
pub fn answer(index: &Index, local_node: &str, call: &DiscoveryCall) -> Value {
    match call {
        DiscoveryCall::Services => Value::Array(
            index
                .service_names()
                .into_iter()
                .map(|(name, tags)| json!({ "name": name, "tags": tags }))
                .collect(),
        ),
        DiscoveryCall::Instances { service, tag, any } => Value::Array(
            index
                .instances(service)
                .iter()
                .filter(|i| tag.as_ref().is_none_or(|t| i.service.has_tag(t)))
                .filter(|i| *any || i.status == Status::Passing)
                .map(instance)
                .collect(),
        ),
        DiscoveryCall::Checks { service } => Value::Array(
            index
                .service_checks(service)
                .iter()
                .map(|c| {
                    json!({
                        "node": c.node,
                        "id": c.id,
                        "name": c.name,
                        "status": c.status.as_str(),
                        "output": c.output,
                        "notes": c.notes,
                        "service_id": c.service_id,
                        "service_name": c.service_name,
                        "type": c.kind,
                    })
                })
                .collect(),
        ),
        DiscoveryCall::Nodes => {
            Value::Array(index.nodes().map(|n| node(index, &n.node, false)).collect())
        }
        DiscoveryCall::Node { name } => {
            let name = name.as_deref().unwrap_or(local_node);
            if index.node(name).is_some() {
                node(index, name, true)
            } else {
                Value::Null
            }
        }
        DiscoveryCall::Key { key } => index
            .kv_get(key.trim_start_matches('/'))
            .map_or(Value::Null, |e| kv_value(e)),
        DiscoveryCall::Ls { prefix } => kv_list(index, prefix, true),
        DiscoveryCall::Tree { prefix } => kv_list(index, prefix, false),
    }
}

fn node(index: &Index, name: &str, with_services: bool) -> Value {
    let Some(n) = index.node(name) else {
        return Value::Null;
    };
    let checks = index.node_checks(name);
    let status = health::aggregate(checks.iter().map(|c| (c.id.as_str(), c.status)));
    let mut v = json!({
        "name": n.node,
        "address": n.address,
        "datacenter": n.datacenter,
        "meta": n.meta,
        "status": status.as_str(),
    });
    if with_services {
        v["services"] = Value::Array(index.node_instances(name).iter().map(instance).collect());
    }
    v
}

fn instance(i: &Instance) -> Value {
    let s = &i.service;
    let node_address = i.node.as_ref().map(|n| n.address.as_str()).unwrap_or("");
    let address = if s.address.is_empty() {
        node_address
    } else {
        s.address.as_str()
    };
    json!({
        "id": s.id,
        "name": s.name,
        "node": s.node,
        "address": address,
        "port": s.port,
        "tags": s.tags,
        "meta": s.meta,
        "status": i.status.as_str(),
        "node_address": node_address,
        "datacenter": i.node.as_ref().map(|n| n.datacenter.as_str()).unwrap_or(""),
        "node_meta": i.node.as_ref().map(|n| n.meta.clone()).unwrap_or_default(),
        "weights": { "passing": s.weights.passing, "warning": s.weights.warning },
    })
}
