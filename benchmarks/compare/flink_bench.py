#!/usr/bin/env python3
"""Flink SQL over the shared input files (see run.sh).

Usage: flink_bench.py DIR WORKLOAD...
       flink_bench.py DIR nexmark-q0 nexmark-q3 ...   (the query files of benchmarks/nexmark/)
Each workload: a streaming-mode Table API job, parallelism 2, reading the files with
the filesystem connector (the files are a bounded stream: the job ends when they are
read, and the end of input fires the last windows), into a blackhole sink. Prints one
JSON line per workload; the job from submission to its end is timed, the Python and
JVM start-up is not.
"""
import json
import os
import re
import sys
import time

from inputs import lines_in

from pyflink.table import EnvironmentSettings, TableDescriptor, TableEnvironment

BID_COLUMNS = """auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
  date_time BIGINT, extra STRING,
  ts AS TO_TIMESTAMP_LTZ(date_time, 3),
  WATERMARK FOR ts AS ts - INTERVAL '4' SECOND"""

QUERIES = {
    "wordcount": ("lines", "word STRING, n BIGINT",
                  "SELECT word, COUNT(*) FROM lines CROSS JOIN UNNEST(SPLIT(line, ' ')) AS t(word) GROUP BY word"),
    "q0": ("events", "auction BIGINT, bidder BIGINT, price BIGINT, date_time BIGINT, extra STRING",
           "SELECT auction, bidder, price, date_time, extra FROM bid"),
    "q1": ("events", "auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), date_time BIGINT",
           "SELECT auction, bidder, 0.908 * price, date_time FROM bid"),
    "q2": ("events", "auction BIGINT, price BIGINT",
           "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0"),
    "q5": ("events", "auction BIGINT, ws TIMESTAMP(3), num BIGINT",
           """SELECT auction, window_start, COUNT(*) FROM TABLE(
                HOP(TABLE bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
              GROUP BY auction, window_start, window_end"""),
    "q7": ("events", "auction BIGINT, price BIGINT, bidder BIGINT, ts TIMESTAMP_LTZ(3)",
           """SELECT B.auction, B.price, B.bidder, B.ts FROM
                (SELECT * FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))) B
              JOIN (SELECT MAX(price) AS maxprice, window_start, window_end FROM TABLE(
                      TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))
                    GROUP BY window_start, window_end) M
              ON B.window_start = M.window_start AND B.window_end = M.window_end
                 AND B.price = M.maxprice"""),
    "q8": ("people", "id BIGINT, name STRING, starttime TIMESTAMP(3)",
           """SELECT P.id, P.name, P.starttime FROM
                (SELECT id, name, window_start AS starttime, window_end AS endtime FROM TABLE(
                   TUMBLE(TABLE person, DESCRIPTOR(ts), INTERVAL '10' SECOND))
                 GROUP BY id, name, window_start, window_end) P
              JOIN (SELECT seller, window_start AS starttime, window_end AS endtime FROM TABLE(
                      TUMBLE(TABLE auction, DESCRIPTOR(ts), INTERVAL '10' SECOND))
                    GROUP BY seller, window_start, window_end) A
              ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime"""),
}

TIME = """ts AS TO_TIMESTAMP_LTZ(date_time, 3), WATERMARK FOR ts AS ts - INTERVAL '4' SECOND"""


# The Nexmark tables as nexmark-flink declares them (standard columns, the watermark
# 4 s behind), over the exported CSV files: the files hold times as epoch ms, so each
# time column is computed from a physical `<name>_ms` column.
def suite_time(name):
    return f"{name} AS CAST(TO_TIMESTAMP_LTZ({name}_ms, 3) AS TIMESTAMP(3))"


SUITE_TABLES = {
    "person": "id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING, "
              "state STRING, date_time_ms BIGINT, extra STRING",
    "auction": "id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, "
               "reserve BIGINT, date_time_ms BIGINT, expires_ms BIGINT, seller BIGINT, "
               "category BIGINT, extra STRING",
    "bid": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, "
           "date_time_ms BIGINT, extra STRING",
}

QUERY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nexmark")


def sql_function(stmt):
    """`CREATE FUNCTION name(p TYPE, ...) RETURNS type RETURN body`: name, parameter
    names and body."""
    m = re.match(r"CREATE FUNCTION\s+(\w+)\s*\((.*?)\)\s*RETURNS\s+\w+\s+RETURN\s+(.*)$",
                 stmt, re.S | re.I)
    if not m:
        raise SystemExit(f"a function definition not understood: {stmt[:60]}")
    params = [p.split()[0] for p in m.group(2).split(",")]
    return m.group(1), params, m.group(3).strip()


