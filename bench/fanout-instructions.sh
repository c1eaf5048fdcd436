#!/usr/bin/env bash
# Instructions per fan-out delivery (valgrind callgrind), a figure that does not depend on how
# loaded the machine is: sidewire (and optionally another build) and the floor server, each
# run under callgrind while SUBS WebSocket subscribers on one channel receive PUBS publications
# (128-byte payloads, one publisher, as fast as accepted). Counters are zeroed once everyone is
# subscribed (`fanout --start-file`) and dumped once everything is delivered, before the
# subscribers disconnect (`--done-file`), so connection set-up and teardown are not counted;
# the publish requests (HTTP API, and for sidewire the embedded hub and the Link) are, as part
# of what a delivery costs. Instructions of the server process only (all threads), kernel
# time not counted. One JSON line per target, and the per-function self-cost top list of each
# (callgrind_annotate) on stderr when TOP=N is set.
#
# Usage: bench/fanout-instructions.sh [subscribers=2000] [publications=50]
#   SIDEWIRE_BIN=path         the sidewire to measure (default: the tree's release build)
#   SIDEWIRE_BEFORE_BIN=path  also measure another build (label sidewire-before)
#   BENCH_BIN=path            sidewire-bench (default: the tree's release build)
#   THREADS=1                 server worker threads (TOKIO_WORKER_THREADS, same for all)
#   TOP=25                    print that many functions by self cost per target
#   KEEP_WORK=1               keep the callgrind files
#   TLS=1                     sidewire over wss (TLS 1.3, a throw-away certificate; the
#                             floor server speaks no TLS and is left out)
# Needs: valgrind, the release build (cargo build --release -p sidewire -p sidewire-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS="${1:-2000}"
PUBS="${2:-50}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SIDEWIRE="${SIDEWIRE_BIN:-$TARGET_DIR/release/sidewire}"
BENCH="${BENCH_BIN:-$TARGET_DIR/release/sidewire-bench}"
export TOKIO_WORKER_THREADS="${THREADS:-1}"
ulimit -n "$(ulimit -Hn)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n "${KEEP_WORK:-}" ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
cat >"$WORK/sidewire.yaml" <<'YAML'
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
allowed_origins: ["*"]
queue_max_size: 67108864
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
if [[ -n "${TLS:-}" ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
        -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    printf 'tls:\n  cert_file: "%s"\n  key_file: "%s"\n' "$WORK/cert.pem" "$WORK/key.pem" \
        >>"$WORK/sidewire.yaml"
fi
wait_line() { # file pattern
    for _ in $(seq 1200); do
        grep -m1 -E "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no '$2' in $1" >&2
    return 1
}

# label kind command...: runs the server under callgrind, counts only the publish phase.
measure() {
    local label=$1 kind=$2
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$label.cg" \
        "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" &
    local pid=$!
    PIDS+=("$pid")
    local line url pub extra
    case $kind in
    sidewire)
        line=$(wait_line "$WORK/$label.out" '^sidewire listening ')
        url="ws://$(sed -n 's/.*client=\([^ ]*\).*/\1/p' <<<"$line")/connection/websocket"
        pub="http://$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' <<<"$line")/api/publish"
        extra=()
        if [[ -n "${TLS:-}" ]]; then
            url="wss://${url#ws://}"
            extra=(--ca-file "$WORK/cert.pem")
        fi ;;
    floor)
        line=$(wait_line "$WORK/$label.out" '^floor listening ')
        url="ws://$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' <<<"$line")/"
        pub="http://$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$line")/publish"
        extra=(--raw) ;;
    esac
    rm -f "$WORK/start" "$WORK/done"
    "$BENCH" fanout --label "$label" "${extra[@]}" --url "$url" --subscribers "$SUBS" \
        --channels 1 --publishes "$PUBS" --publishers 1 --rate 0 --payload-bytes 128 \
        --publish-url "$pub" --setup-deadline 600s --timeout 900s \
        --start-file "$WORK/start" --done-file "$WORK/done" \
        >"$WORK/$label.bench" 2>"$WORK/$label.bench.err" &
    local bench=$!
    wait_line "$WORK/$label.bench.err" '^subscribed' >/dev/null
    callgrind_control -z "$pid" >/dev/null  # count from here
    touch "$WORK/start"
    wait_line "$WORK/$label.bench.err" '^delivered' >/dev/null
    callgrind_control -d "$pid" >/dev/null  # the measured phase, in $label.cg.1
    touch "$WORK/done"  # now the subscribers disconnect (not counted)
    wait "$bench" || { echo "$label: bench failed: $(tail -3 "$WORK/$label.bench.err")" >&2; }
    sleep 1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$label" "$WORK" "$SUBS" "$PUBS" "$TOKIO_WORKER_THREADS" <<'PY'
import json, sys
label, work, subs, pubs, threads = sys.argv[1:6]
report = next((json.loads(l) for l in open(f"{work}/{label}.bench") if l.startswith("{")), {})
total = 0
for line in open(f"{work}/{label}.cg.1"):
    if line.startswith(("summary:", "totals:")):
        total = max(total, int(line.split()[1]))
received = report.get("received", 0)
print(json.dumps({"scenario": "fanout_instructions", "label": label,
    "subscribers": int(subs), "publications": int(pubs), "threads": int(threads),
    "received": received, "lost": report.get("lost"), "verified": report.get("verified"),
    "instructions": total, "instructions_per_delivery": round(total / max(received, 1))}))
PY
    if [[ -n "${TOP:-}" ]]; then
        echo "== $label: top ${TOP} by self cost" >&2
        # Self cost per function; the thread-entry frames this callgrind_annotate lists at
        # ~100 % (whole-thread totals, not self cost) are left out.
        callgrind_annotate --inclusive=no --threshold=100 "$WORK/$label.cg.1" 2>/dev/null \
            | sed -n '/file:function/,$p' | grep -E '^ *[0-9,]+ \( ?[0-9.]+%\)' \
            | grep -vE '\((99\.[0-9]+|100\.0)%\)' | head -n "$TOP" >&2 || true
    fi
}

measure sidewire sidewire "$SIDEWIRE" --config "$WORK/sidewire.yaml"
if [[ -n "${SIDEWIRE_BEFORE_BIN:-}" ]]; then
    measure sidewire-before sidewire "$SIDEWIRE_BEFORE_BIN" --config "$WORK/sidewire.yaml"
fi
if [[ -z "${TLS:-}" ]]; then
    measure floor floor "$BENCH" floor-server
fi
