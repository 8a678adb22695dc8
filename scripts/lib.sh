# Shared by the benchmark scripts (sourced, not run): a temp dir and background processes
# cleaned up on exit, and loopback port helpers.
#   WORK      temp dir, removed on exit
#   PIDS      add the pids of background servers: killed on exit
#   free_port prints a free loopback port
#   wait_port PORT: waits up to 10 s for something to listen on 127.0.0.1:PORT
#   nginx_conf NAME SERVER_BLOCK [WORKERS]: starts an nginx (daemon off) with that http block

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1 after 10 s" >&2
    exit 1
}

nginx_conf() { # $1 = name, $2 = server block, $3 = worker processes (default 1)
    mkdir -p "$WORK/$1"
    cat > "$WORK/$1/nginx.conf" <<EOF
worker_processes ${3:-1};
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/$1; proxy_temp_path $WORK/$1; fastcgi_temp_path $WORK/$1;
    uwsgi_temp_path $WORK/$1; scgi_temp_path $WORK/$1;
    $2
}
EOF
    nginx -p "$WORK/$1" -c "$WORK/$1/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
}
