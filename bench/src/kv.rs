//! Consul KV through real agents (issue "Consul KV on every agent"):
//!
//! - `get`: `GET /v1/kv/<key>` with wrk (keep-alive, 32 connections) over
//!   1,000 keys of 100-byte values, alternating with nginx serving a fixed
//!   body of the same size (one answer's bytes) in the same run;
//! - `put`: `PUT /v1/kv/<key>` throughput through one agent from N client
//!   threads (each a distinct key, new value every time), p50/p99, next to
//!   single-row `POST /v1/transactions` writes in the same run;
//! - `wake`: a blocking `GET /v1/kv/<key>?index=` held on agent C, woken by
//!   a `PUT` of that key on agent A (write -> answer, p50/p99);
//! - `big`: 100,000 keys under one prefix: `?keys&separator=/` and
//!   `?recurse` latency, and the agent's RSS before and after loading.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use crate::consul::{
    alternate, discovery_node, max_p99, mean, nginx_fixed, percentile, rss_kb, stop_nginx, three,
};

#[derive(Subcommand)]
pub(crate) enum KvCmd {
    /// GET /v1/kv/<key> req/s and p99 vs nginx (needs wrk and nginx)
    Get(GetArgs),
    /// PUT throughput through one agent
    Put(PutArgs),
    /// Blocking GET on C woken by a PUT on A
    Wake(WakeArgs),
    /// 100,000 keys under one prefix: listing latency and RSS
    Big(BigArgs),
}

#[derive(Args)]
pub(crate) struct GetArgs {
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    #[arg(long, default_value_t = 32)]
    connections: u32,
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

#[derive(Args)]
pub(crate) struct PutArgs {
    #[arg(long, default_value_t = 8)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(Args)]
pub(crate) struct WakeArgs {
    #[arg(long, default_value_t = 200)]
    trials: u32,
}

#[derive(Args)]
pub(crate) struct BigArgs {
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    #[arg(long, default_value_t = 20)]
    trials: usize,
}

pub(crate) fn run(cmd: KvCmd) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    match cmd {
        KvCmd::Get(a) => get_bench(dir.path(), a),
        KvCmd::Put(a) => put_bench(dir.path(), a),
        KvCmd::Wake(a) => wake(dir.path(), a),
        KvCmd::Big(a) => big(dir.path(), a),
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap_or_default()
}

fn put(c: &reqwest::blocking::Client, url: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let r = c.put(url).body(body).send()?;
    anyhow::ensure!(r.status().is_success(), "put failed: {}", r.text()?);
    Ok(())
}

fn get_bench(dir: &Path, a: GetArgs) -> anyhow::Result<()> {
    let agent = discovery_node(&dir.join("a"), "bench", None).start();
    let c = client();
    for i in 0..1000 {
        put(
            &c,
            &agent.url(&format!("/v1/kv/app/config/key-{i}")),
            vec![b'v'; 100],
        )?;
    }
    let body = c
        .get(agent.url("/v1/kv/app/config/key-1"))
        .send()?
        .bytes()?;
    let (nginx, nginx_url) = nginx_fixed(dir, &body)?;
    let script = dir.join("kv.lua");
    let mut f = std::fs::File::create(&script)?;
    writeln!(
        f,
        "math.randomseed(42)\nrequest = function() return wrk.format(\"GET\", \"/v1/kv/app/config/key-\" .. math.random(0, 999)) end"
    )?;
    eprintln!(
        "1,000 keys of 100 bytes; answer {} bytes; wrk -t2 -c{} -d{}s, alternating",
        body.len(),
        a.connections,
        a.seconds
    );
    let (ours, theirs) = alternate(
        dir,
        &format!("http://{}", agent.api),
        &script,
        &nginx_url,
        a.rounds,
        a.seconds,
        a.connections,
    )?;
    stop_nginx(nginx);
    println!(
        "GET /v1/kv/<key>: corrosion {:.0} req/s (p99 {:.2} ms), nginx fixed body {:.0} req/s (p99 {:.2} ms): {:.2}x nginx",
        mean(&ours),
        max_p99(&ours),
        mean(&theirs),
        max_p99(&theirs),
        mean(&ours) / mean(&theirs)
    );
    Ok(())
}

/// Runs `op` from `clients` threads for `secs`: writes/s and latencies.
fn hammer(
    clients: usize,
    secs: u64,
    op: impl Fn(&reqwest::blocking::Client, usize, u64) -> anyhow::Result<()> + Send + Sync + 'static,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (op, stop) = (op.clone(), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let c = client();
                let mut took = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = Instant::now();
                    op(&c, t, n)?;
                    took.push(s.elapsed());
                    n += 1;
                }
                Ok(took)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, all))
}

fn put_bench(dir: &Path, a: PutArgs) -> anyhow::Result<()> {
    let agent = discovery_node(&dir.join("a"), "bench", None).start();
    let base = format!("http://{}", agent.api);
    let b = base.clone();
    let (rate, mut took) = hammer(a.clients, a.seconds, move |c, t, n| {
        put(
            c,
            &format!("{b}/v1/kv/bench/{t}/{}", n % 100),
            format!("value {n}").into_bytes(),
        )
    })?;
    let b = base.clone();
    let (tx_rate, mut tx_took) = hammer(a.clients, a.seconds, move |c, t, n| {
        let r = c
            .post(format!("{b}/v1/transactions"))
            .json(&serde_json::json!([[
                "INSERT INTO consul_kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [format!("tx/{t}/{}", n % 100), format!("value {n}")]
            ]]))
            .send()?;
        anyhow::ensure!(r.status().is_success(), "transaction failed");
        Ok(())
    })?;
    println!(
        "PUT /v1/kv/<key>, {} clients: {:.0} writes/s, p50 {:.2?}, p99 {:.2?} | single-row POST /v1/transactions in the same run: {:.0}/s, p99 {:.2?} ({:.2}x)",
        a.clients,
        rate,
        percentile(&mut took, 0.5),
        percentile(&mut took, 0.99),
        tx_rate,
        percentile(&mut tx_took, 0.99),
        rate / tx_rate
    );
    Ok(())
}

