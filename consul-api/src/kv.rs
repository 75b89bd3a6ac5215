//! Consul's KV API (`/v1/kv/<key>`) over the replicated `consul_kv` table,
//! and the honest refusals of what a multi-writer store cannot promise.
//!
//! Reads come from the catalog's in-memory copy of the table
//! ([`corro_catalog::Index::kv_get`] and friends), with Consul's shapes: a
//! list of entries with the value in base64 (`null` when empty), `?recurse`
//! for a prefix, `?keys` with `?separator=` rolling folders up, `?raw` for
//! the bytes themselves, 404 with `X-Consul-Index` for a missing key.
//! Blocking queries (`?index=`) wait on the key or on the prefix's
//! directory ([`corro_catalog::kv`]), so a write elsewhere in the keyspace
//! wakes no one here.
//!
//! Writes (`PUT`, `DELETE`, `DELETE ?recurse`) go through the store like any
//! local write and are replicated; concurrent writes of one key on two
//! agents converge by last-writer-wins (docs/KV.md). An identical `PUT`
//! changes no row, so it consumes no version and moves no `ModifyIndex`. A
//! write is in the catalog before its answer goes out: a client reading
//! its own write on this agent sees it.
//!
//! `?cas=`, `?acquire=`, `?release=`, `/v1/session/*` and `/v1/txn` need
//! one agreed order of writes, which a store that takes writes on every
//! agent does not have: two agents would both accept `cas=7`, both answer
//! `true`, and one write would vanish. They are refused with 501 and a body
//! saying why and what to do instead; never `false`, which clients read as
//! "another writer won" and retry forever. Nothing of a refused request is
//! stored.
//!
//! Keys: Consul's current rules (1.21.6 and later): any text, but not
//! starting with `/`, not starting or ending with whitespace, and no `../`
//! or `..\` path traversal (also when percent-encoded). Keys are UTF-8 text
//! without NUL here (the table's key is TEXT); values are any bytes up to
//! [`MAX_VALUE`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use corro_catalog::{KvEntry, Topic};
use corro_store::{SqlValue, Store};
use serde::Serialize;
use tokio::sync::watch;

use crate::blocking::{self, Answer, Failed};
use crate::params::Params;
use crate::{ConsulState, text_error};

/// Consul's `kv_max_value_size` default: the largest value a `PUT` stores.
pub const MAX_VALUE: usize = 512 * 1024;

/// Answers over about this many bytes (keys plus values, before base64)
/// are rendered on a blocking thread instead of a runtime worker.
const RENDER_INLINE_BYTES: usize = 64 * 1024;
/// ... and over this many entries (their JSON framing counts too).
const RENDER_INLINE_ENTRIES: usize = 256;

/// What the KV write routes need: the store, and the agent's write fence
/// (right after a restart, local writes wait until this node has its own
/// latest versions back; `None`: no fence).
#[derive(Clone)]
pub struct KvWriter {
    store: Store,
    writes_open: Option<watch::Receiver<bool>>,
}

impl KvWriter {
    pub fn new(store: Store, writes_open: Option<watch::Receiver<bool>>) -> KvWriter {
        KvWriter { store, writes_open }
    }
}

pub(crate) fn routes() -> Router<ConsulState> {
    Router::new()
        .route("/v1/kv/", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/txn", any(txn))
        .route("/v1/session/{*rest}", any(session))
}

/// Why a request was refused before anything was written.
type Refused = Response;

/// The key named by the request path (percent-decoded), checked as Consul
/// checks it; the empty key is returned as is (the caller decides).
#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn key_of(uri: &Uri) -> Result<String, Refused> {
    let raw = uri.path().strip_prefix("/v1/kv/").unwrap_or("");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    let key = String::from_utf8(bytes).map_err(|_| {
        text_error(
            StatusCode::BAD_REQUEST,
            "Invalid key: not valid UTF-8 (keys are text; values may be any bytes)",
        )
    })?;
    if !key.is_empty() {
        validate_key(&key).map_err(|e| text_error(StatusCode::BAD_REQUEST, e))?;
    }
    Ok(key)
}

