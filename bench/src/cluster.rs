//! Cluster benchmarks over real agents on loopback (the `corrosion` binary
//! next to this one, or `$CORROSION_BIN`), started with `corro-testkit`.
//!
//! - `stress`: N agents, transactions of 20 inserts sent to random agents by
//!   concurrent clients; time from the last acknowledged write until every
//!   agent holds identical bookkeeping and row counts (baseline: how long
//!   the writes themselves took).
//! - `latency`: a write to a random agent, then the time until the row is
//!   readable in every agent's SQLite file (polled read-only, as local
//!   readers do); p50/p99 and broadcast messages per write (from each
//!   agent's Prometheus counters).
//! - `catchup`: a new agent with an empty database joins one holding R rows;
//!   rows/s until its bookkeeping matches (baseline: the bulk load on the
//!   first agent).
//! - `failover`: `kill -9` a random agent of N, time until every other agent
//!   lists it as down; restart it; repeat.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use corro_testkit::{Agent, Node};
use rand::Rng;

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Concurrent writers on random agents; time to full convergence.
    Stress(StressArgs),
    /// Write -> visible on every agent: p50/p99 and messages per write.
    Latency(LatencyArgs),
    /// A new agent catches up a large database: rows/s.
    Catchup(CatchupArgs),
    /// kill -9 -> marked down everywhere: p50/max over trials.
    Failover(FailoverArgs),
    /// A chain-bootstrapped cluster; a write as soon as every API answers
    /// -> on every member: max over clusters.
    Formation(FormationArgs),
    /// A peer joins during a sustained single-row write load: how far
    /// behind the writer it stays once caught up.
    Lag(LagArgs),
}

#[derive(Args)]
pub(crate) struct StressArgs {
    #[arg(long, default_value_t = 30)]
    agents: usize,
    /// Transactions (each of `--statements` inserts).
    #[arg(long, default_value_t = 200)]
    inputs: usize,
    #[arg(long, default_value_t = 20)]
    statements: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

#[derive(Args)]
pub(crate) struct LatencyArgs {
    #[arg(long, default_value_t = 20)]
    agents: usize,
    #[arg(long, default_value_t = 200)]
    writes: usize,
}

#[derive(Args)]
pub(crate) struct CatchupArgs {
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Instead of `--rows` in a few big versions: this many single-row
    /// versions (written straight into the first agent's store before it
    /// starts; the baseline is that write rate).
    #[arg(long)]
    versions: Option<u64>,
}

#[derive(Args)]
pub(crate) struct LagArgs {
    /// Concurrent writer clients (single-row transactions, as fast as the
    /// agent takes them).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds of load before the peer joins, and after.
    #[arg(long, default_value_t = 5)]
    before: u64,
    #[arg(long, default_value_t = 10)]
    after: u64,
}

#[derive(Args)]
pub(crate) struct FormationArgs {
    #[arg(long, default_value_t = 5)]
    agents: usize,
    #[arg(long, default_value_t = 10)]
    clusters: usize,
}

#[derive(Args)]
pub(crate) struct FailoverArgs {
    #[arg(long, default_value_t = 20)]
    agents: usize,
    #[arg(long, default_value_t = 10)]
    trials: usize,
}

pub(crate) fn run(cmd: ClusterCmd) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    match cmd {
        ClusterCmd::Stress(a) => stress(dir.path(), a),
        ClusterCmd::Latency(a) => latency(dir.path(), a),
        ClusterCmd::Catchup(a) => catchup(dir.path(), a),
        ClusterCmd::Failover(a) => failover(dir.path(), a),
        ClusterCmd::Formation(a) => formation(dir.path(), a),
        ClusterCmd::Lag(a) => lag(dir.path(), a),
    }
}

/// The versions of `actor` that `node` holds without a gap (from 1).
fn contiguous(node: &Node, actor: &str) -> u64 {
    let books = node.books();
    let Some(b) = books.get(actor) else {
        return 0;
    };
    let head = b["head"].as_u64().unwrap_or(0);
    match b["needed"].as_array().and_then(|n| n.first()) {
        Some(first) => first[0].as_u64().unwrap_or(1).saturating_sub(1),
        None => head,
    }
}