/// The `X-Consul-Index` and status of a GET.
fn index_of(c: &reqwest::blocking::Client, url: &str) -> anyhow::Result<(u64, u16, Vec<u8>)> {
    let r = c.get(url).send()?;
    let i = r
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let s = r.status().as_u16();
    Ok((i, s, r.bytes()?.to_vec()))
}

fn wake(dir: &Path, a: WakeArgs) -> anyhow::Result<()> {
    let (_nodes, agents) = three(dir)?;
    let c = client();
    let key_a = agents[0].url("/v1/kv/app/watched");
    put(&c, &key_a, b"0".to_vec())?;
    let on_c = agents[2].url("/v1/kv/app/watched?raw");
    let start = Instant::now();
    while index_of(&c, &on_c)?.1 != 200 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the key never reached C"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut took = Vec::new();
    for trial in 1..=a.trials {
        let (idx, _, _) = index_of(&c, &on_c)?;
        let waiter_url = format!("{on_c}&index={idx}&wait=30s");
        let waiter = std::thread::spawn(move || {
            let r = index_of(&client(), &waiter_url);
            (Instant::now(), r)
        });
        let held = Instant::now();
        while agents[2].counter("corro_consul_blocking_queries") < 1.0 {
            anyhow::ensure!(held.elapsed() < Duration::from_secs(10), "query not held");
            std::thread::sleep(Duration::from_millis(2));
        }
        let written = Instant::now();
        put(&c, &key_a, trial.to_string().into_bytes())?;
        let (done, r) = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("waiter panicked"))?;
        let (new_idx, _, body) = r?;
        anyhow::ensure!(new_idx > idx, "trial {trial}: index did not move");
        anyhow::ensure!(
            body == trial.to_string().into_bytes(),
            "trial {trial}: woke with {:?}",
            String::from_utf8_lossy(&body)
        );
        took.push(done.duration_since(written));
    }
    println!(
        "KV blocking wake-up, PUT on A -> held GET answered on C, {} trials: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        a.trials,
        percentile(&mut took, 0.5),
        percentile(&mut took, 0.99),
        percentile(&mut took, 1.0)
    );
    Ok(())
}

fn big(dir: &Path, a: BigArgs) -> anyhow::Result<()> {
    let node = discovery_node(&dir.join("a"), "bench", None);
    let agent = node.start();
    let c = client();
    // Settle, then RSS before.
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kb(agent.child.id())?;
    // 100,000 keys under one prefix, in 10 folders, 1,000 per transaction.
    let loaded = Instant::now();
    for chunk in 0..a.keys.div_ceil(1000) {
        let rows: Vec<serde_json::Value> = (chunk * 1000..((chunk + 1) * 1000).min(a.keys))
            .map(|i| {
                serde_json::json!([
                    "INSERT INTO consul_kv (key, value) VALUES (?, ?)",
                    [
                        format!("big/f{}/key-{i:06}", i % 10),
                        format!("value-{i:06}-{}", "x".repeat(40))
                    ]
                ])
            })
            .collect();
        let r = c.post(agent.url("/v1/transactions")).json(&rows).send()?;
        anyhow::ensure!(r.status().is_success(), "load failed: {}", r.text()?);
    }
    // Until the catalog holds them all.
    loop {
        let (_, s, body) = index_of(&c, &agent.url("/v1/kv/big/f0/?keys"))?;
        if s == 200 && serde_json::from_slice::<Vec<String>>(&body)?.len() == a.keys / 10 {
            break;
        }
        anyhow::ensure!(
            loaded.elapsed() < Duration::from_secs(120),
            "keys never loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let after_load = rss_kb(agent.child.id())?;
    eprintln!("loaded {} keys in {:.1?}", a.keys, loaded.elapsed());
    let time = |url: &str| -> anyhow::Result<(Vec<Duration>, usize)> {
        let mut v = Vec::new();
        let mut size = 0;
        for _ in 0..a.trials {
            let s = Instant::now();
            let (_, status, body) = index_of(&c, url)?;
            v.push(s.elapsed());
            anyhow::ensure!(status == 200, "{url}: {status}");
            size = body.len();
        }
        Ok((v, size))
    };
    let (mut folders, fsize) = time(&agent.url("/v1/kv/big/?keys&separator=/"))?;
    let (mut keys, ksize) = time(&agent.url("/v1/kv/big/?keys"))?;
    let (mut recurse, rsize) = time(&agent.url("/v1/kv/big/?recurse"))?;
    let after = rss_kb(agent.child.id())?;
    println!(
        "{} keys under big/: ?keys&separator=/ ({} bytes) p50 {:.2?} p99 {:.2?}; ?keys ({} bytes) p50 {:.2?} p99 {:.2?}; ?recurse ({} bytes) p50 {:.2?} p99 {:.2?}; RSS {:.1} MiB at rest, {:.1} MiB with the keys loaded, {:.1} MiB after the listings",
        a.keys,
        fsize,
        percentile(&mut folders, 0.5),
        percentile(&mut folders, 0.99),
        ksize,
        percentile(&mut keys, 0.5),
        percentile(&mut keys, 0.99),
        rsize,
        percentile(&mut recurse, 0.5),
        percentile(&mut recurse, 0.99),
        before as f64 / 1024.0,
        after_load as f64 / 1024.0,
        after as f64 / 1024.0
    );
    Ok(())
}
