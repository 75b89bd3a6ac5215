//! The web UI in a real browser (Debian's chromium through chromedriver,
//! WebDriver): a 3-agent cluster's pages show what the API shows, change
//! without a reload when another agent registers a service, show a node
//! killed with `kill -9` as down, render a hostile service name as text
//! (no dialog opens), follow an insert in the SQL console's live mode; with
//! a token configured the UI asks for it, refuses a wrong one, and a KV
//! edit needs the token and a confirmation. Screenshots of each page go to
//! `target/ui-screenshots/`.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "test code")]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Agent, Node, await_some};
use corro_testkit::browser::Browser;
use serde_json::{Value, json};

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn ui_node(dir: &Path, seed: Option<&Agent>, name: &str, api_extra: &str, extra: &str) -> Node {
    let n = match seed {
        Some(s) => Node::joining(dir, s),
        None => Node::new(dir, api_extra),
    };
    n.with_consul_schema();
    n.append_config(&format!("[consul]\nnode_name = \"{name}\"\n{extra}\n"));
    n
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn register(agent: &Agent, body: Value) {
    let r = http()
        .put(agent.url("/v1/agent/service/register"))
        .json(&body)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
}

fn get_json(agent: &Agent, path: &str) -> Value {
    http().get(agent.url(path)).send().unwrap().json().unwrap()
}

fn shots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots")
}

/// Waits until the live part painted at least `n` times and holds `text`.
fn painted_with(b: &Browser, what: &str, text: &str) {
    let script = format!(
        "const m = document.querySelector('main'); return m && Number(m.dataset.paints || 0) >= 1 && m.textContent.includes({});",
        json!(text)
    );
    b.wait_js(what, Duration::from_secs(20), &script);
}

