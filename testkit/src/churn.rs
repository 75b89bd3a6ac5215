//! Real agents under churn: a cluster of agents on loopback, each with a
//! service and a TTL check registered through the Consul agent API, a
//! steady stream of KV writes to random live agents, and every period a
//! share of the agents killed with SIGKILL (the previous period's victims
//! restarted on the same addresses). Meanwhile every live agent's DNS is
//! asked for the service's SRV records, and each agent's log is read for
//! `Down` verdicts. At the end every agent is restarted, writes stop, and
//! the run waits until all agents hold identical tables.
//!
//! The report: writes acknowledged (and whether every one is present
//! everywhere), convergence after the last write, false downs (a verdict
//! about an agent that was not dead then, or an agent told it was down),
//! and the longest time any agent's DNS answered an instance of an agent
//! that was dead.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::relay::{Impairment, Partition, Relay};
use crate::{Agent, Node};

/// One run.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub agents: usize,
    /// How long agents are killed and restarted.
    pub churn: Duration,
    /// Every this often a share of the agents is killed (and the previous
    /// victims restarted).
    pub every: Duration,
    /// Share of the agents killed each period (at least one).
    pub share: f64,
    /// One KV write every this often.
    pub write_every: Duration,
    /// Longest wait for identical tables at the end.
    pub converge_limit: Duration,
    /// When set, every agent's gossip goes through a relay that delays and
    /// drops packets both ways (the agents advertise the relay).
    pub impairment: Option<Impairment>,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct ChurnReport {
    pub kills: usize,
    pub writes_acked: usize,
    pub writes_failed: usize,
    /// Acknowledged writes missing from some agent at the end.
    pub writes_missing: usize,
    /// From the last write (and every agent running again) to identical
    /// tables everywhere; `None` if not within the limit.
    pub converged_after: Option<Duration>,
    /// Down verdicts about agents that were running (and not killed in
    /// the 30 s before), and agents that were told they were down.
    pub false_downs: Vec<String>,
    /// The longest an agent's DNS kept answering a dead agent's instance
    /// after its death, and how many DNS questions were asked.
    pub max_stale: Duration,
    pub dns_questions: u64,
    /// Answers that named a dead agent's instance more than 5 s after its
    /// death.
    pub stale_over_5s: u64,
}

/// Where an agent can be reached (stable across its restarts).
#[derive(Clone, Copy)]
struct Addrs {
    api: SocketAddr,
    gossip: SocketAddr,
    dns: SocketAddr,
}

/// Shared between the orchestrator, the writer and the DNS watcher.
#[derive(Default)]
struct Shared {
    /// Per agent: killed at (None while running).
    dead_since: Vec<Option<Instant>>,
}

fn node_config(dir: &Path, i: usize, seed: Option<SocketAddr>, relay: Option<SocketAddr>) -> Node {
    let mut gossip = String::new();
    if let Some(r) = relay {
        gossip.push_str(&format!("external_addr = \"{r}\"\n"));
    }
    if let Some(s) = seed {
        gossip.push_str(&format!("bootstrap = [\"{s}\"]\n"));
    }
    let n = Node::with(dir, &gossip, "");
    n.with_consul_schema();
    n.append_config(&format!(
        "[consul]\nnode_name = \"n{i}\"\n[dns]\naddr = \"127.0.0.1:0\"\n"
    ));
    n
}

/// Pins the addresses an agent got at its first start, so restarts keep
/// them (a restart is then the same member renewed, as on a real host).
fn pin(node: &Node, a: &Addrs) {
    node.set_api_addr(&a.api.to_string());
    node.set_gossip_addr(&a.gossip.to_string());
    node.replace_in_config(
        "[dns]\naddr = \"127.0.0.1:0\"",
        &format!("[dns]\naddr = \"{}\"", a.dns),
    );
}

fn register(a: &Agent, i: usize) -> Result<(), String> {
    let client = reqwest::blocking::Client::new();
    let body = serde_json::json!({"Name": "web", "ID": "web", "Port": 8000 + i,
        "Check": {"TTL": "10m"}});
    let r = client
        .put(a.url("/v1/agent/service/register"))
        .json(&body)
        .send()
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("register on n{i}: {}", r.status()));
    }
    pass(a)
}

fn pass(a: &Agent) -> Result<(), String> {
    let r = reqwest::blocking::Client::new()
        .put(a.url("/v1/agent/check/pass/service:web"))
        .send()
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("check pass: {}", r.status()))
    }
}

/// Node names in the SRV answer for `web.service.consul`.
fn srv_nodes(sock: &UdpSocket, dns: SocketAddr, id: u16) -> Option<Vec<String>> {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut m = Message::query();
    m.metadata.id = id;
    // With EDNS the answer holds every instance (without it, 3 at random).
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    m.set_edns(edns);
    m.add_query(Query::query(
        Name::from_ascii("web.service.consul.").ok()?,
        RecordType::SRV,
    ));
    sock.send_to(&m.to_vec().ok()?, dns).ok()?;
    let mut buf = [0u8; 65_535];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let r = Message::from_vec(&buf[..n]).ok()?;
        if r.metadata.id != id {
            continue;
        }
        return Some(
            r.answers
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::SRV(srv) => srv.target.to_ascii().split('.').next().map(str::to_string),
                    _ => None,
                })
                .collect(),
        );
    }
}