pub use corro_catalog::kv::validate_key;

/// The query's keys, each with its first value as Go's `Values.Get`
/// (Consul tests most KV parameters for presence: `?recurse=false` still
/// recurses).
fn query_keys(q: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

/// Consul's 400 when more than one of `flags` is given: `Conflicting
/// flags: ` and the query re-encoded with its keys sorted (Go's
/// `url.Values.Encode`).
fn conflicting(q: Option<&str>, flags: &[&str]) -> Option<Refused> {
    let pairs: Vec<(String, String)> = q
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let given = flags
        .iter()
        .filter(|f| pairs.iter().any(|(k, _)| k == *f))
        .count();
    if given < 2 {
        return None;
    }
    let mut sorted = pairs;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(sorted)
        .finish();
    Some(text_error(
        StatusCode::BAD_REQUEST,
        format!("Conflicting flags: {encoded}\n"),
    ))
}

/// The refusal of an operation that needs one agreed order of writes:
/// `what` is refused, `why` it cannot be honoured, what to do `instead`.
fn unsupported(what: &str, why: &str, instead: &str) -> Refused {
    metrics::counter!("corro_kv_refused_total", "what" => what.to_string()).increment(1);
    text_error(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "{what} is not supported: Corrosion's KV store takes writes on every agent and resolves concurrent writes of a key by last-writer-wins, with no cluster-wide order of writes. {why} Nothing was written. {instead}\n"
        ),
    )
}

const CAS_WHY: &str = "Two agents could both accept the same compare-and-set and both answer true, and one of the writes would silently be lost.";
const CAS_INSTEAD: &str = "Instead: write with a plain PUT (the last write wins), or keep keys that need compare-and-set under a prefix only one program writes.";
const LOCK_WHY: &str = "A lock or session needs one holder agreed by the whole cluster, which no single agent can grant.";
const LOCK_INSTEAD: &str = "Instead: use a lock service with consensus for leader election and locks; plain PUT and DELETE work on every key.";

/// One KV entry as Consul shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EntryJson<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    value: Option<String>,
    create_index: u64,
    modify_index: u64,
}

fn entry_json(e: &KvEntry) -> EntryJson<'_> {
    EntryJson {
        lock_index: 0,
        key: &e.key,
        flags: e.flags,
        value: (!e.value.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&e.value)),
        create_index: e.create_index,
        modify_index: e.modify_index,
    }
}

fn encode<T: Serialize>(pretty: bool, v: &T) -> bytes::Bytes {
    let r = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    bytes::Bytes::from(r.unwrap_or_default())
}

fn not_found() -> Answer {
    Answer {
        status: StatusCode::NOT_FOUND,
        body: bytes::Bytes::new(),
        raw: false,
    }
}

/// Renders a list inline when small (`bytes`: its keys' and values'
/// size), on a blocking thread when large.
async fn render_list<T: Send + 'static>(
    items: Vec<T>,
    bytes: usize,
    count: usize,
    render: impl FnOnce(Vec<T>) -> bytes::Bytes + Send + 'static,
) -> Result<Answer, Failed> {
    if bytes <= RENDER_INLINE_BYTES && count <= RENDER_INLINE_ENTRIES {
        return Ok(Answer::json(render(items)));
    }
    tokio::task::spawn_blocking(move || Answer::json(render(items)))
        .await
        .map_err(|e| Failed::Internal(format!("building the answer failed: {e}")))
}

