//! The hostile-client suite, over the real binary: what any process on a
//! host can send to its agent. Each class ends with the agent answering
//! normally, its data intact, and its memory within a bound next to its
//! memory at rest (docs/DISCOVERY.md, "Hostile clients", lists the classes
//! and their outcomes).
//!
//! - generated query strings and filter expressions on every Consul route
//!   (arbitrary bytes and structured mutations): never a 5xx other than
//!   Consul's own 500 for another datacenter, never a crash;
//! - filters nested thousands deep or long `not` chains (one such request
//!   used to overflow a worker's stack and abort the agent);
//! - thousands of distinct filters over a large catalog (the answer cache
//!   used to keep every one: 30 MiB to 4.4 GiB);
//! - thousands of distinct `POST /v1/queries` bodies, each on a fresh
//!   connection (kept answers used to pin each connection's whole read
//!   buffer under a key weighed at a few bytes);
//! - random DNS names, types and EDNS sizes;
//! - half-open, slow-loris and over-the-limit connections.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Agent, Node};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// An agent with the discovery schema, DNS and metrics, holding
/// `services` x 3 instances.
fn loaded(dir: &std::path::Path, services: u32, api_extra: &str) -> (Node, Agent) {
    let node = Node::new(dir, api_extra);
    node.with_consul_schema();
    node.enable_metrics();
    node.append_config("[consul]\nnode_name = \"host\"\n[dns]\naddr = \"127.0.0.1:0\"\n");
    let agent = node.start();
    agent.load_services(&agent.actor, services).unwrap();
    // The catalog has every instance before the test starts.
    let want = services as usize;
    common::await_some(Duration::from_secs(30), "the loaded catalog", || {
        let n = catalog_services(&agent);
        (n == want).then_some(())
    });
    (node, agent)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Number of service names `/v1/catalog/services` lists.
fn catalog_services(agent: &Agent) -> usize {
    client()
        .get(agent.url("/v1/catalog/services"))
        .send()
        .ok()
        .and_then(|r| r.json::<serde_json::Value>().ok())
        .and_then(|v| v.as_object().map(|m| m.len()))
        .unwrap_or(0)
}

/// The agent answers normally and its data is what was loaded.
fn intact(agent: &Agent, services: usize) {
    let h = client().get(agent.url("/v1/health")).send().unwrap();
    assert_eq!(h.status(), 200, "{}", h.text().unwrap());
    assert_eq!(catalog_services(agent), services);
    let rows: serde_json::Value = client()
        .get(agent.url("/v1/health/service/svc-0"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
}

/// Memory after a class, next to memory at rest (KiB).
fn assert_rss(agent: &Agent, at_rest: u64, bound_mib: u64, class: &str) {
    let now = agent.rss_kb();
    println!(
        "{class}: RSS {} MiB (at rest {} MiB)",
        now / 1024,
        at_rest / 1024
    );
    assert!(
        now <= at_rest + bound_mib * 1024,
        "{class}: RSS {now} KiB, over {at_rest} KiB at rest + {bound_mib} MiB"
    );
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn deep_nesting_and_long_not_chains_are_refused_and_the_agent_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, agent) = loaded(dir.path(), 20, "");
    let c = client();
    for (filter, want) in [
        (
            format!("{}Node.Node == x{}", "(".repeat(2100), ")".repeat(2100)),
            "4096 byte limit",
        ),
        (
            format!("{}Node.Node == x", "not ".repeat(1100)),
            "4096 byte limit",
        ),
        (
            format!("{}Node.Node == x{}", "(".repeat(200), ")".repeat(200)),
            "deeper than 32",
        ),
        (
            format!("{}Node.Node == x", "not ".repeat(100)),
            "deeper than 32",
        ),
        // Regular expressions: each small, and few per filter (a filter is
        // held as long as its blocking query).
        (
            ["Node.Node matches `a`"; 9].join(" or "),
            "more than 8 regular expressions",
        ),
        (
            "Node.Node matches `\\w{100}`".to_string(),
            "regular expression",
        ),
    ] {
        let r = c
            .get(agent.url(&format!("/v1/health/state/any?filter={}", encode(&filter))))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400);
        let body = r.text().unwrap();
        assert!(body.contains(want), "{body}");
    }
    // A query string past the limit is refused before anything parses it.
    let r = c
        .get(agent.url(&format!(
            "/v1/health/state/any?filter={}",
            "(".repeat(20_000)
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 414);
    assert!(r.text().unwrap().contains("byte limit"));
    intact(&agent, 20);
}

#[test]
fn distinct_filters_do_not_grow_memory_and_hot_answers_stay_cached() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, agent) = loaded(dir.path(), 400, "");
    // Warm up: the big answer once, then memory at rest.
    let big = agent.url("/v1/health/state/any");
    assert!(client().get(&big).send().unwrap().status().is_success());
    let at_rest = agent.rss_kb();
    let started = Instant::now();
    let base = agent.url("/v1/health/state/any");
    std::thread::scope(|s| {
        for t in 0..4 {
            let base = &base;
            s.spawn(move || {
                let c = client();
                for i in (t..600).step_by(4) {
                    let f = encode(&format!("Node != \"r{i}\""));
                    let r = c.get(format!("{base}?filter={f}")).send().unwrap();
                    assert_eq!(r.status(), 200);
                    // Every answer is complete (1,200 checks, and serfHealth
                    // of the three nodes and of the agent's own).
                    let v: serde_json::Value = r.json().unwrap();
                    assert_eq!(v.as_array().unwrap().len(), 1204);
                }
            });
        }
    });
    println!("600 distinct filters in {:?}", started.elapsed());
    // Each answer is ~0.5 MB: kept, they would take 300 MB.
    assert_rss(&agent, at_rest, 128, "distinct filters");
    let held = agent.counter("corro_consul_cache_bytes");
    assert!(held <= (32 << 20) as f64, "cache holds {held} bytes");
    // A hot answer asked for again is served from the cache.
    let hits = agent.counter("corro_consul_cache_hits_total");
    for _ in 0..3 {
        assert!(
            client()
                .get(agent.url("/v1/health/service/svc-1"))
                .send()
                .unwrap()
                .status()
                .is_success()
        );
    }
    assert!(agent.counter("corro_consul_cache_hits_total") >= hits + 2.0);
    intact(&agent, 400);
}

#[test]
fn distinct_queries_on_fresh_connections_keep_the_answer_cache_within_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, agent) = loaded(dir.path(), 20, "cache_max_bytes = 1048576\n");
    let url = agent.url("/v1/queries");
    let at_rest = agent.rss_kb();
    std::thread::scope(|s| {
        for t in 0..4 {
            let url = &url;
            s.spawn(move || {
                // No idle connections kept: every request opens its own.
                let c = reqwest::blocking::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                for i in (t..12_000).step_by(4) {
                    let r = c
                        .post(url)
                        .header("content-type", "application/json")
                        .body(format!(r#"["SELECT ?", [{i}]]"#))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    assert!(r.text().unwrap().contains(&format!("[{i}]")));
                }
            });
        }
    });
    // 12,000 answers of ~180 bytes fill the 1 MiB budget twice over;
    // each pinning an 8 KiB read buffer, the kept ones would hold ~60 MiB.
    assert_rss(&agent, at_rest, 24, "distinct queries");
    common::await_some(Duration::from_secs(10), "cache metrics", || {
        let held = agent.gauge("corro_query_cache_bytes");
        let evicted = agent.counter("corro_query_cache_evictions_total");
        println!("cache: {held} bytes held, {evicted} evicted");
        (held > 0.0 && evicted > 0.0).then_some(held)
    });
    let held = agent.gauge("corro_query_cache_bytes");
    assert!(held <= (1 << 20) as f64, "cache holds {held} bytes");
    intact(&agent, 20);
}

const ROUTES: [&str; 13] = [
    "/v1/catalog/services",
    "/v1/catalog/service/{}",
    "/v1/catalog/nodes",
    "/v1/catalog/node/{}",
    "/v1/catalog/datacenters",
    "/v1/health/service/{}",
    "/v1/health/checks/{}",
    "/v1/health/node/{}",
    "/v1/health/state/{}",
    "/v1/agent/self",
    "/v1/agent/members",
    "/v1/status/leader",
    "/v1/status/peers",
];

const KEYS: [&str; 16] = [
    "filter",
    "tag",
    "node-meta",
    "passing",
    "near",
    "dc",
    "index",
    "wait",
    "pretty",
    "token",
    "stale",
    "cached",
    "ns",
    "consistent",
    "",
    "x",
];

/// Filter expressions from the grammar, valid and not.
fn filter_expr() -> impl Strategy<Value = String> {
    let selector = prop_oneof![
        Just("Node.Node".to_string()),
        Just("Service.Tags".to_string()),
        Just("Service.Meta.version".to_string()),
        Just("Node.Meta[\"env\"]".to_string()),
        Just("Checks.Status".to_string()),
        Just("Status".to_string()),
        Just("ServiceName".to_string()),
        Just("Nope.Nothing".to_string()),
        "[A-Za-z_.\\[\\]\"]{0,12}",
    ];
    let value = prop_oneof![
        "[a-z0-9]{0,6}".prop_map(|v| format!("\"{v}\"")),
        "[a-z0-9]{1,6}",
        Just("\"(\"".to_string()),
        Just("`.*`".to_string()),
        ".{0,8}",
    ];
    let op = prop_oneof![
        Just("=="),
        Just("!="),
        Just("contains"),
        Just("not contains"),
        Just("matches"),
        Just("not matches"),
        Just("is empty"),
        Just("is not empty"),
        Just("in"),
        Just("~="),
    ];
    let leaf = (selector, op, value).prop_map(|(s, o, v)| match o {
        "is empty" | "is not empty" => format!("{s} {o}"),
        "in" => format!("{v} in {s}"),
        _ => format!("{s} {o} {v}"),
    });
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.clone().prop_map(|a| format!("({a})")),
            (inner, any::<u8>(), any::<char>()).prop_map(|(a, at, c)| {
                // A structured mutation: one character replaced.
                let mut chars: Vec<char> = a.chars().collect();
                if !chars.is_empty() {
                    let i = at as usize % chars.len();
                    chars[i] = c;
                }
                chars.into_iter().collect()
            }),
        ]
    })
}

