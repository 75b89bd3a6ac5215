//! The HTTP API of a real agent process: response shapes of every route and
//! statement form, bearer-token auth, and every bad-input class answered with
//! its documented status and message while the database stays unchanged.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use common::{Agent, Node};
use reqwest::blocking::Client;
use serde_json::{Value, json};

fn post(agent: &Agent, path: &str, body: &str) -> (u16, String) {
    let r = Client::new()
        .post(agent.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn count(agent: &Agent) -> i64 {
    let (status, body) = post(agent, "/v1/queries", r#""SELECT count(*) FROM todos""#);
    assert_eq!(status, 200, "{body}");
    let row: Value = serde_json::from_str(body.lines().nth(1).unwrap()).unwrap();
    row["row"][1][0].as_i64().unwrap()
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn transactions_accept_every_statement_form() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Node::new(dir.path(), "").start();
    let (status, body) = post(
        &agent,
        "/v1/transactions",
        r#"[
            "INSERT INTO todos (id, title) VALUES ('a', 'plain')",
            ["INSERT INTO todos (id, title) VALUES (?, ?)", ["b", "positional"]],
            ["INSERT INTO todos (id, title) VALUES (:id, :title)", {":id": "c", "title": "named"}],
            {"query": "INSERT INTO todos (id, title, completed_at) VALUES (?, ?, ?)", "params": ["d", "verbose", 5]},
            {"query": "UPDATE todos SET title = :t WHERE id = :id", "named_params": {"t": "renamed", "id": "a"}}
        ]"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let affected: Vec<i64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rows_affected"].as_i64().unwrap())
        .collect();
    assert_eq!(affected, [1, 1, 1, 1, 1]);
    assert!(v["results"][0]["time"].as_f64().unwrap() >= 0.0);
    assert!(v["time"].as_f64().unwrap() > 0.0);
    assert_eq!(v["version"], 1);
    assert_eq!(v["actor_id"], agent.actor);
    let (_, body) = post(
        &agent,
        "/v1/queries",
        r#""SELECT id, title, completed_at FROM todos ORDER BY id""#,
    );
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        json!({"columns": ["id", "title", "completed_at"]})
    );
    assert_eq!(lines[1], json!({"row": [1, ["a", "renamed", null]]}));
    assert_eq!(lines[4], json!({"row": [4, ["d", "verbose", 5]]}));
    assert!(lines[5]["eoq"]["time"].as_f64().is_some());
    assert_eq!(lines.len(), 6);
    // A transaction that changes nothing issues no version.
    let (status, body) = post(
        &agent,
        "/v1/transactions",
        r#"["UPDATE todos SET title = 'x' WHERE id = 'none'"]"#,
    );
    assert_eq!(status, 200);
    assert!(
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .get("version")
            .is_none(),
        "{body}"
    );
}

#[test]
fn queries_take_parameters_and_values_keep_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Node::new(dir.path(), "").start();
    let (status, body) = post(
        &agent,
        "/v1/queries",
        r#"["SELECT ? AS i, ? AS r, ? AS t, ? AS b, ? AS n", [1, 1.5, "x", [1, 2], null]]"#,
    );
    assert_eq!(status, 200, "{body}");
    let row: Value = serde_json::from_str(body.lines().nth(1).unwrap()).unwrap();
    assert_eq!(row, json!({"row": [1, [1, 1.5, "x", [1, 2], null]]}));
    let (status, body) = post(
        &agent,
        "/v1/queries",
        r#"{"query": "SELECT :a + 1", "named_params": {"a": 41}}"#,
    );
    assert_eq!(status, 200);
    assert!(body.contains("[42]"), "{body}");
}

