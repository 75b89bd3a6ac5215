//! Harness for process-level tests and cluster benchmarks: starts the built
//! `corrosion` binary on ports chosen by the OS, reads its bound addresses
//! and actor id from the log, runs CLI commands against it, and kills it on
//! drop.
//!
//! The binary is `$CORROSION_BIN` when set, else the `corrosion` next to the
//! running executable (cargo puts integration tests in `target/<profile>/deps`
//! and binaries such as `corro-bench` in `target/<profile>`).

#![allow(
    clippy::unwrap_used,
    reason = "a test harness: failures should panic loudly"
)]

pub mod browser;
pub mod churn;
pub mod consul;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Installs the process's one rustls crypto provider (ring), as the agent
/// does: reqwest clients in tests and benches need it before they are
/// built. Called by every harness entry point; harmless when done.
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The `corrosion` binary under test.
pub fn binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CORROSION_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap();
        let mut dir = exe.parent().unwrap().to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bin = dir.join("corrosion");
        assert!(
            bin.exists(),
            "{} not found: build it (cargo build --workspace --all-targets, as scripts/test.sh does) or set CORROSION_BIN",
            bin.display()
        );
        if let Some(newer) = newer_source(&bin) {
            panic!(
                "{} is older than {}: build it again (cargo build --workspace --all-targets) or set CORROSION_BIN",
                bin.display(),
                newer.display()
            );
        }
        bin
    })
    .clone()
}

/// A source file of the agent or a crate it is built from that is newer
/// than `bin` (the end-to-end tests live in their own package, so cargo
/// does not rebuild the binary for them; a stale one must not pass for the
/// current code).
fn newer_source(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut stack: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.is_dir())
        .filter(|p| {
            !["testkit", "bench", "tests"]
                .iter()
                .any(|skip| p.parent().is_some_and(|c| c.ends_with(skip)))
        })
        .collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > built)
            {
                return Some(p);
            }
        }
    }
    None
}

pub const TODOS: &str = "CREATE TABLE todos (\nid BLOB NOT NULL PRIMARY KEY,\ntitle TEXT NOT NULL DEFAULT '',\ncompleted_at INTEGER\n);\n";

/// A node's files: config, schema directory, database, admin socket.
pub struct Node {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub db: PathBuf,
}

impl Node {
    /// Writes a config with API on port 0 and `extra` appended to `[api]`.
    pub fn new(dir: &Path, api_extra: &str) -> Node {
        Node::with(dir, "", api_extra)
    }

    /// Like [`Node::new`], with `gossip_extra` appended to `[gossip]`.
    pub fn with(dir: &Path, gossip_extra: &str, api_extra: &str) -> Node {
        crypto();
        std::fs::create_dir_all(dir.join("schema")).unwrap();
        std::fs::write(dir.join("schema/todo.sql"), TODOS).unwrap();
        let config = dir.join("config.toml");
        let db = dir.join("state.db");
        std::fs::write(
            &config,
            format!(
                "[db]\npath = \"{db}\"\nschema_paths = [\"{schema}\"]\n\n[gossip]\naddr = \"127.0.0.1:0\"\nplaintext = true\n{gossip_extra}\n\n[api]\naddr = \"127.0.0.1:0\"\n{api_extra}\n\n[admin]\npath = \"{admin}\"\n\n[log]\ncolors = false\n",
                db = db.display(),
                schema = dir.join("schema").display(),
                admin = dir.join("admin.sock").display(),
            ),
        )
        .unwrap();
        Node {
            dir: dir.to_path_buf(),
            config,
            db,
        }
    }

    pub fn start(&self) -> Agent {
        Agent::start(&self.config)
    }

    /// A node whose gossip bootstraps from `seed`.
    pub fn joining(dir: &Path, seed: &Agent) -> Node {
        Node::with(dir, &format!("bootstrap = [\"{}\"]", seed.gossip), "")
    }

    /// `corrosion exec SQL` against `agent`; asserts success.
    pub fn exec(&self, agent: &Agent, sql: &str) -> Output {
        let out = self.cli(&["--api-addr", &agent.api.to_string(), "exec", sql]);
        assert!(out.status.success(), "{sql}: {}", stderr(&out));
        out
    }

