//! In-process gossip clusters over real QUIC on loopback: every node
//! receives every other node's messages exactly once (3 and 20 nodes), and
//! membership events follow join, leave and a crash.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corro_gossip::{GossipConfig, MemberEvent, Node};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Chat {
    from: usize,
    n: u32,
    text: String,
}

async fn cluster(n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = Node::bind(GossipConfig::plaintext("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        if i > 0 {
            // Everyone joins through the first node only.
            node.join(&[nodes.first().map(Node::local_addr).unwrap()]);
        }
        nodes.push(node);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, node) in nodes.iter().enumerate() {
        while node.members().len() != n - 1 {
            assert!(
                Instant::now() < deadline,
                "node {i} knows {} of {} members",
                node.members().len(),
                n - 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    nodes
}

async fn every_node_receives_every_message_once(n: usize, per_node: u32) {
    let nodes = cluster(n).await;
    let mut subs: Vec<_> = nodes
        .iter()
        .map(|node| node.subscribe::<Chat>("chat"))
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        for k in 0..per_node {
            node.broadcast(
                "chat",
                &Chat {
                    from: i,
                    n: k,
                    text: format!("hello from {i}"),
                },
            )
            .unwrap();
        }
    }
    let want = (n - 1) * per_node as usize;
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut got: BTreeMap<(usize, u32), usize> = BTreeMap::new();
        while got.values().sum::<usize>() < want {
            let (from, msg) = tokio::time::timeout(Duration::from_secs(20), sub.recv())
                .await
                .unwrap_or_else(|_| panic!("node {i} got {} of {want}", got.len()))
                .unwrap();
            assert_eq!(from, nodes[msg.from].id());
            assert_ne!(msg.from, i, "a node received its own message");
            *got.entry((msg.from, msg.n)).or_default() += 1;
        }
        // Anything more would be a duplicate.
        let extra = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await;
        assert!(extra.is_err(), "node {i} received a duplicate: {extra:?}");
        assert!(got.values().all(|c| *c == 1), "node {i}: {got:?}");
        assert_eq!(got.len(), want);
    }
    for node in nodes {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_receive_every_message_once() {
    every_node_receives_every_message_once(3, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_receive_every_message_once() {
    every_node_receives_every_message_once(20, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_another_type_is_skipped_not_fatal() {
    let nodes = cluster(2).await;
    let mut sub = nodes[1].subscribe::<Chat>("chat");
    nodes[0].broadcast("chat", &"not a Chat").unwrap();
    nodes[0]
        .broadcast(
            "chat",
            &Chat {
                from: 0,
                n: 1,
                text: "ok".into(),
            },
        )
        .unwrap();
    let (_, m) = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.text, "ok");
}

async fn await_event(
    rx: &mut tokio::sync::broadcast::Receiver<MemberEvent>,
    what: &str,
    f: impl Fn(&MemberEvent) -> bool,
) -> MemberEvent {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} event"))
            .unwrap();
        if f(&ev) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_events_follow_join_leave_and_crash() {
    let nodes = cluster(3).await;
    let mut events = nodes[0].events();
    // Join.
    let late = Node::bind(GossipConfig::plaintext("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    late.join(&[nodes[1].local_addr()]);
    let late_id = late.id();
    await_event(
        &mut events,
        "joined",
        |e| matches!(e, MemberEvent::Joined(m) if m.id == late_id),
    )
    .await;
    // Leave: announced, reported as left (not down).
    late.leave().await;
    await_event(&mut events, "left", |e| match e {
        MemberEvent::Left(m) => m.id == late_id,
        MemberEvent::Down(m) if m.id == late_id => panic!("a node that left was reported down"),
        _ => false,
    })
    .await;
    // Crash: suspect, then down.
    let mut nodes = nodes;
    let victim = nodes.pop().unwrap();
    let victim_id = victim.id();
    victim.crash().await;
    await_event(
        &mut events,
        "suspect",
        |e| matches!(e, MemberEvent::Suspect(m) if m.id == victim_id),
    )
    .await;
    await_event(
        &mut events,
        "down",
        |e| matches!(e, MemberEvent::Down(m) if m.id == victim_id),
    )
    .await;
    assert!(nodes[0].members().iter().all(|m| m.id != victim_id));
}
