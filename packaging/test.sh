#!/usr/bin/env bash
# Builds the packages (debug build, for speed) and checks them as an
# operator would: metadata and file lists, lintian, then install with dpkg
# on this machine, run the agent as the `corrosion` user on the packaged
# config (systemd is not PID 1 here, so it is started directly), ask its API
# and DNS, reinstall over an edited config (kept), upgrade to a newer
# version (data, config and user kept), remove (data kept) and purge (data
# removed); then the same checks of the .rpm installed with rpm. Needs root;
# run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "packaging test: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "packaging test: skipped (needs root for dpkg -i)"; exit 0; }

# Packages left by an earlier run must not pass for this one's.
rm -rf target/packages
log=$(mktemp)
bash packaging/build.sh --dev >"$log" 2>&1 || { cat "$log" >&2; fail "building the packages failed"; }
grep -v "dev profile\|To enable debug" "$log" || true
rm -f "$log"
deb=$(ls target/packages/corrosion_*_amd64.deb)
rpm=$(ls target/packages/corrosion-*.rpm)

# Metadata and contents.
# (Outputs captured first: `grep -q` closing a pipe early would fail the
# pipeline under pipefail.)
info=$(dpkg-deb -I "$deb")
files=$(dpkg-deb -c "$deb")
grep -q "Package: corrosion" <<<"$info" || fail "deb metadata"
for f in ./usr/bin/corrosion ./etc/corrosion/config.toml ./etc/corrosion/schema/consul.sql \
         ./usr/lib/systemd/system/corrosion.service ./usr/lib/systemd/system/corrosion-template@.service \
         ./usr/share/doc/corrosion/copyright ./usr/share/corrosion/grafana/corrosion.json; do
  grep -q " $f\$" <<<"$files" || fail "$f missing from the deb"
done
ctl=$(mktemp -d)
dpkg-deb -e "$deb" "$ctl"
grep -qx /etc/corrosion/config.toml "$ctl/conffiles" || fail "config.toml is not a conffile"
rinfo=$(rpm -qip "$rpm" 2>/dev/null)
rfiles=$(rpm -qlp "$rpm" 2>/dev/null)
grep -q "License     : Apache-2.0" <<<"$rinfo" || fail "rpm metadata"
grep -qx /usr/bin/corrosion <<<"$rfiles" || fail "rpm file list"
lintian --fail-on error "$deb" 2>&1 | grep -v "root privileges" || true
lintian --fail-on error "$deb" >/dev/null 2>&1 || fail "lintian reports errors"

# Install.
dpkg -i "$deb" >/dev/null
version=$(corrosion --version)
grep -q "^corrosion " <<<"$version" || fail "corrosion --version"
getent passwd corrosion >/dev/null || fail "no corrosion user"
[ "$(stat -c %U /var/lib/corrosion)" = corrosion ] || fail "/var/lib/corrosion not owned by corrosion"

run_agent() {
  # setpriv execs the agent as the service user (so signals reach it).
  setpriv --reuid=corrosion --regid=corrosion --init-groups \
    corrosion -c /etc/corrosion/config.toml agent >/tmp/corrosion-pkg.log 2>&1 &
  agent=$!
  for _ in $(seq 1 100); do
    if corrosion --api-addr 127.0.0.1:8080 query 'SELECT 1' >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  cat /tmp/corrosion-pkg.log >&2
  fail "the packaged agent did not answer"
}
stop_agent() { kill -TERM "$agent"; wait "$agent" || fail "the agent did not stop cleanly"; }

run_agent
corrosion --api-addr 127.0.0.1:8080 query 'SELECT count(*) FROM consul_nodes' >/dev/null || fail "API query"
host=$(hostname)
for _ in $(seq 1 50); do
  answer=$(dig +short @127.0.0.1 -p 8600 "$host.node.consul" A || true)
  if [ -n "$answer" ]; then break; fi
  sleep 0.1
