//! Answers and blocking queries (`?index=N&wait=D`).
//!
//! An answer's index is the highest catalog stamp over the topics it
//! depends on ([`corro_catalog::Index::topic_index`]). With `index=N`:
//! when the answer's index is already past `N` the answer returns at once
//! (the client's copy is stale), and so does a request whose `N` is above
//! the answer's index (indexes are per agent and an answer's index never
//! decreases here, so a larger one was handed out by another agent: a
//! client that moved here, or came through a load balancer; Consul's
//! clients reset their index when it goes backwards, and this is the
//! server side of that). Only `N` equal to the answer's index waits, woken by catalog changes, and returns early only when
//! its topics moved past `N` **and** the answer itself differs from the one
//! it started with. Consul wakes every watcher of an endpoint on any write
//! (a thundering herd); here a held query is woken only by changes to its
//! own topics ([`corro_catalog::Catalog::watch`]): an unrelated change
//! (a write to another service, another service or node removed, another
//! KV key deleted) wakes no held query at all, and a related change that
//! leaves this answer as it was costs one recomputation, no response. Without a change the request returns after
//! `wait` plus up to `wait/16` of jitter (so watchers started together do
//! not return together), or at once when the agent shuts down.
//!
//! The request subscribes to catalog changes *before* its first
//! evaluation, so a change landing between the two still wakes it.
//!
//! **Work off the lock.** An answer is built in two steps: the route's
//! `gather` takes what it needs from the catalog under the read lock (row
//! handles, no rendering), and its `render` builds, filters and encodes
//! the JSON on a blocking thread after the lock is released. A heavy
//! filter over a large catalog therefore neither holds writers (and with
//! them DNS) behind the lock nor occupies a runtime worker.
//!
//! **Cached answers.** Answers are cached by route, parameters and index:
//! an answer depends only on the catalog parts its topics name, and any
//! change to those moves the topics' index, so a cached answer whose index
//! is still current is exactly what recomputing would give (the catalog's
//! property test checks that every changed answer moved its index). The
//! cache is bounded in bytes (`[consul] cache_max_bytes`) and scan
//! resistant: a new entry enters a small probationary part and is promoted
//! only when asked for again, so a client sending thousands of distinct
//! one-off queries cycles the probationary part and never evicts the
//! entries other clients keep asking for. Answers whose filter text is over
//! [`CACHED_FILTER_MAX`] bytes, or whose body is over an eighth of the
//! budget, are not cached at all.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corro_catalog::{Index, Topic};
use rand::Rng;
use serde_json::Value;

use crate::params::Params;
use crate::{ConsulState, consul_headers, text_error};

/// Filters longer than this are not part of cached answers' keys: such
/// answers are computed every time.
pub(crate) const CACHED_FILTER_MAX: usize = 256;

/// Per-entry bookkeeping counted on top of key and body bytes.
const ENTRY_OVERHEAD: u64 = 128;

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<String, (u64, bytes::Bytes)> for Weigh {
    fn weight(&self, key: &String, val: &(u64, bytes::Bytes)) -> u64 {
        key.len() as u64 + val.1.len() as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone)]
struct CountEvictions;

impl quick_cache::Lifecycle<String, (u64, bytes::Bytes)> for CountEvictions {
    type RequestState = ();
    fn begin_request(&self) -> Self::RequestState {}
    fn on_evict(&self, _: &mut (), _: String, _: (u64, bytes::Bytes)) {
        metrics::counter!("corro_consul_cache_evictions_total").increment(1);
    }
}

type Inner = quick_cache::sync::Cache<
    String,
    (u64, bytes::Bytes),
    Weigh,
    quick_cache::DefaultHashBuilder,
    CountEvictions,
>;

/// Answers by (route, topics, parameters): (index, body), bounded in bytes.
pub struct AnswerCache {
    inner: Inner,
    max_body: usize,
}

impl AnswerCache {
    /// A cache holding at most `max_bytes` of keys and bodies.
    pub fn new(max_bytes: u64) -> AnswerCache {
        let max_bytes = max_bytes.max(64 * 1024);
        // One shard: answers of popular routes are large, and a sharded
        // cache could not hold one bigger than its shard.
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(4096)
            .weight_capacity(max_bytes)
            .hot_allocation(0.9)
            .shards(1)
            .build();
        let inner = match options {
            Ok(o) => Inner::with_options(o, Weigh, Default::default(), CountEvictions),
            Err(_) => Inner::with(4096, max_bytes, Weigh, Default::default(), CountEvictions),
        };
        AnswerCache {
            inner,
            max_body: (max_bytes / 8) as usize,
        }
    }