#[test]
fn pages_show_the_cluster_live_and_hostile_names_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("max.rhai"), "max=<%= key(\"app/config/max\") %>\n").unwrap();
    let tpl = format!(
        "[[template]]\nsource = \"{}\"\ndestination = \"{}\"\n",
        d.join("max.rhai").display(),
        d.join("max.txt").display()
    );
    let a = ui_node(&d.join("a"), None, "ui-a", "", "").start();
    let mut b = ui_node(&d.join("b"), Some(&a), "ui-b", "", "").start();
    let c_node = ui_node(
        &d.join("c"),
        Some(&a),
        "ui-c",
        "",
        &format!("http_addr = \"127.0.0.1:0\"\n{tpl}"),
    );
    c_node.enable_metrics();
    let c = c_node.start();
    register(
        &a,
        json!({"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1", "<b>bold</b>"],
               "Meta": {"team": "<script>alert(2)</script>"},
               "Check": {"TTL": "60s", "Status": "passing"}}),
    );
    register(
        &b,
        json!({"Name": "web", "ID": "web-2", "Port": 8081, "Tags": ["v2"],
               "Check": {"TTL": "60s"}}),
    );
    register(&b, json!({"Name": HOSTILE, "ID": "hostile", "Port": 81}));
    for (k, v) in [("app/config/max", "15"), ("app/name", "<i>x</i>")] {
        let r = http()
            .put(a.url(&format!("/v1/kv/{k}")))
            .body(v)
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }
    await_some(Duration::from_secs(20), "both services on C", || {
        let s = get_json(&c, "/v1/catalog/services");
        (s.get("web").is_some() && s.get(HOSTILE).is_some()).then_some(())
    });
    // Without a token the Consul listener serves the UI but not the SQL
    // console's routes (it is often reachable from further away).
    let consul: std::net::SocketAddr =
        await_some(Duration::from_secs(10), "C's Consul listener", || {
            let line = c.saw("Starting Consul-compatible API server on tcp/")?;
            line.rsplit("tcp/").next()?.trim().parse().ok()
        });
    let status = |r: reqwest::blocking::RequestBuilder| r.send().unwrap().status().as_u16();
    assert_eq!(
        status(http().get(format!("http://{consul}/ui/f/services"))),
        200
    );
    assert_eq!(
        status(
            http()
                .post(format!("http://{consul}/v1/queries"))
                .json(&json!("SELECT 1"))
        ),
        404
    );
    let browser = Browser::start(1280, 900);
    let ui = |p: &str| c.url(p);

    // Services: the names the catalog lists, the hostile one as text.
    browser.goto(&ui("/ui/services"));
    painted_with(&browser, "the services list", "web");
    let shown = browser.js(
        "return [...document.querySelectorAll('main tbody tr td:first-child a')].map(a => a.textContent).sort();",
        vec![],
    );
    let mut want: Vec<String> = get_json(&c, "/v1/catalog/services")
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    want.sort();
    assert_eq!(shown, json!(want));
    assert_eq!(
        browser.js(
            "return document.querySelectorAll('main img, main script, main b').length;",
            vec![]
        ),
        json!(0),
        "markup from a name or tag was interpreted"
    );
    assert_eq!(browser.alert_text(), None, "a dialog opened");
    browser.screenshot(&shots().join("services.png"));

    // Live: a service registered on A appears without a reload.
    browser.js("window.__sameDocument = 42; return 1;", vec![]);
    register(
        &a,
        json!({"Name": "late-arrival", "ID": "late-1", "Port": 9000}),
    );
    painted_with(&browser, "the new service on the open page", "late-arrival");
    assert_eq!(
        browser.js("return window.__sameDocument;", vec![]),
        json!(42)
    );

    // A service's page: every instance the health API shows, with checks.
    browser.goto(&ui("/ui/services/web"));
    painted_with(&browser, "the web service page", "web-2");
    let health = get_json(&c, "/v1/health/service/web");
    let text = browser.text("main");
    for e in health.as_array().unwrap() {
        for field in [&e["Node"]["Node"], &e["Service"]["ID"]] {
            assert!(text.contains(field.as_str().unwrap()), "{field} not shown");
        }
    }
    assert!(
        text.contains("<script>alert(2)</script>"),
        "meta shown as text"
    );
    assert_eq!(browser.alert_text(), None);
    browser.screenshot(&shots().join("service.png"));
    // Churn elsewhere does not re-render this page: 30 other services come
    // and their catalog changes wake its held request, but what it shows
    // (service web's index) did not move.
    let renders = || c.counter("corro_ui_renders_total");
    let before = renders();
    for i in 0..30 {
        register(&a, json!({"Name": format!("churn-{i}"), "Port": 7000 + i}));
    }
    await_some(Duration::from_secs(20), "the churn on C", || {
        get_json(&c, "/v1/catalog/services")
            .get("churn-29")
            .map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let rendered = renders() - before;
    assert!(
        rendered <= 1.0,
        "{rendered} renders of a page nothing changed on"
    );
    // The hostile service's own page (deep link, encoded name).
    let enc: String = HOSTILE
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    browser.goto(&ui(&format!("/ui/services/{enc}")));
    painted_with(&browser, "the hostile service's page", "hostile");
    assert_eq!(browser.text("main h1"), HOSTILE);
    assert_eq!(browser.alert_text(), None);

    // Nodes: the catalog's nodes, all alive.
    browser.goto(&ui("/ui/nodes"));
    painted_with(&browser, "the nodes list", "ui-b");
    let states = browser.js(
        "return Object.fromEntries([...document.querySelectorAll('main tr[data-node]')].map(r => [r.dataset.node, r.dataset.state]));",
        vec![],
    );
    assert_eq!(
        states,
        json!({"ui-a": "alive", "ui-b": "alive", "ui-c": "alive"})
    );
    browser.screenshot(&shots().join("nodes.png"));
    browser.goto(&ui("/ui/nodes/ui-a"));
    painted_with(&browser, "node ui-a", "web-1");
    browser.screenshot(&shots().join("node.png"));

    // KV: folders and a value.
    browser.goto(&ui("/ui/kv/app/"));
    painted_with(&browser, "the app/ folder", "config/");
    assert!(browser.text("main").contains("name"));
    browser.screenshot(&shots().join("kv-folder.png"));
    browser.goto(&ui("/ui/kv/app/name"));
    painted_with(&browser, "a KV value", "<i>x</i>");
    assert_eq!(
        browser.js("return document.querySelectorAll('main i').length;", vec![]),
        json!(0)
    );
    browser.screenshot(&shots().join("kv-value.png"));

    // Templates: C's template rendered with the key.
    browser.goto(&ui("/ui/templates"));
    painted_with(&browser, "the templates page", "rendered");
    assert!(browser.text("main").contains("max.rhai"));
    browser.screenshot(&shots().join("templates.png"));

    // Overview: three members alive.
    browser.goto(&ui("/ui/"));
    painted_with(&browser, "the overview", "This agent");
    let members = browser.text("#ov-members + ul");
    assert!(members.contains("3 alive"), "{members}");
    browser.screenshot(&shots().join("overview.png"));

    // SQL console, live: an insert on another agent shows up in place.
    browser.goto(&ui("/ui/sql"));
    browser.type_into("#sql-text", "SELECT name, port FROM consul_services");
    browser.click("#sql-live");
    browser.click("#sql-form button[type=submit]");
    browser.wait_js(
        "the subscription's first rows",
        Duration::from_secs(20),
        "return document.querySelector('#sql-result').dataset.ready === '1';",
    );
    assert!(browser.text("#sql-result").contains("late-arrival"));
    register(
        &a,
        json!({"Name": "sql-live-insert", "ID": "sql-1", "Port": 7000}),
    );
    browser.wait_js(
        "the insert in the live table",
        Duration::from_secs(20),
        "return document.querySelector('#sql-result tbody').textContent.includes('sql-live-insert');",
    );
    browser.screenshot(&shots().join("sql.png"));

    // kill -9 of B: down on the Nodes page without a reload.
    browser.goto(&ui("/ui/nodes"));
    painted_with(&browser, "the nodes list", "ui-b");
    b.child.kill().unwrap();
    let _ = b.child.wait();
    browser.wait_js(
        "ui-b down on the Nodes page",
        Duration::from_secs(30),
        "const r = document.querySelector('main tr[data-node=\"ui-b\"]'); return r && r.dataset.state === 'down';",
    );
    browser.screenshot(&shots().join("nodes-down.png"));

    // A phone-width window: no page scrolls sideways (tables scroll in
    // their own box).
    browser.resize(390, 844);
    for p in ["/ui/", "/ui/services", "/ui/services/web", "/ui/nodes"] {
        browser.goto(&ui(p));
        painted_with(&browser, p, "");
        let overflow = browser.js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        );
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{p} overflows by {overflow}px"
        );
    }
    browser.screenshot(&shots().join("service-phone.png"));
}

