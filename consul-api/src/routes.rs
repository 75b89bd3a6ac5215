//! The handlers of the Consul routes: `/v1/catalog/{services,service/:name,
//! nodes,node/:node,datacenters}`, `/v1/health/{service/:name,checks/:service,
//! node/:node,state/:state}`, `/v1/agent/{self,members}`,
//! `/v1/status/{leader,peers}`. Each parses its parameters, gathers rows
//! from the catalog under its read lock and leaves rendering to
//! [`blocking::respond`].

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use std::sync::Arc;

use corro_catalog::{Entry, Index, Instance, Liveness, Status, Topic};
use serde_json::{Value, json};

use crate::params::Params;
use crate::{ConsulState, blocking, filter, render, text_error};

/// What a handler reads of the agent (the state itself).
type Discovery = ConsulState;

/// The Consul routes, before the token check and the state.
pub(crate) fn routes() -> Router<ConsulState> {
    Router::new()
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/catalog/node/{node}", get(catalog_node))
        .route("/v1/catalog/datacenters", get(catalog_datacenters))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/health/checks/{name}", get(health_checks))
        .route("/v1/health/node/{node}", get(health_node))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/members", get(agent_members))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
}

/// What every handler starts with: the discovery side and parsed params.
#[expect(clippy::result_large_err, reason = "the error is the response to send")]
pub(crate) fn prepare(
    st: &ConsulState,
    query: Option<&str>,
) -> Result<(Discovery, Params), Response> {
    let d = st.clone();
    let p = Params::parse(query).map_err(|e| text_error(StatusCode::BAD_REQUEST, e))?;
    if let Some(dc) = &p.dc
        && *dc != d.node.datacenter
    {
        return Err(text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "No path to datacenter {dc:?} (this agent serves only {:?})",
                d.node.datacenter
            ),
        ));
    }
    Ok((d, p))
}

/// The compiled `?filter=` (400 naming the unsupported part, its selectors
/// checked against the route's entry `shape`), after checking `?near=`
/// where the route sorts by it.
#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn filter_and_near(
    p: &Params,
    d: &Discovery,
    near: bool,
    shape: render::Shape,
) -> Result<Option<filter::Expr>, Response> {
    if near {
        check_near(p, d)?;
    }
    let bad = |e: String| {
        text_error(
            StatusCode::BAD_REQUEST,
            format!("Failed to create boolean expression evaluator: {e}"),
        )
    };
    let Some(text) = p.filter.as_deref() else {
        return Ok(None);
    };
    let compile = || -> Result<filter::Expr, Response> {
        let e = filter::parse(text).map_err(bad)?;
        filter::validate(&e, &render::sample(shape)).map_err(bad)?;
        Ok(e)
    };
    // Compiling regular expressions can take milliseconds: off this
    // worker's other tasks (DNS and the rest keep being served).
    let e = if text.contains("matches") {
        tokio::task::block_in_place(compile)?
    } else {
        compile()?
    };
    Ok(Some(e))
}

/// What a catalog or health handler works with.
struct Ctx {
    d: Discovery,
    p: Params,
    f: Option<filter::Expr>,
}

/// [`prepare`] and [`filter_and_near`] in one step.
#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn context(
    st: &ConsulState,
    query: Option<&str>,
    near: bool,
    shape: render::Shape,
) -> Result<Ctx, Response> {
    let (d, p) = prepare(st, query)?;
    let f = filter_and_near(&p, &d, near, shape)?;
    Ok(Ctx { d, p, f })
}

/// Applies a filter to a JSON list (an evaluation error is the caller's 400).
fn filtered(f: &Option<filter::Expr>, list: Vec<Value>) -> Result<Vec<Value>, String> {
    match f {
        Some(e) => filter::apply(e, list),
        None => Ok(list),
    }
}

fn node_meta_ok(index: &Index, node: &str, want: &[(String, String)]) -> bool {
    want.is_empty()
        || index
            .node(node)
            .is_some_and(|n| want.iter().all(|(k, v)| n.meta.get(k) == Some(v)))
}

/// Sorts by round-trip time from this agent (unknown last) for `?near=`.
fn sort_near<T>(
    index: &Index,
    p: &Params,
    d: &Discovery,
    items: &mut [T],
    node: impl Fn(&T) -> &str,
) {
    if let Some(near) = &p.near
        && (near == "_agent" || corro_catalog::same_name(near, &d.node.name))
    {
        items.sort_by(|a, b| {
            let ra = index.rtt(node(a)).unwrap_or(f64::MAX);
            let rb = index.rtt(node(b)).unwrap_or(f64::MAX);
            ra.total_cmp(&rb)
        });
    }
}

