//! Discovery through the real binary: the Consul bridge against a stand-in
//! Consul agent (a real Consul cannot be installed on the test machines;
//! see `corro_testkit::consul`), node identity and name claims, health from
//! membership, and the Consul-compatible HTTP API with blocking queries.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::time::{Duration, Instant};

use common::consul::{ConsulStandIn, Failure, StandInTls, check_json, service_json};
use common::{Agent, Node, await_some};
use serde_json::Value;

fn get(agent: &Agent, path: &str) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .get(agent.url(path))
        .timeout(Duration::from_secs(30))
        .send()
        .unwrap()
}

fn get_json(agent: &Agent, path: &str) -> Value {
    let r = get(agent, path);
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().unwrap()
}

/// A node with the discovery schema and, when `consul` is given, a bridge
/// polling it every 100 ms as Consul node `name`.
fn discovery_node(
    dir: &std::path::Path,
    name: &str,
    consul: Option<&ConsulStandIn>,
    extra: &str,
) -> Node {
    configure(Node::new(dir, ""), name, consul, extra)
}

/// The same, joining the cluster through `seed`.
fn joining(
    dir: &std::path::Path,
    name: &str,
    seed: &Agent,
    consul: Option<&ConsulStandIn>,
) -> Node {
    configure(Node::joining(dir, seed), name, consul, "")
}

fn configure(node: Node, name: &str, consul: Option<&ConsulStandIn>, extra: &str) -> Node {
    node.with_consul_schema();
    let mut text = format!("[consul]\nnode_name = \"{name}\"\n{extra}\n");
    if let Some(c) = consul {
        text.push_str(&format!(
            "[consul.client]\naddr = \"{}\"\npoll_interval = \"100ms\"\n",
            c.addr
        ));
    }
    node.append_config(&text);
    node
}

