//! Native registration through the real binary, with no Consul anywhere:
//! the real client library py-consul registering services with HTTP, TCP,
//! UDP and TTL checks on a 3-agent cluster (targets started by the test),
//! registrations and TTL state across `kill -9`, Consul's codes for bad
//! bodies and unknown IDs, script checks only when enabled, output-only
//! changes kept off the wire, thresholds and `DeregisterCriticalServiceAfter`,
//! and a host moving from the Consul bridge to native registration without
//! a gap in DNS answers.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::consul::{ConsulStandIn, check_json, service_json};
use common::{Agent, Node, await_some, put_text as put};
use serde_json::{Value, json};

fn get_json(agent: &Agent, path: &str) -> Value {
    reqwest::blocking::get(agent.url(path))
        .unwrap()
        .json()
        .unwrap()
}

/// How many lines `dig +short` prints for `name` asked of `dns`.
fn dig_lines(dns: std::net::SocketAddr, name: &str) -> usize {
    let out = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args([
            "-p",
            &dns.port().to_string(),
            "+time=2",
            "+tries=1",
            "+short",
            name,
        ])
        .output()
        .expect("dig (dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A node with the discovery schema, DNS, and `extra` config appended.
fn native_node(dir: &std::path::Path, name: &str, seed: Option<&Agent>, extra: &str) -> Node {
    let n = match seed {
        Some(s) => Node::joining(dir, s),
        None => Node::new(dir, ""),
    };
    n.with_consul_schema();
    n.append_config(&format!(
        "[consul]\nnode_name = \"{name}\"\n[dns]\naddr = \"127.0.0.1:0\"\n{extra}"
    ));
    n
}

/// An HTTP/1.1 target on loopback: 500 while `fail` is set, else 200 with
/// a body that changes on every request (as a `Date` header would).
struct Target {
    port: u16,
    fail: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

fn http_target() -> Target {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let fail = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (f, s) = (fail.clone(), served.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let n = s.fetch_add(1, Ordering::SeqCst);
            let (code, body) = if f.load(Ordering::SeqCst) {
                ("500 Internal Server Error", format!("broken {n}"))
            } else {
                ("200 OK", format!("request {n}"))
            };
            let _ = write!(
                c,
                "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Target { port, fail, served }
}

fn check_of(agent: &Agent, id: &str) -> Option<Value> {
    get_json(agent, "/v1/agent/checks").get(id).cloned()
}

/// The replicated row of check `id` as another agent's health API shows it.
fn remote_check(agent: &Agent, service: &str, id: &str) -> Option<(String, String)> {
    let v = get_json(agent, &format!("/v1/health/service/{service}"));
    v.as_array()?.iter().find_map(|e| {
        e["Checks"].as_array()?.iter().find_map(|c| {
            (c["CheckID"] == id).then(|| {
                (
                    c["Status"].as_str().unwrap_or_default().to_string(),
                    c["Output"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
    })
}

#[test]
fn py_consul_registers_services_and_checks_on_a_three_agent_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let a_node = native_node(&dir.path().join("a"), "host-a", None, "");
    let a = a_node.start();
    let b_node = native_node(&dir.path().join("b"), "host-b", Some(&a), "");
    let b = b_node.start();
    let c_node = native_node(&dir.path().join("c"), "host-c", Some(&a), "");
    let c = c_node.start();
    await_some(Duration::from_secs(20), "three members everywhere", || {
        [&a, &b, &c]
            .iter()
            .all(|n| {
                get_json(n, "/v1/catalog/nodes")
                    .as_array()
                    .is_some_and(|v| v.len() == 3)
            })
            .then_some(())
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/agent_register.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([a.api.to_string(), b.api.to_string(), c.api.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut output = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        println!("py-consul: {line}");
        output.push(line);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "py-consul script failed: {output:?}");
    assert_eq!(output.last().map(String::as_str), Some("OK"));
    // Every agent ends with the same rows: cache and jobs remain.
    for agent in [&a, &b, &c] {
        await_some(Duration::from_secs(10), "same services everywhere", || {
            let v = get_json(agent, "/v1/catalog/services");
            let names: Vec<&String> = v.as_object()?.keys().collect();
            (names == ["cache", "consul", "jobs"] || names == ["cache", "jobs"]).then_some(())
        });
    }
}

/// A gRPC target (tonic-health's real server) going `NOT_SERVING` takes
/// its instance out of another agent's DNS answers; `SERVING` again brings
/// it back.
#[test]
fn a_grpc_target_not_serving_leaves_another_agents_dns() {
    let dir = tempfile::tempdir().unwrap();
    let a = native_node(&dir.path().join("a"), "host-a", None, "").start();
    let b = native_node(&dir.path().join("b"), "host-b", Some(&a), "").start();
    // The target: a gRPC health server on its own runtime.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (reporter, port) = rt.block_on(async {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("app.Api", tonic_health::ServingStatus::Serving)
            .await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        (reporter, port)
    });
    let body = json!({"Name": "rpc", "ID": "rpc-1", "Port": port, "Address": "127.0.0.1",
        "Check": {"GRPC": format!("127.0.0.1:{port}/app.Api"), "Interval": "1s", "Timeout": "1s"}});
    assert_eq!(
        put(&a, "/v1/agent/service/register", &body.to_string()),
        (200, String::new())
    );
    let dns = b.dns_addr();
    let ask = move || dig_lines(dns, "rpc.service.consul");
    await_some(Duration::from_secs(20), "rpc passing in B's DNS", || {
        (ask() == 1).then_some(())
    });
    assert_eq!(
        check_of(&a, "service:rpc-1").unwrap()["Output"],
        format!("gRPC check 127.0.0.1:{port}/app.Api: success")
    );
    rt.block_on(reporter.set_service_status("app.Api", tonic_health::ServingStatus::NotServing));
    await_some(Duration::from_secs(10), "rpc gone from B's DNS", || {
        (ask() == 0).then_some(())
    });
    let c = check_of(&a, "service:rpc-1").unwrap();
    assert_eq!(c["Status"], "critical", "{c}");
    rt.block_on(reporter.set_service_status("app.Api", tonic_health::ServingStatus::Serving));
    await_some(Duration::from_secs(10), "rpc back in B's DNS", || {
        (ask() == 1).then_some(())
    });
}

#[test]
fn registrations_and_ttl_state_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let node = native_node(dir.path(), "host-a", None, "");
    let a = node.start();
    let (code, text) = put(
        &a,
        "/v1/agent/service/register",
        r#"{"Name": "jobs", "ID": "jobs-1", "Tags": ["b", "a"], "Port": 7000,
            "Meta": {"k": "v"}, "Check": {"CheckID": "jobs-ttl", "TTL": "60s"}}"#,
    );
    assert_eq!((code, text.as_str()), (200, ""));
    let before = get_json(&a, "/v1/agent/services");
    assert_eq!(
        put(&a, "/v1/agent/check/pass/jobs-ttl?note=alive", "").0,
        200
    );
    // The check's state reaches the host-local table within a batch.
    let db = node.db.clone();
    await_some(Duration::from_secs(10), "the TTL state saved", || {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        let body: String = conn
            .query_row(
                "SELECT body FROM __corro_native WHERE kind = 'check_state' AND id = 'jobs-ttl'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        body.contains("passing").then_some(())
    });
    a.signal("KILL");
    drop(a);
    let a = node.start();
    assert_eq!(
        get_json(&a, "/v1/agent/services"),
        before,
        "registrations back as registered"
    );
    let c = check_of(&a, "jobs-ttl").unwrap();
    assert_eq!(
        (c["Status"].as_str(), c["Output"].as_str()),
        (Some("passing"), Some("alive"))
    );
    // Still answered after the restart (the TTL has not run out).
    await_some(
        Duration::from_secs(10),
        "jobs passing after restart",
        || {
            let v = get_json(&a, "/v1/health/service/jobs?passing");
            (v.as_array()?.len() == 1).then_some(())
        },
    );
    // Re-registering the same body is idempotent: the check keeps its state.
    put(
        &a,
        "/v1/agent/service/register",
        r#"{"Name": "jobs", "ID": "jobs-1", "Tags": ["b", "a"], "Port": 7000,
            "Meta": {"k": "v"}, "Check": {"CheckID": "jobs-ttl", "TTL": "60s"}}"#,
    );
    assert_eq!(check_of(&a, "jobs-ttl").unwrap()["Status"], "passing");
    a.stop();
}

#[test]
fn restarts_keep_deregistrations_drop_disabled_scripts_and_follow_a_rename() {
    let dir = tempfile::tempdir().unwrap();
    let node = native_node(
        dir.path(),
        "host-a",
        None,
        "[services]\nenable_script_checks = true\n",
    );
    let a = node.start();
    let body = r#"{"Name": "api", "ID": "api-1", "Checks": [
        {"CheckID": "api-ttl", "TTL": "10m", "Status": "passing"},
        {"CheckID": "api-script", "Args": ["true"], "Interval": "1s"}]}"#;
    assert_eq!(put(&a, "/v1/agent/service/register", body).0, 200);
    // A check of the service deregistered on its own stays gone.
    assert_eq!(put(&a, "/v1/agent/check/deregister/api-ttl", "").0, 200);
    a.stop();
    let a = node.start();
    let checks = get_json(&a, "/v1/agent/checks");
    assert!(
        checks.get("api-ttl").is_none(),
        "a deregistered check came back: {checks}"
    );
    assert!(checks.get("api-script").is_some());
    a.stop();
    // Script checks turned off: the saved one does not run again.
    node.replace_in_config(
        "enable_script_checks = true",
        "enable_script_checks = false",
    );
    let a = node.start();
    assert!(get_json(&a, "/v1/agent/checks").get("api-script").is_none());
    assert!(get_json(&a, "/v1/agent/services").get("api-1").is_some());
    await_some(
        Duration::from_secs(10),
        "api in the catalog as host-a",
        || {
            let v = get_json(&a, "/v1/catalog/service/api");
            (v.as_array()?.first()?["Node"] == "host-a").then_some(())
        },
    );
    a.stop();
    // Renamed: the rows follow the new name, none stay under the old one.
    node.replace_in_config("node_name = \"host-a\"", "node_name = \"host-z\"");
    let a = node.start();
    await_some(Duration::from_secs(10), "api only under host-z", || {
        let v = get_json(&a, "/v1/catalog/service/api");
        let nodes: Vec<&str> = v
            .as_array()?
            .iter()
            .filter_map(|e| e["Node"].as_str())
            .collect();
        (nodes == ["host-z"]).then_some(())
    });
    a.stop();
}

#[test]
fn bad_bodies_and_unknown_ids_get_consuls_codes_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = native_node(dir.path(), "host-a", None, "");
    let a = node.start();
    assert_eq!(
        put(
            &a,
            "/v1/agent/service/register",
            r#"{"Name": "web", "Check": {"TTL": "30s"}}"#
        )
        .0,
        200
    );
    let services = get_json(&a, "/v1/agent/services");
    let checks = get_json(&a, "/v1/agent/checks");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!(r#"{{"Name": "x", "Notes": "{}"}}"#, "a".repeat(2 << 20));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/agent/service/register",
            "{".into(),
            400,
            "Request decode failed",
        ),
        (
            "/v1/agent/service/register",
            "".into(),
            400,
            "Request decode failed",
        ),
        (
            "/v1/agent/service/register",
            deep,
            400,
            "Request decode failed",
        ),
        ("/v1/agent/service/register", huge, 413, "too large"),
        (
            "/v1/agent/service/register",
            r#"{"Port": 1}"#.into(),
            400,
            "Missing service name",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "x", "Address": "0.0.0.0"}"#.into(),
            400,
            "Invalid service address",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "x", "Weights": {"Passing": -1}}"#.into(),
            400,
            "Invalid Weights",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "x", "Meta": {"consul-x": "1"}}"#.into(),
            400,
            "Invalid Service Meta",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "x", "Port": "80"}"#.into(),
            400,
            "Request decode failed",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "x", "Check": {"HTTP": "http://x/"}}"#.into(),
            400,
            "Invalid check: Interval must be > 0",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "x", "Check": {"TTL": "1s", "Status": "up"}}"#.into(),
            400,
            "Status for checks must",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "x", "Check": {"Args": ["true"], "Interval": "1s"}}"#.into(),
            500,
            "Scripts are disabled",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name": "x", "Checks": [{}]}"#.into(),
            400,
            "Invalid check: TTL must be > 0 for TTL checks",
        ),
        (
            "/v1/agent/service/register",
            format!(
                r#"{{"Name": "x", "Tags": [{}]}}"#,
                vec!["\"t\""; 300].join(",")
            ),
            400,
            "Validation failed: at most 256 tags",
        ),
        (
            "/v1/agent/check/register",
            r#"{"TTL": "5s"}"#.into(),
            400,
            "Missing check name",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "c", "TTL": "5s", "Status": "ok"}"#.into(),
            400,
            "Bad check status",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "m", "ID": "_node_maintenance", "TTL": "5s"}"#.into(),
            400,
            "reserved for maintenance checks",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "c", "TTL": "5s", "ServiceID": "nope"}"#.into(),
            404,
            "ServiceID \"nope\" does not exist",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "c", "TTL": "5s", "Interval": "5s"}"#.into(),
            400,
            "Interval and TTL cannot both be specified",
        ),
        (
            "/v1/agent/check/update/service:web",
            r#"{"Status": "fine"}"#.into(),
            400,
            "Invalid check status: 'fine'",
        ),
        (
            "/v1/agent/check/update/nope",
            r#"{"Status": "passing"}"#.into(),
            404,
            "does not have associated TTL",
        ),
        (
            "/v1/agent/check/pass/nope",
            String::new(),
            404,
            "Unknown check ID \"nope\"",
        ),
        (
            "/v1/agent/check/deregister/nope",
            String::new(),
            404,
            "Unknown check ID",
        ),
        (
            "/v1/agent/service/deregister/nope",
            String::new(),
            404,
            "Unknown service ID \"nope\"",
        ),
        (
            "/v1/agent/service/maintenance/web",
            String::new(),
            400,
            "Missing value for enable",
        ),
        (
            "/v1/agent/service/maintenance/web?enable=maybe",
            String::new(),
            400,
            "Invalid value for enable",
        ),
        (
            "/v1/agent/service/maintenance/nope?enable=true",
            String::new(),
            404,
            "Unknown service ID",
        ),
        (
            "/v1/agent/maintenance",
            String::new(),
            400,
            "Missing value for enable",
        ),
    ];
    for (path, body, code, text) in cases {
        let (got, answer) = put(&a, path, &body);
        assert_eq!(
            got,
            code,
            "{path} {}: {answer}",
            &body[..body.len().min(80)]
        );
        assert!(answer.contains(text), "{path}: {answer:?} lacks {text:?}");
    }
    // Reads of unknown IDs, and writes with the wrong method.
    let r = reqwest::blocking::get(a.url("/v1/agent/service/nope")).unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = reqwest::blocking::get(a.url("/v1/agent/health/service/id/nope")).unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = reqwest::blocking::Client::new()
        .post(a.url("/v1/agent/service/register"))
        .body("{\"Name\": \"x\"}")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        get_json(&a, "/v1/agent/services"),
        services,
        "nothing registered"
    );
    assert_eq!(get_json(&a, "/v1/agent/checks"), checks, "no check changed");
    // ?filter= on the agent's own lists, as Consul.
    let v = get_json(
        &a,
        "/v1/agent/services?filter=Service%20%3D%3D%20%22nomatch%22",
    );
    assert_eq!(v, json!({}));
    let v = get_json(&a, "/v1/agent/services?filter=Service%20%3D%3D%20%22web%22");
    assert!(v.get("web").is_some(), "{v}");
    let r = reqwest::blocking::get(a.url("/v1/agent/checks?filter=Nope%20%3D%3D%201")).unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // A failing node-level check makes the service unhealthy for load
    // balancers too (Consul counts the node's checks).
    assert_eq!(put(&a, "/v1/agent/check/pass/service:web", "").0, 200);
    let health = |a: &Agent| {
        reqwest::blocking::get(a.url("/v1/agent/health/service/id/web?format=text"))
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(health(&a), 200);
    assert_eq!(
        put(
            &a,
            "/v1/agent/check/register",
            r#"{"Name": "disk", "TTL": "1m"}"#
        )
        .0,
        200
    );
    assert_eq!(health(&a), 503, "a critical node check");
    assert_eq!(put(&a, "/v1/agent/check/warn/disk", "").0, 200);
    assert_eq!(health(&a), 429);
    // Every kind the agent runs is accepted through the API (the probes
    // themselves are tested against real servers in corro-checks); Docker
    // checks are refused (no Docker engine to exec in).
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let body = json!({"Name": "kinds", "Checks": [
        {"CheckID": "k-grpc", "GRPC": format!("127.0.0.1:{port}/svc"), "Interval": "1s"},
        {"CheckID": "k-h2", "H2PING": format!("127.0.0.1:{port}"), "H2PingUseTLS": false, "Interval": "1s"},
        {"CheckID": "k-tls", "TCP": format!("127.0.0.1:{port}"), "TCPUseTLS": true, "Interval": "1s"}]});
    assert_eq!(
        put(&a, "/v1/agent/service/register", &body.to_string()),
        (200, String::new())
    );
    for (id, kind) in [("k-grpc", "grpc"), ("k-h2", "h2ping"), ("k-tls", "tcp")] {
        let c = await_some(Duration::from_secs(10), "the check ran", || {
            check_of(&a, id).filter(|c| !c["Output"].as_str().unwrap_or_default().is_empty())
        });
        assert_eq!(
            (c["Type"].as_str(), c["Status"].as_str()),
            (Some(kind), Some("critical")),
            "{c}"
        );
    }
    let (code, text) = put(
        &a,
        "/v1/agent/check/register",
        r#"{"Name": "d", "DockerContainerID": "abc", "Args": ["true"], "Interval": "5s"}"#,
    );
    assert!(code == 400 || code == 500, "{code} {text}");
    a.stop();

    // With script checks enabled in the config, the same body runs.
    let dir = tempfile::tempdir().unwrap();
    let node = native_node(
        dir.path(),
        "host-b",
        None,
        "[services]\nenable_script_checks = true\n",
    );
    let b = node.start();
    let (code, text) = put(
        &b,
        "/v1/agent/service/register",
        r#"{"Name": "x", "Check": {"Args": ["sh", "-c", "echo scripted"], "Interval": "1s"}}"#,
    );
    assert_eq!((code, text.as_str()), (200, ""));
    await_some(Duration::from_secs(10), "the script check passing", || {
        let c = check_of(&b, "service:x")?;
        (c["Status"] == "passing" && c["Output"] == "scripted\n").then_some(())
    });
    b.stop();
}

