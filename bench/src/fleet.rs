//! `corro-bench fleet`: what holding a fleet's catalog costs one agent.
//! Every agent holds and serves the whole catalog, so this is the per-host
//! price of a fleet of N nodes: one real agent loaded with `--nodes` nodes,
//! `--services` services and `--instances` instances (one passing check
//! each), spread evenly; then its resident memory, database size, CPU at
//! rest, the time of common reads, and (`--join`) how long a new agent
//! takes to pull the whole catalog through sync.
//!
//! Every node row names this agent's actor id, so every instance counts
//! as alive (a fleet's real membership is the SWIM simulation's part).

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use corro_testkit::Agent;
use serde_json::json;

use crate::consul::{discovery_node, post};

#[derive(Args)]
pub(crate) struct FleetArgs {
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    #[arg(long, default_value_t = 100)]
    services: u32,
    #[arg(long, default_value_t = 6500)]
    instances: u32,
    /// Also start a second agent and time its catch-up.
    #[arg(long)]
    join: bool,
}

/// Rows written per transaction.
const BATCH: u32 = 50_000;

fn load(agent: &Agent, a: &FleetArgs) -> anyhow::Result<()> {
    let actor = &agent.actor;
    let range = |from: u32, to: u32| {
        format!(
            "WITH RECURSIVE k(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM k WHERE i < {to})"
        )
    };
    for from in (0..a.nodes).step_by(BATCH as usize) {
        let to = (from + BATCH).min(a.nodes) - 1;
        post(
            agent,
            json!([format!(
                "INSERT INTO consul_nodes (node, actor_id, address, datacenter, meta) {} SELECT 'ip-10-' || (i / 65536) || '-' || (i / 256 % 256) || '-' || (i % 256), '{actor}', '10.' || (i / 65536) || '.' || (i / 256 % 256) || '.' || (i % 256), 'dc1', '{{\"rack\":\"r' || (i % 40) || '\"}}' FROM k",
                range(from, to)
            )]),
        )?;
    }
    let (nodes, services) = (a.nodes, a.services);
    let node = "'ip-10-' || ((i % {nodes}) / 65536) || '-' || ((i % {nodes}) / 256 % 256) || '-' || ((i % {nodes}) % 256)"
        .replace("{nodes}", &nodes.to_string());
    for from in (0..a.instances).step_by(BATCH as usize) {
        let to = (from + BATCH).min(a.instances) - 1;
        let k = range(from, to);
        post(
            agent,
            json!([
                format!(
                    "INSERT INTO consul_services (node, id, name, tags, meta, port, address) {k} SELECT {node}, 'svc-' || (i % {services}) || '-' || i, 'svc-' || (i % {services}), '[\"v2\",\"zone-' || (i % 3) || '\"]', '{{\"version\":\"1.4.' || (i % 7) || '\"}}', 8000 + (i % 1000), '' FROM k"
                ),
                format!(
                    "INSERT INTO consul_checks (node, id, service_id, service_name, name, status, output, type) {k} SELECT {node}, 'service:svc-' || (i % {services}) || '-' || i, 'svc-' || (i % {services}) || '-' || i, 'svc-' || (i % {services}), 'Service check', 'passing', 'HTTP GET http://127.0.0.1:8080/health: 200 OK Output: ok', 'http' FROM k"
                ),
            ]),
        )?;
    }
    Ok(())
}

fn get(agent: &Agent, path: &str) -> anyhow::Result<(serde_json::Value, usize)> {
    let r = reqwest::blocking::get(agent.url(path))?;
    anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    let body = r.bytes()?;
    Ok((serde_json::from_slice(&body)?, body.len()))
}

/// Median time of `n` GETs of `path`, and the answer's size.
fn timed(agent: &Agent, path: &str, n: usize) -> anyhow::Result<(Duration, usize)> {
    let client = reqwest::blocking::Client::new();
    let mut took = Vec::new();
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let body = client.get(agent.url(path)).send()?.bytes()?;
        took.push(t.elapsed());
        size = body.len();
    }
    took.sort();
    Ok((took[took.len() / 2], size))
}

