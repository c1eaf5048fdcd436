#!/usr/bin/env bash
# Flood benchmark (loopback only): one hostile client attacks a fresh sidewire (default
# settings, embedded hub) while 5 victims call rpc `echo` every 10 ms. The attacker reads and
# discards what comes back (so it is not simply dropped as a slow client) and uses 240-byte
# channel names. Reports the victims'
# latency and disconnects and the server's RSS before / at the peak / after, for:
#   - subscribe: 70 000 subscribe commands to distinct channels, 200 per message (under the
#                default 64 KiB message_size_limit);
#   - publish:   3 000 publications of 60 KB into distinct channels, one per message (the
#                default message_size_limit is 64 KiB).
# Writes bench/FLOOD-$LABEL.md (with the exact commands) and appends the JSON lines to
# bench/flood.jsonl.
#
#   bash bench/flood.sh                       # the tree's release build
#   SIDEWIRE_BIN=/path/to/sidewire LABEL=before bash bench/flood.sh   # another build (e.g. an
#                                  older commit), same runs; BENCH_BIN picks the load generator
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
LABEL=${LABEL:-sidewire}
if [[ -z "${SIDEWIRE_BIN:-}" ]]; then
    cargo build --release --workspace --bins
    SIDEWIRE_BIN="$TARGET_DIR/release/sidewire"
fi
BENCH="${BENCH_BIN:-$TARGET_DIR/release/sidewire-bench}"
[[ -x "$BENCH" ]] || cargo build --release -p sidewire-bench
WORK=$(mktemp -d)
SERVER=""
cleanup() {
    [[ -n "$SERVER" ]] && kill -KILL "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cat >"$WORK/sidewire.yaml" <<'EOF'
# Defaults everywhere except ephemeral loopback ports, the hub's opt-ins and quiet logs.
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
# The hub's defaults are secure (as Centrifugo's): open channels without a namespace to
# anonymous clients, as the load generator connects without tokens.
hub:
  client:
    allow_anonymous_connect_without_token: true
  channel:
    without_namespace:
      presence: true
      join_leave: true
      history_size: 100
      history_ttl: "300s"
      allow_subscribe_for_client: true
      allow_subscribe_for_anonymous: true
      allow_publish_for_client: true
      allow_publish_for_anonymous: true
      allow_history_for_client: true
      allow_history_for_anonymous: true
      allow_presence_for_client: true
      allow_presence_for_anonymous: true
log:
  level: "error"
EOF

run_attack() {
    local attack=$1; shift
    "$SIDEWIRE_BIN" --config "$WORK/sidewire.yaml" >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER=$!
    local line=""
    for _ in $(seq 1 200); do
        line=$(grep -m1 '^sidewire listening ' "$WORK/server.out" 2>/dev/null || true)
        [[ -n "$line" ]] && break
        sleep 0.1
    done
    [[ -n "$line" ]] || { cat "$WORK/server.err" >&2; exit 1; }
    local client
    client=$(sed -n 's/.*client=\([^ ]*\).*/\1/p' <<<"$line")
    local cmd=("$BENCH" flood --url "ws://$client/connection/websocket" --label "$LABEL"
               --attack "$attack" --pid "$SERVER" "$@")
    echo "\$ ${cmd[*]/$client/127.0.0.1:PORT}" >>"$WORK/commands"
    "${cmd[@]}" | tee -a "$WORK/out"
    kill -KILL "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
}

run_attack subscribe --count 70000 --batch 200 --duration 10s
run_attack publish --count 3000 --batch 1 --payload-bytes 60000 --duration 10s

grep '^{' "$WORK/out" >>bench/flood.jsonl
{
    echo "# Flood benchmark ($LABEL)"
    echo
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo '?'), by \`bash bench/flood.sh\`."
    echo "A fresh sidewire with default settings per attack (embedded hub); 5 victims call rpc"
    echo "\`echo\` every 10 ms for 10 s while one client attacks (reading and discarding replies)."
    echo
    echo '| attack | attacker sent | attacker outcome | victims disconnected | victim calls | p50 ms | p99 ms | max ms | RSS before → peak → after (MiB) |'
    echo '|---|---|---|---|---|---|---|---|---|'
    grep '^{' "$WORK/out" | python3 -c '
import json, sys
cols = ["attack", "sent", "attacker_outcome", "disconnected", "victim_calls", "victim_p50_ms",
        "victim_p99_ms", "victim_max_ms", "rss"]
for line in sys.stdin:
    r = json.loads(line)
    r["sent"] = "%s/%s" % (r["attacker_sent"], r["count"])
    r["disconnected"] = "%s/%s" % (r["victims_disconnected"], r["victims"])
    r["rss"] = "%s → %s → %s" % (r["server_rss_before_mib"], r["server_rss_peak_mib"],
                                 r["server_rss_after_mib"])
    print("| " + " | ".join(str(r[c]) for c in cols) + " |")
'
    echo
    echo "Commands:"
    echo
    echo '```'
    cat "$WORK/commands"
    echo '```'
} >"bench/FLOOD-$LABEL.md"
echo "wrote bench/FLOOD-$LABEL.md"
