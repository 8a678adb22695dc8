#!/usr/bin/env bash
# Gateway benchmark, side by side in one run: wrk (Debian) against nginx as a reverse proxy
# (1 worker, keepalive upstream) and against `weft gateway` (1 worker thread, then 2), all
# proxying to the same tiny upstream (a separate nginx with one worker answering a constant
# 200), 64 connections. Then the cost of each gateway feature.
#
#   scripts/bench-gateway.sh [SECONDS] [CONNECTIONS] [ROUNDS]
#   ROWS='nginx|weft gateway' scripts/bench-gateway.sh ...   # only the rows matching ROWS
#   WEFT_BIN=/path/to/weft scripts/bench-gateway.sh ...       # another build of weft
#
# Each round runs every target once, in turn; the table shows the median of the rounds (this
# machine is noisy) and each target's ratio to nginx, in req/s and in the CPU time the proxy
# process spent per request (user + system from /proc; steadier than req/s when the machine's
# speed drifts; for the "upstream direct" row it is the upstream's own cost).
#
# Needs: nginx, wrk, openssl (apt-get install nginx wrk openssl), a release build of weft
# (built here). Everything listens on loopback only. Prints a markdown table.
set -euo pipefail

SECS=${1:-10}
CONNS=${2:-64}
ROUNDS=${3:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

need_bins nginx wrk openssl

# WEFT_BIN=path: a weft binary built elsewhere (to compare two builds side by side).
if [ -z "${WEFT_BIN:-}" ]; then (cd "$ROOT" && cargo build --release -q -p weft); fi
(cd "$ROOT" && cargo build --release -q -p weft-gateway --example bare_proxy)
WEFT="${WEFT_BIN:-$ROOT/target/release/weft}"
BARE="$ROOT/target/release/examples/bare_proxy"


UP=$(free_port); NGX=$(free_port); NGX2=$(free_port)


nginx_conf upstream "server { listen 127.0.0.1:$UP; keepalive_requests 1000000; location / { return 200 'hello from upstream\n'; } }"
nginx_conf proxy "upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server { listen 127.0.0.1:$NGX; keepalive_requests 1000000;
      location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
# For reference at two cores: nginx with two workers (the goal compares against one).
nginx_conf proxy2 "upstream up { server 127.0.0.1:$UP; keepalive 64; }
    server { listen 127.0.0.1:$NGX2; keepalive_requests 1000000;
      location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" 2

wait_port "$UP"; wait_port "$NGX"; wait_port "$NGX2"
# nginx's proxy worker (the process doing the work).
NGXPID=$(pgrep -P "${PIDS[1]}" | head -1)
UPPID=$(pgrep -P "${PIDS[0]}" | head -1)
NGX2PIDS=$(pgrep -P "${PIDS[2]}" | paste -sd,)

SECRET=bench-secret-bench-secret-bench-secret
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
HDR=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
PAY=$(printf '{"sub":"bench","exp":%d}' $(( $(date +%s) + 3600 )) | b64url)
SIG=$(printf '%s.%s' "$HDR" "$PAY" | openssl dgst -sha256 -hmac "$SECRET" -binary | b64url)
TOKEN="$HDR.$PAY.$SIG"

cat > "$WORK/gw.toml" <<EOF
[[route]]
name = "plain"
path = "/"
upstream = "up"

[[route]]
name = "jwt"
path_prefix = "/jwt"
rewrite = ""
upstream = "up"
auth = "jwt"

[[route]]
name = "ratelimit"
path_prefix = "/ratelimit"
rewrite = ""
upstream = "up"
rate_limit = { per_second = 100000000, by = "ip" }

[[route]]
name = "breaker"
path_prefix = "/breaker"
rewrite = ""
upstream = "up"
breaker = { failure_rate = 50 }

[[route]]
name = "all"
path_prefix = "/all"
rewrite = ""
upstream = "up"
auth = "jwt"
rate_limit = { per_second = 100000000 }
breaker = { failure_rate = 50 }
retry = { attempts = 2 }

[[upstream]]
name = "up"
endpoints = [{ address = "127.0.0.1:$UP" }]

[[auth]]
name = "jwt"
kind = "jwt"
algorithms = ["HS256"]
secret = "$SECRET"
EOF

ticks() { # CPU time (user + system, in clock ticks) of processes (comma-separated pids)
    local t=0 p
    for p in ${1//,/ }; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}

run_wrk() { # $1 = label, $2 = proxy pid, $3 = url, rest = wrk args; appends to results.tsv
    local label=$1 pid=$2 url=$3; shift 3
    # ROWS=REGEX runs only the matching rows (for quick checks; full runs leave it unset).
    if [ -n "${ROWS:-}" ] && ! [[ "$label" =~ $ROWS ]]; then return 0; fi
    local out t0 t1
    t0=$(ticks "$pid")
    out=$(wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "$@" "$url")
    t1=$(ticks "$pid")
    local rps p50 p99 non2xx n cpu
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    # CPU microseconds the proxy spent per request: steadier than req/s on a noisy machine.
    cpu=$(python3 -c "print(f'{($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / $n:.1f}')")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    [ -z "$non2xx" ] || echo "warning: $label: $non2xx non-2xx responses" >&2
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$rps" "$p50" "$p99" "$cpu" >> "$WORK/results.tsv"
}

start_weft() { # $1 = threads, $2 = port, rest = flags (runs in this shell so cleanup can stop it)
    local t=$1 port=$2; shift 2
    "$WEFT" gateway --threads "$t" --listen 127.0.0.1:"$port" --config "$WORK/gw.toml" "$@" >/dev/null 2>"$WORK/weft-$t-$port.log" &
    PIDS+=($!)
    wait_port "$port"
}

W1=$(free_port); start_weft 1 "$W1"; W1PID=${PIDS[-1]}
W2=$(free_port); start_weft 2 "$W2"; W2PID=${PIDS[-1]}
W2P=$(free_port); start_weft 2 "$W2P" --pin-cpus; W2PPID=${PIDS[-1]}
# The floor: hyper's server (h1/h2c detection, header-read timer) + hyper-util's pooled client
# with nothing in between, one thread.
BP=$(free_port)
"$BARE" 127.0.0.1:"$BP" 127.0.0.1:"$UP" auto timer >/dev/null &
PIDS+=($!); BPPID=$!
wait_port "$BP"
# The same hyper server with weft's own HTTP/1 upstream client (weft_gateway::h1), nothing else.
BF=$(free_port)
"$BARE" 127.0.0.1:"$BF" 127.0.0.1:"$UP" auto timer fast >/dev/null &
PIDS+=($!); BFPID=$!
wait_port "$BF"

# Discovery-backed upstream: a node with the gateway inside, the upstream registered as a
# service, the route stored with `weft route add`.
NODE=$(free_port); GWN=$(free_port)
"$WEFT" up --data-dir "$WORK/node" --listen 127.0.0.1:"$NODE" --gateway-listen 127.0.0.1:"$GWN" >/dev/null 2>"$WORK/node.log" &
PIDS+=($!); NODEPID=$!
wait_port "$NODE"; wait_port "$GWN"
export WEFT_ENDPOINT=http://127.0.0.1:$NODE
"$WEFT" svc register up u1 127.0.0.1:"$UP" --ttl 30 >/dev/null &
PIDS+=($!)
"$WEFT" route add disc --upstream up --prefix / >/dev/null
for _ in $(seq 100); do
    status=$( (exec 3<>/dev/tcp/127.0.0.1/"$GWN"; printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3; head -1 <&3) 2>/dev/null | awk '{print $2}' || true)
    [ "$status" = 200 ] && break
    sleep 0.1
done

for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    run_wrk "upstream direct (no proxy)" "$UPPID" "http://127.0.0.1:$UP/"
    run_wrk "nginx 1.22 proxy, 1 worker" "$NGXPID" "http://127.0.0.1:$NGX/"
    run_wrk "bare hyper proxy (floor), 1 thread" "$BPPID" "http://127.0.0.1:$BP/"
    run_wrk "bare hyper server + weft h1 client, 1 thread" "$BFPID" "http://127.0.0.1:$BF/"
    run_wrk "weft gateway, 1 thread" "$W1PID" "http://127.0.0.1:$W1/"
    run_wrk "weft gateway, 2 threads" "$W2PID" "http://127.0.0.1:$W2/"
    run_wrk "weft gateway, 2 threads, --pin-cpus" "$W2PPID" "http://127.0.0.1:$W2P/"
    run_wrk "nginx 1.22 proxy, 2 workers (reference)" "$NGX2PIDS" "http://127.0.0.1:$NGX2/"
    run_wrk "weft 1 thread + JWT (HS256)" "$W1PID" "http://127.0.0.1:$W1/jwt" -H "Authorization: Bearer $TOKEN"
    run_wrk "weft 1 thread + rate limit (per IP, never hit)" "$W1PID" "http://127.0.0.1:$W1/ratelimit"
    run_wrk "weft 1 thread + breaker" "$W1PID" "http://127.0.0.1:$W1/breaker"
    run_wrk "weft 1 thread + JWT + limit + breaker + retry" "$W1PID" "http://127.0.0.1:$W1/all" -H "Authorization: Bearer $TOKEN"
    run_wrk "weft up gateway, discovered upstream (default threads)" "$NODEPID" "http://127.0.0.1:$GWN/"
done

python3 - "$WORK/results.tsv" <<'PY'
import statistics, sys
rows = {}
order = []
def ms(v):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
for line in open(sys.argv[1]):
    label, rps, p50, p99, cpu = line.rstrip("\n").split("\t")
    if label not in rows:
        order.append(label)
        rows[label] = []
    rows[label].append((float(rps), ms(p50), ms(p99), float(cpu)))
med = {l: tuple(statistics.median(x[i] for x in rows[l]) for i in range(4)) for l in order}
nginx = med.get("nginx 1.22 proxy, 1 worker", (None,))
print("| target | req/s (median) | vs nginx | p50 ms | p99 ms | proxy CPU µs/request | vs nginx | req/s of each round |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for l in order:
    r, p50, p99, cpu = med[l]
    ratio = f"{r / nginx[0]:.2f}x" if nginx[0] else ""
    cratio = f"{cpu / nginx[3]:.2f}x" if nginx[0] else ""
    each = ", ".join(f"{x[0]:.0f}" for x in rows[l])
    print(f"| {l} | {r:.0f} | {ratio} | {p50:.2f} | {p99:.2f} | {cpu:.1f} | {cratio} | {each} |")
PY
