//! Consul's KV store through the real binary: py-consul against a 3-agent
//! cluster (reads, writes, blocking, refusals), binary values through
//! `?raw`, the 512 KiB cap, bad input answered with Consul's codes and
//! nothing written, concurrent puts of one key converging everywhere,
//! templates re-rendered by a put on another agent (in the agent and in
//! `corrosion template`), and `corrosion kv import`/`export` round-tripping
//! a `consul kv export` file byte for byte.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, Node, await_some, stderr, stdout};
use serde_json::Value;

fn kv_node(dir: &Path, seed: Option<&Agent>, extra: &str) -> Node {
    let n = match seed {
        Some(s) => Node::joining(dir, s),
        None => Node::new(dir, ""),
    };
    n.with_consul_schema();
    n.append_config(extra);
    n
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A request's status, `X-Consul-Index` (0 when absent) and body.
fn send(req: reqwest::blocking::RequestBuilder) -> (u16, u64, Vec<u8>) {
    let r = req.send().unwrap();
    let index = r
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (r.status().as_u16(), index, r.bytes().unwrap().to_vec())
}

fn put(agent: &Agent, path: &str, body: Vec<u8>) -> (u16, String) {
    let (s, _, b) = send(http().put(agent.url(path)).body(body));
    (s, String::from_utf8_lossy(&b).into_owned())
}

fn get(agent: &Agent, path: &str) -> (u16, u64, Vec<u8>) {
    send(http().get(agent.url(path)))
}

fn raw(agent: &Agent, key: &str) -> Option<Vec<u8>> {
    let (s, _, b) = get(agent, &format!("/v1/kv/{key}?raw"));
    (s == 200).then_some(b)
}

fn cluster(dir: &Path, extra_c: &str) -> (Agent, Agent, Agent, Node) {
    let a = kv_node(&dir.join("a"), None, "").start();
    let b = kv_node(&dir.join("b"), Some(&a), "").start();
    let c_node = kv_node(&dir.join("c"), Some(&a), extra_c);
    let c = c_node.start();
    (a, b, c, c_node)
}

#[test]
fn py_consul_kv_on_a_three_agent_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, _) = cluster(dir.path(), "");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/kv.py");
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
    // Every agent ends with the same keys and values.
    let all = |agent: &Agent| -> Option<Value> {
        let (s, _, body) = get(agent, "/v1/kv/?recurse");
        let v: Value = serde_json::from_slice(&body).ok()?;
        (s == 200).then(|| {
            Value::Array(
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|e| serde_json::json!([e["Key"], e["Value"], e["Flags"]]))
                    .collect(),
            )
        })
    };
    let want = all(&a).unwrap();
    for agent in [&b, &c] {
        await_some(Duration::from_secs(10), "the same KV everywhere", || {
            (all(agent).as_ref() == Some(&want)).then_some(())
        });
    }
}

