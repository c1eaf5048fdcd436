# Shared by the passthrough bench scripts (source it after `cd` to the repository root): a work
# directory removed on exit (kept with KEEP_WORK=1) with every process in PIDS killed, a free
# loopback port, waiting for a port, and a one-worker nginx config.
WORK="$(mktemp -d)"
PIDS=()
bench_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "${KEEP_WORK:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap bench_cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port: waits up to 60 s for it to accept
    for _ in $(seq 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    return 1
}

# Writes $WORK/NAME/nginx.conf: one worker, no access log, keep-alive without a request limit.
# NGINX_WORKER_CONNECTIONS (default 4096) for runs that hold more connections.
nginx_conf() { # name listen http-extra server-body [main-extra]
    mkdir -p "$WORK/$1/logs"
    cat >"$WORK/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
${5:-}
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/logs/error.log warn;
events { worker_connections ${NGINX_WORKER_CONNECTIONS:-4096}; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/$1/body;
    proxy_temp_path $WORK/$1/proxy;
    fastcgi_temp_path $WORK/$1/fastcgi;
    uwsgi_temp_path $WORK/$1/uwsgi;
    scgi_temp_path $WORK/$1/scgi;
    $3
    server {
        listen 127.0.0.1:$2 reuseport;
        $4
    }
}
CONF
}