fn lag(dir: &Path, a: LagArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let writer_node = Node::new(&dir.join("w"), "");
    let writer = writer_node.start();
    let url = writer.url("/v1/transactions");
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for c in 0..a.clients {
        let (url, stop, written) = (url.clone(), stop.clone(), written.clone());
        threads.push(std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::json!([format!(
                    "INSERT INTO todos (id, title) VALUES ('c{c}-{i}', 'x')"
                )]);
                if client
                    .post(&url)
                    .json(&body)
                    .send()
                    .is_ok_and(|r| r.status().is_success())
                {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    // The writer's head over time (sampled), to turn a version gap into time.
    let head = |agent: &Agent| -> u64 {
        reqwest::blocking::get(agent.url("/v1/health"))
            .ok()
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .and_then(|v| v["head"].as_u64())
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    while t0.elapsed() < Duration::from_secs(a.before) {
        samples.push((t0.elapsed(), head(&writer)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let peer_node = Node::joining(&dir.join("p"), &writer);
    let joined = t0.elapsed();
    let _peer = peer_node.start();
    let actor = writer.actor.clone();
    let mut lags: Vec<(Duration, Duration)> = Vec::new();
    let mut caught_up_at = None;
    while t0.elapsed() < joined + Duration::from_secs(a.after) {
        samples.push((t0.elapsed(), head(&writer)));
        let now = t0.elapsed();
        let held = contiguous(&peer_node, &actor);
        // When did the writer reach what the peer holds now?
        let reached = samples
            .iter()
            .find(|(_, h)| *h >= held)
            .map_or(now, |(t, _)| *t);
        let behind = now.saturating_sub(reached);
        if caught_up_at.is_none() && behind < Duration::from_secs(1) && held > 0 {
            caught_up_at = Some(now);
        }
        if caught_up_at.is_some() {
            lags.push((now, behind));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let load_secs = t0.elapsed().as_secs_f64();
    let final_head = head(&writer);
    let stopped = Instant::now();
    while contiguous(&peer_node, &actor) < final_head {
        anyhow::ensure!(
            stopped.elapsed() < Duration::from_secs(60),
            "the peer never caught up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let converged = stopped.elapsed();
    let mut behind: Vec<Duration> = lags.iter().map(|(_, b)| *b).collect();
    behind.sort();
    let pct = |p: f64| {
        behind
            .get(((behind.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "lag: {} single-row writes/s from {} clients; a peer joined after {:.1}s",
        (written.load(Ordering::Relaxed) as f64 / load_secs).round(),
        a.clients,
        joined.as_secs_f64()
    );
    println!(
        "  peer within 1 s of the writer {:.2?} after joining; then behind by p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
        caught_up_at
            .map(|c| c.saturating_sub(joined))
            .unwrap_or_default(),
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        behind.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        behind.len()
    );
    println!(
        "  peer identical to the writer {:.0} ms after the load stopped",
        converged.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Whether `node`'s database file holds todo `id`.
fn holds(node: &Node, id: &str) -> bool {
    rusqlite::Connection::open_with_flags(&node.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row("SELECT count(*) FROM todos WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
        })
        .is_ok_and(|n| n == 1)
}

fn formation(dir: &Path, a: FormationArgs) -> anyhow::Result<()> {
    let client = reqwest::blocking::Client::new();
    let mut worst_per_cluster = Vec::new();
    for c in 0..a.clusters {
        let base = dir.join(format!("c{c}"));
        let first = Node::new(&base.join("n0"), "");
        let mut agents = vec![first.start()];
        let mut nodes = vec![first];
        for i in 1..a.agents {
            // A chain: each joins the one started before it.
            let node = Node::joining(&base.join(format!("n{i}")), &agents[i - 1]);
            agents.push(node.start());
            nodes.push(node);
        }
        let id = format!("formation-{c}");
        let t0 = Instant::now();
        post(
            &client,
            &agents[0],
            &serde_json::json!([format!(
                "INSERT INTO todos (id, title) VALUES ('{id}', 'x')"
            )]),
        )?;
        let mut pending: Vec<usize> = (0..nodes.len()).collect();
        let mut per_node = vec![Duration::ZERO; nodes.len()];
        while !pending.is_empty() {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "write never spread");
            pending.retain(|&i| {
                if holds(&nodes[i], &id) {
                    per_node[i] = t0.elapsed();
                    false
                } else {
                    true
                }
            });
            std::thread::sleep(Duration::from_micros(500));
        }
        let worst = per_node.iter().copied().max().unwrap_or_default();
        println!(
            "cluster {c}: write on the first of {} chained agents -> on all of them in {:.1} ms (per agent: {:?})",
            a.agents,
            worst.as_secs_f64() * 1000.0,
            per_node
                .iter()
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
        );
        worst_per_cluster.push(worst);
        drop(agents);
    }
    worst_per_cluster.sort();
    println!(
        "formation: {} clusters of {} chained agents, first write after every API answers -> every member: median {:.1} ms, max {:.1} ms",
        a.clusters,
        a.agents,
        worst_per_cluster[worst_per_cluster.len() / 2].as_secs_f64() * 1000.0,
        worst_per_cluster
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0
    );
    Ok(())
}

/// Starts `n` agents, all bootstrapping from the first, and waits until
/// every one lists all the others as alive.
fn cluster(dir: &Path, n: usize, metrics: bool) -> anyhow::Result<(Vec<Node>, Vec<Agent>)> {
    let first = Node::new(&dir.join("n0"), "");
    if metrics {
        first.enable_metrics();
    }
    let mut agents = vec![first.start()];
    let mut nodes = vec![first];
    for i in 1..n {
        let node = Node::joining(&dir.join(format!("n{i}")), &agents[0]);
        if metrics {
            node.enable_metrics();
        }
        agents.push(node.start());
        nodes.push(node);
    }
    let start = Instant::now();
    for a in &agents {
        loop {
            let alive = a.members().iter().filter(|(_, s)| s == "alive").count();
            if alive == n - 1 {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(120),
                "the cluster did not form: {alive} of {} alive",
                n - 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "{n} agents formed a full membership in {:.2?}",
        start.elapsed()
    );
    Ok((nodes, agents))
}

fn post(
    client: &reqwest::blocking::Client,
    agent: &Agent,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let r = client
        .post(agent.url("/v1/transactions"))
        .json(body)
        .send()?;
    anyhow::ensure!(r.status().is_success(), "write failed: {}", r.text()?);
    Ok(())
}

fn count(node: &Node) -> anyhow::Result<i64> {
    let c = rusqlite::Connection::open_with_flags(
        &node.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(c.query_row("SELECT count(*) FROM todos", [], |r| r.get(0))?)
}

fn stress(dir: &Path, a: StressArgs) -> anyhow::Result<()> {
    let (nodes, agents) = cluster(dir, a.agents, false)?;
    let urls: Vec<String> = agents.iter().map(|x| x.url("/v1/transactions")).collect();
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..a.clients)
            .map(|c| {
                let urls = &urls;
                let a = &a;
                s.spawn(move || -> anyhow::Result<()> {
                    let client = reqwest::blocking::Client::new();
                    let mut rng = rand::rng();
                    for input in (c..a.inputs).step_by(a.clients) {
                        let stmts: Vec<serde_json::Value> = (0..a.statements)
                            .map(|k| {
                                serde_json::json!([
                                    "INSERT INTO todos (id, title) VALUES (?, ?)",
                                    [format!("in{input}-{k}"), "stress"]
                                ])
                            })
                            .collect();
                        let url = &urls[rng.random_range(0..urls.len())];
                        let r = client.post(url).json(&stmts).send()?;
                        anyhow::ensure!(r.status().is_success(), "write failed: {}", r.text()?);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    let written = start.elapsed();
    let want = (a.inputs * a.statements) as i64;
    loop {
        let books: Vec<serde_json::Value> = nodes.iter().map(Node::books).collect();
        let counts = nodes
            .iter()
            .map(count)
            .collect::<anyhow::Result<Vec<_>>>()?;
        if counts.iter().all(|c| *c == want) && books.iter().all(|b| *b == books[0]) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "no convergence: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let converged = start.elapsed();
    println!(
        "stress: {} agents, {} transactions x {} inserts from {} clients: writes took {:.2?}, \
         full convergence {:.2?} after the first write ({:.2?} after the last ack)",
        a.agents,
        a.inputs,
        a.statements,
        a.clients,
        written,
        converged,
        converged - written
    );
    Ok(())
}

fn latency(dir: &Path, a: LatencyArgs) -> anyhow::Result<()> {
    let (nodes, agents) = cluster(dir, a.agents, true)?;
    let readers = nodes
        .iter()
        .map(|n| {
            rusqlite::Connection::open_with_flags(&n.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .context("opening an agent's database read-only")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sent = |agents: &[Agent]| -> f64 {
        agents
            .iter()
            .map(|a| a.counter("corro_gossip_broadcasts_sent_total"))
            .sum()
    };
    let before = sent(&agents);
    let client = reqwest::blocking::Client::new();
    let mut rng = rand::rng();
    let mut took = Vec::with_capacity(a.writes);
    for w in 0..a.writes {
        let id = format!("lat-{w}");
        let target = &agents[rng.random_range(0..agents.len())];
        let start = Instant::now();
        post(
            &client,
            target,
            &serde_json::json!([["INSERT INTO todos (id, title) VALUES (?, 'x')", [&id]]]),
        )?;
        let mut pending: Vec<usize> = (0..readers.len()).collect();
        while !pending.is_empty() {
            pending.retain(|&i| {
                readers[i]
                    .query_row("SELECT 1 FROM todos WHERE id = ?1", [&id], |_| Ok(()))
                    .is_err()
            });
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "write {w} never arrived everywhere"
            );
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        took.push(start.elapsed());
    }
    // Counters are sampled by the exporter when scraped: give the last
    // sends a moment to be counted.
    std::thread::sleep(Duration::from_millis(500));
    let messages = sent(&agents) - before;
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "latency: {} agents, {} writes (HTTP ack included): p50 {:.2?}, p99 {:.2?}, max {:.2?}; \
         {:.1} broadcast messages per write",
        a.agents,
        a.writes,
        pct(0.5),
        pct(0.99),
        took[took.len() - 1],
        messages / a.writes as f64
    );
    Ok(())
}

/// Writes `n` single-row versions into `node`'s store (the agent is not
/// running); returns the time taken.
fn small_versions(node: &Node, n: u64) -> anyhow::Result<Duration> {
    let store = corro_store::Store::open(&node.db, corro_store::StoreOptions::default())?;
    store.apply_schema_paths(&[node.dir.join("schema")])?;
    let start = Instant::now();
    for i in 0..n {
        store.transact(|tx| {
            tx.execute(
                "INSERT INTO todos (id, title) VALUES (?, 'v')",
                &[corro_store::SqlValue::Text(format!("v-{i:08}"))],
            )
        })?;
    }
    Ok(start.elapsed())
}

fn catchup(dir: &Path, a: CatchupArgs) -> anyhow::Result<()> {
    if let Some(n) = a.versions {
        return catchup_versions(dir, n);
    }
    let first = Node::new(&dir.join("a"), "");
    let agent_a = first.start();
    let start = Instant::now();
    agent_a.bulk_load(a.rows);
    let load = start.elapsed();
    let took = join_and_catch_up(dir, &first, &agent_a, a.rows)?;
    let rate = a.rows as f64 / took.as_secs_f64();
    let base = a.rows as f64 / load.as_secs_f64();
    println!(
        "catchup: {} rows in {:.2?} = {:.0} rows/s (agent start included); baseline bulk load \
         through the API on the first agent {:.0} rows/s: ratio {:.2}",
        a.rows,
        took,
        rate,
        base,
        rate / base
    );
    Ok(())
}

/// Starts a second agent joining `agent_a` and waits until its bookkeeping
/// equals the first's and it holds `rows` rows; how long that took (its
/// start included).
fn join_and_catch_up(
    dir: &Path,
    first: &Node,
    agent_a: &Agent,
    rows: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let second = Node::joining(&dir.join("b"), agent_a);
    let _agent_b = second.start();
    let want = first.books();
    while second.books() != want {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "no catch-up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    anyhow::ensure!(count(&second)? == rows as i64, "row count differs");
    Ok(took)
}

fn catchup_versions(dir: &Path, n: u64) -> anyhow::Result<()> {
    let first = Node::new(&dir.join("a"), "");
    let written = small_versions(&first, n)?;
    let agent_a = first.start();
    let took = join_and_catch_up(dir, &first, &agent_a, n)?;
    let rate = n as f64 / took.as_secs_f64();
    let base = n as f64 / written.as_secs_f64();
    println!(
        "catchup: {n} single-row versions in {took:.2?} = {rate:.0} versions/s (agent start \
         included); baseline writing them into the first store {base:.0} versions/s: ratio {:.2}",
        rate / base
    );
    Ok(())
}

fn failover(dir: &Path, a: FailoverArgs) -> anyhow::Result<()> {
    let (nodes, mut agents) = cluster(dir, a.agents, false)?;
    let mut rng = rand::rng();
    let mut took = Vec::new();
    for trial in 0..a.trials {
        let v = rng.random_range(1..agents.len());
        let victim_addr = agents[v].gossip.to_string();
        agents[v].signal("KILL");
        let _ = agents[v].child.wait();
        let start = Instant::now();
        let mut worst = Duration::ZERO;
        for (i, agent) in agents.iter().enumerate() {
            if i == v {
                continue;
            }
            loop {
                let down = agent
                    .members()
                    .iter()
                    .any(|(addr, s)| *addr == victim_addr && s == "down");
                if down {
                    worst = worst.max(start.elapsed());
                    break;
                }
                anyhow::ensure!(
                    start.elapsed() < Duration::from_secs(60),
                    "trial {trial}: never marked down"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!(
            "trial {trial}: down on all {} others after {worst:.2?}",
            agents.len() - 1
        );
        took.push(worst);
        // Restart on the same database and let it rejoin everywhere.
        agents[v] = nodes[v].start();
        let addr = agents[v].gossip.to_string();
        let start = Instant::now();
        for agent in &agents {
            if agent.gossip.to_string() == addr {
                continue;
            }
            while !agent
                .members()
                .iter()
                .any(|(m, s)| *m == addr && s == "alive")
            {
                anyhow::ensure!(
                    start.elapsed() < Duration::from_secs(60),
                    "restarted agent not alive everywhere"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    took.sort();
    println!(
        "failover: {} agents, {} trials: kill -9 -> down on every other agent p50 {:.2?}, max {:.2?}",
        a.agents,
        a.trials,
        took[took.len() / 2],
        took[took.len() - 1]
    );
    Ok(())
}