/// `GET /v1/kv/<key>` with `?recurse`, `?keys[&separator=]`, `?raw`.
async fn kv_get(State(st): State<ConsulState>, uri: Uri, RawQuery(q): RawQuery) -> Response {
    let (st, p) = match crate::routes::prepare(&st, q.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let key = match key_of(&uri) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let qk = query_keys(q.as_deref());
    if qk.contains_key("keys") {
        // The legacy spelling first, so `separator` wins when both are
        // given (as Consul reads them).
        let sep = qk
            .get("separator")
            .or_else(|| qk.get("seperator"))
            .cloned()
            .unwrap_or_default();
        return list_keys(&st, &p, key, sep).await;
    }
    if qk.contains_key("recurse") {
        return list_entries(&st, &p, key).await;
    }
    if key.is_empty() {
        return text_error(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let raw = qk.contains_key("raw");
    let topics = [Topic::KvKey(key.clone())];
    let pretty = p.pretty;
    let (st_ref, key_ref, topics_ref) = (&st, &key, &topics);
    let eval = || async move {
        let index = st_ref.catalog.read();
        let i = index.topic_index(topics_ref);
        let answer = match index.kv_get(key_ref) {
            None => not_found(),
            Some(e) if raw => Answer {
                status: StatusCode::OK,
                body: e.value.clone(),
                raw: true,
            },
            Some(e) => Answer::json(encode(pretty, &[entry_json(e)])),
        };
        Ok::<_, Failed>((i, answer))
    };
    blocking::hold(&st, &p, &topics, eval).await
}

/// `?recurse`: every entry under the prefix (404 when none).
async fn list_entries(st: &ConsulState, p: &Params, prefix: String) -> Response {
    let topics = [Topic::KvPrefix(prefix.clone())];
    let pretty = p.pretty;
    let (topics_ref, prefix_ref) = (&topics, &prefix);
    let eval = || async move {
        let (i, entries): (u64, Vec<Arc<KvEntry>>) = {
            let index = st.catalog.read();
            let i = index.topic_index(topics_ref);
            (i, index.kv_under(prefix_ref).cloned().collect())
        };
        if entries.is_empty() {
            return Ok((i, not_found()));
        }
        let bytes = entries.iter().map(|e| e.key.len() + e.value.len()).sum();
        let count = entries.len();
        let answer = render_list(entries, bytes, count, move |entries| {
            let list: Vec<EntryJson<'_>> = entries.iter().map(|e| entry_json(e)).collect();
            encode(pretty, &list)
        })
        .await?;
        Ok((i, answer))
    };
    blocking::hold(st, p, &topics, eval).await
}

/// `?keys[&separator=]`: the keys under the prefix, folders rolled up (404
/// when none, except `[]` for the empty prefix, as Consul).
async fn list_keys(st: &ConsulState, p: &Params, prefix: String, sep: String) -> Response {
    let topics = [Topic::KvPrefix(prefix.clone())];
    let pretty = p.pretty;
    let (topics_ref, prefix_ref, sep_ref) = (&topics, &prefix, &sep);
    let eval = || async move {
        let (i, keys) = {
            let index = st.catalog.read();
            let i = index.topic_index(topics_ref);
            (i, index.kv_keys(prefix_ref, sep_ref))
        };
        if keys.is_empty() && !prefix_ref.is_empty() {
            return Ok((i, not_found()));
        }
        let bytes = keys.iter().map(|k| k.len()).sum();
        let count = keys.len();
        let answer = render_list(keys, bytes, count, move |keys| {
            let list: Vec<&str> = keys.iter().map(|k| &**k).collect();
            encode(pretty, &list)
        })
        .await?;
        Ok((i, answer))
    };
    blocking::hold(st, p, &topics, eval).await
}

#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn writer(st: &ConsulState) -> Result<&KvWriter, Refused> {
    st.kv.as_ref().ok_or_else(|| {
        text_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the KV store is not available: this agent has no consul_kv table (add packaging/schema/consul.sql to db.schema_paths)",
        )
    })
}

/// Consul's answer to a flag or cas value that is not an unsigned 64-bit
/// number: a 500 with Go's `strconv` error (clients match Consul's codes).
#[expect(clippy::result_large_err, reason = "the error is the response to send")]
fn parse_u64(v: &str) -> Result<u64, Refused> {
    // Go's ParseUint takes digits only (Rust's would also take a `+`).
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let parsed = if digits {
        v.parse::<u64>()
    } else {
        "x".parse::<u64>()
    };
    parsed.map_err(|e| {
        let why = if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
            "value out of range"
        } else {
            "invalid syntax"
        };
        text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("strconv.ParseUint: parsing {v:?}: {why}"),
        )
    })
}

