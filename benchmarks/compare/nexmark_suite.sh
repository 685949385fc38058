#!/usr/bin/env bash
# Every Nexmark query of benchmarks/nexmark/ (q0-q22), Flumen and Flink SQL side by side
# on the same input files, in one command:
#
#   benchmarks/compare/nexmark_suite.sh     # results under benchmarks/results/<date>/nexmark.*
#
# The input: `flumen-benchmarks export` writes EVENTS Nexmark events (the standard
# generator, 1/3/46 person/auction/bid) as CSV files, 10 per table, and the Flumen DDL
# that reads them (DATA/nexmark/ddl.sql: the streams of benchmarks/nexmark/ddl.sql over
# the files, one file a batch). Flumen runs each query file with the CLI, as a user
# does (`flumen --trigger available-now -f ddl.sql -f qN.sql`), timed from the process's
# start to its end; Flink SQL 2.3 runs the same query text (its views and the SELECT of
# its INSERT; compare/flink_bench.py) at parallelism 2 over the same files into a
# blackhole table, timed from job submission to its end. DataFusion runs the same text
# as one batch query over all the files (compare/nexmark_batch.py: the streams as
# external tables and views, `INSERT INTO sink SELECT ...` as `SELECT count(*) FROM
# (SELECT ...)`), with the CLI, timed as Flumen's. All count every event of the three
# tables. A query a system refuses is reported with its error, not skipped.
#
# Then the end-to-end latency, measured from outside the engine (compare/latency_e2e.py:
# a producer stamps each line with its send time into a socket, Flumen runs q0, q2 and
# a tumbling-window count into a console sink, a consumer reads it): p50/p99/max at
# 10 ms, 100 ms and 1 s batch intervals, 10,000 lines/s. LATENCY=0 leaves it out.
#
# Settings (environment): EVENTS (2000000), QUERIES ("q0 ... q22"), RUNS (1; the report
# takes medians), REPEAT (3: Flumen's and DataFusion's runs of a query per run, each its own process —
# they last about a second, where this machine's noise is largest), SYSTEMS ("flumen datafusion flink"), FLUMEN_BENCH_VENV, FLUMEN_BENCH_DATA
# (~/.cache/flumen-bench-nexmark), KEEP=1 (rerun some queries: keep the input and add
# to the day's results, e.g. KEEP=1 QUERIES=q12 SYSTEMS=flumen LATENCY=0).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen-target}"
VENV="${FLUMEN_BENCH_VENV:-$HOME/.cache/flumen-bench-venv}"
DATA="${FLUMEN_BENCH_DATA:-$HOME/.cache/flumen-bench-nexmark}"
EVENTS="${EVENTS:-2000000}"
QUERIES="${QUERIES:-$(seq -f 'q%g' 0 22 | tr '\n' ' ')}"
RUNS="${RUNS:-1}"
REPEAT="${REPEAT:-3}"
SYSTEMS="${SYSTEMS:-flumen datafusion flink}"
OUT="benchmarks/results/$(date +%Y-%m-%d)"

step() { echo "== $*" >&2; }

if [[ " $SYSTEMS " == *" flink "* ]]; then
  step "Java and Flink ($VENV)"
  command -v java >/dev/null || apt-get install -y -q openjdk-17-jre-headless >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r benchmarks/compare/requirements.txt >&2
fi

step "Flumen (release)"
cargo build --release --locked --workspace --bins >&2
B="$CARGO_TARGET_DIR/release/flumen-benchmarks"
FLUMEN="$CARGO_TARGET_DIR/release/flumen"

if [ "${KEEP:-0}" = 1 ] && [ -f "$DATA/nexmark/ddl.sql" ]; then
  step "input: kept in $DATA (KEEP=1)"
else
  step "input: $EVENTS Nexmark events -> $DATA"
  rm -rf "$DATA"
  "$B" export --dir "$DATA" --lines 1 --events "$EVENTS" >&2
fi
UNITS=$(cat "$DATA"/nexmark/{person,auction,bid}/*.csv | wc -l)

mkdir -p "$OUT"
RESULTS="$OUT/nexmark.jsonl"
[ "${KEEP:-0}" = 1 ] || : > "$RESULTS"
LOG=$(mktemp)
BATCH=$(mktemp --suffix=.sql)
# timed SYSTEM QUERY COMMAND...: one result line, the run's events/s or its error.
timed() {
  local system=$1 q=$2 start end
  shift 2
  start=$(date +%s.%N)
  if "$@" >"$LOG" 2>&1; then
    end=$(date +%s.%N)
    python3 -c "import json; s=$end-$start; print(json.dumps({'system':'$system','workload':'nexmark-$q','unit':'events','units':$UNITS,'seconds':round(s,4),'per_s':round($UNITS/s)}))"
  else
    python3 -c "import json,sys; print(json.dumps({'system':'$system','workload':'nexmark-$q','error':sys.argv[1][:300]}))" \
      "$(grep -m1 -i 'error' "$LOG" || tail -1 "$LOG")"
  fi | tee -a "$RESULTS" >&2
}
for run in $(seq "$RUNS"); do
  for q in $QUERIES; do
    if [[ " $SYSTEMS " == *" flumen "* ]]; then
      for _ in $(seq "$REPEAT"); do
        step "run $run/$RUNS, Flumen: $q"
        rm -rf /tmp/flumen-nexmark   # q10's files sink: a rerun must not find its batches committed
        timed flumen "$q" "$FLUMEN" --trigger available-now -f "$DATA/nexmark/ddl.sql" -f "benchmarks/nexmark/$q.sql"
      done
    fi
    if [[ " $SYSTEMS " == *" datafusion "* ]]; then
      python3 benchmarks/compare/nexmark_batch.py "$DATA/nexmark/ddl.sql" "benchmarks/nexmark/$q.sql" > "$BATCH"
      for _ in $(seq "$REPEAT"); do
        step "run $run/$RUNS, DataFusion batch: $q"
        timed datafusion "$q" "$FLUMEN" -f "$BATCH"
      done
    fi
    if [[ " $SYSTEMS " == *" flink "* ]]; then
      step "run $run/$RUNS, Flink SQL: $q"
      "$VENV/bin/python" benchmarks/compare/flink_bench.py "$DATA" "nexmark-$q" 2>/dev/null \
        | grep '^{' | tee -a "$RESULTS" >&2
    fi
  done
done
rm -f "$LOG" "$BATCH"
if [ "${LATENCY:-1}" = 1 ]; then
  for i in 10 100 1000; do
    for q in q0 q2 window; do
      step "end-to-end latency from outside (compare/latency_e2e.py): $q, $i ms batches"
      python3 benchmarks/compare/latency_e2e.py "$FLUMEN" --query "$q" --interval-ms "$i" \
        --rate 10000 --seconds 12 | tee -a "$RESULTS" >&2
    done
  done
fi
nproc > "$OUT/nexmark-cores.txt"
PY=python3
[ -x "$VENV/bin/python" ] && PY="$VENV/bin/python"   # matplotlib, for the plot
"$PY" benchmarks/compare/nexmark_report.py "$RESULTS" "$OUT/nexmark.png" | tee "$OUT/nexmark.md"
