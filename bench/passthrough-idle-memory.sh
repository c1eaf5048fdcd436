#!/usr/bin/env bash
# Memory of idle kept-alive passthrough connections: N client connections each send one GET
# through the proxy (answered by an nginx backend), then stay open and idle; the proxy's RSS
# growth per connection is reported (it includes the backend connection each one keeps).
# Loopback only, bounded. One JSON line per target.
#
# Usage: bench/passthrough-idle-memory.sh [connections=2000]
#   SIDEWIRE_BIN=path         the sidewire to measure (default: the tree's release build)
#   SIDEWIRE_BEFORE_BIN=path  also measure another build (label sidewire-before)
# Needs: nginx, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS="${1:-2000}"
source bench/lib.sh
ulimit -n 65536 2>/dev/null || true
BACKEND_PORT="$(free_port)"
NGINX_WORKER_CONNECTIONS=65536 nginx_conf backend "$BACKEND_PORT" "keepalive_timeout 600s;" \
    'location / { return 200 "ok"; }'
nginx -c "$WORK/backend/nginx.conf" -e "$WORK/backend/logs/error.log" &
PIDS+=($!)
wait_port "$BACKEND_PORT"

measure() { # label binary
    local port; port="$(free_port)"
    cat >"$WORK/$1.yaml" <<YAML
listen: "127.0.0.1:$port"
admin_listen: "127.0.0.1:0"
client_idle_timeout: "600s"
backend: {url: "http://127.0.0.1:$BACKEND_PORT"}
log: {level: "warn"}
YAML
    TOKIO_WORKER_THREADS=1 "$2" --config "$WORK/$1.yaml" >"$WORK/$1.out" 2>"$WORK/$1.err" &
    local pid=$!
    PIDS+=($pid)
    for _ in $(seq 100); do grep -q listening "$WORK/$1.out" && break; sleep 0.05; done
    python3 - "$1" "$pid" "$port" "$CONNS" <<'PY'
import json, socket, sys, time
label, pid, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def get(sock):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while not data.endswith(b"ok"):
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("closed")
        data += chunk
# Warm-up: allocator arenas and the worker's scratch buffer, then settle.
warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
for s in warm: get(s)
for s in warm: s.close()
time.sleep(1.0)
before = rss_kib()
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    get(s)
    socks.append(s)
time.sleep(1.0)
after = rss_kib()
print(json.dumps({"scenario": "passthrough_idle_memory", "label": label, "connections": n,
    "rss_before_kib": before, "rss_after_kib": after,
    "bytes_per_connection": round((after - before) * 1024 / n)}))
for s in socks: s.close()
PY
    kill "$pid" 2>/dev/null || true
}
measure sidewire "${SIDEWIRE_BIN:-${CARGO_TARGET_DIR:-target}/release/sidewire}"
if [[ -n "${SIDEWIRE_BEFORE_BIN:-}" ]]; then
    measure sidewire-before "$SIDEWIRE_BEFORE_BIN"
fi
