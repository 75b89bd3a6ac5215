//! Fragments: `GET /ui/f/<page>?...&hash=H&wait=S` renders the data part of
//! a page. With the hash of what the browser shows, the agent holds the
//! request (up to `wait` seconds, at most [`MAX_WAIT`]) until the rendered
//! HTML differs: woken by the catalog, KV or template changes the page
//! depends on (and once a second for pages showing times), it re-renders
//! and compares. The answer carries `x-ui-hash`. Fragments need the API
//! token (`Authorization: Bearer` or `X-Consul-Token`) when one is set.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::UiState;
use crate::pages::{self, Page, Query};
use crate::shell::secure;

/// The longest a fragment request is held.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The least time between two renders of one held request.
const MIN_RENDER_GAP: Duration = Duration::from_secs(1);

fn hash_of(html: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    html.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn authorized(st: &UiState, headers: &HeaderMap) -> bool {
    let Some(token) = &st.0.cfg.token else {
        return true;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let consul = headers.get("x-consul-token").and_then(|v| v.to_str().ok());
    [bearer, consul]
        .into_iter()
        .flatten()
        .any(|t| t == &**token)
}

fn text(status: StatusCode, msg: &str) -> Response {
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            msg.to_string(),
        )
            .into_response(),
    )
}

async fn render(st: &UiState, page: &Page, q: &Query) -> Option<(String, pages::Wake)> {
    metrics::counter!("corro_ui_renders_total", "page" => page.section()).increment(1);
    let (st, page, q) = (st.clone(), page.clone(), q.clone());
    tokio::task::spawn_blocking(move || {
        pages::render(&st, &page, &q).map(|(m, w)| (m.into_string(), w))
    })
    .await
    .ok()
    .flatten()
}

/// [`pages::stamp`] on a blocking thread (it takes the catalog's lock,
/// which a writer may hold while it syncs the index counter to disk).
async fn stamp_of(st: &UiState, page: &Page) -> Option<(u64, u64)> {
    let (st, page) = (st.clone(), page.clone());
    tokio::task::spawn_blocking(move || pages::stamp(&st, &page))
        .await
        .ok()
        .flatten()
}

/// `GET /ui/f/{*rest}`.
pub(crate) async fn fragment(
    State(st): State<UiState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&st, &headers) {
        return text(StatusCode::UNAUTHORIZED, "missing or wrong API token");
    }
    let rest = uri.path().strip_prefix("/ui/f/").unwrap_or("");
    let Some(page) = Page::parse(rest) else {
        return text(StatusCode::NOT_FOUND, "no such page");
    };
    let q = Query::parse(raw.as_deref());
    let mut shown = String::new();
    let mut wait = Duration::ZERO;
    for (k, v) in form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "hash" => shown = v.chars().take(32).collect(),
            "wait" => {
                wait = v
                    .parse::<u64>()
                    .map(Duration::from_secs)
                    .unwrap_or_default()
                    .min(MAX_WAIT)
            }
            _ => {}
        }
    }
    metrics::counter!("corro_ui_fragments_total", "page" => page.section()).increment(1);
    // Subscribe before the first render: a change in between still wakes.
    let mut catalog = st.0.catalog.subscribe();
    let mut kv = st.0.catalog.subscribe_kv();
    let mut templates = st.0.view.templates_changed();
    let mut members = st.0.catalog.subscribe_members();
    members.borrow_and_update();
    catalog.borrow_and_update();
    kv.borrow_and_update();
    templates.borrow_and_update();
    let mut stamp = stamp_of(&st, &page).await;
    let Some((mut html, wake)) = render(&st, &page, &q).await else {
        return text(StatusCode::NOT_FOUND, "this page has no live part");
    };
    let mut h = hash_of(&html);
    if !shown.is_empty() && shown == h && !wait.is_zero() {
        // Held only while there is room; otherwise answered at once (the
        // browser then polls once a second).
        if let Ok(_permit) = st.0.held.try_acquire() {
            metrics::gauge!("corro_ui_held_requests").increment(1.0);
            let deadline = tokio::time::Instant::now() + wait;
            // When this request last rendered for nothing (same HTML): the
            // first change renders at once, wasted renders stay one a second.
            let mut wasted_at: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    r = catalog.changed(), if wake.catalog => if r.is_err() { break },
                    r = kv.changed(), if wake.kv => if r.is_err() { break },
                    r = templates.changed(), if wake.templates => if r.is_err() { break },
                    r = members.changed(), if wake.members => if r.is_err() { break },
                    _ = tokio::time::sleep(Duration::from_secs(1)), if wake.tick => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = st.0.stop.cancelled() => break,
                }
                // At most one render a second per held request, however
                // fast the cluster changes (the browser repaints at most
                // once a second anyway); wake-ups in between coalesce.
                if let Some(next) = wasted_at.map(|w| w + MIN_RENDER_GAP)
                    && tokio::time::Instant::now() < next
                {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next.min(deadline)) => {}
                        _ = st.0.stop.cancelled() => break,
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                let _ = (
                    catalog.borrow_and_update(),
                    kv.borrow_and_update(),
                    templates.borrow_and_update(),
                    members.borrow_and_update(),
                );
                // Nothing this page shows moved: no render.
                let now_stamp = stamp_of(&st, &page).await;
                if now_stamp.is_some() && now_stamp == stamp {
                    continue;
                }
                stamp = now_stamp;
                wasted_at = Some(tokio::time::Instant::now());
                let Some((next, _)) = render(&st, &page, &q).await else {
                    break;
                };
                let nh = hash_of(&next);
                if nh != h {
                    (html, h) = (next, nh);
                    break;
                }
            }
            metrics::gauge!("corro_ui_held_requests").decrement(1.0);
        }
    }
    let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let hd = resp.headers_mut();
    hd.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&h) {
        hd.insert("x-ui-hash", v);
    }
    secure(resp)
}
