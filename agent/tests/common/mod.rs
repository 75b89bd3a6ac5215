//! The shared process harness (`corro-testkit`), re-exported for the test
//! binaries of this crate.

#![allow(
    unused_imports,
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part"
)]

pub use corro_testkit::*;

/// The binary cargo built for these tests (the harness finds the same one).
pub const BIN: &str = env!("CARGO_BIN_EXE_corrosion");