#[test]
fn values_are_bytes_up_to_512_kib_and_bad_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = kv_node(dir.path(), None, "").start();
    // Every byte value round-trips through ?raw, with Consul's headers.
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        put(&a, "/v1/kv/bin/all", all_bytes.clone()),
        (200, "true".into())
    );
    let r = http().get(a.url("/v1/kv/bin/all?raw")).send().unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["content-security-policy"], "sandbox");
    assert!(r.headers().contains_key("x-consul-index"));
    assert_eq!(r.bytes().unwrap().to_vec(), all_bytes);
    // The cap: 512 KiB is stored, one byte more is Consul's 413.
    let max = vec![b'x'; 512 * 1024];
    assert_eq!(put(&a, "/v1/kv/big", max.clone()), (200, "true".into()));
    assert_eq!(raw(&a, "big").unwrap().len(), max.len());
    let (code, text) = put(&a, "/v1/kv/big2", vec![b'y'; 512 * 1024 + 1]);
    assert_eq!(code, 413, "{text}");
    assert!(
        text.starts_with("Request body(524289 bytes) too large, max size: 524288 bytes."),
        "{text}"
    );
    // A chunked body (no Content-Length) over the cap too.
    // (The agent answers 413 and closes before the upload ends, which the
    // client may see as a broken upload instead.)
    let chunks = (0..9).map(|_| Ok::<_, std::io::Error>(vec![b'z'; 64 * 1024]));
    let body = reqwest::blocking::Body::new(ChunkReader::new(chunks.collect()));
    if let Ok(r) = http().put(a.url("/v1/kv/big3")).body(body).send() {
        assert_eq!(r.status().as_u16(), 413);
    }
    assert!(raw(&a, "big3").is_none());
    // Bad input: Consul's codes, nothing written.
    let (_, before, _) = get(&a, "/v1/kv/?recurse");
    for (path, code, needle) in [
        ("/v1/kv/%2Fleading", 400, "must not begin with a '/'"),
        ("/v1/kv/a/%2e%2e%2fb", 400, "path traversal"),
        ("/v1/kv/%20space", 400, "whitespace"),
        ("/v1/kv/%ff%fe", 400, "UTF-8"),
        ("/v1/kv/", 400, "Missing key name"),
        (
            "/v1/kv/k?flags=abc",
            500,
            "strconv.ParseUint: parsing \"abc\": invalid syntax",
        ),
        ("/v1/kv/k?flags=-1", 500, "invalid syntax"),
        (
            "/v1/kv/k?flags=18446744073709551616",
            500,
            "value out of range",
        ),
        (
            "/v1/kv/k?cas=1&acquire=s",
            400,
            "Conflicting flags: acquire=s&cas=1",
        ),
        ("/v1/kv/k?cas=0", 501, "not supported"),
        ("/v1/kv/k?acquire=s", 501, "not supported"),
        ("/v1/kv/k?release=s", 501, "not supported"),
        ("/v1/kv/k?dc=elsewhere", 500, "No path to datacenter"),
    ] {
        let (got, text) = put(&a, path, b"v".to_vec());
        assert_eq!(got, code, "{path}: {text}");
        assert!(text.contains(needle), "{path}: {text}");
    }
    for (path, code, needle) in [
        ("/v1/kv/k?recurse&cas=1", 400, "Conflicting flags"),
        ("/v1/kv/k?cas=1", 501, "not supported"),
        ("/v1/kv/", 400, "Missing key name"),
    ] {
        let (got, _, body) = send(http().delete(a.url(path)));
        let text = String::from_utf8_lossy(&body);
        assert_eq!(got, code, "{path}: {text}");
        assert!(text.contains(needle), "{path}: {text}");
    }
    for path in ["/v1/session/create", "/v1/txn", "/v1/session/list"] {
        let (got, text) = put(&a, path, b"{}".to_vec());
        assert_eq!(got, 501, "{path}: {text}");
        assert!(text.contains("Nothing was written"), "{path}: {text}");
    }
    for (path, needle) in [
        ("/v1/session/info/", "Missing session"),
        ("/v1/session/node/", "Missing node name"),
    ] {
        let (got, _, body) = get(&a, path);
        assert_eq!(got, 400, "{path}");
        assert!(String::from_utf8_lossy(&body).contains(needle), "{path}");
    }
    // Listing sessions tells the truth: there are none.
    for path in [
        "/v1/session/list",
        "/v1/session/info/5f1b0a0e-0000-0000-0000-000000000000",
        "/v1/session/node/a",
    ] {
        let (got, index, body) = get(&a, path);
        assert_eq!((got, body), (200, b"[]".to_vec()), "{path}");
        assert!(index > 0, "{path}: an X-Consul-Index");
    }
    let (_, after, body) = get(&a, "/v1/kv/?recurse");
    assert_eq!(before, after, "no refused request moved the index");
    let keys: Vec<String> = serde_json::from_slice::<Vec<Value>>(&body)
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["big", "bin/all"]);
    // Flags are unsigned 64-bit; an identical put moves no index.
    assert_eq!(
        put(&a, "/v1/kv/f?flags=18446744073709551615", vec![]).0,
        200
    );
    let (_, i1, body) = get(&a, "/v1/kv/f");
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e[0]["Flags"], u64::MAX);
    assert_eq!(e[0]["Value"], Value::Null);
    assert_eq!(
        put(&a, "/v1/kv/f?flags=18446744073709551615", vec![]).0,
        200
    );
    let (_, i2, body2) = get(&a, "/v1/kv/f");
    assert_eq!((i1, body), (i2, body2), "an identical put changes nothing");
    // A missing key: 404 with an index; keys at the root of an empty
    // prefix: []; a raw get of a folder-less key.
    let (s, i, b) = get(&a, "/v1/kv/nothing/here");
    assert_eq!((s, b.is_empty()), (404, true));
    assert!(i > 0);
    // Deleting everything needs the explicit empty key with recurse.
    assert_eq!(send(http().delete(a.url("/v1/kv/?recurse"))).0, 200);
    let (s, _, b) = get(&a, "/v1/kv/?keys");
    assert_eq!((s, b), (200, b"[]".to_vec()));
}

