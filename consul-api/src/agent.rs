//! Consul's agent API for this host's own services and checks, answered
//! by the native registry (`corro-registry`): registration and
//! deregistration, TTL updates, maintenance, and the agent-local reads
//! (`/v1/agent/services`, `/v1/agent/checks`, `/v1/agent/service/:id` with
//! hash-based blocking, `/v1/agent/health/service/{name,id}/:x` for load
//! balancers' probes). Writes are `PUT` only, as Consul (other methods 405).
//!
//! Without a registry (an agent with no discovery tables) every route here
//! answers 503 saying so.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use corro_checks::Status;
use corro_registry::{Origin, Registry, RegistryError};
use serde_json::{Value, json};

use crate::params::{MAX_WAIT, Params};
use crate::{ConsulState, blocking, text_error};

/// Largest registration body read (a service with many checks is a few KiB).
pub(crate) const MAX_BODY: usize = 256 * 1024;
/// How long a body may take to arrive.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn routes() -> Router<ConsulState> {
    Router::new()
        .route("/v1/agent/service/register", put(register_service))
        .route(
            "/v1/agent/service/deregister/{*id}",
            put(deregister_service),
        )
        .route(
            "/v1/agent/service/maintenance/{*id}",
            put(service_maintenance),
        )
        .route("/v1/agent/maintenance", put(node_maintenance))
        .route("/v1/agent/check/register", put(register_check))
        .route("/v1/agent/check/deregister/{*id}", put(deregister_check))
        .route(
            "/v1/agent/check/pass/{*id}",
            put(|State(st), Path(id), RawQuery(q)| check_note(st, id, q, Status::Passing)),
        )
        .route(
            "/v1/agent/check/warn/{*id}",
            put(|State(st), Path(id), RawQuery(q)| check_note(st, id, q, Status::Warning)),
        )
        .route(
            "/v1/agent/check/fail/{*id}",
            put(|State(st), Path(id), RawQuery(q)| check_note(st, id, q, Status::Critical)),
        )
        .route("/v1/agent/check/update/{*id}", put(check_update))
        .route("/v1/agent/services", get(services))
        .route("/v1/agent/checks", get(checks))
        .route("/v1/agent/service/{*id}", get(service))
        .route("/v1/agent/health/service/name/{*name}", get(health_by_name))
        .route("/v1/agent/health/service/id/{*id}", get(health_by_id))
}

/// The query's parameters as a map (the last value of a repeated key).
fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn registry(st: &ConsulState) -> Result<&Registry, Response> {
    st.registry.as_ref().ok_or_else(|| {
        text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "native registration is not available: this agent has no discovery tables (see docs/DISCOVERY.md)",
        )
    })
}

fn refused(e: RegistryError) -> Response {
    let code = match e {
        RegistryError::BadRequest(_) => StatusCode::BAD_REQUEST,
        RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
        RegistryError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        RegistryError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
    };
    text_error(code, e.to_string())
}

fn done(r: Result<(), RegistryError>) -> Response {
    match r {
        Ok(()) => {
            let mut resp = StatusCode::OK.into_response();
            crate::consul_headers(&mut resp, 0);
            resp.headers_mut().remove("x-consul-index");
            resp
        }
        Err(e) => refused(e),
    }
}

/// Reads a JSON body up to [`MAX_BODY`]; Consul's `Request decode failed`
/// for anything that is not JSON.
async fn read_json(body: Body) -> Result<Value, Response> {
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(text_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body too large (limit {MAX_BODY} bytes)"),
            ));
        }
        Err(_) => {
            return Err(text_error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(text_error(
            StatusCode::BAD_REQUEST,
            "Request decode failed: EOF",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        text_error(
            StatusCode::BAD_REQUEST,
            format!("Request decode failed: {e}"),
        )
    })
}

/// Consul's truthy flag: present without a value, or `true`.
fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v.is_empty() || v == "true")
}

async fn register_service(
    State(st): State<ConsulState>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    let reg = match registry(&st) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let v = match read_json(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let q = query_map(q.as_deref());
    done(
        reg.register_service(v, flag(&q, "replace-existing-checks"), Origin::Api)
            .await,
    )
}

async fn deregister_service(State(st): State<ConsulState>, Path(id): Path<String>) -> Response {
    match registry(&st) {
        Ok(r) => done(r.deregister_service(&id).await),
        Err(r) => r,
    }
}

#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn enable_reason(q: Option<&str>) -> Result<(bool, String), Response> {
    let q = query_map(q);
    let enable = match q.get("enable").map(String::as_str) {
        None => {
            return Err(text_error(
                StatusCode::BAD_REQUEST,
                "Missing value for enable",
            ));
        }
        Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE") | Some("True") => true,
        Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") | Some("False") => false,
        Some(other) => {
            return Err(text_error(
                StatusCode::BAD_REQUEST,
                format!("Invalid value for enable: {other:?}"),
            ));
        }
    };
    Ok((enable, q.get("reason").cloned().unwrap_or_default()))
}