done
[ -n "$answer" ] || fail "DNS answer for $host.node.consul"
stop_agent
[ -f /var/lib/corrosion/state.db ] || fail "no database in /var/lib/corrosion"

# Reinstall over an edited config: the operator's version stays.
echo "# edited by the operator" >> /etc/corrosion/config.toml
dpkg -i --force-confold "$deb" >/dev/null
grep -q "edited by the operator" /etc/corrosion/config.toml || fail "conffile overwritten"
run_agent
stop_agent

# Upgrade to a newer package version (the same build repacked as 0.1.1-1,
# which is what an upgrade exercises: the maintainer scripts and dpkg's
# conffile handling): data, config edits and the user stay, the agent
# starts on the old database.
up=$(mktemp -d)
dpkg-deb -R "$deb" "$up/pkg"
sed -i 's/^Version: .*/Version: 0.1.1-1/' "$up/pkg/DEBIAN/control"
dpkg-deb -Znone -b "$up/pkg" "$up/corrosion_0.1.1-1_amd64.deb" >/dev/null
uid_before=$(id -u corrosion)
corrosion_db_rows() { sqlite3 /var/lib/corrosion/state.db 'SELECT count(*) FROM consul_nodes'; }
rows_before=$(corrosion_db_rows)
dpkg -i --force-confold "$up/corrosion_0.1.1-1_amd64.deb" >/dev/null
[ "$(dpkg-query -W -f '${Version}' corrosion)" = 0.1.1-1 ] || fail "upgrade did not install 0.1.1-1"
grep -q "edited by the operator" /etc/corrosion/config.toml || fail "upgrade overwrote the conffile"
[ "$(id -u corrosion)" = "$uid_before" ] || fail "upgrade changed the corrosion user"
[ "$(corrosion_db_rows)" = "$rows_before" ] || fail "upgrade lost data"
[ "$(stat -c %U /var/lib/corrosion/state.db)" = corrosion ] || fail "upgrade changed data ownership"
run_agent
corrosion --api-addr 127.0.0.1:8080 query 'SELECT count(*) FROM consul_nodes' >/dev/null || fail "API after upgrade"
stop_agent
rm -rf "$up"

# Remove keeps data and config; purge removes both.
dpkg -r corrosion >/dev/null
[ ! -e /usr/bin/corrosion ] || fail "binary left after remove"
[ -f /var/lib/corrosion/state.db ] || fail "remove deleted the data"
dpkg -P corrosion >/dev/null
[ ! -e /var/lib/corrosion ] || fail "purge kept /var/lib/corrosion"
[ ! -e /etc/corrosion/config.toml ] || fail "purge kept the config"
# The .rpm installed with rpm itself (its own database, so this Debian
# machine's dpkg is untouched): the scriptlets create the user and state
# directory, the agent runs from it, erase removes the files and keeps data.
rpmdb=$(mktemp -d)
# (rpm warns on Debian that alien is the usual way; the output is kept for failures.)
rpm --dbpath "$rpmdb" -i --nodeps "$rpm" 2>"$rpmdb/log" || { cat "$rpmdb/log" >&2; fail "rpm -i"; }
[ -x /usr/bin/corrosion ] || fail "rpm did not install the binary"
getent passwd corrosion >/dev/null || fail "rpm: no corrosion user"
[ "$(stat -c %U /var/lib/corrosion)" = corrosion ] || fail "rpm: /var/lib/corrosion not owned by corrosion"
[ "$(stat -c %a /etc/corrosion/config.toml)" = 640 ] || fail "rpm: config.toml mode"
run_agent
stop_agent
rpm --dbpath "$rpmdb" -e corrosion 2>"$rpmdb/log" || { cat "$rpmdb/log" >&2; fail "rpm -e"; }
[ ! -e /usr/bin/corrosion ] || fail "rpm -e left the binary"
[ -f /var/lib/corrosion/state.db ] || fail "rpm -e deleted the data"
rm -rf /var/lib/corrosion /etc/corrosion "$rpmdb"
echo "packaging test: ok"
