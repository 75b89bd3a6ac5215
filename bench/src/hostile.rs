//! One agent's memory after each class of hostile client (issue
//! "Hardening"), next to its memory at rest: what a local process can do
//! to its agent with requests alone. The classes are those of the
//! hostile-client test suite (`tests/hostile.rs`), at the sizes the
//! defects were found with: 3,000 instances and 3,000 distinct filters
//! (which took an agent from 30 MiB to 4.4 GiB before the answer cache was
//! bounded), 100,000 random DNS questions, 1,000 half-open connections.
//! Every class also checks the agent still answers and its data is intact.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use clap::Args;
use corro_testkit::{Agent, Node};
use rand::{Rng, RngCore, SeedableRng};

#[derive(Args)]
pub(crate) struct HostileArgs {
    /// Services (x 3 instances) loaded.
    #[arg(long, default_value_t = 1000)]
    services: u32,
    /// Distinct `?filter=` values sent to `/v1/health/state/any`.
    #[arg(long, default_value_t = 3000)]
    filters: u32,
    /// Generated query strings over every Consul route.
    #[arg(long, default_value_t = 5000)]
    queries: u32,
    /// Random DNS questions.
    #[arg(long, default_value_t = 100_000)]
    dns: u32,
    /// Connections opened and left silent.
    #[arg(long, default_value_t = 1000)]
    half_open: u32,
}

const ROUTES: [&str; 13] = [
    "/v1/catalog/services",
    "/v1/catalog/service/svc-1",
    "/v1/catalog/nodes",
    "/v1/catalog/node/node-1",
    "/v1/catalog/datacenters",
    "/v1/health/service/svc-2",
    "/v1/health/checks/svc-3",
    "/v1/health/node/node-2",
    "/v1/health/state/any",
    "/v1/agent/self",
    "/v1/agent/members",
    "/v1/status/leader",
    "/v1/status/peers",
];

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn client() -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The agent answers and its catalog holds what was loaded.
fn check_intact(agent: &Agent, services: u32) -> anyhow::Result<()> {
    let c = client()?;
    let h = c.get(agent.url("/v1/health")).send()?;
    anyhow::ensure!(h.status() == 200, "health: {}", h.text()?);
    let names: serde_json::Value = c.get(agent.url("/v1/catalog/services")).send()?.json()?;
    let n = names.as_object().map_or(0, |m| m.len());
    anyhow::ensure!(
        n == services as usize,
        "catalog lists {n} services, {services} loaded"
    );
    Ok(())
}

struct Row {
    class: &'static str,
    sent: String,
    secs: f64,
    rss_kb: u64,
}

