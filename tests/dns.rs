//! The DNS responder through the real binary, asked by `dig` (dnsutils)
//! over UDP and TCP: every name form, record type and response code, EDNS
//! and truncation, health changes, a 3-agent cluster where a service
//! registered on A is answered on C and leaves C's answers when A is killed,
//! and a restarted agent's answers waiting for a peer's member view.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::consul::{ConsulStandIn, check_json, service_json};
use common::{Agent, Node};

/// `dig` output for `args` against the agent's responder.
fn dig(agent: &Agent, args: &[&str]) -> String {
    let addr = agent.dns_addr();
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("dig (dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(agent: &Agent, args: &[&str]) -> Vec<String> {
    let mut a: Vec<&str> = args.to_vec();
    a.push("+short");
    let mut lines: Vec<String> = dig(agent, &a).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn status(agent: &Agent, args: &[&str]) -> String {
    let out = dig(agent, args);
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_string()
}

fn await_true(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dns_node(
    dir: &std::path::Path,
    name: &str,
    consul: Option<&ConsulStandIn>,
    seed: Option<&Agent>,
) -> Node {
    let node = match seed {
        Some(s) => Node::joining(dir, s),
        None => Node::new(dir, ""),
    };
    node.with_consul_schema();
    let mut text = format!("[consul]\nnode_name = \"{name}\"\n[consul.node_meta]\nrack = \"r1\"\n");
    if let Some(c) = consul {
        text.push_str(&format!(
            "[consul.client]\naddr = \"{}\"\npoll_interval = \"100ms\"\n",
            c.addr
        ));
    }
    text.push_str("[dns]\naddr = \"127.0.0.1:0\"\n");
    node.append_config(&text);
    node
}

#[test]
fn every_name_form_type_and_code_over_udp_and_tcp() {
    let consul = ConsulStandIn::start();
    let mut web1 = service_json("web-1", "web", &["v1", "primary"], 8080);
    web1["Address"] = "10.1.0.7".into();
    consul.set_service("web-1", web1);
    consul.set_service("web-2", service_json("web-2", "web", &["v1"], 8081));
    consul.set_service("web-3", service_json("web-3", "web", &["v2"], 8082));
    consul.set_service("web-4", service_json("web-4", "web", &["v2"], 8083));
    consul.set_service("db-1", service_json("db-1", "db", &[], 5432));
    consul.set_check("c3", check_json("c3", "web-3", "critical", ""));
    consul.set_check("c4", check_json("c4", "web-4", "warning", ""));
    let dir = tempfile::tempdir().unwrap();
    let node = dns_node(dir.path(), "host-a", Some(&consul), None);
    let agent = node.start();
    await_true(Duration::from_secs(10), "services mirrored", || {
        short(&agent, &["db.service.consul"]) == ["127.0.0.1"]
    });
    for tcp in [false, true] {
        let t = if tcp { "+tcp" } else { "+notcp" };
        // Critical web-3 is left out; warning web-4 is in.
        assert_eq!(
            short(&agent, &[t, "+bufsize=4096", "web.service.consul"]),
            ["10.1.0.7", "127.0.0.1", "127.0.0.1"],
            "{t}"
        );
        assert_eq!(
            short(&agent, &[t, "WEB.Service.Consul."]).len(),
            3,
            "case, trailing dot"
        );
        assert_eq!(short(&agent, &[t, "web.service.dc1.consul"]).len(), 3);
        assert_eq!(
            short(&agent, &[t, "primary.web.service.consul"]),
            ["10.1.0.7"]
        );
        assert_eq!(
            short(&agent, &[t, "v2.web.service.consul"]),
            ["127.0.0.1"],
            "warning only"
        );
        let srv = short(&agent, &[t, "_web._v1.service.consul", "SRV"]);
        assert_eq!(
            srv,
            [
                "1 1 8080 0a010007.addr.dc1.consul.",
                "1 1 8081 host-a.node.dc1.consul."
            ],
            "SRV targets: the addr form when the service has its own address"
        );
        let full = dig(&agent, &[t, "_db._tcp.service.consul", "SRV"]);
        assert!(
            full.contains("host-a.node.dc1.consul.\t0\tIN\tA\t127.0.0.1"),
            "glue: {full}"
        );
        assert_eq!(short(&agent, &[t, "host-a.node.consul"]), ["127.0.0.1"]);
        assert_eq!(
            short(&agent, &[t, "host-a.node.dc1.consul", "TXT"]),
            ["\"rack=r1\""]
        );
        assert_eq!(short(&agent, &[t, "0a010007.addr.consul"]), ["10.1.0.7"]);
        assert_eq!(
            short(&agent, &[t, "7.0.1.10.in-addr.arpa", "PTR"]),
            ["web.service.dc1.consul."]
        );
        assert_eq!(
            short(&agent, &[t, "1.0.0.127.in-addr.arpa", "PTR"]),
            ["host-a.node.dc1.consul."]
        );
        assert_eq!(short(&agent, &[t, "consul.", "NS"]), ["ns.consul."]);
        assert_eq!(short(&agent, &[t, "consul.", "SOA"]).len(), 1);
        assert!(!short(&agent, &[t, "web.service.consul", "ANY"]).is_empty());
        // Codes.
        assert_eq!(status(&agent, &[t, "nope.service.consul"]), "NXDOMAIN");
        assert!(
            dig(&agent, &[t, "nope.service.consul"]).contains("IN\tSOA\tns.consul."),
            "SOA with NXDOMAIN"
        );
        assert_eq!(status(&agent, &[t, "web.service.dc2.consul"]), "NXDOMAIN");
        assert_eq!(status(&agent, &[t, "nobody.node.consul"]), "NXDOMAIN");
        assert_eq!(
            status(&agent, &[t, "host-a.node.consul", "AAAA"]),
            "NOERROR"
        );
        assert!(
            short(&agent, &[t, "host-a.node.consul", "AAAA"]).is_empty(),
            "NODATA"
        );
        assert_eq!(status(&agent, &[t, "example.com"]), "REFUSED");
        assert_eq!(
            status(&agent, &[t, "1.2.3.4.in-addr.arpa", "PTR"]),
            "NXDOMAIN"
        );
    }
    assert!(dig(&agent, &["consul", "AXFR"]).contains("Transfer failed"));
    let out = dig(&agent, &["+tcp", "consul", "IXFR=1"]);
    assert!(
        out.contains("NOTIMP") || out.contains("Transfer failed"),
        "{out}"
    );
}

#[test]
fn udp_answers_are_trimmed_without_edns_and_whole_over_tcp() {
    let consul = ConsulStandIn::start();
    for i in 0..20 {
        let mut s = service_json(&format!("api-{i}"), "api", &[], 9000 + i);
        s["Address"] = format!("10.2.0.{}", i + 1).into();
        consul.set_service(&format!("api-{i}"), s);
    }
    let dir = tempfile::tempdir().unwrap();
    let node = dns_node(dir.path(), "host-a", Some(&consul), None);
    let agent = node.start();
    await_true(Duration::from_secs(10), "20 instances", || {
        short(&agent, &["+tcp", "api.service.consul"]).len() == 20
    });
    assert_eq!(
        short(&agent, &["+noedns", "+notcp", "api.service.consul"]).len(),
        3,
        "udp_answer_limit"
    );
    assert_eq!(
        short(&agent, &["+bufsize=4096", "+notcp", "api.service.consul"]).len(),
        20,
        "EDNS"
    );
    let plain = dig(
        &agent,
        &["+noedns", "+notcp", "+ignore", "api.service.consul"],
    );
    assert!(
        !plain.contains(" tc"),
        "no TC without enable_truncate: {plain}"
    );
    // Shuffled: the first answer varies.
    let firsts: std::collections::BTreeSet<String> = (0..20)
        .map(|_| {
            dig(&agent, &["+tcp", "+short", "api.service.consul"])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(firsts.len() > 1, "answers are not shuffled");
}

#[test]
fn enable_truncate_sets_tc_so_clients_retry_over_tcp() {
    let consul = ConsulStandIn::start();
    for i in 0..10 {
        let mut s = service_json(&format!("api-{i}"), "api", &[], 9000 + i);
        s["Address"] = format!("10.2.0.{}", i + 1).into();
        consul.set_service(&format!("api-{i}"), s);
    }
    let dir = tempfile::tempdir().unwrap();
    let node = dns_node(dir.path(), "host-a", Some(&consul), None);
    node.append_config("");
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        text.replace("[dns]\n", "[dns]\nenable_truncate = true\n"),
    )
    .unwrap();
    let agent = node.start();
    await_true(Duration::from_secs(10), "10 instances", || {
        short(&agent, &["+tcp", "api.service.consul"]).len() == 10
    });
    let out = dig(
        &agent,
        &["+noedns", "+notcp", "+ignore", "api.service.consul"],
    );
    assert!(out.contains("flags: qr aa tc"), "{out}");
    // dig retries over TCP by itself on TC and gets everything.
    assert_eq!(
        short(&agent, &["+noedns", "+notcp", "api.service.consul"]).len(),
        10
    );
}

#[test]
fn a_critical_instance_leaves_the_answers_and_returns() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-1", service_json("web-1", "web", &[], 80));
    consul.set_check("c1", check_json("c1", "web-1", "passing", ""));
    let dir = tempfile::tempdir().unwrap();
    let node = dns_node(dir.path(), "host-a", Some(&consul), None);
    let agent = node.start();
    await_true(Duration::from_secs(10), "answered", || {
        short(&agent, &["web.service.consul"]).len() == 1
    });
    consul.set_check("c1", check_json("c1", "web-1", "critical", ""));
    await_true(Duration::from_secs(10), "gone", || {
        status(&agent, &["web.service.consul"]) == "NXDOMAIN"
    });
    consul.set_check("c1", check_json("c1", "web-1", "passing", ""));
    await_true(Duration::from_secs(10), "back", || {
        short(&agent, &["web.service.consul"]).len() == 1
    });
}

#[test]
fn a_service_on_a_is_answered_on_c_until_a_is_killed() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-a", service_json("web-a", "web", &[], 80));
    let dir = tempfile::tempdir().unwrap();
    let a_node = dns_node(&dir.path().join("a"), "host-a", Some(&consul), None);
    let mut a = a_node.start();
    let b = dns_node(&dir.path().join("b"), "host-b", None, Some(&a)).start();
    let c = dns_node(&dir.path().join("c"), "host-c", None, Some(&a)).start();
    await_true(Duration::from_secs(15), "web on C", || {
        short(&c, &["_web._tcp.service.consul", "SRV"]) == ["1 1 80 host-a.node.dc1.consul."]
    });
    let killed = Instant::now();
    a.child.kill().unwrap();
    let _ = a.child.wait();
    for agent in [&b, &c] {
        await_true(Duration::from_secs(15), "web gone after kill -9", || {
            status(agent, &["web.service.consul"]) == "NXDOMAIN"
        });
    }
    println!(
        "web left B's and C's answers {:?} after kill -9",
        killed.elapsed()
    );
}

/// After a restart, DNS waits until membership has settled (`[dns]
/// start_wait`): B, killed and restarted while A died, would otherwise
/// answer from its disk, where A is alive, and a resolver downstream would
/// keep that answer. All three behind relays; C (the only live peer) is
/// cut off while B restarts, so B's first question is held past the
/// first second; after the partition heals it is answered once C's view
/// is in or the wait ends (by then B's own probes have found A down:
/// which of the two opened DNS is printed, not asserted), and never
/// names A.
#[test]
fn a_restarted_agent_does_not_answer_for_a_host_that_died_while_it_was_down() {
    use common::relay::{Partition, Relay};
    let consul = ConsulStandIn::start();
    consul.set_service("web-a", service_json("web-a", "web", &[], 80));
    let dir = tempfile::tempdir().unwrap();
    let partition = Partition::default();
    let relays: Vec<Relay> = (0..3).map(|_| Relay::start(partition.clone())).collect();
    let mut nodes = Vec::new();
    let mut agents: Vec<Agent> = Vec::new();
    for (i, name) in ["host-a", "host-b", "host-c"].into_iter().enumerate() {
        let node = Node::behind_relay(&dir.path().join(name), &relays, i);
        node.with_consul_schema();
        let mut text = format!("[consul]\nnode_name = \"{name}\"\n");
        if i == 0 {
            text.push_str(&format!(
                "[consul.client]\naddr = \"{}\"\npoll_interval = \"100ms\"\n",
                consul.addr
            ));
        }
        text.push_str("[dns]\naddr = \"127.0.0.1:0\"\nstart_wait = \"5s\"\n");
        node.append_config(&text);
        let agent = node.start();
        relays[i].forward_to(agent.gossip);
        nodes.push(node);
        agents.push(agent);
    }
    for agent in &agents {
        await_true(Duration::from_secs(20), "web-a answered everywhere", || {
            short(agent, &["_web._tcp.service.consul", "SRV"]) == ["1 1 80 host-a.node.dc1.consul."]
        });
    }
    // B goes down, then A dies while B is down; C sees A go.
    let mut c = agents.pop().unwrap();
    let mut b = agents.pop().unwrap();
    let mut a = agents.pop().unwrap();
    for victim in [&mut b, &mut a] {
        victim.child.kill().unwrap();
        let _ = victim.child.wait();
    }
    await_true(Duration::from_secs(15), "web-a gone from C", || {
        status(&c, &["web.service.consul"]) == "NXDOMAIN"
    });
    // B restarts while C, its only live peer, is unreachable.
    partition.isolate(c.gossip);
    let b = nodes[1].start();
    relays[1].forward_to(b.gossip);
    let addr = b.dns_addr();
    let asked = Instant::now();
    let question = std::thread::spawn(move || {
        let out = Command::new("dig")
            .arg(format!("@{}", addr.ip()))
            .args(["-p", &addr.port().to_string(), "+time=60", "+tries=1"])
            .arg("web.service.consul")
            .output()
            .expect("dig (dnsutils) must be installed");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            asked.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !question.is_finished(),
        "B answered before its membership settled"
    );
    partition.heal();
    let (answer, took) = question.join().unwrap();
    let how = b.expect("dns: answering");
    assert!(
        answer.contains("status: NXDOMAIN"),
        "B's first answer after its restart names the dead host-a (after {took:?}):\n{answer}"
    );
    println!("B's first DNS answer after its restart came {took:?} after it was asked ({how})");
    // The others still answer at once (they were never restarted).
    assert_eq!(status(&c, &["web.service.consul"]), "NXDOMAIN");
    c.child.kill().unwrap();
    let _ = c.child.wait();
}

#[test]
fn hostile_packets_get_codes_or_are_dropped_and_the_responder_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = dns_node(dir.path(), "host-a", None, None);
    let agent = node.start();
    await_true(Duration::from_secs(10), "node row", || {
        short(&agent, &["host-a.node.consul"]) == ["127.0.0.1"]
    });
    let addr = agent.dns_addr();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let ask = |packet: &[u8]| -> Option<Vec<u8>> {
        sock.send_to(packet, addr).unwrap();
        let mut buf = [0u8; 4096];
        sock.recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec())
    };
    let rcode = |r: &[u8]| r[3] & 0x0f;
    // A valid query for host-a.node.consul, to mutate.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["host-a", "node", "consul"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(rcode(&ask(&q).unwrap()), 0);
    // Too short, or a response: dropped.
    assert!(ask(&[1, 2, 3]).is_none());
    let mut resp = q.clone();
    resp[2] |= 0x80;
    assert!(ask(&resp).is_none());
    // Truncated question, a compression loop, huge counts: FORMERR.
    assert_eq!(rcode(&ask(&q[..q.len() - 3]).unwrap()), 1);
    let mut looped = q[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(rcode(&ask(&looped).unwrap()), 1);
    let mut counts = q.clone();
    counts[4] = 0xff;
    counts[5] = 0xff;
    assert_eq!(rcode(&ask(&counts).unwrap()), 1);
    // Two questions: FORMERR; another opcode (STATUS): NOTIMP.
    let mut two = q.clone();
    two[5] = 2;
    two.extend_from_slice(&q[12..]);
    assert_eq!(rcode(&ask(&two).unwrap()), 1);
    let mut status_op = q.clone();
    status_op[2] = 2 << 3;
    assert_eq!(rcode(&ask(&status_op).unwrap()), 4);
    // EDNS garbage in the additional section: FORMERR, never a crash.
    let mut edns = q.clone();
    edns[11] = 1;
    edns.extend_from_slice(&[0, 0, 41, 0xff, 0xff, 0, 0, 0, 0, 0, 9, 1, 2]);
    assert!(ask(&edns).is_some());
    // Random bytes, many times, from another socket (its answers must not
    // crowd out the one below): still answering afterwards.
    let flood = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..2000 {
        let len = 12 + (x % 200) as usize;
        let p: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        flood.send_to(&p, addr).unwrap();
    }
    // UDP may lose a datagram on a loaded machine: ask up to 5 times.
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let answered = (0..5).any(|_| {
        sock.send_to(&q, addr).unwrap();
        let mut buf = [0u8; 4096];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => n >= 12 && buf[..2] == q[..2] && rcode(&buf[..n]) == 0,
            Err(_) => false,
        }
    });
    assert!(answered, "the responder stopped answering");
    assert_eq!(
        short(&agent, &["+tcp", "host-a.node.consul"]),
        ["127.0.0.1"]
    );
}

#[test]
fn a_bootstrap_name_resolves_through_the_named_dns_server() {
    let dir = tempfile::tempdir().unwrap();
    let a = dns_node(&dir.path().join("a"), "host-a", None, None).start();
    await_true(Duration::from_secs(10), "host-a in A's DNS", || {
        short(&a, &["host-a.node.consul"]) == ["127.0.0.1"]
    });
    // B knows A only by a name that A's own DNS responder answers (not the
    // system resolver, which has never heard of .consul).
    let b_node = Node::with(
        &dir.path().join("b"),
        &format!(
            "bootstrap = [\"host-a.node.consul:{}@{}\"]",
            a.gossip.port(),
            a.dns_addr()
        ),
        "",
    );
    let b = b_node.start();
    let a_addr = a.gossip.to_string();
    await_true(
        Duration::from_secs(15),
        "B joined A through the name",
        || {
            b.members()
                .iter()
                .any(|(addr, s)| *addr == a_addr && s == "alive")
        },
    );
    assert!(b.saw("not supported yet").is_none());
}

/// Asks with hickory-proto's message types over a real UDP socket or TCP
/// stream (the hickory wire client side, next to dig).
fn hickory_ask(
    addr: SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
    tcp: bool,
) -> hickory_proto::op::Message {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::Name;
    use std::io::{Read, Write};
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    let bytes = m.to_vec().unwrap();
    let answer = if tcp {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
        s.write_all(&bytes).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).unwrap();
        buf
    } else {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&bytes, addr).unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let resp = Message::from_vec(&answer).unwrap();
    assert_eq!(resp.metadata.id, 4242);
    resp
}

