//! The real Consul client library `py-consul` (PyPI; `scripts/test.sh`
//! installs it) against a 3-agent cluster: catalog and health reads on
//! every agent, and a blocking `health.service` on node C that returns when
//! a check changes on node A's Consul agent (a stand-in: a real Consul
//! cannot be installed on the test machines). The expectations are in
//! `tests/py/consul_client.py`.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use common::consul::{ConsulStandIn, check_json, service_json};

#[test]
fn py_consul_reads_and_blocks_against_a_three_agent_cluster() {
    let consul = ConsulStandIn::start();
    consul.set_service(
        "web-1",
        service_json("web-1", "web", &["v1", "primary"], 8080),
    );
    consul.set_service("web-2", service_json("web-2", "web", &["v1"], 8081));
    consul.set_check(
        "service:web-1",
        check_json("service:web-1", "web-1", "passing", "ok"),
    );
    consul.set_check(
        "service:web-2",
        check_json("service:web-2", "web-2", "critical", "down"),
    );
    let dir = tempfile::tempdir().unwrap();
    let a_node = Node::new(&dir.path().join("a"), "");
    a_node.with_consul_schema();
    a_node.append_config(&format!(
        "[consul]\nnode_name = \"host-a\"\n[consul.client]\naddr = \"{}\"\npoll_interval = \"100ms\"\n",
        consul.addr
    ));
    let a = a_node.start();
    let mut others = Vec::new();
    for name in ["host-b", "host-c"] {
        let n = Node::joining(&dir.path().join(name), &a);
        n.with_consul_schema();
        n.enable_metrics();
        n.append_config(&format!("[consul]\nnode_name = \"{name}\"\n"));
        others.push((n.start(), n));
    }
    // Everything replicated everywhere before the client looks: 3 nodes'
    // serfHealth checks and the 2 service checks on every agent.
    let c = &others[1].0;
    let deadline = Instant::now() + Duration::from_secs(20);
    for agent in [&a, &others[0].0, c] {
        loop {
            let v: serde_json::Value = reqwest::blocking::get(agent.url("/v1/health/state/any"))
                .unwrap()
                .json()
                .unwrap();
            if v.as_array().map(Vec::len) == Some(5) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not replicated to {}: {v}",
                agent.api
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/consul_client.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([
            a.api.to_string(),
            others[0].0.api.to_string(),
            c.api.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        println!("py-consul: {line}");
        output.push(line.clone());
        if line.starts_with("BLOCKING") {
            // Once the client's request is held on C, change A's check.
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.counter("corro_consul_blocking_queries") < 1.0 {
                assert!(
                    Instant::now() < deadline,
                    "the blocking query never arrived"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            consul.set_check(
                "service:web-1",
                check_json("service:web-1", "web-1", "warning", "slow"),
            );
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "py-consul script failed: {output:?}");
    assert_eq!(output.last().map(String::as_str), Some("OK"));
}
