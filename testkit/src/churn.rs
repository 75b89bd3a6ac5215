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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::relay::{Impairment, Partition, Relay};
use crate::{Agent, Node};

/// One run.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub agents: usize,
    /// Kill rounds (the last round's victims are restarted at the end).
    pub periods: usize,
    /// Time between kill rounds (victims stay dead this long).
    pub every: Duration,
    /// Share of the agents killed each period (at least one).
    pub share: f64,
    /// One KV write started every this often (to the live agents in turn).
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
    /// Acknowledged writes missing from the final tables (checked on every
    /// agent's table, which are identical once converged).
    pub writes_missing: usize,
    /// Identical tables everywhere, counted from the last acknowledged
    /// write and from the start of the last restart; `None` if not within
    /// the limit. `poll` is how long one comparison of every agent took.
    pub converged_after_write: Option<Duration>,
    pub converged_after_restart: Option<Duration>,
    pub poll: Duration,
    /// Down verdicts about an agent that was not dead (outside its kill to
    /// restart window plus 10 s, by the log line's own timestamp), and
    /// agents told they were down.
    pub false_downs: Vec<String>,
    /// "member down" lines that could not be tied to an agent.
    pub unclassified_downs: usize,
    /// Restarted agents told, within 15 s of their restart, that their new
    /// identity was down (they renew it and rejoin): a known defect, kept
    /// apart from the false downs of agents that were running all along.
    pub restart_renewals: Vec<String>,
    /// Per (answering agent, death), answering agents that ran through
    /// the whole death: how long until that agent's DNS stopped naming the
    /// dead agent's instance. p50, p99, max.
    pub removal: (Duration, Duration, Duration),
    pub removals: usize,
    /// The same for answering agents that (re)started less than 15 s
    /// before the death or during it. A starting agent counts nodes its
    /// SWIM view does not hold yet as alive for its first 5 s (so that it
    /// does not report the whole cluster critical), which includes the
    /// dead: they stay in its answers until then.
    pub removal_fresh: (Duration, Duration, Duration),
    pub removals_fresh: usize,
    /// Deaths an answering agent still named when the dead agent restarted
    /// (answering agents that ran through the whole death).
    pub not_removed: usize,
    /// The same, answering agents that (re)started shortly before or
    /// during the death.
    pub not_removed_fresh: usize,
    /// Pairs left out: the answering agent was itself killed before the
    /// dead agent restarted (named it in its last answers, then died).
    pub answerer_died: usize,
    /// The pairs counted in `not_removed`: (answering agent, dead agent,
    /// its death number, seconds since the death at the last answer
    /// naming it).
    pub not_removed_pairs: Vec<(usize, usize, u32, f64)>,
    /// The pairs counted in `not_removed_fresh`, for diagnosis.
    pub not_removed_fresh_pairs: Vec<FreshPair>,
    /// SRV answers asked for, unanswered (timeouts), and answers that named
    /// an instance dead for more than 5 s.
    pub dns_questions: u64,
    pub dns_timeouts: u64,
    pub stale_answers: u64,
}

/// A (re)started answering agent that still named a dead agent when the
/// dead one restarted.
#[derive(Debug, Clone)]
pub struct FreshPair {
    pub answering: usize,
    pub dead: usize,
    pub death: u32,
    /// The answering agent's (re)start, in seconds after the death
    /// (negative: before it).
    pub started_after: f64,
    /// Seconds after the death of its last answer naming the dead agent.
    pub last_named: f64,
    /// When the answering agent logged the dead agent "member down", in
    /// seconds after the death (None: it never did).
    pub down_logged: Option<f64>,
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
    /// Per agent: killed at (None while running or restarting).
    dead_since: Vec<Option<Instant>>,
    /// Per agent: how many times it was killed (names a death).
    deaths: Vec<u32>,
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

/// Pins an agent's addresses before its first start, so restarts keep
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

/// The SRV question for `web.service.consul` with message id `id`.
fn srv_question(id: u16) -> Option<Vec<u8>> {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};
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
    m.to_vec().ok()
}

/// An answer's message id and the node names in its SRV records.
fn srv_answer(packet: &[u8]) -> Option<(u16, Vec<String>)> {
    use hickory_proto::op::Message;
    use hickory_proto::rr::RData;
    let r = Message::from_vec(packet).ok()?;
    let names = r
        .answers
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::SRV(srv) => srv.target.to_ascii().split('.').next().map(str::to_string),
            _ => None,
        })
        .collect();
    Some((r.metadata.id, names))
}

/// Node names in the SRV answer for `web.service.consul`.
fn srv_nodes(sock: &UdpSocket, dns: SocketAddr, id: u16) -> Option<Vec<String>> {
    sock.send_to(&srv_question(id)?, dns).ok()?;
    let mut buf = [0u8; 65_535];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        match srv_answer(&buf[..n]) {
            Some((got, names)) if got == id => return Some(names),
            _ => continue,
        }
    }
}

