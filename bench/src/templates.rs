//! Template benchmarks over real agents.
//!
//! - `latency`: two agents; a write on B, and the time until A's rendered
//!   file holds it (default wait: 100 ms min, 400 ms max). Baseline, from
//!   the same run: the time until A's `/v1/queries` returns the row (the
//!   replication alone), and the wait's floor.
//! - `throughput`: a template over `--rows` rows rendered by the agent with
//!   `wait = "1ms:1ms"` while the table changes continuously: renders per
//!   second and agent CPU per render (CPU with the template minus CPU for
//!   the same write load without it, over the renders). Baseline: plain
//!   SQLite in this process reading the same rows, formatting the same text
//!   and writing the file (temp, fsync, rename) as fast as it can.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use corro_testkit::{Agent, Node};

use crate::subs::cpu_secs;

#[derive(Subcommand)]
pub(crate) enum TemplatesCmd {
    /// Write on another agent -> destination file updated: p50/p99.
    Latency(LatencyArgs),
    /// Renders/s and agent CPU per render for a template over many rows.
    Throughput(ThroughputArgs),
}

#[derive(Args)]
pub(crate) struct LatencyArgs {
    #[arg(long, default_value_t = 100)]
    writes: usize,
}

#[derive(Args)]
pub(crate) struct ThroughputArgs {
    #[arg(long, default_value_t = 10_000)]
    rows: u64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

pub(crate) fn run(cmd: TemplatesCmd) -> anyhow::Result<()> {
    match cmd {
        TemplatesCmd::Latency(a) => latency(a),
        TemplatesCmd::Throughput(a) => throughput(a),
    }
}

const LIST: &str = "<% for t in sql(\"SELECT id, title FROM todos\") { %>\
    server <%= t.title %>;\n<% } %>";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn write(agent: &Agent, client: &reqwest::blocking::Client, sql: &str) -> anyhow::Result<()> {
    let r = client
        .post(agent.url("/v1/transactions"))
        .json(&serde_json::json!([sql]))
        .send()?;
    anyhow::ensure!(r.status().is_success(), "write failed: {}", r.text()?);
    Ok(())
}

fn latency(a: LatencyArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("list.rhai"), LIST)?;
    let node_a = Node::new(&d.join("a"), "");
    node_a.append_config(&format!(
        "[[template]]\nsource = \"{}\"\ndestination = \"{}\"\n",
        d.join("list.rhai").display(),
        d.join("list.txt").display()
    ));
    let agent_a = node_a.start();
    let node_b = Node::joining(&d.join("b"), &agent_a);
    let agent_b = node_b.start();
    let client = reqwest::blocking::Client::new();
    let out = d.join("list.txt");
    let (mut rendered, mut replicated) = (Vec::new(), Vec::new());
    for i in 0..a.writes {
        let marker = format!("m{i}x");
        let t0 = Instant::now();
        write(
            &agent_b,
            &client,
            &format!("INSERT INTO todos (id, title) VALUES ('{marker}', '{marker}')"),
        )?;
        // Replication alone: A answers the row.
        let mut rep = None;
        let mut ren = None;
        let deadline = t0 + Duration::from_secs(10);
        while (rep.is_none() || ren.is_none()) && Instant::now() < deadline {
            if rep.is_none() {
                let r = client
                    .post(agent_a.url("/v1/queries"))
                    .json(&serde_json::json!(format!(
                        "SELECT 1 FROM todos WHERE id = '{marker}'"
                    )))
                    .send()?
                    .text()?;
                if r.contains("\"row\"") {
                    rep = Some(t0.elapsed());
                }
            }
            if ren.is_none()
                && std::fs::read_to_string(&out)
                    .unwrap_or_default()
                    .contains(&marker)
            {
                ren = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        replicated.push(rep.ok_or_else(|| anyhow::anyhow!("write {i} never replicated"))?);
        rendered.push(ren.ok_or_else(|| anyhow::anyhow!("write {i} never rendered"))?);
        // Spread the writes so each one is its own burst.
        std::thread::sleep(Duration::from_millis(200));
    }
    rendered.sort();
    replicated.sort();
    println!(
        "templates latency: {} writes on B, template on A (wait 100ms:400ms)",
        a.writes
    );
    println!(
        "  write on B -> A's file updated: p50 {:.1} ms  p99 {:.1} ms",
        ms(percentile(&rendered, 0.5)),
        ms(percentile(&rendered, 0.99))
    );
    println!(
        "  baseline, write on B -> row readable on A: p50 {:.1} ms  p99 {:.1} ms",
        ms(percentile(&replicated, 0.5)),
        ms(percentile(&replicated, 0.99))
    );
    println!(
        "  template share (p50 rendered - p50 replicated - 100 ms wait): {:.1} ms",
        ms(percentile(&rendered, 0.5)) - ms(percentile(&replicated, 0.5)) - 100.0
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Steady single-row updates for `secs`; the agent's CPU seconds used.
fn churn(agent: &Agent, rows: u64, secs: u64) -> anyhow::Result<(u64, f64)> {
    let client = reqwest::blocking::Client::new();
    let pid = agent.child.id();
    let cpu0 = cpu_secs(pid)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let row = n % rows + 1;
        write(
            agent,
            &client,
            &format!("UPDATE todos SET title = 'title {n}' WHERE id = printf('row-%08d', {row})"),
        )?;
        n += 1;
        // About 200 writes/s: far more changes than renders.
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok((n, cpu_secs(pid)? - cpu0))
}

fn throughput(a: ThroughputArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("list.rhai"), LIST)?;

    // Without the template: the write load's own cost.
    let plain = Node::new(&d.join("plain"), "");
    let plain_agent = plain.start();
    plain_agent.bulk_load(a.rows);
    let (plain_writes, plain_cpu) = churn(&plain_agent, a.rows, a.secs)?;
    drop(plain_agent);

    let node = Node::new(&d.join("tpl"), "");
    node.enable_metrics();
    node.append_config(&format!(
        "[[template]]\nsource = \"{}\"\ndestination = \"{}\"\nwait = \"1ms:1ms\"\n",
        d.join("list.rhai").display(),
        d.join("list.txt").display()
    ));
    let agent = node.start();
    agent.bulk_load(a.rows);
    std::thread::sleep(Duration::from_secs(1));
    let renders0 = agent.counter("corro_tpl_renders_total");
    let (writes, cpu) = churn(&agent, a.rows, a.secs)?;
    let renders = agent.counter("corro_tpl_renders_total") - renders0;
    let bytes = std::fs::metadata(d.join("list.txt"))?.len();

    // Baseline: plain SQLite, same rows, same text, same file handling.
    let db = node.db.clone();
    drop(agent);
    let conn = rusqlite::Connection::open(&db)?;
    let dest = d.join("plain.txt");
    let start = Instant::now();
    let mut plain_renders = 0u64;
    while start.elapsed() < Duration::from_secs(a.secs.min(5)) {
        let mut stmt = conn.prepare_cached("SELECT id, title FROM todos")?;
        let mut rows = stmt.query([])?;
        let mut text = String::new();
        while let Some(r) = rows.next()? {
            let title: String = r.get(1)?;
            text.push_str("server ");
            text.push_str(&title);
            text.push_str(";\n");
        }
        write_atomic(&dest, text.as_bytes())?;
        plain_renders += 1;
    }
    let plain_rate = plain_renders as f64 / start.elapsed().as_secs_f64();
    let rate = renders / a.secs as f64;
    let per_render =
        (cpu - plain_cpu * writes as f64 / plain_writes.max(1) as f64) / renders.max(1.0);
    println!(
        "templates throughput: {} rows, {bytes} bytes rendered, {writes} single-row writes over {}s",
        a.rows, a.secs
    );
    println!("  agent renders/s under churn (wait 1ms:1ms): {rate:.1}");
    println!("  agent CPU per render: {:.1} ms", per_render * 1000.0);
    println!(
        "  baseline, plain SQLite read + format + atomic write: {plain_rate:.1}/s ({:.1} ms each)",
        1000.0 / plain_rate
    );
    println!(
        "  ratio agent renders/s / baseline: {:.2} (bounded by the ~200 writes/s of churn)",
        rate / plain_rate
    );
    println!(
        "  ratio by CPU (baseline ms per render / agent CPU ms per render: the render rate the agent's CPU allows): {:.2}",
        (1.0 / plain_rate) / per_render.max(1e-9)
    );
    Ok(())
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = dest.parent().ok_or_else(|| anyhow::anyhow!("no parent"))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest)?;
    Ok(())
}
