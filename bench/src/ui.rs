//! The web UI at fleet size, measured in a real headless browser (chromium
//! through chromedriver): one agent holding 5,000 services x 3 instances
//! (each with a passing check) on 500 nodes.
//!
//! - **Time to interactive** of `/ui/services` and `/ui/nodes`: from the
//!   navigation's start (`performance.timeOrigin`) to the first paint of
//!   the page's live part (the script's `data-painted-at`), cold load each
//!   trial. Baseline in the same run and browser: fetching and parsing
//!   `/v1/health/state/any` (every check, what a client-side UI such as
//!   Consul's downloads to draw the same summary).
//! - **Change to repaint**: a check's status flipped through
//!   `POST /v1/transactions` (the service shown first on page 1) or a node's
//!   address changed, to the browser's repaint of the open page
//!   (write start -> `data-painted-at`, one clock). Trials are 1.5 s apart:
//!   the page repaints at most once a second by design.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use corro_testkit::Agent;
use corro_testkit::browser::Browser;
use serde_json::json;

use crate::consul::{discovery_node, post};

#[derive(Args)]
pub(crate) struct UiArgs {
    #[arg(long, default_value_t = 5000)]
    services: u32,
    #[arg(long, default_value_t = 500)]
    nodes: u32,
    #[arg(long, default_value_t = 10)]
    trials: usize,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn load(agent: &Agent, services: u32, nodes: u32) -> anyhow::Result<()> {
    let actor =
        reqwest::blocking::get(agent.url("/v1/health"))?.json::<serde_json::Value>()?["actor_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    let s = format!(
        "WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < {}), n(y) AS (VALUES (0), (1), (2))",
        services - 1
    );
    post(
        agent,
        json!([
            format!(
                "INSERT INTO consul_nodes (node, actor_id, address, datacenter) WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < {}) SELECT 'node-' || i, '{actor}', '10.1.' || (i / 250) || '.' || (i % 250), 'dc1' FROM k",
                nodes - 1
            ),
            format!(
                "INSERT INTO consul_services (node, id, name, tags, port) {s} SELECT 'node-' || ((x * 3 + y) % {nodes}), 'svc-' || x || '-' || y, 'svc-' || x, '[\"v1\",\"zone-' || y || '\"]', 8000 + y FROM s, n"
            ),
            format!(
                "INSERT INTO consul_checks (node, id, service_id, service_name, name, status, output) {s} SELECT 'node-' || ((x * 3 + y) % {nodes}), 'service:svc-' || x || '-' || y, 'svc-' || x || '-' || y, 'svc-' || x, 'check', 'passing', 'HTTP GET: 200 OK' FROM s, n"
            ),
        ]),
    )
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}

/// Cold load of `url` until the live part painted: ms from navigation start.
fn tti(b: &Browser, url: &str) -> f64 {
    b.goto("about:blank");
    b.goto(url);
    b.wait_js(
        url,
        Duration::from_secs(30),
        "const m = document.querySelector('main'); return m && m.dataset.paintedAt ? Number(m.dataset.paintedAt) - performance.timeOrigin : null;",
    )
    .as_f64()
    .unwrap_or(f64::NAN)
}

fn painted_at(b: &Browser) -> f64 {
    b.js(
        "return Number(document.querySelector('main').dataset.paintedAt || 0);",
        vec![],
    )
    .as_f64()
    .unwrap_or(0.0)
}

/// Writes with `write`, then waits for the open page's next repaint;
/// ms from the write's start.
fn change_to_repaint(
    b: &Browser,
    trials: usize,
    mut write: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..trials {
        std::thread::sleep(Duration::from_millis(1500));
        let before = painted_at(b);
        let t0 = now_ms();
        write(i)?;
        let script = format!(
            "const t = Number(document.querySelector('main').dataset.paintedAt || 0); return t > {before} ? t : null;"
        );
        let at = b
            .wait_js("a repaint", Duration::from_secs(10), &script)
            .as_f64()
            .unwrap_or(f64::NAN);
        out.push(at - t0);
    }
    Ok(out)
}

pub(crate) fn run(a: UiArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = discovery_node(&dir.path().join("a"), "bench", None).start();
    load(&agent, a.services, a.nodes)?;
    // Until the catalog holds them all (every service, and the agent's).
    let want = a.services as usize;
    let loaded = std::time::Instant::now();
    loop {
        let n = reqwest::blocking::get(agent.url("/v1/catalog/services"))?
            .json::<serde_json::Map<String, serde_json::Value>>()?
            .len();
        if n >= want {
            break;
        }
        anyhow::ensure!(
            loaded.elapsed() < Duration::from_secs(120),
            "services never loaded ({n})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "loaded {} services x 3 instances on {} nodes",
        a.services, a.nodes
    );
    let b = Browser::start(1280, 900);
    // Warm-up (the summary is computed once per catalog index).
    tti(&b, &agent.url("/ui/services"));
    let services: Vec<f64> = (0..a.trials)
        .map(|_| tti(&b, &agent.url("/ui/services")))
        .collect();
    let nodes: Vec<f64> = (0..a.trials)
        .map(|_| tti(&b, &agent.url("/ui/nodes")))
        .collect();
    // Baseline: what a client-side UI downloads for the same summary.
    let baseline: Vec<f64> = (0..a.trials)
        .map(|_| {
            b.js(
                "window.__t = null; const s = performance.now(); fetch('/v1/health/state/any').then(r => r.json()).then(j => { window.__n = j.length; window.__t = performance.now() - s; }); return 1;",
                vec![],
            );
            b.wait_js("the baseline fetch", Duration::from_secs(30), "return window.__t;")
                .as_f64()
                .unwrap_or(f64::NAN)
        })
        .collect();
    // Change to repaint on the open services page: flip the first shown
    // service's first check.
    b.goto(&agent.url("/ui/services"));
    tti(&b, &agent.url("/ui/services"));
    let svc = change_to_repaint(&b, a.trials, |i| {
        let status = if i % 2 == 0 { "critical" } else { "passing" };
        post(
            &agent,
            json!([[
                "UPDATE consul_checks SET status = ? WHERE id = 'service:svc-0-0'",
                [status]
            ]]),
        )
    })?;
    tti(&b, &agent.url("/ui/nodes"));
    let node = change_to_repaint(&b, a.trials, |i| {
        post(
            &agent,
            json!([[
                "UPDATE consul_nodes SET address = ? WHERE node = 'node-0'",
                [format!("10.9.9.{}", i % 250)]
            ]]),
        )
    })?;
    let (s50, s99) = stats(services);
    let (n50, n99) = stats(nodes);
    let (b50, b99) = stats(baseline);
    let (c50, c99) = stats(svc);
    let (d50, d99) = stats(node);
    println!(
        "UI at {} services x 3 instances, {} nodes ({} trials each, headless chromium)",
        a.services, a.nodes, a.trials
    );
    println!("| measure | p50 ms | p99 ms | target |");
    println!("|---|---|---|---|");
    println!("| /ui/services time to interactive | {s50:.0} | {s99:.0} | < 1000 |");
    println!("| /ui/nodes time to interactive | {n50:.0} | {n99:.0} | < 1000 |");
    println!(
        "| baseline: fetch + parse /v1/health/state/any ({} checks) | {b50:.0} | {b99:.0} | |",
        3 * a.services
    );
    println!(
        "| services TTI / baseline | {:.2} | {:.2} | |",
        s50 / b50,
        s99 / b99
    );
    println!("| check flip -> services page repaint | {c50:.0} | {c99:.0} | < 1000 |");
    println!("| node change -> nodes page repaint | {d50:.0} | {d99:.0} | < 1000 |");
    println!("agent RSS after the run: {} MiB", agent.rss_kb() / 1024);
    Ok(())
}
