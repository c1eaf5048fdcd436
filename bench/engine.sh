#!/usr/bin/env bash
# Fan-out through the Redis engine: the same fan-out run against one sidewire with the memory
# engine, one sidewire with the Redis engine, and three sidewire replicas on one Redis with the
# subscribers spread over them (publications through replica 1's API). Peers are measured in
# the same run, on the same machine, one after the other.
#
# Usage: bench/engine.sh [subscribers] [channels] [publishes] [publishers]
# Needs release binaries (SIDEWIRE / BENCH override their paths) and redis-server.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SIDEWIRE=${SIDEWIRE:-$TARGET/release/sidewire}
BENCH=${BENCH:-$TARGET/release/sidewire-bench}
SUBS=${1:-1000}
CHANNELS=${2:-10}
PUBLISHES=${3:-5000}
PUBLISHERS=${4:-4}

command -v redis-server >/dev/null || { echo "redis-server is required" >&2; exit 1; }
WORK=$(mktemp -d /tmp/sidewire-engine-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done

# start_replica NAME ENGINE_YAML: starts one sidewire, sets WS_URL / PUBLISH_URL / PID.
start_replica() {
    local name=$1 engine=$2 line
    cat >"$WORK/$name.yaml" <<EOF
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
      presence: true
      allow_subscribe_for_anonymous: true
      allow_publish_for_anonymous: true
log:
  level: "warn"
$engine
EOF
    "$SIDEWIRE" --config "$WORK/$name.yaml" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID=$!
    PIDS+=("$PID")
    for _ in $(seq 1 200); do
        line=$(grep -m1 '^sidewire listening ' "$WORK/$name.out" 2>/dev/null || true)
        [[ -n "$line" ]] && break
        sleep 0.1
    done
    [[ -n "$line" ]] || { cat "$WORK/$name.err" >&2; exit 1; }
    local client admin
    client=$(sed -n 's/.*client=\([^ ]*\).*/\1/p' <<<"$line")
    admin=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' <<<"$line")
    WS_URL="ws://$client/connection/websocket"
    PUBLISH_URL="http://$admin/api/publish"
    for _ in $(seq 1 100); do
        curl -fs "http://$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
}

stop_all_replicas() {
    local pid
    for pid in "${REPLICA_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}

fanout() {
    local label=$1
    shift
    echo "+ sidewire-bench fanout --label $label --subscribers $SUBS --channels $CHANNELS --publishes $PUBLISHES --publishers $PUBLISHERS $*" >&2
    "$BENCH" fanout --label "$label" --subscribers "$SUBS" --channels "$CHANNELS" \
        --publishes "$PUBLISHES" --publishers "$PUBLISHERS" --payload-bytes 128 "$@"
}

REDIS_ENGINE="engine:
  type: redis
  redis:
    address: \"redis://127.0.0.1:$REDIS_PORT\"
    prefix: \"bench\""

# 1. memory engine, one node.
start_replica memory ""
REPLICA_PIDS=("$PID")
fanout sidewire-memory --url "$WS_URL" --publish-url "$PUBLISH_URL" --pid "$PID"
stop_all_replicas

# 2. Redis engine, one node.
start_replica redis1 "$REDIS_ENGINE"
REPLICA_PIDS=("$PID")
fanout sidewire-redis-1-replica --url "$WS_URL" --publish-url "$PUBLISH_URL" --pid "$PID" \
    --channel-prefix "r1-$RANDOM"
stop_all_replicas

# 3. Redis engine, three replicas; subscribers spread, publications through replica 1.
start_replica a "$REDIS_ENGINE"; URL_A=$WS_URL; PUB_A=$PUBLISH_URL; PID_A=$PID
start_replica b "$REDIS_ENGINE"; URL_B=$WS_URL; PID_B=$PID
start_replica c "$REDIS_ENGINE"; URL_C=$WS_URL; PID_C=$PID
REPLICA_PIDS=("$PID_A" "$PID_B" "$PID_C")
fanout sidewire-redis-3-replicas --url "$URL_A" --replica-url "$URL_B" --replica-url "$URL_C" \
    --publish-url "$PUB_A" --pid "$PID_A" --pid "$PID_B" --pid "$PID_C" \
    --channel-prefix "r3-$RANDOM"
stop_all_replicas
