//! The shared process harness (`corro-testkit`), re-exported for the test
//! binaries of this crate.

#![allow(
    unused_imports,
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part"
)]

pub use corro_testkit::*;

/// The `corrosion` binary under test (see `corro_testkit::binary`).
pub static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| binary().to_string_lossy().into_owned());
