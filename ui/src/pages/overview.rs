//! Overview: members by SWIM state, this agent's replication health (lag,
//! missing versions, last sync), services and instances by status, KV
//! size.

use corro_catalog::MemberState;
use maud::{Markup, html};

use super::services::{counts, summary};
use crate::UiState;
use crate::html::{ago, coarse_ms, num};

pub(crate) fn render(st: &UiState) -> Markup {
    let h = st.0.view.health();
    let sum = summary(st);
    let (members, nodes, kv) = {
        let index = st.0.catalog.read();
        let mut m = [1usize, 0, 0]; // this agent is alive to itself
        let me = index.local_actor().to_string();
        for (_, s, _) in index.members().into_iter().filter(|(a, _, _)| *a != me) {
            m[match s {
                MemberState::Alive => 0,
                MemberState::Suspect => 1,
                MemberState::Down => 2,
            }] += 1;
        }
        (m, index.nodes().count(), index.kv_size())
    };
    let (class, icon) = match h.status.as_str() {
        "ok" => ("st-passing", "✔"),
        "behind" => ("st-warning", "▲"),
        _ => ("st-critical", "✖"),
    };
    html! {
        h1 { "Overview" }
        p class="muted" { "Datacenter " (st.0.cfg.datacenter) " · served by node " strong { (st.0.cfg.node_name) } " · Corrosion " (st.0.cfg.version) }
        div class="cards" {
            section class="card" aria-labelledby="ov-agent" {
                h2 id="ov-agent" { "This agent" }
                p { span class={"badge " (class)} { span aria-hidden="true" { (icon) } " " (h.status) } }
                @if !h.reasons.is_empty() {
                    ul class="reasons" { @for r in &h.reasons { li { (r) } } }
                }
                dl class="facts" {
                    dt { "Replication lag" }
                    dd { @match h.replication_lag_secs { Some(l) => { (coarse_ms(l)) }, None => span class="muted" { "no remote change yet" } } }
                    dt { "Missing versions" } dd { (num(h.missing_versions as usize)) }
                    dt { "Behind peers by" } dd { (num(h.behind as usize)) " versions" }
                    dt { "Last sync" }
                    dd { @match h.last_sync_secs { Some(s) => { (ago(s)) }, None => span class="muted" { "none yet" } } }
                    dt { "Broadcast queue" } dd { (num(h.broadcast_queue as usize)) }
                    dt { "Head version" } dd { (num(h.head as usize)) }
                    dt { "Actor id" } dd { code { (h.actor_id) } }
                }
            }
            section class="card" aria-labelledby="ov-members" {
                h2 id="ov-members" { a href="/ui/nodes" { "Members" } }
                ul class="tally" {
                    li class="st-passing" { span aria-hidden="true" { "● " } strong { (num(members[0])) } " alive" }
                    li class="st-warning" { span aria-hidden="true" { "◐ " } strong { (num(members[1])) } " suspect" }
                    li class="st-critical" { span aria-hidden="true" { "✖ " } strong { (num(members[2])) } " down" }
                }
                p class="muted" { (num(nodes)) " nodes in the catalog" }
            }
            section class="card" aria-labelledby="ov-services" {
                h2 id="ov-services" { a href="/ui/services" { "Services" } }
                ul class="tally" {
                    li class="st-passing" { span aria-hidden="true" { "✔ " } a href="/ui/services?status=passing" { strong { (num(sum.services[0])) } " passing" } }
                    li class="st-warning" { span aria-hidden="true" { "▲ " } a href="/ui/services?status=warning" { strong { (num(sum.services[1])) } " warning" } }
                    li class="st-critical" { span aria-hidden="true" { "✖ " } a href="/ui/services?status=critical" { strong { (num(sum.services[2])) } " critical" } }
                    @if sum.services[3] > 0 {
                        li class="st-maintenance" { span aria-hidden="true" { "⏸ " } a href="/ui/services?status=maintenance" { strong { (num(sum.services[3])) } " in maintenance" } }
                    }
                }
                p class="muted" { "Each service counted once, by its worst instance." }
                p { (num(sum.instances.iter().sum())) " instances: " (counts(sum.instances)) }
            }
            section class="card" aria-labelledby="ov-kv" {
                h2 id="ov-kv" { a href="/ui/kv/" { "Key/Value" } }
                p { strong { (num(kv.0)) } " keys, " (num(kv.1)) " bytes of values" }
            }
        }
    }
}
