//! The HTTP API's own reads and writes through a real agent, each next to a
//! baseline measured in the same run:
//!
//! - `reads`: `POST /v1/queries` of one `todos` row by primary key (random
//!   id of 10,000 seeded rows) with wrk (keep-alive), alternating with nginx
//!   serving a fixed body of the same size;
//! - `writes`: `POST /v1/transactions` of one-row upserts (random id of
//!   10,000, so most update a row and some insert one) with wrk, alternating
//!   with plain SQLite (WAL, `synchronous=NORMAL`, same directory) committing
//!   the same upserts one row per transaction from one thread.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use corro_testkit::Node;

#[derive(Subcommand)]
pub(crate) enum HttpCmd {
    /// Primary-key reads (POST /v1/queries) vs nginx's fixed body
    Reads(HttpArgs),
    /// One-row upserts (POST /v1/transactions) vs plain SQLite commits
    Writes(HttpArgs),
}

#[derive(Args)]
pub(crate) struct HttpArgs {
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// wrk connections (default: 32 for reads, 16 for writes).
    #[arg(long)]
    connections: Option<u32>,
    /// Alternating rounds (each: ours, then the baseline).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seeded rows.
    #[arg(long, default_value_t = 10_000)]
    rows: u64,
}

pub(crate) fn run(cmd: HttpCmd) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    match cmd {
        HttpCmd::Reads(a) => reads(dir.path(), a),
        HttpCmd::Writes(a) => writes(dir.path(), a),
    }
}

const READ_SQL: &str = "SELECT id, title, completed_at FROM todos WHERE id = ?";
const UPSERT_SQL: &str = "INSERT INTO todos (id, title, completed_at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET title = excluded.title, completed_at = excluded.completed_at";

fn seeded(dir: &Path, rows: u64) -> anyhow::Result<(Node, corro_testkit::Agent)> {
    seeded_with(&dir.join("agent"), rows, "")
}

fn seeded_with(dir: &Path, rows: u64, api: &str) -> anyhow::Result<(Node, corro_testkit::Agent)> {
    let node = Node::new(dir, &format!("max_statements = 100000\n{api}"));
    node.enable_metrics();
    let agent = node.start();
    agent.bulk_load(rows);
    Ok((node, agent))
}