async fn service_maintenance(
    State(st): State<ConsulState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let reg = match registry(&st) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if id.is_empty() {
        return text_error(StatusCode::BAD_REQUEST, "Missing service ID");
    }
    match enable_reason(q.as_deref()) {
        Ok((enable, reason)) => done(reg.maintenance(Some(&id), enable, &reason).await),
        Err(r) => r,
    }
}

async fn node_maintenance(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let reg = match registry(&st) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match enable_reason(q.as_deref()) {
        Ok((enable, reason)) => done(reg.maintenance(None, enable, &reason).await),
        Err(r) => r,
    }
}

async fn register_check(State(st): State<ConsulState>, body: Body) -> Response {
    let reg = match registry(&st) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match read_json(body).await {
        Ok(v) => done(reg.register_check(v, Origin::Api).await),
        Err(r) => r,
    }
}

async fn deregister_check(State(st): State<ConsulState>, Path(id): Path<String>) -> Response {
    match registry(&st) {
        Ok(r) => done(r.deregister_check(&id).await),
        Err(r) => r,
    }
}

async fn ttl(st: &ConsulState, id: &str, status: Status, note: String) -> Response {
    match registry(st) {
        Ok(r) => done(r.update_ttl(id, status, note).await),
        Err(r) => r,
    }
}

/// `check/{pass,warn,fail}/:id?note=`: the route's status, the note as output.
async fn check_note(st: ConsulState, id: String, q: Option<String>, status: Status) -> Response {
    let note = query_map(q.as_deref()).remove("note").unwrap_or_default();
    ttl(&st, &id, status, note).await
}

async fn check_update(
    State(st): State<ConsulState>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let v = match read_json(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(obj) = v.as_object() else {
        return text_error(
            StatusCode::BAD_REQUEST,
            "Request decode failed: expected a JSON object",
        );
    };
    let f = corro_checks::fields::Fields::new(obj);
    let (status, output) = match (
        f.string_or_empty(&["status"]),
        f.string_or_empty(&["output"]),
    ) {
        (Ok(s), Ok(o)) => (s, o),
        (Err(e), _) | (_, Err(e)) => {
            return text_error(
                StatusCode::BAD_REQUEST,
                format!("Request decode failed: {e}"),
            );
        }
    };
    let Some(status) = Status::parse(&status) else {
        return text_error(
            StatusCode::BAD_REQUEST,
            format!("Invalid check status: '{status}'"),
        );
    };
    ttl(&st, &id, status, output).await
}

/// An `AgentService` with every field (for checking filter selectors).
fn service_sample() -> Value {
    json!({"ID": "", "Service": "", "Tags": [""], "Meta": {}, "Port": 0, "Address": "",
        "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false, "Datacenter": "",
        "Kind": "", "SocketPath": "", "TaggedAddresses": {}, "Proxy": {}, "Connect": {},
        "Namespace": "", "Partition": "", "PeerName": "", "Locality": {}})
}

/// A `HealthCheck` with every field.
fn check_sample() -> Value {
    json!({"Node": "", "CheckID": "", "Name": "", "Status": "", "Notes": "", "Output": "",
        "ServiceID": "", "ServiceName": "", "ServiceTags": [""], "Type": "", "Interval": "",
        "Timeout": "", "ExposedPort": 0, "Definition": {}, "CreateIndex": 0, "ModifyIndex": 0})
}

/// Keeps the entries of `map` that `?filter=` selects (Consul filters the
/// values of these maps); 400 for a filter that does not parse or names
/// fields the entries do not have.
#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn filtered(
    p: &Params,
    map: std::collections::BTreeMap<String, Value>,
    sample: Value,
) -> Result<Value, Response> {
    let Some(text) = p.filter.as_deref() else {
        return Ok(json!(map));
    };
    let bad = |e: String| {
        text_error(
            StatusCode::BAD_REQUEST,
            format!("Failed to create boolean expression evaluator: {e}"),
        )
    };
    let compile = || -> Result<crate::filter::Expr, Response> {
        let e = crate::filter::parse(text).map_err(bad)?;
        crate::filter::validate(&e, &sample).map_err(bad)?;
        Ok(e)
    };
    let e = if text.contains("matches") {
        tokio::task::block_in_place(compile)?
    } else {
        compile()?
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        if crate::filter::eval(&e, &v).map_err(bad)? {
            out.insert(k, v);
        }
    }
    Ok(Value::Object(out))
}

