//! Templates through the real binary: the reference's `todos.rhai`
//! walkthrough with `corrosion template` and two agents, `[[template]]`
//! blocks rendered by the agent itself (quiescence, unchanged output,
//! commands and their timeout, render errors, file edits), `--once`, limits,
//! and real nginx and haproxy configs rendered from the discovery helpers
//! and checked by `nginx -t` and `haproxy -c`.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, Node, await_some};

/// The reference's template, as the book prints it.
const TODOS_RHAI: &str = r#"<% for todo in sql("SELECT title, completed_at FROM todos") { %>
[<% if todo.completed_at.is_null() { %> <% } else { %>X<% } %>] <%= todo.title %>
<% } %>
"#;

/// Waits until `path` holds exactly `want`.
fn await_file(path: &Path, want: &str) {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        last = std::fs::read_to_string(path).unwrap_or(last);
        if last == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became {want:?}; last {last:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A `corrosion template` process, killed on drop.
struct TemplateProcess(Child);

impl TemplateProcess {
    fn start(node: &Node, cwd: &Path, args: &[&str]) -> TemplateProcess {
        let child = Command::new(common::binary())
            .arg("-c")
            .arg(&node.config)
            .arg("template")
            .args(args)
            .current_dir(cwd)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        TemplateProcess(child)
    }
}

impl Drop for TemplateProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exec_at(agent: &Agent, sql: &str) {
    let r = reqwest::blocking::Client::new()
        .post(agent.url("/v1/transactions"))
        .json(&serde_json::json!([sql]))
        .timeout(Duration::from_secs(10))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{sql}: {}", r.status());
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn todos_walkthrough_renders_byte_for_byte_and_follows_writes_on_another_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let node_a = Node::new(&tmp.path().join("a"), "");
    let a = node_a.start();
    let node_b = Node::joining(&tmp.path().join("b"), &a);
    let b = node_b.start();
    let cli = |node: &Node, agent: &Agent, args: &[&str]| {
        let api = agent.api.to_string();
        let mut full = vec!["--api-addr", api.as_str()];
        full.extend_from_slice(args);
        let out = node.cli(&full);
        assert!(out.status.success(), "{}", common::stderr(&out));
        assert_eq!(
            common::stdout(&out).trim(),
            "INFO corrosion: Rows affected: 1"
        );
    };
    cli(&node_a, &a, &common::QUICK_START_EXEC);
    let b_cli = |args: &[&str]| cli(&node_b, &b, args);
    b_cli(&[
        "exec",
        "--param",
        "some-id-2",
        "--param",
        "Show how broadcasts work",
        "INSERT INTO todos (id, title) VALUES (?, ?)",
    ]);
    await_some(Duration::from_secs(10), "both rows on A", || {
        (node_a.query(&a, "SELECT count(*) FROM todos").trim() == "2").then_some(())
    });

    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("todos.rhai"), TODOS_RHAI).unwrap();
    let _tpl = TemplateProcess::start(
        &node_a,
        &work,
        &["--api-addr", &a.api.to_string(), "./todos.rhai:todos.txt"],
    );
    let out = work.join("todos.txt");
    await_file(
        &out,
        "[ ] Write some Corrosion docs!\n[ ] Show how broadcasts work\n",
    );

    b_cli(&[
        "exec",
        "--param",
        "some-id-3",
        "--param",
        "Hello from a template!",
        "INSERT INTO todos (id, title) VALUES (?, ?)",
    ]);
    await_file(
        &out,
        "[ ] Write some Corrosion docs!\n[ ] Show how broadcasts work\n[ ] Hello from a template!\n",
    );
    let updated = node_b.cli(&[
        "--api-addr",
        &b.api.to_string(),
        "exec",
        "UPDATE todos SET completed_at = 1234567890",
    ]);
    assert_eq!(
        common::stdout(&updated).trim(),
        "INFO corrosion: Rows affected: 3"
    );
    await_file(
        &out,
        "[X] Write some Corrosion docs!\n[X] Show how broadcasts work\n[X] Hello from a template!\n",
    );
    b_cli(&["exec", "DELETE FROM todos WHERE id = 'some-id-2'"]);
    await_file(
        &out,
        "[X] Write some Corrosion docs!\n[X] Hello from a template!\n",
    );
    drop(b);
}

/// A node with `[[template]]` blocks (`blocks` is TOML).
fn template_node(dir: &Path, blocks: &str) -> (Node, Agent) {
    let node = Node::new(dir, "");
    node.append_config(blocks);
    let agent = node.start();
    (node, agent)
}

#[test]
fn a_burst_of_writes_renders_few_times_and_the_last_render_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("count.rhai"),
        "n=<%= sql(\"SELECT count(*) AS n FROM todos\")[0].n %>\n",
    )
    .unwrap();
    let (_node, agent) = template_node(
        dir,
        &format!(
            "[[template]]\nsource = \"{src}\"\ndestination = \"{dst}\"\ncommand = \"echo r >> {log}\"\nwait = \"300ms:3s\"\n",
            src = dir.join("count.rhai").display(),
            dst = dir.join("count.txt").display(),
            log = dir.join("renders.log").display(),
        ),
    );
    let out = dir.join("count.txt");
    await_file(&out, "n=0\n");
    let log = dir.join("renders.log");
    await_some(Duration::from_secs(10), "first command", || {
        (lines(&log) == 1).then_some(())
    });
    for i in 0..100 {
        exec_at(
            &agent,
            &format!("INSERT INTO todos (id, title) VALUES ('burst-{i}', 't')"),
        );
    }
    await_file(&out, "n=100\n");
    // Let any render still pending finish before counting.
    std::thread::sleep(Duration::from_secs(1));
    let renders = lines(&log) - 1;
    assert!(
        (1..=5).contains(&renders),
        "100 writes caused {renders} rewrites"
    );
}

