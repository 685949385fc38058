#!/usr/bin/env python3
"""The table of benchmarks/compare/nexmark_suite.sh's results: per query, the median
events/s of Flumen, Flink and DataFusion (the same query as one batch query over all
the input), per core, Flumen / Flink, and Feldera's published per-core figure where
there is one (the issue's targets: >= 10x Flink, >= 2x Feldera).

Usage: nexmark_report.py RESULTS.jsonl [PLOT.png]
With PLOT.png (and matplotlib), also a bar chart of the systems' events/s.
"""
import json
import os
import statistics
import sys

# Feldera's published events/s per core (the figures the issue quotes).
FELDERA = {"q0": 436e3, "q3": 413e3, "q4": 265e3, "q5": 412e3, "q7": 196e3, "q8": 415e3,
           "q9": 57e3, "q15": 221e3, "q16": 51e3, "q17": 242e3, "q18": 85e3, "q20": 85e3,
           "q21": 415e3, "q22": 394e3}


def main():
    path = sys.argv[1]
    cores = os.cpu_count() or 1
    runs, errors, latency = {}, {}, []
    for line in open(path):
        r = json.loads(line)
        if r["workload"].startswith("latency-"):
            latency.append(r)
            continue
        key = (r["workload"].removeprefix("nexmark-"), r["system"])
        if "error" in r:
            errors[key] = r["error"]
        else:
            runs.setdefault(key, []).append(r["per_s"])
    queries = sorted({q for q, _ in list(runs) + list(errors)}, key=lambda q: int(q[1:]))

    def cell(q, system):
        if (q, system) in runs:
            return statistics.median(runs[(q, system)])
        return None

    def fmt(v):
        return f"{v:,.0f}" if v is not None else "—"

    print(f"| query | Flumen events/s | Flink events/s | Flumen / Flink | Flumen per core | "
          f"Feldera per core | Flumen / Feldera | DataFusion batch events/s | "
          f"Flumen / DataFusion |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for q in queries:
        f, k, d = cell(q, "flumen"), cell(q, "flink"), cell(q, "datafusion")
        ratio = f"{f / k:.1f}×" if f and k else "—"
        per_core = f / cores if f else None
        feldera = FELDERA.get(q)
        vs = f"{per_core / feldera:.1f}×" if per_core and feldera else "—"
        vs_batch = f"{f / d:.2f}×" if f and d else "—"
        print(f"| {q} | {fmt(f)} | {fmt(k)} | {ratio} | {fmt(per_core)} | {fmt(feldera)} | {vs} | "
              f"{fmt(d)} | {vs_batch} |")
    for (q, system), e in sorted(errors.items()):
        print(f"\n{q}, {system}: {e}")
    if len(sys.argv) > 2:
        plot(sys.argv[2], queries, cell)
    if latency:
        print("\n| query | batch interval | rows | p50 | p99 | max |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in latency:
            print(f"| {r['workload'].removeprefix('latency-')} | {r['interval_ms']} ms | "
                  f"{r['rows']:,} | {r['p50_ms']} ms | {r['p99_ms']} ms | {r['max_ms']} ms |")


def plot(path, queries, cell):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = range(len(queries))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    systems = [("flumen", "Flumen", "tab:blue"), ("datafusion", "DataFusion batch", "tab:green"),
               ("flink", "Flink", "tab:orange")]
    for k, (system, label, colour) in enumerate(systems):
        ys = [cell(q, system) or 0 for q in queries]
        ax.bar([x + (k - 1) * 0.28 for x in xs], ys, 0.28, label=label, color=colour)
    ax.set_yscale("log")
    ax.set_xticks(list(xs), queries)
    ax.set_ylabel("events/s (2 cores, log scale)")
    ax.set_title("Nexmark q0-q22 over the same files: Flumen, DataFusion batch and Flink SQL 2.3")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