/// One round of the watcher: the question goes to every agent in `dns` at
/// once, and each answer is timed when it arrives (within `limit`).
/// Returns (agent, arrival, node names) per answer and how many went
/// unanswered.
fn ask_all(
    sock: &UdpSocket,
    dns: &[(usize, SocketAddr)],
    next_id: &mut u16,
    limit: Duration,
) -> (Vec<(usize, Instant, Vec<String>)>, usize) {
    let mut pending: HashMap<u16, usize> = HashMap::new();
    for (a, d) in dns {
        *next_id = next_id.wrapping_add(1);
        if let Some(q) = srv_question(*next_id)
            && sock.send_to(&q, d).is_ok()
        {
            pending.insert(*next_id, *a);
        }
    }
    let unsent = dns.len() - pending.len();
    let deadline = Instant::now() + limit;
    let mut answers = Vec::new();
    let mut buf = [0u8; 65_535];
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            break;
        };
        if let Some((id, names)) = srv_answer(&buf[..n])
            && let Some(a) = pending.remove(&id)
        {
            answers.push((a, Instant::now(), names));
        }
    }
    (answers, unsent + pending.len())
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
        let r = client
            .post(a.url("/v1/queries"))
            .json(&serde_json::json!(sql))
            .send()
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let body = r.text().ok()?;
        // A complete answer ends with its end-of-query event.
        if !body.lines().any(|l| l.starts_with("{\"eoq\"")) {
            return None;
        }
        let rows: Vec<&str> = body.lines().filter(|l| l.contains("\"row\"")).collect();
        out.push(rows.join("\n"));
    }
    Some(out)
}

