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
//!
//! Answers are cached by route, parameters and index: an answer depends
//! only on the catalog parts its topics name, and any change to those moves
//! the topics' index, so a cached answer whose index is still current is
//! exactly what recomputing would give (the catalog's property test checks
//! that every changed answer moved its index). Polling clients and many
//! watchers of one service then cost a lookup and a copy.

use std::collections::HashMap;
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

/// Answers by (route, topics, parameters): (index, body).
#[derive(Default)]
pub(crate) struct AnswerCache {
    map: parking_lot::Mutex<HashMap<String, (u64, bytes::Bytes)>>,
}

/// Cached answers kept at most (the cache is emptied when it fills).
const CACHE_ENTRIES: usize = 8192;

impl AnswerCache {
    fn get(&self, key: &str, index: u64) -> Option<bytes::Bytes> {
        let map = self.map.lock();
        map.get(key)
            .filter(|(i, _)| *i == index)
            .map(|(_, b)| b.clone())
    }

    fn put(&self, key: String, index: u64, body: bytes::Bytes) {
        let mut map = self.map.lock();
        if map.len() >= CACHE_ENTRIES && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (index, body));
    }
}

/// The cache key of an answer (`route` names the route and every path
/// parameter the topics do not); `None` when the answer depends on more than
/// the catalog (round-trip times for `near`).
fn cache_key(route: &str, topics: &[Topic], p: &Params) -> Option<String> {
    if p.near.is_some() {
        return None;
    }
    Some(format!(
        "{route}|{topics:?}|{:?}|{:?}|{}|{:?}|{}",
        p.tags, p.node_meta, p.passing, p.filter, p.pretty
    ))
}

fn encode(p: &Params, v: &Value) -> Vec<u8> {
    let r = if p.pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    r.unwrap_or_default()
}

fn json_response(index: Option<u64>, body: impl Into<bytes::Bytes>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from(body.into()),
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
    route: &str,
    topics: Vec<Topic>,
    compute: F,
) -> Response
where
    F: Fn(&Index) -> Result<Value, String>,
{
    let key = cache_key(route, &topics, p);
    let eval = || -> Result<(u64, bytes::Bytes), String> {
        let index = d.catalog.read();
        let i = index.topic_index(&topics);
        if let Some(body) = key.as_deref().and_then(|k| st.answers.get(k, i)) {
            return Ok((i, body));
        }
        let v = compute(&index)?;
        drop(index);
        let body = bytes::Bytes::from(encode(p, &v));
        if let Some(k) = &key {
            st.answers.put(k.clone(), i, body.clone());
        }
        Ok((i, body))
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
    let stop = st.stop.clone();
    let mut latest = first.clone();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stop.cancelled() => break,
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