/// `(node, id, tags)` of every catalog entry of `service`.
fn catalog(agent: &Agent, service: &str) -> Vec<(String, String, Vec<String>)> {
    get_json(agent, &format!("/v1/catalog/service/{service}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["Node"].as_str().unwrap().to_string(),
                e["ServiceID"].as_str().unwrap().to_string(),
                e["ServiceTags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// `(node, service id, aggregated status)` of `health/service/:name`.
fn health(agent: &Agent, service: &str) -> Vec<(String, String, String)> {
    get_json(agent, &format!("/v1/health/service/{service}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let worst = e["Checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| match c["Status"].as_str().unwrap() {
                    "passing" => 0,
                    "warning" => 1,
                    _ => 2,
                })
                .max()
                .unwrap_or(0);
            (
                e["Node"]["Node"].as_str().unwrap().to_string(),
                e["Service"]["ID"].as_str().unwrap().to_string(),
                ["passing", "warning", "critical"][worst].to_string(),
            )
        })
        .collect()
}

fn sql(node: &Node, agent: &Agent, q: &str) -> String {
    node.query(agent, q)
}

#[test]
fn the_bridge_mirrors_services_and_checks_and_writes_only_changes() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-1", service_json("web-1", "web", &["v1"], 8080));
    consul.set_check(
        "service:web-1",
        check_json("service:web-1", "web-1", "passing", "ok"),
    );
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "host-a", Some(&consul), "");
    let agent = node.start();
    let want = vec![(
        "host-a".to_string(),
        "web-1".to_string(),
        vec!["v1".to_string()],
    )];
    await_some(Duration::from_secs(10), "web-1 in the catalog", || {
        (catalog(&agent, "web") == want).then_some(())
    });
    assert_eq!(health(&agent, "web")[0].2, "passing");

    // A change of tags and a second instance.
    consul.set_service(
        "web-1",
        service_json("web-1", "web", &["v2", "canary"], 8080),
    );
    consul.set_service("web-2", service_json("web-2", "web", &[], 8081));
    await_some(
        Duration::from_secs(10),
        "tags changed and web-2 added",
        || {
            let c = catalog(&agent, "web");
            (c.len() == 2 && c[0].2 == vec!["v2", "canary"]).then_some(())
        },
    );

    // A status change is written; an output-only change is not.
    let versions = |n: &Node| sql(n, &agent, "SELECT count(*) FROM __corro_versions;");
    consul.set_check(
        "service:web-1",
        check_json("service:web-1", "web-1", "critical", "down"),
    );
    await_some(Duration::from_secs(10), "check critical", || {
        (health(&agent, "web")[0].2 == "critical").then_some(())
    });
    let before = versions(&node);
    let polled = consul.requests();
    consul.set_check(
        "service:web-1",
        check_json(
            "service:web-1",
            "web-1",
            "critical",
            "still down, new output",
        ),
    );
    await_some(Duration::from_secs(10), "three more polls", || {
        (consul.requests() >= polled + 6).then_some(())
    });
    assert_eq!(
        versions(&node),
        before,
        "an output-only change wrote a version"
    );
    assert_eq!(
        sql(
            &node,
            &agent,
            "SELECT output FROM consul_checks WHERE id = 'service:web-1';"
        )
        .trim(),
        "down"
    );

    // Removal deletes the rows; rows with a source are never touched.
    node.exec(
        &agent,
        "INSERT INTO consul_services (node, id, name, source) VALUES ('host-a', 'native-1', 'native', 'corrosion')",
    );
    consul.remove_service("web-2");
    consul.remove_check("service:web-1");
    await_some(Duration::from_secs(10), "web-2 and the check gone", || {
        (catalog(&agent, "web").len() == 1
            && sql(&node, &agent, "SELECT count(*) FROM consul_checks;").trim() == "0")
            .then_some(())
    });
    assert_eq!(
        catalog(&agent, "native").len(),
        1,
        "a row with a source was touched"
    );
}

#[test]
fn a_failing_consul_keeps_the_last_state_and_is_logged_once_per_kind() {
    let consul = ConsulStandIn::start();
    consul.set_service("db-1", service_json("db-1", "db", &[], 5432));
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "host-a", Some(&consul), "");
    node.append_config(&format!(
        "[consul.client]\naddr = \"{}\"\npoll_interval = \"100ms\"\nmax_body_bytes = 4096\ntoken = \"right\"\n",
        consul.addr
    ));
    let text = std::fs::read_to_string(&node.config).unwrap();
    // The second [consul.client] replaces the first (TOML forbids two).
    let first = text.find("[consul.client]").unwrap();
    let second = text.rfind("[consul.client]").unwrap();
    let end = text[first..second]
        .find("\n\n")
        .map_or(second, |i| first + i);
    std::fs::write(&node.config, format!("{}{}", &text[..first], &text[end..])).unwrap();
    consul.require_token(Some("right"));
    let agent = node.start();
    await_some(Duration::from_secs(10), "db-1 mirrored", || {
        (catalog(&agent, "db").len() == 1).then_some(())
    });
    for (failure, kind) in [
        (Some(Failure::Status(500)), "HTTP 500"),
        (Some(Failure::Malformed), "not the documented JSON"),
        (Some(Failure::Huge(10_000)), "byte limit"),
    ] {
        consul.set_failure(failure);
        let seen = consul.requests();
        await_some(Duration::from_secs(20), "several failed polls", || {
            (consul.requests() >= seen + 2).then_some(())
        });
        agent.expect(kind);
        assert_eq!(
            catalog(&agent, "db").len(),
            1,
            "{kind}: the last state must stay"
        );
    }
    consul.set_failure(None);
    consul.require_token(Some("another"));
    agent.expect("403");
    consul.require_token(Some("right"));
    consul.set_down(true);
    agent.expect("consul unreachable");
    assert_eq!(catalog(&agent, "db").len(), 1);
    consul.set_service("db-2", service_json("db-2", "db", &[], 5433));
    consul.set_down(false);
    agent.expect("consul answers again");
    await_some(
        Duration::from_secs(40),
        "db-2 mirrored after consul came back",
        || (catalog(&agent, "db").len() == 2).then_some(()),
    );
    // Each failure was logged once, not once per poll.
    let lines = agent.seen.borrow();
    let unreachable = lines
        .iter()
        .filter(|l| l.contains("consul unreachable"))
        .count();
    let malformed = lines
        .iter()
        .filter(|l| l.contains("not the documented JSON"))
        .count();
    assert_eq!((unreachable, malformed), (1, 1), "repeated logs");
}

