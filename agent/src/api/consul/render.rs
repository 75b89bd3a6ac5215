//! Consul's JSON shapes, built from the catalog.
//!
//! Field names, types and empty values as Consul answers: lists are `[]`
//! and maps `{}` when empty (never `null`), ports are numbers, node IDs are
//! UUIDs (the agent's actor id), `CreateIndex`/`ModifyIndex` are the
//! catalog's index stamps of the node or service.

use std::sync::Arc;

use corro_catalog::{Check, Index, Instance, Node, Service, Topic};
use serde_json::{Map, Value, json};

/// An actor id (hex) as the UUID form Consul uses for node IDs.
pub(crate) fn node_id(actor: &str) -> String {
    uuid::Uuid::parse_str(actor)
        .map(|u| u.hyphenated().to_string())
        .unwrap_or_default()
}

fn str_map(m: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A node's addresses by tag, as Consul fills them.
fn node_tagged(addr: &str) -> Value {
    let v4 = addr.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_ipv4());
    let mut m = Map::new();
    m.insert("lan".into(), json!(addr));
    m.insert("wan".into(), json!(addr));
    let fam = if v4 { "ipv4" } else { "ipv6" };
    m.insert(format!("lan_{fam}"), json!(addr));
    m.insert(format!("wan_{fam}"), json!(addr));
    Value::Object(m)
}

fn service_tagged(s: &Service) -> Value {
    Value::Object(
        s.tagged_addresses
            .iter()
            .map(|(k, t)| (k.clone(), json!({"Address": t.address, "Port": t.port})))
            .collect(),
    )
}

fn node_index(index: &Index, node: &str) -> u64 {
    index.topic_index(&[Topic::Node(node.to_string())])
}

/// A node as `/v1/catalog/nodes` and `Node` in health entries show it.
pub(crate) fn node(index: &Index, n: &Node) -> Value {
    let i = node_index(index, &n.node);
    json!({
        "ID": node_id(&n.actor_id),
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": node_tagged(&n.address),
        "Meta": str_map(&n.meta),
        "CreateIndex": i,
        "ModifyIndex": i,
    })
}

/// A node known only from its services (no `consul_nodes` row yet).
pub(crate) fn bare_node(index: &Index, name: &str, dc: &str) -> Value {
    let i = node_index(index, name);
    json!({
        "ID": "",
        "Node": name,
        "Address": "",
        "Datacenter": dc,
        "TaggedAddresses": {},
        "Meta": {},
        "CreateIndex": i,
        "ModifyIndex": i,
    })
}

/// A service as `Service` in health entries and `/v1/catalog/node/:node`.
pub(crate) fn service(index: &Index, s: &Service) -> Value {
    let i = node_index(index, &s.node);
    json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Address": s.address,
        "TaggedAddresses": service_tagged(s),
        "Meta": str_map(&s.meta),
        "Port": s.port,
        "Weights": {"Passing": s.weights.passing, "Warning": s.weights.warning},
        "EnableTagOverride": false,
        "Proxy": {"MeshGateway": {}, "Expose": {}},
        "Connect": {},
        "CreateIndex": i,
        "ModifyIndex": i,
    })
}

/// A check as the health endpoints show it; `tags`: its service's tags.
pub(crate) fn check(index: &Index, c: &Check, tags: &[String]) -> Value {
    let i = node_index(index, &c.node);
    json!({
        "Node": c.node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": tags,
        "Type": c.kind,
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": i,
        "ModifyIndex": i,
    })
}

/// The tags of the service a check belongs to (none for node checks).
pub(crate) fn check_tags(index: &Index, c: &Check) -> Vec<String> {
    if c.service_id.is_empty() {
        return Vec::new();
    }
    index
        .service(&c.node, &c.service_id)
        .map(|s| s.tags.clone())
        .unwrap_or_default()
}

