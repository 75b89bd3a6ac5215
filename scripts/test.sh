#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first, so it works on
# a fresh machine with only the Rust toolchain, Python and git.
set -euo pipefail
cd "$(dirname "$0")/.."

# SQLite itself is compiled in (rusqlite's bundled build). The tests also use
# real outside programs: the sqlite3 shell reads the agent's database as an
# operator would. Later features add their peers here (dig, nginx, haproxy,
# py-consul).
if ! command -v sqlite3 >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq sqlite3
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq sqlite3
  fi
fi

cargo test --workspace --locked "$@"
