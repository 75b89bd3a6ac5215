//! Checks run by the agent (issue "Consul removable"): what 10,000 HTTP
//! checks plus 10,000 TTL checks cost one agent at rest (CPU, RSS,
//! replicated writes), how fast a registrator can register (next to the
//! agent's own single-row write path in the same run), and how long a
//! failing target takes to leave another agent's DNS answers (next to the
//! check's interval and timeout).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use corro_testkit::{Agent, Node};

#[derive(Subcommand)]
pub(crate) enum ChecksCmd {
    /// Many HTTP and TTL checks on one agent: CPU, RSS, replicated writes
    /// while steady; registration throughput.
    Scale(ScaleArgs),
    /// A failing HTTP target: time until its instance leaves another
    /// agent's DNS answers.
    Failover(FailoverArgs),
}

#[derive(Args)]
pub(crate) struct ScaleArgs {
    /// Services with one HTTP check each.
    #[arg(long, default_value_t = 10_000)]
    http: u32,
    /// Services with one TTL check each.
    #[arg(long, default_value_t = 10_000)]
    ttl: u32,
    /// HTTP check interval, seconds.
    #[arg(long, default_value_t = 10)]
    interval: u32,
    /// Seconds measured while steady.
    #[arg(long, default_value_t = 60)]
    secs: u32,
    /// Concurrent registering clients.
    #[arg(long, default_value_t = 8)]
    clients: u32,
}

#[derive(Args)]
pub(crate) struct FailoverArgs {
    #[arg(long, default_value_t = 20)]
    trials: u32,
    /// Check interval, milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Check timeout, milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

pub(crate) fn run(cmd: ChecksCmd) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    match cmd {
        ChecksCmd::Scale(a) => scale(dir.path(), a),
        ChecksCmd::Failover(a) => failover(dir.path(), a),
    }
}

/// An HTTP target on loopback answering `200 ok` (or `500` while `fail`),
/// one thread per connection (keep-alive off, as the checks use).
fn target(fail: Arc<AtomicBool>) -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let fail = fail.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf);
                let resp: &[u8] = if fail.load(Ordering::SeqCst) {
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfail"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                };
                let _ = c.write_all(resp);
            });
        }
    });
    Ok(port)
}