/// One `/v1/health/service/:name` entry.
pub(crate) fn health_entry(index: &Index, inst: &Instance, dc: &str) -> Value {
    let checks: Vec<Value> = inst
        .checks
        .iter()
        .map(|c| {
            let tags = if c.service_id.is_empty() {
                Vec::new()
            } else {
                inst.service.tags.clone()
            };
            check(index, c, &tags)
        })
        .collect();
    json!({
        "Node": node_or_bare(index, inst.node.as_ref(), &inst.service.node, dc),
        "Service": service(index, &inst.service),
        "Checks": checks,
    })
}

fn node_or_bare(index: &Index, n: Option<&Arc<Node>>, name: &str, dc: &str) -> Value {
    match n {
        Some(n) => node(index, n),
        None => bare_node(index, name, dc),
    }
}

/// One `/v1/catalog/service/:name` entry.
pub(crate) fn catalog_entry(index: &Index, inst: &Instance, dc: &str) -> Value {
    let s = &inst.service;
    let i = node_index(index, &s.node);
    let (id, address, datacenter, tagged, meta) = match &inst.node {
        Some(n) => (
            node_id(&n.actor_id),
            n.address.clone(),
            n.datacenter.clone(),
            node_tagged(&n.address),
            str_map(&n.meta),
        ),
        None => (
            String::new(),
            String::new(),
            dc.to_string(),
            json!({}),
            json!({}),
        ),
    };
    json!({
        "ID": id,
        "Node": s.node,
        "Address": address,
        "Datacenter": datacenter,
        "TaggedAddresses": tagged,
        "NodeMeta": meta,
        "ServiceKind": "",
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
        "ServiceTaggedAddresses": service_tagged(s),
        "ServiceWeights": {"Passing": s.weights.passing, "Warning": s.weights.warning},
        "ServiceMeta": str_map(&s.meta),
        "ServicePort": s.port,
        "ServiceEnableTagOverride": false,
        "ServiceProxy": {"MeshGateway": {}, "Expose": {}},
        "ServiceConnect": {},
        "CreateIndex": i,
        "ModifyIndex": i,
    })
}

/// The entry shapes filters run against, for checking a filter's selectors
/// even when there is no entry to run it on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    HealthEntry,
    CatalogEntry,
    Node,
    Service,
    Check,
}

/// A full entry of `shape` (every field present) built from placeholder rows.
pub(crate) fn sample(shape: Shape) -> Value {
    use corro_catalog::{Liveness, Status};
    let index = Index::new("", 1);
    let node = Arc::new(Node {
        node: "n".into(),
        actor_id: String::new(),
        address: "127.0.0.1".into(),
        datacenter: "dc1".into(),
        meta: Default::default(),
        updated_at: 0,
    });
    let svc = Arc::new(Service {
        node: "n".into(),
        id: "s".into(),
        name: "s".into(),
        tags: vec![],
        meta: Default::default(),
        port: 0,
        address: String::new(),
        weights: Default::default(),
        tagged_addresses: Default::default(),
        updated_at: 0,
        source: None,
    });
    let check = Arc::new(Check {
        node: "n".into(),
        id: "c".into(),
        service_id: "s".into(),
        service_name: "s".into(),
        name: "c".into(),
        status: Status::Passing,
        output: String::new(),
        notes: String::new(),
        kind: String::new(),
        updated_at: 0,
        source: None,
    });
    let inst = Instance {
        service: svc.clone(),
        node: Some(node.clone()),
        checks: vec![check.clone()],
        status: Status::Passing,
        liveness: Liveness::Alive,
    };
    match shape {
        Shape::HealthEntry => health_entry(&index, &inst, "dc1"),
        Shape::CatalogEntry => catalog_entry(&index, &inst, "dc1"),
        Shape::Node => self::node(&index, &node),
        Shape::Service => service(&index, &svc),
        Shape::Check => self::check(&index, &check, &[]),
    }
}