/// A query string: arbitrary bytes, or known keys with generated values.
fn query_string() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        ".{0,20}",
        "[0-9]{1,25}",
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        "[0-9]{1,4}(ns|us|ms|s|m|h|x)",
        filter_expr(),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| {
            // Raw bytes, percent-encoded only where a URL cannot hold them.
            b.iter()
                .map(|&c| {
                    if c.is_ascii_graphic() && c != b'#' && c != b'%' {
                        (c as char).to_string()
                    } else {
                        format!("%{c:02X}")
                    }
                })
                .collect::<String>()
        }),
        proptest::collection::vec((0..KEYS.len(), value, any::<bool>()), 0..6).prop_map(|kv| {
            kv.into_iter()
                .map(|(k, v, bare)| {
                    if bare {
                        KEYS[k].to_string()
                    } else {
                        format!("{}={}", KEYS[k], encode(&v))
                    }
                })
                .collect::<Vec<_>>()
                .join("&")
        }),
    ]
}

#[test]
fn generated_queries_on_every_consul_route_never_fail_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, agent) = loaded(dir.path(), 100, "");
    let at_rest = agent.rss_kb();
    let c = client();
    let mut runner = TestRunner::new(Config {
        cases: 600,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..ROUTES.len(), ".{0,40}", query_string());
    runner
        .run(&strategy, |(route, param, query)| {
            let path = ROUTES[route].replace("{}", &encode(&param));
            // Bounded wait: a generated index may block, but not for long.
            let url = agent.url(&format!("{path}?{query}&wait=20ms"));
            let r = c
                .get(&url)
                .send()
                .map_err(|e| TestCaseError::fail(format!("{url}: no answer: {e}")))?;
            let status = r.status().as_u16();
            let body = r.text().unwrap_or_default();
            let ok = matches!(status, 200 | 400 | 404 | 414)
                || (status == 500 && body.contains("No path to datacenter"));
            prop_assert!(ok, "{} -> {}: {}", url, status, body);
            Ok(())
        })
        .unwrap();
    assert_rss(&agent, at_rest, 64, "generated queries");
    intact(&agent, 100);
}