/// Waits until `agent`'s catalog lists every instance of the last service.
fn wait_loaded(agent: &Agent, a: &FleetArgs, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let last = a.services - 1;
    let want = (a.instances / a.services) as usize;
    loop {
        if let Ok((v, _)) = get(agent, "/v1/catalog/services")
            && v.as_object()
                .is_some_and(|o| o.len() == a.services as usize)
            && let Ok((v, _)) = get(agent, &format!("/v1/health/service/svc-{last}"))
            && v.as_array().is_some_and(|l| l.len() >= want)
        {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "catalog not complete within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            // utime and stime are fields 14 and 15 (11 and 12 after the name).
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn files_mb(dir: &Path) -> f64 {
    ["state.db", "state.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum::<u64>() as f64
        / 1048576.0
}

pub(crate) fn run(a: FleetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.nodes > 0 && a.services > 0 && a.instances >= a.services,
        "need nodes > 0 and instances >= services > 0"
    );
    let dir = tempfile::tempdir()?;
    let node = discovery_node(&dir.path().join("a"), "bench", None);
    let agent = node.start();
    let empty = agent.rss_kb() as f64 / 1024.0;
    let t = Instant::now();
    load(&agent, &a)?;
    let written = t.elapsed();
    let indexed = wait_loaded(&agent, &a, Duration::from_secs(600))?;
    // Let the first reads' caches and the WAL settle.
    get(&agent, "/v1/catalog/nodes")?;
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(agent.child.id());
    std::thread::sleep(Duration::from_secs(10));
    let cpu = (cpu_ticks(agent.child.id()) - ticks) as f64 / 100.0 / 10.0 * 100.0;
    let rss = agent.rss_kb() as f64 / 1024.0;
    println!(
        "fleet catalog: {} nodes, {} services, {} instances (one check each) on one agent",
        a.nodes, a.services, a.instances
    );
    println!("| measure | result |");
    println!("|---|---|");
    println!(
        "| written through the API / listed by the catalog after | {:.1} s / {:.1} s more |",
        written.as_secs_f64(),
        indexed.as_secs_f64()
    );
    println!(
        "| resident memory: empty agent / loaded | {empty:.0} MiB / {rss:.0} MiB ({:.2} KiB per instance) |",
        (rss - empty) * 1024.0 / f64::from(a.instances)
    );
    println!(
        "| database files (db + WAL) | {:.0} MiB |",
        files_mb(&node.dir)
    );
    println!("| CPU at rest, loaded (10 s) | {cpu:.1} % of one core |");
    let per = a.instances / a.services;
    for (path, n) in [
        ("/v1/catalog/services".to_string(), 20),
        ("/v1/catalog/nodes".to_string(), 5),
        ("/v1/health/service/svc-7?passing".to_string(), 100),
        ("/v1/catalog/service/svc-7".to_string(), 100),
    ] {
        let (took, size) = timed(&agent, &path, n)?;
        println!(
            "| GET {path} ({} KiB{}) | median {:.2} ms over {n} |",
            size / 1024,
            if path.contains("svc-7") {
                format!(", {per} instances")
            } else {
                String::new()
            },
            took.as_secs_f64() * 1000.0
        );
    }
    if a.join {
        let joiner = discovery_node(&dir.path().join("b"), "joiner", Some(&agent));
        let t = Instant::now();
        let b = joiner.start();
        let took = wait_loaded(&b, &a, Duration::from_secs(1800))?;
        println!(
            "| a new agent pulls the whole catalog (start to complete) | {:.1} s ({:.1} s after its start line), RSS {:.0} MiB |",
            t.elapsed().as_secs_f64(),
            took.as_secs_f64(),
            b.rss_kb() as f64 / 1024.0
        );
    }
    Ok(())
}
