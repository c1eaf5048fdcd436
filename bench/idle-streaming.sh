#!/usr/bin/env bash
# Idle streaming sessions (issue 11): RSS per session of one fresh sidewire (embedded hub),
# N idle http_stream / sse / websocket sessions held 5 s, server on CPU 0, load generator on
# CPU 1 (the commands of bench/RESULTS.md "Idle streaming sessions", scripted).
#
#   bench/idle-streaming.sh <dir holding sidewire and sidewire-bench> http-stream|sse|websocket [N=5000]
#
# Config: bench/run.sh's sidewire config plus `http_stream: true` and `sse: true`.
set -euo pipefail
DIR=$1; T=$2; N=${3:-5000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/sidewire-idle-streaming.XXXXXX)
sed -n '/^cat >"\$SIDEWIRE_CONFIG" <<.EOF.$/,/^EOF$/p' "$ROOT/bench/run.sh" | sed '1d;$d' >"$WORK/cfg.yaml"
printf 'http_stream: true\nsse: true\n' >>"$WORK/cfg.yaml"
ulimit -n 20000
taskset -c 0 "$DIR/sidewire" --config "$WORK/cfg.yaml" >"$WORK/server.out" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening "$WORK/server.out" 2>/dev/null && break; sleep 0.2; done
ADDR=$(sed -n 's/.*client=\([0-9.:]*\).*/\1/p' "$WORK/server.out" | head -1)
case $T in
  http-stream) URL=http://$ADDR/connection/http_stream; EXTRA=(--transport http-stream);;
  sse) URL=http://$ADDR/connection/sse; EXTRA=(--transport sse);;
  websocket) URL=ws://$ADDR/connection/websocket; EXTRA=();;
  *) echo "transport: http-stream, sse or websocket" >&2; exit 2;;
esac
taskset -c 1 "$DIR/sidewire-bench" --threads 1 idle "${EXTRA[@]}" --label sidewire \
    --url "$URL" --pid "$PID" --connections "$N" --hold 5s