/// A query for `labels` (any bytes) of type `t`, with an OPT record
/// offering `edns` bytes when given.
fn dns_query(labels: &[Vec<u8>], t: u16, edns: Option<u16>) -> Vec<u8> {
    let mut p = vec![
        0,
        42,
        0x01,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(edns.is_some()),
    ];
    for l in labels {
        p.push(l.len() as u8);
        p.extend_from_slice(l);
    }
    p.push(0);
    p.extend_from_slice(&t.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    if let Some(size) = edns {
        p.extend_from_slice(&[0, 0, 41]);
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&[0; 6]);
    }
    p
}

#[test]
fn random_dns_names_types_and_edns_sizes_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, agent) = loaded(dir.path(), 100, "");
    let addr = agent.dns_addr();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let buf = std::cell::RefCell::new(vec![0u8; 65_535]);
    // The answer's bytes when one came back with the query's id.
    let ask = |packet: &[u8]| -> Option<Vec<u8>> {
        let mut buf = buf.borrow_mut();
        sock.send_to(packet, addr).ok()?;
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        (n >= 12 && buf[..2] == [0, 42] && buf[2] & 0x80 != 0).then(|| buf[..n].to_vec())
    };
    let svc =
        |name: &str| -> Vec<Vec<u8>> { name.split('.').map(|l| l.as_bytes().to_vec()).collect() };
    assert!(ask(&dns_query(&svc("svc-1.service.consul"), 1, None)).is_some());
    let at_rest = agent.rss_kb();
    let mut runner = TestRunner::new(Config {
        cases: 20_000,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..5),
        prop_oneof![Just("service"), Just("node"), Just("addr"), Just("x")],
        any::<u16>(),
        proptest::option::of(any::<u16>()),
    );
    let answered = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |(mut labels, kind, t, edns)| {
            let t = match t % 8 {
                0 => 1,
                1 => 28,
                2 => 33,
                3 => 255,
                4 => 16,
                5 => 12,
                _ => t,
            };
            labels.push(kind.as_bytes().to_vec());
            labels.push(b"consul".to_vec());
            let packet = dns_query(&labels, t, edns);
            let a = ask(&packet);
            prop_assert!(a.is_some(), "no answer to {:?}", packet);
            answered.set(answered.get() + 1);
            Ok(())
        })
        .unwrap();
    assert_eq!(answered.get(), 20_000);
    assert_rss(&agent, at_rest, 48, "random DNS questions");
    let a = ask(&dns_query(&svc("svc-7.service.consul"), 33, Some(4096))).unwrap();
    let m = hickory_proto::op::Message::from_vec(&a).unwrap();
    assert_eq!(m.answers.len(), 3);
    intact(&agent, 100);
}