    /// `corrosion query SQL` against `agent`: its stdout; asserts success.
    pub fn query(&self, agent: &Agent, sql: &str) -> String {
        let out = self.cli(&["--api-addr", &agent.api.to_string(), "query", sql]);
        assert!(out.status.success(), "{sql}: {}", stderr(&out));
        stdout(&out)
    }

    /// Runs a client command with this node's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }
}

pub struct Agent {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every log line read so far.
    pub seen: std::cell::RefCell<Vec<String>>,
    pub api: SocketAddr,
    /// From the "Actor ID: ..." startup line.
    pub actor: String,
    /// From the "Starting peer API on udp/..." startup line.
    pub gossip: SocketAddr,
}

impl Agent {
    pub fn start(config: &Path) -> Agent {
        crypto();
        let mut child = Command::new(binary())
            .args(["-c", config.to_str().unwrap(), "agent"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let mut agent = Agent {
            child,
            lines,
            seen: Default::default(),
            api: "127.0.0.1:0".parse().unwrap(),
            actor: String::new(),
            gossip: "127.0.0.1:0".parse().unwrap(),
        };
        let line = agent.expect("Actor ID: ");
        agent.actor = line.rsplit("Actor ID: ").next().unwrap().trim().to_string();
        agent.expect("Applied schema in");
        let line = agent.expect("Starting peer API on udp/");
        agent.gossip = line
            .rsplit("udp/")
            .next()
            .unwrap()
            .trim_end_matches(" (QUIC)")
            .trim()
            .parse()
            .unwrap();
        let line = agent.expect("Starting public API server on tcp/");
        agent.api = line.rsplit("tcp/").next().unwrap().trim().parse().unwrap();
        agent
    }

    /// Waits (with a deadline) for a log line containing `needle`.
    pub fn expect(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => {
                    self.seen.borrow_mut().push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => {
                    let seen = self.seen.borrow();
                    let tail = &seen[seen.len().saturating_sub(10)..];
                    panic!(
                        "no log line containing {needle:?}; the last lines were:\n{}",
                        tail.join("\n")
                    )
                }
            }
        }
    }

    /// Every log line printed since the last read (without waiting).
    pub fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            out.push(l);
        }
        self.seen.borrow_mut().extend(out.iter().cloned());
        out
    }

    /// A line already read that contains `needle`.
    pub fn saw(&self, needle: &str) -> Option<String> {
        self.seen
            .borrow()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM and wait; panics unless the agent exits successfully.
    /// SIGTERM; asserts a clean exit in which every tracked task ended
    /// within the agent's shutdown bound.
    pub fn stop(mut self) {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        self.expect("corrosion::run: stopped");
        let seen = self.seen.borrow();
        assert!(
            !seen.iter().any(|l| l.contains("tasks still running")),
            "shutdown left tasks running:\n{}",
            seen.join("\n")
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sends one request to an agent's admin socket and returns its JSON answer.
pub fn admin(sock: &Path, request: &str) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// A UDP relay in front of an agent's gossip socket, for partitions over
/// real QUIC: the agent advertises the relay's address (`external_addr`),
/// peers reach it only through the relay, and the relay forwards both ways
/// NAT-style (one upstream socket per client address). A [`Partition`]
/// shared by every relay decides which packets pass.
pub mod relay {
    use std::collections::{HashMap, HashSet};
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Which agents (by real gossip address) are cut off from the rest,
    /// and which talk only to a few others.
    #[derive(Clone, Default)]
    pub struct Partition {
        isolated: Arc<Mutex<HashSet<SocketAddr>>>,
        only: Arc<Mutex<HashMap<SocketAddr, HashSet<SocketAddr>>>>,
    }

    impl Partition {
        /// Cuts `real` (an agent's real gossip address) off from everyone
        /// not also isolated.
        pub fn isolate(&self, real: SocketAddr) {
            self.isolated.lock().unwrap().insert(real);
        }

        /// Packets to and from `real` pass only from and to `peers` (real
        /// gossip addresses): to everyone else it looks dead, while the
        /// listed peers see it alive.
        pub fn only_with(&self, real: SocketAddr, peers: &[SocketAddr]) {
            self.only
                .lock()
                .unwrap()
                .insert(real, peers.iter().copied().collect());
        }

        pub fn heal(&self) {
            self.isolated.lock().unwrap().clear();
            self.only.lock().unwrap().clear();
        }

        fn passes(&self, a: SocketAddr, b: SocketAddr) -> bool {
            let s = self.isolated.lock().unwrap();
            if s.contains(&a) != s.contains(&b) {
                return false;
            }
            let only = self.only.lock().unwrap();
            only.get(&a).is_none_or(|ok| ok.contains(&b))
                && only.get(&b).is_none_or(|ok| ok.contains(&a))
        }
    }

    /// What a relay does to the packets it passes, both ways: a fixed
    /// delay and a share dropped (`tc netem` does not work on these
    /// machines).
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Impairment {
        pub delay: Duration,
        pub loss: f64,
    }

    /// Sends packets after the impairment's delay, or drops them.
    #[derive(Clone)]
    struct Link {
        impairment: Impairment,
        rng: Arc<std::sync::atomic::AtomicU64>,
        delayed: Option<std::sync::mpsc::Sender<(std::time::Instant, Delivery)>>,
    }

    enum Delivery {
        To(Arc<UdpSocket>, SocketAddr, Vec<u8>),
        Connected(Arc<UdpSocket>, Vec<u8>),
    }

    impl Delivery {
        fn send(self) {
            let _ = match self {
                Delivery::To(s, to, b) => s.send_to(&b, to),
                Delivery::Connected(s, b) => s.send(&b),
            };
        }
    }

    impl Link {
        fn new(impairment: Impairment) -> Link {
            let delayed = (!impairment.delay.is_zero()).then(|| {
                let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Delivery)>();
                // One delay for every packet: arrival order is due order.
                std::thread::spawn(move || {
                    while let Ok((due, d)) = rx.recv() {
                        let now = std::time::Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        d.send();
                    }
                });
                tx
            });
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1;
            Link {
                impairment,
                rng: Arc::new(std::sync::atomic::AtomicU64::new(seed)),
                delayed,
            }
        }

        fn lost(&self) -> bool {
            if self.impairment.loss <= 0.0 {
                return false;
            }
            // splitmix64 over an atomic counter: threads never draw the
            // same value.
            let mut x = self
                .rng
                .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            ((x >> 11) as f64 / (1u64 << 53) as f64) < self.impairment.loss
        }

        fn pass(&self, d: Delivery) {
            if self.lost() {
                return;
            }
            match &self.delayed {
                Some(tx) => {
                    let due = std::time::Instant::now() + self.impairment.delay;
                    let _ = tx.send((due, d));
                }
                None => d.send(),
            }
        }
    }

    /// A running relay (its threads live as long as the process).
    pub struct Relay {
        pub addr: SocketAddr,
        target: Arc<Mutex<Option<SocketAddr>>>,
    }

    impl Relay {
        pub fn start(partition: Partition) -> Relay {
            Relay::impaired(partition, Impairment::default())
        }

        /// A relay that also delays and drops packets, both ways.
        pub fn impaired(partition: Partition, impairment: Impairment) -> Relay {
            let link = Link::new(impairment);
            let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            let addr = front.local_addr().unwrap();
            let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
            let t = target.clone();
            std::thread::spawn(move || {
                // Per client: the upstream socket and the target it is
                // connected to (a restarted agent may listen on a new port:
                // the socket is connected to the new one at the next
                // packet).
                let mut upstreams: HashMap<SocketAddr, (Arc<UdpSocket>, SocketAddr)> =
                    HashMap::new();
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, client)) = front.recv_from(&mut buf) else {
                        return;
                    };
                    let Some(target) = *t.lock().unwrap() else {
                        continue;
                    };
                    if !partition.passes(client, target) {
                        continue;
                    }
                    let (up, connected) = upstreams.entry(client).or_insert_with(|| {
                        let up = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                        up.connect(target).unwrap();
                        let (up2, front2, p) = (up.clone(), front.clone(), partition.clone());
                        let (back, t2) = (link.clone(), t.clone());
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65_536];
                            up2.set_read_timeout(Some(Duration::from_secs(3600)))
                                .unwrap();
                            loop {
                                let n = match up2.recv(&mut buf) {
                                    Ok(n) => n,
                                    // The target was down a moment (a
                                    // connected socket reports the ICMP
                                    // error): keep relaying for when it
                                    // is back.
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::ConnectionRefused
                                                | std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) =>
                                    {
                                        continue;
                                    }
                                    // Anything else: keep the pair
                                    // usable (a break would leave a
                                    // one-way black hole in the map).
                                    Err(_) => {
                                        std::thread::sleep(Duration::from_millis(10));
                                        continue;
                                    }
                                };
                                let target = *t2.lock().unwrap();
                                if target.is_some_and(|target| p.passes(client, target)) {
                                    back.pass(Delivery::To(
                                        front2.clone(),
                                        client,
                                        buf[..n].to_vec(),
                                    ));
                                }
                            }
                        });
                        (up, target)
                    });
                    if *connected != target {
                        if up.connect(target).is_err() {
                            continue;
                        }
                        *connected = target;
                    }
                    link.pass(Delivery::Connected(up.clone(), buf[..n].to_vec()));
                }
            });
            Relay { addr, target }
        }

        /// Where to forward to (the agent's real gossip address, known once
        /// it started).
        pub fn forward_to(&self, real: SocketAddr) {
            *self.target.lock().unwrap() = Some(real);
        }
    }
}

