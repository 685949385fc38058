#!/usr/bin/env python3
"""Spark Structured Streaming over the shared input files (see run.sh).

Usage: spark_bench.py DIR WORKLOAD...
Each workload: a streaming query reading one file per micro-batch (maxFilesPerTrigger=1,
as Flumen reads them), trigger(availableNow=True), into the noop sink; local[2]. Prints
one JSON line per workload. Session start-up is not timed; the query from start() to
its end is.
"""
import json
import os
import sys
import time

from inputs import lines_in

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

BID = StructType([
    StructField("auction", LongType()), StructField("bidder", LongType()),
    StructField("price", LongType()), StructField("channel", StringType()),
    StructField("url", StringType()), StructField("date_time", LongType()),
    StructField("extra", StringType()),
])



PERSON = StructType([
    StructField("id", LongType()), StructField("name", StringType()),
    StructField("email_address", StringType()), StructField("credit_card", StringType()),
    StructField("city", StringType()), StructField("state", StringType()),
    StructField("date_time", LongType()), StructField("extra", StringType()),
])
AUCTION = StructType([
    StructField("id", LongType()), StructField("item_name", StringType()),
    StructField("description", StringType()), StructField("initial_bid", LongType()),
    StructField("reserve", LongType()), StructField("date_time", LongType()),
    StructField("expires", LongType()), StructField("seller", LongType()),
    StructField("category", LongType()), StructField("extra", StringType()),
])


def q8(spark, d):
    """People who opened an auction in the 10 s window they registered in. Spark cannot
    join two streaming aggregates in append mode; it runs the join of the windowed rows
    (a person per window joined with that window's auctions by seller)."""
    def timed(schema, table):
        return (spark.readStream.schema(schema).option("maxFilesPerTrigger", 1)
                .csv(f"{d}/nexmark/{table}")
                .withColumn("ts", F.timestamp_millis("date_time"))
                .withWatermark("ts", "4 seconds")
                .withColumn("w", F.window("ts", "10 seconds")))
    p = timed(PERSON, "person").select("id", "name", F.col("w").alias("pw"))
    a = timed(AUCTION, "auction").select("seller", F.col("w").alias("aw"))
    out = p.join(a, (p.id == a.seller) & (p.pw == a.aw)).select("id", "name", F.col("pw.start"))
    n = lines_in(f"{d}/nexmark/person") + lines_in(f"{d}/nexmark/auction")
    return "events", n, out, "append"


def query(spark, d, name):
    if name == "wordcount":
        lines = spark.readStream.option("maxFilesPerTrigger", 1).text(f"{d}/wordcount")
        words = lines.select(F.explode(F.split("value", " ")).alias("word"))
        return "lines", lines_in(f"{d}/wordcount"), words.groupBy("word").count(), "update"
    if name == "q8":
        return q8(spark, d)
    bid = (spark.readStream.schema(BID).option("maxFilesPerTrigger", 1)
           .csv(f"{d}/nexmark/bid"))
    n = lines_in(f"{d}/nexmark/bid")
    if name == "q0":
        return "events", n, bid.select("auction", "bidder", "price", "date_time", "extra"), "append"
    if name == "q1":
        return "events", n, bid.select("auction", "bidder", (F.col("price") * 0.908).alias("price"),
                                       "date_time"), "append"
    if name == "q2":
        return "events", n, bid.where(F.col("auction") % 123 == 0).select("auction", "price"), "append"
    timed = (bid.withColumn("ts", F.timestamp_millis("date_time"))
             .withWatermark("ts", "4 seconds"))
    if name == "q5":
        counts = (timed.groupBy("auction", F.window("ts", "10 seconds", "2 seconds"))
                  .count().select("auction", F.col("window.start").alias("ws"), "count"))
        return "events", n, counts, "append"
    if name == "q7":
        # Spark cannot join a stream with an aggregate of itself in append mode; the
        # windowed maximum is the part it can run.
        m = timed.groupBy(F.window("ts", "10 seconds")).agg(F.max("price").alias("maxprice"))
        return "events", n, m, "append"
    raise SystemExit(f"unknown workload {name}")


NOTES = {"q7": "windowed max only", "q8": "join of windowed rows, not of aggregates"}


def main():
    d, names = sys.argv[1], sys.argv[2:]
    spark = (SparkSession.builder.master("local[2]").appName("flumen-compare")
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "4g")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    for name in names:
        unit, n, df, mode = query(spark, d, name)
        ckpt = f"/tmp/flumen-compare-spark-{os.getpid()}-{name}"
        started = time.perf_counter()
        q = (df.writeStream.format("noop").outputMode(mode)
             .option("checkpointLocation", ckpt).trigger(availableNow=True).start())
        q.awaitTermination()
        secs = time.perf_counter() - started
        print(json.dumps({"system": "spark", "workload": name, "unit": unit, "units": n,
                          "seconds": round(secs, 4), "per_s": round(n / secs),
                          "note": NOTES.get(name)}), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
