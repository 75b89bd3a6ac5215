//! Small read-only routes: `POST /v1/table_stats`, `GET /v1/health`,
//! `GET /v1/members`.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
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

/// 200 with details while the database works, 503 after a database failure.
pub(crate) async fn health(State(st): State<ApiState>) -> Response {
    let body = HealthResponse {
        status: if st.healthy.load(Ordering::Relaxed) {
            "ok"
        } else {
            "unhealthy"
        }
        .into(),
        actor_id: st.store.actor_id().to_string(),
        head: st.store.head(),
        caught_up: st.cluster.as_ref().is_none_or(|c| *c.caught_up().borrow()),
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
    };
    let status = if body.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Peers this node knows, with state and round-trip time.
pub(crate) async fn members(State(st): State<ApiState>) -> Response {
    let members: Vec<Member> = st.cluster.as_ref().map(|c| c.members()).unwrap_or_default();
    axum::Json(members).into_response()
}
