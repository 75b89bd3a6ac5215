//! The built `corrosion` binary from the command line: the reference quick
//! start for node A with its exact outputs, schema reload on SIGHUP and
//! through `corrosion reload`, clean stop, restart keeping data and identity,
//! backup/restore, and one clear error line for bad input.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::process::{Command, Stdio};

use common::{BIN, Node, admin, stderr, stdout};

#[test]
fn quick_start_node_a_prints_what_the_reference_shows() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let agent = node.start();
    let addr = agent.api.to_string();
    let out = node.cli(&[&["--api-addr", &addr][..], &common::QUICK_START_EXEC].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "INFO corrosion: Rows affected: 1\n");

    let out = node.cli(&["--api-addr", &addr, "query", "SELECT * FROM todos;"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "some-id|Write some Corrosion docs!|\n");

    let out = node.cli(&[
        "--api-addr",
        &addr,
        "query",
        "SELECT * FROM todos;",
        "--columns",
    ]);
    assert_eq!(
        stdout(&out),
        "id|title|completed_at\nsome-id|Write some Corrosion docs!|\n"
    );

    // The real sqlite3 shell (installed by scripts/test.sh) reads the file
    // with nothing loaded, exactly as the reference shows...
    let shell = Command::new("sqlite3")
        .arg(&node.db)
        .arg("SELECT * FROM todos;")
        .output()
        .expect("sqlite3 CLI (scripts/test.sh installs it)");
    assert_eq!(
        String::from_utf8_lossy(&shell.stdout),
        "some-id|Write some Corrosion docs!|\n"
    );
    // ...and cannot write behind the agent's back.
    let shell = Command::new("sqlite3")
        .arg(&node.db)
        .arg("INSERT INTO todos (id) VALUES ('sneaky');")
        .output()
        .unwrap();
    assert!(!shell.status.success());
    assert!(
        String::from_utf8_lossy(&shell.stderr)
            .contains("todos is replicated by Corrosion: write to it through the agent"),
        "{}",
        String::from_utf8_lossy(&shell.stderr)
    );
    let conn = rusqlite::Connection::open(&node.db).unwrap();
    let row: (String, String, Option<i64>) = conn
        .query_row("SELECT * FROM todos", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(
        row,
        ("some-id".into(), "Write some Corrosion docs!".into(), None)
    );

    let out = node.cli(&[
        "--api-addr",
        &addr,
        "exec",
        "UPDATE todos SET completed_at = 1234567890",
    ]);
    assert_eq!(stdout(&out), "INFO corrosion: Rows affected: 1\n");
    let out = node.cli(&[
        "--api-addr",
        &addr,
        "query",
        "--timer",
        "SELECT completed_at FROM todos",
    ]);
    let text = stdout(&out);
    assert!(
        text.starts_with("1234567890\ntime: ") && text.ends_with("s\n"),
        "{text}"
    );
    agent.stop();
}

#[test]
fn client_commands_use_the_config_api_address_and_token() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port is needed for the config to name it; take a free one.
    let port = common::free_port();
    let node = Node::new(dir.path(), "authz.bearer-token = \"s3cret\"");
    node.set_api_addr(&format!("127.0.0.1:{port}"));
    let agent = node.start();
    assert_eq!(agent.api.port(), port);
    let out = node.cli(&["exec", "INSERT INTO todos (id) VALUES ('a')"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Without the token (no config, address on the command line): refused.
    let out = Command::new(&*BIN)
        .args(["--api-addr", &agent.api.to_string(), "query", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Error: missing or wrong bearer token (HTTP 401)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn schema_reloads_on_sighup_and_reload_command_and_bad_changes_keep_the_old_schema() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let agent = node.start();
    std::fs::write(
        dir.path().join("schema/more.sql"),
        "CREATE TABLE extra (id INTEGER NOT NULL PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    agent.signal("HUP");
    agent.expect("creating table 'extra'");
    std::fs::write(
        dir.path().join("schema/more.sql"),
        "CREATE TABLE extra (id INTEGER NOT NULL PRIMARY KEY);",
    )
    .unwrap();
    agent.signal("HUP");
    let line = agent.expect("schema not applied");
    assert!(
        line.contains("dropping column 'v'") && line.contains("more.sql"),
        "{line}"
    );

    std::fs::write(
        dir.path().join("schema/more.sql"),
        "CREATE TABLE extra (id INTEGER NOT NULL PRIMARY KEY, v TEXT, w TEXT);",
    )
    .unwrap();
    let out = node.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("extra.w"), "{}", stdout(&out));
    std::fs::write(
        dir.path().join("schema/more.sql"),
        "CREATE VIEW v AS SELECT 1;",
    )
    .unwrap();
    let out = node.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("only CREATE TABLE"),
        "{}",
        stderr(&out)
    );
    agent.stop();

    let conn = rusqlite::Connection::open(&node.db).unwrap();
    let cols: i64 = conn
        .query_row("SELECT count(*) FROM pragma_table_info('extra')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(cols, 3);
}

#[test]
fn restart_keeps_data_actor_id_and_version_counter() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let agent = node.start();
    let actor = agent.actor.clone();
    assert_eq!(actor.len(), 32);
    let addr = agent.api.to_string();
    for i in 0..3 {
        let out = node.cli(&[
            "--api-addr",
            &addr,
            "exec",
            &format!("INSERT INTO todos (id) VALUES ('{i}')"),
        ]);
        assert!(out.status.success());
    }
    agent.stop();
    let agent = node.start();
    assert_eq!(agent.actor, actor);
    let client = reqwest::blocking::Client::new();
    let health: serde_json::Value = client
        .get(agent.url("/v1/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["head"], 3);
    let resp: serde_json::Value = client
        .post(agent.url("/v1/transactions"))
        .json(&["INSERT INTO todos (id) VALUES ('next')"])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(resp["version"], 4);
    let out = node.cli(&[
        "--api-addr",
        &agent.api.to_string(),
        "query",
        "SELECT count(*) FROM todos",
    ]);
    assert_eq!(stdout(&out), "4\n");
}

#[test]
fn backup_then_restore_into_a_fresh_node_and_restore_refuses_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::new(&dir.path().join("a"), "");
    let agent = a.start();
    a.exec(&agent, "INSERT INTO todos (id, title) VALUES ('x', 'kept')");
    let backup = dir.path().join("backup.db");
    // Backup works while the agent runs.
    let out = a.cli(&["backup", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = a.cli(&["backup", backup.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).starts_with("Error: ") && stderr(&again).contains("already exists"));
    // Restore refuses while the agent holds the database.
    let out = a.cli(&["restore", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("stop the agent first"),
        "{}",
        stderr(&out)
    );
    agent.stop();

    let b = Node::new(&dir.path().join("b"), "");
    let out = b.cli(&["restore", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let agent_b = b.start();
    let out = b.cli(&[
        "--api-addr",
        &agent_b.api.to_string(),
        "query",
        "SELECT title FROM todos",
    ]);
    assert_eq!(stdout(&out), "kept\n");
}

#[test]
fn bad_config_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[db]\npath = \"x.db\"\nschema_pathz = []\n").unwrap();
    let out = Command::new(&*BIN)
        .args(["-c", cfg.to_str().unwrap(), "agent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("Error: ") && err.contains("bad.toml") && err.contains("schema_pathz"),
        "{err}"
    );
    let missing = Command::new(&*BIN)
        .args(["-c", "/nonexistent/config.toml", "agent"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("/nonexistent/config.toml"));
    // A second agent on the same database is refused.
    let node = Node::new(dir.path(), "");
    let _agent = node.start();
    let out = Command::new(&*BIN)
        .args(["-c", node.config.to_str().unwrap(), "agent"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("in use by a running agent"),
        "{}",
        stderr(&out)
    );
}

/// The text between `start` and the next `end` after it in README.md.
fn readme_block(start: &str, end: &str) -> String {
    let readme = include_str!("../README.md");
    let from = readme
        .find(start)
        .unwrap_or_else(|| panic!("README lacks {start:?}"))
        + start.len();
    let len = readme[from..].find(end).expect("block end");
    readme[from..from + len].to_string()
}

/// An agent process killed when dropped (a failing test must not leave
/// agents holding fixed ports).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `corrosion [args] agent` in `dir`; returns it once its API
/// answers, with the lines it logged.
fn agent_in(dir: &std::path::Path, args: &[&str]) -> (Running, String) {
    let mut child = Command::new(&*BIN)
        .args(args)
        .arg("agent")
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok);
    for line in lines.by_ref() {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Starting public API server") || line.contains("Error") {
            break;
        }
    }
    // Keep draining so the agent never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (Running(child), seen)
}

/// `corrosion args...` run in `dir`: stdout, asserting success.
fn run_in(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(&*BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "corrosion {args:?}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn the_readme_quick_start_and_second_node_run_as_written() {
    // Node A on the embedded default (no config file), then README's
    // steps, then node B from the config README shows: the outputs README
    // promises. Fixed ports as README has them (8080/8081, 8787/8788,
    // 8600/8601).
    if std::path::Path::new("/etc/corrosion/config.toml").exists() {
        println!(
            "skipped: /etc/corrosion/config.toml exists (a real install takes the default path)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut a, seen) = agent_in(d, &[]);
    assert!(seen.contains("using the embedded default"), "{seen}");
    assert!(
        seen.contains("Starting public API server on tcp/127.0.0.1:8080"),
        "{seen}"
    );
    assert!(d.join("corrosion-data/state.db").exists());
    assert!(d.join("corrosion-data/schema/consul.sql").exists());
    let sql = readme_block("cat > corrosion-data/schema/todo.sql <<'SQL'\n", "SQL\n");
    std::fs::write(d.join("corrosion-data/schema/todo.sql"), sql).unwrap();
    run_in(d, &["reload"]);
    let out = run_in(d, &common::QUICK_START_EXEC);
    assert_eq!(out, "INFO corrosion: Rows affected: 1\n");
    assert_eq!(
        run_in(d, &["query", "SELECT * FROM todos;"]),
        "some-id|Write some Corrosion docs!|\n"
    );

    // Node B, its config exactly as README writes it.
    std::fs::create_dir_all(d.join("corrosion-b/schema")).unwrap();
    for f in ["todo.sql", "consul.sql"] {
        std::fs::copy(
            d.join("corrosion-data/schema").join(f),
            d.join("corrosion-b/schema").join(f),
        )
        .unwrap();
    }
    let b_config = readme_block("cat > corrosion-b/config.toml <<'TOML'\n", "TOML\n");
    std::fs::write(d.join("corrosion-b/config.toml"), b_config).unwrap();
    let b_args = ["-c", "corrosion-b/config.toml"];
    let (mut b, _) = agent_in(d, &b_args);
    let query_b = |sql: &str| run_in(d, &[b_args[0], b_args[1], "query", sql]);
    let limit = std::time::Duration::from_secs(15);
    common::await_some(limit, "B getting node A's row", || {
        (query_b("SELECT * FROM todos;") == "some-id|Write some Corrosion docs!|\n").then_some(())
    });
    let out = run_in(
        d,
        &[
            b_args[0],
            b_args[1],
            "exec",
            "--param",
            "other-id",
            "--param",
            "Show how broadcasts work",
            "INSERT INTO todos (id, title) VALUES (?, ?)",
        ],
    );
    assert_eq!(out, "INFO corrosion: Rows affected: 1\n");
    let want = "some-id|Write some Corrosion docs!|\nother-id|Show how broadcasts work|\n";
    common::await_some(limit, "A getting node B's row", || {
        (run_in(d, &["query", "SELECT * FROM todos;"]) == want).then_some(())
    });
    // Both Consul nodes in the catalog, from either agent.
    common::await_some(limit, "node-b in A's catalog", || {
        run_in(
            d,
            &["query", "SELECT node FROM consul_nodes ORDER BY node;"],
        )
        .contains("node-b\n")
        .then_some(())
    });
    for agent in [&mut a, &mut b] {
        let _ = Command::new("kill")
            .args(["-TERM", &agent.0.id().to_string()])
            .status();
        assert!(agent.0.wait().unwrap().success());
    }
}

#[test]
fn admin_socket_answers_ping_books_members_and_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let agent = node.start();
    node.exec(&agent, "INSERT INTO todos (id) VALUES ('a')");
    let sock = dir.path().join("admin.sock");
    assert_eq!(
        admin(&sock, r#"{"cmd":"ping"}"#),
        serde_json::json!({"ok": true, "result": "pong"})
    );
    let books = admin(&sock, r#"{"cmd":"books"}"#);
    assert_eq!(books["result"][&agent.actor]["head"], 1, "{books}");
    assert_eq!(
        admin(&sock, r#"{"cmd":"members"}"#)["result"],
        serde_json::json!([])
    );
    assert_eq!(
        admin(&sock, r#"{"cmd":"log_level","level":"debug"}"#)["ok"],
        true
    );
    let bad = admin(&sock, r#"{"cmd":"log_level","level":"[["}"#);
    assert_eq!(bad["ok"], false);
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("invalid log filter"),
        "{bad}"
    );
    let bad = admin(&sock, r#"{"cmd":"nope"}"#);
    assert!(
        bad["error"].as_str().unwrap().contains("bad request"),
        "{bad}"
    );
    agent.stop();
    assert!(!sock.exists(), "the socket is removed on a clean stop");
}

#[test]
fn sigterm_finishes_in_flight_writes_and_loses_no_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let agent = node.start();
    let url = agent.url("/v1/transactions");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) && i > 10_000 {
                        break;
                    }
                    let id = format!("w{w}-{i}");
                    let sql = serde_json::json!([["INSERT INTO todos (id) VALUES (?)", [id]]]);
                    match client.post(&url).json(&sql).send() {
                        Ok(r) if r.status().is_success() => acked.push(id),
                        _ => break, // the agent stopped listening
                    }
                }
                acked
            })
        })
        .collect();
    // Stop while writes are flowing: wait (bounded) until some have landed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let client = reqwest::blocking::Client::new();
    loop {
        let h: serde_json::Value = client
            .get(agent.url("/v1/health"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if h["head"].as_u64().unwrap() >= 50 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes are not landing"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    agent.stop(); // asserts a clean exit
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    let conn = rusqlite::Connection::open(&node.db).unwrap();
    for id in &acked {
        let n: i64 = conn
            .query_row("SELECT count(*) FROM todos WHERE id = ?", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "acknowledged write {id} lost");
    }
}

#[test]
fn json_logs_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("[log]\ncolors = false", "[log]\nformat = \"json\"");
    std::fs::write(&node.config, text).unwrap();
    let mut child = Command::new(&*BIN)
        .args(["-c", node.config.to_str().unwrap(), "agent"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first}: {e}"));
    assert_eq!(v["level"], "INFO");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("Starting Corrosion Agent"),
        "{v}"
    );
}

/// systemd's notify protocol as a `Type=notify` unit with `WatchdogSec=`
/// sees it: READY once serving, WATCHDOG pings, STOPPING on SIGTERM (a
/// datagram socket stands in for systemd, which is not PID 1 here).
#[test]
fn systemd_sees_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(common::binary())
        .args(["-c", node.config.to_str().unwrap(), "agent"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("no notification from the agent");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.contains("READY=1"), "{first:?}");
    assert!(first.contains("STATUS=serving"), "{first:?}");
    let mut pings = 0;
    while pings < 2 {
        let m = next();
        assert!(m.contains("WATCHDOG=1"), "{m:?}");
        pings += 1;
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    loop {
        let m = next();
        if m.contains("STOPPING=1") {
            break;
        }
        assert!(m.contains("WATCHDOG=1"), "unexpected {m:?}");
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn log_filter_and_sync_state_through_the_admin_socket() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    let agent = node.start();
    let out = node.cli(&["log", "set", "corrosion=debug,info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "INFO corrosion: log filter is now corrosion=debug,info"
    );
    agent.expect("log filter changed");
    let out = node.cli(&["log", "set", "corrosion=notalevel"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid log filter"),
        "{}",
        stderr(&out)
    );
    let out = node.cli(&["log", "reset"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "INFO corrosion: log filter is now info"
    );

    node.exec(&agent, "INSERT INTO todos (id, title) VALUES ('a', 'b')");
    let out = node.cli(&["sync", "state"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("ACTOR ID"), "{text}");
    let row = lines
        .find(|l| l.starts_with(&agent.actor))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..], ["1", "0", "0", "-"], "{row}");
    let out = node.cli(&["sync", "state", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[&agent.actor]["head"], 1);
}

/// The shipped systemd units pass `systemd-analyze verify` (with the
/// binary path pointed at the one under test: verify checks it exists) and
/// the service's exposure score stays "OK" (systemd is not PID 1 here, so
/// the units are checked offline, not started).
#[test]
fn shipped_systemd_units_verify() {
    let Ok(analyze) = which("systemd-analyze") else {
        panic!("systemd-analyze is not installed (scripts/test.sh installs systemd)");
    };
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    for (src, name) in [
        ("corrosion.service", "corrosion.service"),
        (
            "corrosion-template@.service",
            "corrosion-template@web.service",
        ),
    ] {
        let text = std::fs::read_to_string(root.join(src))
            .unwrap()
            .replace("/usr/bin/corrosion", BIN.as_str());
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(&analyze)
        .args(["security", "--offline=true"])
        .arg(dir.path().join("corrosion.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    println!("{line}");
    let score: f64 = line
        .split("corrosion.service:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(score <= 2.0, "{line}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    ["/usr/bin", "/bin", "/usr/sbin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or(())
}

/// Starts the agent on `config` with stdout and stderr piped (as under
/// systemd/journald), returns every line up to the API's start line, then
/// stops it.
fn startup_lines(config: &std::path::Path) -> Vec<String> {
    use std::io::BufRead;
    let mut child = Command::new(&*BIN)
        .args(["-c", config.to_str().unwrap(), "agent"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut lines = Vec::new();
    loop {
        let l = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no API start line in {lines:#?}"));
        let done = l.contains("Starting public API server");
        lines.push(l);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    lines
}

#[test]
fn logs_are_plain_without_colour_codes_off_a_terminal_and_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path(), "");
    // Colours on in the config, but stdout is a pipe (journald): none.
    node.replace_in_config("colors = false", "colors = true");
    let plain = startup_lines(&node.config);
    assert!(plain.len() >= 4, "{plain:#?}");
    for l in &plain {
        assert!(!l.contains('\u{1b}'), "colour codes off a terminal: {l:?}");
        assert!(
            l.contains(" INFO ") || l.contains(" WARN "),
            "not the plain format: {l:?}"
        );
    }
    // `[log] format = "json"`: one JSON object per line with the usual fields.
    node.replace_in_config("[log]\n", "[log]\nformat = \"json\"\n");
    let json = startup_lines(&node.config);
    let mut messages = Vec::new();
    for l in &json {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(v["timestamp"].is_string(), "{l}");
        assert!(v["level"].is_string(), "{l}");
        assert!(
            v["target"].as_str().is_some_and(|t| t.starts_with("corro")),
            "{l}"
        );
        messages.push(
            v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(
        messages.iter().any(|m| m.starts_with("Actor ID: ")),
        "{messages:#?}"
    );
    // A bad format is refused with the accepted values named.
    node.replace_in_config("format = \"json\"", "format = \"xml\"");
    let out = Command::new(&*BIN)
        .args(["-c", node.config.to_str().unwrap(), "agent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("xml") && err.contains("json"), "{err}");
}
