#!/usr/bin/env bash
# Local vs a Ballista cluster on this machine (benchmarks/README.md, "Cluster").
#
#   benchmarks/cluster.sh [BIN_DIR]    (default: the release build in $CARGO_TARGET_DIR
#                                       or target/, built first with
#                                       cargo build --release --workspace --bins)
#
# Starts `flumen scheduler` and two `flumen executor`s (one slot each) on 127.0.0.1,
# then runs, each locally and on the cluster:
#   1. flumen-benchmarks wordcount / nexmark q5: rows held by the driver (a queue, a
#      pregenerated stream), shipped with every job;
#   2. the CLI examples (examples/cluster/wordcount.sql, q5.sql) and running counts
#      with generators read by the executors (rate, nexmark), running
#      counts in state partitions, Parquet written by the tasks;
#   3. the driver's peak memory (GNU time's maximum resident set) for a running count
#      over 10 K, 1 M and 8 M keys.
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-target}/release}
F=$BIN/flumen
B=$BIN/flumen-benchmarks
export MIMALLOC_ALLOW_LARGE_OS_PAGES=0 MIMALLOC_ALLOW_THP=0
PORT=${PORT:-50150}
URL=df://127.0.0.1:$PORT
WORK=$(mktemp -d /tmp/flumen-cluster-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
"$F" scheduler --bind 127.0.0.1:$PORT >"$WORK/scheduler.log" 2>&1 & pids+=($!)
sleep 1
"$F" executor --scheduler 127.0.0.1:$PORT --bind 127.0.0.1:$((PORT + 1)) --slots 1 \
  >"$WORK/executor-1.log" 2>&1 & pids+=($!)
"$F" executor --scheduler 127.0.0.1:$PORT --bind 127.0.0.1:$((PORT + 11)) --slots 1 \
  >"$WORK/executor-2.log" 2>&1 & pids+=($!)
sleep 3

echo "== driver-held rows (flumen-benchmarks)"
for where in "" "--cluster $URL"; do
  # shellcheck disable=SC2086
  $B wordcount --lines 2000 --batches 20 $where | grep -E "^wordcount|processing"
  # shellcheck disable=SC2086
  $B wordcount --lines 200000 --batches 4 $where | grep -E "^wordcount|processing|flumen \("
  # shellcheck disable=SC2086
  $B nexmark --events 200000 --events-per-batch 50000 --query q5 $where | grep -E "q5|batch"
  # Batches ten times larger: nearer what one core does in a 1 s batch.
  # shellcheck disable=SC2086
  $B wordcount --lines 2000000 --batches 4 $where | grep -E "^wordcount|processing|flumen \("
  # shellcheck disable=SC2086
  $B nexmark --events 2000000 --events-per-batch 500000 --query q5 $where | grep -E "q5|batch"
done

echo "== generators read by the executors (flumen CLI, available-now)"
wc_sql() { # rows per batch, rows in all, key modulus
  cat <<SQL
CREATE STREAM t WITH (connector = 'rate', rows_per_second = '$1', rows = '$2');
CREATE SINK o WITH (connector = 'files', path = '$WORK/out-$RANDOM', format = 'parquet') AS
  SELECT value % $3 AS k, count(*) AS n FROM t GROUP BY value % $3;
SQL
}
run() { # label, sql, extra flags...
  local label=$1 sql=$2
  shift 2
  echo "$sql" >"$WORK/q.sql"
  # GNU time (Debian's `time`): wall seconds and the driver's peak resident set (KB).
  /usr/bin/time -f '%e %M' -o "$WORK/time" \
    "$F" --no-ui --trigger available-now --batch-interval '1 s' "$@" -f "$WORK/q.sql" \
    >"$WORK/run.log" 2>&1 || { cat "$WORK/run.log"; exit 1; }
  read -r secs kb <"$WORK/time"
  printf '%-60s %7.2f s   driver peak RSS %6d MB\n' "$label" "$secs" $((kb / 1024))
}
for where in local cluster; do
  flags=()
  [ $where = cluster ] && flags=(--cluster "$URL")
  for keys in 10000 1000000 8000000; do
    run "$where: running count, 8 M rows (1 M a batch), $keys keys" \
      "$(wc_sql 1000000 8000000 $keys)" "${flags[@]}"
  done
  sed "s|/tmp/flumen-cluster/wordcount|$WORK/wc-$where|" examples/cluster/wordcount.sql >"$WORK/wc.sql"
  run "$where: examples/cluster/wordcount.sql (1 M lines)" "$(cat "$WORK/wc.sql")" "${flags[@]}"
  sed "s|/tmp/flumen-cluster/q5|$WORK/q5-$where|" examples/cluster/q5.sql >"$WORK/q5.sql"
  run "$where: examples/cluster/q5.sql (1 M events)" "$(cat "$WORK/q5.sql")" "${flags[@]}"
done