#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn check_near(p: &Params, d: &Discovery) -> Result<(), Response> {
    match &p.near {
        Some(n) if n != "_agent" && !corro_catalog::same_name(n, &d.node.name) => Err(text_error(
            StatusCode::BAD_REQUEST,
            format!(
                "near={n:?}: only _agent (or this agent's node name) is supported; round-trip times are known from this agent only"
            ),
        )),
        _ => Ok(()),
    }
}

/// Instances of `name` passing `?tag=` and `?node-meta=`, near-sorted.
fn instances(index: &Index, d: &Discovery, p: &Params, name: &str) -> Vec<Instance> {
    let mut list: Vec<Instance> = index
        .instances(name)
        .into_iter()
        // Every `?tag=`, compared case-insensitively as Consul does.
        .filter(|i| p.tags.iter().all(|t| i.service.has_tag(t)))
        .filter(|i| node_meta_ok(index, &i.service.node, &p.node_meta))
        .collect();
    sort_near(index, p, d, &mut list, |i| i.service.node.as_str());
    list
}

async fn catalog_services(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let Ctx { d, p, f } = match context(&st, q.as_deref(), false, render::Shape::CatalogEntry) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let dc = d.node.datacenter.clone();
    blocking::respond(
        &st,
        &d,
        &p,
        "catalog/services",
        vec![Topic::Services, Topic::Nodes],
        |index| {
            let rows: Vec<_> = index
                .services()
                .filter(|s| node_meta_ok(index, &s.node, &p.node_meta))
                .map(|s| (s.clone(), index.node(&s.node).cloned()))
                .collect();
            let (f, dc) = (f.clone(), dc.clone());
            move || {
                // Names as registered (two spellings are listed apart, as
                // Consul lists them), each with its instances' tags.
                let mut out: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
                for (s, n) in &rows {
                    if let Some(e) = &f {
                        let entry = render::catalog_entry(s, n.as_deref(), &dc);
                        if !filter::eval(e, &entry)? {
                            continue;
                        }
                    }
                    out.entry(s.name.as_str())
                        .or_default()
                        .extend(s.tags.iter().cloned());
                }
                let map: serde_json::Map<String, Value> = out
                    .into_iter()
                    .map(|(name, mut tags)| {
                        tags.sort();
                        tags.dedup();
                        (name.to_string(), json!(tags))
                    })
                    .collect();
                Ok(Value::Object(map))
            }
        },
    )
    .await
}

async fn catalog_service(
    State(st): State<ConsulState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Ctx { d, p, f } = match context(&st, q.as_deref(), true, render::Shape::CatalogEntry) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let dc = d.node.datacenter.clone();
    blocking::respond(
        &st,
        &d,
        &p,
        "catalog/service",
        vec![Topic::service(&name)],
        |index| {
            let list = instances(index, &d, &p, &name);
            let (f, dc) = (f.clone(), dc.clone());
            move || {
                let list = list
                    .iter()
                    .map(|i| render::catalog_entry(&i.service, i.node.as_deref(), &dc))
                    .collect();
                Ok(Value::Array(filtered(&f, list)?))
            }
        },
    )
    .await
}

async fn catalog_nodes(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let Ctx { d, p, f } = match context(&st, q.as_deref(), true, render::Shape::Node) {
        Ok(c) => c,
        Err(r) => return r,
    };
    blocking::respond(&st, &d, &p, "catalog/nodes", vec![Topic::Nodes], |index| {
        let mut nodes: Vec<_> = index
            .nodes()
            .filter(|n| node_meta_ok(index, &n.node, &p.node_meta))
            .cloned()
            .collect();
        sort_near(index, &p, &d, &mut nodes, |n| n.node.as_str());
        let f = f.clone();
        move || {
            let list = nodes.iter().map(|n| render::node(n)).collect();
            Ok(Value::Array(filtered(&f, list)?))
        }
    })
    .await
}

async fn catalog_node(
    State(st): State<ConsulState>,
    Path(node): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Ctx { d, p, f } = match context(&st, q.as_deref(), false, render::Shape::Service) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let dc = d.node.datacenter.clone();
    blocking::respond(
        &st,
        &d,
        &p,
        // The spelling asked for is part of the key: when two spellings of a
        // node both have rows, each is answered with its own.
        &format!("catalog/node/{node}"),
        vec![Topic::node(&node)],
        |index| {
            let services: Vec<_> = index
                .node_instances(&node)
                .into_iter()
                .map(|i| i.service)
                .collect();
            let row = index.node(&node).cloned();
            let (f, dc) = (f.clone(), dc.clone());
            move || {
                let n = match (&row, services.first()) {
                    (Some(n), _) => render::node(n),
                    (None, Some(first)) => render::bare_node(
                        &first.node,
                        &dc,
                        services.iter().map(|s| s.create_index).min().unwrap_or(0),
                        services.iter().map(|s| s.modify_index).max().unwrap_or(0),
                    ),
                    // Consul answers `null` for a node it does not know.
                    (None, None) => return Ok(Value::Null),
                };
                let list: Vec<Value> = services.iter().map(|s| render::service(s)).collect();
                let list = filtered(&f, list)?;
                let map: serde_json::Map<String, Value> = list
                    .into_iter()
                    .map(|s| (s["ID"].as_str().unwrap_or_default().to_string(), s))
                    .collect();
                Ok(json!({"Node": n, "Services": map}))
            }
        },
    )
    .await
}