#[test]
fn table_stats_health_and_members() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Node::new(dir.path(), "").start();
    post(
        &agent,
        "/v1/transactions",
        r#"["INSERT INTO todos (id) VALUES ('a')", "INSERT INTO todos (id) VALUES ('b')"]"#,
    );
    let (status, body) = post(
        &agent,
        "/v1/table_stats",
        r#"{"tables": ["todos", "nope"]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"total_row_count": 2, "invalid_tables": ["nope"]})
    );
    let health: Value = Client::new()
        .get(agent.url("/v1/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["actor_id"], agent.actor);
    assert_eq!(health["head"], 1);
    let members: Value = Client::new()
        .get(agent.url("/v1/members"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(members, json!([]));
}

#[test]
fn every_route_requires_the_bearer_token_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Node::new(dir.path(), "authz.bearer-token = \"s3cret\"").start();
    let c = Client::new();
    for (method, path) in [
        ("GET", "/v1/health"),
        ("GET", "/v1/members"),
        ("POST", "/v1/queries"),
        ("POST", "/v1/transactions"),
        ("POST", "/v1/table_stats"),
    ] {
        let req = c.request(method.parse().unwrap(), agent.url(path));
        let r = req.try_clone().unwrap().send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without token");
        assert_eq!(
            error_of(&r.text().unwrap()),
            "missing or wrong bearer token"
        );
        let r = req
            .try_clone()
            .unwrap()
            .bearer_auth("wrong")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
    }
    let r = c
        .post(agent.url("/v1/transactions"))
        .bearer_auth("s3cret")
        .json(&["INSERT INTO todos (id) VALUES ('a')"])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Node::new(
        dir.path(),
        "max_statements = 3\nmax_body_bytes = 4096\nmax_changes = 5",
    )
    .start();
    let (s, _) = post(
        &agent,
        "/v1/transactions",
        r#"["INSERT INTO todos (id) VALUES ('keep')"]"#,
    );
    assert_eq!(s, 200);
    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("/v1/transactions", "not json", 400, "invalid JSON body"),
        ("/v1/transactions", r#"{"a": 1}"#, 400, "invalid JSON body"),
        ("/v1/transactions", "[]", 400, "no statements"),
        (
            "/v1/transactions",
            r#"["INSERT INTO nope VALUES (1)"]"#,
            400,
            "statement 1: no such table: nope",
        ),
        (
            "/v1/transactions",
            r#"["INSERT INTO todos (id) VALUES ('new')", "INSERT INTO todos (id) VALUES ('keep')"]"#,
            400,
            "statement 2: UNIQUE constraint failed: todos.id; nothing was written",
        ),
        (
            "/v1/transactions",
            r#"["INSERT INTO todos (id) VALUES (?)"]"#,
            400,
            "statement 1",
        ),
        (
            "/v1/transactions",
            r#"["INSERT INTO todos (id) VALUES (1); DELETE FROM todos"]"#,
            400,
            "statement 1",
        ),
        (
            "/v1/transactions",
            r#"["CREATE TABLE evil (x)"]"#,
            400,
            "not authorized",
        ),
        (
            "/v1/transactions",
            r#"["DROP TABLE todos"]"#,
            400,
            "not authorized",
        ),
        (
            "/v1/transactions",
            r#"["PRAGMA journal_mode = DELETE"]"#,
            400,
            "not authorized",
        ),
        (
            "/v1/transactions",
            r#"["ATTACH 'x.db' AS x"]"#,
            400,
            "not authorized",
        ),
        (
            "/v1/transactions",
            r#"["DELETE FROM __corro_versions"]"#,
            400,
            "not authorized",
        ),
        (
            "/v1/transactions",
            r#"["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4"]"#,
            413,
            "4 statements in one transaction, over the limit of 3",
        ),
        (
            "/v1/transactions",
            r#"["INSERT INTO todos (id) SELECT value FROM json_each('[1,2,3,4,5,6]')"]"#,
            413,
            "over the limit of 5 (api.max_changes); nothing was written",
        ),
        ("/v1/queries", "not json", 400, "invalid JSON body"),
        (
            "/v1/queries",
            r#""SELECT * FROM nope""#,
            400,
            "no such table: nope",
        ),
        ("/v1/queries", r#""DELETE FROM todos""#, 400, "read-only"),
        (
            "/v1/queries",
            r#""INSERT INTO todos (id) VALUES ('q')""#,
            400,
            "read-only",
        ),
        (
            "/v1/queries",
            r#""ATTACH 'x.db' AS x""#,
            400,
            "not authorized",
        ),
        (
            "/v1/queries",
            r#""PRAGMA query_only = 0""#,
            400,
            "not authorized",
        ),
        ("/v1/queries", r#""BEGIN""#, 400, "not authorized"),
        ("/v1/queries", r#"["SELECT ?", []]"#, 400, "parameter"),
        (
            "/v1/table_stats",
            r#"{"tabels": []}"#,
            400,
            "invalid JSON body",
        ),
    ];
    for (path, body, status, want) in cases {
        let (s, text) = post(&agent, path, body);
        assert_eq!(s, status, "{path} {body}: {text}");
        let e = error_of(&text);
        assert!(
            e.contains(want),
            "{path} {body}\n  got: {e}\n  want: {want}"
        );
    }
    let big = format!(r#"["SELECT '{}'"]"#, "x".repeat(5000));
    let (s, text) = post(&agent, "/v1/transactions", &big);
    assert_eq!(s, 413);
    assert!(error_of(&text).contains("4096 byte limit"), "{text}");
    assert_eq!(
        count(&agent),
        1,
        "nothing but the first row was ever written"
    );
    let health: Value = Client::new()
        .get(agent.url("/v1/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (health["status"].as_str(), health["head"].as_i64()),
        (Some("ok"), Some(1))
    );
}

#[test]
fn queries_stop_at_their_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Node::new(dir.path(), "").start();
    let forever = r#""WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r""#;
    let started = std::time::Instant::now();
    let (s, text) = post(&agent, "/v1/queries?timeout=0.3", forever);
    assert_eq!(s, 408, "{text}");
    assert!(
        error_of(&text).contains("query exceeded its timeout of 0.3s"),
        "{text}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let (s, text) = post(&agent, "/v1/queries?timeout=-1", r#""SELECT 1""#);
    assert_eq!(s, 400, "{text}");
    // The pooled connections are fine afterwards.
    assert_eq!(count(&agent), 0);
}

#[test]
fn large_answers_stream_every_row_then_end_of_query() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Node::new(dir.path(), "").start();
    // ~20,000 rows of ~100 bytes: well past the one-piece limit.
    let q = r#""WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 20000) SELECT i, printf('%090d', i) FROM r""#;
    let (status, body) = post(&agent, "/v1/queries", q);
    assert_eq!(status, 200);
    assert!(body.len() > 1_000_000, "{} bytes", body.len());
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20_002);
    for (n, l) in lines[1..20_001].iter().enumerate() {
        assert_eq!(l["row"][0], n as u64 + 1);
        assert_eq!(l["row"][1][0], n as u64 + 1);
    }
    assert!(lines[20_001].get("eoq").is_some());
}

#[test]
fn prometheus_metrics_are_served_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let mut text = std::fs::read_to_string(&node.config).unwrap();
    text.push_str("\n[telemetry]\nprometheus.addr = \"127.0.0.1:0\"\n");
    std::fs::write(&node.config, text).unwrap();
    let agent = node.start();
    let line = agent
        .saw("Starting Prometheus metrics on tcp/")
        .expect("metrics listener line");
    let addr = line.rsplit("tcp/").next().unwrap().trim().to_string();
    post(
        &agent,
        "/v1/transactions",
        r#"["INSERT INTO todos (id) VALUES ('a')"]"#,
    );
    post(&agent, "/v1/queries", r#""SELECT * FROM nope""#);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let body = Client::new()
            .get(format!("http://{addr}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let has = |s: &str| body.contains(s);
        if has(r#"corro_api_requests_total{route="/v1/transactions",status="200"} 1"#)
            && has(r#"corro_api_requests_total{route="/v1/queries",status="400"} 1"#)
            && has("corro_api_request_duration_seconds")
            && has("corro_store_head_version 1")
            && has("corro_store_writer_local_active 0")
            && has("corro_gossip_members 0")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics missing:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Concurrent requests are committed together (group commit) yet each keeps
/// its own answer and version; a request whose statement makes SQLite roll
/// back the whole shared transaction (`INSERT OR ROLLBACK` on a taken key)
/// or fails a constraint fails alone, and nothing of it is written.
#[test]
fn concurrent_transactions_commit_together_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    node.enable_metrics();
    let agent = node.start();
    let (status, body) = post(
        &agent,
        "/v1/transactions",
        r#"["INSERT INTO todos (id, title) VALUES ('taken', 'first')"]"#,
    );
    assert_eq!(status, 200, "{body}");
    let url = agent.url("/v1/transactions");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = Client::new();
                let mut out = Vec::new();
                for i in 0..40 {
                    let sql = match (t, i % 10) {
                        (0, 3) => "INSERT OR ROLLBACK INTO todos (id, title) VALUES ('taken', 'x')"
                            .to_string(),
                        (1, 5) => "INSERT INTO todos (id, title) VALUES ('taken', 'y')".to_string(),
                        _ => format!("INSERT INTO todos (id, title) VALUES ('t{t}-{i}', 'ok')"),
                    };
                    let r = client.post(&url).json(&json!([sql])).send().unwrap();
                    let status = r.status().as_u16();
                    out.push((sql, status, r.text().unwrap()));
                }
                out
            })
        })
        .collect();
    let mut versions = Vec::new();
    let mut refused = 0;
    for t in threads {
        for (sql, status, body) in t.join().unwrap() {
            if sql.contains("'taken'") {
                assert_eq!(status, 400, "{sql}: {body}");
                assert!(body.contains("UNIQUE"), "{body}");
                refused += 1;
            } else {
                assert_eq!(status, 200, "{sql}: {body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["results"][0]["rows_affected"], 1);
                versions.push(v["version"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(refused, 8);
    versions.sort();
    assert_eq!(
        versions,
        (2..=313).collect::<Vec<u64>>(),
        "one version each, no gaps"
    );
    assert_eq!(count(&agent), 313);
    let (_, body) = post(
        &agent,
        "/v1/queries",
        r#""SELECT title FROM todos WHERE id = 'taken'""#,
    );
    assert!(body.contains("first"), "{body}");
    // Counted: every transaction went through a group.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while agent.counter("corro_store_group_transactions_total") < 320.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "group counters never moved"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The first cell of the first row of a `/v1/queries` answer.
fn first_cell(body: &str) -> Value {
    let row: Value = serde_json::from_str(body.lines().nth(1).unwrap()).unwrap();
    row["row"][1][0].clone()
}

/// `POST /v1/queries` answers are kept until the next write: a repeated
/// query is answered from the cache (counted in the metrics) with the same
/// rows, a write ends every kept answer (readers never see a value older
/// than the last acknowledged write, checked while writes and reads race),
/// parameters are part of the key, and volatile statements are never kept.
#[test]
fn repeated_queries_are_answered_from_the_cache_until_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    node.enable_metrics();
    let agent = node.start();
    let write = |sql: &str| {
        let (status, body) = post(&agent, "/v1/transactions", &json!([sql]).to_string());
        assert_eq!(status, 200, "{body}");
    };
    write("INSERT INTO todos (id, title) VALUES ('a', 'one'), ('b', 'bee')");

    let by_id = r#"["SELECT title FROM todos WHERE id = ?", ["a"]]"#;
    let first = post(&agent, "/v1/queries", by_id);
    let second = post(&agent, "/v1/queries", by_id);
    assert_eq!((first.0, second.0), (200, 200));
    assert_eq!(first_cell(&first.1), "one");
    // The same lines but the final eoq (its time is the request's own).
    let rows = |b: &str| {
        b.lines()
            .filter(|l| !l.contains("\"eoq\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(rows(&first.1), rows(&second.1));
    assert!(second.1.lines().last().unwrap().contains("\"eoq\""));
    let other = post(
        &agent,
        "/v1/queries",
        r#"["SELECT title FROM todos WHERE id = ?", ["b"]]"#,
    );
    assert_eq!(
        first_cell(&other.1),
        "bee",
        "parameters are part of the key"
    );

    write("UPDATE todos SET title = 'two' WHERE id = 'a'");
    assert_eq!(first_cell(&post(&agent, "/v1/queries", by_id).1), "two");

    let randoms: std::collections::HashSet<String> = (0..5)
        .map(|_| first_cell(&post(&agent, "/v1/queries", r#""SELECT random()""#).1).to_string())
        .collect();
    assert!(
        randoms.len() > 1,
        "random() answered from the cache: {randoms:?}"
    );

    // Writes and reads race: every answer holds at least the value of the
    // last write acknowledged before the query was sent.
    write("INSERT INTO todos (id, title) VALUES ('n', '0')");
    let acked = std::sync::atomic::AtomicI64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let counter = r#""SELECT CAST(title AS INTEGER) FROM todos WHERE id = 'n'""#;
    let queries = agent.url("/v1/queries");
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let client = Client::new();
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || reads < 10 {
                    let floor = acked.load(std::sync::atomic::Ordering::SeqCst);
                    let r = client
                        .post(&queries)
                        .header("content-type", "application/json")
                        .body(counter)
                        .send()
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    let v = first_cell(&r.text().unwrap()).as_i64().unwrap();
                    assert!(v >= floor, "read {v} after write {floor} was acknowledged");
                    reads += 1;
                }
            });
        }
        for i in 1..=150 {
            write(&format!("UPDATE todos SET title = '{i}' WHERE id = 'n'"));
            acked.store(i, std::sync::atomic::Ordering::SeqCst);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert_eq!(first_cell(&post(&agent, "/v1/queries", counter).1), 150);

    common::await_some(std::time::Duration::from_secs(10), "cache metrics", || {
        (agent.counter("corro_query_cache_hits_total") >= 1.0
            && agent.gauge("corro_query_cache_entries") >= 1.0
            && agent.gauge("corro_query_cache_bytes") > 0.0)
            .then_some(())
    });
}
