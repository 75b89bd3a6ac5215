#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first, so it works on
# a fresh machine with only the Rust toolchain, Python and git.
set -euo pipefail
cd "$(dirname "$0")/.."

# SQLite itself is compiled in (rusqlite's bundled build). The tests also use
# real outside programs: the sqlite3 shell reads the agent's database as an
# operator would, py-consul talks to the Consul-compatible API and dig asks
# the DNS responder, nginx and haproxy check the configs templates render,
# systemd-analyze checks the shipped units, chromium (driven by
# chromedriver) loads the web UI.
need=""
command -v sqlite3 >/dev/null || need="$need sqlite3"
command -v dig >/dev/null || need="$need dnsutils"
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need="$need nginx"
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need="$need haproxy"
command -v systemd-analyze >/dev/null || need="$need systemd"
# The packaging test (packaging/test.sh) checks and installs the packages.
command -v lintian >/dev/null || need="$need lintian"
command -v rpm >/dev/null || need="$need rpm"
# The web UI is tested in a real headless browser through WebDriver.
command -v chromium >/dev/null || need="$need chromium"
command -v chromedriver >/dev/null || [ -x /usr/lib/chromium/chromedriver ] || need="$need chromium-driver"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq $need
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq $need
  fi
fi

# The real Consul client library the catalog API is tested with.
if ! python3 -c 'import consul' 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq python3-pip
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq python3-pip
    fi
  fi
  python3 -m pip install --quiet --disable-pip-version-check py-consul \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages py-consul
fi

# The end-to-end suite (tests/, package corro-e2e) runs the built binary:
# build it first (cargo does not for another package's tests), together
# with every test target, so the binary and the tests share one resolution
# of dependency features. Built alone (`-p corrosion`) the binary's
# dependencies get fewer features than the tests' (syn, tokio, reqwest,
# quinn), and `cargo test` then compiled most of them a second time
# (about 5 minutes on a 2-core machine). The packages are built from
# `-p corrosion` with release features (packaging/build.sh).
step() {
  local start=$SECONDS rc=0
  "$@" || rc=$?
  echo "test.sh: '$*' took $((SECONDS - start)) s$([ $rc = 0 ] || echo ", failed ($rc)")" >&2
  return $rc
}
step cargo build --workspace --all-targets --locked
step cargo test --workspace --locked "$@"

# Build the .deb and .rpm and install, upgrade, remove and purge the .deb
# on this machine (as root; skipped otherwise).
step bash packaging/test.sh