/// A blocking GET in a thread, returned once the agent holds it (its
/// metrics on): (status, index, body) when it returns.
fn hold(agent: &Agent, path: String) -> std::thread::JoinHandle<(u16, u64, Vec<u8>)> {
    let held = || agent.gauge("corro_consul_blocking_queries");
    let before = held();
    let url = agent.url(&path);
    let h = std::thread::spawn(move || send(http().get(url)));
    await_some(Duration::from_secs(10), "the query held", || {
        (held() > before || h.is_finished()).then_some(())
    });
    h
}

/// True once the thread ended (polled for up to `limit`).
fn ends_within(h: &std::thread::JoinHandle<(u16, u64, Vec<u8>)>, limit: Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if h.is_finished() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    h.is_finished()
}

#[test]
fn blocking_reads_wake_on_their_keys_only_and_indexes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = kv_node(dir.path(), None, "");
    node.enable_metrics();
    let a = node.start();
    assert_eq!(put(&a, "/v1/kv/dir/a", b"1".to_vec()).0, 200);
    // A blocking get of a missing key holds through a put elsewhere and
    // answers the key's creation.
    let (s, i0, _) = get(&a, "/v1/kv/later");
    assert_eq!(s, 404);
    let held = hold(&a, format!("/v1/kv/later?index={i0}&wait=20s"));
    assert_eq!(put(&a, "/v1/kv/elsewhere", b"x".to_vec()).0, 200);
    assert!(
        !ends_within(&held, Duration::from_millis(700)),
        "a put of another key woke a blocking get"
    );
    assert_eq!(put(&a, "/v1/kv/later", b"now".to_vec()).0, 200);
    assert!(
        ends_within(&held, Duration::from_secs(5)),
        "not woken by its key's creation"
    );
    let (s, i1, body) = held.join().unwrap();
    let e: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, e[0]["Key"].as_str()), (200, Some("later")));
    assert!(i1 > i0);
    // A blocking ?keys listing holds through a value change (same keys)
    // and answers a new key.
    let (_, k0, _) = get(&a, "/v1/kv/dir/?keys&separator=/");
    let held = hold(
        &a,
        format!("/v1/kv/dir/?keys&separator=/&index={k0}&wait=20s"),
    );
    assert_eq!(put(&a, "/v1/kv/dir/a", b"2".to_vec()).0, 200);
    if ends_within(&held, Duration::from_millis(700)) {
        let (s, i, b) = held.join().unwrap();
        panic!(
            "a value change woke a key listing whose keys did not change: {s} {k0}->{i} {}",
            String::from_utf8_lossy(&b)
        );
    }
    assert_eq!(put(&a, "/v1/kv/dir/sub/b", b"3".to_vec()).0, 200);
    assert!(
        ends_within(&held, Duration::from_secs(5)),
        "not woken by a new key"
    );
    let (_, _, body) = held.join().unwrap();
    let keys: Vec<String> = serde_json::from_slice(&body).unwrap();
    assert_eq!(keys, ["dir/a", "dir/sub/"]);
    // KV writes and deletes do not move a catalog query's index (once the
    // agent's own node row and claim are written: two equal reads).
    let c0 = await_some(Duration::from_secs(20), "a settled catalog index", || {
        let (_, first, _) = get(&a, "/v1/catalog/services");
        std::thread::sleep(Duration::from_millis(300));
        let (_, second, _) = get(&a, "/v1/catalog/services");
        (first == second).then_some(first)
    });
    let held = hold(&a, format!("/v1/catalog/services?index={c0}&wait=2s"));
    assert_eq!(put(&a, "/v1/kv/dir/c", b"4".to_vec()).0, 200);
    assert_eq!(send(http().delete(a.url("/v1/kv/elsewhere"))).0, 200);
    let (s, c1, _) = held.join().unwrap();
    assert_eq!((s, c1), (200, c0), "a KV change moved the catalog's index");
    // An identical put takes no store version (the agent's own heartbeat
    // writes may land in between: a few tries, each must see no version
    // taken by the put for the assertion to pass).
    let head = || {
        let (_, _, body) = get(&a, "/v1/health");
        serde_json::from_slice::<Value>(&body).unwrap()["head"]
            .as_u64()
            .unwrap()
    };
    let unchanged = (0..5).any(|_| {
        let before = head();
        assert_eq!(put(&a, "/v1/kv/dir/c", b"4".to_vec()).0, 200);
        head() == before
    });
    assert!(unchanged, "every identical put took a store version");
    let before = head();
    assert_eq!(put(&a, "/v1/kv/dir/c", b"5".to_vec()).0, 200);
    assert!(head() > before, "a changed value took no version");
    // Indexes never go backwards across a restart.
    let (_, before_restart, body) = get(&a, "/v1/kv/dir/c");
    let modify = serde_json::from_slice::<Vec<Value>>(&body).unwrap()[0]["ModifyIndex"].clone();
    a.stop();
    let a = node.start();
    let (s, after_restart, body) = get(&a, "/v1/kv/dir/c");
    assert_eq!(s, 200);
    assert!(
        after_restart >= before_restart,
        "{after_restart} < {before_restart}"
    );
    let e = &serde_json::from_slice::<Vec<Value>>(&body).unwrap()[0];
    assert!(e["ModifyIndex"].as_u64().unwrap() >= modify.as_u64().unwrap());
    assert_eq!(put(&a, "/v1/kv/dir/c", b"6".to_vec()).0, 200);
    let (_, after_put, _) = get(&a, "/v1/kv/dir/c");
    assert!(after_put > before_restart);
}

