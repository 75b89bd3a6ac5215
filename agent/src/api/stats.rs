//! Small read-only routes: `POST /v1/table_stats`, `GET /v1/health`,
//! `GET /v1/members`.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use corro_client::{HealthResponse, Member, SchemaMismatch, TableStatsRequest, TableStatsResponse};

use super::{ApiState, error, read_json};

/// Row counts of replicated tables; unknown names are listed, not counted.
pub(crate) async fn table_stats(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req: TableStatsRequest = match read_json(&st, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let store = st.store.clone();
    let res = tokio::task::spawn_blocking(move || -> rusqlite::Result<TableStatsResponse> {
        let known = store.tables();
        let conn = store.reader();
        let mut out = TableStatsResponse {
            total_row_count: 0,
            invalid_tables: Vec::new(),
        };
        for t in req.tables {
            match known.iter().find(|k| k.eq_ignore_ascii_case(&t)) {
                Some(name) => {
                    let n: u64 = conn.query_row(
                        &format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\"")),
                        [],
                        |r| r.get(0),
                    )?;
                    out.total_row_count += n;
                }
                None => out.invalid_tables.push(t),
            }
        }
        Ok(out)
    })
    .await;
    match res {
        Ok(Ok(r)) => axum::Json(r).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Thresholds of `GET /v1/health` (query parameters).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct HealthParams {
    /// Missing versions tolerated (default 0).
    #[serde(default)]
    max_missing: u64,
    /// Versions behind a peer's heads tolerated (default 0).
    #[serde(default)]
    max_behind: u64,
    /// Seconds without a completed sync round tolerated while there are
    /// peers to sync with (default 30).
    #[serde(default = "default_max_sync_age")]
    max_sync_age: f64,
}

fn default_max_sync_age() -> f64 {
    30.0
}

impl Default for HealthParams {
    fn default() -> Self {
        HealthParams {
            max_missing: 0,
            max_behind: 0,
            max_sync_age: default_max_sync_age(),
        }
    }
}

/// 200 when the database works and this node is not behind (thresholds
/// adjustable: `?max_missing=`, `?max_behind=`, `?max_sync_age=` seconds);
/// 503 with `"status": "behind"` and the reasons otherwise,
/// `"disk_full"` while the disk is full (writes refused, recovering by
/// itself once space is freed), or `"unhealthy"` after a database failure. A quiet cluster is healthy:
/// rounds keep completing with nothing to move.
pub(crate) async fn health(
    State(st): State<ApiState>,
    params: Result<Query<HealthParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return error(
            StatusCode::BAD_REQUEST,
            "max_missing and max_behind are version counts, max_sync_age seconds".into(),
        );
    };
    let st2 = st.clone();
    let body = match tokio::task::spawn_blocking(move || report(&st2, &params)).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("health task failed: {e}"),
            );
        }
    };
    let status = if body.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// The health report `GET /v1/health` answers (and the UI's overview
/// shows) under `params`' thresholds. Blocks (counts missing versions).
pub(crate) fn report(st: &ApiState, params: &HealthParams) -> HealthResponse {
    let missing = st.store.missing_versions();
    let sync = st.cluster.as_ref().map(|c| c.sync_health());
    let mut reasons = Vec::new();
    if !st.healthy.load(Ordering::Relaxed) {
        reasons.push("the database failed (see the log)".to_string());
    }
    let full = st.store.disk_full();
    if let Some(why) = &full {
        reasons.push(format!(
            "the disk is full ({why}): local writes and incoming replication are refused until space is freed"
        ));
    }
    if missing > params.max_missing {
        reasons.push(format!(
            "{missing} versions missing (max_missing={})",
            params.max_missing
        ));
    }
    if let Some(h) = &sync {
        if h.behind > params.max_behind {
            reasons.push(format!(
                "{} versions behind a peer at the last sync (max_behind={})",
                h.behind, params.max_behind
            ));
        }
        let age = h.last_sync.map(|d| d.as_secs_f64());
        if h.has_peers && age.is_none_or(|a| a > params.max_sync_age) {
            reasons.push(match age {
                Some(a) => format!(
                    "no sync round completed for {a:.0}s (max_sync_age={})",
                    params.max_sync_age
                ),
                None => "no sync round completed yet".to_string(),
            });
        }
    }
    HealthResponse {
        status: if !st.healthy.load(Ordering::Relaxed) {
            "unhealthy"
        } else if full.is_some() {
            "disk_full"
        } else if reasons.is_empty() {
            "ok"
        } else {
            "behind"
        }
        .into(),
        actor_id: st.store.actor_id().to_string(),
        head: st.store.head(),
        caught_up: st.cluster.as_ref().is_none_or(|c| *c.caught_up().borrow()),
        missing_versions: missing,
        behind: sync.map_or(0, |h| h.behind),
        last_sync_secs: sync.and_then(|h| h.last_sync).map(|d| d.as_secs_f64()),
        members_down: sync.map_or(0, |h| h.members_down),
        broadcast_queue: sync.map_or(0, |h| h.broadcast_queue),
        replication_lag_secs: sync.and_then(|h| h.lag).map(|d| d.as_secs_f64()),
        reasons,
        members: st.cluster.as_ref().map_or(0, |c| c.members().len()),
        schema: format!("{:016x}", st.store.schema_fingerprint()),
        schema_mismatches: st
            .cluster
            .as_ref()
            .map(|c| c.schema_mismatches())
            .unwrap_or_default()
            .into_iter()
            .map(|(actor, addr, fp)| SchemaMismatch {
                actor_id: actor.to_string(),
                addr: addr.to_string(),
                schema: format!("{fp:016x}"),
            })
            .collect(),
    }
}

/// Peers this node knows, with state and round-trip time.
pub(crate) async fn members(State(st): State<ApiState>) -> Response {
    let members: Vec<Member> = st.cluster.as_ref().map(|c| c.members()).unwrap_or_default();
    axum::Json(members).into_response()
}
