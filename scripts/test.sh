#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first, so it works on
# a fresh machine with only the Rust toolchain, Python and git.
set -euo pipefail
cd "$(dirname "$0")/.."

# Nothing beyond the Rust toolchain is needed yet: SQLite is compiled in
# (rusqlite's bundled build). Later features add their real peers here
# (dig, nginx, haproxy, py-consul).

cargo test --workspace --locked "$@"
