//! DNS throughput (issue "Service discovery II"): `dnsperf -c 4 -q 200` for
//! a few seconds against the agent's responder serving 1,000 services x 3
//! instances, and against NSD serving the equivalent static zone,
//! alternating in the same run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use corro_testkit::{Node, free_port};

#[derive(Args)]
pub(crate) struct DnsArgs {
    #[arg(long, default_value_t = 1000)]
    services: u32,
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Alternating rounds (each: ours, then NSD).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Service changes per second written to the agent while dnsperf runs
    /// against it (0: none).
    #[arg(long, default_value_t = 0)]
    churn: u32,
}

/// (queries/s, lost, average latency in ms) from dnsperf's report.
fn dnsperf(port: u16, queries: &Path, secs: u32) -> anyhow::Result<(f64, u64, f64)> {
    let out = Command::new("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            "4",
            "-q",
            "200",
            "-l",
            &secs.to_string(),
            "-d",
        ])
        .arg(queries)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
    };
    let qps = field("Queries per second:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no qps in dnsperf output: {text}"))?;
    let lost = field("Queries lost:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let lat = field("Average Latency (s):")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        * 1000.0;
    Ok((qps, lost, lat))
}

pub(crate) fn run(a: DnsArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let node = Node::new(&dir.join("agent"), "");
    node.with_consul_schema();
    let dns_port = free_port();
    node.append_config(&format!(
        "[consul]\nnode_name = \"bench\"\n[dns]\naddr = \"127.0.0.1:{dns_port}\"\n"
    ));
    let agent = node.start();
    let idle = crate::consul::rss_kb(agent.child.id())?;
    crate::consul::load(&agent, &agent.actor, a.services)?;
    // Queries: every service name, A.
    let queries = dir.join("queries.txt");
    let mut q = String::new();
    for i in 0..a.services {
        writeln!(q, "svc-{i}.service.consul A")?;
    }
    std::fs::write(&queries, q)?;
    // The same records as a static zone for NSD.
    let mut zone = String::from(
        "$ORIGIN consul.\n$TTL 0\n@ IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0\n@ IN NS ns.consul.\nns IN A 127.0.0.1\n",
    );
    for i in 0..a.services {
        for n in 0..3 {
            writeln!(zone, "svc-{i}.service IN A 10.0.0.{}", n + 1)?;
        }
    }
    std::fs::write(dir.join("consul.zone"), zone)?;
    let nsd_port = free_port();
    let conf = dir.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  port: {nsd_port}\n  ip-address: 127.0.0.1\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  database: \"\"\n  server-count: 2\n  verbosity: 0\nremote-control:\n  control-enable: no\nzone:\n  name: \"consul\"\n  zonefile: \"consul.zone\"\n",
            d = dir.display()
        ),
    )?;
    let mut nsd = Command::new("nsd")
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Both answer before measuring.
    let start = Instant::now();
    for port in [dns_port, nsd_port] {
        loop {
            let out = Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "+short",
                    "svc-1.service.consul",
                ])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).lines().count() == 3 {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "port {port} not answering"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!(
        "{} services x 3 instances; agent RSS {} KiB empty, {} KiB loaded; dnsperf -c 4 -q 200 -l {}, alternating; {} changes/s",
        a.services,
        idle,
        crate::consul::rss_kb(agent.child.id())?,
        a.seconds,
        a.churn
    );
    // Churn: flip one random instance's check between passing and warning
    // (both answered, so every answer stays complete) at a steady rate.
    let churning = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn_thread = (a.churn > 0).then(|| {
        let (url, churning, done, services, rate) = (
            agent.url("/v1/transactions"),
            churning.clone(),
            done.clone(),
            a.services,
            a.churn,
        );
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            let client = reqwest::blocking::Client::new();
            let mut n: u64 = 0;
            let mut written = 0u64;
            let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
            while !done.load(Ordering::Relaxed) {
                if !churning.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let sent = Instant::now();
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let svc = (n >> 33) % u64::from(services);
                let status = if (n >> 20) & 1 == 0 {
                    "warning"
                } else {
                    "passing"
                };
                let _ = client
                    .post(&url)
                    .json(&serde_json::json!([[
                        "UPDATE consul_checks SET status = ? WHERE id = ?",
                        [status, format!("service:svc-{svc}-0")]
                    ]]))
                    .send();
                written += 1;
                if let Some(wait) = gap.checked_sub(sent.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            written
        })
    });
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        churning.store(true, std::sync::atomic::Ordering::Relaxed);
        let o = dnsperf(dns_port, &queries, a.seconds)?;
        churning.store(false, std::sync::atomic::Ordering::Relaxed);
        let n = dnsperf(nsd_port, &queries, a.seconds)?;
        eprintln!(
            "round {round}: corrosion {:.0} q/s (lost {}, avg {:.3} ms) | NSD {:.0} q/s (lost {}, avg {:.3} ms)",
            o.0, o.1, o.2, n.0, n.1, n.2
        );
        ours.push(o);
        theirs.push(n);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = churn_thread {
        let written = t
            .join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))?;
        eprintln!("{written} changes written during the corrosion rounds");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &nsd.id().to_string()])
        .status();
    let _ = nsd.wait();
    let median = |v: &[(f64, u64, f64)]| {
        let mut q: Vec<f64> = v.iter().map(|x| x.0).collect();
        q.sort_by(f64::total_cmp);
        q[q.len() / 2]
    };
    println!(
        "dns: corrosion {:.0} q/s, NSD {:.0} q/s (medians of {} rounds): {:.2}x NSD; lost {} vs {}",
        median(&ours),
        median(&theirs),
        a.rounds,
        median(&ours) / median(&theirs),
        ours.iter().map(|x| x.1).sum::<u64>(),
        theirs.iter().map(|x| x.1).sum::<u64>()
    );
    Ok(())
}
