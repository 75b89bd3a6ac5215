//! Nodes: the list (name, address, SWIM state, RTT from this agent,
//! service and check counts; search, filter by state, paginated) and one
//! node's page (its instances and checks, meta).

use std::collections::HashMap;

use corro_catalog::{Index, Liveness, MemberState, Status};
use maud::{Markup, html};

use super::Query;
use super::services::{checks_table, instance};
use crate::UiState;
use crate::html::{Swim, badge, enc_name, num, page_range, pager, swim_badge};

/// Nodes per page of the list.
const PER_PAGE: usize = 100;
/// Instances per page of a node.
const INSTANCES_PER_PAGE: usize = 50;

/// The SWIM state of the agent owning a node row.
fn swim_state(
    index: &Index,
    members: &HashMap<String, MemberState>,
    actor: &str,
    node: &str,
) -> Swim {
    if actor == index.local_actor() {
        return Swim::Alive;
    }
    match members.get(actor) {
        Some(s) => Swim::from_member(Some(*s)),
        None if index.liveness(node) == Liveness::Down => Swim::Down,
        None => Swim::Unknown,
    }
}

fn members(index: &Index) -> HashMap<String, MemberState> {
    index
        .members()
        .into_iter()
        .map(|(a, s, _)| (a, s))
        .collect()
}

fn rtt(ms: Option<f64>) -> String {
    match ms {
        Some(0.0) => "this agent".into(),
        Some(v) => format!("{v:.1} ms"),
        None => "—".into(),
    }
}

struct NodeRow {
    name: String,
    address: String,
    swim: Swim,
    rtt: Option<f64>,
    services: usize,
    checks: usize,
    critical: usize,
}

/// The nodes list.
pub(crate) fn list(st: &UiState, q: &Query) -> Markup {
    let needle = q.q.to_lowercase();
    let want = Swim::parse(&q.status);
    let (rows, total, counts) = {
        let index = st.0.catalog.read();
        let members = members(&index);
        let mut counts = [0usize; 4];
        let mut rows = Vec::new();
        for n in index.nodes() {
            let swim = swim_state(&index, &members, &n.actor_id, &n.node);
            counts[swim as usize] += 1;
            if want.is_some_and(|w| w != swim) {
                continue;
            }
            if !needle.is_empty()
                && !n.node.to_lowercase().contains(&needle)
                && !n.address.to_lowercase().contains(&needle)
            {
                continue;
            }
            rows.push(n.clone());
        }
        // Only the shown page is joined with its services and checks.
        let (start, end, _) = page_range(rows.len(), PER_PAGE, q.page);
        let shown: Vec<NodeRow> = rows[start..end]
            .iter()
            .map(|n| {
                // With the synthetic serfHealth check: a down node shows
                // a critical check.
                let checks = index.node_checks(&n.node);
                NodeRow {
                    name: n.node.clone(),
                    address: n.address.clone(),
                    swim: swim_state(&index, &members, &n.actor_id, &n.node),
                    rtt: index.rtt(&n.node),
                    services: index.exact_node_services(&n.node).count(),
                    checks: checks.len(),
                    critical: checks
                        .iter()
                        .filter(|c| c.status == Status::Critical)
                        .count(),
                }
            })
            .collect();
        (shown, rows.len(), counts)
    };
    let href = |p: usize| format!("/ui/nodes?{}", q.with_page(p));
    html! {
        h1 { "Nodes" }
        p class="summary" {
            (num(counts.iter().sum())) " nodes: "
            span class="counts" {
                span class="count st-passing" { span aria-hidden="true" { "● " } (num(counts[Swim::Alive as usize])) " alive" }
                span class="count st-warning" { span aria-hidden="true" { "◐ " } (num(counts[Swim::Suspect as usize])) " suspect" }
                span class="count st-critical" { span aria-hidden="true" { "✖ " } (num(counts[Swim::Down as usize])) " down" }
                @if counts[Swim::Unknown as usize] > 0 {
                    span class="count st-unknown" { span aria-hidden="true" { "? " } (num(counts[Swim::Unknown as usize])) " unknown" }
                }
            }
        }
        (pager(total, PER_PAGE, q.page, "nodes", href))
        div class="table-wrap" {
            table {
                thead { tr {
                    th scope="col" { "Node" }
                    th scope="col" { "Address" }
                    th scope="col" { "SWIM state" }
                    th scope="col" { "RTT" }
                    th scope="col" { "Services" }
                    th scope="col" { "Checks" }
                } }
                tbody {
                    @for r in &rows {
                        tr data-node=(r.name) data-state=(r.swim.as_str()) {
                            td { a href={"/ui/nodes/" (enc_name(&r.name))} { (r.name) } }
                            td { (r.address) }
                            td { (swim_badge(r.swim)) }
                            td { (rtt(r.rtt)) }
                            td { (num(r.services)) }
                            td {
                                (num(r.checks))
                                @if r.critical > 0 { " " span class="count st-critical" { span aria-hidden="true" { "✖ " } (num(r.critical)) " critical" } }
                            }
                        }
                    }
                }
            }
        }
        @if total > PER_PAGE { (pager(total, PER_PAGE, q.page, "nodes", href)) }
    }
}

/// One node's page.
pub(crate) fn detail(st: &UiState, name: &str, q: &Query) -> Markup {
    let index = st.0.catalog.read();
    let node = index.node(name).cloned();
    let members = members(&index);
    let instances = index.node_instances(name);
    let node_checks: Vec<_> = index
        .node_checks(name)
        .into_iter()
        .filter(|c| c.service_id.is_empty())
        .collect();
    let swim = node
        .as_ref()
        .map(|n| swim_state(&index, &members, &n.actor_id, &n.node))
        .unwrap_or(Swim::Unknown);
    let rtt_ms = index.rtt(name);
    drop(index);
    let local = &st.0.cfg.node_name;
    let (start, end, _) = page_range(instances.len(), INSTANCES_PER_PAGE, q.page);
    let href = |p: usize| format!("/ui/nodes/{}?{}", enc_name(name), q.with_page(p));
    html! {
        nav class="crumbs" aria-label="Breadcrumb" { a href="/ui/nodes" { "Nodes" } " / " }
        h1 { (name) " " (swim_badge(swim)) }
        @match &node {
            None => p { "No node of this name is in the catalog." },
            Some(n) => dl class="facts" {
                dt { "Address" } dd { (n.address) }
                dt { "Datacenter" } dd { (n.datacenter) }
                dt { "Agent (actor id)" } dd { code { (n.actor_id) } }
                dt { "RTT from this agent" } dd { (rtt(rtt_ms)) }
                @if !n.meta.is_empty() {
                    dt { "Meta" }
                    dd { dl class="meta" { @for (k, v) in &n.meta { dt { (k) } dd { (v) } } } }
                }
            },
        }
        h2 { "Node checks" }
        (checks_table(&node_checks))
        h2 { "Service instances (" (num(instances.len())) ")" }
        @if instances.is_empty() { p class="muted" { "None." } }
        @else {
            (pager(instances.len(), INSTANCES_PER_PAGE, q.page, "instances", href))
            @for i in &instances[start..end] { (instance(i, local, true)) }
        }
        @if instances.iter().any(|i| i.status != Status::Passing) {
            p class="muted" { "Worst instance: " (badge(instances.iter().map(|i| i.status).max_by_key(|s| super::services::severity(*s)).unwrap_or(Status::Passing))) }
        }
    }
}