def suite_statements(query):
    """The Flink statements of benchmarks/nexmark/<query>.sql: its views, and the
    SELECT its INSERT INTO runs. Flumen's own statements (SET, CREATE SINK) are left
    out; q13's side table, a Flumen table in the file, is a bounded datagen table of
    10,000 keys here (nexmark-flink's is a lookup table over a file)."""
    text = open(os.path.join(QUERY_DIR, f"{query}.sql")).read()
    text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("--"))
    views, select, functions = [], None, []
    for stmt in (s.strip() for s in text.split(";")):
        head = stmt.upper()
        if not stmt or head.startswith("SET ") or head.startswith("CREATE SINK"):
            continue
        if head.startswith("CREATE TABLE SIDE_INPUT"):
            views.append("""CREATE TEMPORARY TABLE side_input (key BIGINT, `value` STRING)
                WITH ('connector' = 'datagen', 'number-of-rows' = '10000',
                      'fields.key.kind' = 'sequence', 'fields.key.start' = '0',
                      'fields.key.end' = '9999')""")
        elif head.startswith("CREATE VIEW"):
            views.append("CREATE TEMPORARY VIEW" + stmt[len("CREATE VIEW"):])
        elif head.startswith("CREATE FUNCTION"):
            functions.append(sql_function(stmt))
        elif head.startswith("INSERT INTO"):
            select = re.sub(r"^INSERT INTO\s+\S+\s*", "", stmt, flags=re.I)
        else:
            raise SystemExit(f"{query}: statement not understood: {stmt[:60]}")
    # A function the file defines in SQL (q14's count_char, a Java class in
    # nexmark-flink) is written out where it is called: Flink has no SQL functions.
    for name, params, body in functions:
        def expand(m, params=params, body=body):
            args = [a.strip() for a in m.group(1).split(",")]
            return "(" + re.sub(r"\b(\w+)\b",
                                lambda w: args[params.index(w.group(1))]
                                if w.group(1) in params else w.group(1), body) + ")"
        select = re.sub(rf"\b{name}\(([^()]*)\)", expand, select, flags=re.I)
    # Where the file's text is Flumen's, not Flink's: `value`, `day` and `minute` are reserved
    # words in Flink (nexmark-flink quotes them), and `length` (in q14's count_char) is
    # Flink's CHAR_LENGTH.
    select = re.sub(r"\bS\.value\b", "S.`value`", select)
    select = re.sub(r"\bas (day|minute)\b", r"AS `\1`", select, flags=re.I)
    select = re.sub(r"\blength\(", "CHAR_LENGTH(", select, flags=re.I)
    return views, select


def suite(d, query):
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "2")
    env.get_config().set("table.local-time-zone", "UTC")
    for table, columns in SUITE_TABLES.items():
        times = [c.split()[0][:-3] for c in columns.split(", ") if c.endswith("_ms BIGINT")]
        computed = ", ".join(suite_time(t) for t in times)
        env.execute_sql(f"""CREATE TABLE {table} ({columns}, {computed},
            WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
            WITH ('connector' = 'filesystem', 'path' = '{d}/nexmark/{table}', 'format' = 'csv')""")
    views, select = suite_statements(query)
    for v in views:
        env.execute_sql(v)
    n = sum(lines_in(f"{d}/nexmark/{t}") for t in SUITE_TABLES)
    started = time.perf_counter()
    env.sql_query(select).execute_insert(TableDescriptor.for_connector("blackhole").build()).wait()
    secs = time.perf_counter() - started
    print(json.dumps({"system": "flink", "workload": f"nexmark-{query}", "unit": "events",
                      "units": n, "seconds": round(secs, 4), "per_s": round(n / secs)}),
          flush=True)


def main():
    d, names = sys.argv[1], sys.argv[2:]
    for name in names:
        if name.startswith("nexmark-"):
            try:
                suite(d, name[len("nexmark-"):])
            except Exception as e:  # a query Flink refuses: said, and the others run
                msg = str(e).strip().splitlines()
                print(json.dumps({"system": "flink", "workload": name,
                                  "error": next((l for l in msg if "Exception" in l), msg[0])[:300]}),
                      flush=True)
            continue
        unit, sink_columns, sql = QUERIES[name]
        env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
        env.get_config().set("parallelism.default", "2")
        env.execute_sql(f"""CREATE TABLE lines (line STRING) WITH ('connector' = 'filesystem',
            'path' = '{d}/wordcount', 'format' = 'raw')""")
        env.execute_sql(f"""CREATE TABLE bid ({BID_COLUMNS}) WITH ('connector' = 'filesystem',
            'path' = '{d}/nexmark/bid', 'format' = 'csv')""")
        env.execute_sql(f"""CREATE TABLE person (id BIGINT, name STRING, email_address STRING,
            credit_card STRING, city STRING, state STRING, date_time BIGINT, extra STRING,
            {TIME}) WITH ('connector' = 'filesystem',
            'path' = '{d}/nexmark/person', 'format' = 'csv')""")
        env.execute_sql(f"""CREATE TABLE auction (id BIGINT, item_name STRING, description STRING,
            initial_bid BIGINT, reserve BIGINT, date_time BIGINT, expires BIGINT, seller BIGINT,
            category BIGINT, extra STRING, {TIME}) WITH ('connector' = 'filesystem',
            'path' = '{d}/nexmark/auction', 'format' = 'csv')""")
        env.execute_sql(f"CREATE TABLE sink_out ({sink_columns}) WITH ('connector' = 'blackhole')")
        if unit == "lines":
            n = lines_in(f"{d}/wordcount")
        elif unit == "people":
            unit, n = "events", lines_in(f"{d}/nexmark/person") + lines_in(f"{d}/nexmark/auction")
        else:
            n = lines_in(f"{d}/nexmark/bid")
        started = time.perf_counter()
        env.execute_sql(f"INSERT INTO sink_out {sql}").wait()
        secs = time.perf_counter() - started
        print(json.dumps({"system": "flink", "workload": name, "unit": unit, "units": n,
                          "seconds": round(secs, 4), "per_s": round(n / secs)}), flush=True)


if __name__ == "__main__":
    main()
