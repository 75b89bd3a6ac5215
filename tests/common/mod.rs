//! The shared process harness (`corro-testkit`), re-exported for the test
//! binaries of this crate.

#![allow(
    unused_imports,
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part"
)]

pub use corro_testkit::*;

/// `PUT` `body` to `path` on `agent`: the status code and the body.
pub fn put_text(agent: &Agent, path: &str, body: &str) -> (u16, String) {
    let r = reqwest::blocking::Client::new()
        .put(agent.url(path))
        .body(body.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// The `corrosion` binary under test (see `corro_testkit::binary`).
pub static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| binary().to_string_lossy().into_owned());