impl Node {
    /// A node behind `relays[i]`: it advertises the relay's address and,
    /// unless it is the first, joins through `relays[0]` (forward the relay
    /// to the agent once started: [`relay::Relay::forward_to`]).
    pub fn behind_relay(dir: &Path, relays: &[relay::Relay], i: usize) -> Node {
        let bootstrap = if i == 0 {
            String::new()
        } else {
            format!("bootstrap = [\"{}\"]\n", relays[0].addr)
        };
        Node::with(
            dir,
            &format!("external_addr = \"{}\"\n{bootstrap}", relays[i].addr),
            "",
        )
    }

    /// Per-actor bookkeeping from the node's admin socket.
    pub fn books(&self) -> serde_json::Value {
        admin(&self.dir.join("admin.sock"), r#"{"cmd":"books"}"#)["result"].clone()
    }
}

impl Agent {
    /// `GET /v1/members` as (address, state) pairs.
    pub fn members(&self) -> Vec<(String, String)> {
        let v: serde_json::Value = reqwest::blocking::get(self.url("/v1/members"))
            .and_then(|r| r.json())
            .unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["addr"].as_str().unwrap_or_default().to_string(),
                            m["state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Node {
    /// Turns on the Prometheus endpoint (on a port chosen by the OS); read
    /// its address with [`Agent::metrics_addr`].
    pub fn enable_metrics(&self) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .unwrap();
        writeln!(f, "\n[telemetry]\nprometheus.addr = \"127.0.0.1:0\"").unwrap();
    }
}

impl Agent {
    /// The Prometheus endpoint, when the node enabled it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let line = self.saw("Starting Prometheus metrics on tcp/")?;
        line.rsplit("tcp/").next()?.trim().parse().ok()
    }