    fn get(&self, key: &str, index: u64) -> Option<bytes::Bytes> {
        match self.inner.get(key) {
            Some((i, b)) if i == index => {
                metrics::counter!("corro_consul_cache_hits_total").increment(1);
                Some(b)
            }
            _ => {
                metrics::counter!("corro_consul_cache_misses_total").increment(1);
                None
            }
        }
    }

    fn put(&self, key: String, index: u64, body: bytes::Bytes) {
        if body.len() > self.max_body {
            return;
        }
        self.inner.insert(key, (index, body));
        metrics::gauge!("corro_consul_cache_bytes").set(self.inner.weight() as f64);
        metrics::gauge!("corro_consul_cache_entries").set(self.inner.len() as f64);
    }

    /// Bytes held (keys, bodies and per-entry overhead).
    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.inner.weight()
    }
}

/// The cache key of an answer (`route` names the route and every path
/// parameter the topics do not); `None` when the answer is not cached:
/// it depends on more than the catalog (round-trip times for `near`), or
/// its filter is long (see [`CACHED_FILTER_MAX`]).
fn cache_key(route: &str, topics: &[Topic], p: &Params) -> Option<String> {
    if p.near.is_some()
        || p.filter
            .as_ref()
            .is_some_and(|f| f.len() > CACHED_FILTER_MAX)
    {
        return None;
    }
    Some(format!(
        "{route}|{topics:?}|{:?}|{:?}|{}|{:?}|{}",
        p.tags, p.node_meta, p.passing, p.filter, p.pretty
    ))
}

