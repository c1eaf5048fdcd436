#!/usr/bin/env bash
# sidewire benchmark suite (loopback only). Builds release, then runs `sidewire-bench` against
# a fresh sidewire (embedded hub) per scenario and against the floor server
# (`sidewire-bench floor-server`, a minimal tokio-tungstenite server) with the same parameters,
# and writes bench/RESULTS.md (tables + machine + exact commands) and bench/results.jsonl.
#
#   bash bench/run.sh            # full suite, ~5-10 min on 2 cores after the build
#   QUICK=1 bash bench/run.sh    # smaller counts, for checking the script itself
#   REPEAT=3 bash bench/run.sh   # runs per configuration (default 3; tables show the median)
#   PIN=0 bash bench/run.sh      # do not pin server / load generator to separate CPUs
#   FLOOR_READ_BUFFER=4096 ...   # floor server's WebSocket read buffer (default 2048, as sidewire)
#   BENCH_COMMIT="..."           # how RESULTS.md names the tree (default: git HEAD + dirty flag)
#
# With PIN=1 (default, needs >= 2 CPUs) every server runs on CPU 0 and the load generator on
# CPU 1 with one runtime thread, so the numbers are "one core of server".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH_DIR="$ROOT/bench"
QUICK=${QUICK:-0}
PIN=${PIN:-1}
REPEAT=${REPEAT:-3}
FLOOR_READ_BUFFER=${FLOOR_READ_BUFFER:-2048}

# --- file descriptors: 10k client sockets here, 10k server sockets in the server -------------
HARD_NOFILE=$(ulimit -Hn)
if [[ "$HARD_NOFILE" == unlimited ]]; then HARD_NOFILE=65536; fi
ulimit -n "$HARD_NOFILE"
if (( HARD_NOFILE < 10300 )); then
    echo "ulimit -Hn is $HARD_NOFILE; 10 000 connections need at least 10300" >&2
    exit 1
fi

echo "== cargo build --release --bins"
cargo build --release --bins
SIDEWIRE="$ROOT/target/release/sidewire"
BENCH="$ROOT/target/release/sidewire-bench"

if [[ "$PIN" == 1 ]] && (( $(nproc) >= 2 )) && command -v taskset >/dev/null; then
    SERVER_PIN=(taskset -c 0)
    CLIENT_PIN=(taskset -c 1)
    CLIENT_THREADS=(--threads 1)
    PINNING="server on CPU 0, load generator on CPU 1 (taskset), load generator with 1 runtime thread"
else
    SERVER_PIN=()
    CLIENT_PIN=()
    CLIENT_THREADS=()
    PINNING="no pinning: server and load generator share all CPUs"
fi

WORK=$(mktemp -d /tmp/sidewire-bench.XXXXXX)
RESULTS="$WORK/results.jsonl"
HUMAN="$WORK/human.txt"
COMMANDS="$WORK/commands.txt"
FAILURES="$WORK/failures.txt"
: >"$RESULTS"; : >"$HUMAN"; : >"$COMMANDS"; : >"$FAILURES"
SERVER_PIDS=()  # processes this script started for the current server, stopped in order
MEASURE_PIDS=() # processes whose RSS / CPU the load generator reads (--pid)