/// Reads a PUT body of at most [`MAX_VALUE`] bytes (Consul's 413 over it).
async fn read_value(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, Refused> {
    let too_large = |n: String| {
        metrics::counter!("corro_kv_refused_total", "what" => "too large").increment(1);
        text_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({n} bytes) too large, max size: {MAX_VALUE} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > MAX_VALUE as u64
    {
        return Err(too_large(n.to_string()));
    }
    match tokio::time::timeout(
        crate::agent::BODY_TIMEOUT,
        axum::body::to_bytes(body, MAX_VALUE),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                Err(too_large(format!("more than {MAX_VALUE}")))
            } else {
                // A broken chunked encoding or a connection cut mid-body.
                metrics::counter!("corro_kv_refused_total", "what" => "bad body").increment(1);
                Err(text_error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body failed ({e}); nothing was written"),
                ))
            }
        }
        Err(_) => Err(text_error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time; nothing was written",
        )),
    }
}

/// A KV write, in the store and then in the catalog.
enum Write {
    Put {
        key: String,
        value: bytes::Bytes,
        flags: u64,
    },
    Delete(String),
    DeleteTree(String),
}

impl Write {
    fn op(&self) -> &'static str {
        match self {
            Write::Put { .. } => "put",
            Write::Delete(_) => "delete",
            Write::DeleteTree(_) => "delete_tree",
        }
    }
}

/// Applies `w`, then brings the catalog up to date so the writer reads its
/// own write; `true` on success (Consul's answer).
async fn apply(st: &ConsulState, w: Write) -> Response {
    let writer = match writer(st) {
        Ok(w) => w.clone(),
        Err(r) => return r,
    };
    if let Some(mut open) = writer.writes_open.clone() {
        // Right after a restart: until this node has its own versions back.
        let _ = open.wait_for(|o| *o).await;
    }
    let op = w.op();
    let catalog = st.catalog.clone();
    let store = writer.store.clone();
    // Group-committed with concurrent writes (KV and `POST
    // /v1/transactions`); the outcome comes back by callback.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let submitted = store.submit_grouped(
        move |tx| match &w {
            Write::Put { key, value, flags } => tx.execute(
                "INSERT INTO consul_kv (key, value, flags) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, flags = excluded.flags",
                &[
                    SqlValue::Text(key.clone()),
                    SqlValue::Blob(value.to_vec()),
                    SqlValue::Integer(*flags as i64),
                ],
            ),
            Write::Delete(key) => tx.execute(
                "DELETE FROM consul_kv WHERE key = ?1",
                &[SqlValue::Text(key.clone())],
            ),
            Write::DeleteTree(prefix) => match corro_catalog::kv::successor(prefix) {
                Some(end) => tx.execute(
                    "DELETE FROM consul_kv WHERE key >= ?1 AND key < ?2",
                    &[SqlValue::Text(prefix.clone()), SqlValue::Text(end)],
                ),
                None => tx.execute(
                    "DELETE FROM consul_kv WHERE key >= ?1",
                    &[SqlValue::Text(prefix.clone())],
                ),
            },
        },
        move |r| {
            let _ = done_tx.send(r);
        },
    );
    let written = match submitted {
        Ok(lead) => {
            if let Some(lead) = lead {
                // Nobody was leading: run the queue on a blocking thread.
                drop(tokio::task::spawn_blocking(move || lead.run()));
            }
            done_rx.await.unwrap_or_else(|_| {
                Err(corro_store::StoreError::Panicked(
                    "the write was dropped without an outcome; it may or may not have been written"
                        .into(),
                ))
            })
        }
        Err(e) => Err(e),
    };
    let result =
        match written {
            // Nothing changed (a DELETE of a missing key): nothing to refresh.
            Ok(c) if c.version.is_none() => Ok(Ok(c)),
            Ok(c) => tokio::task::spawn_blocking(move || {
                if let Err(e) = catalog.process_pending() {
                    // The write is committed; the catalog's own task retries.
                    tracing::warn!(error = %e, "refreshing the catalog after a KV write failed");
                }
                Ok(c)
            })
            .await,
            Err(e) => Ok(Err(e)),
        };
    match result {
        Ok(Ok(c)) => {
            metrics::counter!("corro_kv_writes_total", "op" => op).increment(1);
            tracing::debug!(op, version = ?c.version, "KV write");
            let mut resp = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "true",
            )
                .into_response();
            crate::consul_headers(&mut resp, st.catalog.read().current());
            resp.headers_mut().remove("x-consul-index");
            resp
        }
        Ok(Err(e)) if e.is_disk_full() => text_error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the disk is full; nothing was written: {e}"),
        ),
        // The transaction may have been written (a change listener or the
        // group's leader failed after the commit).
        Ok(Err(e @ corro_store::StoreError::Panicked(_))) => text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the write's outcome is unknown: {e}"),
        ),
        Ok(Err(e)) => text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the write failed; nothing was written: {e}"),
        ),
        Err(e) => text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the write task failed: {e}"),
        ),
    }
}