fn encode(pretty: bool, v: &Value) -> Vec<u8> {
    let r = if pretty {
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
    json_response(None, encode(p.pretty, &v))
}

/// Counts a held query for as long as it lives (also when the client goes
/// away and the request future is dropped mid-wait).
struct Held;

impl Held {
    fn new() -> Held {
        metrics::gauge!("corro_consul_blocking_queries").increment(1.0);
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!("corro_consul_blocking_queries").decrement(1.0);
    }
}

/// Why an evaluation gave no body.
pub(crate) enum Failed {
    /// The filter could not be applied (the client's 400).
    Client(String),
    /// The render task died (the agent's 500).
    Internal(String),
}

impl Failed {
    pub(crate) fn response(self) -> Response {
        match self {
            Failed::Client(e) => text_error(StatusCode::BAD_REQUEST, e),
            Failed::Internal(e) => text_error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

/// An evaluated answer: its status and body (JSON, or a KV value's raw
/// bytes). Two answers are the same answer when both are equal.
#[derive(Clone, PartialEq)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: bytes::Bytes,
    /// The body is a KV value sent as is (`?raw`), with Consul's headers
    /// against a browser running it.
    pub raw: bool,
}

impl Answer {
    pub(crate) fn json(body: bytes::Bytes) -> Answer {
        Answer {
            status: StatusCode::OK,
            body,
            raw: false,
        }
    }

    fn into_response(self, index: u64) -> Response {
        if self.status == StatusCode::OK && !self.raw {
            return json_response(Some(index), self.body);
        }
        let mut resp = (self.status, axum::body::Body::from(self.body)).into_response();
        if self.raw {
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                "content-security-policy",
                HeaderValue::from_static("sandbox"),
            );
        }
        consul_headers(&mut resp, index);
        resp
    }
}

/// Computes the answer from the catalog, blocking as the module doc says.
/// `gather` runs under the catalog's read lock and must only collect row
/// handles; the `render` it returns runs on a blocking thread.
pub(crate) async fn respond<G, R>(
    st: &ConsulState,
    d: &ConsulState,
    p: &Params,
    route: &str,
    topics: Vec<Topic>,
    gather: G,
) -> Response
where
    G: Fn(&Index) -> R + Sync,
    R: FnOnce() -> Result<Value, String> + Send + 'static,
{
    let key = cache_key(route, &topics, p);
    let pretty = p.pretty;
    let (key, topics_ref, gather) = (&key, &topics, &gather);
    let eval = || async move {
        let (i, render) = {
            let index = d.catalog.read();
            let i = index.topic_index(topics_ref);
            if let Some(body) = key.as_deref().and_then(|k| st.answers.get(k, i)) {
                return Ok::<_, Failed>((i, Answer::json(body)));
            }
            (i, gather(&index))
        };
        let body = tokio::task::spawn_blocking(move || render().map(|v| encode(pretty, &v)))
            .await
            .map_err(|e| Failed::Internal(format!("building the answer failed: {e}")))?
            .map_err(Failed::Client)?;
        let body = bytes::Bytes::from(body);
        if let Some(k) = key {
            st.answers.put(k.clone(), i, body.clone());
        }
        Ok((i, Answer::json(body)))
    };
    hold(st, p, &topics, eval).await
}

/// Answers with `eval` (the answer's index and the answer), holding the
/// request while `?index=` names the current answer, as the module doc
/// says; `topics` are what the answer depends on.
pub(crate) async fn hold<E, F>(st: &ConsulState, p: &Params, topics: &[Topic], eval: E) -> Response
where
    E: Fn() -> F,
    F: Future<Output = Result<(u64, Answer), Failed>>,
{
    // A request that may block subscribes before its first evaluation: a
    // change landing in between must still wake it. It is woken only by
    // changes to its own topics.
    let mut changes = p.index.filter(|n| *n > 0).map(|_| st.catalog.watch(topics));
    let (mut at, first) = match eval().await {
        Ok(x) => x,
        Err(e) => return e.response(),
    };
    // Hold only a client whose copy is this very answer. The index of an
    // answer never decreases on this agent, so an index above it was handed
    // out by another agent (or before a failover): that client's copy may
    // differ, and it gets this answer at once.
    let (want, mut changes) = match (p.index, changes.take()) {
        (Some(n), Some(rx)) if n > 0 && n == at => (n, rx),
        _ => return first.into_response(at),
    };
    let _held = Held::new();
    let jitter = p.wait / 16;
    let wait = p.wait
        + if jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=jitter)
        };
    let deadline = tokio::time::Instant::now() + wait;
    let stop = st.stop.clone();
    let mut latest = first.clone();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stop.cancelled() => break,
        }
        // Cheap first: did any topic of this answer move?
        let now = st.catalog.read().topic_index(topics);
        if now <= at || now <= want {
            continue;
        }
        match eval().await {
            Ok((i, answer)) => {
                at = i;
                if answer != first {
                    return answer.into_response(at);
                }
                latest = answer;
            }
            Err(e) => return e.response(),
        }
    }
    // The deadline: answer with the topics' current index. Changes that
    // left this answer as it was move it without waking this query (a
    // topic removed elsewhere moves every unstamped topic's index), so the
    // answer is computed again at that index; otherwise the client's next
    // request would return at once.
    if st.catalog.read().topic_index(topics) > at
        && let Ok((i, answer)) = eval().await
    {
        return answer.into_response(i);
    }
    latest.into_response(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_within_its_bytes_and_keeps_hot_entries_under_a_flood() {
        let budget = 8 << 20;
        let cache = AnswerCache::new(budget);
        let hot_body = bytes::Bytes::from(vec![b'h'; 200_000]);
        cache.put("hot".into(), 1, hot_body.clone());
        for _ in 0..3 {
            assert!(cache.get("hot", 1).is_some());
        }
        // A flood of distinct one-off answers, each sizeable.
        for i in 0..3000 {
            let body = bytes::Bytes::from(vec![b'x'; 100_000]);
            cache.put(format!("flood-{i}"), 1, body);
            assert!(cache.weight() <= budget, "{} > {budget}", cache.weight());
            if i % 100 == 0 {
                assert!(cache.get("hot", 1).is_some(), "hot entry evicted at {i}");
            }
        }
        assert_eq!(cache.get("hot", 1), Some(hot_body));
        // A stale index is a miss.
        assert!(cache.get("hot", 2).is_none());
        // Bodies over an eighth of the budget are not kept.
        cache.put("huge".into(), 1, bytes::Bytes::from(vec![0; 2 << 20]));
        assert!(cache.get("huge", 1).is_none());
    }

    #[test]
    fn long_filters_and_near_are_not_cached() {
        let mut p = Params::default();
        assert!(cache_key("r", &[], &p).is_some());
        p.filter = Some("x".repeat(CACHED_FILTER_MAX + 1));
        assert!(cache_key("r", &[], &p).is_none());
        p.filter = Some("Node.Node == a".into());
        assert!(cache_key("r", &[], &p).is_some());
        p.near = Some("_agent".into());
        assert!(cache_key("r", &[], &p).is_none());
    }
}
