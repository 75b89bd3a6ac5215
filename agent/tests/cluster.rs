//! Two agents over real QUIC on loopback, as in the reference's 2-node quick
//! start: node B bootstraps from node A; a row written on either node is
//! readable on the other within seconds, and both end with identical tables.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Node, stdout};

fn rows(node: &Node, agent: &Agent) -> String {
    let out = node.cli(&[
        "--api-addr",
        &agent.api.to_string(),
        "query",
        "SELECT * FROM todos ORDER BY id;",
    ]);
    assert!(out.status.success());
    stdout(&out)
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
    let b = Node::with(
        &dir.path().join("b"),
        &format!("bootstrap = [\"{}\"]", agent_a.gossip),
        "",
    );
    let agent_b = b.start();

    let out = a.cli(&[
        "--api-addr",
        &agent_a.api.to_string(),
        "exec",
        "--param",
        "some-id",
        "--param",
        "Write some Corrosion docs!",
        "INSERT INTO todos (id, title) VALUES (?, ?)",
    ]);
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
    a.cli(&[
        "--api-addr",
        &agent_a.api.to_string(),
        "exec",
        "UPDATE todos SET completed_at = 1",
    ]);
    b.cli(&[
        "--api-addr",
        &agent_b.api.to_string(),
        "exec",
        "UPDATE todos SET completed_at = 2",
    ]);
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
}

#[test]
fn a_node_that_was_down_catches_up_through_sync() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    // Writes before B exists: only anti-entropy can bring them over.
    let stmts: Vec<serde_json::Value> = (0..500)
        .map(|i| {
            serde_json::json!([
                "INSERT INTO todos (id, title) VALUES (?, ?)",
                [format!("id-{i:04}"), "x".repeat(100)]
            ])
        })
        .collect();
    let r = reqwest::blocking::Client::new()
        .post(agent_a.url("/v1/transactions"))
        .json(&stmts)
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let b = Node::with(
        &dir.path().join("b"),
        &format!("bootstrap = [\"{}\"]", agent_a.gossip),
        "",
    );
    let agent_b = b.start();
    let want = rows(&a, &agent_a);
    await_rows(&b, &agent_b, &want);
}