#[test]
fn unchanged_output_is_not_rewritten_and_runs_no_command() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("open.rhai"),
        "open=<%= sql(\"SELECT count(*) AS n FROM todos WHERE completed_at IS NULL\")[0].n %>\n",
    )
    .unwrap();
    let (_node, agent) = template_node(
        dir,
        &format!(
            "[[template]]\nsource = \"{src}\"\ndestination = \"{dst}\"\ncommand = \"echo r >> {log}\"\nwait = \"50ms\"\nperms = \"0640\"\nbackup = true\n",
            src = dir.join("open.rhai").display(),
            dst = dir.join("open.txt").display(),
            log = dir.join("renders.log").display(),
        ),
    );
    let out = dir.join("open.txt");
    await_file(&out, "open=0\n");
    let log = dir.join("renders.log");
    await_some(Duration::from_secs(10), "first command", || {
        (lines(&log) == 1).then_some(())
    });
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(&out).unwrap();
    assert_eq!(before.mode() & 0o777, 0o640);
    // A change to the table that leaves the output as it was.
    exec_at(
        &agent,
        "INSERT INTO todos (id, title, completed_at) VALUES ('done', 't', 1)",
    );
    // Nothing to await: the absence of a rewrite is the point.
    std::thread::sleep(Duration::from_millis(800));
    let after = std::fs::metadata(&out).unwrap();
    assert_eq!(before.ino(), after.ino(), "the file was replaced");
    assert_eq!(lines(&log), 1, "the command ran for unchanged output");
    // A change that alters it: rewritten, backed up, command run.
    exec_at(&agent, "INSERT INTO todos (id, title) VALUES ('open', 't')");
    await_file(&out, "open=1\n");
    await_some(Duration::from_secs(10), "second command", || {
        (lines(&log) == 2).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(dir.join("open.txt.bak")).unwrap(),
        "open=0\n"
    );
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o640);
}

#[test]
fn a_command_past_its_timeout_is_killed_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("t.rhai"), "static\n").unwrap();
    let (_node, agent) = template_node(
        dir,
        &format!(
            "[[template]]\nsource = \"{src}\"\ndestination = \"{dst}\"\ncommand = \"sleep 30\"\ncommand_timeout = \"300ms\"\n",
            src = dir.join("t.rhai").display(),
            dst = dir.join("t.txt").display(),
        ),
    );
    let line = agent.expect("command timed out");
    assert!(line.contains("sleep 30"), "{line}");
}