async fn catalog_datacenters(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let (d, p) = match prepare(&st, q.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let dc = d.node.datacenter.clone();
    blocking::respond(
        &st,
        &d,
        &p,
        "catalog/datacenters",
        vec![Topic::Nodes],
        |index| {
            let mut dcs: Vec<String> = index.nodes().map(|n| n.datacenter.clone()).collect();
            dcs.push(dc.clone());
            move || {
                dcs.sort();
                dcs.dedup();
                Ok(json!(dcs))
            }
        },
    )
    .await
}

async fn health_service(
    State(st): State<ConsulState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Ctx { d, p, f } = match context(&st, q.as_deref(), true, render::Shape::HealthEntry) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let dc = d.node.datacenter.clone();
    blocking::respond(
        &st,
        &d,
        &p,
        "health/service",
        vec![Topic::service(&name)],
        |index| {
            let list: Vec<Instance> = instances(index, &d, &p, &name)
                .into_iter()
                // `passing`: every check passing (a warning excludes, as Consul).
                .filter(|i| !p.passing || i.status == Status::Passing)
                .collect();
            let (f, dc) = (f.clone(), dc.clone());
            move || {
                let list = list.iter().map(|i| render::health_entry(i, &dc)).collect();
                Ok(Value::Array(filtered(&f, list)?))
            }
        },
    )
    .await
}

async fn health_checks(
    State(st): State<ConsulState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Ctx { d, p, f } = match context(&st, q.as_deref(), true, render::Shape::Check) {
        Ok(c) => c,
        Err(r) => return r,
    };
    blocking::respond(
        &st,
        &d,
        &p,
        "health/checks",
        vec![Topic::service(&name)],
        |index| check_list(index, &d, &p, &f, index.service_checks(&name)),
    )
    .await
}

async fn health_node(
    State(st): State<ConsulState>,
    Path(node): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Ctx { d, p, f } = match context(&st, q.as_deref(), false, render::Shape::Check) {
        Ok(c) => c,
        Err(r) => return r,
    };
    blocking::respond(
        &st,
        &d,
        &p,
        &format!("health/node/{node}"),
        vec![Topic::node(&node)],
        |index| {
            let checks = with_tags(index, index.node_checks(&node));
            let f = f.clone();
            move || render_checks(&f, &checks)
        },
    )
    .await
}

async fn health_state(
    State(st): State<ConsulState>,
    Path(state): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let want = match state.as_str() {
        "any" => None,
        "passing" => Some(Status::Passing),
        "warning" => Some(Status::Warning),
        "critical" => Some(Status::Critical),
        _ => {
            return text_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "Invalid check state {state:?}: expected any, passing, warning or critical"
                ),
            );
        }
    };
    let Ctx { d, p, f } = match context(&st, q.as_deref(), true, render::Shape::Check) {
        Ok(c) => c,
        Err(r) => return r,
    };
    blocking::respond(
        &st,
        &d,
        &p,
        &format!("health/state/{state}"),
        vec![Topic::Checks],
        |index| {
            let checks = index
                .all_checks()
                .into_iter()
                .filter(|c| want.is_none_or(|w| c.status == w))
                .collect();
            check_list(index, &d, &p, &f, checks)
        },
    )
    .await
}

type CheckRows = Vec<(Arc<Entry<corro_catalog::Check>>, Vec<String>)>;

/// Checks as the health routes answer them, gathered under the lock:
/// `?node-meta` applied, `?near` order, each with its service's tags; the
/// returned step renders them and applies `?filter`.
fn check_list(
    index: &Index,
    d: &Discovery,
    p: &Params,
    f: &Option<filter::Expr>,
    checks: Vec<Arc<Entry<corro_catalog::Check>>>,
) -> impl FnOnce() -> Result<Value, String> + Send + use<> {
    let mut checks: Vec<_> = checks
        .into_iter()
        .filter(|c| node_meta_ok(index, &c.node, &p.node_meta))
        .collect();
    sort_near(index, p, d, &mut checks, |c| c.node.as_str());
    let checks = with_tags(index, checks);
    let f = f.clone();
    move || render_checks(&f, &checks)
}