    /// A gauge's value (summed over label sets; 0 when absent).
    pub fn gauge(&self, name: &str) -> f64 {
        self.counter(name)
    }

    /// Sum of a counter over all its label sets (0 when absent).
    pub fn counter(&self, name: &str) -> f64 {
        let Some(addr) = self.metrics_addr() else {
            return 0.0;
        };
        let text = reqwest::blocking::get(format!("http://{addr}/metrics"))
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Agent {
    /// Writes `services` services x 3 instances on nodes `node-0..2`
    /// (owned by `actor`, so alive), each instance with one passing check,
    /// through the API in one transaction generated by SQLite itself.
    pub fn load_services(&self, actor: &str, services: u32) -> Result<(), String> {
        let series = format!(
            "WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < {}), n(y) AS (VALUES (0), (1), (2))",
            services.saturating_sub(1)
        );
        let body = serde_json::json!([
            format!(
                "INSERT OR REPLACE INTO consul_nodes (node, actor_id, address, datacenter) WITH n(y) AS (VALUES (0), (1), (2)) SELECT 'node-' || y, '{actor}', '10.0.0.' || (y + 1), 'dc1' FROM n"
            ),
            format!(
                "INSERT INTO consul_services (node, id, name, tags, port) {series} SELECT 'node-' || y, 'svc-' || x || '-' || y, 'svc-' || x, '[\"v1\"]', 8000 + y FROM s, n"
            ),
            format!(
                "INSERT INTO consul_checks (node, id, service_id, service_name, name, status, output) {series} SELECT 'node-' || y, 'service:svc-' || x || '-' || y, 'svc-' || x || '-' || y, 'svc-' || x, 'check', 'passing', 'HTTP GET: 200 OK' FROM s, n"
            ),
        ]);
        let r = reqwest::blocking::Client::new()
            .post(self.url("/v1/transactions"))
            .json(&body)
            .send()
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("write failed: {}", r.text().unwrap_or_default()))
        }
    }

