#!/usr/bin/env python3
"""Table and plot of a comparison run: report.py RESULTS.jsonl OUT_DIR.

Prints throughput per system and workload (the median of the runs) and the ratio of
Flumen to each peer;
writes OUT_DIR/results.json (all runs) and OUT_DIR/throughput.png (log scale).
"""
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYSTEMS = ["flumen", "datafusion", "spark", "flink"]


def main():
    path, out = sys.argv[1], sys.argv[2]
    runs = [json.loads(l) for l in open(path) if l.strip()]
    table = {}
    extra = []
    for r in runs:
        if "system" in r:
            table.setdefault(r["workload"], {}).setdefault(r["system"], []).append(r)
        else:
            extra.append(r)
    for row in table.values():
        for s, rs in row.items():
            row[s] = dict(rs[0], per_s=round(statistics.median(x["per_s"] for x in rs)),
                          runs=len(rs))
    workloads = list(table)
    head = f"{'workload':<10} {'unit':<7}" + "".join(f"{s + '/s':>14}" for s in SYSTEMS)
    head += f"{'vs spark':>10}{'vs flink':>10}{'% of DF':>9}"
    print(head)
    for w in workloads:
        row = table[w]
        unit = next(iter(row.values()))["unit"]
        line = f"{w:<10} {unit:<7}"
        for s in SYSTEMS:
            line += f"{row[s]['per_s']:>14,}" if s in row else f"{'-':>14}"
        f = row.get("flumen", {}).get("per_s")
        for peer in ["spark", "flink"]:
            p = row.get(peer, {}).get("per_s")
            line += f"{f / p:>9.1f}x" if f and p else f"{'-':>10}"
        d = row.get("datafusion", {}).get("per_s")
        line += f"{100 * f / d:>8.0f}%" if f and d else f"{'-':>9}"
        print(line)
    for r in extra:
        if r.get("suite") == "latency":
            print(f"latency {r['workload']:<9} at {r['rate']:,}/s, {r['interval_ms']:>4} ms batches: "
                  f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms")
        if r.get("suite") == "memory":
            print(f"memory  q5 over {r['events']:>10,} events: peak RSS {r['peak_rss_mib']} MiB, "
                  f"state at most {r['max_state_rows']:,} rows")
        if r.get("suite") == "kafka":
            print(f"kafka -> aggregate (Flumen only): {r['records_per_s']:,} records/s "
                  f"(broker fetch alone {r['broker_fetch_per_s']:,}/s)")
    medians = {w: {s: r["per_s"] for s, r in row.items()} for w, row in table.items()}
    json.dump({"medians": medians, "runs": runs}, open(f"{out}/results.json", "w"), indent=1)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.2
    for i, s in enumerate(SYSTEMS):
        xs = [j + (i - 1.5) * width for j in range(len(workloads))]
        ys = [table[w].get(s, {}).get("per_s", 0) for w in workloads]
        ax.bar(xs, ys, width, label=s)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads)
    ax.set_yscale("log")
    ax.set_ylabel("lines or events per second (log)")
    ax.set_title("Throughput on the same input, 2 cores (higher is better)")
    ax.legend(loc="upper center", ncol=4, bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    fig.savefig(f"{out}/throughput.png", dpi=110)
    print(f"wrote {out}/results.json and {out}/throughput.png")


if __name__ == "__main__":
    main()
