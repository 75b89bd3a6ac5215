//! `POST /v1/queries`: one read-only statement, answered as NDJSON lines
//! `{"columns": [...]}`, `{"row": [rowid, [cells]]}`..., `{"eoq": {"time": t}}`.
//!
//! The statement is prepared and its first row fetched before the response
//! starts, so malformed or refused SQL gets a 400 (and a timeout before the
//! first row a 408) rather than a 200 with an error line. Errors after rows
//! have been sent become a final `{"error": "..."}` line. `?timeout=<secs>`
//! overrides `api.query_timeout_secs`; the limit is enforced inside SQLite
//! (progress handler), so a runaway query stops using CPU. Rows flow through
//! a bounded channel: a slow reader slows the query instead of growing memory.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use corro_client::{QueryEvent, Statement};
use corro_store::StoreError;
use serde::Deserialize;

use super::{ApiState, error, parse_json, read_body, store_error, values};

#[derive(Debug, Deserialize)]
pub(crate) struct QueryParams {
    /// Seconds.
    timeout: Option<f64>,
}

enum Start {
    Ok,
    Failed(StoreError),
    TimedOut,
}

fn line(ev: &QueryEvent) -> bytes::Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    v.into()
}

pub(crate) async fn handle(
    State(st): State<ApiState>,
    Query(params): Query<QueryParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match read_body(&st, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let statement: Statement = match parse_json(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let timeout = match params.timeout {
        Some(t) if t > 0.0 && t.is_finite() => Duration::from_secs_f64(t),
        Some(t) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("timeout must be a positive number of seconds, got {t}"),
            );
        }
        None => st.limits.query_timeout,
    };
    let (start_tx, start_rx) = tokio::sync::oneshot::channel::<Start>();
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    let store = st.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = store.reader();
        let deadline = Instant::now() + timeout;
        if let Err(e) = conn.progress_handler(1000, Some(move || Instant::now() > deadline)) {
            let _ = start_tx.send(Start::Failed(StoreError::Sqlite(e)));
            return;
        }
        let started = Instant::now();
        let mut stmt = match conn.prepare_user(statement.sql()) {
            Ok(s) => s,
            Err(e) => {
                let _ = start_tx.send(Start::Failed(e));
                return;
            }
        };
        if let Err(e) = values::bind(&mut stmt, &statement) {
            let _ = start_tx.send(Start::Failed(StoreError::Sqlite(e)));
            return;
        }
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let ncols = columns.len();
        let mut rows = stmt.raw_query();
        let first = rows.next();
        let time = started.elapsed().as_secs_f64();
        let mut next_row = match first {
            Ok(r) => r.map(|row| {
                (0..ncols)
                    .map(|i| row.get_ref(i).map(values::from_ref))
                    .collect::<Result<Vec<_>, _>>()
            }),
            Err(e) if is_interrupt(&e) => {
                let _ = start_tx.send(Start::TimedOut);
                return;
            }
            Err(e) => {
                let _ = start_tx.send(Start::Failed(StoreError::Sqlite(e)));
                return;
            }
        };
        if start_tx.send(Start::Ok).is_err() {
            return;
        }
        if tx
            .blocking_send(line(&QueryEvent::Columns(columns)))
            .is_err()
        {
            return;
        }
        let mut rowid = 0u64;
        loop {
            match next_row {
                None => break,
                Some(Ok(cells)) => {
                    rowid += 1;
                    if tx
                        .blocking_send(line(&QueryEvent::Row(rowid, cells)))
                        .is_err()
                    {
                        return; // the client went away
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.blocking_send(line(&QueryEvent::Error(e.to_string())));
                    return;
                }
            }
            next_row = match rows.next() {
                Ok(r) => r.map(|row| {
                    (0..ncols)
                        .map(|i| row.get_ref(i).map(values::from_ref))
                        .collect::<Result<Vec<_>, _>>()
                }),
                Err(e) => {
                    let msg = if is_interrupt(&e) {
                        format!("query exceeded its timeout of {}s", timeout.as_secs_f64())
                    } else {
                        e.to_string()
                    };
                    let _ = tx.blocking_send(line(&QueryEvent::Error(msg)));
                    return;
                }
            };
        }
        let _ = tx.blocking_send(line(&QueryEvent::EndOfQuery {
            time,
            change_id: None,
        }));
    });
    match start_rx.await {
        Ok(Start::Ok) => {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/x-ndjson")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        Ok(Start::Failed(e)) => store_error(&st, e),
        Ok(Start::TimedOut) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("query exceeded its timeout of {}s", timeout.as_secs_f64()),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "query task failed".into(),
        ),
    }
}

fn is_interrupt(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted)
}
