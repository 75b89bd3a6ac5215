//! The built `corrosion` binary: starts on a config, applies schema files,
//! re-applies them on SIGHUP, stops cleanly on SIGTERM; backup and restore
//! from the command line; bad config is one clear error line.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_corrosion");

struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        let mut child = Command::new(BIN)
            .args(["-c", config.to_str().unwrap(), "agent"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Agent { child, lines }
    }

    /// Waits (with a deadline) for a log line containing `needle`.
    fn expect(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    std::fs::write(
        dir.join("schema/todo.sql"),
        "CREATE TABLE todos (id BLOB NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER);",
    )
    .unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[db]\npath = \"{0}/state.db\"\nschema_paths = [\"{0}/schema\"]\n[gossip]\naddr = \"[::]:8787\"\nplaintext = true\n[api]\naddr = \"127.0.0.1:8080\"\n",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn agent_applies_schema_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let mut agent = Agent::start(&cfg);
    agent.expect("Starting Corrosion Agent");
    let actor = agent.expect("Actor ID: ");
    assert_eq!(actor.rsplit("Actor ID: ").next().unwrap().trim().len(), 32);
    agent.expect("creating table 'todos'");
    agent.expect("Applied schema in");

    std::fs::write(
        dir.path().join("schema/more.sql"),
        "CREATE TABLE extra (id INTEGER NOT NULL PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    agent.signal("HUP");
    agent.expect("creating table 'extra'");
    // A bad change is reported and the agent keeps running on the old schema.
    std::fs::write(
        dir.path().join("schema/more.sql"),
        "CREATE TABLE extra (id INTEGER NOT NULL PRIMARY KEY);",
    )
    .unwrap();
    agent.signal("HUP");
    let line = agent.expect("schema not applied");
    assert!(line.contains("dropping column 'v'"), "{line}");

    agent.signal("TERM");
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Plain SQLite sees both tables.
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let mut stmt = conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '%corro%' ORDER BY name").unwrap();
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(tables, ["extra", "todos"]);
}

#[test]
fn backup_and_restore_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    {
        let agent = Agent::start(&cfg);
        agent.expect("Applied schema in");
    }
    let backup = dir.path().join("backup.db");
    let out = Command::new(BIN)
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "backup",
            backup.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(backup.exists());
    let again = Command::new(BIN)
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "backup",
            backup.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("Error:") && err.contains("already exists"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "restore",
            backup.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_config_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[db]\npath = \"x.db\"\nschema_pathz = []\n").unwrap();
    let out = Command::new(BIN)
        .args(["-c", cfg.to_str().unwrap(), "agent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Error: ") && err.contains("bad.toml") && err.contains("schema_pathz"),
        "{err}"
    );
    let missing = Command::new(BIN)
        .args(["-c", "/nonexistent/config.toml", "agent"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/config.toml"));
}

#[test]
fn agent_starts_on_the_embedded_default_without_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("agent")
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let agent = Agent { child, lines };
    if Path::new("/etc/corrosion/config.toml").exists() {
        return; // a real install on this machine: the default path is taken
    }
    agent.expect("using the embedded default");
    agent.expect("Applied schema in");
    assert!(dir.path().join("corrosion-data/state.db").exists());
}