#[test]
fn a_mass_delete_waits_for_three_identical_answers() {
    let consul = ConsulStandIn::start();
    for i in 0..4 {
        consul.set_service(
            &format!("api-{i}"),
            service_json(&format!("api-{i}"), "api", &[], 9000 + i),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "host-a", Some(&consul), "");
    let agent = node.start();
    await_some(Duration::from_secs(10), "4 instances", || {
        (catalog(&agent, "api").len() == 4).then_some(())
    });
    consul.clear();
    let seen = consul.requests();
    // Two polls = one answer (services + checks); after the first and
    // second empty answer nothing is deleted.
    await_some(Duration::from_secs(10), "two empty answers", || {
        (consul.requests() >= seen + 3).then_some(())
    });
    let after_two = catalog(&agent, "api").len();
    agent.expect("would delete more than half");
    await_some(Duration::from_secs(10), "deleted after the third", || {
        catalog(&agent, "api").is_empty().then_some(())
    });
    assert_eq!(after_two, 4, "deleted before three identical answers");
}

#[test]
fn the_bridge_talks_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let node = discovery_node(&dir.path().join("n"), "host-a", None, "");
    let run = |args: &[&str]| {
        let out = node.cli(args);
        assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
    };
    let c = certs.to_str().unwrap();
    run(&["tls", "ca", "generate", "--output-dir", c]);
    let ca_cert = certs.join("ca_cert.pem");
    let ca_key = certs.join("ca_key.pem");
    run(&[
        "tls",
        "server",
        "generate",
        "127.0.0.1",
        "--ca-cert",
        ca_cert.to_str().unwrap(),
        "--ca-key",
        ca_key.to_str().unwrap(),
        "--output-dir",
        c,
    ]);
    run(&[
        "tls",
        "client",
        "generate",
        "--ca-cert",
        ca_cert.to_str().unwrap(),
        "--ca-key",
        ca_key.to_str().unwrap(),
        "--output-dir",
        c,
    ]);
    let consul = ConsulStandIn::start_tls(StandInTls {
        cert: &certs.join("server_cert.pem"),
        key: &certs.join("server_key.pem"),
        client_ca: Some(&ca_cert),
    });
    consul.set_service("tls-1", service_json("tls-1", "secure", &[], 443));
    node.append_config(&format!(
        "[consul.client]\naddr = \"{}\"\npoll_interval = \"100ms\"\n[consul.client.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        consul.addr,
        ca_cert.display(),
        certs.join("client_cert.pem").display(),
        certs.join("client_key.pem").display(),
    ));
    let agent = node.start();
    await_some(Duration::from_secs(10), "mirrored over mutual TLS", || {
        (catalog(&agent, "secure").len() == 1).then_some(())
    });
}

#[test]
fn an_in_process_write_reaches_a_peer_and_nodes_know_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let a_node = discovery_node(&dir.path().join("a"), "node-a", None, "");
    let a = a_node.start();
    let b_node = joining(&dir.path().join("b"), "node-b", &a, None);
    let b = b_node.start();
    // Each agent's node row is written in-process (no HTTP handler): it
    // reaching the other agent shows the store broadcasts every commit.
    for agent in [&a, &b] {
        await_some(Duration::from_secs(10), "both node rows everywhere", || {
            let nodes: Vec<String> = get_json(agent, "/v1/catalog/nodes")
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["Node"].as_str().unwrap().to_string())
                .collect();
            (nodes == ["node-a", "node-b"]).then_some(())
        });
    }
    let members = get_json(&a, "/v1/agent/members");
    let names: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);
}

#[test]
fn two_live_agents_with_one_node_name_hold_the_newer_bridge() {
    let older_consul = ConsulStandIn::start();
    older_consul.set_service("from-older", service_json("from-older", "svc", &[], 1));
    let newer_consul = ConsulStandIn::start();
    newer_consul.set_service("from-newer", service_json("from-newer", "svc", &[], 2));
    let dir = tempfile::tempdir().unwrap();
    let a_node = discovery_node(&dir.path().join("a"), "same-host", Some(&older_consul), "");
    let a = a_node.start();
    await_some(Duration::from_secs(10), "older mirrored", || {
        (catalog(&a, "svc").len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(20));
    let b_node = joining(&dir.path().join("b"), "same-host", &a, Some(&newer_consul));
    let b = b_node.start();
    a.expect("started later, claims this node name");
    b.expect("started earlier, claims this node name");
    b.expect("consul bridge held");
    let seen = newer_consul.requests();
    await_some(
        Duration::from_secs(10),
        "the newer bridge keeps polling",
        || (newer_consul.requests() >= seen + 6).then_some(()),
    );
    for agent in [&a, &b] {
        let ids: Vec<String> = catalog(agent, "svc").into_iter().map(|e| e.1).collect();
        assert_eq!(ids, ["from-older"], "the newer agent's bridge wrote");
    }
}

/// Three agents, the first mirroring `consul`; all with `extra` in
/// `[consul]`. Returns nodes and agents, A first.
fn three(dir: &std::path::Path, consul: &ConsulStandIn, extra: &str) -> (Vec<Node>, Vec<Agent>) {
    let a_node = discovery_node(&dir.join("a"), "host-a", Some(consul), extra);
    let a = a_node.start();
    let mut nodes = vec![a_node];
    let mut agents = vec![a];
    for name in ["host-b", "host-c"] {
        let n = configure(
            Node::joining(&dir.join(name), &agents[0]),
            name,
            None,
            extra,
        );
        agents.push(n.start());
        nodes.push(n);
    }
    (nodes, agents)
}

#[test]
fn a_killed_node_turns_critical_everywhere_and_comes_back() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-a", service_json("web-a", "web", &[], 80));
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut agents) = three(dir.path(), &consul, "");
    for agent in &agents {
        await_some(Duration::from_secs(15), "web-a passing everywhere", || {
            (health(agent, "web") == [("host-a".into(), "web-a".into(), "passing".into())])
                .then_some(())
        });
    }
    let killed = Instant::now();
    let mut a = agents.remove(0);
    a.child.kill().unwrap();
    let _ = a.child.wait();
    for agent in &agents {
        await_some(
            Duration::from_secs(15),
            "web-a critical on the others",
            || (health(agent, "web")[0].2 == "critical").then_some(()),
        );
        let passing = get_json(agent, "/v1/health/service/web?passing");
        assert_eq!(passing, serde_json::json!([]), "?passing must drop it");
        let checks = get_json(agent, "/v1/health/node/host-a");
        assert_eq!(checks[0]["CheckID"], "serfHealth");
        assert_eq!(checks[0]["Status"], "critical");
    }
    println!(
        "critical on both others {:?} after kill -9",
        killed.elapsed()
    );
    // The rows stay: nobody deleted them.
    assert_eq!(catalog(&agents[0], "web").len(), 1);
    let a = nodes[0].start();
    for agent in agents.iter().chain([&a]) {
        await_some(Duration::from_secs(15), "web-a passing again", || {
            (health(agent, "web")[0].2 == "passing").then_some(())
        });
    }
}

