#!/usr/bin/env bash
# The queue beside NATS JetStream on this machine, same run: publish with 1 and 64 producers
# (1 KiB messages), consume, end-to-end latency, and this disk's single fdatasync rate
# (crates/weft-queue/benches/queue.rs).
#
#   scripts/bench-queue.sh [SECONDS_PER_ROW] [PRODUCERS]
#   scripts/bench-queue.sh 3 1,64
#
# Needs nats-server (apt-get install nats-server); builds target/release/weft.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export QUEUE_BENCH_SECS="${1:-3}"
export QUEUE_BENCH_PRODUCERS="${2:-1,64}"
export QUEUE_BENCH_DIR="${QUEUE_BENCH_DIR:-$WORK}"
export WEFT_BIN="${WEFT_BIN:-$PWD/target/release/weft}"
cargo build -q --release -p weft
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores, nats-server $(nats-server --version | awk '{print $2}')"
cargo bench -q -p weft-queue --features nats --bench queue 2>/dev/null | grep '^|'
