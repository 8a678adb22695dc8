#!/usr/bin/env bash
# etcd v3 API benchmark, side by side in one run: the same client (`weft bench etcd-api`, the
# etcd-client crate) against etcd (Debian etcd-server, single member, default settings: fsync
# on every commit) and against `weft up --etcd-listen` (fsync=group), each started here with
# a fresh data dir in the same temp directory, on loopback, sharing the machine's cores with
# the client (or, with SERVER_CPUS and CLIENT_CPUS, on separate cores).
#
#   scripts/bench-etcd.sh [SECONDS] [WORKLOADS] [CLIENTS] [ROUNDS]
#   scripts/bench-etcd.sh 3 put,txn,get,lease,lock,watch 1,16,64 1
#   CONNS=4 WEFT_ARGS='--commit-delay-us 150' scripts/bench-etcd.sh 3 put 64 5
#   TRANSPORT=direct scripts/bench-etcd.sh 3 put,txn 64 3
#   SERVER_CPUS=1 CLIENT_CPUS=0 scripts/bench-etcd.sh 3 put,txn 64 3
#   TLS=1 scripts/bench-etcd.sh 3 put 64 3     # both servers behind TLS (same certificate)
#   AUTH=1 scripts/bench-etcd.sh 3 put,get,txn 64 3  # auth enabled on both: clients log in
#                                              # as a user with readwrite on bench/ only
#
# Each round runs every cell against etcd, then against weft. Rows include each server's CPU
# time per operation and the client's (user + system from /proc; steadier than ops/s when the
# machine's speed drifts), and each core's idle share during the cell (idle + I/O wait).
# CONNS (default 16) is the number of gRPC connections the clients share; TRANSPORT
# (balanced or direct, see `weft bench etcd-api --help`) is how they connect;
# CLIENT_THREADS is the client's runtime threads (`--client-threads`, default one per core);
# WEFT_ARGS are extra `weft up` options; WEFT_BIN runs (and measures with) that weft binary
# instead of building this checkout, CLIENT_BIN measures with another one (the same for both
# servers), so that a server change can be measured with an unchanged client. SERVER_CPUS
# and CLIENT_CPUS (taskset CPU lists) pin both servers to some cores and the client to
# others, as if the client ran on another machine: each server then has the same cores,
# whatever the client costs against it.
# Prints markdown tables; with more than one round, a summary of the weft/etcd ratio per cell
# (every round and the median) follows.
set -euo pipefail

SECS=${1:-3}
WORKLOADS=${2:-put,txn,get,lease,lock,watch}
CLIENTS=${3:-1,16,64}
ROUNDS=${4:-1}
CONNS=${CONNS:-16}
TRANSPORT=${TRANSPORT:-balanced}
CLIENT_THREADS=${CLIENT_THREADS:-}
CT=()
[ -n "$CLIENT_THREADS" ] && CT=(--client-threads "$CLIENT_THREADS")
SERVER_CPUS=${SERVER_CPUS:-}
CLIENT_CPUS=${CLIENT_CPUS:-}
ON_SERVER=()
ON_CLIENT=()
[ -n "$SERVER_CPUS" ] && ON_SERVER=(taskset -c "$SERVER_CPUS")
[ -n "$CLIENT_CPUS" ] && ON_CLIENT=(taskset -c "$CLIENT_CPUS")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

command -v etcd >/dev/null || { echo "missing etcd: apt-get install -y etcd-server" >&2; exit 1; }
command -v etcdctl >/dev/null || { echo "missing etcdctl: apt-get install -y etcd-client" >&2; exit 1; }
if [ -n "${WEFT_BIN:-}" ]; then
    WEFT=$WEFT_BIN
else
    (cd "$ROOT" && cargo build --release -q -p weft --features etcd)
    WEFT="$ROOT/target/release/weft"
fi
CLIENT=${CLIENT_BIN:-$WEFT}


# TLS=1: one certificate (ECDSA P-256) for both servers' client listeners.
SCHEME=http
ETCD_TLS=(); WEFT_TLS=(); CLIENT_TLS=(); CTL_TLS=()
if [ "${TLS:-0}" = 1 ]; then
    tls_cert
    SCHEME=https
    ETCD_TLS=(--cert-file "$WORK/cert.pem" --key-file "$WORK/key.pem")
    WEFT_TLS=(--cert-file "$WORK/cert.pem" --key-file "$WORK/key.pem")
    CLIENT_TLS=(--cacert "$WORK/ca.pem")
    CTL_TLS=(--cacert "$WORK/ca.pem")
fi
EC=$(free_port); EP=$(free_port); WH=$(free_port); WE=$(free_port)
"${ON_SERVER[@]}" etcd --name bench --data-dir "$WORK/etcd" "${ETCD_TLS[@]}" \
    --listen-client-urls "$SCHEME://127.0.0.1:$EC" --advertise-client-urls "$SCHEME://127.0.0.1:$EC" \
    --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
    --initial-cluster "bench=http://127.0.0.1:$EP" >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