/// Two agents (answers kept: the default; and `api.cache_max_bytes = 0`,
/// every query read from SQLite) against nginx, one after another in each
/// round, so each ratio has a baseline from the same minutes.
fn reads(dir: &Path, a: HttpArgs) -> anyhow::Result<()> {
    let conns = a.connections.unwrap_or(32);
    let (_node, agent) = seeded(dir, a.rows)?;
    let (_plain_node, plain) = seeded_with(&dir.join("uncached"), a.rows, "cache_max_bytes = 0\n")?;
    let script = dir.join("read.lua");
    std::fs::write(
        &script,
        format!(
            "math.randomseed(42)\nwrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nrequest = function()\n  local id = string.format(\"row-%08d\", math.random(1, {rows}))\n  return wrk.format(nil, \"/v1/queries\", nil, '[\"{READ_SQL}\", [\"' .. id .. '\"]]')\nend\n",
            rows = a.rows
        ),
    )?;
    // nginx's body: one answer of ours, as read.
    let body = reqwest::blocking::Client::new()
        .post(agent.url("/v1/queries"))
        .json(&serde_json::json!([READ_SQL, ["row-00000001"]]))
        .send()?
        .bytes()?;
    anyhow::ensure!(
        body.windows(12).any(|w| w == b"row-00000001"),
        "the seeded row is not answered: {}",
        String::from_utf8_lossy(&body)
    );
    let (nginx, nginx_url) = crate::consul::nginx_fixed(dir, &body)?;
    let nginx_lua = dir.join("nginx.lua");
    std::fs::write(
        &nginx_lua,
        "request = function() return wrk.format(\"GET\", \"/body.json\") end\n",
    )?;
    eprintln!(
        "{} rows, a random one per request; answer {} bytes; wrk -t2 -c{conns} -d{}s; each round: answers kept (warm after round 0), every query read from SQLite (api.cache_max_bytes = 0), nginx (2 workers)",
        a.rows,
        body.len(),
        a.seconds
    );
    let measured = (|| -> anyhow::Result<_> {
        let (mut kept, mut read, mut fixed) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..a.rounds {
            let k = crate::consul::wrk(&agent.url(""), &script, a.seconds, conns)?;
            let r = crate::consul::wrk(&plain.url(""), &script, a.seconds, conns)?;
            let n = crate::consul::wrk(&nginx_url, &nginx_lua, a.seconds, conns)?;
            eprintln!(
                "round {round}: kept {:.0} req/s p99 {:.2} ms | read {:.0} req/s p99 {:.2} ms | nginx {:.0} req/s p99 {:.2} ms",
                k.0, k.1, r.0, r.1, n.0, n.1
            );
            kept.push(k);
            read.push(r);
            fixed.push(n);
        }
        Ok((kept, read, fixed))
    })();
    crate::consul::stop_nginx(nginx);
    let (k, r, t) = measured?;
    // The agent samples its cache counters every second.
    std::thread::sleep(Duration::from_millis(1100));
    let hits = agent.counter("corro_query_cache_hits_total");
    let misses = agent.counter("corro_query_cache_misses_total");
    let nginx_rate = crate::consul::mean(&t);
    println!(
        "http reads: answers kept {:.0} req/s (p99 {:.2} ms, {:.0} % hits): {:.2}x nginx; read from SQLite {:.0} req/s (p99 {:.2} ms): {:.2}x nginx; nginx {:.0} req/s (p99 {:.2} ms)",
        crate::consul::mean(&k),
        crate::consul::max_p99(&k),
        100.0 * hits / (hits + misses).max(1.0),
        crate::consul::mean(&k) / nginx_rate,
        crate::consul::mean(&r),
        crate::consul::max_p99(&r),
        crate::consul::mean(&r) / nginx_rate,
        nginx_rate,
        crate::consul::max_p99(&t),
    );
    Ok(())
}