#[test]
fn the_hickory_wire_client_gets_the_same_answers_over_udp_and_tcp() {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{RData, RecordType};
    let consul = ConsulStandIn::start();
    consul.set_service("web-1", service_json("web-1", "web", &["v1"], 8080));
    consul.set_service("web-2", service_json("web-2", "web", &["v2"], 8081));
    let dir = tempfile::tempdir().unwrap();
    let agent = dns_node(dir.path(), "host-a", Some(&consul), None).start();
    await_true(Duration::from_secs(10), "mirrored", || {
        short(&agent, &["web.service.consul"]).len() == 2
    });
    let addr = agent.dns_addr();
    for tcp in [false, true] {
        let a = hickory_ask(addr, "web.service.consul.", RecordType::A, tcp);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert_eq!(a.answers.len(), 2);
        assert!(a.edns.is_some(), "EDNS answered with EDNS");
        let srv = hickory_ask(addr, "_web._v2.service.consul.", RecordType::SRV, tcp);
        let ports: Vec<u16> = srv
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.port),
                _ => None,
            })
            .collect();
        assert_eq!(ports, [8081]);
        assert_eq!(srv.additionals.len(), 1, "glue for the target");
        let nx = hickory_ask(addr, "nope.service.consul.", RecordType::A, tcp);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(
            nx.authorities.first().map(|r| &r.data),
            Some(RData::SOA(_))
        ));
        let refused = hickory_ask(addr, "example.org.", RecordType::A, tcp);
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    }
}

