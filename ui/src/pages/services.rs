//! Services: the list (name, tags, instances by status; search by name or
//! tag, filter by status, paginated) and one service's instances with
//! their checks.

use std::sync::Arc;

use corro_catalog::{Instance, Status};
use maud::{Markup, html};

use super::Query;
use crate::UiState;
use crate::html::{badge, enc_name, num, page_range, pager};

/// Services per page of the list.
const PER_PAGE: usize = 50;
/// Instances per page of a service.
const INSTANCES_PER_PAGE: usize = 50;
/// Tags shown per service in the list.
const TAGS_SHOWN: usize = 8;

/// One service name's counts.
#[derive(Debug, Clone)]
pub(crate) struct ServiceRow {
    pub name: String,
    pub tags: Vec<String>,
    pub passing: usize,
    pub warning: usize,
    pub critical: usize,
    /// Instances in maintenance (Consul's maintenance checks are critical
    /// ones; shown apart so planned work does not look like an outage).
    pub maintenance: usize,
}

impl ServiceRow {
    /// The worst instance: critical, then maintenance, warning, passing.
    pub(crate) fn worst(&self) -> Status {
        if self.critical > 0 {
            Status::Critical
        } else if self.maintenance > 0 {
            Status::Maintenance
        } else if self.warning > 0 {
            Status::Warning
        } else {
            Status::Passing
        }
    }

    fn instances(&self) -> usize {
        self.passing + self.warning + self.critical + self.maintenance
    }

    fn counts(&self) -> [usize; 4] {
        [self.passing, self.warning, self.critical, self.maintenance]
    }
}

/// Every service's counts, and the totals.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub rows: Vec<ServiceRow>,
    /// Instances: passing, warning, critical, maintenance.
    pub instances: [usize; 4],
    /// Services by their worst instance, same order.
    pub services: [usize; 4],
}

/// How bad a status is for an operator: critical (an outage) above
/// maintenance (planned), then warning, passing.
pub(crate) fn severity(s: Status) -> u8 {
    match s {
        Status::Passing => 0,
        Status::Warning => 1,
        Status::Maintenance => 2,
        Status::Critical => 3,
    }
}

pub(crate) fn slot(s: Status) -> usize {
    match s {
        Status::Passing => 0,
        Status::Warning => 1,
        Status::Critical => 2,
        Status::Maintenance => 3,
    }
}

/// The summary as of the latest catalog change (computed once per change,
/// by one caller at a time: concurrent callers wait for it and share it).
pub(crate) fn summary(st: &UiState) -> Arc<Summary> {
    // What this caller needs at least; a summary computed by another caller
    // while this one waited for the lock serves it too.
    let wanted = st.0.catalog.last_catalog_change();
    let mut cached = st.0.summary.lock();
    if let Some((i, s)) = &*cached
        && *i >= wanted
    {
        return s.clone();
    }
    let at = st.0.catalog.last_catalog_change();
    let index = st.0.catalog.read();
    let mut sum = Summary::default();
    for (name, tags) in index.service_names() {
        let mut row = ServiceRow {
            name: name.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            passing: 0,
            warning: 0,
            critical: 0,
            maintenance: 0,
        };
        for i in index.instances(name) {
            match slot(i.status) {
                0 => row.passing += 1,
                1 => row.warning += 1,
                2 => row.critical += 1,
                _ => row.maintenance += 1,
            }
            sum.instances[slot(i.status)] += 1;
        }
        sum.services[slot(row.worst())] += 1;
        sum.rows.push(row);
    }
    drop(index);
    let sum = Arc::new(sum);
    *cached = Some((at, sum.clone()));
    sum
}

fn matches(row: &ServiceRow, q: &Query) -> bool {
    // By worst status, as the overview counts them.
    let status_ok = match q.status.as_str() {
        "" => true,
        s => row.worst().as_str() == s,
    };
    if !status_ok {
        return false;
    }
    if q.q.is_empty() {
        return true;
    }
    let needle = q.q.to_lowercase();
    row.name.to_lowercase().contains(&needle)
        || row.tags.iter().any(|t| t.to_lowercase().contains(&needle))
}

/// Counts by status as icons with numbers (maintenance only when some).
pub(crate) fn counts(c: [usize; 4]) -> Markup {
    html! {
        span class="counts" {
            span class="count st-passing" title="passing" { span aria-hidden="true" { "✔ " } (num(c[0])) span class="sr" { " passing" } }
            span class="count st-warning" title="warning" { span aria-hidden="true" { "▲ " } (num(c[1])) span class="sr" { " warning" } }
            span class="count st-critical" title="critical" { span aria-hidden="true" { "✖ " } (num(c[2])) span class="sr" { " critical" } }
            @if c[3] > 0 {
                span class="count st-maintenance" title="maintenance" { span aria-hidden="true" { "⏸ " } (num(c[3])) span class="sr" { " in maintenance" } }
            }
        }
    }
}

