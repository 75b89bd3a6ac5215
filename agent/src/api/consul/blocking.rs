//! Answers and blocking queries (`?index=N&wait=D`).
//!
//! An answer's index is the highest catalog stamp over the topics it
//! depends on ([`corro_catalog::Index::topic_index`]). With `index=N`:
//! when the answer's index is already past `N` the answer returns at once
//! (the client's copy is stale); otherwise the request waits, woken by
//! catalog changes, and returns early only when its topics moved past `N`
//! **and** the answer itself differs from the one it started with. Consul
//! wakes every watcher of an endpoint on any write (a thundering herd);
//! here an unrelated change costs a hash lookup, and a related change that
//! leaves this answer as it was costs one recomputation, no response.
//! Without a change the request returns after `wait` plus up to `wait/16`
//! of jitter (so watchers started together do not return together), or at
//! once when the agent shuts down.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use corro_catalog::{Index, Topic};
use rand::Rng;
use serde_json::Value;

use super::params::Params;
use super::{consul_headers, text_error};
use crate::api::ApiState;
use crate::consul::Discovery;

fn encode(p: &Params, v: &Value) -> Vec<u8> {
    let r = if p.pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    r.unwrap_or_default()
}

fn json_response(index: Option<u64>, body: Vec<u8>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    consul_headers(&mut resp, index.unwrap_or(1));
    if index.is_none() {
        resp.headers_mut().remove("x-consul-index");
    }
    resp
}

/// An answer with no index (agent and status endpoints).
pub(crate) fn plain(p: &Params, v: Value) -> Response {
    json_response(None, encode(p, &v))
}

/// Computes the answer from the catalog, blocking as the module doc says.
pub(crate) async fn respond<F>(
    st: &ApiState,
    d: &Discovery,
    p: &Params,
    topics: Vec<Topic>,
    compute: F,
) -> Response
where
    F: Fn(&Index) -> Result<Value, String>,
{
    let eval = || -> Result<(u64, Vec<u8>), String> {
        let index = d.catalog.read();
        let i = index.topic_index(&topics);
        let v = compute(&index)?;
        drop(index);
        Ok((i, encode(p, &v)))
    };
    let (mut at, first) = match eval() {
        Ok(x) => x,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, e),
    };
    let want = match p.index {
        Some(n) if n > 0 && at <= n => n,
        _ => return json_response(Some(at), first),
    };
    metrics::gauge!("corro_consul_blocking_queries").increment(1.0);
    let jitter = p.wait / 16;
    let wait = p.wait
        + if jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=jitter)
        };
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = d.catalog.subscribe();
    let mut stop = st.stop.clone();
    let mut latest = first.clone();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stop.changed() => break,
        }
        // Cheap first: did any topic of this answer move?
        let now = d.catalog.read().topic_index(&topics);
        if now <= at || now <= want {
            continue;
        }
        match eval() {
            Ok((i, body)) => {
                at = i;
                if body != first {
                    metrics::gauge!("corro_consul_blocking_queries").decrement(1.0);
                    return json_response(Some(at), body);
                }
                latest = body;
            }
            Err(e) => {
                metrics::gauge!("corro_consul_blocking_queries").decrement(1.0);
                return text_error(StatusCode::BAD_REQUEST, e);
            }
        }
    }
    metrics::gauge!("corro_consul_blocking_queries").decrement(1.0);
    json_response(Some(at), latest)
}
