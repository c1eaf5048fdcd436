#!/usr/bin/env bash
# Fan-out to 10 000 subscribers on one channel, sidewire beside the floor server, with the
# subscribers spread over several load-generator processes (`fanout --procs`), so reading
# deliveries is not limited to one process. Rounds interleave the servers; the last lines
# are medians. Loopback only, bounded durations. One JSON line per run.
#
# Usage: bench/fanout-procs.sh
#   ROUNDS=3 PROCS=2 SUBS=10000     defaults
#   ROWS="latency saturating"       which rows: latency = 100 publishes at 10/s, 1 publisher;
#                                   saturating = 300 publishes, 4 publishers, as fast as accepted
#   PIN=1                           server on CPU 0, generators on CPU 1 (default: unpinned,
#                                   the generators may use both CPUs while the server is idle)
# Needs: the release build of the workspace (cargo build --release --workspace --bins) and
# `ulimit -n` above SUBS + 300.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SIDEWIRE="${SIDEWIRE_BIN:-$TARGET_DIR/release/sidewire}"
BENCH="${BENCH_BIN:-$TARGET_DIR/release/sidewire-bench}"
ROUNDS="${ROUNDS:-3}"; PROCS="${PROCS:-2}"; SUBS="${SUBS:-10000}"
ROWS="${ROWS:-latency saturating}"
ulimit -n "$(ulimit -Hn)"
if [[ "${PIN:-0}" == 1 ]]; then SERVER_PIN=(taskset -c 0); CLIENT_PIN=(taskset -c 1); else SERVER_PIN=(); CLIENT_PIN=(); fi
WORK=$(mktemp -d)
SERVER=""
cleanup() {
    [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cat >"$WORK/sidewire.yaml" <<'YAML'
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
allowed_origins: ["*"]
queue_max_size: 67108864
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
YAML
wait_line() { # file pattern
    for _ in $(seq 200); do
        grep -m1 -E "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no '$2' in $1: $(tail -5 "${1%.out}.err")" >&2
    return 1
}
start() { # server: sets SERVER URL PUB EXTRA
    case $1 in
    sidewire)
        "${SERVER_PIN[@]}" "$SIDEWIRE" --config "$WORK/sidewire.yaml" >"$WORK/s.out" 2>"$WORK/s.err" &
        SERVER=$!
        local line; line=$(wait_line "$WORK/s.out" '^sidewire listening ')
        URL="ws://$(sed -n 's/.*client=\([^ ]*\).*/\1/p' <<<"$line")/connection/websocket"
        PUB="http://$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' <<<"$line")/api/publish"
        EXTRA=(--label sidewire) ;;
    floor)
        "${SERVER_PIN[@]}" "$BENCH" floor-server >"$WORK/s.out" 2>"$WORK/s.err" &
        SERVER=$!
        local line; line=$(wait_line "$WORK/s.out" '^floor listening ')
        URL="ws://$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' <<<"$line")/"
        PUB="http://$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$line")/publish"
        EXTRA=(--label floor --raw) ;;
    esac
}
stop() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; }
row_args() {
    case $1 in
    latency) echo "--publishes 100 --publishers 1 --rate 10" ;;
    saturating) echo "--publishes 300 --publishers 4 --rate 0" ;;
    esac
}
for _ in $(seq "$ROUNDS"); do
    for row in $ROWS; do
        for server in sidewire floor; do
            start "$server"
            # shellcheck disable=SC2046
            "${CLIENT_PIN[@]}" "$BENCH" fanout "${EXTRA[@]}" --url "$URL" --pid "$SERVER" \
                --subscribers "$SUBS" --channels 1 $(row_args "$row") --payload-bytes 128 \
                --publish-url "$PUB" --procs "$PROCS" 2>"$WORK/bench.err" \
                | grep '^{' | sed "s/^{/{\"row\": \"$row\", /" | tee -a "$WORK/all.jsonl" \
                || { echo "run failed: $(tail -3 "$WORK/bench.err")" >&2; }
            stop
        done
    done
done
python3 - "$WORK/all.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for key in dict.fromkeys((r["row"], r["label"]) for r in runs):
    mine = [r for r in runs if (r["row"], r["label"]) == key]
    med = lambda k: statistics.median(r[k] for r in mine if r.get(k) is not None)
    cpu = [r["server_cpu_ms"] for r in mine if r.get("server_cpu_ms")]
    print(json.dumps({"scenario": "fanout_median", "row": key[0], "label": key[1],
        "median_of": len(mine), "procs": mine[0].get("procs"),
        "deliveries_per_s": med("deliveries_per_s"), "latency_p50_ms": med("latency_p50_ms"),
        "latency_p99_ms": med("latency_p99_ms"),
        "deliveries_per_server_cpu_s": statistics.median(r["received"] / (r["server_cpu_ms"] / 1000) for r in mine if r.get("server_cpu_ms")) if cpu else None,
        "lost": sum(r["lost"] for r in mine), "verified": all(r["verified"] for r in mine)}))
PY
