//! Discovery benchmarks through real agents (issue "Service discovery I"):
//!
//! - `http`: `GET /v1/health/service/:name?passing` with wrk (keep-alive)
//!   on an agent holding 1,000 services x 3 instances, alternating with
//!   nginx serving a fixed body of the same size in the same run;
//! - `wake`: a blocking query on agent C woken by a check change written on
//!   agent A (write -> answer latency, p50/p99);
//! - `held`: 10,000 blocking queries held on one agent: memory per held
//!   query, and time until all of them return after one change;
//! - `failover`: `kill -9` of an agent -> its instances critical in
//!   `health/service` on the others (p50/max over trials).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use corro_testkit::{Agent, Node, free_port};

#[derive(Subcommand)]
pub(crate) enum ConsulCmd {
    /// health/service?passing req/s and p99 vs nginx (needs wrk and nginx)
    Http(HttpArgs),
    /// Blocking-query wake-up after a check change on another agent
    Wake(WakeArgs),
    /// Many held blocking queries: memory each, time for all to return
    Held(HeldArgs),
    /// kill -9 of an agent -> its instances critical on the others
    Failover(FailoverArgs),
}

#[derive(Args)]
pub(crate) struct HttpArgs {
    #[arg(long, default_value_t = 1000)]
    services: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Alternating rounds (each: ours, then nginx).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

#[derive(Args)]
pub(crate) struct WakeArgs {
    #[arg(long, default_value_t = 200)]
    trials: u32,
}

#[derive(Args)]
pub(crate) struct HeldArgs {
    #[arg(long, default_value_t = 10_000)]
    queries: usize,
    /// Instead of holding queries, open this many idle connections (no
    /// request) and report their memory: a connection's share of a held
    /// query's cost. (Not combined with held queries: the agent closes
    /// idle connections after `api.header_timeout_secs` and their freed
    /// memory would flatter the held queries' figure.)
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Unrelated writes timed with and without the queries held (agent
    /// CPU is read in 10 ms ticks: enough writes for a stable figure).
    #[arg(long, default_value_t = 1000)]
    churn: u32,
}

#[derive(Args)]
pub(crate) struct FailoverArgs {
    #[arg(long, default_value_t = 10)]
    trials: u32,
    #[arg(long, default_value_t = 3)]
    agents: usize,
}

pub(crate) fn run(cmd: ConsulCmd) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    match cmd {
        ConsulCmd::Http(a) => http(dir.path(), a),
        ConsulCmd::Wake(a) => wake(dir.path(), a),
        ConsulCmd::Held(a) => held(dir.path(), a),
        ConsulCmd::Failover(a) => failover(dir.path(), a),
    }
}

pub(crate) fn discovery_node(dir: &Path, name: &str, seed: Option<&Agent>) -> Node {
    let node = match seed {
        Some(s) => Node::joining(dir, s),
        None => Node::new(dir, ""),
    };
    node.with_consul_schema();
    node.append_config(&format!("[consul]\nnode_name = \"{name}\"\n"));
    node
}

pub(crate) fn post(agent: &Agent, body: serde_json::Value) -> anyhow::Result<()> {
    let r = reqwest::blocking::Client::new()
        .post(agent.url("/v1/transactions"))
        .json(&body)
        .send()?;
    anyhow::ensure!(r.status().is_success(), "write failed: {}", r.text()?);
    Ok(())
}

/// `services` services x 3 instances (see [`Agent::load_services`]).
pub(crate) fn load(agent: &Agent, actor: &str, services: u32) -> anyhow::Result<()> {
    agent
        .load_services(actor, services)
        .map_err(anyhow::Error::msg)
}

/// Requests/s and p99 (ms) from wrk's output.
pub(crate) fn wrk(url: &str, script: &Path, secs: u32, conns: u32) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output: {text}"))?;
    anyhow::ensure!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (num, scale) = if let Some(n) = v.strip_suffix("us") {
                (n, 0.001)
            } else if let Some(n) = v.strip_suffix("ms") {
                (n, 1.0)
            } else if let Some(n) = v.strip_suffix('s') {
                (n, 1000.0)
            } else {
                (v, 1.0)
            };
            num.parse::<f64>().unwrap_or(f64::NAN) * scale
        })
        .unwrap_or(f64::NAN);
    Ok((rps, p99))
}

