//! `POST /v1/transactions`: a JSON list of statements run as one
//! all-or-nothing transaction.
//!
//! Response: `{"results": [{"rows_affected", "time"}], "time", "version",
//! "actor_id"}`. A failing statement rolls everything back and answers 400
//! naming the statement; more statements than `api.max_statements` or more
//! changed rows than `api.max_changes` answer 413 and change nothing.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use corro_client::{ExecResponse, ExecResult, Statement};
use corro_store::StoreError;
use parking_lot::Mutex;

use super::{ApiState, error, read_json, store_error, values};

/// Why a transaction was refused part-way (it is rolled back).
enum Refusal {
    Statement(usize, StoreError),
    TooManyChanges(usize),
}

pub(crate) async fn handle(State(st): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    let statements: Vec<Statement> = match read_json(&st, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if statements.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no statements given".into());
    }
    if statements.len() > st.limits.max_statements {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} statements in one transaction, over the limit of {} (api.max_statements)",
                statements.len(),
                st.limits.max_statements
            ),
        );
    }
    if let Some(cluster) = &st.cluster {
        // Right after a restart: until this node has pulled back any of its
        // own versions a crash lost (see `cluster`'s write fence).
        cluster.writes_open().await;
    }
    let store = st.store.clone();
    let max_changes = st.limits.max_changes;
    let started = Instant::now();
    // Committed together with concurrent requests' transactions (group
    // commit); the closure may run more than once, only its last run
    // counts, so the refusal is reset on each. The outcome comes back by
    // callback: under load a running leader takes this transaction in its
    // next group and no thread is woken for the request.
    let refused: Arc<Mutex<Option<Refusal>>> = Arc::default();
    let refusal = refused.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let submitted = store.submit_grouped(
        move |tx| {
            *refusal.lock() = None;
            let mut results = Vec::with_capacity(statements.len());
            let mut total = 0usize;
            for (i, s) in statements.iter().enumerate() {
                let t = Instant::now();
                let n = match values::execute(tx, s) {
                    Ok(n) => n,
                    // The store must see this one (it stops taking writes).
                    Err(e) if e.is_disk_full() => return Err(e),
                    Err(e) => {
                        let msg = e.to_string();
                        *refusal.lock() = Some(Refusal::Statement(i, e));
                        return Err(StoreError::NotAllowed(msg));
                    }
                };
                total += n;
                if total > max_changes {
                    *refusal.lock() = Some(Refusal::TooManyChanges(total));
                    return Err(StoreError::NotAllowed("too many changes".into()));
                }
                results.push(ExecResult {
                    rows_affected: n,
                    time: t.elapsed().as_secs_f64(),
                });
            }
            Ok(results)
        },
        move |r| {
            let _ = done_tx.send(r);
        },
    );
    let result = match submitted {
        Ok(lead) => {
            if let Some(lead) = lead {
                // Nobody was leading: run the queue on a blocking thread.
                drop(tokio::task::spawn_blocking(move || lead.run()));
            }
            match done_rx.await {
                Ok(r) => r,
                Err(_) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the transaction was dropped without an outcome; it may or may not have been written".into(),
                    );
                }
            }
        }
        Err(e) => Err(e),
    };
    let refusal = refused.lock().take();
    let actor = store.actor_id();
    match (result, refusal) {
        (Ok(c), _) => {
            if let Some(v) = c.version {
                tracing::debug!(
                    version = v,
                    changes = c.change_count(),
                    "committed local version"
                );
            }
            axum::Json(ExecResponse {
                results: c.value,
                time: started.elapsed().as_secs_f64(),
                version: c.version,
                actor_id: Some(actor.to_string()),
            })
            .into_response()
        }
        (Err(_), Some(Refusal::TooManyChanges(n))) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the transaction changed {n} rows or more, over the limit of {max_changes} (api.max_changes); nothing was written"
            ),
        ),
        (Err(_), Some(Refusal::Statement(i, e))) => {
            let resp = store_error(&st, e);
            if resp.status() == StatusCode::BAD_REQUEST {
                // Say which statement failed; nothing was written.
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "statement {}: {}; nothing was written",
                        i + 1,
                        error_text(resp).await
                    ),
                );
            }
            resp
        }
        (Err(e), None) => store_error(&st, e),
    }
}

async fn error_text(resp: Response) -> String {
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    serde_json::from_slice::<corro_client::types::ApiError>(&body)
        .map(|e| e.error)
        .unwrap_or_default()
}
