//! `corrosion consul sync`: the Consul bridge as a separate process, talking
//! to the agent through its HTTP API (`/v1/queries` to read this node's
//! rows, `/v1/transactions` to write rounds), as the reference's command
//! does. The agent must serve the discovery schema. Runs until SIGTERM or
//! SIGINT.

use corro_catalog::model;
use corro_client::{Client, Statement, Value};
use corro_consul_bridge::consul::{CheckRow, ServiceRow};
use corro_consul_bridge::{Sink, Snapshot};
use corro_store::SqlValue;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

struct HttpSink {
    client: Client,
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(n) => n.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Integer(n) => *n,
        Value::Real(f) => *f as i64,
        other => text(other).trim().parse().unwrap_or(0),
    }
}

fn param(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(n) => Value::Integer(*n),
        SqlValue::Real(f) => Value::Real(*f),
        SqlValue::Text(t) => Value::Text(t.clone()),
        SqlValue::Blob(b) => Value::Blob(b.clone()),
    }
}

impl HttpSink {
    async fn rows(&self, sql: &str, node: &str) -> Result<Vec<Vec<Value>>, String> {
        self.client
            .query(&Statement::WithParams(
                sql.into(),
                vec![Value::Text(node.into())],
            ))
            .await
            .map(|r| r.rows)
            .map_err(|e| e.to_string())
    }

    /// False while another live agent that started earlier claims `node`
    /// (the agent's own claim is the one to compare).
    async fn allowed(&self, node: &str) -> Result<bool, String> {
        let me = self
            .client
            .health()
            .await
            .map_err(|e| e.to_string())?
            .actor_id;
        let live: Vec<String> = self
            .client
            .members()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|m| m.state != "down")
            .map(|m| m.actor_id)
            .collect();
        let claims = self
            .rows(
                "SELECT actor_id, started_at FROM consul_node_claims WHERE node = ?",
                node,
            )
            .await?;
        let claims: Vec<(String, i64)> = claims.iter().map(|r| (text(&r[0]), int(&r[1]))).collect();
        let Some(mine) = claims.iter().find(|(a, _)| *a == me).cloned() else {
            return Ok(true);
        };
        Ok(!claims.iter().any(|(a, t)| {
            *a != me && live.contains(a) && (*t, a.as_str()) < (mine.1, mine.0.as_str())
        }))
    }
}

impl Sink for HttpSink {
    async fn current(&self, node: &str) -> Result<(Snapshot, bool), String> {
        let mut snap = Snapshot::default();
        for r in self
            .rows(
                "SELECT id, name, tags, meta, port, address, weights, tagged_addresses FROM consul_services WHERE node = ? AND source IS NULL",
                node,
            )
            .await?
        {
            snap.services.insert(
                text(&r[0]),
                ServiceRow {
                    name: text(&r[1]),
                    tags: model::parse_tags(&text(&r[2])),
                    meta: model::parse_meta(&text(&r[3])),
                    port: int(&r[4]),
                    address: text(&r[5]),
                    weights: model::parse_weights(&text(&r[6])),
                    tagged_addresses: model::parse_tagged_addresses(&text(&r[7])),
                },
            );
        }
        for r in self
            .rows(
                "SELECT id, service_id, service_name, name, status, output, notes, type FROM consul_checks WHERE node = ? AND source IS NULL",
                node,
            )
            .await?
        {
            snap.checks.insert(
                text(&r[0]),
                CheckRow {
                    service_id: text(&r[1]),
                    service_name: text(&r[2]),
                    name: text(&r[3]),
                    status: corro_catalog::Status::parse(&text(&r[4])).as_str().to_string(),
                    output: text(&r[5]),
                    notes: text(&r[6]),
                    kind: text(&r[7]),
                },
            );
        }
        Ok((snap, self.allowed(node).await?))
    }

    async fn write(&self, statements: Vec<corro_consul_bridge::Statement>) -> Result<(), String> {
        let st: Vec<Statement> = statements
            .into_iter()
            .map(|(sql, params)| Statement::WithParams(sql, params.iter().map(param).collect()))
            .collect();
        self.client
            .execute(&st)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Runs the bridge against the agent at `config.api.addr` until a signal.
pub(crate) async fn run(config: &Config, token: Option<String>) -> anyhow::Result<()> {
    let Some(client_cfg) = &config.consul.client else {
        anyhow::bail!(
            "`corrosion consul sync` needs a [consul.client] section (the local Consul agent to mirror)"
        );
    };
    let node = super::identity(config, config.gossip.addr).name;
    let settings = super::bridge::settings(client_cfg, config.consul.sync_output)?;
    let sink = HttpSink {
        client: Client::new(config.api.addr, token),
    };
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        stop_on_signal.cancel();
    });
    corro_consul_bridge::run(settings, &node, sink, stop).await;
    Ok(())
}