/// Reads until EOF or `within`; true when the server closed the stream.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock.into()
}

#[test]
fn half_open_slow_and_excess_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, agent) = loaded(
        dir.path(),
        10,
        "max_conns_per_client = 1000\nheader_timeout_secs = 3\n",
    );
    let at_rest = agent.rss_kb();
    // 1,000 half-open connections from one client address.
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|_| connect_from([127, 0, 0, 1], agent.api))
        .collect();
    // A new client (another address) is served at once.
    let started = Instant::now();
    let mut s = connect_from([127, 0, 0, 2], agent.api);
    s.write_all(b"GET /v1/catalog/services HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let took = started.elapsed();
    println!("a new client next to 1,000 half-open ones: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The 1,001st from the first address gets 429 naming the limit (once
    // the agent has accepted the 1,000: the kernel queues connections).
    common::await_some(
        Duration::from_secs(10),
        "1,000 connections accepted",
        || (agent.gauge("corro_api_connections") >= 1000.0).then_some(()),
    );
    let mut over = connect_from([127, 0, 0, 1], agent.api);
    over.write_all(b"GET /v1/agent/self HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    over.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("max_conns_per_client = 1000"), "{answer}");
    // A slow-loris client trickling a head never completes it.
    let mut slow = connect_from([127, 0, 0, 3], agent.api);
    slow.write_all(b"GET /v1/agent/self HTTP/1.1\r\n").unwrap();
    let trickle = Instant::now();
    let mut closed = false;
    while trickle.elapsed() < Duration::from_secs(10) {
        if slow.write_all(b"x-a: b\r\n").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(closed || closed_within(&mut slow, Duration::from_secs(1)));
    // The half-open ones are gone after the header timeout (3 s).
    let mut all_closed = 0;
    for s in idle.iter_mut().take(50) {
        if closed_within(s, Duration::from_secs(5)) {
            all_closed += 1;
        }
    }
    assert_eq!(
        all_closed, 50,
        "idle connections outlived the header timeout"
    );
    drop(idle);
    // Heads over the size limits.
    let mut big = connect_from([127, 0, 0, 4], agent.api);
    let header = format!("x-big: {}\r\n", "a".repeat(70_000));
    let _ =
        big.write_all(format!("GET /v1/agent/self HTTP/1.1\r\nhost: x\r\n{header}\r\n").as_bytes());
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(agent.counter("corro_api_connections_refused_total") >= 1.0);
    assert_rss(&agent, at_rest, 64, "connections");
    intact(&agent, 10);
}
