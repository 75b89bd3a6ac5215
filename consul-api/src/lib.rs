//! Consul's HTTP API as a library the agent mounts (DESIGN §2): the
//! catalog, health, agent and status routes, answered from the discovery
//! catalog with Consul's JSON shapes, headers and status codes, so existing
//! Consul clients work against their local agent unchanged.
//!
//! - [`routes`](mod@routes): the handlers; [`params`]: query parameters as
//!   Consul parses them; [`filter`]: the `?filter=` language with its limits;
//!   [`render`]: Consul's JSON shapes; [`blocking`]: answers, the answer
//!   cache and blocking queries; [`duration`]: Consul's duration syntax
//!   (also used by the agent's config).
//! - [`ConsulState`]: what the routes read: the catalog, this agent's node,
//!   the API token, the answer cache, the shutdown token, and membership
//!   through the small [`Membership`] trait the agent implements.
//! - [`router`]: the routes with the token check, ready to merge into the
//!   agent's router or to serve alone (`[consul] http_addr`).
//!
//! Differences from Consul, on purpose: every read is local (stale) and
//! says so (`X-Consul-Effective-Consistency: stale`); there is no leader
//! (`X-Consul-KnownLeader: true`, `X-Consul-LastContact: 0`); a blocking
//! query returns early only when its own answer changed ([`blocking`]).
//! Errors are plain text with Consul's status codes: 400 bad parameters,
//! 403 wrong token, 404 unknown route, 500 another datacenter.
//!
//! - [`agent`](mod@agent): the agent's own services and checks (register,
//!   deregister, TTL updates, maintenance, agent-local reads), answered by
//!   the native registry (`corro-registry`).
//! - [`kv`](mod@kv): Consul's KV store over the replicated `consul_kv`
//!   table, and the refusals of compare-and-set, locks, sessions and
//!   `/v1/txn` (see there why).
//!
//! Out of scope here: the listener and its connection limits (the agent's),
//! the registry itself and the Consul bridge.

mod agent;
mod blocking;
pub use corro_checks::duration;
mod filter;
mod kv;
mod params;
mod render;
mod routes;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use corro_catalog::Catalog;
use tokio_util::sync::CancellationToken;

pub use blocking::AnswerCache;
pub use kv::{KvWriter, MAX_VALUE as KV_MAX_VALUE, validate_key as validate_kv_key};

/// This agent's node in the catalog.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub datacenter: String,
    pub address: IpAddr,
    pub meta: BTreeMap<String, String>,
}

/// A cluster member as `/v1/agent/members` and `/v1/status/peers` list it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub actor_id: String,
    /// The member's gossip address.
    pub addr: SocketAddr,
    /// SWIM declared it down.
    pub down: bool,
}

/// What the routes need to know of cluster membership (the agent's
/// cluster implements it).
pub trait Membership: Send + Sync + 'static {
    /// Every member this agent knows (itself excluded).
    fn members(&self) -> Vec<MemberInfo>;
    /// This agent's own gossip address as others reach it.
    fn advertised(&self) -> SocketAddr;
}

/// Everything the Consul routes share (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct ConsulState(Arc<Shared>);

/// The contents of [`ConsulState`].
pub struct Shared {
    pub catalog: Catalog,
    pub node: Arc<NodeInfo>,
    /// The API token, accepted as `X-Consul-Token`, `Authorization: Bearer`
    /// or `?token=` (`None`: no token needed).
    pub token: Option<Arc<str>>,
    /// Encoded answers, by route, parameters and catalog index.
    pub answers: AnswerCache,
    /// Cancelled on shutdown: held blocking queries return at once.
    pub stop: CancellationToken,
    pub membership: Option<Arc<dyn Membership>>,
    /// This host's native registrations (`None`: no discovery tables, the
    /// agent write routes answer 503).
    pub registry: Option<corro_registry::Registry>,
    /// Writes to Consul's KV store (`None`: the KV write routes answer
    /// 503).
    pub kv: Option<KvWriter>,
}

impl ConsulState {
    pub fn new(shared: Shared) -> ConsulState {
        ConsulState(Arc::new(shared))
    }
}

impl std::ops::Deref for ConsulState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The Consul routes with the token check, state applied.
pub fn router(state: ConsulState) -> Router {
    routes::routes()
        .merge(agent::routes())
        .merge(kv::routes())
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// A plain-text error, as Consul sends them.
pub fn text_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

/// Accepts the configured token as `X-Consul-Token`, `Authorization:
/// Bearer` or `?token=`; anything else is Consul's 403.
async fn authorize(State(st): State<ConsulState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let h = req.headers();
        let from_header = h
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let from_bearer = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let from_query = params::Params::parse(req.uri().query())
            .ok()
            .and_then(|p| p.token);
        let ok = [from_header, from_bearer, from_query]
            .into_iter()
            .flatten()
            .any(|t| t == **token);
        if !ok {
            return text_error(StatusCode::FORBIDDEN, "ACL not found");
        }
    }
    next.run(req).await
}

/// Consul's headers on every answer.
pub fn consul_headers(resp: &mut Response, index: u64) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        h.insert("x-consul-index", v);
    }
    h.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    h.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    h.insert(
        "x-consul-effective-consistency",
        HeaderValue::from_static("stale"),
    );
}
