//! `POST /v1/queries`: one read-only statement, answered as NDJSON lines
//! `{"columns": [...]}`, `{"row": [rowid, [cells]]}`..., `{"eoq": {"time": t}}`.
//!
//! The statement is prepared and its first row fetched before the response
//! starts, so malformed or refused SQL gets a 400 (and a timeout before the
//! first row a 408) rather than a 200 with an error line. Errors after rows
//! have been sent become a final `{"error": "..."}` line. `?timeout=<secs>`
//! overrides `api.query_timeout_secs`; the limit is enforced inside SQLite
//! (progress handler), so a runaway query stops using CPU. Rows flow through
//! a bounded channel once the answer passes 64 KiB (smaller answers go out
//! in one piece): a slow reader slows the query instead of growing memory.
//!
//! Answers that went out in one piece are kept by the store, keyed by the
//! request body, until the next write (`api.cache_max_bytes`;
//! `corro_store::Store::kept_answer`): the same request again is answered
//! without SQLite, with the rows it would read. Statements that call a
//! volatile function (`random()`, the clock) or read a pragma are never
//! kept.

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
    /// The whole answer (small results are sent as one body).
    Full(Vec<u8>),
    /// The first part; the rest follows through the channel.
    Streaming(Vec<u8>),
    Failed(StoreError),
    TimedOut,
}

/// Answers up to this size are sent in one piece.
const BUFFERED: usize = 64 * 1024;

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
    let started = Instant::now();
    let request = match read_body(&st, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let timeout = match params.timeout {
        Some(t) if t > 0.0 && t <= crate::config::MAX_QUERY_TIMEOUT_SECS => {
            Duration::from_secs_f64(t)
        }
        Some(t) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "timeout must be a positive number of seconds, at most {}, got {t}",
                    crate::config::MAX_QUERY_TIMEOUT_SECS
                ),
            );
        }
        None => st.limits.query_timeout,
    };
    if let Some(answer) = st.store.kept_answer(&request) {
        return ndjson(Body::from(finish(&answer, started)));
    }
    // Taken before the query reads: the answer is kept only if no write
    // began in between (`Store::keep_answer`).
    let generation = st.store.data_generation();
    let statement: Statement = match parse_json(&request) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let keep = Keep {
        key: request,
        generation,
    };
    if let Some(answer) = quick(&st, &statement, timeout, &keep) {
        return answer;
    }
    let (start_tx, start_rx) = tokio::sync::oneshot::channel::<Start>();
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    let store = st.store.clone();
    tokio::task::spawn_blocking(move || {
        let conn = store.reader();
        conn.set_deadline(Instant::now() + timeout);
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
        // Buffer the answer; past BUFFERED bytes, switch to streaming.
        let mut buf: Vec<u8> = Vec::with_capacity(512);
        let mut start_tx = Some(start_tx);
        let mut emit = |ev: &QueryEvent| -> bool {
            buf.extend_from_slice(&line(ev));
            if buf.len() < BUFFERED {
                return true;
            }
            let chunk = std::mem::take(&mut buf);
            match start_tx.take() {
                Some(s) => s.send(Start::Streaming(chunk)).is_ok(),
                None => tx.blocking_send(chunk.into()).is_ok(),
            }
        };
        let mut ok = emit(&QueryEvent::Columns(columns));
        let mut rowid = 0u64;
        while ok {
            match next_row {
                None => break,
                Some(Ok(cells)) => {
                    rowid += 1;
                    ok = emit(&QueryEvent::Row(rowid, cells));
                }
                Some(Err(e)) => {
                    emit(&QueryEvent::Error(e.to_string()));
                    ok = false;
                }
            }
            if !ok {
                break; // an error was sent, or the client went away
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
                    emit(&QueryEvent::Error(msg));
                    ok = false;
                    break;
                }
            };
        }
        let eoq = QueryEvent::EndOfQuery {
            time,
            change_id: None,
        };
        if ok {
            emit(&eoq);
        }
        match start_tx.take() {
            Some(s) => {
                drop(rows);
                if ok {
                    let answer_len = buf.len().saturating_sub(line(&eoq).len());
                    keep.offer(&store, &conn, &stmt, statement.sql(), &buf[..answer_len]);
                }
                let _ = s.send(Start::Full(buf));
            }
            None if !buf.is_empty() => {
                let _ = tx.blocking_send(buf.into());
            }
            None => {}
        }
    });
    match start_rx.await {
        Ok(Start::Full(body)) => ndjson(Body::from(body)),
        Ok(Start::Streaming(first)) => {
            let first = futures::stream::once(async move {
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(first))
            });
            let rest = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
            });
            ndjson(Body::from_stream(futures::StreamExt::chain(first, rest)))
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