#[test]
fn a_render_error_keeps_the_last_good_file_and_an_edit_recompiles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("t.rhai");
    std::fs::write(
        &src,
        "<% for t in sql(\"SELECT title FROM todos\") { %><%= t.title %>\n<% } %>",
    )
    .unwrap();
    let (_node, agent) = template_node(
        dir,
        &format!(
            "[[template]]\nsource = \"{src}\"\ndestination = \"{dst}\"\nwait = \"50ms\"\n",
            src = src.display(),
            dst = dir.join("t.txt").display(),
        ),
    );
    let out = dir.join("t.txt");
    exec_at(
        &agent,
        "INSERT INTO todos (id, title) VALUES ('1', 'first')",
    );
    await_file(&out, "first\n");
    // An edit that reads a column the query does not return, saved the
    // way some editors do: truncated, then written a moment later. The
    // empty file in between is never compiled (it would render "").
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        f.write_all(
            b"header\n<% for t in sql(\"SELECT title FROM todos\") { %><%= t.nope %>\n<% } %>",
        )
        .unwrap();
    }
    let line = agent.expect("render failed");
    assert!(line.contains("line=2"), "{line}");
    assert!(line.contains("nope"), "{line}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "first\n");
    // A data change retries and still fails; the file stays.
    exec_at(
        &agent,
        "INSERT INTO todos (id, title) VALUES ('2', 'second')",
    );
    agent.expect("render failed");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "first\n");
    // A syntax error in an edit: logged, the last good file stays.
    std::fs::write(&src, "<% if true { %>").unwrap();
    agent.expect("does not compile");
    // Fixed: rendered again.
    std::fs::write(
        &src,
        "<% for t in sql(\"SELECT title FROM todos\") { %>* <%= t.title %>\n<% } %>",
    )
    .unwrap();
    await_file(&out, "* first\n* second\n");
}

#[test]
fn once_renders_and_exits_and_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::new(tmp.path(), "");
    let agent = node.start();
    exec_at(&agent, "INSERT INTO todos (id, title) VALUES ('1', 'one')");
    let dir = tmp.path();
    std::fs::write(dir.join("ok.rhai"), TODOS_RHAI).unwrap();
    std::fs::write(dir.join("loop.rhai"), "<% loop { } %>").unwrap();
    let api = agent.api.to_string();
    let out = node.cli(&[
        "--api-addr",
        &api,
        "template",
        "--once",
        &format!(
            "{}:{}",
            dir.join("ok.rhai").display(),
            dir.join("ok.txt").display()
        ),
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("ok.txt")).unwrap(),
        "[ ] one\n"
    );
    // A runaway loop is stopped by the operation limit.
    let t = Instant::now();
    let out = node.cli(&[
        "--api-addr",
        &api,
        "template",
        "-o",
        &format!(
            "{}:{}",
            dir.join("loop.rhai").display(),
            dir.join("loop.txt").display()
        ),
    ]);
    assert!(!out.status.success());
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(text.contains("operations"), "{text}");
    assert!(!dir.join("loop.txt").exists());
    assert!(t.elapsed() < Duration::from_secs(60));
    // The agent is down: no file, an error, a non-zero exit.
    drop(agent);
    let out = node.cli(&[
        "--api-addr",
        &api,
        "template",
        "--once",
        &format!(
            "{}:{}",
            dir.join("ok.rhai").display(),
            dir.join("down.txt").display()
        ),
    ]);
    assert!(!out.status.success());
    assert!(!dir.join("down.txt").exists());
}

const NGINX_TPL: &str = r#"# rendered by corrosion from the discovery catalog
events {}
http {
    access_log off;
    upstream web {
<% let web = service("web"); %>
<% if web.is_empty() { %>
        server 127.0.0.1:9 down;
<% } %>
<% for s in web { %>
        server <%= s.address %>:<%= s.port %><% if s.tags.contains("backup") { %> backup<% } %>;
<% } %>
    }
    server {
        listen 127.0.0.1:18080;
        location / { proxy_pass http://web; }
    }
}
"#;

const HAPROXY_TPL: &str = r#"global
    log stdout format raw local0
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:18081
    default_backend web
backend web
    balance roundrobin
<% for s in service("web") { %>
    server <%= s.node %>-<%= s.id %> <%= s.address %>:<%= s.port %> check<% if s.tags.contains("backup") { %> backup<% } %>
<% } %>
"#;

fn program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed (scripts/test.sh installs it)");
}