/// Each check with its service's tags (what rendering needs from the lock).
fn with_tags(index: &Index, checks: Vec<Arc<Entry<corro_catalog::Check>>>) -> CheckRows {
    checks
        .into_iter()
        .map(|c| {
            let tags = render::check_tags(index, &c);
            (c, tags)
        })
        .collect()
}

fn render_checks(f: &Option<filter::Expr>, checks: &CheckRows) -> Result<Value, String> {
    let list = checks
        .iter()
        .map(|(c, tags)| render::check(c, tags))
        .collect();
    Ok(Value::Array(filtered(f, list)?))
}

/// A Consul (Serf) member entry.
fn member_json(name: &str, addr: std::net::SocketAddr, status: u8, dc: &str, actor: &str) -> Value {
    json!({
        "Name": name,
        "Addr": addr.ip().to_string(),
        "Port": addr.port(),
        "Tags": {
            "dc": dc,
            "id": render::node_id(actor),
            "role": "node",
            "segment": "",
            "build": env!("CARGO_PKG_VERSION"),
            "vsn": "2", "vsn_min": "2", "vsn_max": "3",
        },
        "Status": status,
        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

/// This agent and every SWIM member as Consul lists LAN members (Serf
/// status 1 alive, 4 failed; a suspect member is still alive, as in Serf).
fn members(st: &ConsulState, d: &Discovery) -> Vec<Value> {
    // Node names by actor, looked up once (not once per member).
    let (names, me) = {
        let index = d.catalog.read();
        let names: std::collections::HashMap<String, (String, String)> = index
            .nodes()
            .map(|n| (n.actor_id.clone(), (n.node.clone(), n.datacenter.clone())))
            .collect();
        (names, index.local_actor().to_string())
    };
    let name_of = |actor: &str| -> (String, String) {
        names
            .get(actor)
            .cloned()
            .unwrap_or_else(|| (actor.to_string(), d.node.datacenter.clone()))
    };
    let own_addr = st
        .membership
        .as_ref()
        .map(|c| c.advertised())
        .unwrap_or_else(|| std::net::SocketAddr::new(d.node.address, 0));
    let mut out = vec![member_json(
        &d.node.name,
        std::net::SocketAddr::new(d.node.address, own_addr.port()),
        1,
        &d.node.datacenter,
        &me,
    )];
    if let Some(c) = &st.membership {
        for m in c.members() {
            let (name, dc) = name_of(&m.actor_id);
            let status = if m.down { 4 } else { 1 };
            out.push(member_json(&name, m.addr, status, &dc, &m.actor_id));
        }
    }
    out
}

async fn agent_self(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let (d, p) = match prepare(&st, q.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let me = d.catalog.read().local_actor().to_string();
    let member = members(&st, &d).into_iter().next().unwrap_or(Value::Null);
    let body = json!({
        "Config": {
            "Datacenter": d.node.datacenter,
            "PrimaryDatacenter": d.node.datacenter,
            "NodeName": d.node.name,
            "NodeID": render::node_id(&me),
            "Server": false,
            "Revision": "corrosion",
            "Version": format!("1.21.0+corrosion.{}", env!("CARGO_PKG_VERSION")),
        },
        "Member": member,
        "Meta": d.node.meta,
        "Stats": {},
        "DebugConfig": {},
        "Coord": null,
    });
    blocking::plain(&p, body)
}

async fn agent_members(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let (d, p) = match prepare(&st, q.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    blocking::plain(&p, Value::Array(members(&st, &d)))
}

async fn status_leader(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let (d, p) = match prepare(&st, q.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // No leader: every agent answers for itself.
    let port = st.membership.as_ref().map_or(0, |c| c.advertised().port());
    blocking::plain(
        &p,
        json!(std::net::SocketAddr::new(d.node.address, port).to_string()),
    )
}

async fn status_peers(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let (d, p) = match prepare(&st, q.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(c) = st.membership.as_ref() else {
        return blocking::plain(&p, json!([]));
    };
    // Member addresses by actor, looked up once (not once per node).
    let addrs: std::collections::HashMap<String, String> = c
        .members()
        .into_iter()
        .map(|m| (m.actor_id, m.addr.to_string()))
        .collect();
    let own = std::net::SocketAddr::new(d.node.address, c.advertised().port()).to_string();
    let index = d.catalog.read();
    let mut peers: Vec<String> = index
        .nodes()
        .filter(|n| index.liveness(&n.node) == Liveness::Alive)
        .filter_map(|n| {
            if n.actor_id == index.local_actor() {
                Some(own.clone())
            } else {
                addrs.get(&n.actor_id).cloned()
            }
        })
        .collect();
    drop(index);
    peers.sort();
    peers.dedup();
    blocking::plain(&p, json!(peers))
}