/// Time a query may run on the async worker before it is handed to a
/// blocking thread.
const INLINE_BUDGET: Duration = Duration::from_micros(500);

/// Runs a query right here when a reader is idle and the query finishes
/// within [`INLINE_BUDGET`] and [`BUFFERED`] bytes. That saves two thread
/// switches per request, which dominate short primary-key reads. `None` means
/// "not answered": the caller runs it on a blocking thread from the start,
/// which is safe because queries are read-only.
fn quick(st: &ApiState, statement: &Statement, timeout: Duration, keep: &Keep) -> Option<Response> {
    let conn = st.store.try_reader()?;
    conn.set_deadline(Instant::now() + INLINE_BUDGET.min(timeout));
    let started = Instant::now();
    let mut stmt = match conn.prepare_user(statement.sql()) {
        Ok(s) => s,
        Err(StoreError::Sqlite(e)) if is_interrupt(&e) => return None,
        Err(e) => return Some(store_error(st, e)),
    };
    if let Err(e) = values::bind(&mut stmt, statement) {
        return Some(store_error(st, StoreError::Sqlite(e)));
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let ncols = columns.len();
    let mut buf = line(&QueryEvent::Columns(columns)).to_vec();
    let mut rows = stmt.raw_query();
    let mut time = None;
    let mut rowid = 0u64;
    loop {
        let row = match rows.next() {
            Ok(r) => r,
            Err(e) if is_interrupt(&e) => return None,
            // Other errors are reported by the full path, with its semantics.
            Err(_) => return None,
        };
        time.get_or_insert_with(|| started.elapsed().as_secs_f64());
        let Some(row) = row else { break };
        let cells = (0..ncols)
            .map(|i| row.get_ref(i).map(values::from_ref))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        rowid += 1;
        buf.extend_from_slice(&line(&QueryEvent::Row(rowid, cells)));
        if buf.len() > BUFFERED {
            return None;
        }
    }
    drop(rows);
    keep.offer(&st.store, &conn, &stmt, statement.sql(), &buf);
    buf.extend_from_slice(&line(&QueryEvent::EndOfQuery {
        time: time.unwrap_or_default(),
        change_id: None,
    }));
    Some(ndjson(Body::from(buf)))
}

/// Where an answer would be kept: the request body it answers, and the
/// data generation taken before the query read anything.
struct Keep {
    key: bytes::Bytes,
    generation: u64,
}

impl Keep {
    /// Offers `answer` (every line but the final `eoq`) to the store's
    /// answer cache: only when nothing was written since the query began
    /// (checked first, before any copying), the connection read in its own
    /// transaction (not one a failed rollback left open, with an older
    /// snapshot), and the statement is pure. The key is copied: the request
    /// body may be a slice of the connection's whole read buffer.
    fn offer(
        &self,
        store: &corro_store::Store,
        conn: &corro_store::ReadConn<'_>,
        stmt: &rusqlite::Statement<'_>,
        sql: &str,
        answer: &[u8],
    ) {
        if store.keeps_answers()
            && store.data_generation() == self.generation
            && conn.is_autocommit()
            && conn.is_pure_as_run(stmt, sql)
        {
            store.keep_answer(
                bytes::Bytes::copy_from_slice(&self.key),
                self.generation,
                bytes::Bytes::copy_from_slice(answer),
            );
        }
    }
}

/// A kept answer followed by its `eoq` line (the time is this request's,
/// reading its body included).
fn finish(answer: &[u8], started: Instant) -> Vec<u8> {
    let eoq = line(&QueryEvent::EndOfQuery {
        time: started.elapsed().as_secs_f64(),
        change_id: None,
    });
    let mut body = Vec::with_capacity(answer.len() + eoq.len());
    body.extend_from_slice(answer);
    body.extend_from_slice(&eoq);
    body
}

fn ndjson(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn is_interrupt(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted)
}