PIDS+=("$ETCD_PID")
# shellcheck disable=SC2086
"${ON_SERVER[@]}" "$WEFT" up --data-dir "$WORK/weft" --listen "127.0.0.1:$WH" --etcd-listen "127.0.0.1:$WE" \
    "${WEFT_TLS[@]}" ${WEFT_ARGS:-} >"$WORK/weft.log" 2>&1 &
WEFT_PID=$!
PIDS+=("$WEFT_PID")
wait_port "$EC"
wait_port "$WE"
# Ready means a write commits (etcd elects itself leader first), then one warm-up cell each
# (connections, allocator, page cache), not counted.
for ep in "127.0.0.1:$EC" "127.0.0.1:$WE"; do
    for i in $(seq 1 100); do
        ETCDCTL_API=3 etcdctl "${CTL_TLS[@]}" --endpoints "$SCHEME://$ep" put bench/ready x >/dev/null 2>&1 && break
        [ "$i" = 100 ] && { echo "$ep does not accept writes after 10 s" >&2; exit 1; }
        sleep 0.1
    done
done
# AUTH=1: root, and a user `bench` whose role may read and write bench/ (so every call's keys
# are checked against a grant, not waved through as root's), then auth enabled on both.
BENCH_USER=()
if [ "${AUTH:-0}" = 1 ]; then
    for ep in "127.0.0.1:$EC" "127.0.0.1:$WE"; do
        ctl=(env ETCDCTL_API=3 etcdctl "${CTL_TLS[@]}" --endpoints "$SCHEME://$ep")
        "${ctl[@]}" user add root:rootpw >/dev/null
        "${ctl[@]}" role add bench >/dev/null
        "${ctl[@]}" role grant-permission bench readwrite bench/ --prefix >/dev/null
        "${ctl[@]}" user add bench:benchpw >/dev/null
        "${ctl[@]}" user grant-role bench bench >/dev/null
        "${ctl[@]}" auth enable >/dev/null
    done
    BENCH_USER=(--user bench:benchpw)
fi
"${ON_CLIENT[@]}" "$CLIENT" bench etcd-api "${BENCH_USER[@]}" --seconds 1 --conns "$CONNS" --transport "$TRANSPORT" "${CT[@]}" --workloads put --clients 16 \
    "${CLIENT_TLS[@]}" --endpoints "etcd=$SCHEME://127.0.0.1:$EC,weft=$SCHEME://127.0.0.1:$WE" >/dev/null

echo "etcd $(etcd --version | head -1 | awk '{print $3}'), weft ${WEFT_BIN:-$(git -C "$ROOT" rev-parse --short HEAD)}${CLIENT_BIN:+ (client $CLIENT_BIN)}, $(nproc) cores, conns $CONNS, transport $TRANSPORT, client threads ${CLIENT_THREADS:-all}, ${SCHEME}${BENCH_USER:+, auth enabled}, cpus: servers ${SERVER_CPUS:-all} client ${CLIENT_CPUS:-all}, ${SECS} s per cell"
echo
for r in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && echo "round $r"
    "${ON_CLIENT[@]}" "$CLIENT" bench etcd-api "${BENCH_USER[@]}" --seconds "$SECS" --conns "$CONNS" --transport "$TRANSPORT" "${CT[@]}" \
        "${CLIENT_TLS[@]}" --endpoints "etcd=$SCHEME://127.0.0.1:$EC,weft=$SCHEME://127.0.0.1:$WE" \
        --server-pids "etcd=$ETCD_PID,weft=$WEFT_PID" \
        --workloads "$WORKLOADS" --clients "$CLIENTS" | tee -a "$WORK/rows.md"
    echo
done
if [ "$ROUNDS" -gt 1 ]; then
    # One line per cell: weft/etcd ops/s in every round, their median, and the p99s.
    echo "summary over $ROUNDS rounds"
    echo
    echo "| workload | clients | weft/etcd per round | median | p99 weft / etcd per round (ms) |"
    echo "|---|---|---|---|---|"
    awk -F'|' '
        function t(s) { gsub(/ /, "", s); return s }
        $4 ~ /etcd|weft/ && t($5) ~ /^[0-9]+$/ {
            k = t($2) "|" t($3); e = t($4)
            if (e == "etcd") { eops[k] = t($5); ep99[k] = t($7) }
            else if (eops[k] > 0) {
                if (!(k in n)) order[++cells] = k
                n[k]++; r[k, n[k]] = t($5) / eops[k]
                p[k] = p[k] (n[k] > 1 ? ", " : "") sprintf("%.1f / %.1f", t($7) / 1000, ep99[k] / 1000)
            }
        }
        END {
            for (c = 1; c <= cells; c++) {
                k = order[c]; m = n[k]; list = ""
                for (i = 1; i <= m; i++) { v[i] = r[k, i]; list = list (i > 1 ? ", " : "") sprintf("%.2fx", v[i]) }
                for (i = 2; i <= m; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
                med = (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
                split(k, kk, "|")
                printf "| %s | %s | %s | %.2fx | %s |\n", kk[1], kk[2], list, med, p[k]
            }
        }' "$WORK/rows.md"
    echo
fi