/// Push-pull membership: an agent that joins after a node died learns, in
/// its first sync round and before the rows naming the node arrive, that
/// the node is down. Every answer it gives names the dead node's instance
/// as critical (or not at all); before, it took an actor it had never
/// heard of for alive during its first 5 s (the settling time) and
/// answered the dead instance as passing.
#[test]
fn a_joining_agent_knows_from_its_first_round_that_a_dead_node_is_down() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-a", service_json("web-a", "web", &[], 80));
    let dir = tempfile::tempdir().unwrap();
    let (_nodes, mut agents) = three(dir.path(), &consul, "");
    for agent in &agents {
        await_some(Duration::from_secs(15), "web-a passing everywhere", || {
            (health(agent, "web") == [("host-a".into(), "web-a".into(), "passing".into())])
                .then_some(())
        });
    }
    let mut a = agents.remove(0);
    a.child.kill().unwrap();
    let _ = a.child.wait();
    for agent in &agents {
        await_some(
            Duration::from_secs(15),
            "web-a critical on the others",
            || (health(agent, "web")[0].2 == "critical").then_some(()),
        );
    }
    let d_node = joining(&dir.path().join("d"), "host-d", &agents[0], None);
    let d = d_node.start();
    let started = Instant::now();
    // Watched from its start until past the settling time.
    let mut listed = None;
    while started.elapsed() < Duration::from_secs(7) {
        let h = health(&d, "web");
        if !h.iter().all(|(_, _, status)| status == "critical") {
            std::thread::sleep(Duration::from_millis(200));
            let others: Vec<String> = agents.iter().map(|a| a.drain().join("\n")).collect();
            panic!(
                "the new agent answered {h:?} {:?} after its start; its log:\n{}\nthe others' logs:\n{}",
                started.elapsed(),
                d.drain().join("\n"),
                others.join("\n----\n")
            );
        }
        if !h.is_empty() && listed.is_none() {
            listed = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let listed = listed.expect("the new agent never listed web-a");
    d.drain();
    let applied = d.saw("applied a peer's member view");
    assert!(applied.is_some(), "no member view applied");
    println!("web-a listed as critical {listed:?} after the new agent's start");
}

#[test]
fn a_node_down_longer_than_reap_after_is_reaped_and_republishes_on_return() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-a", service_json("web-a", "web", &[], 80));
    let dir = tempfile::tempdir().unwrap();
    let (nodes, mut agents) = three(dir.path(), &consul, "reap_after = \"2s\"");
    await_some(Duration::from_secs(15), "web-a on C", || {
        (catalog(&agents[2], "web").len() == 1).then_some(())
    });
    let mut a = agents.remove(0);
    a.child.kill().unwrap();
    let _ = a.child.wait();
    for agent in &agents {
        await_some(Duration::from_secs(30), "host-a reaped", || {
            let nodes = get_json(agent, "/v1/catalog/nodes");
            let names: Vec<&str> = nodes
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["Node"].as_str().unwrap())
                .collect();
            (names == ["host-b", "host-c"] && catalog(agent, "web").is_empty()).then_some(())
        });
    }
    let _a = nodes[0].start();
    for agent in &agents {
        await_some(Duration::from_secs(15), "host-a republished", || {
            (catalog(agent, "web").len() == 1).then_some(())
        });
    }
}

