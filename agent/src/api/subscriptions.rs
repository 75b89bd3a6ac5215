//! `POST /v1/subscriptions`, `GET /v1/subscriptions/:id` and
//! `POST /v1/updates/:table` (reference chapter "API"): NDJSON streams fed by
//! `corro-subs`.
//!
//! A subscription answers `corro-query-id: <uuid>` and streams
//! `{"columns"}`, `{"row"}`s and `{"eoq"}` (or, with `?from=<change_id>`,
//! the logged changes after it), then live `{"change"}`s. Invalid queries
//! are 400, unknown ids 404; a `from` outside the retained log, a client
//! that falls behind, or a removed subscription end the stream with an
//! `{"error"}` event; a client that reads nothing for 30 s is disconnected.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use corro_client::{Statement, Value};
use corro_subs::SubError;
use corro_subs::manager::Params;

use super::{ApiState, error, read_json, store_error};

/// How long a subscription client may leave its stream unread.
const STALLED_CLIENT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, serde::Deserialize)]
pub(crate) struct FromParam {
    from: Option<u64>,
}

fn params_of(s: &Statement) -> Params {
    let named = |n: &std::collections::BTreeMap<String, Value>| {
        Params::Named(n.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    };
    match s {
        Statement::Simple(_) => Params::None,
        Statement::WithParams(_, p) if p.is_empty() => Params::None,
        Statement::WithParams(_, p) => Params::Positional(p.clone()),
        Statement::WithNamedParams(_, n) => named(n),
        Statement::Verbose {
            params,
            named_params,
            ..
        } => match (params, named_params) {
            (Some(p), _) if !p.is_empty() => Params::Positional(p.clone()),
            (_, Some(n)) if !n.is_empty() => named(n),
            _ => Params::None,
        },
    }
}

fn subs_of(st: &ApiState) -> Result<&corro_subs::Subscriptions, Box<Response>> {
    st.subs.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "subscriptions are not running".into(),
        ))
    })
}

/// Maps a subscription error that happens before streaming starts.
fn sub_error(st: &ApiState, e: SubError) -> Response {
    match e {
        SubError::Parse(_) | SubError::Unsupported(_) | SubError::UnknownTable(_) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        SubError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        SubError::Store(s) => store_error(st, s),
        SubError::Sql(s) => store_error(st, corro_store::StoreError::Sqlite(s)),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

fn stream(
    st: &ApiState,
    id: uuid::Uuid,
    mut listener: Option<corro_subs::Listener>,
    first_error: Option<String>,
) -> Response {
    let events = async_stream(
        st,
        move |tx: tokio::sync::mpsc::Sender<bytes::Bytes>| async move {
            if let Some(e) = first_error {
                let _ = tx
                    .send(format!("{}\n", serde_json::json!({ "error": e })).into())
                    .await;
                return;
            }
            let Some(l) = listener.as_mut() else {
                return;
            };
            while let Some(ev) = l.next().await {
                let mut line = ev.to_line();
                line.push('\n');
                // A client that reads nothing for this long is disconnected
                // (its events stay in the log; it can resume with `from`).
                match tokio::time::timeout(STALLED_CLIENT, tx.send(line.into())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return, // client went away
                    Err(_) => {
                        metrics::counter!("corro_subs_listeners_cut_total").increment(1);
                        tracing::info!(id = %id, "disconnecting a subscription client that stopped reading");
                        return;
                    }
                }
            }
        },
    );
    let mut resp = Response::new(events);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert("corro-query-id", v);
    }
    resp
}

/// A body fed by a task writing into a small channel: a client that stops
/// reading stops the task at the channel, and the subscription's bounded
/// live buffer then cuts it off.
fn async_stream<F, Fut>(st: &ApiState, f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<bytes::Bytes>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let work = f(tx);
    let stop = st.stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = work => {}
            _ = stop.cancelled() => {}
        }
    });
    let s = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Body::from_stream(s)
}

pub(crate) async fn subscribe(
    State(st): State<ApiState>,
    Query(q): Query<FromParam>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let statement: Statement = match read_json(&st, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let subs = match subs_of(&st) {
        Ok(s) => s.clone(),
        Err(r) => return *r,
    };
    match subs
        .subscribe(statement.sql(), params_of(&statement), q.from)
        .await
    {
        Ok(l) => stream(&st, l.id, Some(l), None),
        Err(e @ (SubError::FromTooOld { .. } | SubError::FromAhead { .. })) => {
            // The subscription exists; tell the client why it cannot resume.
            match subs
                .subscribe(statement.sql(), params_of(&statement), None)
                .await
            {
                Ok(l) => stream(&st, l.id, None, Some(e.to_string())),
                Err(e) => sub_error(&st, e),
            }
        }
        Err(e) => sub_error(&st, e),
    }
}

pub(crate) async fn resubscribe(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<FromParam>,
) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a subscription id (a UUID)"),
        );
    };
    let subs = match subs_of(&st) {
        Ok(s) => s.clone(),
        Err(r) => return *r,
    };
    match subs.attach(id, q.from).await {
        Ok(l) => stream(&st, id, Some(l), None),
        Err(e @ (SubError::FromTooOld { .. } | SubError::FromAhead { .. })) => {
            stream(&st, id, None, Some(e.to_string()))
        }
        Err(e) => sub_error(&st, e),
    }
}

pub(crate) async fn updates(State(st): State<ApiState>, Path(table): Path<String>) -> Response {
    let subs = match subs_of(&st) {
        Ok(s) => s.clone(),
        Err(r) => return *r,
    };
    let mut rx = match subs.updates(&table) {
        Ok(rx) => rx,
        Err(e) => return sub_error(&st, e),
    };
    let body = async_stream(&st, move |tx| async move {
        loop {
            let line = match rx.recv().await {
                Ok(n) => serde_json::json!({ "notify": [n.0, n.1] }).to_string(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    let _ = tx
                        .send(
                            format!(
                                "{}\n",
                                serde_json::json!({ "error": format!("this client fell {k} updates behind and was disconnected") })
                            )
                            .into(),
                        )
                        .await;
                    return;
                }
                Err(_) => return,
            };
            if tx.send(format!("{line}\n").into()).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}