/// A log line's own time (tracing's RFC 3339 UTC prefix).
fn line_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days since the epoch of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60;
    let total = Duration::from_secs(u64::try_from(secs).ok()?) + Duration::from_secs_f64(sec);
    Some(UNIX_EPOCH + total)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
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
        // Fixed from the first start, below the ephemeral port range: an
        // hour of restarts at the same addresses otherwise meets a port
        // some outgoing socket took while the agent was down.
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let a = Addrs {
            api: local(crate::fixed_port()),
            gossip: local(crate::fixed_port()),
            dns: local(crate::fixed_port()),
        };
        pin(&node, &a);
        let agent = node.start();
        if let Some(r) = relays.get(i) {
            r.forward_to(agent.gossip);
        }
        advertised.push(relay.unwrap_or(agent.gossip));
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
        deaths: vec![0; n],
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut report = ChurnReport::default();
    let acked: Arc<Mutex<(Vec<u64>, Option<Instant>)>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    // Watcher results: per (answerer, victim, death) the removal time once
    // seen; counts of questions, timeouts and stale answers; per pair the
    // age of the death at the last answer naming the dead agent.
    type Removals = HashMap<(usize, usize, u32), Option<Duration>>;
    type LastNamed = HashMap<(usize, usize, u32), Duration>;
    type Watched = (Removals, u64, u64, u64, LastNamed);
    let watched: Arc<Mutex<Watched>> = Arc::default();

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
            let start = Instant::now();
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
                        let mut a = acked.lock().unwrap_or_else(|e| e.into_inner());
                        a.0.push(seq);
                        a.1 = Some(Instant::now());
                    } else {
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    }
                    seq += 1;
                }
                // A steady rate: the next write starts on its own schedule.
                let next = start + every * u32::try_from(seq).unwrap_or(u32::MAX);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };

    let watcher = {
        let (shared, stop, watched) = (shared.clone(), stop.clone(), watched.clone());
        let dns: Vec<SocketAddr> = addrs.iter().map(|a| a.dns).collect();
        std::thread::spawn(move || {
            let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
                return;
            };
            let mut q = 0u16;
            while !stop.load(Ordering::Relaxed) {
                // Every live agent at once: an answer is timed when it
                // arrives, so removal times are late by about one round
                // (the questions, the answers, then 50 ms).
                let live: Vec<(usize, SocketAddr)> = {
                    let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    dns.iter()
                        .enumerate()
                        .filter(|(a, _)| s.dead_since[*a].is_none())
                        .map(|(a, d)| (a, *d))
                        .collect()
                };
                let (answers, unanswered) =
                    ask_all(&sock, &live, &mut q, Duration::from_millis(300));
                let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                let mut w = watched.lock().unwrap_or_else(|e| e.into_inner());
                w.1 += live.len() as u64;
                w.2 += unanswered as u64;
                for (a, at, named) in answers {
                    // Killed since it was asked: its answer predates its death.
                    if s.dead_since[a].is_some() {
                        continue;
                    }
                    let mut stale = false;
                    for (v, since) in s.dead_since.iter().enumerate() {
                        let Some(since) = since else { continue };
                        let age = at.saturating_duration_since(*since);
                        let key = (a, v, s.deaths[v]);
                        if named.iter().any(|x| x.as_str() == format!("n{v}")) {
                            stale |= age > Duration::from_secs(5);
                            w.0.entry(key).or_insert(None);
                            w.4.insert(key, age);
                        } else {
                            let e = w.0.entry(key).or_insert(None);
                            if e.is_none() {
                                *e = Some(age);
                            }
                        }
                    }
                    if stale {
                        w.3 += 1;
                    }
                }
                drop((s, w));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // The churn: each period, restart the previous victims and kill new
    // ones (round robin over the agents, so each is killed in turn).
    let per = ((n as f64 * cfg.share).round() as usize).max(1);
    let mut victims: Vec<usize> = Vec::new();
    let mut next = 1usize;
    // Per agent: (killed, restart begun) wall-clock windows.
    let mut windows: Vec<Vec<(SystemTime, Option<SystemTime>)>> = vec![Vec::new(); n];
    let mut graveyard: Vec<(usize, Agent)> = Vec::new();
    let restart = |v: usize,
                   agents: &mut Vec<Option<Agent>>,
                   windows: &mut Vec<Vec<(SystemTime, Option<SystemTime>)>>|
     -> Instant {
        // Not dead from here on: the new process gossips before its API is
        // up, so answers naming it are not stale.
        shared.lock().unwrap_or_else(|e| e.into_inner()).dead_since[v] = None;
        if let Some(w) = windows[v].last_mut() {
            w.1 = Some(SystemTime::now());
        }
        let began = Instant::now();
        let agent = nodes[v].start();
        let _ = pass(&agent);
        agents[v] = Some(agent);
        began
    };
    eprintln!(
        "churn: killing {per} agent(s) every {:?}, {} times",
        cfg.every, cfg.periods
    );
    let mut last_restart = Instant::now();
    let began = Instant::now();
    for round in 0..cfg.periods {
        if round > 0 && round % 10 == 0 {
            let acked_so_far = acked.lock().unwrap_or_else(|e| e.into_inner()).0.len();
            eprintln!(
                "churn: round {round}/{} after {:.0?}, {} kills, {acked_so_far} writes acked",
                cfg.periods,
                began.elapsed(),
                report.kills
            );
        }
        for &v in &victims {
            last_restart = restart(v, &mut agents, &mut windows);
        }
        victims.clear();
        for _ in 0..per {
            let v = next % n;
            next += 1;
            if let Some(mut a) = agents[v].take() {
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    s.dead_since[v] = Some(Instant::now());
                    s.deaths[v] += 1;
                }
                windows[v].push((SystemTime::now(), None));
                let _ = a.child.kill();
                let _ = a.child.wait();
                graveyard.push((v, a));
                report.kills += 1;
                victims.push(v);
            }
        }
        std::thread::sleep(cfg.every);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    for &v in &victims {
        last_restart = restart(v, &mut agents, &mut windows);
    }
    let _ = watcher.join();
    let (acked, last_ack) = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // Identical tables everywhere, and every acknowledged write in them.
    let mut last: Vec<Option<Vec<String>>> = Vec::new();
    let mut reported = Instant::now();
    while last_restart.elapsed() < cfg.converge_limit {
        let t = Instant::now();
        last = agents.iter().map(|a| a.as_ref().and_then(tables)).collect();
        report.poll = t.elapsed();
        if last.iter().all(|t| t.is_some() && *t == last[0]) {
            report.converged_after_restart = Some(last_restart.elapsed());
            report.converged_after_write = last_ack.map(|t| t.elapsed());
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
                "churn: not converged {:.0?} after the last restart; rows per agent (kv, services, checks, nodes): {rows:?}",
                last_restart.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    report.writes_missing = acked
        .iter()
        .filter(|s| {
            let key = format!("\"churn/k{s:08}\"");
            !last
                .iter()
                .all(|t| t.as_ref().is_some_and(|t| t[0].contains(&key)))
        })
        .count();
    report.writes_acked = acked.len();
    report.writes_failed = *failed.lock().unwrap_or_else(|e| e.into_inner());
    {
        let w = watched.lock().unwrap_or_else(|e| e.into_inner());
        // Per pair: was the answering agent fresh (started < 15 s before
        // the death, or during it), or killed itself during the death?
        let class = |a: usize, v: usize, death: u32| -> (bool, bool) {
            let Some(&(killed, restarted)) = windows[v].get((death as usize).saturating_sub(1))
            else {
                return (false, false);
            };
            let during = |t: SystemTime| t > killed && restarted.is_none_or(|r| t < r);
            let fresh = windows[a].iter().filter_map(|(_, r)| *r).any(|r| {
                r + Duration::from_secs(15) >= killed && restarted.is_none_or(|end| r <= end)
            });
            let died = windows[a].iter().any(|(k, _)| during(*k));
            (fresh, died)
        };
        let (mut removed, mut removed_fresh) = (Vec::new(), Vec::new());
        for (&(a, v, death), x) in &w.0 {
            let (fresh, died) = class(a, v, death);
            match x {
                Some(t) if fresh => removed_fresh.push(*t),
                Some(t) => removed.push(*t),
                None if died => report.answerer_died += 1,
                None if fresh => {
                    report.not_removed_fresh += 1;
                    let killed = windows[v][(death as usize).saturating_sub(1)].0;
                    let secs = |t: SystemTime| match t.duration_since(killed) {
                        Ok(d) => d.as_secs_f64(),
                        Err(e) => -e.duration().as_secs_f64(),
                    };
                    // The answering agent's start nearest the death.
                    let started_after = windows[a]
                        .iter()
                        .filter_map(|(_, r)| r.map(secs))
                        .min_by(|x, y| x.abs().total_cmp(&y.abs()))
                        .unwrap_or(f64::NAN);
                    report.not_removed_fresh_pairs.push(FreshPair {
                        answering: a,
                        dead: v,
                        death,
                        started_after,
                        last_named: w.4.get(&(a, v, death)).map_or(0.0, Duration::as_secs_f64),
                        down_logged: None,
                    });
                }
                None => {
                    report.not_removed += 1;
                    let last = w.4.get(&(a, v, death)).map_or(0.0, Duration::as_secs_f64);
                    report.not_removed_pairs.push((a, v, death, last));
                }
            }
        }
        report.not_removed_pairs.sort_by_key(|p| (p.1, p.2, p.0));
        report.removals = removed.len();
        report.removals_fresh = removed_fresh.len();
        report.removal_fresh = (
            pct(&mut removed_fresh, 0.5),
            pct(&mut removed_fresh, 0.99),
            pct(&mut removed_fresh, 1.0),
        );
        report.removal = (
            pct(&mut removed, 0.5),
            pct(&mut removed, 0.99),
            pct(&mut removed, 1.0),
        );
        (
            report.dns_questions,
            report.dns_timeouts,
            report.stale_answers,
        ) = (w.1, w.2, w.3);
    }

    // Down verdicts, from every log line every process printed (killed
    // ones included), by the line's own time: legitimate only about an
    // agent between its kill and 10 s after its restart began.
    let grace = Duration::from_secs(10);
    let mut lines: Vec<(usize, String)> = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        if let Some(a) = a {
            a.drain();
            lines.extend(a.seen.borrow().iter().map(|l| (i, l.clone())));
        }
    }
    for (i, a) in &graveyard {
        a.drain();
        lines.extend(a.seen.borrow().iter().map(|l| (*i, l.clone())));
    }
    let after_restart = Duration::from_secs(15);
    let mut downs: HashMap<(usize, usize), Vec<SystemTime>> = HashMap::new();
    for (observer, line) in lines {
        if line.contains("was declared down") {
            let at = line_time(&line);
            let restarted = windows[observer].iter().any(|(_, restarted)| {
                restarted
                    .zip(at)
                    .is_some_and(|(r, at)| at >= r && at <= r + after_restart)
            });
            let note = format!("n{observer} was told it was down: {line}");
            if restarted {
                report.restart_renewals.push(note);
            } else {
                report.false_downs.push(note);
            }
            continue;
        }
        if !line.contains("member down") {
            continue;
        }
        let peer = line
            .split("peer=")
            .nth(1)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|p| p.parse::<SocketAddr>().ok());
        let (Some(&target), Some(at)) = (peer.and_then(|p| by_gossip.get(&p)), line_time(&line))
        else {
            report.unclassified_downs += 1;
            continue;
        };
        downs.entry((observer, target)).or_default().push(at);
        let legit = windows[target]
            .iter()
            .any(|(killed, restarted)| at >= *killed && restarted.is_none_or(|r| at <= r + grace));
        if !legit {
            report
                .false_downs
                .push(format!("n{observer} declared n{target} down: {line}"));
        }
    }
    for p in &mut report.not_removed_fresh_pairs {
        let killed = windows[p.dead][(p.death as usize).saturating_sub(1)].0;
        p.down_logged = downs
            .get(&(p.answering, p.dead))
            .into_iter()
            .flatten()
            .filter_map(|t| t.duration_since(killed).ok())
            .min()
            .map(|d| d.as_secs_f64());
    }
    Ok(report)
}