fn index_of(r: &reqwest::blocking::Response) -> u64 {
    r.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn blocking_queries_wake_only_for_their_own_answer_and_the_index_survives_restarts() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-1", service_json("web-1", "web", &["v1"], 80));
    consul.set_service("db-1", service_json("db-1", "db", &[], 5432));
    consul.set_check(
        "service:web-1",
        check_json("service:web-1", "web-1", "passing", "ok"),
    );
    consul.set_check(
        "service:db-1",
        check_json("service:db-1", "db-1", "passing", "ok"),
    );
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "host-a", Some(&consul), "");
    let agent = node.start();
    await_some(
        Duration::from_secs(10),
        "both mirrored, the node row in",
        || {
            let nodes = get_json(&agent, "/v1/catalog/nodes");
            (catalog(&agent, "web").len() == 1
                && catalog(&agent, "db").len() == 1
                && nodes.as_array().is_some_and(|n| n.len() == 1))
            .then_some(())
        },
    );
    let first = get(&agent, "/v1/health/service/web");
    assert_eq!(first.headers()["x-consul-knownleader"], "true");
    assert_eq!(first.headers()["x-consul-lastcontact"], "0");
    let index = index_of(&first);
    let body: Value = first.json().unwrap();

    // Unrelated changes (another service's check, this check's output)
    // never wake the query: it returns at its deadline, unchanged.
    let url = agent.url(&format!("/v1/health/service/web?index={index}&wait=3s"));
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let r = reqwest::blocking::get(url).unwrap();
        (t.elapsed(), r.json::<Value>().unwrap())
    });
    std::thread::sleep(Duration::from_millis(300));
    consul.set_check(
        "service:db-1",
        check_json("service:db-1", "db-1", "critical", "down"),
    );
    consul.set_check(
        "service:web-1",
        check_json("service:web-1", "web-1", "passing", "other output"),
    );
    await_some(Duration::from_secs(10), "db critical", || {
        (health(&agent, "db")[0].2 == "critical").then_some(())
    });
    let (took, same) = waiter.join().unwrap();
    assert_eq!(same, body, "an unrelated change altered the answer");
    assert!(
        took >= Duration::from_secs(3),
        "returned early after {took:?}"
    );

    // A change to its own answer wakes it.
    let url = agent.url(&format!("/v1/health/service/web?index={index}&wait=60s"));
    let waiter = std::thread::spawn(move || {
        let r = reqwest::blocking::get(url).unwrap();
        let i = index_of(&r);
        (i, r.json::<Value>().unwrap())
    });
    std::thread::sleep(Duration::from_millis(300));
    consul.set_service("web-1", service_json("web-1", "web", &["v2"], 80));
    let (new_index, changed) = waiter.join().unwrap();
    assert_eq!(changed[0]["Service"]["Tags"], serde_json::json!(["v2"]));
    assert!(new_index > index);

    // A stale index answers at once.
    let r = get(
        &agent,
        &format!("/v1/health/service/web?index={}&wait=60s", index - 1),
    );
    assert_eq!(index_of(&r), new_index);

    // The index never goes back across a restart.
    let before = index_of(&get(&agent, "/v1/catalog/nodes"));
    agent.stop();
    let agent = node.start();
    let after = index_of(&get(&agent, "/v1/catalog/nodes"));
    assert!(after > before, "{after} > {before}");
}

#[test]
fn consul_routes_refuse_bad_input_with_consuls_codes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "authz.bearer-token = \"s3cret\"");
    node.with_consul_schema();
    node.append_config("[consul]\nnode_name = \"host-a\"\n");
    let agent = node.start();
    let client = reqwest::blocking::Client::new();
    let status = |path: &str, token: Option<(&str, &str)>| {
        let mut r = client.get(agent.url(path));
        if let Some((h, v)) = token {
            r = r.header(h, v);
        }
        r.send().unwrap().status().as_u16()
    };
    let ok = Some(("X-Consul-Token", "s3cret"));
    assert_eq!(status("/v1/catalog/nodes", None), 403);
    assert_eq!(
        status("/v1/catalog/nodes", Some(("X-Consul-Token", "wrong"))),
        403
    );
    assert_eq!(status("/v1/catalog/nodes", ok), 200);
    assert_eq!(
        status(
            "/v1/catalog/nodes",
            Some(("Authorization", "Bearer s3cret"))
        ),
        200
    );
    assert_eq!(status("/v1/catalog/nodes?token=s3cret", None), 200);
    assert_eq!(
        status("/v1/members", Some(("X-Consul-Token", "s3cret"))),
        401,
        "our own routes keep the bearer scheme"
    );
    for (path, want) in [
        ("/v1/catalog/nope", 404),
        ("/v1/health/service/web?wait=10", 400),
        ("/v1/health/service/web?index=abc", 400),
        ("/v1/health/service/web?passing=maybe", 400),
        ("/v1/health/state/bogus", 400),
        ("/v1/catalog/nodes?dc=dc2", 500),
        ("/v1/catalog/nodes?dc=dc1", 200),
        (
            "/v1/health/service/web?filter=Service.Nope%20%3D%3D%20x",
            400,
        ),
        (
            "/v1/health/service/web?filter=Service.Service%20%3D%3D",
            400,
        ),
        ("/v1/health/service/web?near=other-node", 400),
        (
            "/v1/health/service/web?near=_agent&stale&cached&consistent",
            200,
        ),
        ("/v1/catalog/node/unknown", 200),
    ] {
        assert_eq!(status(path, ok), want, "{path}");
    }
    let r = client
        .get(agent.url("/v1/health/service/web?filter=Service.Nope%20%3D%3D%20x"))
        .header("X-Consul-Token", "s3cret")
        .send()
        .unwrap();
    assert!(
        r.text().unwrap().contains("Nope"),
        "the message names the selector"
    );
    let r = client
        .get(agent.url("/v1/catalog/node/unknown"))
        .header("X-Consul-Token", "s3cret")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "null");
}

