//! DNS throughput: `dnsperf -c 4 -q 200` for a few seconds against the
//! agent's responder serving 1,000 services x 3 instances (and a quarter as
//! many IPv6 services), and against NSD serving the same records as a
//! static zone, alternating in the same run.
//!
//! The question file is one of: `a` (every service, A), `srv` (every
//! service, SRV), or `mixed` (the default): 30 % A, 25 % SRV, 10 % AAAA of
//! IPv6 services, 5 % AAAA of IPv4-only services (NODATA with the SOA),
//! 10 % tag lookups (A and SRV), 20 % names that do not exist (NXDOMAIN
//! with the SOA).

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
    /// The question file: `a`, `srv` or `mixed`.
    #[arg(long, value_enum, default_value_t = Questions::Mixed)]
    questions: Questions,
    /// NSD's `server-count` (its fastest on a 2-core machine where dnsperf
    /// needs a core too is 1, the agent's one process).
    #[arg(long, default_value_t = 1)]
    nsd_servers: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Questions {
    A,
    Srv,
    Mixed,
}

/// The question file for `services` IPv4 services and `v6` IPv6 ones.
fn question_file(kind: Questions, services: u32, v6: u32) -> String {
    let mut q = String::new();
    for i in 0..services {
        match kind {
            Questions::A => q.push_str(&format!("svc-{i}.service.consul A\n")),
            Questions::Srv => q.push_str(&format!("svc-{i}.service.consul SRV\n")),
            Questions::Mixed => {
                for slot in 0..20 {
                    let line = match slot {
                        0..=5 => format!("svc-{i}.service.consul A"),
                        6..=10 => format!("svc-{i}.service.consul SRV"),
                        11 => format!("v6-{}.service.consul AAAA", i % v6.max(1)),
                        12 => format!("v6-{}.service.consul SRV", i % v6.max(1)),
                        13 => format!("svc-{i}.service.consul AAAA"),
                        14 => format!("v1.svc-{i}.service.consul A"),
                        15 => format!("v1.svc-{i}.service.consul SRV"),
                        _ => format!("nope-{i}-{slot}.service.consul A"),
                    };
                    q.push_str(&line);
                    q.push('\n');
                }
            }
        }
    }
    q
}

/// The IPv6 address of instance `y` of IPv6 service `x`.
fn v6_addr(x: u32, y: u32) -> std::net::Ipv6Addr {
    format!("fd00::{x:x}:{y}")
        .parse()
        .unwrap_or(std::net::Ipv6Addr::LOCALHOST)
}

/// The same records as a static `consul.` zone for NSD.
fn zone(services: u32, v6: u32) -> String {
    let mut zone = String::from(
        "$ORIGIN consul.\n$TTL 0\n@ IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0\n@ IN NS ns.consul.\nns IN A 127.0.0.1\n",
    );
    for y in 0..3 {
        zone.push_str(&format!("node-{y}.node.dc1 IN A 10.0.0.{}\n", y + 1));
    }
    for i in 0..services {
        for owner in [format!("svc-{i}.service"), format!("v1.svc-{i}.service")] {
            for y in 0..3 {
                zone.push_str(&format!("{owner} IN A 10.0.0.{}\n", y + 1));
                zone.push_str(&format!(
                    "{owner} IN SRV 1 1 {} node-{y}.node.dc1.consul.\n",
                    8000 + y
                ));
            }
        }
    }
    for x in 0..v6 {
        for y in 0..3 {
            let ip = v6_addr(x, y);
            let hex = format!("{:032x}", u128::from(ip));
            zone.push_str(&format!("v6-{x}.service IN AAAA {ip}\n"));
            zone.push_str(&format!(
                "v6-{x}.service IN SRV 1 1 {} {hex}.addr.dc1.consul.\n",
                9000 + y
            ));
            zone.push_str(&format!("{hex}.addr.dc1 IN AAAA {ip}\n"));
        }
    }
    zone
}

