//! Subscriptions through the real agent's HTTP API: the reference's event
//! shapes and `corro-query-id` header, resubscribing with `from`, errors,
//! the update feed, a restart, and a change written on node B arriving on a
//! subscription held on node A.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::io::BufRead;
use std::sync::mpsc;
use std::time::Duration;

use common::{Agent, Node};

/// An NDJSON stream read line by line on a thread.
struct Stream {
    id: Option<String>,
    status: u16,
    lines: mpsc::Receiver<String>,
}

impl Stream {
    fn open(req: reqwest::blocking::RequestBuilder) -> Stream {
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let id = resp
            .headers()
            .get("corro-query-id")
            .map(|v| v.to_str().unwrap().to_string());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(resp).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Stream { id, status, lines }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .expect("a line within 15 s")
    }

    /// The next line with a time-dependent eoq reduced to its change id.
    fn next_plain(&self) -> String {
        let l = self.next();
        if l.starts_with("{\"eoq\"") {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            format!("eoq {}", v["eoq"]["change_id"])
        } else {
            l
        }
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
}

fn subscribe(agent: &Agent, body: serde_json::Value) -> Stream {
    Stream::open(client().post(agent.url("/v1/subscriptions")).json(&body))
}

#[test]
fn subscription_events_resume_and_errors_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent = a.start();
    a.exec(
        &agent,
        "INSERT INTO todos (id, title) VALUES ('a', 'first')",
    );
    let s = subscribe(
        &agent,
        serde_json::json!(["SELECT id, title FROM todos WHERE completed_at IS NULL", []]),
    );
    assert_eq!(s.status, 200);
    let id = s.id.clone().expect("corro-query-id header");
    assert!(uuid_like(&id), "{id}");
    assert_eq!(s.next_plain(), r#"{"columns":["id","title"]}"#);
    assert_eq!(s.next_plain(), r#"{"row":[1,["a","first"]]}"#);
    assert_eq!(s.next_plain(), "eoq 0");
    a.exec(
        &agent,
        "INSERT INTO todos (id, title) VALUES ('b', 'second')",
    );
    assert_eq!(
        s.next_plain(),
        r#"{"change":["insert",2,["b","second"],1]}"#
    );
    a.exec(&agent, "UPDATE todos SET completed_at = 1 WHERE id = 'a'");
    assert_eq!(s.next_plain(), r#"{"change":["delete",1,["a","first"],2]}"#);

    // Re-attach by id: all rows then live; or the changes after `from`.
    let again = Stream::open(client().get(agent.url(&format!("/v1/subscriptions/{id}"))));
    assert_eq!(again.next_plain(), r#"{"columns":["id","title"]}"#);
    assert_eq!(again.next_plain(), r#"{"row":[2,["b","second"]]}"#);
    assert_eq!(again.next_plain(), "eoq 2");
    let resumed = Stream::open(client().get(agent.url(&format!("/v1/subscriptions/{id}?from=1"))));
    assert_eq!(
        resumed.next_plain(),
        r#"{"change":["delete",1,["a","first"],2]}"#
    );
    a.exec(&agent, "UPDATE todos SET title = 'SECOND' WHERE id = 'b'");
    let live = r#"{"change":["update",2,["b","SECOND"],3]}"#;
    assert_eq!(s.next_plain(), live);
    assert_eq!(again.next_plain(), live);
    assert_eq!(resumed.next_plain(), live);

    // Same SQL, same id.
    let same = subscribe(
        &agent,
        serde_json::json!("SELECT id, title FROM todos WHERE completed_at IS NULL"),
    );
    assert_eq!(same.id.as_deref(), Some(id.as_str()));

    // Errors: bad queries 400, unknown ids 404, `from` ahead: an error event.
    for body in [
        serde_json::json!("SELECT count(*) FROM todos"),
        serde_json::json!("DELETE FROM todos"),
        serde_json::json!("SELECT * FROM nope"),
        serde_json::json!("SELECT nope FROM todos"),
    ] {
        let r = client()
            .post(agent.url("/v1/subscriptions"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let e: serde_json::Value = r.json().unwrap();
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let r = client()
        .get(agent.url("/v1/subscriptions/00000000-0000-0000-0000-000000000000"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let ahead = Stream::open(client().get(agent.url(&format!("/v1/subscriptions/{id}?from=99"))));
    assert!(ahead.next().contains("ahead"), "error event");
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn update_feed_and_restart_resume() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent = a.start();
    let feed = Stream::open(client().post(agent.url("/v1/updates/todos")));
    assert_eq!(feed.status, 200);
    let s = subscribe(&agent, serde_json::json!("SELECT id FROM todos"));
    let id = s.id.clone().unwrap();
    // Empty table: columns and eoq.
    assert_eq!(s.next(), r#"{"columns":["id"]}"#);
    assert_eq!(s.next_plain(), "eoq 0");
    a.exec(&agent, "INSERT INTO todos (id) VALUES ('x')");
    assert_eq!(feed.next(), r#"{"notify":["update",["x"]]}"#);
    assert_eq!(s.next(), r#"{"change":["insert",1,["x"],1]}"#);
    a.exec(&agent, "DELETE FROM todos WHERE id = 'x'");
    assert_eq!(feed.next(), r#"{"notify":["delete",["x"]]}"#);
    assert_eq!(s.next(), r#"{"change":["delete",1,["x"],2]}"#);
    let r = client().post(agent.url("/v1/updates/nope")).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Restart the agent; a write while it is down is not possible through
    // it, so write right after the restart and resume from change 1.
    drop((s, feed));
    agent.stop();
    let agent = a.start();
    a.exec(&agent, "INSERT INTO todos (id) VALUES ('y')");
    let resumed = Stream::open(client().get(agent.url(&format!("/v1/subscriptions/{id}?from=1"))));
    assert_eq!(resumed.next(), r#"{"change":["delete",1,["x"],2]}"#);
    assert_eq!(resumed.next(), r#"{"change":["insert",2,["y"],3]}"#);
}

#[test]
fn a_change_written_on_another_node_reaches_a_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent_a = a.start();
    let b = Node::joining(&dir.path().join("b"), &agent_a);
    let agent_b = b.start();
    let s = subscribe(&agent_a, serde_json::json!("SELECT id, title FROM todos"));
    assert_eq!(s.next(), r#"{"columns":["id","title"]}"#);
    assert_eq!(s.next_plain(), "eoq 0");
    b.exec(
        &agent_b,
        "INSERT INTO todos (id, title) VALUES ('from-b', 'hello')",
    );
    assert_eq!(s.next(), r#"{"change":["insert",1,["from-b","hello"],1]}"#);
    b.exec(&agent_b, "DELETE FROM todos WHERE id = 'from-b'");
    assert_eq!(s.next(), r#"{"change":["delete",1,["from-b","hello"],2]}"#);
}

/// The typed client resumes by itself: the agent restarts (same API port)
/// while a client holds a subscription; the client reconnects with
/// `from=<last change>` and the change ids it yields stay contiguous.
#[test]
fn the_rust_client_resumes_after_the_agent_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let a = Node::new(&dir.path().join("a"), "");
    a.set_api_addr(&format!("127.0.0.1:{port}"));
    let agent = a.start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = corro_client::Client::new(agent.api, None);
    let mut sub = rt
        .block_on(client.subscribe(&corro_client::Statement::Simple(
            "SELECT id FROM todos".into(),
        )))
        .unwrap();
    let next = |sub: &mut corro_client::Subscription| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .expect("an event within 30 s")
                .expect("the subscription is open")
                .expect("no error")
        })
    };
    use corro_client::QueryEvent;
    assert!(matches!(next(&mut sub), QueryEvent::Columns(_)));
    assert!(matches!(
        next(&mut sub),
        QueryEvent::EndOfQuery {
            change_id: Some(0),
            ..
        }
    ));
    a.exec(&agent, "INSERT INTO todos (id) VALUES ('one')");
    assert!(matches!(
        next(&mut sub),
        QueryEvent::Change(corro_client::ChangeKind::Insert, 1, _, 1)
    ));

    agent.stop();
    let agent = a.start();
    a.exec(&agent, "INSERT INTO todos (id) VALUES ('two')");
    a.exec(&agent, "DELETE FROM todos WHERE id = 'one'");
    let mut ids = Vec::new();
    while ids.len() < 2 {
        if let QueryEvent::Change(_, _, _, id) = next(&mut sub) {
            ids.push(id);
        }
    }
    assert_eq!(ids, vec![2, 3]);
    assert_eq!(sub.last_change(), Some(3));
}