#[test]
fn query_parameters_filter_as_consul_does() {
    let consul = ConsulStandIn::start();
    consul.set_service(
        "web-1",
        service_json("web-1", "web", &["v1", "primary"], 80),
    );
    consul.set_service("web-2", service_json("web-2", "web", &["v1"], 81));
    consul.set_service("web-3", service_json("web-3", "web", &["v2"], 82));
    consul.set_check("c2", check_json("c2", "web-2", "warning", ""));
    consul.set_check("c3", check_json("c3", "web-3", "critical", ""));
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(
        dir.path(),
        "host-a",
        Some(&consul),
        "[consul.node_meta]\nrack = \"r1\"\n",
    );
    let agent = node.start();
    await_some(Duration::from_secs(10), "3 instances", || {
        (catalog(&agent, "web").len() == 3).then_some(())
    });
    let ids = |path: &str| -> Vec<String> {
        get_json(&agent, path)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["Service"]["ID"]
                    .as_str()
                    .or(e["ServiceID"].as_str())
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(ids("/v1/health/service/web?passing"), ["web-1"]);
    assert_eq!(
        ids("/v1/health/service/web?passing=false"),
        ["web-1", "web-2", "web-3"]
    );
    assert_eq!(ids("/v1/health/service/web?tag=v1"), ["web-1", "web-2"]);
    assert_eq!(ids("/v1/health/service/web?tag=v1&tag=primary"), ["web-1"]);
    assert_eq!(ids("/v1/catalog/service/web?tag=v2"), ["web-3"]);
    assert_eq!(ids("/v1/health/service/web?node-meta=rack:r1").len(), 3);
    assert!(ids("/v1/health/service/web?node-meta=rack:r2").is_empty());
    assert_eq!(
        ids("/v1/health/service/web?filter=%22primary%22%20in%20Service.Tags"),
        ["web-1"]
    );
    assert_eq!(
        ids("/v1/health/service/web?filter=Checks.Status%20%3D%3D%20critical"),
        ["web-3"]
    );
    let services = get_json(&agent, "/v1/catalog/services");
    assert_eq!(services["web"], serde_json::json!(["primary", "v1", "v2"]));
    // Answers are cached: the state in the path must still tell them apart.
    assert_eq!(
        get_json(&agent, "/v1/health/state/any")
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let warning = get_json(&agent, "/v1/health/state/warning");
    assert_eq!(warning.as_array().unwrap().len(), 1);
    assert_eq!(warning[0]["ServiceTags"], serde_json::json!(["v1"]));
    let node_view = get_json(&agent, "/v1/catalog/node/host-a");
    assert_eq!(node_view["Node"]["Meta"]["rack"], "r1");
    assert_eq!(node_view["Services"].as_object().unwrap().len(), 3);
}

#[test]
fn consul_sync_runs_the_bridge_as_a_separate_process() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-1", service_json("web-1", "web", &["v1"], 80));
    consul.set_check(
        "service:web-1",
        check_json("service:web-1", "web-1", "warning", "slow"),
    );
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "host-a", None, "");
    let agent = node.start();
    // The sync process reads the same config plus [consul.client], and
    // reaches the agent through its HTTP API.
    let text = std::fs::read_to_string(&node.config).unwrap().replace(
        "[api]\naddr = \"127.0.0.1:0\"",
        &format!("[api]\naddr = \"{}\"", agent.api),
    );
    let sync_config = dir.path().join("sync.toml");
    std::fs::write(
        &sync_config,
        format!(
            "{text}\n[consul.client]\naddr = \"{}\"\npoll_interval = \"100ms\"\n",
            consul.addr
        ),
    )
    .unwrap();
    let mut sync = std::process::Command::new(&*common::BIN)
        .args(["-c", sync_config.to_str().unwrap(), "consul", "sync"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    await_some(Duration::from_secs(10), "mirrored by consul sync", || {
        (health(&agent, "web") == [("host-a".into(), "web-1".into(), "warning".into())])
            .then_some(())
    });
    consul.remove_service("web-1");
    consul.remove_check("service:web-1");
    await_some(Duration::from_secs(10), "removed by consul sync", || {
        catalog(&agent, "web").is_empty().then_some(())
    });
    let _ = sync.kill();
    let _ = sync.wait();
}

#[test]
fn the_consul_listener_serves_only_consul_routes_and_held_queries_end_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let node = discovery_node(
        dir.path(),
        "host-a",
        None,
        &format!("http_addr = \"127.0.0.1:{port}\""),
    );
    node.enable_metrics();
    let agent = node.start();
    assert!(
        agent
            .saw("Starting Consul-compatible API server on tcp/")
            .is_some()
    );
    let base = format!("http://127.0.0.1:{port}");
    let r = reqwest::blocking::get(format!("{base}/v1/catalog/nodes")).unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-consul-index"));
    assert_eq!(
        reqwest::blocking::get(format!("{base}/v1/health"))
            .unwrap()
            .status(),
        404
    );
    // A query held for a minute ends as soon as the agent is told to stop
    // (asked once this node's row is in, so the node list stays put).
    await_some(Duration::from_secs(10), "this node's row", || {
        let nodes: Value = reqwest::blocking::get(format!("{base}/v1/catalog/nodes"))
            .ok()?
            .json()
            .ok()?;
        (nodes.as_array()?.len() == 1).then_some(())
    });
    let idx = index_of(&reqwest::blocking::get(format!("{base}/v1/catalog/nodes")).unwrap());
    let url = format!("{base}/v1/catalog/nodes?index={idx}&wait=60s");
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let status = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap()
            .get(url)
            .send()
            .map(|r| r.status().as_u16());
        (t.elapsed(), status)
    });
    await_some(Duration::from_secs(10), "the query held", || {
        (agent.counter("corro_consul_blocking_queries") >= 1.0).then_some(())
    });
    let stopping = Instant::now();
    agent.stop();
    let stopped = stopping.elapsed();
    let (held, status) = waiter.join().unwrap();
    assert!(
        stopped < Duration::from_secs(10),
        "shutdown took {stopped:?}"
    );
    assert!(
        held < Duration::from_secs(30),
        "the held query lasted {held:?}"
    );
    assert_eq!(status.unwrap(), 200);
}

