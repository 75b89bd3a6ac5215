//! `POST /v1/discovery` and `GET /v1/discovery/index`: the discovery model
//! for template processes outside the agent (`corrosion template`).
//!
//! `POST /v1/discovery` takes one helper call as JSON (`{"call":
//! "instances", "service": "web", "tag": null, "any": false}`, see
//! `corro_templates::DiscoveryCall`) and answers `{"index": n, "value":
//! ...}` with exactly what the agent's own templates get.
//! `GET /v1/discovery/index?index=n&wait=5m` answers `{"index": m}` as soon
//! as the catalog's index differs from `n` (at once when it already does),
//! or after `wait` (default 5 m, at most 10 m): a long poll that tells a
//! template process when to render again.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use corro_templates::DiscoveryCall;

use super::{ApiState, error, read_json};

fn not_running() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the discovery catalog is not running".into(),
    )
}

pub(crate) async fn call(State(st): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    let call: DiscoveryCall = match read_json(&st, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(d) = st.discovery.as_ref() else {
        return not_running();
    };
    let index = d.catalog.read();
    let value = corro_templates::discovery_answer(&index, &d.node.name, &call);
    axum::Json(serde_json::json!({ "index": index.current(), "value": value })).into_response()
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct WaitParams {
    #[serde(default)]
    index: u64,
    wait: Option<String>,
    /// `catalog` (services, nodes, checks), `kv`, or both (default).
    what: Option<String>,
}

pub(crate) async fn wait(State(st): State<ApiState>, Query(p): Query<WaitParams>) -> Response {
    let Some(d) = st.discovery.as_ref() else {
        return not_running();
    };
    let wait = match p.wait.as_deref().map(crate::consul::duration::parse) {
        None => Duration::from_secs(300),
        Some(Some(w)) => w.min(Duration::from_secs(600)),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "wait {:?} is not a duration like \"60s\"",
                    p.wait.unwrap_or_default()
                ),
            );
        }
    };
    // The index of the latest change of the kind asked for (both share
    // one counter; each channel holds the index of its latest change).
    let (catalog_on, kv_on) = match p.what.as_deref() {
        None | Some("") | Some("any") => (true, true),
        Some("catalog") => (true, false),
        Some("kv") => (false, true),
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("what={other:?}: expected catalog, kv or any"),
            );
        }
    };
    let mut rx = d.catalog.subscribe();
    let mut kv = d.catalog.subscribe_kv();
    let stop = st.stop.clone();
    let latest = |rx: &tokio::sync::watch::Receiver<u64>,
                  kv: &tokio::sync::watch::Receiver<u64>| {
        let c = if catalog_on { *rx.borrow() } else { 0 };
        let k = if kv_on { *kv.borrow() } else { 0 };
        c.max(k)
    };
    if latest(&rx, &kv) == p.index {
        let _ = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = rx.wait_for(|v| *v > p.index), if catalog_on => {}
                _ = kv.wait_for(|v| *v > p.index), if kv_on => {}
                _ = stop.cancelled() => {}
            }
        })
        .await;
    }
    axum::Json(serde_json::json!({ "index": latest(&rx, &kv) })).into_response()
}
