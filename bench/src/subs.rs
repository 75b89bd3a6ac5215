//! Subscription benchmark over a real agent: `--subs` subscriptions on a
//! table of `--rows` rows, then a steady write load of `--rate` single-row
//! updates per second for `--secs` seconds. Prints write → change-event
//! latency (p50/p99, measured from just before the `POST` to the moment the
//! event line is read) and the agent's CPU time per write with and without
//! the subscriptions (the same load is run first with none: the baseline).

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use corro_testkit::{Agent, Node};
use rand::Rng;

#[derive(Args, Clone)]
pub(crate) struct SubsArgs {
    #[arg(long, default_value_t = 100)]
    subs: usize,
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Writes per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

/// CPU seconds (user + system) the process has used.
pub(crate) fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Runs the write load; returns (writes, agent CPU seconds used).
fn load(agent: &Agent, a: &SubsArgs, sent: &Sent) -> anyhow::Result<(u64, f64)> {
    let client = reqwest::blocking::Client::new();
    let url = agent.url("/v1/transactions");
    let pid = agent.child.id();
    let cpu0 = cpu_secs(pid)?;
    let start = Instant::now();
    let total = a.rate * a.secs;
    let mut rng = rand::rng();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / a.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let row = rng.random_range(1..=a.rows);
        let token = format!("w{i}-{}", rng.random::<u32>());
        sent.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(token.clone(), Instant::now());
        let body = serde_json::json!([[
            "UPDATE todos SET title = ? WHERE id = ?",
            [token, format!("row-{row:08}")]
        ]]);
        let r = client.post(&url).json(&body).send()?;
        anyhow::ensure!(r.status().is_success(), "write failed: {}", r.text()?);
    }
    // Let the last events through before reading the CPU counter.
    std::thread::sleep(Duration::from_millis(500));
    Ok((total, cpu_secs(pid)? - cpu0))
}

pub(crate) fn run(a: SubsArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::new(&dir.path().join("a"), "");
    let agent = node.start();
    let client = reqwest::blocking::Client::builder().timeout(None).build()?;
    agent.bulk_load(a.rows);

    // Warm-up (not measured): the bulk load's checkpoints and the first
    // touches of the table's pages would otherwise land in the baseline.
    let sent: Sent = Arc::default();
    let warm = SubsArgs {
        secs: a.secs.min(5),
        ..a.clone()
    };
    load(&agent, &warm, &sent)?;
    // Baseline: the same load, no subscriptions.
    let (writes, cpu_base) = load(&agent, &a, &sent)?;
    sent.lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clear();

    // Subscriptions: each sees 1/subs of the table.
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let created = Instant::now();
    for k in 0..a.subs {
        let sql = format!(
            "SELECT id, title FROM todos WHERE completed_at % {} = {k}",
            a.subs
        );
        let resp = client
            .post(agent.url("/v1/subscriptions"))
            .json(&serde_json::json!(sql))
            .send()?;
        anyhow::ensure!(resp.status().is_success(), "subscribe failed");
        let (sent, latencies) = (sent.clone(), latencies.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(resp).lines().map_while(Result::ok) {
                if line.starts_with("{\"eoq\"") {
                    let _ = ready_tx.send(());
                }
                if !line.starts_with("{\"change\"") {
                    continue;
                }
                let now = Instant::now();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let token = v["change"][2][1].as_str().unwrap_or_default().to_string();
                if let Some(t) = sent.lock().ok().and_then(|s| s.get(&token).copied())
                    && let Ok(mut l) = latencies.lock()
                {
                    l.push(now - t);
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(60))?;
    }
    let created = created.elapsed();
    let (_, cpu_subs) = load(&agent, &a, &sent)?;
    let mut lat = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    anyhow::ensure!(!lat.is_empty(), "no change events arrived");
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "subs: {} subscriptions on {} rows ({:.2?} to create all, initial rows included); \
         {} writes at {}/s: {} change events, write -> event p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        a.subs,
        a.rows,
        created,
        writes,
        a.rate,
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    println!(
        "subs: agent CPU per write {:.3} ms with subscriptions vs {:.3} ms without (baseline, same load): {:.2}x",
        cpu_subs * 1000.0 / writes as f64,
        cpu_base * 1000.0 / writes as f64,
        cpu_subs / cpu_base.max(1e-9)
    );
    Ok(())
}
