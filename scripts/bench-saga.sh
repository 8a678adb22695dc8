#!/usr/bin/env bash
# Saga throughput and latency on the embedded store (fsync group), beside this disk's rate of
# single durable writes measured in the same run (crates/weft-saga/benches/saga.rs).
#
#   scripts/bench-saga.sh [SECONDS_PER_ROW] [ROUNDS] [ROWS]
#   scripts/bench-saga.sh 3 3                 # every row, 3 interleaved rounds (the default)
#   scripts/bench-saga.sh 3 5 local64         # one row
#
# Rows: local1 local64 (in-process steps that return at once: the saga machinery's own cost)
# and http1 http64 (HTTP steps against a local axum service). The data dir is a temp dir on
# the file system of this checkout (SAGA_BENCH_DIR overrides it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export SAGA_BENCH_SECS="${1:-3}"
export SAGA_BENCH_ROUNDS="${2:-3}"
if [ -n "${3:-}" ]; then export SAGA_BENCH_ROWS="$3"; fi
export SAGA_BENCH_DIR="${SAGA_BENCH_DIR:-$WORK}"
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores"
cargo bench -q -p weft-saga --bench saga 2>/dev/null | grep '^|'
