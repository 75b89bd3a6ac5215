//! A real headless browser for the UI tests and benchmarks: Debian's
//! `chromium` driven by `chromedriver` (started on a free loopback port)
//! through WebDriver ([`fantoccini`]). Blocking methods, so tests can mix
//! browser steps with the blocking helpers that drive agents.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// One browser session (its chromedriver is killed on drop).
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless chromium window `width` x
    /// `height`. Panics with the reason when either is missing
    /// (scripts/test.sh installs `chromium` and `chromium-driver`).
    pub fn start(width: u32, height: u32) -> Browser {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chromedriver is not installed (apt-get install chromium-driver)");
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--no-first-run",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = rt.block_on(async {
            loop {
                match ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
                {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => {
                        panic!("no WebDriver session from chromedriver: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Browser {
            rt,
            client: Some(client),
            driver,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    pub fn goto(&self, url: &str) {
        self.rt
            .block_on(self.c().goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and
    /// returns what it returns.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.c().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than `null`/`false`
    /// (panics after `limit`, naming `what`).
    pub fn wait_js(&self, what: &str, limit: Duration, script: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.js(script, vec![]);
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The first element matching `css` (panics when none).
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// The text of the first element matching `css` (panics when none).
    pub fn text(&self, css: &str) -> String {
        self.rt
            .block_on(async { self.find(css).await.text().await.unwrap_or_default() })
    }

    /// Types `text` into the element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let e = self.find(css).await;
            e.clear().await.ok();
            e.send_keys(text)
                .await
                .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
        })
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) {
        self.rt.block_on(async {
            self.find(css)
                .await
                .click()
                .await
                .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
        })
    }

    /// The text of an open `alert()`/`confirm()` dialog, if one is open.
    pub fn alert_text(&self) -> Option<String> {
        self.rt.block_on(self.c().get_alert_text()).ok()
    }

    /// Accepts an open `confirm()`/`prompt()` dialog.
    pub fn accept_alert(&self) {
        self.rt
            .block_on(self.c().accept_alert())
            .unwrap_or_else(|e| panic!("no dialog to accept: {e}"));
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .rt
            .block_on(self.c().screenshot())
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("writing the screenshot");
    }

    /// Sets the window size (for the phone-width checks).
    pub fn resize(&self, width: u32, height: u32) {
        self.rt
            .block_on(self.c().set_window_size(width, height))
            .unwrap_or_else(|e| panic!("resize: {e}"));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
