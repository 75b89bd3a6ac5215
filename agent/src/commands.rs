//! Client commands: `exec`, `query`, `reload`, `backup`, `restore`.
//!
//! `exec` and `query` go through the HTTP API (sending the configured bearer
//! token), `reload` through the admin socket; `backup` reads the database
//! directly, `restore` refuses while an agent holds the database. Their
//! output is the command's result, so it goes to stdout.

#![allow(clippy::print_stdout, reason = "command output")]

use std::net::SocketAddr;
use std::path::Path;

use corro_client::{Client, Statement, Value};
use corro_store::RestoreOptions;

use crate::admin::{self, AdminRequest};

fn statement(query: String, params: Vec<String>) -> Statement {
    if params.is_empty() {
        Statement::Simple(query)
    } else {
        Statement::WithParams(query, params.into_iter().map(Value::Text).collect())
    }
}

pub(crate) async fn exec(
    addr: SocketAddr,
    token: Option<String>,
    query: String,
    params: Vec<String>,
    timer: bool,
) -> anyhow::Result<()> {
    let client = Client::new(addr, token);
    let resp = client.execute(&[statement(query, params)]).await?;
    for r in &resp.results {
        // Exactly the line the reference's quick start shows.
        println!("INFO corrosion: Rows affected: {}", r.rows_affected);
    }
    if timer {
        println!("time: {}s", resp.time);
    }
    Ok(())
}

pub(crate) async fn query(
    addr: SocketAddr,
    token: Option<String>,
    query: String,
    params: Vec<String>,
    columns: bool,
    timer: bool,
) -> anyhow::Result<()> {
    let client = Client::new(addr, token);
    let rows = client.query(&statement(query, params)).await?;
    let mut out = String::new();
    if columns {
        out.push_str(&rows.columns.join("|"));
        out.push('\n');
    }
    for row in &rows.rows {
        let cells: Vec<String> = row.iter().map(Value::to_string).collect();
        out.push_str(&cells.join("|"));
        out.push('\n');
    }
    print!("{out}");
    if timer {
        println!("time: {}s", rows.time);
    }
    Ok(())
}

pub(crate) async fn reload(admin_path: &Path) -> anyhow::Result<()> {
    let result = admin::request(admin_path, &AdminRequest::Reload).await?;
    println!("INFO corrosion: schema applied: {}", result["schema"]);
    if !result["services"].is_null() {
        println!(
            "INFO corrosion: service definitions: {}",
            result["services"]
        );
    }
    Ok(())
}

/// `corrosion cluster members`: the admin socket's member list as a table
/// (address, actor id, state, RTT) or JSON.
pub(crate) async fn members(admin_path: &Path, json: bool) -> anyhow::Result<()> {
    let result = admin::request(admin_path, &AdminRequest::Members).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let members: Vec<corro_client::Member> = serde_json::from_value(result)?;
    let mut out = format!(
        "{:<40} {:<32} {:<8} {:>8}\n",
        "ADDR", "ACTOR ID", "STATE", "RTT"
    );
    for m in &members {
        let rtt = m.rtt_ms.map_or("-".to_string(), |r| format!("{r:.1}ms"));
        out.push_str(&format!(
            "{:<40} {:<32} {:<8} {:>8}\n",
            m.addr, m.actor_id, m.state, rtt
        ));
    }
    print!("{out}");
    Ok(())
}

pub(crate) fn backup(db: &Path, dest: &Path) -> anyhow::Result<()> {
    // Read-only: an agent may be running on this database.
    corro_store::backup(db, dest)
        .map_err(|e| anyhow::anyhow!("backing up {}: {e}", db.display()))?;
    tracing::info!(target: "corrosion", "backup written to {}", dest.display());
    Ok(())
}

pub(crate) fn restore(db: &Path, backup: &Path, keep_actor: bool) -> anyhow::Result<()> {
    // Refuse while an agent runs: it holds this lock for its lifetime.
    let _lock = crate::run::lock_db(db)
        .map_err(|e| anyhow::anyhow!("cannot restore: {e:#}; stop the agent first"))?;
    corro_store::restore(db, backup, RestoreOptions { keep_actor })?;
    tracing::info!(target: "corrosion", "restored {} from {}", db.display(), backup.display());
    Ok(())
}

/// `corrosion log set <filter>` / `corrosion log reset`: the running agent's
/// log filter, through the admin socket.
pub(crate) async fn log(admin_path: &Path, set: Option<String>) -> anyhow::Result<()> {
    let req = match set {
        Some(level) => AdminRequest::LogLevel { level },
        None => AdminRequest::LogReset,
    };
    let result = admin::request(admin_path, &req).await?;
    println!(
        "INFO corrosion: log filter is now {}",
        result.as_str().unwrap_or_default()
    );
    Ok(())
}

/// `corrosion sync state`: what this node holds of each actor (head,
/// missing ranges, partially held versions), as a table or JSON.
/// `corrosion sync verify`: the agent checks its database.
pub(crate) async fn verify(admin_path: &Path) -> anyhow::Result<()> {
    admin::request(admin_path, &AdminRequest::Verify).await?;
    println!("ok: SQLite integrity check passed; data, clocks and bookkeeping agree");
    Ok(())
}

pub(crate) async fn sync_state(admin_path: &Path, json: bool) -> anyhow::Result<()> {
    let result = admin::request(admin_path, &AdminRequest::Books).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let mut out = format!(
        "{:<32} {:>10} {:>9} {:>8}  {}\n",
        "ACTOR ID", "HEAD", "MISSING", "PARTIAL", "NEEDED"
    );
    if let Some(actors) = result.as_object() {
        for (actor, b) in actors {
            let needed: Vec<(u64, u64)> = b["needed"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| Some((r[0].as_u64()?, r[1].as_u64()?)))
                        .collect()
                })
                .unwrap_or_default();
            let missing: u64 = needed.iter().map(|(a, b)| b - a + 1).sum();
            let shown: Vec<String> = needed
                .iter()
                .take(5)
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let more = if needed.len() > 5 { ", ..." } else { "" };
            out.push_str(&format!(
                "{:<32} {:>10} {:>9} {:>8}  {}{more}\n",
                actor,
                b["head"].as_u64().unwrap_or(0),
                missing,
                b["partials"].as_u64().unwrap_or(0),
                if shown.is_empty() {
                    "-".to_string()
                } else {
                    shown.join(", ")
                },
            ));
        }
    }
    print!("{out}");
    Ok(())
}

/// `corrosion cluster rejoin`: announce this node again to its seeds and
/// known members (after a partition or an address change).
pub(crate) async fn rejoin(admin_path: &Path) -> anyhow::Result<()> {
    let result = admin::request(admin_path, &AdminRequest::Rejoin).await?;
    println!(
        "INFO corrosion: asked {} peers to let this node rejoin",
        result.as_u64().unwrap_or(0)
    );
    Ok(())
}
