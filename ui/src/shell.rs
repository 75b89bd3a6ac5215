//! Page shells: the layout, navigation and forms of a page, with no data
//! (the script fills `<main>` from the page's fragment, see [`crate::live`]),
//! and the security headers every UI answer carries.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::UiState;
use crate::html::enc_key;
use crate::pages::{Page, Query};

/// No inline script or style, nothing from elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Adds the UI's security headers to an answer.
pub fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

const NAV: [(&str, &str, &str); 6] = [
    ("overview", "/ui/", "Overview"),
    ("services", "/ui/services", "Services"),
    ("nodes", "/ui/nodes", "Nodes"),
    ("kv", "/ui/kv/", "Key/Value"),
    ("sql", "/ui/sql", "SQL"),
    ("templates", "/ui/templates", "Templates"),
];

/// `GET /ui/...`: the shell of the page the path names (404 otherwise).
pub(crate) async fn page(State(st): State<UiState>, uri: Uri, RawQuery(raw): RawQuery) -> Response {
    let rest = uri.path().strip_prefix("/ui/").unwrap_or("");
    let Some(page) = Page::parse(rest) else {
        return secure(
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                layout(&st, None, "Not found", html! {
                    main id="main" { h1 { "Not found" } p { "No page at this address. " a href="/ui/" { "Go to the overview." } } }
                })
                .into_string(),
            )
                .into_response(),
        );
    };
    let q = Query::parse(raw.as_deref());
    let fragment = {
        let qs = q.with_page(q.page);
        let mut f = format!("/ui/f/{rest}");
        if !qs.is_empty() {
            f.push('?');
            f.push_str(&qs);
        }
        f
    };
    let body = layout(
        &st,
        Some(&page),
        &page.title(),
        html! {
            (forms(&page, &q))
            @if page == Page::Sql {
                main id="main" { (sql_console()) }
            } @else {
                main id="main" data-fragment=(fragment) aria-busy="true" data-paints="0" {
                    p class="muted" { "Loading…" }
                    noscript { p { "This page loads its data with JavaScript; the JSON API under /v1/ serves the same data." } }
                }
            }
        },
    );
    let mut resp = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body.into_string(),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure(resp)
}

fn layout(st: &UiState, page: Option<&Page>, title: &str, content: Markup) -> Markup {
    let current = page.map(|p| p.section());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (st.0.cfg.node_name) " · Corrosion" }
                link rel="stylesheet" href={"/ui/assets/ui.css?v=" (crate::assets::version())};
                script src={"/ui/assets/ui.js?v=" (crate::assets::version())} defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    nav aria-label="Main" {
                        a class="brand" href="/ui/" { "Corrosion" }
                        ul {
                            @for (key, href, label) in NAV {
                                li {
                                    @if current == Some(key) { a href=(href) aria-current="page" { (label) } }
                                    @else { a href=(href) { (label) } }
                                }
                            }
                        }
                        span class="node" { (st.0.cfg.node_name) }
                        span id="conn" class="conn" role="status" {}
                    }
                }
                div id="flash" class="flash" role="status" aria-live="polite" hidden {}
                (token_dialog())
                (content)
            }
        }
    }
}

fn token_dialog() -> Markup {
    html! {
        dialog id="token-dialog" aria-labelledby="token-title" {
            form id="token-form" method="dialog" {
                h2 id="token-title" { "API token" }
                p { "This agent requires its API token. It is kept for this browser tab only and sent as a header." }
                p id="token-error" class="error" role="alert" hidden { "The agent refused this token." }
                label for="token-input" { "Token" }
                input id="token-input" type="password" autocomplete="off" required;
                div class="actions" { button type="submit" { "Use this token" } }
            }
        }
    }
}

fn status_select(q: &Query, options: &[(&str, &str)]) -> Markup {
    html! {
        select id="f-status" name="status" {
            @for (v, label) in options {
                @if q.status == *v { option value=(v) selected { (label) } }
                @else { option value=(v) { (label) } }
            }
        }
    }
}

/// The search and write forms of a page (outside the live part, so a
/// repaint never loses what is being typed).
fn forms(page: &Page, q: &Query) -> Markup {
    match page {
        Page::Services => html! {
            form class="filters" role="search" action="/ui/services" method="get" {
                label for="f-q" { "Search name or tag" }
                input id="f-q" type="search" name="q" value=(q.q) maxlength="256";
                label for="f-status" { "Status" }
                (status_select(q, &[("", "any"), ("critical", "worst: critical"), ("maintenance", "worst: maintenance"), ("warning", "worst: warning"), ("passing", "all passing")]))
                button type="submit" { "Filter" }
            }
        },
        Page::Nodes => html! {
            form class="filters" role="search" action="/ui/nodes" method="get" {
                label for="f-q" { "Search name or address" }
                input id="f-q" type="search" name="q" value=(q.q) maxlength="256";
                label for="f-status" { "SWIM state" }
                (status_select(q, &[("", "any"), ("alive", "alive"), ("suspect", "suspect"), ("down", "down")]))
                button type="submit" { "Filter" }
            }
        },
        Page::Kv(key) if key.is_empty() || key.ends_with('/') => html! {
            details class="kv-create" {
                summary { "Create a key in this folder" }
                form id="kv-create" data-prefix=(key) {
                    label for="kv-new-name" { "Key (after " code { "/" (key) } ")" }
                    input id="kv-new-name" name="name" required maxlength="512";
                    label for="kv-new-value" { "Value" }
                    textarea id="kv-new-value" name="value" rows="4" {}
                    div class="actions" { button type="submit" { "Create…" } }
                }
            }
        },
        Page::Kv(key) if corro_catalog::kv::validate_key(key).is_err() => html! {
            p class="muted kv-actions" { "This key cannot be edited here (Consul's key rules refuse it; see docs/KV.md)." }
        },
        Page::Kv(key) => html! {
            div class="actions kv-actions" {
                button type="button" data-action="kv-edit" data-key=(key) { "Edit…" }
                " "
                button type="button" class="danger" data-action="kv-delete" data-key=(key)
                    data-parent=(format!("/ui/kv/{}", enc_key(&key[..key.rfind('/').map_or(0, |i| i + 1)]))) { "Delete…" }
            }
            form id="kv-edit" data-key=(key) hidden {
                label for="kv-edit-value" { "New value (as text)" }
                textarea id="kv-edit-value" name="value" rows="8" {}
                div class="actions" {
                    button type="submit" { "Save…" }
                    " "
                    button type="button" data-action="kv-edit-cancel" { "Cancel" }
                }
            }
        },
        _ => html! {},
    }
}

fn sql_console() -> Markup {
    html! {
        h1 { "SQL console" }
        p class="muted" { "Read-only queries over every table of this agent's database. " strong { "Live" } " runs the query as a subscription: rows update in place as changes arrive from any agent (at most one repaint per second)." }
        form id="sql-form" {
            label for="sql-text" { "Query" }
            textarea id="sql-text" name="sql" rows="5" spellcheck="false" required { "SELECT name, node, address, port FROM consul_services LIMIT 100" }
            div class="actions" {
                label class="inline" { input id="sql-live" type="checkbox"; " Live (subscription)" }
                " "
                button type="submit" { "Run" }
                " "
                button type="button" id="sql-stop" disabled { "Stop" }
            }
        }
        p id="sql-status" class="muted" role="status" aria-live="polite" {}
        div class="table-wrap" { table id="sql-result" { thead {} tbody {} } }
    }
}