pub(crate) fn run(a: HostileArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::new(&dir.path().join("a"), "");
    node.with_consul_schema();
    node.enable_metrics();
    node.append_config("[consul]\nnode_name = \"host\"\n[dns]\naddr = \"127.0.0.1:0\"\n");
    let agent = node.start();
    agent
        .load_services(&agent.actor, a.services)
        .map_err(anyhow::Error::msg)?;
    let c = client()?;
    // Warm up: the largest answer once, every route once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names: serde_json::Value = c.get(agent.url("/v1/catalog/services")).send()?.json()?;
        if names.as_object().map_or(0, |m| m.len()) == a.services as usize {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the load did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }
    for r in ROUTES {
        c.get(agent.url(r)).send()?;
    }
    let rest = agent.rss_kb();
    let mut rows = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);

    // 1. Deep nesting and long `not` chains.
    let t = Instant::now();
    for i in 0..200u32 {
        let f = match i % 4 {
            0 => format!("{}Node.Node == x{}", "(".repeat(2100), ")".repeat(2100)),
            1 => format!("{}Node.Node == x", "not ".repeat(1100)),
            2 => format!("{}Node.Node == x{}", "(".repeat(200), ")".repeat(200)),
            _ => format!("{}Node.Node == x", "not ".repeat(100)),
        };
        let r = c
            .get(agent.url(&format!("/v1/health/state/any?filter={}", enc(&f))))
            .send()?;
        anyhow::ensure!(r.status() == 400, "deep nesting: {}", r.status());
    }
    check_intact(&agent, a.services)?;
    rows.push(Row {
        class: "deep nesting",
        sent: "200 filters".into(),
        secs: t.elapsed().as_secs_f64(),
        rss_kb: agent.rss_kb(),
    });

    // 2. Distinct filters over the largest answer, four clients at once.
    let t = Instant::now();
    let base = agent.url("/v1/health/state/any");
    let filters = a.filters;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..4u32)
            .map(|w| {
                let base = &base;
                s.spawn(move || -> anyhow::Result<()> {
                    let c = client()?;
                    for i in (w..filters).step_by(4) {
                        let f = enc(&format!("Node != \"r{i}\""));
                        let r = c.get(format!("{base}?filter={f}")).send()?;
                        anyhow::ensure!(r.status() == 200, "distinct filter: {}", r.status());
                        r.bytes()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    check_intact(&agent, a.services)?;
    rows.push(Row {
        class: "distinct filters",
        sent: format!("{} filters on health/state/any", a.filters),
        secs: t.elapsed().as_secs_f64(),
        rss_kb: agent.rss_kb(),
    });

    // 3. Generated query strings on every route.
    let t = Instant::now();
    const KEYS: [&str; 10] = [
        "filter",
        "tag",
        "node-meta",
        "passing",
        "near",
        "dc",
        "index",
        "pretty",
        "token",
        "x",
    ];
    for _ in 0..a.queries {
        let route = ROUTES[rng.random_range(0..ROUTES.len())];
        let q = if rng.random_bool(0.5) {
            let mut b = vec![0u8; rng.random_range(0..200)];
            rng.fill_bytes(&mut b);
            enc(&String::from_utf8_lossy(&b))
        } else {
            (0..rng.random_range(0..6))
                .map(|_| {
                    let k = KEYS[rng.random_range(0..KEYS.len())];
                    let mut v = vec![0u8; rng.random_range(0..30)];
                    rng.fill_bytes(&mut v);
                    format!("{k}={}", enc(&String::from_utf8_lossy(&v)))
                })
                .collect::<Vec<_>>()
                .join("&")
        };
        let r = c.get(agent.url(&format!("{route}?{q}&wait=10ms"))).send()?;
        let status = r.status().as_u16();
        let body = r.text()?;
        anyhow::ensure!(
            status < 500 || (status == 500 && body.contains("No path to datacenter")),
            "generated query {route}?{q}: {status} {body}"
        );
    }
    check_intact(&agent, a.services)?;
    rows.push(Row {
        class: "generated queries",
        sent: format!("{} requests", a.queries),
        secs: t.elapsed().as_secs_f64(),
        rss_kb: agent.rss_kb(),
    });

    // 4. Random DNS names, types and EDNS sizes.
    let t = Instant::now();
    let dns = agent.dns_addr();
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 65_535];
    let mut answered = 0u32;
    for i in 0..a.dns {
        let mut p = vec![(i >> 8) as u8, i as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let edns = rng.random_bool(0.5);
        p[11] = u8::from(edns);
        for _ in 0..rng.random_range(0..4) {
            let mut l = vec![0u8; rng.random_range(1..40)];
            rng.fill_bytes(&mut l);
            p.push(l.len() as u8);
            p.extend_from_slice(&l);
        }
        for l in [&b"service"[..], b"consul"] {
            p.push(l.len() as u8);
            p.extend_from_slice(l);
        }
        p.push(0);
        p.extend_from_slice(&rng.random::<u16>().to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if edns {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&rng.random::<u16>().to_be_bytes());
            p.extend_from_slice(&[0; 6]);
        }
        sock.send_to(&p, dns)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && n >= 12
            && buf[..2] == p[..2]
        {
            answered += 1;
        }
    }
    anyhow::ensure!(answered == a.dns, "{answered} of {} answered", a.dns);
    check_intact(&agent, a.services)?;
    rows.push(Row {
        class: "random DNS",
        sent: format!("{} questions, all answered", a.dns),
        secs: t.elapsed().as_secs_f64(),
        rss_kb: agent.rss_kb(),
    });

    // 5. Half-open connections, and a new client next to them.
    let t = Instant::now();
    // From 127.0.0.1 the silent ones; the new client from 127.0.0.2 (one
    // address holds at most `api.max_conns_per_client`).
    let connect = |src: [u8; 4], to: SocketAddr| -> std::io::Result<TcpStream> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::from((src, 0)).into())?;
        sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
        Ok(sock.into())
    };
    let idle: Vec<TcpStream> = (0..a.half_open)
        .map(|_| connect([127, 0, 0, 1], agent.api))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut s = connect([127, 0, 0, 2], agent.api)?;
    s.write_all(b"GET /v1/catalog/services HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let new_client = started.elapsed();
    anyhow::ensure!(
        answer.starts_with(b"HTTP/1.1 200"),
        "a new client was not served"
    );
    let held = agent.rss_kb();
    drop(idle);
    check_intact(&agent, a.services)?;
    rows.push(Row {
        class: "half-open connections",
        sent: format!(
            "{} silent connections (a new client served in {:.1} ms next to them)",
            a.half_open,
            new_client.as_secs_f64() * 1000.0
        ),
        secs: t.elapsed().as_secs_f64(),
        rss_kb: held,
    });

    println!(
        "agent with {} services x 3 instances; RSS at rest {:.1} MiB",
        a.services,
        mib(rest)
    );
    println!(
        "{:<22} {:>9} {:>12} {:>10}  sent",
        "class", "seconds", "RSS after", "vs rest"
    );
    for r in &rows {
        println!(
            "{:<22} {:>9.1} {:>8.1} MiB {:>+6.1} MiB  {}",
            r.class,
            r.secs,
            mib(r.rss_kb),
            mib(r.rss_kb) - mib(rest),
            r.sent
        );
    }
    println!(
        "answer cache {:.1} MiB, DNS cache {:.1} MiB, evictions {} / {}",
        agent.gauge("corro_consul_cache_bytes") / 1048576.0,
        agent.gauge("corro_dns_cache_bytes") / 1048576.0,
        agent.counter("corro_consul_cache_evictions_total"),
        agent.counter("corro_dns_cache_evictions_total"),
    );
    Ok(())
}
