//! Two agents over real QUIC on loopback, as in the reference's 2-node quick
//! start: node B bootstraps from node A; a row written on either node is
//! readable on the other within seconds, and both end with identical tables.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Node, stdout};

fn rows(node: &Node, agent: &Agent) -> String {
    node.query(agent, "SELECT * FROM todos ORDER BY id;")
}

/// Waits (bounded) until the node shows `want`.
fn await_rows(node: &Node, agent: &Agent, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = rows(node, agent);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_node_quick_start_replicates_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();

    let api = agent_a.api.to_string();
    let out = a.cli(&[&["--api-addr", &api][..], &common::QUICK_START_EXEC].concat());
    assert_eq!(stdout(&out), "INFO corrosion: Rows affected: 1\n");
    await_rows(&b, &agent_b, "some-id|Write some Corrosion docs!|\n");

    let out = b.cli(&[
        "--api-addr",
        &agent_b.api.to_string(),
        "exec",
        "--param",
        "some-id-2",
        "--param",
        "Show how broadcasts work",
        "INSERT INTO todos (id, title) VALUES (?, ?)",
    ]);
    assert!(out.status.success());
    let both = "some-id|Write some Corrosion docs!|\nsome-id-2|Show how broadcasts work|\n";
    await_rows(&a, &agent_a, both);
    await_rows(&b, &agent_b, both);

    // Conflicting updates on both sides converge to one answer everywhere.
    a.exec(&agent_a, "UPDATE todos SET completed_at = 1");
    b.exec(&agent_b, "UPDATE todos SET completed_at = 2");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ra, rb) = (rows(&a, &agent_a), rows(&b, &agent_b));
        if ra == rb && !ra.contains("||") && !ra.ends_with("|\n") {
            break;
        }
        assert!(Instant::now() < deadline, "not converged: {ra:?} vs {rb:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Each sees the other as a member.
    let members: serde_json::Value = reqwest::blocking::get(agent_a.url("/v1/members"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(members[0]["actor_id"], agent_b.actor, "{members}");
    assert_eq!(members[0]["state"], "alive");
    let members: serde_json::Value = reqwest::blocking::get(agent_b.url("/v1/members"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(members[0]["actor_id"], agent_a.actor, "{members}");

    // The same through the CLI (admin socket): a table with A alive.
    let out = b.cli(&["cluster", "members"]);
    let table = stdout(&out);
    assert!(out.status.success(), "{table}");
    println!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ADDR"), "{table}");
    assert!(
        lines[1].starts_with(&agent_a.gossip.to_string())
            && lines[1].contains(&agent_a.actor)
            && lines[1].contains("alive")
            && lines[1].ends_with("ms"),
        "{table}"
    );
}

/// Inserts one `todos` row per id, all with `title`, in one transaction.
fn insert_rows(agent: &Agent, ids: impl Iterator<Item = String>, title: &str) {
    let stmts: Vec<serde_json::Value> = ids
        .map(|id| serde_json::json!(["INSERT INTO todos (id, title) VALUES (?, ?)", [id, title]]))
        .collect();
    let r = reqwest::blocking::Client::new()
        .post(agent.url("/v1/transactions"))
        .json(&stmts)
        .send()
        .unwrap();
    assert!(r.status().is_success());
}

#[test]
fn a_node_that_was_down_catches_up_through_sync() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    // Writes before B exists: only anti-entropy can bring them over.
    insert_rows(
        &agent_a,
        (0..500).map(|i| format!("id-{i:04}")),
        &"x".repeat(100),
    );
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();
    let want = rows(&a, &agent_a);
    await_rows(&b, &agent_b, &want);
}

#[test]
fn five_agents_with_conflicting_writers_converge_to_identical_contents() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::new(&dir.path().join("n0"), "");
    let mut agents = vec![first.start()];
    let mut nodes = vec![first];
    for i in 1..5 {
        let n = Node::joining(&dir.path().join(format!("n{i}")), &agents[0]);
        agents.push(n.start());
        nodes.push(n);
    }
    let urls: Vec<String> = agents.iter().map(|a| a.url("/v1/transactions")).collect();
    std::thread::scope(|s| {
        for (w, url) in urls.iter().enumerate() {
            s.spawn(move || {
                let client = reqwest::blocking::Client::new();
                for i in 0..40 {
                    // Ten shared keys: every writer updates, deletes and
                    // re-inserts the same rows.
                    let k = format!("k{}", (i * 7 + w) % 10);
                    let stmt = match i % 3 {
                        0 => serde_json::json!([[
                            "INSERT OR REPLACE INTO todos (id, title) VALUES (?, ?)",
                            [k, format!("w{w}-{i}")]
                        ]]),
                        1 => serde_json::json!([[
                            "UPDATE todos SET completed_at = ? WHERE id = ?",
                            [i, k]
                        ]]),
                        _ => serde_json::json!([["DELETE FROM todos WHERE id = ?", [k]]]),
                    };
                    let r = client.post(url).json(&stmt).send().unwrap();
                    assert!(r.status().is_success());
                }
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all: Vec<String> = nodes.iter().zip(&agents).map(|(n, a)| rows(n, a)).collect();
        let books: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| books(&n.dir.join("admin.sock")))
            .collect();
        let complete = books[0].as_object().unwrap().len() == 5
            && books[0]
                .as_object()
                .unwrap()
                .values()
                .all(|b| b["needed"] == serde_json::json!([]));
        if complete && all.iter().all(|r| r == &all[0]) && books.iter().all(|b| b == &books[0]) {
            println!("converged: {} rows", all[0].lines().count());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged after 30 s: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Per-actor bookkeeping from a node's admin socket.
fn books(sock: &std::path::Path) -> serde_json::Value {
    common::admin(sock, r#"{"cmd":"books"}"#)["result"].clone()
}

fn tls(node: &Node, certs: &std::path::Path, server: &std::path::Path) {
    let p = |d: &std::path::Path, f: &str| d.join(f).display().to_string();
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("plaintext = true", "plaintext = false");
    let text = format!(
        "{text}\n[gossip.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n[gossip.tls.client]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        p(server, "server_cert.pem"),
        p(server, "server_key.pem"),
        p(certs, "ca_cert.pem"),
        p(certs, "client_cert.pem"),
        p(certs, "client_key.pem"),
    );
    std::fs::write(&node.config, text).unwrap();
}

fn generate(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&*common::BIN)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = dir.to_str().unwrap();
    let (key, cert) = (format!("{d}/ca_key.pem"), format!("{d}/ca_cert.pem"));
    run(&["tls", "ca", "generate", "--output-dir", d]);
    run(&[
        "tls",
        "server",
        "generate",
        "127.0.0.1",
        "--ca-key",
        &key,
        "--ca-cert",
        &cert,
        "--output-dir",
        d,
    ]);
    run(&[
        "tls",
        "client",
        "generate",
        "--ca-key",
        &key,
        "--ca-cert",
        &cert,
        "--output-dir",
        d,
    ]);
}

#[test]
fn mutual_tls_cluster_replicates_and_refuses_a_foreign_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (dir.path().join("certs"), dir.path().join("other-ca"));
    generate(&good);
    generate(&other);

    let a = Node::new(&dir.path().join("a"), "");
    tls(&a, &good, &good);
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    tls(&b, &good, &good);
    let agent_b = b.start();
    a.exec(
        &agent_a,
        "INSERT INTO todos (id, title) VALUES ('tls', 'over mTLS')",
    );
    await_rows(&b, &agent_b, "tls|over mTLS|\n");

    // A node whose certificates come from another CA cannot join.
    let c = Node::joining(&dir.path().join("c"), &agent_a);
    tls(&c, &other, &other);
    let agent_c = c.start();
    let line = agent_a.expect("refused a peer connection");
    assert!(line.contains("127.0.0.1"), "{line}");
    let members: serde_json::Value = reqwest::blocking::get(agent_c.url("/v1/members"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(members, serde_json::json!([]), "C has no members");
    let members: serde_json::Value = reqwest::blocking::get(agent_a.url("/v1/members"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        members.as_array().map(Vec::len),
        Some(1),
        "A lists only B: {members}"
    );
    assert_eq!(rows(&c, &agent_c), "");
}

/// `insecure = true`, server certificates only: peers accept each other's
/// certificates unverified (here from two different CAs) and replicate
/// over TLS.
#[test]
fn insecure_tls_accepts_unverified_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    generate(&one);
    generate(&two);
    let insecure = |node: &Node, certs: &std::path::Path| {
        let text = std::fs::read_to_string(&node.config)
            .unwrap()
            .replace("plaintext = true", "plaintext = false");
        let text = format!(
            "{text}\n[gossip.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\ninsecure = true\n",
            certs.join("server_cert.pem").display(),
            certs.join("server_key.pem").display(),
        );
        std::fs::write(&node.config, text).unwrap();
    };
    let a = Node::new(&dir.path().join("a"), "");
    insecure(&a, &one);
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    insecure(&b, &two);
    let agent_b = b.start();
    b.exec(
        &agent_b,
        "INSERT INTO todos (id, title) VALUES ('i', 'unverified')",
    );
    await_rows(&a, &agent_a, "i|unverified|\n");
}

#[test]
fn a_restarted_node_rejoins_without_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();
    a.exec(&agent_a, "INSERT INTO todos (id) VALUES ('before')");
    await_rows(&b, &agent_b, "before||\n");
    // B remembers A in its own database.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let conn = rusqlite::Connection::open(&b.db).unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM __corro_members WHERE addr = ?1",
                [agent_a.gossip.to_string()],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "B never saved A as a member");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent_b.stop();
    // Restart B with no bootstrap at all.
    let text = std::fs::read_to_string(&b.config).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("bootstrap"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&b.config, text).unwrap();
    let agent_b = b.start();
    a.exec(&agent_a, "INSERT INTO todos (id) VALUES ('after')");
    await_rows(&b, &agent_b, "after||\nbefore||\n");
}

/// A peer held as down when this node stopped is still remembered, and is
/// the way back. A (gossip port 0, no bootstrap) sees B leave, stops, and
/// comes back on a new port; B comes back at its old address knowing only
/// A's old one. A's remembered row for B is the only path between them.
#[test]
fn a_peer_down_when_this_node_stopped_is_still_the_way_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    b.set_gossip_addr(&format!("127.0.0.1:{}", common::free_port()));
    let agent_b = b.start();
    let b_addr = agent_b.gossip.to_string();
    a.exec(&agent_a, "INSERT INTO todos (id) VALUES ('before')");
    await_rows(&b, &agent_b, "before||\n");
    common::await_some(Duration::from_secs(15), "A remembers B", || {
        let conn = rusqlite::Connection::open(&a.db).ok()?;
        conn.query_row(
            "SELECT 1 FROM __corro_members WHERE addr = ?1",
            [&b_addr],
            |_| Ok(()),
        )
        .ok()
    });
    agent_b.stop();
    common::await_some(Duration::from_secs(15), "A sees B gone", || {
        agent_a
            .members()
            .iter()
            .all(|(addr, state)| addr != &b_addr || state != "alive")
            .then_some(())
    });
    let a_before = agent_a.gossip;
    agent_a.stop();
    let agent_a = a.start();
    assert_ne!(agent_a.gossip, a_before, "A came back on its old port");
    let agent_b = b.start();
    assert_eq!(agent_b.gossip.to_string(), b_addr);
    a.exec(&agent_a, "INSERT INTO todos (id) VALUES ('after')");
    await_rows(&b, &agent_b, "after||\nbefore||\n");
}

/// Bootstrap by DNS name, and retried while alone: B starts first with
/// `bootstrap = ["localhost:<port>"]`; A comes up on that port later; B joins
/// and replicates without a restart.
#[test]
fn bootstrap_by_name_is_retried_until_the_peer_appears() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let b = Node::with(
        &dir.path().join("b"),
        &format!("bootstrap = [\"localhost:{port}\"]"),
        "",
    );
    let agent_b = b.start();
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent_b.members().is_empty());
    let a = Node::new(&dir.path().join("a"), "");
    a.set_gossip_addr(&format!("127.0.0.1:{port}"));
    let agent_a = a.start();
    assert_eq!(agent_a.gossip.port(), port);
    a.exec(&agent_a, "INSERT INTO todos (id) VALUES ('late')");
    await_rows(&b, &agent_b, "late||\n");
}

/// The reference's quick start binds IPv6 (`[::]:8787`, bootstrap
/// `[::1]:8787`): two agents on IPv6 loopback join and replicate.
#[test]
fn two_agents_over_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    a.set_gossip_addr("[::1]:0");
    let agent_a = a.start();
    assert!(agent_a.gossip.is_ipv6(), "{}", agent_a.gossip);
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    b.set_gossip_addr("[::1]:0");
    let agent_b = b.start();
    a.exec(&agent_a, "INSERT INTO todos (id) VALUES ('over-v6')");
    await_rows(&b, &agent_b, "over-v6||\n");
    let members = agent_b.members();
    assert_eq!(
        members,
        vec![(agent_a.gossip.to_string(), "alive".to_string())]
    );
}

fn health(agent: &Agent) -> serde_json::Value {
    reqwest::blocking::get(agent.url("/v1/health"))
        .unwrap()
        .json()
        .unwrap()
}

/// Waits (bounded) until `agent`'s health lists `want` as the actors with a
/// different schema.
fn await_mismatches(agent: &Agent, want: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = health(agent);
        let got: Vec<&str> = h["schema_mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["actor_id"].as_str().unwrap())
            .collect();
        if got == want {
            return h;
        }
        assert!(Instant::now() < deadline, "health {h:#}, want {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rolling schema change: B gets a new column first. Both nodes report the
/// mismatch in `/v1/health` (sync carries a schema fingerprint), a write to
/// the new column waits on A until A's schema has the column too, then the
/// mismatch is gone and the row is identical on both.
#[test]
fn schema_skew_between_peers_is_reported_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();
    let h = await_mismatches(&agent_a, &[]);
    assert_eq!(h["schema"], health(&agent_b)["schema"]);
    assert_eq!(h["schema"].as_str().unwrap().len(), 16);

    let v2 = common::TODOS.replace(
        "completed_at INTEGER\n",
        "completed_at INTEGER,\nowner TEXT NOT NULL DEFAULT 'nobody'\n",
    );
    std::fs::write(b.dir.join("schema/todo.sql"), &v2).unwrap();
    agent_b.signal("HUP");
    agent_b.expect("adding column");
    let h = await_mismatches(&agent_a, &[agent_b.actor.as_str()]);
    assert_eq!(
        h["schema_mismatches"][0]["schema"],
        health(&agent_b)["schema"]
    );
    await_mismatches(&agent_b, &[agent_a.actor.as_str()]);

    b.exec(
        &agent_b,
        "INSERT INTO todos (id, title, owner) VALUES ('r', 'new column', 'me')",
    );
    std::fs::write(a.dir.join("schema/todo.sql"), &v2).unwrap();
    agent_a.signal("HUP");
    await_mismatches(&agent_a, &[]);
    await_mismatches(&agent_b, &[]);
    let want = "r|new column||me\n";
    await_rows(&a, &agent_a, want);
    await_rows(&b, &agent_b, want);
}

#[test]
fn a_write_right_after_a_chain_forms_reaches_every_member_by_broadcast() {
    // Five agents bootstrapped as a chain (each joins the one before it);
    // the write comes as soon as the last API answers. Members learn of the
    // chain's far ends through sync rounds (announce on an unknown peer's
    // sync, pull from a peer that holds more), so the write arrives without
    // waiting for membership to spread on its own.
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = vec![Node::new(&dir.path().join("n0"), "")];
    let mut agents: Vec<Agent> = vec![nodes[0].start()];
    for i in 1..5 {
        let node = Node::joining(&dir.path().join(format!("n{i}")), &agents[i - 1]);
        agents.push(node.start());
        nodes.push(node);
    }
    let t0 = Instant::now();
    nodes[0].exec(
        &agents[0],
        "INSERT INTO todos (id, title) VALUES ('first', 'after formation')",
    );
    for (node, agent) in nodes.iter().zip(&agents) {
        await_rows(node, agent, "first|after formation|\n");
    }
    println!("on all five after {:?}", t0.elapsed());
    let want = books(&nodes[0].dir.join("admin.sock"));
    for n in &nodes[1..] {
        assert_eq!(books(&n.dir.join("admin.sock")), want);
    }
}

#[test]
fn a_stopped_agent_says_goodbye_and_its_peer_sees_it_leave() {
    // SIGTERM: the SWIM task queues its leave, shutdown waits for the
    // datagrams to go out before closing the endpoint (no fixed sleep), so
    // the peer marks it down on the goodbye rather than through failure
    // detection. The goodbye is checked on B's side (its log says every
    // datagram left), the effect on A's.
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let mut agent_b = b.start();
    let b_addr = agent_b.gossip.to_string();
    // Both must list each other: a member says goodbye to the members it
    // knows.
    let a_addr = agent_a.gossip.to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    for (agent, other) in [(&agent_a, &b_addr), (&agent_b, &a_addr)] {
        while !agent
            .members()
            .iter()
            .any(|(addr, s)| addr == other && s == "alive")
        {
            assert!(Instant::now() < deadline, "{other} never became alive");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let stopping = Instant::now();
    agent_b.signal("TERM");
    let line = agent_b.expect("goodbyes sent; closing the peer endpoint");
    assert!(
        line.contains("flushed=true") && line.contains("peers=1"),
        "{line}"
    );
    assert!(agent_b.child.wait().unwrap().success());
    let stopped_in = stopping.elapsed();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state = agent_a
            .members()
            .into_iter()
            .find(|(addr, _)| *addr == b_addr)
            .map(|(_, s)| s);
        if state.as_deref() == Some("down") {
            break;
        }
        assert!(Instant::now() < deadline, "A still lists B as {state:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "B stopped in {stopped_in:?}; A saw it down after {:?}; {line}",
        stopping.elapsed()
    );
}

#[test]
fn cluster_rejoin_announces_to_known_members() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !agent_b.members().iter().any(|(_, s)| s == "alive") {
        assert!(Instant::now() < deadline, "B never saw A");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = b.cli(&["cluster", "rejoin"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "INFO corrosion: asked 1 peers to let this node rejoin"
    );
    agent_b.expect("rejoining: announced to seeds and known members");
    // Still one cluster afterwards.
    insert_and_await(&a, &agent_a, &b, &agent_b);
}

fn insert_and_await(a: &Node, agent_a: &Agent, b: &Node, agent_b: &Agent) {
    a.exec(
        agent_a,
        "INSERT INTO todos (id, title) VALUES ('after-rejoin', 'x')",
    );
    await_rows(b, agent_b, "after-rejoin|x|\n");
}

#[test]
fn health_is_ok_on_a_quiet_cluster_and_reports_a_lost_peer() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let mut agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();
    a.exec(&agent_a, "INSERT INTO todos (id, title) VALUES ('h', 'x')");
    await_rows(&b, &agent_b, "h|x|\n");
    let get = |agent: &Agent, q: &str| {
        let r = reqwest::blocking::get(agent.url(&format!("/v1/health{q}"))).unwrap();
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().unwrap())
    };
    // The write's replication lag is reported (same host, so one clock:
    // well under a second).
    let lag = get(&agent_b, "").1["replication_lag_secs"].as_f64();
    assert!(lag.is_some_and(|l| (0.0..1.0).contains(&l)), "{lag:?}");
    // Quiet: no writes, rounds keep completing with nothing to move.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, h) = get(&agent_b, "");
        if code == 200 {
            assert_eq!(h["status"], "ok");
            assert_eq!(h["missing_versions"], 0);
            assert_eq!(h["behind"], 0);
            assert!(h["last_sync_secs"].as_f64().is_some(), "{h}");
            break;
        }
        assert!(Instant::now() < deadline, "never healthy: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&agent_b, "?max_missing=x").0, 400);
    // A lost peer: rounds stop completing; past max_sync_age the node says
    // so (and soon lists the peer down).
    agent_a.child.kill().unwrap();
    let _ = agent_a.child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, h) = get(&agent_b, "?max_sync_age=1");
        let reasons = h["reasons"].to_string();
        if code == 503 && reasons.contains("no sync round completed") && h["members_down"] == 1 {
            assert_eq!(h["status"], "behind");
            break;
        }
        assert!(Instant::now() < deadline, "the lost peer never showed: {h}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One scrape: `name{labels}` -> value, and the names that have `# HELP`.
struct Scrape {
    series: std::collections::BTreeMap<String, f64>,
    help: std::collections::BTreeSet<String>,
}

fn scrape(agent: &Agent) -> Scrape {
    let addr = agent.metrics_addr().expect("metrics enabled");
    let text = reqwest::blocking::get(format!("http://{addr}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    let mut s = Scrape {
        series: Default::default(),
        help: Default::default(),
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            s.help
                .insert(rest.split(' ').next().unwrap_or_default().to_string());
        } else if !line.starts_with('#')
            && let Some((series, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            s.series.insert(series.to_string(), v);
        }
    }
    s
}

impl Scrape {
    fn get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }
    /// Sum over every label set of `name`.
    fn sum(&self, name: &str) -> f64 {
        self.series
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(name)
                    .is_some_and(|r| r.is_empty() || r.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// The unlabelled counters and gauges docs/METRICS.md lists (its table is
/// the agent's own list, checked by a unit test): exported from the start.
fn documented_unlabelled() -> Vec<String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/METRICS.md"),
    )
    .unwrap();
    doc.lines()
        .filter(|l| !l.contains("| histogram |"))
        .filter_map(|l| l.strip_prefix("| `corro_"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| !n.contains('{'))
        .map(|n| format!("corro_{n}"))
        .collect()
}

/// Three agents with metrics, b and c joining through a (`a_config`
/// appended to a's configuration).
fn three_with_metrics(dir: &std::path::Path, a_config: &str) -> ([Node; 3], [Agent; 3]) {
    let a = Node::new(&dir.join("a"), "");
    a.enable_metrics();
    if !a_config.is_empty() {
        a.append_config(a_config);
    }
    let agent_a = a.start();
    let b = Node::joining(&dir.join("b"), &agent_a);
    b.enable_metrics();
    let agent_b = b.start();
    let c = Node::joining(&dir.join("c"), &agent_a);
    c.enable_metrics();
    let agent_c = c.start();
    ([a, b, c], [agent_a, agent_b, agent_c])
}

#[test]
fn three_agents_export_the_documented_metrics_and_see_a_member_go_down() {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let dir = tempfile::tempdir().unwrap();
    let ([a, b, c], [agent_a, agent_b, mut agent_c]) =
        three_with_metrics(dir.path(), "[dns]\naddr = \"127.0.0.1:0\"");
    let nodes = [(&a, &agent_a), (&b, &agent_b), (&c, &agent_c)];
    for (i, (n, ag)) in nodes.iter().enumerate() {
        n.exec(
            ag,
            &format!("INSERT INTO todos (id, title) VALUES ('m{i}', 'x')"),
        );
    }
    for (n, ag) in &nodes {
        await_rows(n, ag, "m0|x|\nm1|x|\nm2|x|\n");
    }
    // One DNS question for a name nobody registered.
    let dns = agent_a.dns_addr();
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("nobody.service.consul.").unwrap(),
        RecordType::A,
    ));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&q.to_vec().unwrap(), dns).unwrap();
    let mut buf = [0u8; 1500];
    sock.recv_from(&mut buf).unwrap();

    let unlabelled = documented_unlabelled();
    assert!(unlabelled.len() > 30, "{unlabelled:?}");
    for (_, ag) in &nodes {
        // Gauges are sampled every second: await the settled picture.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = scrape(ag);
            let missing: Vec<&String> = unlabelled
                .iter()
                .filter(|n| s.get(n).is_none() || !s.help.contains(*n))
                .collect();
            let ok = missing.is_empty()
                && s.get(r#"corro_cluster_members{state="alive"}"#) == Some(2.0)
                && s.get(r#"corro_cluster_members{state="down"}"#) == Some(0.0)
                && s.get("corro_swim_members_active") == Some(2.0)
                && s.get("corro_store_head_version") == Some(1.0)
                && s.get("corro_store_missing_versions") == Some(0.0)
                && s.get("corro_store_read_pool_size").is_some_and(|v| v > 0.0)
                && s.sum("corro_replication_lag_seconds_count") >= 2.0
                && s.get("corro_store_apply_duration_seconds_count")
                    .is_some_and(|v| v >= 1.0)
                && s.sum("corro_replication_lag_seconds_bucket") > 0.0
                && s.get(r#"corro_peer_sent_bytes_total{stream="broadcast"}"#)
                    .is_some_and(|v| v > 0.0)
                && s.sum("corro_peer_received_bytes_total") > 0.0
                && s.get(r#"corro_api_requests_total{route="/v1/transactions",status="200"}"#)
                    == Some(1.0)
                && s.sum("corro_sync_rounds_total") > 0.0
                && s.get("corro_sync_last_round_age_seconds")
                    .is_some_and(|v| v >= 0.0);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never settled; missing {missing:?} in {:#?}",
                s.series
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(
        scrape(&agent_a).get(r#"corro_dns_responses_total{rcode="nxdomain"}"#),
        Some(1.0)
    );
    // A member killed: the others' gauges show it down.
    agent_c.child.kill().unwrap();
    let _ = agent_c.child.wait();
    for ag in [&agent_a, &agent_b] {
        common::await_some(Duration::from_secs(30), "c shown down", || {
            let s = scrape(ag);
            (s.get(r#"corro_cluster_members{state="down"}"#) == Some(1.0)
                && s.get(r#"corro_cluster_members{state="alive"}"#) == Some(1.0))
            .then_some(())
        });
    }
}

/// Periodic push-pull: once settled, each agent pulls a peer's whole
/// member view again now and then (every 10-15 s at three members), and
/// says so in its metrics.
#[test]
fn settled_agents_refresh_their_member_view_from_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (_nodes, agents) = three_with_metrics(dir.path(), "");
    for ag in &agents {
        common::await_some(Duration::from_secs(60), "a refreshed view", || {
            let s = scrape(ag);
            (s.get(r#"corro_swim_views_applied_total{kind="refresh"}"#)
                .is_some_and(|v| v >= 1.0)
                && s.get("corro_swim_members_active") == Some(2.0))
            .then_some(())
        });
    }
}

/// Sync rounds open with a digest, and a joining agent catches up through
/// them: its digest differs from the seed's, the seed names the differing
/// buckets, the joiner sends its state for those only and gets the rows
/// (written before it existed, so no broadcast could bring them); whole-state
/// rounds only after a failed round, nothing is refused, and after writes
/// on every node all three hold identical rows and bookkeeping.
#[test]
fn sync_rounds_open_with_a_digest_and_a_joiner_catches_up_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    a.enable_metrics();
    let agent_a = a.start();
    insert_rows(&agent_a, (0..200).map(|i| format!("first-{i:03}")), "x");
    let want = rows(&a, &agent_a);
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    b.enable_metrics();
    let agent_b = b.start();
    let c = Node::joining(&dir.path().join("c"), &agent_a);
    c.enable_metrics();
    let agent_c = c.start();
    let (nodes, agents) = ([a, b, c], [agent_a, agent_b, agent_c]);
    for (n, ag) in nodes.iter().zip(&agents) {
        await_rows(n, ag, &want);
    }
    for (i, ag) in agents.iter().enumerate() {
        let s = scrape(ag);
        // Whole-state rounds only follow a failed round (one at start-up,
        // say): a few at most, never the way the joiners caught up.
        let (state, digest) = (
            s.get(r#"corro_sync_rounds_total{opening="state"}"#)
                .unwrap_or(0.0),
            s.get(r#"corro_sync_rounds_total{opening="digest"}"#)
                .unwrap_or(0.0),
        );
        assert!(
            state <= 2.0 && digest >= 1.0 && digest > state,
            "agent {i}: {state} whole-state, {digest} digest rounds"
        );
        if i > 0 {
            // The joiners got the rows by sync, and were told which
            // buckets differ.
            assert!(
                s.get(r#"corro_peer_received_bytes_total{kind="SyncBuckets"}"#)
                    .is_some_and(|v| v > 0.0)
                    && s.get(r#"corro_peer_received_bytes_total{kind="SyncChanges"}"#)
                        .is_some_and(|v| v > 0.0),
                "agent {i}"
            );
        }
    }
    // The seed received digests and the joiners' states for the differing
    // buckets.
    let s = scrape(&agents[0]);
    assert!(
        s.get(r#"corro_peer_received_bytes_total{kind="SyncDigest"}"#)
            .is_some_and(|v| v > 0.0)
            && s.get(r#"corro_peer_received_bytes_total{kind="SyncState"}"#)
                .is_some_and(|v| v > 0.0)
    );
    let before: Vec<f64> = agents
        .iter()
        .map(|a| scrape(a).sum("corro_sync_rounds_total"))
        .collect();
    for (i, (n, ag)) in nodes.iter().zip(&agents).enumerate() {
        n.exec(
            ag,
            &format!("INSERT INTO todos (id, title) VALUES ('second-{i}', 'y')"),
        );
    }
    let want = format!(
        "{want}{}",
        (0..3)
            .map(|i| format!("second-{i}|y|\n"))
            .collect::<String>()
    );
    for (n, ag) in nodes.iter().zip(&agents) {
        await_rows(n, ag, &want);
    }
    // Rounds go on and nothing was refused.
    for (ag, b) in agents.iter().zip(before) {
        common::await_some(Duration::from_secs(30), "more rounds", || {
            (scrape(ag).sum("corro_sync_rounds_total") > b).then_some(())
        });
        let s = scrape(ag);
        assert_eq!(s.sum("corro_peer_messages_refused_total"), 0.0);
        assert_eq!(s.get("corro_sync_states_refused_total"), Some(0.0));
    }
    let books: Vec<serde_json::Value> = nodes.iter().map(|n| n.books()).collect();
    assert!(books.iter().all(|b| b == &books[0]), "{books:#?}");
}

/// A restarted node's first sync round does not wait out the connection
/// attempts to members that are unreachable from it: four agents behind
/// relays; D writes and stops; A and B then talk only to each other and C
/// (so C, and through C's member list the restarted D, hold them alive,
/// while D's connection attempts to them go unanswered for the 3 s
/// timeout). D's first round holds A, B and C and reaches C: its write
/// fence opens while the attempts to A and B are still under way.
#[test]
fn a_restarted_node_does_not_wait_for_unreachable_members_in_its_first_round() {
    use common::relay::{Partition, Relay};
    let dir = tempfile::tempdir().unwrap();
    let partition = Partition::default();
    let relays: Vec<Relay> = (0..4).map(|_| Relay::start(partition.clone())).collect();
    let mut nodes = Vec::new();
    let mut agents = Vec::new();
    for (i, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let node = Node::behind_relay(&dir.path().join(name), &relays, i);
        if i == 3 {
            node.enable_metrics();
            // The same port after its restart: its relay forwards there
            // from the first packet.
            node.set_gossip_addr(&format!("127.0.0.1:{}", common::free_port()));
        }
        let agent = node.start();
        relays[i].forward_to(agent.gossip);
        nodes.push(node);
        agents.push(agent);
    }
    let d = agents.pop().unwrap();
    common::await_some(
        Duration::from_secs(20),
        "D sees three members alive",
        || {
            let m = d.members();
            (m.len() == 3 && m.iter().all(|(_, s)| s == "alive")).then_some(())
        },
    );
    // D has a history of its own: a restart fences its writes until a
    // peer answers a sync round.
    nodes[3].exec(&d, "INSERT INTO todos (id) VALUES ('from-d')");
    d.stop();
    let (a, b, c) = (agents[0].gossip, agents[1].gossip, agents[2].gossip);
    partition.only_with(a, &[b, c]);
    partition.only_with(b, &[a, c]);
    let d = nodes[3].start();
    relays[3].forward_to(d.gossip);
    // (The line may have come before the start-up lines `start` waits for.)
    let seen = d
        .seen
        .borrow()
        .iter()
        .find(|l| l.contains("accepting local writes"))
        .cloned();
    let opened = seen.unwrap_or_else(|| d.expect("accepting local writes"));
    let failed = d.counter("corro_gossip_connect_failures_total");
    let members = d.members();
    assert!(
        opened.contains("first sync round done"),
        "D's fence opened some other way: {opened}"
    );
    assert_eq!(
        failed, 0.0,
        "D's writes opened only after a connection attempt to an unreachable member gave up"
    );
    // A and B were members D held alive (learned from C), so its round
    // could draw them.
    for unreachable in [&relays[0].addr, &relays[1].addr] {
        assert!(
            members
                .iter()
                .any(|(addr, state)| addr == &unreachable.to_string() && state == "alive"),
            "D did not hold {unreachable} alive when its fence opened: {members:?}"
        );
    }
    // Attempts to A and B were made (by the round, or by SWIM) and failed.
    common::await_some(
        Duration::from_secs(20),
        "D's attempts to A and B fail",
        || (d.counter("corro_gossip_connect_failures_total") >= 2.0).then_some(()),
    );
    for agent in agents {
        agent.stop();
    }
    d.stop();
}

/// A seed that is this node under another address (here 127.0.0.2 for a
/// node listening on every address) answers rounds with this node's own
/// actor id: the round is refused and the seed dropped with a warning. The
/// node has a history of its own, so its writes are fenced at start; with
/// its only seed gone it is a node without peers and opens the fence at
/// once (not through a round with itself, nor after the 10 s timeout).
#[test]
fn a_seed_that_is_this_node_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let node = Node::with(
        dir.path(),
        &format!("external_addr = \"127.0.0.1:{port}\""),
        "",
    );
    node.set_gossip_addr(&format!("0.0.0.0:{port}"));
    let agent = node.start();
    node.exec(&agent, "INSERT INTO todos (id) VALUES ('mine')");
    agent.stop();
    node.replace_in_config(
        &format!("external_addr = \"127.0.0.1:{port}\""),
        &format!("external_addr = \"127.0.0.1:{port}\"\nbootstrap = [\"127.0.0.2:{port}\"]"),
    );
    let agent = node.start();
    let line = agent.expect("a seed answers with this node's own actor id");
    assert!(line.contains(&format!("127.0.0.2:{port}")), "{line}");
    let opened = agent.expect("accepting local writes");
    assert!(
        opened.contains("the only seeds were this node's own addresses"),
        "the fence opened another way: {opened}"
    );
    agent.stop();
}