/// `PUT /v1/kv/<key>[?flags=]`: the body is the value.
async fn kv_put(
    State(st): State<ConsulState>,
    uri: Uri,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = crate::routes::prepare(&st, q.as_deref()) {
        return r;
    }
    let key = match key_of(&uri) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if key.is_empty() {
        return text_error(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if let Some(r) = conflicting(q.as_deref(), &["cas", "acquire", "release"]) {
        return r;
    }
    let qk = query_keys(q.as_deref());
    let flags = match qk.get("flags") {
        Some(v) => match parse_u64(v) {
            Ok(f) => f,
            Err(r) => return r,
        },
        None => 0,
    };
    if qk.contains_key("cas") {
        return unsupported("Compare-and-set (?cas)", CAS_WHY, CAS_INSTEAD);
    }
    if qk.contains_key("acquire") {
        return unsupported("Lock acquisition (?acquire)", LOCK_WHY, LOCK_INSTEAD);
    }
    if qk.contains_key("release") {
        return unsupported("Lock release (?release)", LOCK_WHY, LOCK_INSTEAD);
    }
    if let Err(r) = writer(&st) {
        return r;
    }
    let value = match read_value(&headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    apply(&st, Write::Put { key, value, flags }).await
}

/// `DELETE /v1/kv/<key>[?recurse]`. `DELETE /v1/kv/?recurse` (the empty
/// key, with `recurse`) deletes every key, as Consul.
async fn kv_delete(State(st): State<ConsulState>, uri: Uri, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = crate::routes::prepare(&st, q.as_deref()) {
        return r;
    }
    let key = match key_of(&uri) {
        Ok(k) => k,
        Err(r) => return r,
    };
    if let Some(r) = conflicting(q.as_deref(), &["recurse", "cas"]) {
        return r;
    }
    let qk = query_keys(q.as_deref());
    let recurse = qk.contains_key("recurse");
    if key.is_empty() && !recurse {
        return text_error(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if qk.contains_key("cas") {
        return unsupported("Compare-and-set (?cas)", CAS_WHY, CAS_INSTEAD);
    }
    let w = if recurse {
        if key.is_empty() {
            tracing::warn!("DELETE /v1/kv/?recurse: deleting every KV key");
        }
        Write::DeleteTree(key)
    } else {
        Write::Delete(key)
    };
    apply(&st, w).await
}

/// `/v1/txn`: refused (see the module doc).
async fn txn() -> Response {
    unsupported(
        "A transaction (/v1/txn)",
        "Its checks (cas, lock, get-and-compare) need that order, and a partial answer would mislead.",
        "Instead: send the writes one by one (each is last-writer-wins), or use Corrosion's own POST /v1/transactions, which applies SQL statements atomically on this agent.",
    )
}

/// `/v1/session/*`: reads answer the truth, that no session exists
/// (`GET list`, `info/<id>`, `node/<node>` → `[]`, as Consul answers when
/// there are none; blocking queries are held until `wait` as Consul holds
/// them until something changes); creating, renewing or destroying one is
/// refused (see the module doc).
async fn session(
    State(st): State<ConsulState>,
    method: axum::http::Method,
    axum::extract::Path(rest): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let read = method == axum::http::Method::GET
        && (rest == "list" || rest.starts_with("info/") || rest.starts_with("node/"));
    if !read {
        return unsupported("A session (/v1/session)", LOCK_WHY, LOCK_INSTEAD);
    }
    match rest.as_str() {
        "info/" => return text_error(StatusCode::BAD_REQUEST, "Missing session"),
        "node/" => return text_error(StatusCode::BAD_REQUEST, "Missing node name"),
        _ => {}
    }
    let (st, p) = match crate::routes::prepare(&st, q.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // An answer that never changes, at an index that rarely moves.
    let topics = [Topic::Claims];
    let (st_ref, topics_ref) = (&st, &topics);
    let eval = || async move {
        let i = st_ref.catalog.read().topic_index(topics_ref);
        Ok::<_, Failed>((i, Answer::json(bytes::Bytes::from_static(b"[]"))))
    };
    blocking::hold(&st, &p, &topics, eval).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_consuls_rules() {
        for ok in [
            "a",
            "a/b/c",
            "folder/",
            "foo bar",
            "foo:bar",
            "con..fig",
            "fabio/noroute.html",
            "percent%2Fkept",
            "ünï/çødé",
        ] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/a", " a", "a ", "a/../b", "..\\x", "a\0b", "\tx", "a/..", ".", "./b", "a/./b",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_percent_decoded_from_the_path() {
        let uri: Uri = "/v1/kv/a%20b/c%2Fd".parse().unwrap();
        assert_eq!(key_of(&uri).unwrap(), "a b/c/d");
        let uri: Uri = "/v1/kv/".parse().unwrap();
        assert_eq!(key_of(&uri).unwrap(), "");
        for bad in [
            "/v1/kv/%2e%2e%2fetc",
            "/v1/kv/%ff",
            "/v1/kv/%2Fa",
            "/v1/kv/a%00",
        ] {
            let uri: Uri = bad.parse().unwrap();
            assert!(key_of(&uri).is_err(), "{bad}");
        }
    }

    #[test]
    fn conflicting_flags_name_the_query_as_go_encodes_it() {
        assert!(conflicting(Some("cas=1"), &["cas", "acquire"]).is_none());
        assert!(conflicting(None, &["cas", "acquire"]).is_none());
        assert!(conflicting(Some("release=x&cas=1"), &["cas", "acquire", "release"]).is_some());
    }

    #[test]
    fn unsigned_numbers_parse_as_go_does() {
        assert_eq!(parse_u64("18446744073709551615").ok(), Some(u64::MAX));
        assert!(parse_u64("18446744073709551616").is_err());
        assert!(parse_u64("-1").is_err());
        assert!(parse_u64("x").is_err());
        assert!(parse_u64("+5").is_err());
        assert!(parse_u64("").is_err());
    }
}
