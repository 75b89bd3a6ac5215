//! The agent's HTTP API (reference chapter "API", DESIGN §6).
//!
//! Routes: `POST /v1/transactions`, `POST /v1/queries` (NDJSON),
//! `POST /v1/subscriptions`, `GET /v1/subscriptions/:id` and
//! `POST /v1/updates/:table` (NDJSON streams),
//! `POST /v1/table_stats`, `GET /v1/health`, `GET /v1/members`,
//! `POST /v1/discovery`, `GET /v1/discovery/index` (templates), and the
//! Consul-compatible routes of `corro-consul-api`. Every route
//! requires `Authorization: Bearer <token>` when `api.authz.bearer-token` is
//! set. Errors are JSON `{"error": "..."}` with a 4xx status for bad input
//! (400 malformed or refused SQL/JSON, 401 token, 413 limits) and 500 only
//! for failures of the agent itself. Store calls run on blocking threads.

mod discovery;
mod queries;
pub(crate) mod server;
pub(crate) mod stats;
mod subscriptions;
mod transactions;
pub(crate) mod values;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use corro_client::types::ApiError;
use corro_store::{Store, StoreError};

/// Limits applied to requests (from `[api]`).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_body_bytes: usize,
    pub max_statements: usize,
    pub max_changes: usize,
    pub query_timeout: std::time::Duration,
    /// Time a request body may take to arrive.
    pub body_timeout: std::time::Duration,
}

/// What every handler shares: one reference-counted value, so the clone
/// each request's extractors make costs one atomic increment.
#[derive(Clone)]
pub(crate) struct ApiState(Arc<ApiShared>);

impl ApiState {
    pub(crate) fn new(shared: ApiShared) -> ApiState {
        ApiState(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;
    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// The contents of [`ApiState`].
pub(crate) struct ApiShared {
    pub store: Store,
    pub limits: Limits,
    pub token: Option<Arc<str>>,
    /// Cleared when the database fails underneath (I/O, disk full).
    pub healthy: Arc<AtomicBool>,
    /// Peers to broadcast committed versions to (absent in unit setups).
    pub cluster: Option<crate::cluster::Cluster>,
    /// Subscriptions and update feeds.
    pub subs: Option<corro_subs::Subscriptions>,
    /// The discovery catalog (the template routes).
    pub discovery: Option<crate::consul::Discovery>,
    /// The Consul-compatible routes' state (absent in unit setups).
    pub consul: Option<corro_consul_api::ConsulState>,
    /// Flips on shutdown: long-lived streams end so the server can drain.
    pub stop: CancellationToken,
}

/// The API listener's routes; `ui`: the web UI's routes, when it is on.
pub(crate) fn router(state: ApiState, ui: Option<Router>) -> Router {
    let consul = state
        .consul
        .clone()
        .map(corro_consul_api::router)
        .unwrap_or_default();
    let ui = ui.unwrap_or_default();
    Router::new()
        .route("/v1/transactions", post(transactions::handle))
        .route("/v1/queries", post(queries::handle))
        .route("/v1/subscriptions", post(subscriptions::subscribe))
        .route("/v1/subscriptions/{id}", get(subscriptions::resubscribe))
        .route("/v1/updates/{table}", post(subscriptions::updates))
        .route("/v1/table_stats", post(stats::table_stats))
        .route("/v1/health", get(stats::health))
        .route("/v1/members", get(stats::members))
        .route("/v1/discovery", post(discovery::call))
        .route("/v1/discovery/index", get(discovery::wait))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
        .merge(consul)
        .merge(ui)
        .fallback(not_found)
        .route_layer(middleware::from_fn(crate::telemetry::track_api))
}

/// The Consul-compatible routes (`[consul] http_addr`), with the web UI
/// when it is on, and the read routes its SQL console uses when a token is
/// configured.
pub(crate) fn consul_router(
    consul: corro_consul_api::ConsulState,
    ui: Option<(Router, ApiState)>,
) -> Router {
    let mut r = corro_consul_api::router(consul);
    if let Some((ui, state)) = ui {
        r = r.merge(ui);
        // The SQL console's routes only when a token guards them: this
        // listener is often reachable from further away than the API one.
        if state.token.is_some() {
            let sql = Router::new()
                .route("/v1/queries", post(queries::handle))
                .route("/v1/subscriptions", post(subscriptions::subscribe))
                .layer(middleware::from_fn_with_state(state.clone(), authorize))
                .with_state(state);
            r = r.merge(sql);
        }
    }
    r.fallback(not_found)
        .route_layer(middleware::from_fn(crate::telemetry::track_api))
}

async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

/// Refuses requests without the configured bearer token.
async fn authorize(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(token) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            );
        }
    }
    next.run(req).await
}

