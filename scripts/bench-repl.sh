#!/usr/bin/env bash
# Replication benchmark, side by side in one run: writes/s and latency (p50, p99) of puts
# through the etcd v3 API, same client (`weft bench etcd-api`), at 1, 16 and 64 clients,
# against
#   - a 3-member etcd cluster (Debian etcd-server; raft commits on a majority, every member
#     fsyncs), the client talking to the leader;
#   - a weft primary (`weft up --etcd-listen`) with two replicas (`weft up --replica-of`),
#     once per durability policy: async, semi-sync=1, sync (both replicas).
# Every server runs here on loopback with a fresh data dir, sharing the machine's cores.
#
#   scripts/bench-repl.sh [SECONDS] [CLIENTS] [MODES]
#   scripts/bench-repl.sh 3 1,16,64 async,semi-sync=1,sync
set -euo pipefail

SECS=${1:-3}
CLIENTS=${2:-1,16,64}
MODES=${3:-async,semi-sync=1,sync}
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

bench() { # NAME URL
    "$WEFT" bench etcd-api --endpoints "$1=$2" --workloads put --clients "$CLIENTS" --seconds "$SECS" \
        | grep '^| put'
}

echo "| workload | clients | server | ops/s | p50 µs | p99 µs | max µs |"
echo "|---|---|---|---|---|---|---|"

# The etcd cluster.
CLUSTER=""
declare -a CP PP
for i in 1 2 3; do
    CP[$i]=$(free_port); PP[$i]=$(free_port)
    CLUSTER+="e$i=http://127.0.0.1:${PP[$i]},"
done
CLUSTER=${CLUSTER%,}
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/etcd$i" \
        --listen-client-urls "http://127.0.0.1:${CP[$i]}" --advertise-client-urls "http://127.0.0.1:${CP[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${PP[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PP[$i]}" \
        --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token bench \
        --log-level error >"$WORK/etcd$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 1 2 3; do wait_port "${CP[$i]}"; done
ALL="http://127.0.0.1:${CP[1]},http://127.0.0.1:${CP[2]},http://127.0.0.1:${CP[3]}"
LEADER=""
for _ in $(seq 1 100); do
    LEADER=$(ETCDCTL_API=3 etcdctl --endpoints "$ALL" endpoint status -w json 2>/dev/null | python3 -c '
import json,sys
for s in json.load(sys.stdin):
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        print(s["Endpoint"])' || true)
    [ -n "$LEADER" ] && break
    sleep 0.1
done
[ -n "$LEADER" ] || { echo "the etcd cluster elected no leader" >&2; exit 1; }
bench etcd-3-members "$LEADER"
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

# weft: a primary and two replicas, per policy.
IFS=',' read -ra MODE_LIST <<<"$MODES"
for mode in "${MODE_LIST[@]}"; do
    H=$(free_port); E=$(free_port); R1=$(free_port); R2=$(free_port)
    rm -rf "$WORK/p" "$WORK/r1" "$WORK/r2"
    "$WEFT" up --data-dir "$WORK/p" --listen "127.0.0.1:$H" --etcd-listen "127.0.0.1:$E" \
        --durability "$mode;timeout=10s" --sync-replicas 2 --repl-name p >/dev/null 2>"$WORK/p.log" &
    PIDS+=($!)
    wait_port "$H"
    for r in R1 R2; do
        "$WEFT" up --data-dir "$WORK/$r" --listen "127.0.0.1:${!r}" --replica-of "http://127.0.0.1:$H" \
            --repl-name "$r" >/dev/null 2>"$WORK/$r.log" &
        PIDS+=($!)
    done
    wait_port "$E"
    for _ in $(seq 1 100); do
        n=$(curl -s "http://127.0.0.1:$H/v1/repl/status" | python3 -c '
import json,sys
print(sum(1 for r in json.load(sys.stdin)["replicas"] if r["state"] == "streaming"))' 2>/dev/null || echo 0)
        [ "$n" = 2 ] && break
        sleep 0.1
    done
    [ "$n" = 2 ] || { echo "the replicas did not connect" >&2; cat "$WORK"/*.log >&2; exit 1; }
    bench "weft-${mode//=/}" "http://127.0.0.1:$E"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
done