#[test]
fn ttls_record_limits_and_only_passing_follow_the_config() {
    let consul = ConsulStandIn::start();
    for i in 0..5 {
        let mut s = service_json(&format!("web-{i}"), "web", &[], 80);
        s["Address"] = format!("10.3.0.{}", i + 1).into();
        consul.set_service(&format!("web-{i}"), s);
    }
    consul.set_service("db-1", service_json("db-1", "db", &[], 5432));
    consul.set_check("c0", check_json("c0", "web-0", "warning", ""));
    let dir = tempfile::tempdir().unwrap();
    let node = dns_node(dir.path(), "host-a", Some(&consul), None);
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        text.replace(
            "[dns]\n",
            "[dns]\nonly_passing = true\na_record_limit = 2\nnode_ttl = \"30s\"\nservice_ttl = { \"*\" = \"5s\", db = \"60s\" }\n",
        ),
    )
    .unwrap();
    let agent = node.start();
    await_true(Duration::from_secs(10), "db answered", || {
        short(&agent, &["db.service.consul"]).len() == 1
    });
    let ttl = |args: &[&str]| -> Vec<String> {
        let mut a = args.to_vec();
        a.extend(["+noall", "+answer"]);
        dig(&agent, &a)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect()
    };
    assert_eq!(ttl(&["db.service.consul"]), ["60"]);
    assert!(
        ttl(&["+tcp", "web.service.consul"])
            .iter()
            .all(|t| t == "5")
    );
    assert_eq!(ttl(&["host-a.node.consul"]), ["30"]);
    // a_record_limit = 2 even over TCP; web-0 (warning) left out with only_passing.
    let web = short(&agent, &["+tcp", "web.service.consul"]);
    assert_eq!(web.len(), 2, "{web:?}");
    let all: std::collections::BTreeSet<String> = (0..30)
        .flat_map(|_| short(&agent, &["+tcp", "web.service.consul"]))
        .collect();
    assert_eq!(
        all.len(),
        4,
        "every passing instance shows up, the warning one never: {all:?}"
    );
    assert!(!all.contains("10.3.0.1"));
}