fn http(dir: &Path, a: HttpArgs) -> anyhow::Result<()> {
    let node = discovery_node(&dir.join("a"), "bench", None);
    let agent = node.start();
    load(&agent, &agent.actor, a.services)?;
    let body = loop {
        let r = reqwest::blocking::get(agent.url("/v1/health/service/svc-1?passing"))?;
        let body = r.bytes()?;
        if serde_json::from_slice::<serde_json::Value>(&body)?
            .as_array()
            .is_some_and(|l| l.len() == 3)
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (nginx, nginx_url) = nginx_fixed(dir, &body)?;
    let ours_lua = dir.join("ours.lua");
    let mut f = std::fs::File::create(&ours_lua)?;
    writeln!(
        f,
        "math.randomseed(42)\nrequest = function() return wrk.format(\"GET\", \"/v1/health/service/svc-\" .. math.random(0, {}) .. \"?passing\") end",
        a.services - 1
    )?;
    eprintln!(
        "{} services x 3 instances; answer {} bytes; wrk -t2 -c{} -d{}s, alternating",
        a.services,
        body.len(),
        a.connections,
        a.seconds
    );
    let (ours, theirs) = alternate(
        dir,
        &format!("http://{}", agent.api),
        &ours_lua,
        &nginx_url,
        a.rounds,
        a.seconds,
        a.connections,
    )?;
    stop_nginx(nginx);
    println!(
        "health/service?passing: corrosion {:.0} req/s (p99 {:.2} ms), nginx fixed body {:.0} req/s (p99 {:.2} ms): {:.2}x nginx",
        mean(&ours),
        max_p99(&ours),
        mean(&theirs),
        max_p99(&theirs),
        mean(&ours) / mean(&theirs)
    );
    Ok(())
}

pub(crate) fn mean(v: &[(f64, f64)]) -> f64 {
    v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64
}

pub(crate) fn max_p99(v: &[(f64, f64)]) -> f64 {
    v.iter().map(|x| x.1).fold(0.0, f64::max)
}

/// `rounds` alternating wrk runs: ours (`script` against `ours`), then
/// nginx's fixed body; each run's (req/s, p99 ms).
#[allow(clippy::type_complexity, reason = "two lists of pairs")]
pub(crate) fn alternate(
    dir: &Path,
    ours: &str,
    script: &Path,
    nginx_url: &str,
    rounds: u32,
    secs: u32,
    conns: u32,
) -> anyhow::Result<(Vec<(f64, f64)>, Vec<(f64, f64)>)> {
    let nginx_lua = dir.join("nginx.lua");
    std::fs::write(
        &nginx_lua,
        "request = function() return wrk.format(\"GET\", \"/body.json\") end\n",
    )?;
    let (mut o, mut t) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let x = wrk(ours, script, secs, conns)?;
        let n = wrk(nginx_url, &nginx_lua, secs, conns)?;
        eprintln!(
            "round {round}: corrosion {:.0} req/s p99 {:.2} ms | nginx {:.0} req/s p99 {:.2} ms",
            x.0, x.1, n.0, n.1
        );
        o.push(x);
        t.push(n);
    }
    Ok((o, t))
}

/// SIGTERM to the master stops its workers too (SIGKILL would orphan them).
pub(crate) fn stop_nginx(mut nginx: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();
}

/// nginx serving `body` from a file as `/body.json` on 2 workers (the
/// cores): the process and its base URL.
pub(crate) fn nginx_fixed(
    dir: &Path,
    body: &[u8],
) -> anyhow::Result<(std::process::Child, String)> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("body.json"), body)?;
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  open_file_cache max=10;\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ default_type application/json; root {www}; }}\n  }}\n}}\n",
            d = dir.display(),
            www = www.display()
        ),
    )?;
    let nginx = Command::new("nginx")
        .args(["-c"])
        .arg(&conf)
        .args(["-p"])
        .arg(dir)
        .stderr(Stdio::null())
        .spawn()?;
    let nginx_url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while reqwest::blocking::get(format!("{nginx_url}/body.json")).is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((nginx, nginx_url))
}