#[test]
fn names_and_tags_match_in_any_case_and_answers_keep_the_registered_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "Host-A", None, "");
    let agent = node.start();
    node.exec(
        &agent,
        "INSERT INTO consul_services (node, id, name, tags, port, source) VALUES ('Host-A', 'web-1', 'Web', '[\"Primary\"]', 80, 'test')",
    );
    await_some(Duration::from_secs(10), "Web in the catalog", || {
        (catalog(&agent, "web").len() == 1).then_some(())
    });
    for spelling in ["web", "WEB", "Web", "wEb"] {
        let e = catalog(&agent, spelling);
        assert_eq!(
            e,
            vec![(
                "Host-A".to_string(),
                "web-1".to_string(),
                vec!["Primary".to_string()]
            )],
            "{spelling}"
        );
        assert_eq!(health(&agent, spelling).len(), 1, "{spelling}");
    }
    for tag in ["primary", "PRIMARY", "Primary"] {
        let list = get_json(&agent, &format!("/v1/health/service/web?tag={tag}"));
        assert_eq!(list.as_array().unwrap().len(), 1, "{tag}");
        assert_eq!(list[0]["Service"]["Service"], "Web");
    }
    let none = get_json(&agent, "/v1/catalog/service/web?tag=secondary");
    assert_eq!(none.as_array().unwrap().len(), 0);
    let services = get_json(&agent, "/v1/catalog/services");
    assert_eq!(services["Web"], serde_json::json!(["Primary"]));
    let n = get_json(&agent, "/v1/catalog/node/host-a");
    assert_eq!(n["Node"]["Node"], "Host-A");
    assert!(n["Services"]["web-1"].is_object());
    let checks = get_json(&agent, "/v1/health/node/HOST-A");
    assert_eq!(checks[0]["CheckID"], "serfHealth");
}

