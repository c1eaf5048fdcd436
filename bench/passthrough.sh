#!/usr/bin/env bash
# Passthrough benchmark: wrk against (a) the backend directly, (b) sidewire proxying to it,
# (c) nginx (one worker) proxying to it. The backend is an nginx instance answering a fixed
# 2-byte body. Loopback only, bounded durations. Prints one JSON line per target on stdout.
#
# Usage: bench/passthrough.sh [seconds=10] [connections=64]
#   ROUNDS=3                     runs every target 3 times, interleaved, then prints medians
#   SIDEWIRE_BIN=path            the sidewire to measure (default: the tree's release build)
#   SIDEWIRE_BEFORE_BIN=path     also measure another build (label sidewire-before) in the
#                                same rounds, e.g. the previous commit's
# Needs: $CARGO_TARGET_DIR (default target)/release/sidewire, nginx and wrk (apt-get install nginx-light wrk).
# Pinning: the proxy under test on CPU 0; wrk and the backend on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-64}"
source bench/lib.sh

BACKEND_PORT="$(free_port)"
nginx_conf backend "$BACKEND_PORT" "" 'location / { return 200 "ok"; }'
taskset -c 1 nginx -c "$WORK/backend/nginx.conf" -e "$WORK/backend/logs/error.log" &
PIDS+=($!)
wait_port "$BACKEND_PORT"

PROXY_PORT="$(free_port)"
nginx_conf proxy "$PROXY_PORT" \
    "upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }" \
    'location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }'
taskset -c 0 nginx -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/logs/error.log" &
PIDS+=($!)
wait_port "$PROXY_PORT"

cat >"$WORK/sidewire.yaml" <<YAML
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
backend: {url: "http://127.0.0.1:$BACKEND_PORT"}
log: {level: "warn"}
YAML
start_sidewire() { # label binary; sets SIDEWIRE_ADDR
    # One worker thread on one pinned CPU, like nginx's single worker.
    TOKIO_WORKER_THREADS=1 taskset -c 0 "$2" --config "$WORK/sidewire.yaml" >"$WORK/$1.out" 2>"$WORK/$1.err" &
    PIDS+=($!)
    for _ in $(seq 100); do grep -q listening "$WORK/$1.out" && break; sleep 0.05; done
    SIDEWIRE_ADDR="$(sed -n 's/.*client=\([^ ]*\).*/\1/p' "$WORK/$1.out")"
}
start_sidewire sidewire "${SIDEWIRE_BIN:-${CARGO_TARGET_DIR:-target}/release/sidewire}"
SIDEWIRE="$SIDEWIRE_ADDR"
SIDEWIRE_BEFORE=""
if [[ -n "${SIDEWIRE_BEFORE_BIN:-}" ]]; then
    start_sidewire sidewire-before "$SIDEWIRE_BEFORE_BIN"
    SIDEWIRE_BEFORE="$SIDEWIRE_ADDR"
fi

run_wrk() { # label url
    local out
    taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$2" >"$WORK/wrk.$1" 2>&1 || true
    out="$WORK/wrk.$1"
    python3 - "$1" "$out" "$CONNS" "$DURATION" <<'PY'
import json, re, sys
label, path, conns, duration = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(path).read()
def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
lat = {p: re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", text, re.M) for p in ("50", "99")}
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
print(json.dumps({
    "scenario": "passthrough", "label": label, "connections": conns, "duration_s": duration,
    "rps": float(rps.group(1)) if rps else 0.0,
    "p50_ms": ms(*lat["50"].groups()) if lat["50"] else None,
    "p99_ms": ms(*lat["99"].groups()) if lat["99"] else None,
    "non_2xx": int(errors.group(1)) if errors else 0,
    "socket_errors": sock.group(1) if sock else "",
}))
PY
}

ROUNDS="${ROUNDS:-1}"
for round in $(seq "$ROUNDS"); do
    run_wrk direct "http://127.0.0.1:$BACKEND_PORT/" | tee -a "$WORK/all.jsonl"
    run_wrk sidewire "http://$SIDEWIRE/" | tee -a "$WORK/all.jsonl"
    if [[ -n "$SIDEWIRE_BEFORE" ]]; then
        run_wrk sidewire-before "http://$SIDEWIRE_BEFORE/" | tee -a "$WORK/all.jsonl"
    fi
    run_wrk nginx "http://127.0.0.1:$PROXY_PORT/" | tee -a "$WORK/all.jsonl"
done
if (( ROUNDS > 1 )); then
    python3 - "$WORK/all.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for label in dict.fromkeys(r["label"] for r in runs):
    mine = [r for r in runs if r["label"] == label]
    med = lambda key: statistics.median(r[key] for r in mine if r[key] is not None)
    print(json.dumps({"scenario": "passthrough", "label": label, "median_of": len(mine),
        "connections": mine[0]["connections"], "duration_s": mine[0]["duration_s"],
        "rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
        "non_2xx": sum(r["non_2xx"] for r in mine)}))
PY
fi
