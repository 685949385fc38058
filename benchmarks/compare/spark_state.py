#!/usr/bin/env python3
"""Spark Structured Streaming's side of the `state` benchmark (see benchmarks/README.md).

Usage: spark_state.py KEYS [ROWS_PER_BATCH] [BATCHES]

The same workload as `flumen-benchmarks state`: a running count over uniformly random
keys (`SELECT k, count(*) FROM s GROUP BY k`, update mode, into the noop sink),
ROWS_PER_BATCH rows (1,000,000) per micro-batch, BATCHES (20) batches, KEYS distinct
keys. The input is generated first (one Parquet file per batch, read one per trigger);
state lives in Spark's RocksDB state store with changelog checkpointing, on local[2]
with 2 shuffle (= state) partitions. Prints each batch's time (Spark's
`durationMs.triggerExecution`), the first and the last, the rows/s over all batches,
the state rows and the state store's memory, and the bytes the checkpoint's state
folder holds at the end; one JSON line last.
"""
import json
import os
import shutil
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def folder_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def main():
    keys = int(sys.argv[1])
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    batches = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    work = f"/tmp/flumen-spark-state-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    spark = (SparkSession.builder.master("local[2]").appName("flumen-state")
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "6g")
             .config("spark.sql.streaming.stateStore.providerClass",
                     "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
             .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled",
                     "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    for b in range(batches):
        (spark.range(rows).select((F.rand(seed=42 + b) * keys).cast("long").alias("k"))
         .coalesce(1).write.mode("append").parquet(f"{work}/in"))
    src = (spark.readStream.schema("k LONG").option("maxFilesPerTrigger", 1)
           .parquet(f"{work}/in"))
    counts = src.groupBy("k").count()
    started = time.perf_counter()
    q = (counts.writeStream.format("noop").outputMode("update")
         .option("checkpointLocation", f"{work}/checkpoint")
         .trigger(availableNow=True).start())
    q.awaitTermination()
    secs = time.perf_counter() - started
    progress = [p for p in q.recentProgress if p["numInputRows"] > 0]
    times = [p["durationMs"]["triggerExecution"] for p in progress]
    state = progress[-1]["stateOperators"][0] if progress else {}
    print("batch ms:", times)
    result = {
        "system": "spark-rocksdb", "suite": "state", "keys": keys,
        "rows_per_batch": rows, "batches": len(times),
        "first_batch_ms": times[0], "last_batch_ms": times[-1],
        "rows_per_s": round(rows * len(times) / (sum(times) / 1000)),
        "state_rows": state.get("numRowsTotal"),
        "state_memory_bytes": state.get("memoryUsedBytes"),
        "checkpoint_state_bytes": folder_bytes(f"{work}/checkpoint/state"),
        "wall_s": round(secs, 1),
    }
    print(json.dumps(result), flush=True)
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