fn nginx_accepts(conf: &Path) {
    let out = Command::new(program("nginx"))
        .args(["-t", "-q", "-c"])
        .arg(conf)
        .args(["-g", "error_log stderr; pid /dev/null;"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t refused:\n{}\n{}",
        std::fs::read_to_string(conf).unwrap(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn haproxy_accepts(conf: &Path) {
    let out = Command::new(program("haproxy"))
        .args(["-c", "-q", "-f"])
        .arg(conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haproxy -c refused:\n{}\n{}{}",
        std::fs::read_to_string(conf).unwrap(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `path` contains every `want` line and none of `unwanted`.
fn await_servers(path: &Path, want: &[&str], unwanted: &[&str]) -> String {
    await_some(
        Duration::from_secs(20),
        &format!("{} servers", path.display()),
        || {
            let text = std::fs::read_to_string(path).ok()?;
            (want.iter().all(|w| text.contains(w)) && !unwanted.iter().any(|u| text.contains(u)))
                .then_some(text)
        },
    )
}

#[test]
fn nginx_and_haproxy_configs_follow_instances_and_their_health() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("nginx.rhai"), NGINX_TPL).unwrap();
    std::fs::write(dir.join("haproxy.rhai"), HAPROXY_TPL).unwrap();
    let node = Node::new(dir, "");
    node.with_consul_schema();
    node.append_config(&format!(
        "[consul]\nnode_name = \"lb-host\"\n\n[[template]]\nsource = \"{d}/nginx.rhai\"\ndestination = \"{d}/nginx.conf\"\nwait = \"50ms\"\n\n[[template]]\nsource = \"{d}/haproxy.rhai\"\ndestination = \"{d}/haproxy.cfg\"\nwait = \"50ms\"\n",
        d = dir.display()
    ));
    let agent = node.start();
    // A second agent writes the instances: they replicate to the first.
    let other = Node::joining(&dir.join("other"), &agent);
    other.with_consul_schema();
    let writer = other.start();
    let nginx = dir.join("nginx.conf");
    let haproxy = dir.join("haproxy.cfg");
    let text = await_servers(&nginx, &["server 127.0.0.1:9 down;"], &[]);
    assert!(!text.contains("\n\n\n"), "{text}");
    nginx_accepts(&nginx);
    haproxy_accepts(&haproxy);

    let add = |id: &str, addr: &str, tags: &str| {
        exec_at(
            &writer,
            &format!(
                "INSERT INTO consul_services (node, id, name, port, address, tags, source) VALUES ('lb-host', '{id}', 'web', 8080, '{addr}', '{tags}', 'test')"
            ),
        )
    };
    add("web-1", "10.0.0.1", "[]");
    add("web-2", "10.0.0.2", "[]");
    // A conditional at the end of a server line keeps one server per line.
    add("web-3", "10.0.0.3", "[\"backup\"]");
    let text = await_servers(
        &nginx,
        &[
            "server 10.0.0.1:8080;",
            "server 10.0.0.2:8080;",
            "server 10.0.0.3:8080 backup;",
        ],
        &["down;"],
    );
    assert!(
        text.contains("    upstream web {\n        server 10.0.0.1:8080;\n        server 10.0.0.2:8080;\n        server 10.0.0.3:8080 backup;\n    }\n"),
        "{text}"
    );
    nginx_accepts(&nginx);
    let text = await_servers(
        &haproxy,
        &[
            "server lb-host-web-1 10.0.0.1:8080 check\n",
            "server lb-host-web-2 10.0.0.2:8080 check\n",
            "server lb-host-web-3 10.0.0.3:8080 check backup\n",
        ],
        &[],
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .count(),
        3,
        "{text}"
    );
    haproxy_accepts(&haproxy);
    exec_at(&writer, "DELETE FROM consul_services WHERE id = 'web-3'");

    // web-1 turns critical: it leaves both configs.
    exec_at(
        &writer,
        "INSERT INTO consul_checks (node, id, service_id, service_name, name, status, source) VALUES ('lb-host', 'web-1-http', 'web-1', 'web', 'http', 'critical', 'test')",
    );
    await_servers(&nginx, &["server 10.0.0.2:8080;"], &["10.0.0.1"]);
    await_servers(&haproxy, &["10.0.0.2:8080"], &["10.0.0.1"]);
    nginx_accepts(&nginx);
    haproxy_accepts(&haproxy);

    // web-2 is removed, web-1 passes again.
    exec_at(&writer, "DELETE FROM consul_services WHERE id = 'web-2'");
    exec_at(
        &writer,
        "UPDATE consul_checks SET status = 'passing' WHERE id = 'web-1-http'",
    );
    await_servers(&nginx, &["server 10.0.0.1:8080;"], &["10.0.0.2"]);
    await_servers(&haproxy, &["10.0.0.1:8080"], &["10.0.0.2"]);
    nginx_accepts(&nginx);
    haproxy_accepts(&haproxy);
}

#[test]
fn the_first_render_of_a_joining_agent_holds_the_whole_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seed_node = Node::new(&dir.join("seed"), "");
    let seed = seed_node.start();
    let rows: Vec<String> = (0..2000)
        .map(|i| format!("INSERT INTO todos (id, title) VALUES ('r{i}', 't')"))
        .collect();
    for chunk in rows.chunks(100) {
        // One version per row: the joiner has many versions to catch up on.
        for sql in chunk {
            exec_at(&seed, sql);
        }
    }
    std::fs::write(
        dir.join("count.rhai"),
        "n=<%= sql(\"SELECT count(*) AS n FROM todos\")[0].n %>\n",
    )
    .unwrap();
    let joiner = Node::joining(&dir.join("joiner"), &seed);
    joiner.append_config(&format!(
        "[[template]]\nsource = \"{d}/count.rhai\"\ndestination = \"{d}/count.txt\"\ncommand = \"cat {d}/count.txt >> {d}/renders.log\"\n",
        d = dir.display()
    ));
    let _agent = joiner.start();
    await_file(&dir.join("count.txt"), "n=2000\n");
    // The shell creates the log before `cat` writes to it: wait for a line.
    let log = await_some(Duration::from_secs(10), "the command's log", || {
        std::fs::read_to_string(dir.join("renders.log"))
            .ok()
            .filter(|l| l.ends_with('\n'))
    });
    assert_eq!(
        log.lines().next(),
        Some("n=2000"),
        "the first render wrote a partial view: {log:?}"
    );
}

#[test]
fn the_template_command_sends_the_configured_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let node = Node::new(dir, "[api.authz]\nbearer-token = \"s3cret\"");
    let agent = node.start();
    std::fs::write(dir.join("t.rhai"), TODOS_RHAI).unwrap();
    let arg = format!(
        "{}:{}",
        dir.join("t.rhai").display(),
        dir.join("t.txt").display()
    );
    let api = agent.api.to_string();
    let out = node.cli(&["--api-addr", &api, "template", "--once", &arg]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(dir.join("t.txt").exists());
    // Without the token (no config): refused, nothing written.
    std::fs::remove_file(dir.join("t.txt")).unwrap();
    let out = Command::new(common::binary())
        .args(["-c", "/nonexistent/config.toml", "--api-addr", &api])
        .args(["template", "--once", &arg])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(text.contains("401") || text.contains("token"), "{text}");
    assert!(!dir.join("t.txt").exists());
}

#[test]
fn runaway_and_huge_queries_stop_at_the_render_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Endless rows: stopped at the first row past the limit, not read whole.
    std::fs::write(
        dir.join("rows.rhai"),
        "<%= sql(\"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c\").len() %>\n",
    )
    .unwrap();
    // One row that never comes: SQLite is stopped at the render's deadline.
    let slow = "<%= sql(\"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) AS n FROM c\")[0].n %>\n";
    std::fs::write(dir.join("slow.rhai"), slow).unwrap();
    let (node, agent) = template_node(
        dir,
        &format!(
            "[[template]]\nsource = \"{d}/rows.rhai\"\ndestination = \"{d}/rows.txt\"\n\n[[template]]\nsource = \"{d}/slow.rhai\"\ndestination = \"{d}/slow.txt\"\n",
            d = dir.display(),
        ),
    );
    let started = Instant::now();
    let line = agent.expect("more than 1000000 rows");
    assert!(line.contains("render failed"), "{line}");
    let line = agent.expect("still running at the render's time limit");
    assert!(line.contains("render failed"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!dir.join("rows.txt").exists() && !dir.join("slow.txt").exists());
    // The same through the API (`corrosion template --once`): the agent
    // stops the statement at the same deadline.
    let out = node.cli(&[
        "--api-addr",
        &agent.api.to_string(),
        "template",
        "--once",
        &format!("{d}/slow.rhai:{d}/cli.txt", d = dir.display()),
    ]);
    assert!(!out.status.success());
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(
        text.contains("time limit") || text.contains("timeout"),
        "{text}"
    );
}