/// A JSON error response.
pub(crate) fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ApiError { error: message })).into_response()
}

/// Maps a store error to a response; database failures mark the agent unhealthy.
pub(crate) fn store_error(st: &ApiState, e: StoreError) -> Response {
    if e.is_disk_full() {
        // Not a broken database: the write was rolled back, and writes are
        // accepted again once space is freed (the store rechecks).
        let msg = match e {
            StoreError::DiskFull(_) => e.to_string(),
            other => format!(
                "the disk is full ({other}); nothing was written, and writes are refused until space is freed"
            ),
        };
        return error(StatusCode::INSUFFICIENT_STORAGE, msg);
    }
    match e {
        StoreError::NotAllowed(m) => error(StatusCode::BAD_REQUEST, m),
        StoreError::Sqlite(rusqlite_err) if is_client_error(&rusqlite_err) => {
            error(StatusCode::BAD_REQUEST, rusqlite_err.to_string())
        }
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, msg))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            // Another process held a lock past the busy timeout: transient.
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database busy, try again: {}", msg.unwrap_or_default()),
            )
        }
        // A bug in code run inside one transaction, not a broken database.
        StoreError::Panicked(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        other => {
            tracing::error!(error = %other, "database failure; reporting unhealthy");
            st.healthy.store(false, Ordering::Relaxed);
            error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
        }
    }
}

/// SQLite errors caused by the statement rather than the database.
fn is_client_error(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ConstraintViolation
                | TypeMismatch
                | ApiMisuse
                | ParameterOutOfRange
                | AuthorizationForStatementDenied
                | OperationInterrupted
                | ReadOnly
                | TooBig
                | Unknown
        ),
        rusqlite::Error::SqlInputError { .. }
        | rusqlite::Error::InvalidParameterCount(..)
        | rusqlite::Error::InvalidParameterName(_)
        | rusqlite::Error::MultipleStatement
        | rusqlite::Error::ExecuteReturnedResults
        | rusqlite::Error::InvalidColumnIndex(_)
        | rusqlite::Error::UserFunctionError(_) => true,
        _ => false,
    }
}

/// Reads a request body up to the configured limit (413 beyond it).
pub(crate) async fn read_body(
    st: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > st.limits.max_body_bytes) {
        return Err(too_large(st));
    }
    // A body must arrive within the time a head may take: a client that
    // trickles one cannot hold its connection (and an 8 MiB buffer) forever.
    match tokio::time::timeout(
        st.limits.body_timeout,
        axum::body::to_bytes(body, st.limits.max_body_bytes),
    )
    .await
    {
        Ok(r) => r.map_err(|_| too_large(st)),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (api.header_timeout_secs)",
                st.limits.body_timeout.as_secs()
            ),
        )),
    }
}

fn too_large(st: &ApiState) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body over the {} byte limit (api.max_body_bytes)",
            st.limits.max_body_bytes
        ),
    )
}

/// Reads a body (limit enforced) and parses it as JSON.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    st: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Response> {
    let bytes = read_body(st, headers, body).await?;
    parse_json(&bytes)
}

/// Parses a JSON body, with a 400 naming the problem.
#[expect(
    clippy::result_large_err,
    reason = "the error is the response to send; built once per request"
)]
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}