/// One dnsperf run's report.
struct Perf {
    qps: f64,
    lost: u64,
    /// Average latency, ms.
    lat: f64,
    /// The rcode shares, as dnsperf prints them.
    codes: String,
    /// Average response size in bytes.
    size: String,
}

fn dnsperf(port: u16, queries: &Path, secs: u32) -> anyhow::Result<Perf> {
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
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let codes = line("Response codes:");
    let size = line("Average packet size:");
    let size = size.rsplit(' ').next().unwrap_or_default().to_string();
    Ok(Perf {
        qps,
        lost,
        lat,
        codes,
        size,
    })
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
    // A quarter as many IPv6 services (own addresses, so their SRV targets
    // are `<hex>.addr` names with AAAA glue).
    let v6 = (a.services / 4).max(1);
    let r = reqwest::blocking::Client::new()
        .post(agent.url("/v1/transactions"))
        .json(&serde_json::json!([format!(
            "INSERT INTO consul_services (node, id, name, tags, port, address) WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < {}), n(y) AS (VALUES (0), (1), (2)) SELECT 'node-' || y, 'v6-' || x || '-' || y, 'v6-' || x, '[\"v1\"]', 9000 + y, 'fd00::' || printf('%x', x) || ':' || y FROM s, n",
            v6 - 1
        )]))
        .send()?;
    anyhow::ensure!(
        r.status().is_success(),
        "loading IPv6 services: {}",
        r.text()?
    );
    let queries = dir.join("queries.txt");
    std::fs::write(&queries, question_file(a.questions, a.services, v6))?;
    std::fs::write(dir.join("consul.zone"), zone(a.services, v6))?;
    let nsd_port = free_port();
    let conf = dir.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  port: {nsd_port}\n  ip-address: 127.0.0.1\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  database: \"\"\n  server-count: {servers}\n  rrl-ratelimit: 0\n  verbosity: 0\nremote-control:\n  control-enable: no\nzone:\n  name: \"consul\"\n  zonefile: \"consul.zone\"\n",
            d = dir.display(),
            servers = a.nsd_servers.max(1),
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
                .args(["@127.0.0.1", "-p", &port.to_string(), "+short"])
                .args(["svc-1.service.consul", "A"])
                .args([&format!("v6-{}.service.consul", v6 - 1), "AAAA"])
                .output()?;
            if String::from_utf8_lossy(&out.stdout).lines().count() == 6 {
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
        "{} services x 3 instances (+{v6} IPv6); questions: {}; NSD server-count {}; agent RSS {} KiB empty, {} KiB loaded; dnsperf -c 4 -q 200 -l {}, alternating; {} changes/s",
        a.services,
        match a.questions {
            Questions::A => "A",
            Questions::Srv => "SRV",
            Questions::Mixed => "mixed (30% A, 25% SRV, 15% AAAA, 10% tag, 20% missing)",
        },
        a.nsd_servers,
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
            "round {round}: corrosion {:.0} q/s (lost {}, avg {:.3} ms, response {} B; {}) | NSD {:.0} q/s (lost {}, avg {:.3} ms, response {} B; {})",
            o.qps, o.lost, o.lat, o.size, o.codes, n.qps, n.lost, n.lat, n.size, n.codes
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
    let median = |v: &[Perf]| {
        let mut q: Vec<f64> = v.iter().map(|x| x.qps).collect();
        q.sort_by(f64::total_cmp);
        q[q.len() / 2]
    };
    println!(
        "dns: corrosion {:.0} q/s, NSD {:.0} q/s (medians of {} rounds): {:.2}x NSD; lost {} vs {}",
        median(&ours),
        median(&theirs),
        a.rounds,
        median(&ours) / median(&theirs),
        ours.iter().map(|x| x.lost).sum::<u64>(),
        theirs.iter().map(|x| x.lost).sum::<u64>()
    );
    Ok(())
}
