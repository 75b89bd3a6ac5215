//! Consul's JSON shapes, built from the catalog.
//!
//! Field names, types and empty values as Consul answers: lists are `[]`
//! and maps `{}` when empty (never `null`), ports are numbers, node IDs are
//! UUIDs (the agent's actor id), `CreateIndex`/`ModifyIndex` are the
//! catalog index values at which that row was created and last changed.
//! Nothing here reads the catalog: rendering runs after the catalog lock
//! is released, from rows gathered under it.

use std::sync::Arc;

use corro_catalog::{Check, Entry, Index, Instance, Node, Service};
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

/// A node as `/v1/catalog/nodes` and `Node` in health entries show it.
pub(crate) fn node(n: &Entry<Node>) -> Value {
    json!({
        "ID": node_id(&n.actor_id),
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": node_tagged(&n.address),
        "Meta": str_map(&n.meta),
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    })
}

/// A node known only from its services or checks (no `consul_nodes` row
/// yet); its indexes are those of the rows that name it.
pub(crate) fn bare_node(name: &str, dc: &str, create: u64, modify: u64) -> Value {
    json!({
        "ID": "",
        "Node": name,
        "Address": "",
        "Datacenter": dc,
        "TaggedAddresses": {},
        "Meta": {},
        "CreateIndex": create,
        "ModifyIndex": modify,
    })
}

/// A service as `Service` in health entries and `/v1/catalog/node/:node`.
pub(crate) fn service(s: &Entry<Service>) -> Value {
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
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// A check as the health endpoints show it; `tags`: its service's tags.
pub(crate) fn check(c: &Entry<Check>, tags: &[String]) -> Value {
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
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
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
pub(crate) fn health_entry(inst: &Instance, dc: &str) -> Value {
    let checks: Vec<Value> = inst
        .checks
        .iter()
        .map(|c| {
            let tags = if c.service_id.is_empty() {
                Vec::new()
            } else {
                inst.service.tags.clone()
            };
            check(c, &tags)
        })
        .collect();
    let node = match &inst.node {
        Some(n) => node(n),
        None => bare_node(
            &inst.service.node,
            dc,
            inst.service.create_index,
            inst.service.modify_index,
        ),
    };
    json!({
        "Node": node,
        "Service": service(&inst.service),
        "Checks": checks,
    })
}

/// One `/v1/catalog/service/:name` entry: service `s` on node row `node`
/// (`None`: the node has no row yet).
pub(crate) fn catalog_entry(s: &Entry<Service>, node: Option<&Entry<Node>>, dc: &str) -> Value {
    let (id, address, datacenter, tagged, meta) = match node {
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
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
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
    let node = Arc::new(Entry::detached(Node {
        node: "n".into(),
        actor_id: String::new(),
        address: "127.0.0.1".into(),
        datacenter: "dc1".into(),
        meta: Default::default(),
        updated_at: 0,
    }));
    let svc = Arc::new(Entry::detached(Service {
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
    }));
    let check = Arc::new(Entry::detached(Check {
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
    }));
    let inst = Instance {
        service: svc.clone(),
        node: Some(node.clone()),
        checks: vec![check.clone()],
        status: Status::Passing,
        liveness: Liveness::Alive,
    };
    match shape {
        Shape::HealthEntry => health_entry(&inst, "dc1"),
        Shape::CatalogEntry => catalog_entry(&svc, Some(&node), "dc1"),
        Shape::Node => self::node(&node),
        Shape::Service => service(&svc),
        Shape::Check => self::check(&check, &[]),
    }
}