pub(crate) fn three(dir: &Path) -> anyhow::Result<(Vec<Node>, Vec<Agent>)> {
    let a_node = discovery_node(&dir.join("a"), "host-a", None);
    let a = a_node.start();
    let mut nodes = vec![a_node];
    let mut agents = vec![a];
    for name in ["host-b", "host-c"] {
        let n = discovery_node(&dir.join(name), name, Some(&agents[0]));
        n.enable_metrics();
        agents.push(n.start());
        nodes.push(n);
    }
    Ok((nodes, agents))
}

pub(crate) fn get(url: &str) -> anyhow::Result<(u64, serde_json::Value)> {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?
        .get(url)
        .send()?;
    let idx = r
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((idx, r.json()?))
}

pub(crate) fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn set_status(agent: &Agent, status: &str) -> anyhow::Result<()> {
    post(
        agent,
        serde_json::json!([[
            "INSERT INTO consul_checks (node, id, service_id, service_name, name, status) VALUES ('host-a', 'service:web-a', 'web-a', 'web', 'c', ?) ON CONFLICT (node, id) DO UPDATE SET status = excluded.status",
            [status]
        ]]),
    )
}

fn wake(dir: &Path, a: WakeArgs) -> anyhow::Result<()> {
    let (_nodes, agents) = three(dir)?;
    post(
        &agents[0],
        serde_json::json!([
            "INSERT INTO consul_services (node, id, name, port) VALUES ('host-a', 'web-a', 'web', 80)"
        ]),
    )?;
    set_status(&agents[0], "passing")?;
    let c = &agents[2];
    let url = c.url("/v1/health/service/web");
    let start = Instant::now();
    while get(&url)?.1.as_array().is_none_or(|l| l.is_empty()) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "web never reached C"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut took = Vec::new();
    for trial in 0..a.trials {
        let (idx, _) = get(&url)?;
        let waiter_url = format!("{url}?index={idx}&wait=30s");
        let waiter = std::thread::spawn(move || {
            let r = get(&waiter_url);
            (Instant::now(), r)
        });
        // Held on C before the write (the gauge counts held queries).
        let held = Instant::now();
        while c.counter("corro_consul_blocking_queries") < 1.0 {
            anyhow::ensure!(held.elapsed() < Duration::from_secs(10), "query not held");
            std::thread::sleep(Duration::from_millis(2));
        }
        let status = if trial % 2 == 0 { "warning" } else { "passing" };
        let written = Instant::now();
        set_status(&agents[0], status)?;
        let (done, r) = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("waiter panicked"))?;
        let (new_idx, body) = r?;
        anyhow::ensure!(new_idx > idx, "trial {trial}: index did not move");
        let got = body[0]["Checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["CheckID"] == "service:web-a"))
            .and_then(|c| c["Status"].as_str())
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(
            got == status,
            "trial {trial}: woke with {got}, wanted {status}"
        );
        took.push(done.duration_since(written));
    }
    println!(
        "blocking wake-up, write on A -> held health/service answer on C, {} trials: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        a.trials,
        percentile(&mut took, 0.5),
        percentile(&mut took, 0.99),
        percentile(&mut took, 1.0)
    );
    Ok(())
}

pub(crate) fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    corro_testkit::rss_kb(pid).ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))
}

/// Connections opened from one source address: the ephemeral port range
/// holds ~28,000, so larger runs spread over 127.0.0.2, .3, ...
const PER_SOURCE: usize = 20_000;

/// A loopback source address for the `i`th connection.
fn source(i: usize) -> std::net::SocketAddr {
    let k = (i / PER_SOURCE) as u32 + 2;
    std::net::SocketAddr::from(([127, (k >> 16) as u8, (k >> 8) as u8, k as u8], 0))
}

/// Raises this process's open-files limit (soft and hard) to at least
/// `need`; the agent it starts inherits it. Raising the hard limit needs
/// root (CAP_SYS_RESOURCE).
fn raise_open_files(need: u64) -> anyhow::Result<()> {
    let (soft, hard) = nofile()?;
    if soft >= need {
        return Ok(());
    }
    let hard = hard.max(need);
    let out = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={need}:{hard}"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "raising the open-files limit to {need} failed (needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn nofile() -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| anyhow::anyhow!("no open-files line in /proc/self/limits"))?;
    let mut nums = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    match (nums.next(), nums.next()) {
        (Some(s), Some(h)) => Ok((s, h)),
        _ => anyhow::bail!("unreadable open-files limit: {line}"),
    }
}