fn node(dir: &Path, name: &str, seed: Option<&Agent>, extra: &str) -> Node {
    let n = match seed {
        Some(s) => Node::joining(dir, s),
        None => Node::new(dir, ""),
    };
    n.with_consul_schema();
    n.enable_metrics();
    n.append_config(&format!(
        "[consul]\nnode_name = \"{name}\"\n[dns]\naddr = \"127.0.0.1:0\"\n{extra}"
    ));
    n
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

/// Sends `bodies` with `clients` concurrent clients (`put`: PUT to `path`,
/// else POST): requests/s and the p99 latency.
fn hammer(
    agent: &Agent,
    path: &str,
    put: bool,
    bodies: Vec<serde_json::Value>,
    clients: u32,
) -> anyhow::Result<(f64, Duration)> {
    let chunks: Vec<Vec<serde_json::Value>> = {
        let per = bodies.len().div_ceil(clients as usize).max(1);
        bodies.chunks(per).map(<[_]>::to_vec).collect()
    };
    let url = agent.url(path);
    let start = Instant::now();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let url = url.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let c = reqwest::blocking::Client::new();
                let mut lat = Vec::with_capacity(chunk.len());
                for b in chunk {
                    let t = Instant::now();
                    let req = if put { c.put(&url) } else { c.post(&url) };
                    let r = req.json(&b).send()?;
                    anyhow::ensure!(r.status().is_success(), "{}: {}", r.status(), r.text()?);
                    lat.push(t.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    Ok((rate, percentile(&mut all, 0.99)))
}

fn cpu_and_writes(agent: &Agent, pid: u32) -> anyhow::Result<(f64, f64, f64)> {
    Ok((
        crate::subs::cpu_secs(pid)?,
        agent.counter("corro_registry_rows_written_total"),
        agent.counter("corro_checks_probes_total"),
    ))
}

fn scale(dir: &Path, a: ScaleArgs) -> anyhow::Result<()> {
    let port = target(Arc::new(AtomicBool::new(false)))?;
    let n = node(
        &dir.join("a"),
        "host-a",
        None,
        &format!(
            "[services]\nmax_checks = {}\nmax_services = {}\n",
            a.http + a.ttl + 10,
            a.http + a.ttl + 10
        ),
    );
    let agent = n.start();
    let pid = agent.child.id();
    // At rest, before any registration.
    let (c0, _, _) = cpu_and_writes(&agent, pid)?;
    std::thread::sleep(Duration::from_secs(5));
    let (c1, _, _) = cpu_and_writes(&agent, pid)?;
    let rest_cpu = (c1 - c0) / 5.0 * 100.0;
    let rest_rss = agent.rss_kb() as f64 / 1024.0;

    // Registration throughput, next to single-row writes through the
    // agent's own API on the same machine in the same run.
    let writes: Vec<serde_json::Value> = (0..a.ttl.min(5000))
        .map(|i| {
            serde_json::json!([[
                "INSERT INTO todos (id, title) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET title = excluded.title",
                [format!("w{i}"), "x"]
            ]])
        })
        .collect();
    let (tx_rate, tx_p99) = hammer(&agent, "/v1/transactions", false, writes, a.clients)?;
    let ttl_bodies: Vec<serde_json::Value> = (0..a.ttl)
        .map(|i| {
            serde_json::json!({"Name": format!("job-{}", i % 100), "ID": format!("job-{i}"),
                "Port": 7000, "Tags": ["batch"],
                "Check": {"CheckID": format!("job-{i}-ttl"), "TTL": "30m", "Status": "passing"}})
        })
        .collect();
    let (reg_rate, reg_p99) = hammer(
        &agent,
        "/v1/agent/service/register",
        true,
        ttl_bodies,
        a.clients,
    )?;
    // Re-registering the same bodies (a registrator after a restart).
    let again: Vec<serde_json::Value> = (0..a.ttl)
        .map(|i| {
            serde_json::json!({"Name": format!("job-{}", i % 100), "ID": format!("job-{i}"),
                "Port": 7000, "Tags": ["batch"],
                "Check": {"CheckID": format!("job-{i}-ttl"), "TTL": "30m", "Status": "passing"}})
        })
        .collect();
    let (again_rate, again_p99) =
        hammer(&agent, "/v1/agent/service/register", true, again, a.clients)?;
    let http_bodies: Vec<serde_json::Value> = (0..a.http)
        .map(|i| {
            serde_json::json!({"Name": format!("web-{}", i % 100), "ID": format!("web-{i}"),
                "Port": port, "Check": {"CheckID": format!("web-{i}-http"),
                "HTTP": format!("http://127.0.0.1:{port}/health"),
                "Interval": format!("{}s", a.interval), "Timeout": "2s"}})
        })
        .collect();
    hammer(
        &agent,
        "/v1/agent/service/register",
        true,
        http_bodies,
        a.clients,
    )?;

    // Every HTTP check has run at least once (staggered over an interval).
    let deadline = Instant::now() + Duration::from_secs(u64::from(a.interval) * 4 + 60);
    loop {
        let v: serde_json::Value =
            reqwest::blocking::get(agent.url("/v1/health/state/critical"))?.json()?;
        let critical = v.as_array().map_or(usize::MAX, Vec::len);
        if critical == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{critical} checks still critical"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // One more interval so every check is in its steady rhythm.
    std::thread::sleep(Duration::from_secs(u64::from(a.interval)));
    let head0 = n.books()[agent.actor.as_str()]["head"]
        .as_u64()
        .unwrap_or(0);
    let (c0, w0, p0) = cpu_and_writes(&agent, pid)?;
    std::thread::sleep(Duration::from_secs(u64::from(a.secs)));
    let (c1, w1, p1) = cpu_and_writes(&agent, pid)?;
    let head1 = n.books()[agent.actor.as_str()]["head"]
        .as_u64()
        .unwrap_or(0);
    let secs = f64::from(a.secs);
    let cpu = (c1 - c0) / secs * 100.0;
    let rss = agent.rss_kb() as f64 / 1024.0;
    println!(
        "checks scale: {} HTTP checks every {} s + {} TTL checks, one agent, {} s measured",
        a.http, a.interval, a.ttl, a.secs
    );
    println!(
        "  at rest (nothing registered): CPU {rest_cpu:.2} % of one core, RSS {rest_rss:.1} MiB"
    );
    println!(
        "  steady: CPU {cpu:.2} % of one core, RSS {rss:.1} MiB, probes {:.0}/s, replicated rows written {:.2}/s, local versions {:.2}/s",
        (p1 - p0) / secs,
        (w1 - w0) / secs,
        (head1.saturating_sub(head0)) as f64 / secs
    );
    println!(
        "  registration ({} clients): {reg_rate:.0}/s p99 {reg_p99:.2?} first time, {again_rate:.0}/s p99 {again_p99:.2?} unchanged re-registration; single-row writes through /v1/transactions {tx_rate:.0}/s p99 {tx_p99:.2?} (ratio {:.2}x)",
        a.clients,
        reg_rate / tx_rate.max(1e-9)
    );
    Ok(())
}

/// How many A records B's DNS answers for `name`.
fn dns_answers(sock: &UdpSocket, addr: SocketAddr, name: &str) -> anyhow::Result<usize> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    sock.send_to(&m.to_vec()?, addr)?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf)?;
    let r = Message::from_vec(&buf[..n])?;
    Ok(r.answers.len())
}

fn failover(dir: &Path, a: FailoverArgs) -> anyhow::Result<()> {
    let fail = Arc::new(AtomicBool::new(false));
    let port = target(fail.clone())?;
    let an = node(&dir.join("a"), "host-a", None, "");
    let agent_a = an.start();
    let bn = node(&dir.join("b"), "host-b", Some(&agent_a), "");
    let agent_b = bn.start();
    let dns = agent_b.dns_addr();
    // B's DNS answers once its membership has settled or `[dns]
    // start_wait` (3 s) has passed: A started alone and is not settled
    // yet, so here it is the wait.
    agent_b.expect("dns: answering");
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let body = serde_json::json!({"Name": "fo", "ID": "fo-1", "Port": port,
        "Check": {"HTTP": format!("http://127.0.0.1:{port}/"),
            "Interval": format!("{}ms", a.interval_ms), "Timeout": format!("{}ms", a.timeout_ms)}});
    let r = reqwest::blocking::Client::new()
        .put(agent_a.url("/v1/agent/service/register"))
        .json(&body)
        .send()?;
    anyhow::ensure!(r.status().is_success(), "register: {}", r.text()?);
    let mut took = Vec::new();
    for trial in 0..a.trials {
        fail.store(false, Ordering::SeqCst);
        let start = Instant::now();
        while dns_answers(&sock, dns, "fo.service.consul.")? != 1 {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "never passing");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A random phase within the interval.
        std::thread::sleep(Duration::from_millis(rand::random_range(
            0..a.interval_ms.max(1),
        )));
        fail.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        while dns_answers(&sock, dns, "fo.service.consul.")? != 0 {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "never left DNS");
            std::thread::sleep(Duration::from_millis(2));
        }
        let t = t0.elapsed();
        eprintln!("trial {trial}: gone from B's DNS after {t:.2?}");
        took.push(t);
    }
    let bound = Duration::from_millis(a.interval_ms + a.timeout_ms + 100);
    println!(
        "target fails -> instance gone from another agent's DNS ({} trials, interval {} ms, timeout {} ms): p50 {:.0?}, p99 {:.0?}, max {:.0?} (interval + timeout + 100 ms = {:.0?})",
        a.trials,
        a.interval_ms,
        a.timeout_ms,
        percentile(&mut took, 0.5),
        percentile(&mut took, 0.99),
        percentile(&mut took, 1.0),
        bound
    );
    Ok(())
}
