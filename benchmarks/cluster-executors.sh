#!/usr/bin/env bash
# How a batch's cost on a cluster grows with its executors (benchmarks/README.md,
# "Cluster", the model's input): for 1, 2, 4 and 8 executors of one slot on 127.0.0.1,
# the per-batch processing time of a word count over small batches (the overhead:
# job submission, task launch — a task per state partition and stage, spread over
# the executors — result fetch, the job report) and the wall time of a running count
# over generated rows that the executors read themselves.
#
#   benchmarks/cluster-executors.sh [BIN_DIR]   (default: $CARGO_TARGET_DIR/release)
#
# On one 2-core machine more executors add no cores: this measures what the driver
# and the scheduler pay per executor, not throughput.
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release}
F=$BIN/flumen
B=$BIN/flumen-benchmarks
export MIMALLOC_ALLOW_LARGE_OS_PAGES=0 MIMALLOC_ALLOW_THP=0
WORK=$(mktemp -d /tmp/flumen-cluster-executors.XXXXXX)
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop; rm -rf "$WORK"' EXIT
PORT=${PORT:-50250}
for n in 1 2 4 8; do
  URL=df://127.0.0.1:$PORT
  "$F" scheduler --bind 127.0.0.1:$PORT >"$WORK/scheduler-$n.log" 2>&1 & pids+=($!)
  sleep 1
  for i in $(seq 1 "$n"); do
    "$F" executor --scheduler 127.0.0.1:$PORT --bind 127.0.0.1:$((PORT + 10 * i)) --slots 1 \
      >"$WORK/executor-$n-$i.log" 2>&1 & pids+=($!)
  done
  sleep 3
  echo "== $n executors"
  $B wordcount --lines 2000 --batches 20 --cluster "$URL" | grep -E "processing"
  cat >"$WORK/q.sql" <<SQL
SET state_partitions = '8';
CREATE STREAM t WITH (connector = 'rate', rows_per_second = '1000000', rows = '8000000');
CREATE SINK o WITH (connector = 'files', path = '$WORK/out-$n', format = 'parquet') AS
  SELECT value % 1000000 AS k, count(*) AS n FROM t GROUP BY value % 1000000;
SQL
  /usr/bin/time -f '%e' -o "$WORK/time" "$F" --no-ui --trigger available-now \
    --batch-interval '1 s' --cluster "$URL" -f "$WORK/q.sql" >"$WORK/run.log" 2>&1 \
    || { cat "$WORK/run.log"; exit 1; }
  printf 'running count, 8 M rows (1 M a batch), 1 M keys, 8 state partitions: %s s\n' \
    "$(cat "$WORK/time")"
  stop
  PORT=$((PORT + 100))
done
