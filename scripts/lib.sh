# Shared by the benchmark scripts (sourced, not run): a temp dir and background processes
# cleaned up on exit, and loopback port helpers.
#   WORK      temp dir, removed on exit
#   PIDS      add the pids of background servers: killed on exit
#   free_port prints a free loopback port
#   wait_port PORT: waits up to 10 s for something to listen on 127.0.0.1:PORT
#   nginx_conf NAME SERVER_BLOCK [WORKERS]: starts an nginx (daemon off) with that http block
#   need_bins BIN...: exits with the apt-get command when one of them is missing
#   tls_cert  makes $WORK/ca.pem and a certificate it signs for localhost and 127.0.0.1,
#             $WORK/cert.pem with $WORK/key.pem (ECDSA P-256; rustls refuses a CA as a
#             server's own certificate)

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

need_bins() {
    for b in "$@"; do
        command -v "$b" >/dev/null || { echo "missing $b: apt-get install -y $*" >&2; exit 1; }
    done
}

tls_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=bench CA" -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
        -keyout "$WORK/key.pem" -out "$WORK/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$WORK/ext.cnf"
    openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" \
        -CAcreateserial -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/cert.pem" 2>/dev/null
}