    /// The agent process's resident memory in KiB (0 once it is gone).
    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.child.id()).unwrap_or(0)
    }
}

/// Resident memory of process `pid` in KiB (from /proc).
pub fn rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl Agent {
    /// The DNS responder's address (UDP and TCP), from its start line.
    pub fn dns_addr(&self) -> SocketAddr {
        let line = self
            .saw("Starting DNS server on udp/")
            .expect("the agent serves DNS");
        line.split("udp/")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("an address after udp/")
    }

    /// Inserts `rows` rows into `todos` through the API (ids
    /// `row-00000001`..., titles `title of row N`, `completed_at` N), in
    /// transactions of 100,000 rows generated by SQLite itself.
    pub fn bulk_load(&self, rows: u64) {
        let client = reqwest::blocking::Client::new();
        let mut done = 0;
        while done < rows {
            let n = 100_000.min(rows - done);
            let sql = format!(
                "INSERT INTO todos (id, title, completed_at) \
                 WITH RECURSIVE c(x) AS (SELECT {lo} UNION ALL SELECT x + 1 FROM c WHERE x < {hi}) \
                 SELECT printf('row-%08d', x), 'title of row ' || x, x FROM c",
                lo = done + 1,
                hi = done + n
            );
            let r = client
                .post(self.url("/v1/transactions"))
                .json(&serde_json::json!([sql]))
                .send()
                .unwrap();
            assert!(r.status().is_success(), "bulk load: {}", r.text().unwrap());
            done += n;
        }
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 right now (for configs
/// that must name one).
/// A port free for TCP and UDP on 127.0.0.1 below the usual ephemeral
/// range (32768-60999), never handed out twice by this process: for an
/// agent that restarts at the same address, whose port an outgoing
/// socket could otherwise take while it is down.
pub fn fixed_port() -> u16 {
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut port = next.unwrap_or(20_000 + (std::process::id() % 10_000) as u16);
    loop {
        port = if port >= 32_000 { 20_000 } else { port + 1 };
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            *next = Some(port);
            return port;
        }
    }
}

pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Node {
    /// Replaces the first `from` in the config file with `to` (asserting
    /// it is there).
    pub fn replace_in_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(
            text.contains(from),
            "{from:?} not in {}",
            self.config.display()
        );
        std::fs::write(&self.config, text.replacen(from, to, 1)).unwrap();
    }

    /// Appends `text` (whole sections) to the config file.
    pub fn append_config(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .unwrap();
        writeln!(f, "\n{text}").unwrap();
    }

    /// Adds the shipped discovery schema (`packaging/schema/consul.sql`)
    /// to the node's schema directory.
    pub fn with_consul_schema(&self) {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/schema/consul.sql");
        std::fs::copy(shipped, self.dir.join("schema/consul.sql")).unwrap();
    }

    /// Binds the API on `addr` instead of a port chosen by the OS.
    pub fn set_api_addr(&self, addr: &str) {
        self.replace_in_config(
            "[api]\naddr = \"127.0.0.1:0\"",
            &format!("[api]\naddr = \"{addr}\""),
        );
    }

    /// Binds gossip on `addr` instead of a port chosen by the OS.
    pub fn set_gossip_addr(&self, addr: &str) {
        self.replace_in_config(
            "[gossip]\naddr = \"127.0.0.1:0\"",
            &format!("[gossip]\naddr = \"{addr}\""),
        );
    }
}

/// The reference quick start's first write, as `corrosion` arguments.
pub const QUICK_START_EXEC: [&str; 6] = [
    "exec",
    "--param",
    "some-id",
    "--param",
    "Write some Corrosion docs!",
    "INSERT INTO todos (id, title) VALUES (?, ?)",
];

/// Polls `f` every 25 ms until it returns `Some`, failing after `limit`
/// with `what`.
pub fn await_some<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
