#!/usr/bin/env bash
# HTTP API benchmark (issue 3): primary-key reads and single-row writes through
# a real agent with wrk (installed if missing), next to the store's direct
# single-row write rate measured in the same run.
#   bash bench/http/run.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
CONNS=${2:-32}
ROWS=${ROWS:-10000}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q -p corrosion -p corro-bench
DIR=$(mktemp -d)
trap 'kill $AGENT 2>/dev/null || true; rm -rf "$DIR"' EXIT
mkdir -p "$DIR/schema"
echo "CREATE TABLE todos (id TEXT NOT NULL PRIMARY KEY, title TEXT NOT NULL DEFAULT '', completed_at INTEGER);" > "$DIR/schema/todos.sql"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$DIR/config.toml" <<TOML
[db]
path = "$DIR/state.db"
schema_paths = ["$DIR/schema"]
[gossip]
addr = "127.0.0.1:0"
plaintext = true
[api]
addr = "127.0.0.1:$PORT"
max_statements = 10000
[admin]
path = "$DIR/admin.sock"
[log]
colors = false
TOML
RUST_LOG=warn ./target/release/corrosion -c "$DIR/config.toml" agent > "$DIR/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
# Seed ROWS rows in batches of 1000 statements.
python3 - "$PORT" "$ROWS" <<'PY'
import json, sys, urllib.request
port, rows = int(sys.argv[1]), int(sys.argv[2])
for start in range(0, rows, 1000):
    stmts = [["INSERT INTO todos (id, title) VALUES (?, ?)", ["todo-%09d" % i, "seeded row %d" % i]] for i in range(start, min(rows, start + 1000))]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/transactions", data=json.dumps(stmts).encode(), headers={"content-type": "application/json"})
    urllib.request.urlopen(req).read()
PY
echo "== primary-key reads: POST /v1/queries, $CONNS connections, ${SECS}s, $ROWS rows"
ROWS=$ROWS wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s bench/http/read.lua "http://127.0.0.1:$PORT" | grep -E "Requests/sec|Latency |50%|99%|Non-2xx|Socket errors"
echo "== single-row writes: POST /v1/transactions, $CONNS connections, ${SECS}s"
wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s bench/http/write.lua "http://127.0.0.1:$PORT" | grep -E "Requests/sec|Latency |50%|99%|Non-2xx|Socket errors"
kill $AGENT; wait $AGENT 2>/dev/null || true
echo "== baseline in the same run: the store's direct single-row write transactions (no HTTP)"
./target/release/corro-bench store --single 3000 --rounds 3 --skip-large --bulk 1000 | grep "single-row"