/// Every agent's table contents, as one string per table.
fn tables(a: &Agent) -> Option<Vec<String>> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    let mut out = Vec::new();
    for sql in [
        "SELECT key, value FROM consul_kv ORDER BY key",
        "SELECT node, id, name, port, address FROM consul_services ORDER BY node, id",
        "SELECT node, id, status, service_id FROM consul_checks ORDER BY node, id",
        "SELECT node, actor_id, address FROM consul_nodes ORDER BY node",
    ] {
        let body = client
            .post(a.url("/v1/queries"))
            .json(&serde_json::json!(sql))
            .send()
            .ok()?
            .text()
            .ok()?;
        let rows: Vec<&str> = body.lines().filter(|l| l.contains("\"row\"")).collect();
        out.push(rows.join("\n"));
    }
    Some(out)
}

/// Runs the scenario with agents under `dir`.
pub fn run(dir: &Path, cfg: &ChurnConfig) -> Result<ChurnReport, String> {
    let n = cfg.agents.max(2);
    let mut nodes = Vec::new();
    let mut agents: Vec<Option<Agent>> = Vec::new();
    let mut addrs = Vec::new();
    let relays: Vec<Relay> = cfg
        .impairment
        .map(|imp| {
            (0..n)
                .map(|_| Relay::impaired(Partition::default(), imp))
                .collect()
        })
        .unwrap_or_default();
    // Where peers reach agent i: its relay, or its own gossip address.
    let mut advertised = Vec::new();
    for i in 0..n {
        let relay = relays.get(i).map(|r| r.addr);
        let seed = advertised.first().copied();
        let node = node_config(&dir.join(format!("n{i}")), i, seed, relay);
        let agent = node.start();
        if let Some(r) = relays.get(i) {
            r.forward_to(agent.gossip);
        }
        advertised.push(relay.unwrap_or(agent.gossip));
        let a = Addrs {
            api: agent.api,
            gossip: agent.gossip,
            dns: agent.dns_addr(),
        };
        pin(&node, &a);
        register(&agent, i)?;
        addrs.push(a);
        nodes.push(node);
        agents.push(Some(agent));
    }
    let by_gossip: HashMap<SocketAddr, usize> = advertised
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, i))
        .collect();
    // Everyone sees the service on every node before the churn starts.
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    'formed: loop {
        let mut all = true;
        let mut seen = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            let got = srv_nodes(&sock, a.dns, i as u16);
            all &= got.as_ref().is_some_and(|g| g.len() == n);
            seen.push(got);
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "the cluster did not form within 120 s; SRV answers per agent: {seen:?}"
            ));
        }
        if all {
            eprintln!("churn: {n} agents formed in {:.1?}", start.elapsed());
            break 'formed;
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    let shared = Arc::new(Mutex::new(Shared {
        dead_since: vec![None; n],
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut report = ChurnReport::default();
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    let stale = Arc::new(Mutex::new((Duration::ZERO, 0u64, 0u64)));

    let writer = {
        let (shared, stop, acked, failed) =
            (shared.clone(), stop.clone(), acked.clone(), failed.clone());
        let apis: Vec<SocketAddr> = addrs.iter().map(|a| a.api).collect();
        let every = cfg.write_every;
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let live: Vec<usize> = {
                    let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    (0..apis.len())
                        .filter(|&i| s.dead_since[i].is_none())
                        .collect()
                };
                if let Some(&i) = live.get(seq as usize % live.len().max(1)) {
                    let url = format!("http://{}/v1/kv/churn/k{seq:08}", apis[i]);
                    let ok = client
                        .put(url)
                        .body(format!("v{seq}"))
                        .send()
                        .ok()
                        .filter(|r| r.status().is_success())
                        .and_then(|r| r.text().ok())
                        .is_some_and(|t| t.trim() == "true");
                    if ok {
                        acked.lock().unwrap_or_else(|e| e.into_inner()).push(seq);
                    } else {
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    }
                    seq += 1;
                }
                std::thread::sleep(every);
            }
        })
    };

    let watcher = {
        let (shared, stop, stale) = (shared.clone(), stop.clone(), stale.clone());
        let dns: Vec<SocketAddr> = addrs.iter().map(|a| a.dns).collect();
        std::thread::spawn(move || {
            let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
                return;
            };
            let _ = sock.set_read_timeout(Some(Duration::from_millis(300)));
            let mut q = 0u16;
            while !stop.load(Ordering::Relaxed) {
                for (i, d) in dns.iter().enumerate() {
                    if shared.lock().unwrap_or_else(|e| e.into_inner()).dead_since[i].is_some() {
                        continue;
                    }
                    q = q.wrapping_add(1);
                    let Some(named) = srv_nodes(&sock, *d, q) else {
                        continue;
                    };
                    let now = Instant::now();
                    let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let mut st = stale.lock().unwrap_or_else(|e| e.into_inner());
                    st.1 += 1;
                    for name in named {
                        let Some(k) = name.strip_prefix('n').and_then(|k| k.parse::<usize>().ok())
                        else {
                            continue;
                        };
                        if let Some(Some(since)) = s.dead_since.get(k) {
                            let age = now.duration_since(*since);
                            st.0 = st.0.max(age);
                            if age > Duration::from_secs(5) {
                                st.2 += 1;
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // The churn: each period, restart the previous victims and kill new
    // ones (round robin over the agents, so each is killed in turn).
    let per = ((n as f64 * cfg.share).round() as usize).max(1);
    let mut victims: Vec<usize> = Vec::new();
    let mut next = 1usize;
    let mut killed_at: Vec<Vec<Instant>> = vec![Vec::new(); n];
    let churn_start = Instant::now();
    let mut logs: Vec<(Instant, usize, String)> = Vec::new();
    let drain = |agents: &Vec<Option<Agent>>, logs: &mut Vec<(Instant, usize, String)>| {
        let now = Instant::now();
        for (i, a) in agents.iter().enumerate() {
            if let Some(a) = a {
                for l in a.drain() {
                    if l.contains("member down") || l.contains("was declared down") {
                        logs.push((now, i, l));
                    }
                }
            }
        }
    };
    eprintln!(
        "churn: killing {per} agent(s) every {:?} for {:?}",
        cfg.every, cfg.churn
    );
    while churn_start.elapsed() < cfg.churn {
        for &v in &victims {
            let agent = nodes[v].start();
            shared.lock().unwrap_or_else(|e| e.into_inner()).dead_since[v] = None;
            let _ = pass(&agent);
            agents[v] = Some(agent);
        }
        victims.clear();
        for _ in 0..per {
            let v = next % n;
            next += 1;
            drain(&agents, &mut logs);
            if let Some(mut a) = agents[v].take() {
                let now = Instant::now();
                shared.lock().unwrap_or_else(|e| e.into_inner()).dead_since[v] = Some(now);
                killed_at[v].push(now);
                let _ = a.child.kill();
                let _ = a.child.wait();
                report.kills += 1;
                victims.push(v);
            }
        }
        let until = Instant::now() + cfg.every;
        while Instant::now() < until {
            drain(&agents, &mut logs);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for &v in &victims {
        let agent = nodes[v].start();
        shared.lock().unwrap_or_else(|e| e.into_inner()).dead_since[v] = None;
        let _ = pass(&agent);
        agents[v] = Some(agent);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = watcher.join();
    let last_write = Instant::now();

    // Identical tables everywhere, and every acknowledged write in them.
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut converged = None;
    let mut last: Vec<Option<Vec<String>>> = Vec::new();
    let mut reported = Instant::now();
    while last_write.elapsed() < cfg.converge_limit {
        drain(&agents, &mut logs);
        last = agents.iter().map(|a| a.as_ref().and_then(tables)).collect();
        if last.iter().all(|t| t.is_some() && *t == last[0]) {
            converged = Some(last_write.elapsed());
            break;
        }
        if reported.elapsed() > Duration::from_secs(10) {
            reported = Instant::now();
            let rows: Vec<Vec<usize>> = last
                .iter()
                .map(|t| {
                    t.as_ref()
                        .map(|t| t.iter().map(|x| x.lines().count()).collect())
                        .unwrap_or_default()
                })
                .collect();
            eprintln!(
                "churn: not converged {:.0?} after the last write; rows per agent (kv, services, checks, nodes): {rows:?}",
                last_write.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    report.converged_after = converged;
    let kv = last
        .first()
        .cloned()
        .flatten()
        .map(|t| t[0].clone())
        .unwrap_or_default();
    report.writes_missing = acked
        .iter()
        .filter(|s| !kv.contains(&format!("\"churn/k{s:08}\"")))
        .count();
    report.writes_acked = acked.len();
    report.writes_failed = *failed.lock().unwrap_or_else(|e| e.into_inner());
    let st = *stale.lock().unwrap_or_else(|e| e.into_inner());
    (report.max_stale, report.dns_questions, report.stale_over_5s) = st;

    // Down verdicts: legitimate only about an agent killed in the 30 s
    // before the verdict was read.
    let window = Duration::from_secs(30);
    for (at, observer, line) in logs {
        if line.contains("was declared down") {
            report
                .false_downs
                .push(format!("n{observer} was told it was down: {line}"));
            continue;
        }
        let peer = line
            .split("peer=")
            .nth(1)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|p| p.parse::<SocketAddr>().ok());
        let Some(&target) = peer.and_then(|p| by_gossip.get(&p)) else {
            continue;
        };
        let legit = killed_at[target]
            .iter()
            .any(|&k| at >= k && at.duration_since(k) <= window);
        if !legit {
            report
                .false_downs
                .push(format!("n{observer} declared n{target} down: {line}"));
        }
    }
    Ok(report)
}