#[test]
fn output_only_changes_stay_local_and_thresholds_hold_back_a_flap() {
    let dir = tempfile::tempdir().unwrap();
    let a_node = native_node(&dir.path().join("a"), "host-a", None, "");
    a_node.enable_metrics();
    let a = a_node.start();
    let b = native_node(&dir.path().join("b"), "host-b", Some(&a), "").start();
    let t = http_target();
    let body = json!({"Name": "web", "ID": "web-1", "Port": t.port, "Check": {
        "CheckID": "web-http", "HTTP": format!("http://127.0.0.1:{}/", t.port),
        "Interval": "1s", "Timeout": "1s", "FailuresBeforeCritical": 3,
        "DeregisterCriticalServiceAfter": "1s"}});
    assert_eq!(
        put(&a, "/v1/agent/service/register", &body.to_string()).0,
        200
    );
    let (status, first) = await_some(Duration::from_secs(20), "web passing on B", || {
        remote_check(&b, "web", "web-http").filter(|(s, _)| s == "passing")
    });
    assert_eq!(status, "passing");
    let written = a.counter("corro_registry_rows_written_total");
    // The body changes on every probe: A's own API shows the newest, the
    // replicated row keeps the first (check_update_interval is 5 m).
    let seen = t.served.load(Ordering::SeqCst);
    await_some(Duration::from_secs(20), "three more probes", || {
        (t.served.load(Ordering::SeqCst) >= seen + 3).then_some(())
    });
    let local = check_of(&a, "web-http").unwrap()["Output"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(local, first, "A shows its latest output");
    assert_eq!(
        remote_check(&b, "web", "web-http").unwrap(),
        ("passing".to_string(), first.clone())
    );
    assert_eq!(
        a.counter("corro_registry_rows_written_total"),
        written,
        "steady checks write nothing"
    );

    // Two failures in a row stay under FailuresBeforeCritical = 3.
    t.fail.store(true, Ordering::SeqCst);
    let at = t.served.load(Ordering::SeqCst);
    while t.served.load(Ordering::SeqCst) < at + 2 {
        assert_eq!(check_of(&a, "web-http").unwrap()["Status"], "passing");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.fail.store(false, Ordering::SeqCst);
    let at = t.served.load(Ordering::SeqCst);
    await_some(Duration::from_secs(10), "two more probes", || {
        (t.served.load(Ordering::SeqCst) >= at + 2).then_some(())
    });
    assert_eq!(
        check_of(&a, "web-http").unwrap()["Status"],
        "passing",
        "a short flap is held back"
    );
    // A lasting failure: critical on B after three failures.
    t.fail.store(true, Ordering::SeqCst);
    let started = Instant::now();
    await_some(Duration::from_secs(20), "web critical on B", || {
        remote_check(&b, "web", "web-http").filter(|(s, _)| s == "critical")
    });
    println!(
        "critical on B {:?} after the target failed",
        started.elapsed()
    );
    // DeregisterCriticalServiceAfter ("1s", honoured as Consul's minimum
    // of 1 m): the whole service goes, everywhere.
    await_some(Duration::from_secs(120), "web deregistered", || {
        get_json(&a, "/v1/agent/services")
            .get("web-1")
            .is_none()
            .then_some(())
    });
    assert!(
        started.elapsed() >= Duration::from_secs(60),
        "not before the 1 m minimum"
    );
    await_some(Duration::from_secs(20), "web gone from B", || {
        get_json(&b, "/v1/catalog/service/web")
            .as_array()?
            .is_empty()
            .then_some(())
    });
}

#[test]
fn a_host_moves_from_the_bridge_to_native_registration_without_a_dns_gap() {
    let consul = ConsulStandIn::start();
    consul.set_service("web-1", service_json("web-1", "web", &["v1"], 8080));
    consul.set_check(
        "service:web-1",
        check_json("service:web-1", "web-1", "passing", "ok"),
    );
    let dir = tempfile::tempdir().unwrap();
    let a_node = native_node(
        &dir.path().join("a"),
        "host-a",
        None,
        &format!(
            "[consul.client]\naddr = \"{}\"\npoll_interval = \"100ms\"\n",
            consul.addr
        ),
    );
    let a = a_node.start();
    let b = native_node(&dir.path().join("b"), "host-b", Some(&a), "").start();
    let dns = b.dns_addr();
    let ask = move || dig_lines(dns, "web.service.consul");
    await_some(Duration::from_secs(20), "web from the bridge on B", || {
        (ask() == 1).then_some(())
    });
    // Ask B continuously while the host moves.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut asked, mut empty) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                asked += 1;
                if ask() != 1 {
                    empty += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (asked, empty)
        })
    };
    // Native registration of the same ID takes the row over ...
    let body = r#"{"Name": "web", "ID": "web-1", "Tags": ["v1"], "Port": 8080,
        "Check": {"CheckID": "service:web-1", "TTL": "10m", "Status": "passing"}}"#;
    assert_eq!(put(&a, "/v1/agent/service/register", body).0, 200);
    await_some(Duration::from_secs(20), "the row owned natively", || {
        let v: Value = reqwest::blocking::Client::new()
            .post(b.url("/v1/queries"))
            .json(&json!(
                "SELECT source FROM consul_services WHERE id = 'web-1'"
            ))
            .send()
            .ok()?
            .text()
            .ok()
            .map(|t| json!(t))?;
        v.as_str()?.contains("native").then_some(())
    });
    // ... and Consul forgets the service, then goes away entirely.
    consul.remove_check("service:web-1");
    consul.remove_service("web-1");
    let polled = consul.requests();
    await_some(
        Duration::from_secs(10),
        "bridge rounds after the removal",
        || (consul.requests() >= polled + 6).then_some(()),
    );
    consul.set_down(true);
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let (asked, empty) = watcher.join().unwrap();
    println!("asked B {asked} times during the move, {empty} without an answer");
    assert!(asked > 20, "the watcher asked {asked} times");
    assert_eq!(
        empty, 0,
        "web.service.consul went unanswered during the move"
    );
    assert_eq!(ask(), 1);
}