/// A blocking reader body that yields the given chunks (sent chunked).
struct ChunkReader {
    chunks: std::collections::VecDeque<std::io::Result<Vec<u8>>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl ChunkReader {
    fn new(chunks: Vec<std::io::Result<Vec<u8>>>) -> ChunkReader {
        ChunkReader {
            chunks: chunks.into(),
            current: std::io::Cursor::new(Vec::new()),
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            match self.chunks.pop_front() {
                Some(c) => self.current = std::io::Cursor::new(c?),
                None => return Ok(0),
            }
        }
    }
}

#[test]
fn concurrent_puts_of_one_key_on_two_agents_converge_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, _) = cluster(dir.path(), "");
    for round in 0..20 {
        let key = format!("race/{}", round % 4);
        let (ua, ub) = (
            a.url(&format!("/v1/kv/{key}?flags={round}")),
            b.url(&format!("/v1/kv/{key}?flags={}", round + 100)),
        );
        let ta = std::thread::spawn(move || {
            http()
                .put(ua)
                .body(format!("from-a-{round}"))
                .send()
                .unwrap()
                .status()
                .as_u16()
        });
        let tb = std::thread::spawn(move || {
            http()
                .put(ub)
                .body(format!("from-b-{round}"))
                .send()
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!((ta.join().unwrap(), tb.join().unwrap()), (200, 200));
    }
    // One value (and its flags) per key, the same on every agent.
    let state = |agent: &Agent| -> Vec<(String, String, u64)> {
        let (_, _, body) = get(agent, "/v1/kv/race/?recurse");
        serde_json::from_slice::<Vec<Value>>(&body)
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["Key"].as_str().unwrap().to_string(),
                    e["Value"].as_str().unwrap_or_default().to_string(),
                    e["Flags"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    await_some(
        Duration::from_secs(20),
        "one value per key everywhere",
        || {
            let (sa, sb, sc) = (state(&a), state(&b), state(&c));
            (sa.len() == 4 && sa == sb && sb == sc).then_some(())
        },
    );
    // Each key's value is one of the values written (value and flags
    // merge per column: docs/KV.md says when they can come from two
    // writes).
    for (key, value, _) in state(&a) {
        use base64::Engine;
        let v = base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap();
        let v = String::from_utf8(v).unwrap();
        assert!(
            v.starts_with("from-a-") || v.starts_with("from-b-"),
            "{key}: {v}"
        );
    }
}

/// A `corrosion template` process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn templates_reading_keys_rerender_after_a_put_on_another_agent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("kv.rhai"),
        "max=<%= key(\"app/max\") %>\nmode=<%= key_or_default(\"app/mode\", \"safe\") %>\nflag=<%= key_exists(\"app/flag\") %>\n<% for e in ls(\"app/hosts\") { %>ls <%= e.key %>=<%= e.value %>\n<% } %><% for e in tree(\"app/hosts\") { %>tree <%= e.key %>=<%= e.value %>\n<% } %>",
    )
    .unwrap();
    let block = format!(
        "[[template]]\nsource = \"{}\"\ndestination = \"{}\"\nwait = \"50ms:1s\"\n",
        d.join("kv.rhai").display(),
        d.join("agent.txt").display()
    );
    let block = format!("{block}\n[telemetry]\nprometheus.addr = \"127.0.0.1:0\"\n");
    let (a, _b, c, _) = cluster(d, &block);
    // `corrosion template` against C too.
    let proc = Process(
        Command::new(common::binary())
            .args(["--api-addr", &c.api.to_string(), "template"])
            .arg(format!(
                "{}:{}",
                d.join("kv.rhai").display(),
                d.join("process.txt").display()
            ))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // key() waits for its key: nothing rendered yet, and no error (a
    // missing key is waited for, not retried as a fault); the first put
    // on A renders both.
    await_some(Duration::from_secs(20), "a first render attempt", || {
        (c.counter("corro_tpl_renders_total") >= 1.0).then_some(())
    });
    assert!(!d.join("agent.txt").exists());
    assert_eq!(c.counter("corro_tpl_render_errors_total"), 0.0);
    assert_eq!(put(&a, "/v1/kv/app/max", b"15".to_vec()).0, 200);
    let want = "max=15\nmode=safe\nflag=false\n";
    for f in ["agent.txt", "process.txt"] {
        await_some(Duration::from_secs(20), "rendered with app/max", || {
            (std::fs::read_to_string(d.join(f)).ok()? == want).then_some(())
        });
    }
    for (k, v) in [
        ("app/mode", "fast"),
        ("app/flag", ""),
        ("app/hosts/web-1", "10.0.0.1"),
        ("app/hosts/deep/web-2", "10.0.0.2"),
    ] {
        assert_eq!(
            put(&a, &format!("/v1/kv/{k}"), v.as_bytes().to_vec()).0,
            200
        );
    }
    let want = "max=15\nmode=fast\nflag=true\nls web-1=10.0.0.1\ntree deep/web-2=10.0.0.2\ntree web-1=10.0.0.1\n";
    for f in ["agent.txt", "process.txt"] {
        await_some(
            Duration::from_secs(20),
            "re-rendered after the puts on A",
            || (std::fs::read_to_string(d.join(f)).ok()? == want).then_some(()),
        );
    }
    // A put of a key no template reads renders nothing on C.
    let renders = || c.counter("corro_tpl_renders_total");
    let before = renders();
    assert_eq!(put(&a, "/v1/kv/unrelated/x", b"1".to_vec()).0, 200);
    assert_eq!(put(&a, "/v1/kv/app/maxi", b"1".to_vec()).0, 200);
    await_some(Duration::from_secs(20), "the unrelated keys on C", || {
        (raw(&c, "app/maxi").is_some() && raw(&c, "unrelated/x").is_some()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        renders(),
        before,
        "an unrelated key re-rendered the template"
    );
    // A delete under a folder the template reads re-renders.
    assert_eq!(
        send(http().delete(a.url("/v1/kv/app/hosts?recurse"))).0,
        200
    );
    let want = "max=15\nmode=fast\nflag=true\n";
    for f in ["agent.txt", "process.txt"] {
        await_some(
            Duration::from_secs(20),
            "re-rendered after the delete",
            || (std::fs::read_to_string(d.join(f)).ok()? == want).then_some(()),
        );
    }
    drop(proc);
}

/// What `consul kv export` writes (Go's `json.MarshalIndent` with a tab:
/// `<`, `>` and `&` escaped, empty values as `""`), hand-written here since
/// no Consul runs in these tests.
const CONSUL_EXPORT: &str = "[\n\t{\n\t\t\"key\": \"app/config/max\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"MTU=\"\n\t},\n\t{\n\t\t\"key\": \"app/empty\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"\"\n\t},\n\t{\n\t\t\"key\": \"app/html\\u003cb\\u003e\\u0026\",\n\t\t\"flags\": 18446744073709551615,\n\t\t\"value\": \"AAEC/w==\"\n\t},\n\t{\n\t\t\"key\": \"app/ünï code\",\n\t\t\"flags\": 7,\n\t\t\"value\": \"w6k=\"\n\t}\n]\n";

#[test]
fn kv_import_of_a_consul_export_then_export_gives_the_same_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = kv_node(dir.path(), None, "");
    let a = node.start();
    let api = a.api.to_string();
    let file = dir.path().join("export.json");
    std::fs::write(&file, CONSUL_EXPORT).unwrap();
    let out = node.cli(&[
        "--api-addr",
        &api,
        "kv",
        "import",
        &format!("@{}", file.display()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 4);
    let out = node.cli(&["--api-addr", &api, "kv", "export", "app/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), CONSUL_EXPORT);
    // The same through a pipe (`consul kv export | corrosion kv import -`).
    let mut child = Command::new(common::binary())
        .args(["--api-addr", &api, "kv", "import", "--prefix", "copy/", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(CONSUL_EXPORT.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = node.cli(&["--api-addr", &api, "kv", "get", "-keys", "copy/app/"]);
    assert_eq!(stdout(&out).lines().count(), 4, "{}", stdout(&out));
    // Consul's CLI forms.
    let out = node.cli(&[
        "--api-addr",
        &api,
        "kv",
        "put",
        "-flags=9",
        "cli/a",
        "hello",
    ]);
    assert_eq!(stdout(&out), "Success! Data written to: cli/a\n");
    let out = node.cli(&["--api-addr", &api, "kv", "get", "cli/a"]);
    assert_eq!(stdout(&out), "hello\n");
    let out = node.cli(&["--api-addr", &api, "kv", "get", "-recurse", "cli"]);
    assert_eq!(stdout(&out), "cli/a:hello\n");
    let out = node.cli(&["--api-addr", &api, "kv", "get", "cli/missing"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("No key exists at: cli/missing"),
        "{}",
        stderr(&out)
    );
    // An empty prefix with -recurse deletes nothing without -all.
    let out = node.cli(&["--api-addr", &api, "kv", "delete", "-recurse"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("-all"), "{}", stderr(&out));
    assert_eq!(raw(&a, "cli/a").unwrap(), b"hello");
    let out = node.cli(&["--api-addr", &api, "kv", "delete", "-recurse", "-all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(raw(&a, "cli/a").is_none());
    // A bad entry in an import writes none of it.
    std::fs::write(&file, "[{\"key\":\"ok\",\"flags\":0,\"value\":\"eA==\"},{\"key\":\"/bad\",\"flags\":0,\"value\":\"eA==\"}]").unwrap();
    let out = node.cli(&[
        "--api-addr",
        &api,
        "kv",
        "import",
        &format!("@{}", file.display()),
    ]);
    assert!(!out.status.success());
    assert!(raw(&a, "ok").is_none());
}
