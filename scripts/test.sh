#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first, so it works on
# a fresh machine with only the Rust toolchain, Python and git.
set -euo pipefail
cd "$(dirname "$0")/.."

# SQLite itself is compiled in (rusqlite's bundled build). The tests also use
# real outside programs: the sqlite3 shell reads the agent's database as an
# operator would, and py-consul talks to the Consul-compatible API. Later
# features add their peers here (dig, nginx, haproxy).
if ! command -v sqlite3 >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq sqlite3
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq sqlite3
  fi
fi

# The real Consul client library the catalog API is tested with.
if ! python3 -c 'import consul' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check py-consul \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages py-consul
fi

cargo test --workspace --locked "$@"
