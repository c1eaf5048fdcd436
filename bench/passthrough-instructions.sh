#!/usr/bin/env bash
# Instructions per proxied request (valgrind callgrind), a figure that does not depend on how
# loaded the machine is: sidewire (and optionally another build) and nginx with one worker,
# each proxying to the same nginx backend, each measured over the same wrk load after a
# warm-up that is not counted. Loopback only, bounded durations. One JSON line per target.
#
# Usage: bench/passthrough-instructions.sh [seconds=10] [connections=64]
#   SIDEWIRE_BIN=path         the sidewire to measure (default: the tree's release build)
#   SIDEWIRE_BEFORE_BIN=path  also measure another build (label sidewire-before)
# Needs: valgrind, nginx, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-64}"
source bench/lib.sh

BACKEND_PORT="$(free_port)"
nginx_conf backend "$BACKEND_PORT" "" 'location / { return 200 "ok"; }'
nginx -c "$WORK/backend/nginx.conf" -e "$WORK/backend/logs/error.log" &
PIDS+=($!)
wait_port "$BACKEND_PORT"

# label port command...: runs the proxy under callgrind, instrumentation off until the measured run.
measure() {
    local label=$1 port=$2
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$label.cg" \
        "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    wrk -t1 -c"$CONNS" -d2s --timeout 60s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true  # warm-up
    callgrind_control -z "$pid" >/dev/null  # count from here
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 60s "http://127.0.0.1:$port/" >"$WORK/$label.wrk" 2>&1 || true
    callgrind_control -d "$pid" >/dev/null  # the measured run, in $label.cg.1
    sleep 1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$label" "$WORK/$label.wrk" "$WORK" "$CONNS" "$DURATION" <<'PY'
import glob, json, re, sys
label, wrk, work, conns, duration = sys.argv[1:6]
requests = int(re.search(r"(\d+) requests in", open(wrk).read()).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", open(wrk).read())
total = 0
for path in glob.glob(f"{work}/{label}.cg.1"):
    for line in open(path):
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
print(json.dumps({"scenario": "passthrough_instructions", "label": label,
    "connections": int(conns), "duration_s": int(duration), "requests": requests,
    "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    "instructions": total, "instructions_per_request": round(total / max(requests, 1))}))
PY
}

sidewire_yaml() { # port
    cat >"$WORK/sidewire-$1.yaml" <<YAML
listen: "127.0.0.1:$1"
admin_listen: "127.0.0.1:0"
backend: {url: "http://127.0.0.1:$BACKEND_PORT"}
log: {level: "warn"}
YAML
}

PORT="$(free_port)"; sidewire_yaml "$PORT"
TOKIO_WORKER_THREADS=1 measure sidewire "$PORT" \
    "${SIDEWIRE_BIN:-${CARGO_TARGET_DIR:-target}/release/sidewire}" --config "$WORK/sidewire-$PORT.yaml"
if [[ -n "${SIDEWIRE_BEFORE_BIN:-}" ]]; then
    PORT="$(free_port)"; sidewire_yaml "$PORT"
    TOKIO_WORKER_THREADS=1 measure sidewire-before "$PORT" \
        "$SIDEWIRE_BEFORE_BIN" --config "$WORK/sidewire-$PORT.yaml"
fi
PORT="$(free_port)"
nginx_conf proxy "$PORT" \
    "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }" \
    'location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }' \
    'master_process off;'
measure nginx "$PORT" nginx -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/logs/error.log"
