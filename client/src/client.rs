//! [`Client`]: the agent's HTTP API from Rust.
//!
//! Every call sends the bearer token when one is configured. Non-2xx answers
//! become [`ClientError::Api`] with the agent's error message; a query's
//! `{"error": ...}` event becomes the same error.

use std::net::SocketAddr;

use futures::StreamExt;

use crate::types::{
    ApiError, ExecResponse, HealthResponse, Member, QueryEvent, Statement, TableStatsRequest,
    TableStatsResponse, Value,
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
        let resp = req.send().await.map_err(|source| ClientError::Http {
            addr: self.addr,
            source,
        })?;
        if resp.status().is_success() {
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
        let resp = self
            .send(
                self.request(reqwest::Method::POST, "/v1/queries")
                    .json(statement),
            )
            .await?;
        let addr = self.addr;
        let state = (
            resp.bytes_stream().boxed(),
            Vec::new(),
            std::collections::VecDeque::new(),
            false,
        );
        Ok(futures::stream::unfold(
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
        ))
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
            }
        }
        Err(ClientError::Decode(
            "the query stream ended before its end-of-query event".into(),
        ))
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/v1/health"))
            .await
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

fn parse_event(line: &[u8]) -> Result<QueryEvent, ClientError> {
    serde_json::from_slice(line).map_err(|e| ClientError::Decode(e.to_string()))
}