#[test]
fn with_a_token_the_ui_asks_for_it_refuses_a_wrong_one_and_writes_need_a_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let a = ui_node(
        dir.path(),
        None,
        "ui-t",
        "authz.bearer-token = \"s3cret\"",
        "http_addr = \"127.0.0.1:0\"",
    )
    .start();
    let put = |k: &str, v: &str| {
        http()
            .put(a.url(&format!("/v1/kv/{k}")))
            .bearer_auth("s3cret")
            .body(v.to_string())
            .send()
            .unwrap()
            .status()
    };
    assert!(put("app/mode?flags=42", "safe").is_success());
    // Shells and assets carry no data and need no token; fragments do.
    let shell = http().get(a.url("/ui/kv/app/mode")).send().unwrap();
    assert_eq!(shell.status(), 200);
    let csp = shell.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(
        http()
            .get(a.url("/ui/f/kv/app/mode"))
            .send()
            .unwrap()
            .status(),
        401
    );
    let with = http()
        .get(a.url("/ui/f/kv/app/mode"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(with.status(), 200);
    assert_eq!(http().get(a.url("/")).send().unwrap().url().path(), "/ui/");
    // The Consul listener serves the UI too, with the same token rules,
    // and the SQL console's read route.
    let consul: std::net::SocketAddr =
        await_some(Duration::from_secs(10), "the Consul listener", || {
            let line = a.saw("Starting Consul-compatible API server on tcp/")?;
            line.rsplit("tcp/").next()?.trim().parse().ok()
        });
    let on_consul = |p: &str| format!("http://{consul}{p}");
    assert_eq!(
        http()
            .get(on_consul("/ui/services"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http()
            .get(on_consul("/ui/f/services"))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http()
            .get(on_consul("/ui/f/services"))
            .header("X-Consul-Token", "s3cret")
            .send()
            .unwrap()
            .status(),
        200
    );
    let sql = |token: Option<&str>| {
        let mut r = http()
            .post(on_consul("/v1/queries"))
            .json(&json!("SELECT key FROM consul_kv"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!((sql(None), sql(Some("s3cret"))), (401, 200));

    let browser = Browser::start(1280, 900);
    browser.goto(&a.url("/ui/kv/app/mode"));
    let dialog_open = "return document.querySelector('#token-dialog').open;";
    browser.wait_js("the token prompt", Duration::from_secs(20), dialog_open);
    // Esc does not dismiss it (every request waits on it).
    browser.type_into("#token-input", "\u{e00c}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        browser.js(dialog_open, vec![]),
        json!(true),
        "Esc closed the token prompt"
    );
    browser.type_into("#token-input", "wrong");
    browser.click("#token-form button[type=submit]");
    browser.wait_js(
        "the refusal",
        Duration::from_secs(20),
        "return document.querySelector('#token-dialog').open && !document.querySelector('#token-error').hidden;",
    );
    browser.screenshot(&shots().join("token.png"));
    browser.type_into("#token-input", "s3cret");
    browser.click("#token-form button[type=submit]");
    painted_with(&browser, "the value with the token", "safe");
    // Edit: needs a confirmation; declining writes nothing.
    browser.click("button[data-action=kv-edit]");
    browser.wait_js(
        "the edit form",
        Duration::from_secs(10),
        "return !document.querySelector('#kv-edit').hidden && document.querySelector('#kv-edit-value').value === 'safe';",
    );
    browser.type_into("#kv-edit-value", "fast");
    browser.click("#kv-edit button[type=submit]");
    let asked = await_some(Duration::from_secs(10), "a confirmation", || {
        browser.alert_text()
    });
    assert!(asked.contains("app/mode"), "{asked}");
    browser.accept_alert();
    painted_with(&browser, "the new value", "fast");
    let raw = http()
        .get(a.url("/v1/kv/app/mode?raw"))
        .bearer_auth("s3cret")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(raw, "fast");
    // The edit kept the key's flags.
    let entry: Value = http()
        .get(a.url("/v1/kv/app/mode"))
        .bearer_auth("s3cret")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(entry[0]["Flags"], 42);
}