stop_server() {
    local pid
    for pid in "${SERVER_PIDS[@]}" "${MEASURE_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PIDS=()
    MEASURE_PIDS=()
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT

# wait_line FILE PATTERN PID: waits (max 20 s, while PID lives) until FILE has a line
# matching PATTERN, prints it.
wait_line() {
    local file=$1 pattern=$2 pid=$3 line
    for _ in $(seq 1 200); do
        line=$(grep -m1 -E "$pattern" "$file" 2>/dev/null || true)
        if [[ -n "$line" ]]; then
            echo "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "server did not print '$pattern'; its stderr:" >&2
    tail -20 "${file%.out}.err" >&2 || true
    return 1
}

SIDEWIRE_CONFIG="$WORK/sidewire.yaml"
cat >"$SIDEWIRE_CONFIG" <<'EOF'
# Benchmark config: ephemeral loopback ports, any origin, a large per-session queue so the
# saturating fan-out runs measure throughput rather than 3008 slow-client disconnects.
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
allowed_origins: ["*"]
queue_max_size: 67108864
log:
  level: "warn"
EOF

# Each start_<server> starts a fresh server and sets SERVER_PIDS, MEASURE_PIDS, WS_URL,
# PUBLISH_URL, TARGET_ARGS (load-generator options for every scenario) and FANOUT_ARGS.
start_sidewire() {
    "${SERVER_PIN[@]}" "$SIDEWIRE" --config "$SIDEWIRE_CONFIG" \
        >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PIDS=($!)
    MEASURE_PIDS=("${SERVER_PIDS[@]}")
    local line client admin
    line=$(wait_line "$WORK/server.out" '^sidewire listening ' "${SERVER_PIDS[0]}")
    client=$(sed -n 's/.*client=\([^ ]*\).*/\1/p' <<<"$line")
    admin=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' <<<"$line")
    WS_URL="ws://$client/connection/websocket"
    PUBLISH_URL="http://$admin/api/publish"
    TARGET_ARGS=(--label sidewire)
    FANOUT_ARGS=()
}

# sidewire with an external hub (`sidewire hub`, over the gRPC Link): splits the memory of
# the sidecar proper from the hub's (sessions, channels, history) in the per-process table.
start_sidewire_ext() {
    local line link hub
    cat >"$WORK/hub.yaml" <<EOF
hub:
  link_listen: "127.0.0.1:0"
  api_listen: "127.0.0.1:0"
log:
  level: "warn"
EOF
    "${SERVER_PIN[@]}" "$SIDEWIRE" hub --config "$WORK/hub.yaml" \
        >"$WORK/hub.out" 2>"$WORK/hub.err" &
    hub=$!
    SERVER_PIDS=("$hub")
    line=$(wait_line "$WORK/hub.out" '^sidewire hub listening ' "$hub")
    link=$(sed -n 's/.*link=\([^ ]*\).*/\1/p' <<<"$line")
    sed '/^log:/,$d' "$SIDEWIRE_CONFIG" >"$WORK/sidecar.yaml"
    cat >>"$WORK/sidecar.yaml" <<EOF
upstream:
  endpoint: "http://$link"
log:
  level: "warn"
EOF
    "${SERVER_PIN[@]}" "$SIDEWIRE" --config "$WORK/sidecar.yaml" \
        >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PIDS=($! "$hub")
    MEASURE_PIDS=("${SERVER_PIDS[@]}")
    local client admin
    line=$(wait_line "$WORK/server.out" '^sidewire listening ' "${SERVER_PIDS[0]}")
    client=$(sed -n 's/.*client=\([^ ]*\).*/\1/p' <<<"$line")
    admin=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' <<<"$line")
    # Ready = Link up.
    for _ in $(seq 1 100); do
        curl -sf "http://$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    WS_URL="ws://$client/connection/websocket"
    PUBLISH_URL="http://$admin/api/publish"
    TARGET_ARGS=(--label sidewire+hub)
    FANOUT_ARGS=()
}

start_floor() {
    "${SERVER_PIN[@]}" "$BENCH" floor-server --read-buffer-bytes "$FLOOR_READ_BUFFER" \
        >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PIDS=($!)
    MEASURE_PIDS=("${SERVER_PIDS[@]}")
    local line ws http
    line=$(wait_line "$WORK/server.out" '^floor listening ' "${SERVER_PIDS[0]}")
    ws=$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' <<<"$line")
    http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$line")
    WS_URL="ws://$ws/"
    PUBLISH_URL="http://$http/publish"
    TARGET_ARGS=(--label floor --raw)
    FANOUT_ARGS=()
}

# Pushpin (Debian package) in GRIP WebSocket-over-HTTP mode: clients connect to Pushpin, which
# POSTs their events to the floor server's /grip backend; `sub <channel>` is answered with a
# GRIP subscribe, so Pushpin itself holds subscriptions and fans publications out (its
# /publish/ API). Measured RSS / CPU: condure + zurl + pushpin-proxy + pushpin-handler (not the
# stateless backend). zurl's max_open_requests is raised (anchors §5.6), message_rate and
# message_hwm too. Fixed loopback ports: PUSHPIN_PORT (17999) and 15560-15563.
PUSHPIN_PORT=${PUSHPIN_PORT:-17999}
start_pushpin() {
    local dir="$WORK/pushpin" line http runner
    "${SERVER_PIN[@]}" "$BENCH" floor-server >"$WORK/backend.out" 2>"$WORK/backend.err" &
    SERVER_PIDS=($!)
    line=$(wait_line "$WORK/backend.out" '^floor listening ' "${SERVER_PIDS[0]}")
    http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$line")
    rm -rf "$dir"
    mkdir -p "$dir/run" "$dir/log"
    cp -r /usr/lib/pushpin "$dir/lib"
    sed -i 's/^max_open_requests=.*/max_open_requests=100000/' "$dir/lib/runner/zurl.conf.template"
    cat >"$dir/pushpin.conf" <<EOF
[global]
libdir=$dir/lib
include={libdir}/internal.conf
rundir=$dir/run
ipc_prefix=pushpin-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:$PUSHPIN_PORT
logdir=$dir/log
log_level=2
client_buffer_size=4096
client_maxconn=50000
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile=routes
sig_key=changeme
updates_check=off
zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in
zurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream
zurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out

[handler]
push_in_spec=tcp://127.0.0.1:15560
push_in_sub_specs=tcp://127.0.0.1:15562
push_in_http_addr=127.0.0.1
push_in_http_port=15561
stats_spec=ipc://{rundir}/{ipc_prefix}stats
command_spec=tcp://127.0.0.1:15563
message_rate=1000000
message_hwm=1000000
EOF
    echo "* $http,over_http" >"$dir/routes"
    "${SERVER_PIN[@]}" pushpin --config="$dir/pushpin.conf" >"$dir/runner.out" 2>&1 &
    runner=$!
    SERVER_PIDS=("$runner" "${SERVER_PIDS[@]}")
    for _ in $(seq 1 200); do
        if (( $(pgrep -P "$runner" | wc -l) >= 4 )) \
            && (echo >"/dev/tcp/127.0.0.1/$PUSHPIN_PORT") 2>/dev/null \
            && (echo >/dev/tcp/127.0.0.1/15561) 2>/dev/null; then
            break
        fi
        kill -0 "$runner" 2>/dev/null || break
        sleep 0.1
    done
    mapfile -t MEASURE_PIDS < <(pgrep -P "$runner")
    if (( ${#MEASURE_PIDS[@]} < 4 )); then
        echo "pushpin did not start; runner output:" >&2
        tail -20 "$dir/runner.out" >&2 || true
        return 1
    fi
    WS_URL="ws://127.0.0.1:$PUSHPIN_PORT/grip"
    PUBLISH_URL="http://127.0.0.1:15561/publish/"
    # At 200 handshakes in flight Pushpin answered 10-15 % of them with 502; 100 is clean.
    TARGET_ARGS=(--label pushpin --raw --concurrency 100)
    FANOUT_ARGS=(--publish-format pushpin)
}

# nginx (one worker) as a plain WebSocket reverse proxy in front of the floor server: what a
# user gets from "nginx in front of my own WebSocket server". Measured RSS / CPU: nginx master +
# worker + the floor server behind it. Publications go straight to the floor server.
start_nginx() {
    local dir="$WORK/nginx" line ws http port
    "${SERVER_PIN[@]}" "$BENCH" floor-server --read-buffer-bytes "$FLOOR_READ_BUFFER" \
        >"$WORK/backend.out" 2>"$WORK/backend.err" &
    SERVER_PIDS=($!)
    line=$(wait_line "$WORK/backend.out" '^floor listening ' "${SERVER_PIDS[0]}")
    ws=$(sed -n 's/.*ws=\([^ ]*\).*/\1/p' <<<"$line")
    http=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' <<<"$line")
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    rm -rf "$dir"
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 30000; }
http {
    access_log off;
    tcp_nodelay on;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://$ws;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }
    }
}
NGINX
    "${SERVER_PIN[@]}" nginx -c "$dir/nginx.conf" -e "$dir/logs/error.log" &
    SERVER_PIDS=($! "${SERVER_PIDS[@]}")
    for _ in $(seq 1 100); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
    MEASURE_PIDS=("${SERVER_PIDS[@]}" $(pgrep -P "${SERVER_PIDS[0]}" || true))
    WS_URL="ws://127.0.0.1:$port/"
    PUBLISH_URL="http://$http/publish"
    TARGET_ARGS=(--label nginx --raw)
    FANOUT_ARGS=()
}

# bench SCENARIO ARGS...: one load-generator run against the current server.
bench() {
    local cmd=("${CLIENT_PIN[@]}" "$BENCH" "${CLIENT_THREADS[@]}" "$@")
    echo "${cmd[*]}" >>"$COMMANDS"
    echo "-- ${cmd[*]}"
    if timeout 900 "${cmd[@]}" >"$WORK/bench.out" 2>"$WORK/bench.err"; then
        grep -v '^{' "$WORK/bench.out" | tee -a "$HUMAN"
        grep '^{' "$WORK/bench.out" >>"$RESULTS" || true
    else
        echo "FAILED: ${cmd[*]}: $(tail -3 "$WORK/bench.err")" | tee -a "$FAILURES" "$HUMAN"
    fi
}

# with SERVER SCENARIO ARGS...: fresh server, one run, stop.
with() {
    local server=$1
    shift
    "start_$server"
    local scenario=$1 args=() arg
    shift
    for arg in "$@"; do
        args+=("${arg//@PUBLISH_URL@/$PUBLISH_URL}")
    done
    local pid pids=()
    for pid in "${MEASURE_PIDS[@]}"; do
        pids+=(--pid "$pid")
    done
    if [[ "$scenario" == fanout ]]; then
        args+=("${FANOUT_ARGS[@]}")
    fi
    bench "$scenario" "${TARGET_ARGS[@]}" --url "$WS_URL" "${pids[@]}" "${args[@]}"
    stop_server
}

if [[ "$QUICK" == 1 ]]; then
    N_SMALL=200; N_LARGE=1000; P_SCALE=10; HOLD=2s; RPC_DURATION=3s
else
    N_SMALL=1000; N_LARGE=10000; P_SCALE=1; HOLD=5s; RPC_DURATION=10s
fi
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

echo "== idle"
for _ in $(seq 1 "$REPEAT"); do
    for n in "$N_SMALL" "$N_LARGE"; do
        for server in sidewire floor; do
            with "$server" idle --connections "$n" --hold "$HOLD"
        done
    done
    with sidewire idle --connections "$N_LARGE" --hold "$HOLD" --encoding protobuf
    with sidewire_ext idle --connections "$N_LARGE" --hold "$HOLD"
done

echo "== fan-out"
fanout_matrix=(
    # subscribers channels publishes publishers rate(0 = as fast as accepted)
    "$N_SMALL 1 $((3000 / P_SCALE)) 4 0"
    "$N_LARGE 1 $((300 / P_SCALE)) 4 0"
    "$N_SMALL 100 $((20000 / P_SCALE)) 16 0"
    "$N_LARGE 100 $((10000 / P_SCALE)) 16 0"
    # paced (well below saturation): latency without queueing
    "$N_LARGE 1 $((100 / P_SCALE)) 1 10"
    "$N_LARGE 100 $((2000 / P_SCALE)) 16 200"
)
for _ in $(seq 1 "$REPEAT"); do
    for row in "${fanout_matrix[@]}"; do
        read -r subs channels publishes publishers rate <<<"$row"
        for server in sidewire floor; do
            with "$server" fanout --subscribers "$subs" --channels "$channels" \
                --publishes "$publishes" --publishers "$publishers" --rate "$rate" \
                --payload-bytes 128 --publish-url @PUBLISH_URL@
        done
    done
done

echo "== rpc"
for _ in $(seq 1 "$REPEAT"); do
    with sidewire rpc --clients 50 --duration "$RPC_DURATION"
done

# --- peers -------------------------------------------------------------------------------
PEER_NOTES=""
if [[ "${PEERS:-1}" == 1 ]] && command -v pushpin >/dev/null && command -v condure >/dev/null \
    && command -v zurl >/dev/null && [[ -d /usr/lib/pushpin ]]; then
    echo "== peers: pushpin"
    for n in "$N_SMALL" "$N_LARGE"; do
        with pushpin idle --connections "$n" --hold "$HOLD"
    done
    # One run per configuration and a tenth of the publications: Pushpin delivers ~10x fewer
    # messages per second, and saturating throughput does not depend on the count.
    for row in "${fanout_matrix[@]}"; do
        read -r subs channels publishes publishers rate <<<"$row"
        with pushpin fanout --subscribers "$subs" --channels "$channels" \
            --publishes "$((publishes / 10 > 0 ? publishes / 10 : 1))" \
            --publishers "$publishers" --rate "$rate" \
            --payload-bytes 128 --publish-url @PUBLISH_URL@ --timeout 300s
    done
    PEER_NOTES="Pushpin $(dpkg-query -W -f='${Version}' pushpin 2>/dev/null || echo '?') (Debian package) in GRIP WebSocket-over-HTTP mode, run once per configuration with a tenth of the publications."
else
    PEER_NOTES="Pushpin was not measured (not installed: \`apt-get install pushpin\`, or PEERS=0)."
fi
if [[ "${PEERS:-1}" == 1 ]] && command -v nginx >/dev/null && command -v wrk >/dev/null; then
    echo "== peers: nginx (WebSocket proxy in front of the floor server)"
    for n in "$N_SMALL" "$N_LARGE"; do
        with nginx idle --connections "$n" --hold "$HOLD"
    done
    for row in "${fanout_matrix[@]}"; do
        read -r subs channels publishes publishers rate <<<"$row"
        with nginx fanout --subscribers "$subs" --channels "$channels" \
            --publishes "$publishes" --publishers "$publishers" --rate "$rate" \
            --payload-bytes 128 --publish-url @PUBLISH_URL@
    done
    PEER_NOTES="$PEER_NOTES nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (one worker) proxies WebSocket to the floor server (rows labelled \`nginx\`: RSS of nginx and the floor server together), run once per configuration."
    echo "== passthrough (wrk)"
    echo "bash bench/passthrough.sh $([[ "$QUICK" == 1 ]] && echo 3 || echo 10) 64" >>"$COMMANDS"
    bash "$BENCH_DIR/passthrough.sh" "$([[ "$QUICK" == 1 ]] && echo 3 || echo 10)" 64 | tee -a "$RESULTS"
else
    PEER_NOTES="$PEER_NOTES nginx was not measured (not installed: \`apt-get install nginx-light wrk\`, or PEERS=0)."
fi

END=$(date +%s)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- RESULTS.md ----------------------------------------------------------------------------
# Hand-written sections (between a line `<!-- hand-written -->` and a line
# `<!-- /hand-written -->`, e.g. the scale and TLS runs of bench/scale.sh) survive regeneration:
# they are appended again after the generated part.
HAND_WRITTEN="$WORK/hand-written.md"
: >"$HAND_WRITTEN"
if [[ -f "$BENCH_DIR/RESULTS.md" ]]; then
    sed -n '/^<!-- hand-written -->$/,/^<!-- \/hand-written -->$/p' "$BENCH_DIR/RESULTS.md" \
        >"$HAND_WRITTEN"
fi
MEM_TOTAL=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
# BENCH_COMMIT overrides the description of the tree (e.g. for a `git archive` export).
COMMIT=${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
DIRTY=""
if [[ -z "${BENCH_COMMIT:-}" ]] && git status --porcelain 2>/dev/null | grep -qv '^??'; then
    DIRTY=" (with uncommitted changes)"
fi
{
    echo "# sidewire benchmark results"
    echo
    echo "Generated by \`bash bench/run.sh\`$([[ "$QUICK" == 1 ]] && echo " (QUICK=1)") on $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$COMMIT\`$DIRTY; suite runtime $((END - START)) s after the build."
    echo
    echo "## Machine"
    echo
    echo "- CPUs: $(nproc) × $CPU_MODEL"
    echo "- Memory: $MEM_TOTAL"
    echo "- Kernel: $(uname -r); $(rustc --version 2>/dev/null || echo rustc unknown)"
    echo "- Pinning: $PINNING"
    echo "- Limits: \`ulimit -n $HARD_NOFILE\`; everything on loopback (127.0.0.1)"
    echo "- Load average (1/5/15 min) at start: $LOAD_START; at end: $LOAD_END. Other work on the"
    echo "  machine (e.g. builds) shows up as noise in the throughput and latency figures; each"
    echo "  configuration ran $REPEAT time(s), servers interleaved, and the tables show the median."
    echo
    echo "## Setup"
    echo
    echo "- **sidewire**: release build, embedded hub, a fresh process per run, config:"
    echo
    echo '```yaml'
    cat "$SIDEWIRE_CONFIG"
    echo '```'
    echo
    echo "  All other keys default (ping every 25 s, so idle runs of a few seconds see no pings)."
    echo "  Clients speak client protocol v2 over WebSocket (JSON unless noted): \`connect\`, then"
    echo "  \`subscribe\` (waiting for each reply), pongs answered."
    echo "- **sidewire+hub**: the same sidecar with \`upstream.endpoint\` pointing at a standalone"
    echo "  \`sidewire hub\` (gRPC Link); both processes measured, split per process below the idle table."
    echo "- **floor**: \`sidewire-bench floor-server\` — tokio-tungstenite 0.30 with a $FLOOR_READ_BUFFER-byte read"
    echo "  buffer and no protocol: text \`sub <channel>\` registers the connection (answered \`ok\`),"
    echo "  \`POST /publish?channel=C\` queues the body on every member's unbounded channel; the"
    echo "  writer flushes up to 16 frames at once. It is the cost of \"a Rust WebSocket that can be"
    echo "  published to\", with no sessions, protocol, hub, history or ping timers."
    echo "- **Load generator**: \`sidewire-bench\` (tokio-tungstenite clients, 4 KiB read buffer, 200"
    echo "  handshakes in flight). Fan-out payloads are 128-byte JSON"
    echo "  \`{\"ts\":<unix ns>,\"seq\":n,\"p\":publisher,\"pad\":..}\`; every subscriber checks each"
    echo "  publisher's sequence on its channel for loss and order."
    echo
    echo "## Results"
    echo
    "$BENCH" report --results "$RESULTS"
    echo "CPU columns (fan-out) are the share of one core used during the publish phase; a load"
    echo "generator near 100 % means the client, not the server, set the pace."
    echo
    echo "## Peers"
    echo
    echo "$PEER_NOTES Pushpin rows appear in the tables above (label \`pushpin\`); its"
    echo "handshakes ran 100 in flight instead of 200 (at 200, 10-15 % got 502 from Pushpin). The"
    echo "pushpin backend (the floor server's \`/grip\`) is stateless and not counted in its RSS."
    echo "Published figures for context (reference notes): Centrifugo OSS ~27 KB/conn idle (Go),"
    echo "AnyCable OSS ~33-41 KB/conn."
    echo
    echo "## Passthrough (HTTP reverse proxy)"
    echo
    echo "\`bench/passthrough.sh\`: wrk (1 thread, 64 connections, keep-alive) against an nginx"
    echo "backend answering a 2-byte body, directly and through each proxy; the proxy on CPU 0"
    echo "(sidewire with \`TOKIO_WORKER_THREADS=1\`, nginx with one worker), wrk and the backend on CPU 1."
    echo
    echo "| target | requests/s | × nginx | p50 ms | p99 ms | non-2xx |"
    echo "|---|---:|---:|---:|---:|---:|"
    python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"passthrough"' in l]
nginx = next((r["rps"] for r in rows if r["label"] == "nginx"), None)
for r in rows:
    ratio = f'{r["rps"] / nginx:.2f}' if nginx else "-"
    print(f'| {r["label"]} | {r["rps"]:.0f} | {ratio} | {r["p50_ms"]} | {r["p99_ms"]} | {r["non_2xx"]} |')
PY
    echo
    echo "## Chart"
    echo
    echo "![idle memory and fan-out latency](chart.svg)"
    if [[ -s "$FAILURES" ]]; then
        echo
        echo "## Failed runs"
        echo
        echo '```'
        cat "$FAILURES"
        echo '```'
    fi
    echo
    echo "## Output"
    echo
    echo '```'
    cat "$HUMAN"
    echo '```'
    echo
    echo "## Exact commands"
    echo
    echo "Run from the repository root after \`ulimit -n $HARD_NOFILE\` and \`cargo build --release --bins\`;"
    echo "servers were started as \`${SERVER_PIN[*]} target/release/sidewire --config <the yaml above>\`"
    echo "and \`${SERVER_PIN[*]} target/release/sidewire-bench floor-server\` (addresses and pids"
    echo "from their stdout line and \`\$!\`)."
    echo
    echo '```'
    sed "s|$ROOT/||g" "$COMMANDS"
    echo '```'
} >"$BENCH_DIR/RESULTS.md"
if [[ -s "$HAND_WRITTEN" ]]; then
    { echo; cat "$HAND_WRITTEN"; } >>"$BENCH_DIR/RESULTS.md"
fi
cp "$RESULTS" "$BENCH_DIR/results.jsonl"
python3 "$BENCH_DIR/chart.py" "$BENCH_DIR/results.jsonl" "$BENCH_DIR/chart.svg"
echo "== wrote bench/RESULTS.md and bench/results.jsonl ($((END - START)) s)"
if [[ -s "$FAILURES" ]]; then
    echo "some runs failed:" >&2
    cat "$FAILURES" >&2
    exit 1
fi