#[test]
fn service_node_and_tag_names_answer_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let node = dns_node(dir.path(), "Host-A", None, None);
    let agent = node.start();
    node.exec(
        &agent,
        "INSERT INTO consul_services (node, id, name, tags, port, address, source) VALUES ('Host-A', 'web-1', 'Web', '[\"Primary\"]', 80, '10.1.2.3', 'test')",
    );
    await_true(Duration::from_secs(10), "Web answered", || {
        short(&agent, &["web.service.consul", "A"]) == ["10.1.2.3"]
    });
    for name in [
        "web.service.consul",
        "WEB.service.consul",
        "Web.Service.Consul",
        "primary.web.service.consul",
        "PRIMARY.Web.service.consul",
        "_web._primary.service.consul",
    ] {
        assert_eq!(short(&agent, &[name, "A"]), ["10.1.2.3"], "{name}");
    }
    assert_eq!(
        status(&agent, &["other.web.service.consul", "A"]),
        "NXDOMAIN"
    );
    let srv = short(&agent, &["_WEB._tcp.service.consul", "SRV"]);
    assert_eq!(srv.len(), 1, "{srv:?}");
    assert!(srv[0].starts_with("1 1 80 "), "{srv:?}");
    assert_eq!(status(&agent, &["host-a.node.consul", "A"]), "NOERROR");
    assert_eq!(status(&agent, &["HOST-A.node.consul", "A"]), "NOERROR");
}
