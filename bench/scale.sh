#!/usr/bin/env bash
# Scale and TLS runs (issue 11): idle cost per connection at 1k / 5k / 10k / 18k for WebSocket,
# HTTP-streaming and SSE, idle wss (TLS) beside plain WebSocket, the floor server at the same
# counts, and a fan-out to 18k subscribers. A fresh server per run; results as JSON lines in
# bench/scale-results.jsonl and one human line per run on stdout (the tables in
# bench/RESULTS.md, "Scale and TLS", are made from them).
#
#   bash bench/scale.sh                      # release binaries from $CARGO_TARGET_DIR or target/
#   COUNTS="1000 18000" bash bench/scale.sh  # connection counts (default 1000 5000 10000 18000)
#   ONLY="ws wss sse http-stream floor fanout" bash bench/scale.sh  # subset of the rows
#   SIDEWIRE=... BENCH=...                   # binaries to use (e.g. a baseline build)
#   LABEL=sidewire-before                    # label of the sidewire rows
#
# Needs `ulimit -Hn` >= 18 300 (each of the two processes holds one socket per connection)
# and openssl (a throw-away self-signed certificate for 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SIDEWIRE=${SIDEWIRE:-$TARGET/release/sidewire}
BENCH=${BENCH:-$TARGET/release/sidewire-bench}
COUNTS=${COUNTS:-1000 5000 10000 18000}
ONLY=${ONLY:-ws wss sse http-stream floor fanout}
LABEL=${LABEL:-sidewire}
HOLD=${HOLD:-5s}
OUT=${OUT:-$ROOT/bench/scale-results.jsonl}

ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/sidewire-scale.XXXXXX)
SERVER_PID=
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

base_config() {
    cat <<CFG
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
allowed_origins: ["*"]
queue_max_size: 67108864
# Memory runs: no pings while 18 000 connections open on a loaded 2-core machine (a
# single-threaded load generator cannot answer every ping in time while it is still
# connecting), so that a count measures connections held, not pong timeouts.
ping_interval: "600s"
http_stream: true
sse: true
# The hub's defaults are secure: open channels without a namespace to the anonymous load
# generator (as bench/run.sh does).
hub:
  client:
    allow_anonymous_connect_without_token: true
  channel:
    without_namespace:
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
log:
  level: "warn"
CFG
}
base_config >"$WORK/plain.yaml"
{ base_config; printf 'tls:\n  cert_file: "%s"\n  key_file: "%s"\n' "$WORK/cert.pem" "$WORK/key.pem"; } >"$WORK/tls.yaml"

wait_line() { # FILE PATTERN PID
    for _ in $(seq 1 200); do
        if grep -m1 -E "$2" "$1" 2>/dev/null; then return 0; fi
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    echo "server did not start: $(tail -5 "${1%.out}.err")" >&2
    return 1
}

start_sidewire() { # CONFIG
    # The child truncates server.out only once it runs: remove the last server's line first,
    # or wait_line may read the previous server's address.
    rm -f "$WORK/server.out"
    taskset -c 0 "$SIDEWIRE" --config "$1" >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    local line
    line=$(wait_line "$WORK/server.out" '^sidewire listening ' "$SERVER_PID")
    CLIENT=$(sed -n 's/.*client=\([^ ]*\).*/\1/p' <<<"$line")
    ADMIN=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' <<<"$line")
}
start_floor() {
    rm -f "$WORK/server.out"
    taskset -c 0 "$BENCH" floor-server --read-buffer-bytes 2048 \
        >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    local line
    line=$(wait_line "$WORK/server.out" '^floor listening ' "$SERVER_PID")
    CLIENT=$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' <<<"$line")
    ADMIN=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$line")
}
stop() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
bench() {
    echo "+ sidewire-bench $*" >&2
    taskset -c 1 "$BENCH" --threads 1 "$@" >"$WORK/bench.out" || echo "FAILED: $*" >&2
    grep -v '^{' "$WORK/bench.out" || true
    grep '^{' "$WORK/bench.out" >>"$OUT" || true
}
want() { [[ " $ONLY " == *" $1 "* ]]; }

echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for n in $COUNTS; do
    if want ws; then
        start_sidewire "$WORK/plain.yaml"
        bench idle --label "$LABEL" --url "ws://$CLIENT/connection/websocket" --pid "$SERVER_PID" \
            --connections "$n" --hold "$HOLD" --setup-timeout 60s
        stop
    fi
    if want wss; then
        start_sidewire "$WORK/tls.yaml"
        bench idle --label "$LABEL-wss" --url "wss://$CLIENT/connection/websocket" \
            --ca-file "$WORK/cert.pem" --pid "$SERVER_PID" --connections "$n" --hold "$HOLD" \
            --setup-timeout 60s
        stop
    fi
    for kind in sse http-stream; do
        if want "$kind"; then
            start_sidewire "$WORK/plain.yaml"
            path=${kind/-/_}
            bench idle --label "$LABEL" --transport "$kind" --url "http://$CLIENT/connection/$path" \
                --pid "$SERVER_PID" --connections "$n" --hold "$HOLD" --setup-timeout 60s
            stop
        fi
    done
    if want floor; then
        start_floor
        bench idle --label floor --raw --url "ws://$CLIENT/" --pid "$SERVER_PID" \
            --connections "$n" --hold "$HOLD" --setup-timeout 60s
        stop
    fi
done
if want fanout; then
    n=$(tr ' ' '\n' <<<"$COUNTS" | sort -n | tail -1)
    start_sidewire "$WORK/plain.yaml"
    bench fanout --label "$LABEL" --url "ws://$CLIENT/connection/websocket" --pid "$SERVER_PID" \
        --subscribers "$n" --channels 1 --publishes 100 --publishers 1 --rate 10 \
        --payload-bytes 128 --publish-url "http://$ADMIN/api/publish"
    stop
fi
