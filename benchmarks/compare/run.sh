#!/usr/bin/env bash
# Flumen side by side with Spark Structured Streaming, Flink SQL and DataFusion, on the
# same generated input files, in one command:
#
#   benchmarks/compare/run.sh              # every workload, results under benchmarks/results/<date>/
#
# Settings (environment): RUNS (3; the report takes medians), REPEAT (3: Flumen's and
# DataFusion's runs last well under a second, so each round runs them REPEAT times,
# alternating, for as many more samples of the noisier short runs), LINES (word-count lines,
# 1000000), EVENTS (Nexmark events, 2000000), WORKLOADS ("wordcount q0 q1 q2 q5 q7 q8"), FLUMEN_BENCH_VENV (the peers'
# virtual environment, ~/.cache/flumen-bench-venv), FLUMEN_BENCH_DATA (the shared input,
# ~/.cache/flumen-bench-data), KAFKA=0 to leave out Flumen's Kafka -> aggregate run
# (which starts the broker with scripts/services.sh start).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen-target}"
VENV="${FLUMEN_BENCH_VENV:-$HOME/.cache/flumen-bench-venv}"
DATA="${FLUMEN_BENCH_DATA:-$HOME/.cache/flumen-bench-data}"
LINES="${LINES:-1000000}"
EVENTS="${EVENTS:-2000000}"
WORKLOADS="${WORKLOADS:-wordcount q0 q1 q2 q5 q7 q8}"
RUNS="${RUNS:-3}"
REPEAT="${REPEAT:-3}"
OUT="benchmarks/results/$(date +%Y-%m-%d)"

step() { echo "== $*" >&2; }

step "Java (Spark and Flink run on it)"
if ! command -v java >/dev/null; then
  apt-get install -y -q openjdk-17-jre-headless >&2
fi
java -version 2>&1 | head -1 >&2

step "peers in $VENV (pyspark, apache-flink, matplotlib from PyPI)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -r benchmarks/compare/requirements.txt >&2

step "Flumen's benchmark runner (release)"
cargo build --release --locked --workspace --bins >&2
B="$CARGO_TARGET_DIR/release/flumen-benchmarks"

step "shared input: $LINES lines, $EVENTS Nexmark events -> $DATA"
rm -rf "$DATA"
"$B" export --dir "$DATA" --lines "$LINES" --events "$EVENTS" >&2

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
for run in $(seq "$RUNS"); do
  for w in $WORKLOADS; do
    step "run $run/$RUNS, Flumen and DataFusion (each in its own process): $w"
    for _ in $(seq "$REPEAT"); do
      for system in flumen datafusion; do
        "$B" files --dir "$DATA" --workload "$w" --system "$system" | grep '^{' | tee -a "$RESULTS" >&2
      done
    done
  done
  step "run $run/$RUNS, Spark Structured Streaming (local[2], noop sink, availableNow): $WORKLOADS"
  "$VENV/bin/python" benchmarks/compare/spark_bench.py "$DATA" $WORKLOADS 2>/dev/null \
    | grep '^{' | tee -a "$RESULTS" >&2
  step "run $run/$RUNS, Flink SQL (parallelism 2, blackhole sink): $WORKLOADS"
  "$VENV/bin/python" benchmarks/compare/flink_bench.py "$DATA" $WORKLOADS 2>/dev/null \
    | grep '^{' | tee -a "$RESULTS" >&2
done
step "Flumen: latency at 50,000 records/s (wordcount, q5; 100 ms and 1 s batches)"
for w in wordcount q5; do
  for i in 100 1000; do
    "$B" latency --workload "$w" --interval-ms "$i" --seconds 10 | grep '^{' | tee -a "$RESULTS" >&2
  done
done
step "Flumen: peak RSS of q5 over 1, 3 and 10 million events"
for n in 1000000 3000000 10000000; do
  "$B" memory --events "$n" | grep '^{' | tee -a "$RESULTS" >&2
done
if [ "${KAFKA:-1}" = 1 ]; then
  step "Flumen: Kafka -> aggregate (the broker from scripts/services.sh)"
  scripts/services.sh start >&2
  "$B" kafka --records 200000 | grep '^{' | tee -a "$RESULTS" >&2
fi

step "machine"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc)"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "os: $(. /etc/os-release; echo "$PRETTY_NAME")"
  echo "rust: $(rustc --version)"
  echo "java: $(java -version 2>&1 | head -1)"
  echo "peers: $("$VENV/bin/pip" freeze | grep -E '^(pyspark|apache-flink)==' | tr '\n' ' ')"
  echo "input: $LINES lines, $EVENTS Nexmark events (CSV, 10 files each); $RUNS runs (Flumen and DataFusion $REPEAT times each per run), medians"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

"$VENV/bin/python" benchmarks/compare/report.py "$RESULTS" "$OUT"