async fn services(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let p = match Params::parse(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, e),
    };
    let map = st
        .registry
        .as_ref()
        .map(Registry::services_json)
        .unwrap_or_default();
    match filtered(&p, map, service_sample()) {
        Ok(body) => blocking::plain(&p, body),
        Err(r) => r,
    }
}

async fn checks(State(st): State<ConsulState>, RawQuery(q): RawQuery) -> Response {
    let p = match Params::parse(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, e),
    };
    let map = st
        .registry
        .as_ref()
        .map(Registry::checks_json)
        .unwrap_or_default();
    match filtered(&p, map, check_sample()) {
        Ok(body) => blocking::plain(&p, body),
        Err(r) => r,
    }
}

/// `GET /v1/agent/service/:id`, with `?hash=` blocking: answers at once
/// when the service's hash differs from the one given, else when it
/// changes or `wait` passes (5 m default, 10 m at most, as Consul).
async fn service(
    State(st): State<ConsulState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let reg = match registry(&st) {
        Ok(r) => r.clone(),
        Err(r) => return r,
    };
    let p = match Params::parse(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, e),
    };
    let want = query_map(q.as_deref()).remove("hash");
    let deadline = tokio::time::Instant::now() + p.wait.clamp(Duration::from_millis(1), MAX_WAIT);
    // Subscribed before the first read: a change between reading the hash
    // and waiting is not missed.
    let mut changes = reg.watch();
    loop {
        changes.borrow_and_update();
        let Some((v, hash)) = reg.service_json(&id) else {
            return text_error(StatusCode::NOT_FOUND, format!("unknown service ID: {id}"));
        };
        let blocked = want.as_deref().is_some_and(|h| h == hash);
        let now = tokio::time::Instant::now();
        if !blocked || now >= deadline || st.stop.is_cancelled() {
            let mut resp = blocking::plain(&p, v);
            if let Ok(h) = HeaderValue::from_str(&hash) {
                resp.headers_mut().insert("x-consul-contenthash", h);
            }
            return resp;
        }
        tokio::select! {
            r = tokio::time::timeout(deadline - now, changes.changed()) => {
                if matches!(r, Ok(Err(_))) {
                    // The registry is gone (shutdown): answer what we have.
                    tokio::time::sleep_until(deadline).await;
                }
            }
            _ = st.stop.cancelled() => {}
        }
    }
}

fn health_code(status: &str) -> StatusCode {
    match status {
        "passing" => StatusCode::OK,
        "warning" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn health_answer(p: &Params, text: bool, status: &str, body: Value) -> Response {
    let code = health_code(status);
    if text {
        return (
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            status.to_string(),
        )
            .into_response();
    }
    let mut resp = blocking::plain(p, body);
    *resp.status_mut() = code;
    resp
}

async fn health_by_id(
    State(st): State<ConsulState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let reg = match registry(&st) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let p = match Params::parse(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, e),
    };
    let text = query_map(q.as_deref())
        .get("format")
        .is_some_and(|f| f == "text");
    match reg.health_by_id(&id) {
        Some((status, body)) => health_answer(&p, text, &status, body),
        None => text_error(StatusCode::NOT_FOUND, format!("ServiceId {id} not found")),
    }
}

async fn health_by_name(
    State(st): State<ConsulState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let reg = match registry(&st) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let p = match Params::parse(q.as_deref()) {
        Ok(p) => p,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, e),
    };
    let text = query_map(q.as_deref())
        .get("format")
        .is_some_and(|f| f == "text");
    let all = reg.health_by_name(&name);
    if all.is_empty() {
        return text_error(
            StatusCode::NOT_FOUND,
            format!("ServiceName {name} Not Found"),
        );
    }
    // The worst instance decides (maintenance counts as critical).
    let rank = |s: &str| match s {
        "passing" => 0,
        "warning" => 1,
        "critical" => 2,
        _ => 3,
    };
    let worst = all
        .iter()
        .map(|(s, _)| s.as_str())
        .max_by_key(|s| rank(s))
        .unwrap_or("passing")
        .to_string();
    let list: Vec<Value> = all.into_iter().map(|(_, v)| v).collect();
    health_answer(&p, text, &worst, Value::Array(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::DEFAULT_WAIT;

    #[test]
    fn wait_defaults_are_consuls() {
        assert_eq!(DEFAULT_WAIT, Duration::from_secs(300));
        assert!(flag(
            &query_map(Some("replace-existing-checks")),
            "replace-existing-checks"
        ));
        assert!(flag(
            &query_map(Some("replace-existing-checks=true")),
            "replace-existing-checks"
        ));
        assert!(!flag(
            &query_map(Some("replace-existing-checks=false")),
            "replace-existing-checks"
        ));
        assert_eq!(health_code("warning"), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(health_code("maintenance"), StatusCode::SERVICE_UNAVAILABLE);
    }
}
