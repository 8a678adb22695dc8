#!/usr/bin/env bash
# TLS termination, side by side in one run: wrk (Debian, keep-alive, TLS 1.3) against nginx
# as a TLS-terminating reverse proxy (1 worker, keepalive upstream) and against `weft gateway
# --cert-file --key-file` (1 worker thread), both with the same certificate (ECDSA P-256,
# made here with openssl) and proxying to the same plain upstream (a separate nginx answering
# a constant 200), 64 connections.
#
#   scripts/bench-gateway-tls.sh [SECONDS] [CONNECTIONS] [ROUNDS]
#   WEFT_BIN=/path/to/weft scripts/bench-gateway-tls.sh ...   # another build of weft
#
# Rounds alternate the two; the table shows the medians, each one's ratio to nginx in req/s
# and in the proxy's CPU time per request (user + system from /proc).
#
# Needs: nginx, wrk, openssl (apt-get install nginx wrk openssl). Loopback only.
set -euo pipefail

SECS=${1:-10}
CONNS=${2:-64}
ROUNDS=${3:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

need_bins nginx wrk openssl
if [ -z "${WEFT_BIN:-}" ]; then (cd "$ROOT" && cargo build --release -q -p weft); fi
WEFT="${WEFT_BIN:-$ROOT/target/release/weft}"

tls_cert

UP=$(free_port); NGX=$(free_port); W1=$(free_port)
nginx_conf upstream "server { listen 127.0.0.1:$UP; keepalive_requests 1000000; location / { return 200 'hello from upstream\n'; } }"
nginx_conf proxy "upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server { listen 127.0.0.1:$NGX ssl; keepalive_requests 1000000;
      ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
      ssl_protocols TLSv1.2 TLSv1.3;
      location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
cat > "$WORK/gw.toml" <<EOF
[[route]]
name = "plain"
path = "/"
upstream = "up"

[[upstream]]
name = "up"
endpoints = [{ address = "127.0.0.1:$UP" }]
EOF
"$WEFT" gateway --threads 1 --listen 127.0.0.1:"$W1" --config "$WORK/gw.toml" \
    --cert-file "$WORK/cert.pem" --key-file "$WORK/key.pem" >/dev/null 2>"$WORK/weft.log" &
PIDS+=($!); W1PID=$!
wait_port "$UP"; wait_port "$NGX"; wait_port "$W1"
NGXPID=$(pgrep -P "${PIDS[1]}" | head -1)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run_wrk() { # $1 = label, $2 = proxy pid, $3 = url
    local out t0 t1 n cpu
    t0=$(ticks "$2")
    out=$(wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "$3")
    t1=$(ticks "$2")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(python3 -c "print(f'{($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / $n:.1f}')")
    grep -q 'Non-2xx' <<<"$out" && echo "warning: $1: non-2xx responses" >&2
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
        "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")" "$cpu" >> "$WORK/results.tsv"
}
# The TLS version each one settles on with a client like wrk's (OpenSSL): both TLS 1.3.
for p in "$NGX" "$W1"; do
    v=$(openssl s_client -connect 127.0.0.1:"$p" -servername localhost </dev/null 2>/dev/null | grep -m1 -o 'TLSv1\.[0-3], Cipher is [A-Z0-9_-]*' || true)
    echo "port $p: $v" >&2
done

for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    run_wrk "nginx 1.22, TLS, 1 worker" "$NGXPID" "https://127.0.0.1:$NGX/"
    run_wrk "weft gateway, TLS, 1 thread" "$W1PID" "https://127.0.0.1:$W1/"
done

python3 - "$WORK/results.tsv" <<'PY'
import statistics, sys
rows, order = {}, []
def ms(v):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
for line in open(sys.argv[1]):
    label, rps, p50, p99, cpu = line.rstrip("\n").split("\t")
    if label not in rows:
        order.append(label); rows[label] = []
    rows[label].append((float(rps), ms(p50), ms(p99), float(cpu)))
med = {l: tuple(statistics.median(x[i] for x in rows[l]) for i in range(4)) for l in order}
ng = med[order[0]]
print("| target | req/s (median) | vs nginx | p50 ms | p99 ms | proxy CPU µs/request | vs nginx | req/s, p99 ms of each round |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for l in order:
    r, p50, p99, cpu = med[l]
    each = ", ".join(f"{x[0]:.0f} / {x[2]:.2f}" for x in rows[l])
    print(f"| {l} | {r:.0f} | {r / ng[0]:.2f}x | {p50:.2f} | {p99:.2f} | {cpu:.1f} | {cpu / ng[3]:.2f}x | {each} |")
PY
