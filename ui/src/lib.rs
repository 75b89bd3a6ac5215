//! The web UI every agent serves at `/ui/` (DESIGN: `ui/`).
//!
//! **Stack.** Pages are HTML rendered on the server with [`maud`] (every
//! interpolated value is escaped by the macro, so service names, tags, meta,
//! KV keys and check output always render as text), plus one hand-written
//! script and one stylesheet compiled into the binary ([`assets`]). No JS
//! toolchain, no CDN, no framework: the page needs nothing but the agent.
//!
//! **Shape.** Each page is a *shell* ([`shell`]: navigation, the search and
//! write forms, an empty `<main>`) with no data in it, so it is served
//! without the API token. The script then loads the page's *fragment*
//! (`/ui/f/...`, [`live`]) with the token as a header (no cookies, so no
//! CSRF) and keeps it current with a long poll: the agent holds the request
//! until what the fragment shows changed (catalog, KV or template changes,
//! compared by a hash of the rendered HTML) and the script repaints at
//! most once a second. Summaries (counts per status) are computed here, and
//! lists are paginated, so a page never ships the whole catalog.
//!
//! The agent supplies what the catalog does not hold (its health, its
//! templates) through [`AgentView`].

pub mod assets;
mod html;
pub mod live;
mod pages;
pub mod shell;

use std::sync::Arc;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use corro_catalog::Catalog;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// This agent's replication health, as `GET /v1/health` reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentHealth {
    /// `ok`, `behind`, `disk_full` or `unhealthy`.
    pub status: String,
    pub reasons: Vec<String>,
    pub actor_id: String,
    pub head: u64,
    pub missing_versions: u64,
    pub behind: u64,
    pub last_sync_secs: Option<f64>,
    pub replication_lag_secs: Option<f64>,
    pub broadcast_queue: u64,
}

/// One `[[template]]` block's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateRow {
    pub source: String,
    pub destination: String,
    /// Unix time (ms) of the last successful render.
    pub last_render_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The KV key the template waits for.
    pub waiting_for: Option<String>,
    pub renders: u64,
}

/// What the agent tells the UI beyond the catalog.
pub trait AgentView: Send + Sync + 'static {
    fn health(&self) -> AgentHealth;
    fn templates(&self) -> Vec<TemplateRow>;
    /// Changes whenever [`AgentView::templates`] may answer differently.
    fn templates_changed(&self) -> watch::Receiver<u64>;
}

/// Static facts about the agent serving the UI.
#[derive(Debug, Clone)]
pub struct UiConfig {
    pub node_name: String,
    pub datacenter: String,
    pub version: String,
    /// The API token (`None`: none needed); the fragments require it.
    pub token: Option<Arc<str>>,
    /// Most fragment requests held open at once (more are answered at once
    /// and the browser polls once a second instead).
    pub max_held: usize,
}

/// Everything the routes share (cheap to clone).
#[derive(Clone)]
pub struct UiState(Arc<Inner>);

struct Inner {
    catalog: Catalog,
    view: Arc<dyn AgentView>,
    cfg: UiConfig,
    stop: CancellationToken,
    held: Semaphore,
    /// Per-service counts, computed once per catalog index.
    summary: Mutex<Option<(u64, Arc<pages::services::Summary>)>>,
}

impl UiState {
    pub fn new(
        catalog: Catalog,
        view: Arc<dyn AgentView>,
        cfg: UiConfig,
        stop: CancellationToken,
    ) -> UiState {
        let held = Semaphore::new(cfg.max_held);
        UiState(Arc::new(Inner {
            catalog,
            view,
            cfg,
            stop,
            held,
            summary: Mutex::new(None),
        }))
    }
}

/// The UI's routes: `/` and `/ui` redirect to `/ui/`; shells, assets and
/// fragments under `/ui/`.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/kv", get(|| async { Redirect::to("/ui/kv/") }))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/f/", get(live::fragment))
        .route("/ui/f/{*rest}", get(live::fragment))
        .route("/ui/", get(shell::page))
        .route("/ui/{*rest}", get(shell::page))
        .with_state(state)
}