/// Opens a connection from the `i`th source address.
async fn connect(i: usize, to: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(source(i))?;
    socket.connect(to).await
}

/// Sends one GET on `stream` and reads the answer to its end (the request
/// asks the agent to close); the status line's code.
async fn get_once(mut stream: tokio::net::TcpStream, path: &str) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let code = answer
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(code)
}

fn held(dir: &Path, a: HeldArgs) -> anyhow::Result<()> {
    let conns = if a.idle > 0 { a.idle } else { a.queries };
    // One descriptor per connection on each side, plus the agent's own.
    raise_open_files(conns as u64 + 1024)?;
    let node = Node::new(
        &dir.join("a"),
        &format!(
            "max_conns = {n}\nmax_conns_per_client = {n}\n",
            n = conns + 1024
        ),
    );
    node.with_consul_schema();
    node.append_config("[consul]\nnode_name = \"host-a\"\n");
    node.enable_metrics();
    let agent = node.start();
    // The agent writes its own node row (host-a).
    post(
        &agent,
        serde_json::json!([
            "INSERT INTO consul_services (node, id, name, port) VALUES ('host-a', 'web-a', 'web', 80), ('host-a', 'db-a', 'db', 5432)",
        ]),
    )?;
    set_status(&agent, "passing")?;
    let (idx, _) = get(&agent.url("/v1/health/service/web"))?;
    let to = agent.api;
    let rt = tokio_runtime()?;
    // Agent CPU for unrelated writes (another service) with nothing held:
    // the baseline for the same writes with every query held.
    let churn = |n: u32| -> anyhow::Result<f64> {
        let cpu = crate::subs::cpu_secs(agent.child.id())?;
        // Port changes of another service, and another service
        // registered and removed again (a removal moves the index of every
        // topic without a stamp of its own).
        for i in 0..n {
            let sql = match i % 4 {
                1 => "INSERT INTO consul_services (node, id, name, port) VALUES ('host-a', 'tmp-a', 'tmp', 1)".to_string(),
                3 => "DELETE FROM consul_services WHERE id = 'tmp-a'".to_string(),
                _ => format!("UPDATE consul_services SET port = {} WHERE id = 'db-a'", 6000 + i),
            };
            post(&agent, serde_json::json!([sql]))?;
        }
        Ok((crate::subs::cpu_secs(agent.child.id())? - cpu) / f64::from(n))
    };
    let churn = |n: u32| churn(n.next_multiple_of(4));
    // Warm-up; every call ends with the third service removed.
    churn((a.churn / 4).next_multiple_of(4))?;
    let quiet = churn(a.churn)?;
    let base = rss_kb(agent.child.id())?;
    // Idle keep-alive connections: accepted, no request.
    let mut idle = Vec::with_capacity(a.idle);
    rt.block_on(async {
        for i in 0..a.idle {
            idle.push(connect(i, to).await?);
        }
        Ok::<_, std::io::Error>(())
    })?;
    let start = Instant::now();
    while agent.counter("corro_api_connections") < a.idle as f64 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "only {} of {} idle connections accepted",
            agent.counter("corro_api_connections"),
            a.idle
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = rss_kb(agent.child.id())?;
    if a.idle > 0 {
        println!(
            "idle connections: {} on one agent; RSS {} KiB -> {} KiB ({:.1} KiB per idle connection)",
            a.idle,
            base,
            before,
            (before.saturating_sub(base)) as f64 / a.idle as f64
        );
        return Ok(());
    }
    let path = format!("/v1/health/service/web?index={idx}&wait=240s");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, u16)>();
    // Two halves: the second half's growth is the marginal cost of a held
    // query once the agent's shared structures have grown.
    let half = a.queries / 2;
    let mut rss = Vec::new();
    for (from, to_n) in [(0, half), (half, a.queries)] {
        rt.block_on(async {
            for i in from..to_n {
                let stream = connect(a.idle + i, to).await?;
                let (path, tx) = (path.clone(), tx.clone());
                tokio::spawn(async move {
                    let code = get_once(stream, &path).await.unwrap_or(0);
                    let _ = tx.send((Instant::now(), code));
                });
            }
            Ok::<_, std::io::Error>(())
        })?;
        let start = Instant::now();
        while agent.counter("corro_consul_blocking_queries") < to_n as f64 {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(300),
                "only {} of {} held",
                agent.counter("corro_consul_blocking_queries"),
                to_n
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rss.push(rss_kb(agent.child.id())?);
    }
    drop(tx);
    let (mid, during) = (rss[0], rss[1]);
    // Unrelated changes (another service) answer nobody; their CPU cost.
    let busy = churn(a.churn)?;
    std::thread::sleep(Duration::from_millis(500));
    let still = agent.counter("corro_consul_blocking_queries");
    let written = Instant::now();
    set_status(&agent, "critical")?;
    let mut last = written;
    let (mut n, mut ok) = (0, 0);
    rt.block_on(async {
        while let Some((t, code)) = rx.recv().await {
            last = t;
            n += 1;
            ok += usize::from(code == 200);
        }
    });
    anyhow::ensure!(
        ok == a.queries,
        "{ok} of {} returned 200 ({n} returned)",
        a.queries
    );
    println!(
        "held blocking queries: {} on one agent, each on its own connection; RSS {} KiB -> {} KiB ({:.1} KiB per held query; the second {}: {:.1} KiB each); one change -> all {} returned in {:.2?}",
        a.queries,
        before,
        during,
        (during.saturating_sub(before)) as f64 / a.queries as f64,
        a.queries - half,
        (during.saturating_sub(mid)) as f64 / (a.queries - half).max(1) as f64,
        n,
        last.duration_since(written)
    );
    println!(
        "unrelated writes ({}: another service's port changed, a third service registered and removed): {} still held after them; agent CPU per write {:.3} ms with all held vs {:.3} ms with none held in the same run ({:.2}x)",
        a.churn,
        still,
        busy * 1e3,
        quiet * 1e3,
        busy / quiet.max(1e-9)
    );
    Ok(())
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

fn failover(dir: &Path, a: FailoverArgs) -> anyhow::Result<()> {
    let mut nodes = vec![discovery_node(&dir.join("n0"), "host-0", None)];
    let mut agents = vec![nodes[0].start()];
    for i in 1..a.agents {
        let n = discovery_node(
            &dir.join(format!("n{i}")),
            &format!("host-{i}"),
            Some(&agents[0]),
        );
        agents.push(n.start());
        nodes.push(n);
    }
    // One service instance per node, written by each node itself.
    for (i, agent) in agents.iter().enumerate() {
        post(
            agent,
            serde_json::json!([format!(
                "INSERT INTO consul_services (node, id, name, port) VALUES ('host-{i}', 'web-{i}', 'web', 80)"
            )]),
        )?;
    }
    let status_of = |agent: &Agent, node: &str| -> anyhow::Result<Option<String>> {
        let (_, v) = get(&agent.url("/v1/health/service/web"))?;
        Ok(v.as_array().and_then(|l| {
            l.iter().find(|e| e["Node"]["Node"] == node).map(|e| {
                let crit = e["Checks"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["Status"] == "critical"));
                if crit { "critical" } else { "passing" }.to_string()
            })
        }))
    };
    let mut took = Vec::new();
    for trial in 0..a.trials {
        let v = 1 + (trial as usize % (a.agents - 1));
        let name = format!("host-{v}");
        for (i, agent) in agents.iter().enumerate() {
            let start = Instant::now();
            while status_of(agent, &format!("host-{i}"))?.as_deref() != Some("passing")
                || status_of(agent, &name)?.as_deref() != Some("passing")
            {
                anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "not all passing");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        agents[v].signal("KILL");
        let _ = agents[v].child.wait();
        let start = Instant::now();
        let mut worst = Duration::ZERO;
        for (i, agent) in agents.iter().enumerate() {
            if i == v {
                continue;
            }
            while status_of(agent, &name)?.as_deref() != Some("critical") {
                anyhow::ensure!(
                    start.elapsed() < Duration::from_secs(60),
                    "trial {trial}: never critical"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            worst = worst.max(start.elapsed());
        }
        eprintln!("trial {trial}: {name} critical on all others after {worst:.2?}");
        took.push(worst);
        agents[v] = nodes[v].start();
    }
    println!(
        "kill -9 -> instances critical in health/service on every other agent ({} agents, {} trials): p50 {:.2?}, max {:.2?}",
        a.agents,
        a.trials,
        percentile(&mut took, 0.5),
        percentile(&mut took, 1.0)
    );
    Ok(())
}