#[test]
fn service_definition_files_are_reconciled_on_reload_and_the_cli_registers() {
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("services.d");
    std::fs::create_dir_all(&defs).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    std::fs::write(
        defs.join("web.json"),
        r#"{"service": {"name": "web", "id": "web-1", "port": 8080, "tags": ["v1"],
            "check": {"ttl": "10m", "status": "passing"}}}"#,
    )
    .unwrap();
    std::fs::write(
        defs.join("db.hcl"),
        format!(
            "service {{\n  name = \"db\"\n  port = {tcp_port}\n  check {{\n    tcp = \"127.0.0.1:{tcp_port}\"\n    interval = \"1s\"\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let node = native_node(
        &dir.path().join("a"),
        "host-a",
        None,
        &format!("[services]\npaths = [\"{}\"]\n", defs.display()),
    );
    let a = node.start();
    let services = |a: &Agent| -> Vec<String> {
        get_json(a, "/v1/agent/services")
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(services(&a), ["db", "web-1"]);
    await_some(Duration::from_secs(10), "db's TCP check passing", || {
        (check_of(&a, "service:db")?["Status"] == "passing").then_some(())
    });
    // Changed on disk, applied on SIGHUP.
    std::fs::write(
        defs.join("web.json"),
        r#"{"service": {"name": "web", "id": "web-1", "port": 8080, "tags": ["v2"],
            "check": {"ttl": "10m", "status": "passing"}}}"#,
    )
    .unwrap();
    a.signal("HUP");
    await_some(Duration::from_secs(10), "web's new tags", || {
        (get_json(&a, "/v1/agent/services")["web-1"]["Tags"] == json!(["v2"])).then_some(())
    });
    // A file added, and one broken: `corrosion reload` applies the first,
    // refuses the second with its path and line, and db stays as it was.
    std::fs::write(
        defs.join("cache.json"),
        r#"{"services": [{"name": "cache", "port": 6379}]}"#,
    )
    .unwrap();
    std::fs::write(defs.join("db.hcl"), "service {\n  name = \n}\n").unwrap();
    let out = node.cli(&["reload"]);
    assert!(!out.status.success(), "a refused file fails the reload");
    let err = common::stderr(&out);
    assert!(err.contains("db.hcl") && err.contains("line 2"), "{err}");
    assert_eq!(services(&a), ["cache", "db", "web-1"]);
    assert_eq!(check_of(&a, "service:db").unwrap()["Status"], "passing");
    // The whole directory briefly gone (or unreadable): nothing is taken
    // for removed; a device or FIFO named like a definition is refused
    // without reading it.
    let moved = dir.path().join("services.moved");
    std::fs::rename(&defs, &moved).unwrap();
    let out = node.cli(&["reload"]);
    assert!(!out.status.success());
    assert_eq!(services(&a), ["cache", "db", "web-1"]);
    std::fs::rename(&moved, &defs).unwrap();
    std::os::unix::fs::symlink("/dev/zero", defs.join("zero.json")).unwrap();
    let out = node.cli(&["reload"]);
    assert!(
        common::stderr(&out).contains("not a regular file"),
        "{}",
        common::stderr(&out)
    );
    std::fs::remove_file(defs.join("zero.json")).unwrap();
    assert_eq!(services(&a), ["cache", "db", "web-1"]);
    // A file removed: its services go.
    std::fs::remove_file(defs.join("web.json")).unwrap();
    std::fs::remove_file(defs.join("db.hcl")).unwrap();
    let out = node.cli(&["reload"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stdout(&out).contains("service definitions"),
        "{}",
        common::stdout(&out)
    );
    assert_eq!(services(&a), ["cache"]);
    // A second file defining the same ID (sorting before the owner's) is
    // refused; the service stays as its own file says.
    std::fs::write(
        defs.join("a-copy.json"),
        r#"{"service": {"name": "cache", "port": 1}}"#,
    )
    .unwrap();
    let out = node.cli(&["reload"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("a-copy.json")
            && err.contains("also defined in")
            && err.contains("cache.json"),
        "{err}"
    );
    assert_eq!(get_json(&a, "/v1/agent/services")["cache"]["Port"], 6379);
    std::fs::remove_file(defs.join("a-copy.json")).unwrap();
    assert!(node.cli(&["reload"]).status.success());
    assert_eq!(get_json(&a, "/v1/agent/services")["cache"]["Port"], 6379);

    // The CLI, as `consul services` and `consul maint`.
    let api = a.api.to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["--api-addr", api.as_str()];
        all.extend_from_slice(args);
        node.cli(&all)
    };
    let out = cli(&[
        "services",
        "register",
        "--name",
        "api",
        "--port",
        "9000",
        "--tag",
        "x",
        "--meta",
        "team=core",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::stdout(&out).contains("Registered service: api"));
    let api = &get_json(&a, "/v1/agent/services")["api"];
    assert_eq!(
        (api["Port"].as_i64(), &api["Tags"], &api["Meta"]),
        (Some(9000), &json!(["x"]), &json!({"team": "core"}))
    );
    let file = dir.path().join("batch.hcl");
    std::fs::write(
        &file,
        "services = [ { name = \"b1\" }, { name = \"b2\" } ]\n",
    )
    .unwrap();
    assert!(
        cli(&["services", "register", file.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(services(&a), ["api", "b1", "b2", "cache"]);
    assert!(
        cli(&["services", "deregister", file.to_str().unwrap()])
            .status
            .success()
    );
    let out = cli(&[
        "maint",
        "enable",
        "--service",
        "api",
        "--reason",
        "upgrading",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        check_of(&a, "_service_maintenance:api").unwrap()["Notes"],
        "upgrading"
    );
    assert!(cli(&["maint", "enable"]).status.success());
    assert_eq!(
        check_of(&a, "_node_maintenance").unwrap()["Status"],
        "critical"
    );
    // `maint` alone lists what is in maintenance, as `consul maint`.
    let out = cli(&["maint"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let listed = common::stdout(&out);
    assert!(listed.contains("Node:"), "{listed}");
    assert!(
        listed.contains("ID:     api") && listed.contains("Reason: upgrading"),
        "{listed}"
    );
    assert!(cli(&["maint", "disable"]).status.success());
    assert!(
        cli(&["maint", "disable", "--service", "api"])
            .status
            .success()
    );
    assert!(check_of(&a, "_node_maintenance").is_none());
    assert!(check_of(&a, "_service_maintenance:api").is_none());
    assert!(cli(&["services", "deregister", "api"]).status.success());
    let out = cli(&["services", "deregister", "api"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("Unknown service ID"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(services(&a), ["cache"]);
    drop(tcp);
    a.stop();
}