#[test]
fn a_blocking_query_with_another_agents_larger_index_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "host-a", None, "");
    let agent = node.start();
    // Its own node row is in (on a loaded machine that can follow the
    // start by a moment): the agent's index has moved past the floor.
    await_some(Duration::from_secs(15), "host-a listed", || {
        let nodes = get_json(&agent, "/v1/catalog/nodes");
        (nodes.as_array()?.len() == 1).then_some(())
    });
    let r = get(&agent, "/v1/catalog/services");
    let current = index_of(&r);
    // An index this agent never handed out: nothing to wait for. The
    // client gives up after 10 s, well inside the 60 s wait asked for.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for path in [
        "/v1/catalog/services",
        "/v1/health/service/web",
        "/v1/catalog/nodes",
    ] {
        let r = client
            .get(agent.url(&format!("{path}?index={}&wait=60s", current + 1_000_000)))
            .send()
            .unwrap_or_else(|e| panic!("{path} held a larger index: {e}"));
        assert_eq!(r.status(), 200);
        // The answer carries this agent's (smaller) index: the client resets.
        assert!(index_of(&r) <= current + 1, "{path}");
    }
    // Larger than this answer's index though not than the agent's: handed
    // out for another answer or by another agent; answered at once too.
    let r = get(&agent, "/v1/health/service/nothing");
    assert!(index_of(&r) < current, "{} {current}", index_of(&r));
    let r = client
        .get(agent.url(&format!(
            "/v1/health/service/nothing?index={current}&wait=60s"
        )))
        .send()
        .expect("held an index larger than the answer's");
    assert_eq!(r.status(), 200);
    // The current index itself still blocks (until the short wait ends).
    let t = Instant::now();
    let r = client
        .get(agent.url(&format!("/v1/catalog/nodes?index={current}&wait=1s")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn create_index_stays_and_modify_index_moves_only_with_its_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "host-a", None, "");
    node.enable_metrics();
    let agent = node.start();
    let add = |id: &str, name: &str, port: u16| {
        node.exec(
            &agent,
            &format!(
                "INSERT INTO consul_services (node, id, name, port, source) VALUES ('host-a', '{id}', '{name}', {port}, 'test') ON CONFLICT (node, id) DO UPDATE SET port = excluded.port"
            ),
        );
    };
    let indexes = |name: &str| -> (u64, u64) {
        let e = get_json(&agent, &format!("/v1/catalog/service/{name}"));
        (
            e[0]["CreateIndex"].as_u64().unwrap(),
            e[0]["ModifyIndex"].as_u64().unwrap(),
        )
    };
    add("a-1", "a", 80);
    add("b-1", "b", 80);
    await_some(Duration::from_secs(10), "a and b", || {
        (catalog(&agent, "a").len() == 1 && catalog(&agent, "b").len() == 1).then_some(())
    });
    let (a_create, a_modify) = indexes("a");
    assert_eq!(a_create, a_modify);
    // b changes: a's indexes stay.
    add("b-1", "b", 81);
    await_some(Duration::from_secs(10), "b's new port", || {
        (get_json(&agent, "/v1/catalog/service/b")[0]["ServicePort"] == 81).then_some(())
    });
    assert_eq!(indexes("a"), (a_create, a_modify));
    // Rewriting a with the same content changes nothing.
    add("a-1", "a", 80);
    assert_eq!(indexes("a"), (a_create, a_modify));
    // a changes: its ModifyIndex moves, its CreateIndex stays.
    add("a-1", "a", 8080);
    await_some(Duration::from_secs(10), "a's new port", || {
        (get_json(&agent, "/v1/catalog/service/a")[0]["ServicePort"] == 8080).then_some(())
    });
    let (c, m) = indexes("a");
    assert_eq!(c, a_create);
    assert!(m > a_modify, "{m} <= {a_modify}");

    // A held query whose client goes away is no longer counted.
    let idx = index_of(&get(&agent, "/v1/catalog/service/a"));
    let short = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(
        short
            .get(agent.url(&format!("/v1/catalog/service/a?index={idx}&wait=60s")))
            .send()
            .is_err()
    );
    await_some(
        Duration::from_secs(10),
        "the held-query gauge back to 0",
        || (agent.gauge("corro_consul_blocking_queries") == 0.0).then_some(()),
    );
}

#[test]
fn a_change_right_after_a_blocking_query_starts_wakes_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = discovery_node(dir.path(), "host-a", None, "");
    let agent = node.start();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    // Each round: a query held at the current index, and a write issued at
    // the same moment. The query must see the write (not wait its 30 s).
    for round in 0..20 {
        let idx = index_of(&get(&agent, "/v1/catalog/service/race"));
        let url = agent.url(&format!("/v1/catalog/service/race?index={idx}&wait=30s"));
        let c = client.clone();
        let waiter = std::thread::spawn(move || c.get(url).send());
        node.exec(
            &agent,
            &format!(
                "INSERT INTO consul_services (node, id, name, port, source) VALUES ('host-a', 'race-{round}', 'race', 80, 'test')"
            ),
        );
        let r = waiter
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: the write did not wake the query: {e}"));
        let list: Value = r.json().unwrap();
        assert_eq!(list.as_array().unwrap().len(), round + 1, "round {round}");
    }
}