/// Plain SQLite committing one-row upserts for `secs`: (commits/s, p99 ms).
fn plain_upserts(path: &Path, rows: u64, secs: u32) -> anyhow::Result<(f64, f64)> {
    let c = crate::store::plain(path)?;
    {
        let mut stmt = c.prepare(UPSERT_SQL)?;
        c.execute_batch("BEGIN")?;
        for i in 1..=rows {
            stmt.execute((format!("row-{i:08}"), format!("title of row {i}"), i))?;
        }
        c.execute_batch("COMMIT")?;
    }
    let mut stmt = c.prepare(UPSERT_SQL)?;
    let mut begin = c.prepare("BEGIN IMMEDIATE")?;
    let mut commit = c.prepare("COMMIT")?;
    let mut lat = Vec::new();
    let mut n: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    let end = start + Duration::from_secs(u64::from(secs));
    while Instant::now() < end {
        n = n
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let id = (n >> 33) % rows + 1;
        let t = Instant::now();
        begin.raw_execute()?;
        stmt.execute((format!("row-{id:08}"), format!("upserted {n}"), n as i64))?;
        commit.raw_execute()?;
        lat.push(t.elapsed());
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    let p99 = crate::consul::percentile(&mut lat, 0.99);
    Ok((rate, p99.as_secs_f64() * 1000.0))
}

/// The store itself (no HTTP) committing the same upserts from `threads`
/// threads through group commit for `secs`: (transactions/s, p99 ms, mean
/// group size).
fn store_grouped(
    path: &Path,
    rows: u64,
    secs: u32,
    threads: u32,
) -> anyhow::Result<(f64, f64, f64)> {
    let store = crate::store::store(path)?;
    store.transact(|tx| {
        let mut stmt = tx.prepare(UPSERT_SQL)?;
        for i in 1..=rows {
            stmt.execute(&[
                format!("row-{i:08}").into(),
                format!("title of row {i}").into(),
                (i as i64).into(),
            ])?;
        }
        Ok(())
    })?;
    let before = store.group_stats();
    let start = Instant::now();
    let end = start + Duration::from_secs(u64::from(secs));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut lat = Vec::new();
                let mut n: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(t);
                while Instant::now() < end {
                    n = n
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let id = (n >> 33) % rows + 1;
                    let t0 = Instant::now();
                    store.transact_grouped(move |tx| {
                        tx.execute(
                            UPSERT_SQL,
                            &[
                                format!("row-{id:08}").into(),
                                format!("upserted {n}").into(),
                                (n as i64).into(),
                            ],
                        )
                    })?;
                    lat.push(t0.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("writer thread panicked"))??,
        );
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    let g = store.group_stats();
    let mean =
        (g.transactions - before.transactions) as f64 / (g.groups - before.groups).max(1) as f64;
    let p99 = crate::consul::percentile(&mut lat, 0.99);
    Ok((rate, p99.as_secs_f64() * 1000.0, mean))
}

fn writes(dir: &Path, a: HttpArgs) -> anyhow::Result<()> {
    let conns = a.connections.unwrap_or(16);
    let (_node, agent) = seeded(dir, a.rows)?;
    let script = dir.join("write.lua");
    std::fs::write(
        &script,
        format!(
            "math.randomseed(7)\nwrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nrequest = function()\n  local n = math.random(1, {rows})\n  local id = string.format(\"row-%08d\", n)\n  return wrk.format(nil, \"/v1/transactions\", nil, '[[\"{UPSERT_SQL}\", [\"' .. id .. '\", \"upserted ' .. math.random(1, 1000000000) .. '\", ' .. n .. ']]]')\nend\n",
            rows = a.rows
        ),
    )?;
    let r = reqwest::blocking::Client::new()
        .post(agent.url("/v1/transactions"))
        .json(&serde_json::json!([[
            UPSERT_SQL,
            ["row-00000001", "upserted once", 1]
        ]]))
        .send()?;
    anyhow::ensure!(r.status().is_success(), "upsert refused: {}", r.text()?);
    eprintln!(
        "{} rows; one-row upserts; wrk -t2 -c{conns} -d{}s, alternating with plain SQLite (WAL, synchronous=NORMAL, one row per transaction, one thread, same directory)",
        a.rows, a.seconds
    );
    let (mut ours, mut theirs, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let before = (
            agent.counter("corro_store_group_commits_total"),
            agent.counter("corro_store_group_transactions_total"),
        );
        let x = crate::consul::wrk(&agent.url(""), &script, a.seconds, conns)?;
        // The sampled counters move once a second.
        std::thread::sleep(Duration::from_millis(1100));
        let groups = agent.counter("corro_store_group_commits_total") - before.0;
        let txns = agent.counter("corro_store_group_transactions_total") - before.1;
        eprintln!(
            "round {round}: {txns:.0} transactions in {groups:.0} group commits (mean group {:.1})",
            txns / groups.max(1.0),
        );
        let p = plain_upserts(&dir.join(format!("plain-{round}.db")), a.rows, a.seconds)?;
        let s = store_grouped(
            &dir.join(format!("store-{round}.db")),
            a.rows,
            a.seconds,
            conns,
        )?;
        eprintln!(
            "round {round}: corrosion {:.0} tx/s p99 {:.2} ms | plain SQLite {:.0} commits/s p99 {:.3} ms | the store alone, {conns} threads grouped: {:.0} tx/s p99 {:.2} ms, mean group {:.1}",
            x.0, x.1, p.0, p.1, s.0, s.1, s.2
        );
        ours.push(x);
        theirs.push(p);
        direct.push((s.0, s.1));
    }
    println!(
        "http writes: corrosion {:.0} tx/s (p99 {:.2} ms), plain SQLite {:.0} commits/s: {:.2}x plain single-row commits; the store alone with group commit {:.0} tx/s (p99 {:.2} ms): {:.2}x",
        crate::consul::mean(&ours),
        crate::consul::max_p99(&ours),
        crate::consul::mean(&theirs),
        crate::consul::mean(&ours) / crate::consul::mean(&theirs),
        crate::consul::mean(&direct),
        crate::consul::max_p99(&direct),
        crate::consul::mean(&direct) / crate::consul::mean(&theirs)
    );
    Ok(())
}