/// The services list.
pub(crate) fn list(st: &UiState, q: &Query) -> Markup {
    let sum = summary(st);
    let rows: Vec<&ServiceRow> = sum.rows.iter().filter(|r| matches(r, q)).collect();
    let (start, end, _) = page_range(rows.len(), PER_PAGE, q.page);
    let href = |p: usize| format!("/ui/services?{}", q.with_page(p));
    html! {
        h1 { "Services" }
        p class="summary" {
            (num(sum.rows.len())) " services, "
            (num(sum.instances.iter().sum())) " instances: " (counts(sum.instances))
        }
        (pager(rows.len(), PER_PAGE, q.page, "services", href))
        div class="table-wrap" {
            table {
                thead { tr {
                    th scope="col" { "Service" }
                    th scope="col" { "Health" }
                    th scope="col" { "Instances" }
                    th scope="col" { "Tags" }
                } }
                tbody {
                    @for r in &rows[start..end] {
                        tr {
                            td { a href={"/ui/services/" (enc_name(&r.name))} { (r.name) } }
                            td { (badge(r.worst())) }
                            td { (num(r.instances())) " " (counts(r.counts())) }
                            td class="tags" {
                                @for t in r.tags.iter().take(TAGS_SHOWN) { span class="tag" { (t) } " " }
                                @if r.tags.len() > TAGS_SHOWN { span class="more" { "+" (r.tags.len() - TAGS_SHOWN) " more" } }
                            }
                        }
                    }
                }
            }
        }
        @if rows.len() > PER_PAGE { (pager(rows.len(), PER_PAGE, q.page, "services", href)) }
    }
}

/// One instance: where it runs, what it carries, its checks.
pub(crate) fn instance(i: &Instance, local_node: &str, show_service: bool) -> Markup {
    let s = &i.service;
    let local = s.node == local_node;
    let address = if s.address.is_empty() {
        i.node
            .as_ref()
            .map(|n| n.address.clone())
            .unwrap_or_default()
    } else {
        s.address.clone()
    };
    html! {
        article class="instance" id={"instance-" (enc_name(&s.node)) "-" (enc_name(&s.id))} {
            header {
                h3 {
                    @if show_service { a href={"/ui/services/" (enc_name(&s.name))} { (s.name) } " on " }
                    a href={"/ui/nodes/" (enc_name(&s.node))} { (s.node) }
                    " " (badge(i.status))
                }
                p class="muted" { "ID " code { (s.id) } " · " (address) ":" (s.port) }
            }
            dl class="facts" {
                dt { "Tags" }
                dd { @if s.tags.is_empty() { span class="muted" { "none" } } @for t in &s.tags { span class="tag" { (t) } " " } }
                dt { "Weights" }
                dd { "passing " (s.weights.passing) ", warning " (s.weights.warning) }
                @if !s.meta.is_empty() {
                    dt { "Meta" }
                    dd { dl class="meta" { @for (k, v) in &s.meta { dt { (k) } dd { (v) } } } }
                }
                @if !s.tagged_addresses.is_empty() {
                    dt { "Tagged addresses" }
                    dd { @for (k, a) in &s.tagged_addresses { span class="tag" { (k) ": " (a.address) ":" (a.port) } " " } }
                }
            }
            (checks_table(&i.checks))
            @if local {
                div class="actions" {
                    button type="button" data-action="maintenance" data-service-id=(s.id) data-enable="true" { "Enable maintenance…" }
                    " "
                    button type="button" data-action="maintenance" data-service-id=(s.id) data-enable="false" { "Disable maintenance" }
                    " "
                    button type="button" class="danger" data-action="deregister" data-service-id=(s.id) { "Deregister…" }
                }
            }
        }
    }
}

/// Checks with status and output.
pub(crate) fn checks_table(checks: &[Arc<corro_catalog::Entry<corro_catalog::Check>>]) -> Markup {
    html! {
        @if checks.is_empty() {
            p class="muted" { "No checks." }
        } @else {
            div class="table-wrap" {
                table class="checks" {
                    thead { tr {
                        th scope="col" { "Check" }
                        th scope="col" { "Status" }
                        th scope="col" { "Output" }
                    } }
                    tbody {
                        @for c in checks {
                            tr {
                                td { (c.name) br; span class="muted" { code { (c.id) } } }
                                td { (badge(c.status)) }
                                td { @if c.output.is_empty() { span class="muted" { "—" } } @else { pre { (c.output) } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One service's page.
pub(crate) fn detail(st: &UiState, name: &str, q: &Query) -> Markup {
    let instances = st.0.catalog.read().instances(name);
    let mut c = [0; 4];
    for i in &instances {
        c[slot(i.status)] += 1;
    }
    let (start, end, _) = page_range(instances.len(), INSTANCES_PER_PAGE, q.page);
    let href = |p: usize| format!("/ui/services/{}?{}", enc_name(name), q.with_page(p));
    html! {
        nav class="crumbs" aria-label="Breadcrumb" { a href="/ui/services" { "Services" } " / " }
        h1 { (name) }
        @if instances.is_empty() {
            p { "No instance of this service is registered anywhere in the cluster." }
        } @else {
            p class="summary" { (num(instances.len())) " instances: " (counts(c)) }
            (pager(instances.len(), INSTANCES_PER_PAGE, q.page, "instances", href))
            @for i in &instances[start..end] { (instance(i, &st.0.cfg.node_name, false)) }
        }
    }
}
