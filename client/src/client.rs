//! [`Client`]: the agent's HTTP API from Rust.
//!
//! Every call sends the bearer token when one is configured. Non-2xx answers
//! become [`ClientError::Api`] with the agent's error message; a query's
//! `{"error": ...}` event becomes the same error.

use std::net::SocketAddr;

use futures::StreamExt;

use crate::types::{
    ApiError, DiscoveryAnswer, DiscoveryIndex, ExecResponse, HealthResponse, Member, NotifyEvent,
    QueryEvent, Statement, TableStatsRequest, TableStatsResponse, Value,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent could not be reached or the connection broke.
    #[error("talking to the agent at {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The agent's answer could not be understood.
    #[error("unexpected answer from the agent: {0}")]
    Decode(String),
}

/// A query's complete result.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Seconds the agent spent running the query.
    pub time: f64,
}

/// Client for one agent.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        // reqwest builds a TLS configuration even for plain HTTP; it must
        // find the one crypto provider the process uses (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client {
            addr,
            base: format!("http://{addr}"),
            token,
            http: reqwest::Client::new(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        self.send_accepting(req, false).await
    }

    /// [`Client::send`], with a 404 returned as an answer when `not_found`
    /// is one (Consul's KV answers a missing key so).
    async fn send_accepting(
        &self,
        req: reqwest::RequestBuilder,
        not_found: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|source| ClientError::Http {
            addr: self.addr,
            source,
        })?;
        if resp.status().is_success()
            || (not_found && resp.status() == reqwest::StatusCode::NOT_FOUND)
        {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        Err(ClientError::Api { status, message })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            addr: self.addr,
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `PUT` to one of the Consul agent routes (`path` with its query
    /// string), with a JSON body or none; `Ok` on 200.
    pub async fn consul_put(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(), ClientError> {
        let req = self.request(reqwest::Method::PUT, path);
        let req = match body {
            Some(b) => req.json(b),
            None => req,
        };
        self.send(req).await.map(|_| ())
    }

    /// `GET /v1/kv/<key>` with the query `query` (`recurse`, `keys`,
    /// `raw`...): the body, or `None` when the agent answers 404 (no such
    /// key or nothing under the prefix).
    pub async fn kv_get(
        &self,
        key: &str,
        query: &str,
    ) -> Result<Option<bytes::Bytes>, ClientError> {
        let req = self.request(reqwest::Method::GET, &kv_path(key, query));
        let resp = self.send_accepting(req, true).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        resp.bytes()
            .await
            .map(Some)
            .map_err(|source| ClientError::Http {
                addr: self.addr,
                source,
            })
    }

    /// A blocking `GET /v1/kv/<key>?<query>&index=&wait=`: returns the
    /// answer's `X-Consul-Index` once it differs from `index` (or after
    /// `wait_secs`, with the same one). 404 is an answer like any other.
    pub async fn kv_index(
        &self,
        key: &str,
        query: &str,
        index: u64,
        wait_secs: u64,
    ) -> Result<u64, ClientError> {
        let q = if query.is_empty() {
            format!("index={index}&wait={wait_secs}s")
        } else {
            format!("{query}&index={index}&wait={wait_secs}s")
        };
        let req = self.request(reqwest::Method::GET, &kv_path(key, &q));
        let resp = self.send_accepting(req, true).await?;
        let got = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| ClientError::Decode("no X-Consul-Index on a KV answer".into()))?;
        // Read the body so the connection can be reused.
        let _ = resp.bytes().await;
        Ok(got)
    }

    /// `PUT /v1/kv/<key>?flags=`: stores `value` under `key`.
    pub async fn kv_put(&self, key: &str, value: Vec<u8>, flags: u64) -> Result<(), ClientError> {
        let query = if flags == 0 {
            String::new()
        } else {
            format!("flags={flags}")
        };
        let req = self
            .request(reqwest::Method::PUT, &kv_path(key, &query))
            .body(value);
        self.send(req).await.map(|_| ())
    }

    /// `DELETE /v1/kv/<key>[?recurse]`.
    pub async fn kv_delete(&self, key: &str, recurse: bool) -> Result<(), ClientError> {
        let query = if recurse { "recurse" } else { "" };
        let req = self.request(reqwest::Method::DELETE, &kv_path(key, query));
        self.send(req).await.map(|_| ())
    }

    /// `GET` of one of the Consul agent routes, decoded as JSON.
    pub async fn consul_get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST /v1/transactions`: runs the statements as one transaction.
    pub async fn execute(&self, statements: &[Statement]) -> Result<ExecResponse, ClientError> {
        self.json(
            self.request(reqwest::Method::POST, "/v1/transactions")
                .json(statements),
        )
        .await
    }

    /// `POST /v1/queries`, as a stream of events.
    pub async fn query_events(
        &self,
        statement: &Statement,
    ) -> Result<impl futures::Stream<Item = Result<QueryEvent, ClientError>> + use<>, ClientError>
    {
        self.query_events_within(statement, None).await
    }

    /// `POST /v1/queries?timeout=`: the agent stops the statement itself
    /// once `timeout` has passed (`None`: the agent's default).
    pub async fn query_events_within(
        &self,
        statement: &Statement,
        timeout: Option<std::time::Duration>,
    ) -> Result<impl futures::Stream<Item = Result<QueryEvent, ClientError>> + use<>, ClientError>
    {
        let path = match timeout {
            Some(t) => format!("/v1/queries?timeout={}", t.as_secs_f64().max(0.001)),
            None => "/v1/queries".to_string(),
        };
        let resp = self
            .send(self.request(reqwest::Method::POST, &path).json(statement))
            .await?;
        Ok(ndjson(resp, self.addr))
    }

    /// `POST /v1/subscriptions`: the current rows, then every change. The
    /// returned [`Subscription`] reconnects by itself (resuming after the
    /// last change it delivered) when the connection drops.
    pub async fn subscribe(&self, statement: &Statement) -> Result<Subscription, ClientError> {
        let resp = self
            .send(
                self.request(reqwest::Method::POST, "/v1/subscriptions")
                    .json(statement),
            )
            .await?;
        Subscription::from_response(self.clone(), resp, None)
    }

    /// `GET /v1/subscriptions/:id`, from the start (`from: None`: all rows,
    /// then changes) or after change `from`.
    pub async fn resubscribe(
        &self,
        id: &str,
        from: Option<u64>,
    ) -> Result<Subscription, ClientError> {
        let resp = self.open_subscription(id, from).await?;
        Subscription::from_response(self.clone(), resp, from)
    }

    async fn open_subscription(
        &self,
        id: &str,
        from: Option<u64>,
    ) -> Result<reqwest::Response, ClientError> {
        let path = match from {
            Some(f) => format!("/v1/subscriptions/{id}?from={f}"),
            None => format!("/v1/subscriptions/{id}"),
        };
        self.send(self.request(reqwest::Method::GET, &path)).await
    }

    /// `POST /v1/updates/:table`: a notification per changed row.
    pub async fn updates(
        &self,
        table: &str,
    ) -> Result<impl futures::Stream<Item = Result<NotifyEvent, ClientError>> + use<>, ClientError>
    {
        let resp = self
            .send(self.request(reqwest::Method::POST, &format!("/v1/updates/{table}")))
            .await?;
        Ok(ndjson(resp, self.addr))
    }

    /// `POST /v1/queries`, collected. An error event becomes an error.
    pub async fn query(&self, statement: &Statement) -> Result<QueryRows, ClientError> {
        let events = self.query_events(statement).await?;
        futures::pin_mut!(events);
        let mut out = QueryRows {
            columns: Vec::new(),
            rows: Vec::new(),
            time: 0.0,
        };
        while let Some(ev) = events.next().await {
            match ev? {
                QueryEvent::Columns(c) => out.columns = c,
                QueryEvent::Row(_, cells) => out.rows.push(cells),
                QueryEvent::EndOfQuery { time, .. } => {
                    out.time = time;
                    return Ok(out);
                }
                QueryEvent::Error(message) => {
                    return Err(ClientError::Api {
                        status: 200,
                        message,
                    });
                }
                QueryEvent::Change(..) => {}
            }
        }
        Err(ClientError::Decode(
            "the query stream ended before its end-of-query event".into(),
        ))
    }

    /// `POST /v1/discovery`: one discovery helper call (as JSON), answered
    /// with the catalog index it was computed at.
    pub async fn discovery(
        &self,
        call: &serde_json::Value,
    ) -> Result<DiscoveryAnswer, ClientError> {
        self.json(
            self.request(reqwest::Method::POST, "/v1/discovery")
                .json(call),
        )
        .await
    }

    /// `GET /v1/discovery/index`: waits (up to `wait_secs`) until the
    /// catalog index differs from `index`; the index then.
    /// `what`: `catalog`, `kv` or `any` (the changes that count).
    pub async fn discovery_index(
        &self,
        index: u64,
        wait_secs: u64,
        what: &str,
    ) -> Result<u64, ClientError> {
        let a: DiscoveryIndex = self
            .json(self.request(
                reqwest::Method::GET,
                &format!("/v1/discovery/index?index={index}&wait={wait_secs}s&what={what}"),
            ))
            .await?;
        Ok(a.index)
    }

    /// `GET /v1/health` (the answer also when it is 503: behind or
    /// unhealthy, with the reasons).
    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        let resp = self
            .request(reqwest::Method::GET, "/v1/health")
            .send()
            .await
            .map_err(|source| ClientError::Http {
                addr: self.addr,
                source,
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Http {
            addr: self.addr,
            source,
        })?;
        match serde_json::from_slice::<HealthResponse>(&bytes) {
            Ok(h) if status == 200 || status == 503 => Ok(h),
            _ => Err(ClientError::Api {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    /// `GET /v1/members`.
    pub async fn members(&self) -> Result<Vec<Member>, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/members"))
            .await
    }

    /// `POST /v1/table_stats`.
    pub async fn table_stats(
        &self,
        tables: Vec<String>,
    ) -> Result<TableStatsResponse, ClientError> {
        self.json(
            self.request(reqwest::Method::POST, "/v1/table_stats")
                .json(&TableStatsRequest { tables }),
        )
        .await
    }
}

fn parse_event<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(line).map_err(|e| ClientError::Decode(e.to_string()))
}

type Lines<T> = futures::stream::BoxStream<'static, Result<T, ClientError>>;

/// An NDJSON response body as a stream of parsed lines.
fn ndjson<T: serde::de::DeserializeOwned + Send + 'static>(
    resp: reqwest::Response,
    addr: SocketAddr,
) -> Lines<T> {
    let state = (
        resp.bytes_stream().boxed(),
        Vec::new(),
        std::collections::VecDeque::new(),
        false,
    );
    futures::stream::unfold(
        state,
        move |(mut body, mut buf, mut ready, mut done)| async move {
            loop {
                if let Some(ev) = ready.pop_front() {
                    return Some((ev, (body, buf, ready, done)));
                }
                if done {
                    return None;
                }
                match body.next().await {
                    Some(Ok(chunk)) => {
                        buf.extend_from_slice(&chunk);
                        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=pos).collect();
                            if !line.iter().all(u8::is_ascii_whitespace) {
                                ready.push_back(parse_event(&line));
                            }
                        }
                    }
                    Some(Err(source)) => {
                        done = true;
                        ready.push_back(Err(ClientError::Http { addr, source }));
                    }
                    None => {
                        done = true;
                        if !buf.iter().all(u8::is_ascii_whitespace) {
                            ready.push_back(parse_event(&buf));
                        }
                    }
                }
            }
        },
    )
    .boxed()
}

/// How long a [`Subscription`] keeps trying to reconnect before it gives up.
const RESUME_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// A live subscription. [`Subscription::next`] yields the initial
/// `columns`/`row`/`eoq` events, then `change` events. When the connection
/// drops it reconnects with `GET /v1/subscriptions/:id?from=<last change>`
/// (backing off from 100 ms to 2 s, for up to 30 s), so the caller sees one
/// unbroken sequence of change ids. An `{"error"}` event from the agent is
/// final and comes back as [`ClientError::Api`].
pub struct Subscription {
    client: Client,
    id: String,
    last_change: Option<u64>,
    events: Option<Lines<QueryEvent>>,
}

impl Subscription {
    fn from_response(
        client: Client,
        resp: reqwest::Response,
        from: Option<u64>,
    ) -> Result<Subscription, ClientError> {
        let id = resp
            .headers()
            .get("corro-query-id")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Decode("no corro-query-id header".into()))?
            .to_string();
        let addr = client.addr;
        Ok(Subscription {
            client,
            id,
            last_change: from,
            events: Some(ndjson(resp, addr)),
        })
    }

    /// The subscription id (`corro-query-id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The last change id seen (from `eoq` or a `change`).
    pub fn last_change(&self) -> Option<u64> {
        self.last_change
    }

    /// The next event; `None` after a final error.
    pub async fn next(&mut self) -> Option<Result<QueryEvent, ClientError>> {
        let mut deadline = None;
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            if let Some(events) = self.events.as_mut() {
                match events.next().await {
                    Some(Ok(QueryEvent::Error(message))) => {
                        self.events = None;
                        return Some(Err(ClientError::Api {
                            status: 200,
                            message,
                        }));
                    }
                    Some(Ok(ev)) => {
                        match &ev {
                            QueryEvent::EndOfQuery { change_id, .. } => {
                                self.last_change = *change_id;
                            }
                            QueryEvent::Change(_, _, _, id) => {
                                if self.last_change.is_some_and(|l| *id <= l) {
                                    continue; // already delivered
                                }
                                self.last_change = Some(*id);
                            }
                            _ => {}
                        }
                        return Some(Ok(ev));
                    }
                    // The connection dropped (or ended): resume below.
                    Some(Err(ClientError::Http { .. })) | None => self.events = None,
                    Some(Err(e)) => {
                        self.events = None;
                        return Some(Err(e));
                    }
                }
            }
            // Resume after the last change (or from the start if none yet).
            let started = *deadline.get_or_insert_with(std::time::Instant::now);
            match self
                .client
                .open_subscription(&self.id, self.last_change)
                .await
            {
                Ok(resp) => {
                    self.events = Some(ndjson(resp, self.client.addr));
                }
                Err(e @ ClientError::Api { .. }) => return Some(Err(e)),
                Err(e) => {
                    if started.elapsed() > RESUME_FOR {
                        return Some(Err(e));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    }
}

/// Characters of a KV key sent as they are in the path: RFC 3986's
/// unreserved ones and `/` (everything else is percent-encoded).
const KEY_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// `/v1/kv/<key>[?query]`, the key percent-encoded.
fn kv_path(key: &str, query: &str) -> String {
    let key = percent_encoding::utf8_percent_encode(key, KEY_KEEP);
    if query.is_empty() {
        format!("/v1/kv/{key}")
    } else {
        format!("/v1/kv/{key}?{query}")
    }
}
