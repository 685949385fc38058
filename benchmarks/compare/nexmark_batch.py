#!/usr/bin/env python3
"""A Nexmark query of benchmarks/nexmark/ as one batch query over all the exported
input, for benchmarks/compare/nexmark_suite.sh's DataFusion column.

Usage: nexmark_batch.py DDL.sql QUERY.sql > batch.sql

DDL.sql is the streams' DDL `flumen-benchmarks export` writes (each `*_csv` stream over
a folder of CSV files, each Nexmark stream a projection of it). Its batch form: each
`*_csv` stream an external table over the same folder, each Nexmark stream a view of
the same projection. The query file keeps its views and tables; its `SET`s and
`CREATE SINK` go (no sink, no output mode in a batch query); its `INSERT INTO sink
SELECT ...` becomes `SELECT count(*) FROM (SELECT ...)`, so the whole result is
computed and one row printed. The same text, DataFusion planning it as a batch query
(with Flumen's SQL functions and window forms, which a batch query over tables takes).
"""
import re
import sys


def statements(text):
    """The statements of a script, comments dropped, split at `;` outside quotes."""
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("--")]
    text = "\n".join(lines)
    out, current, quoted = [], [], False
    for c in text:
        if c == "'":
            quoted = not quoted
        if c == ";" and not quoted:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(c)
    out.append("".join(current).strip())
    return [s for s in out if s]


def tables(ddl):
    out = []
    for s in statements(ddl):
        m = re.match(r"CREATE STREAM (\w+_csv) \((.*)\) WITH \((.*)\)$", s, re.S)
        if m:
            name, columns, options = m.groups()
            path = re.search(r"path = '([^']*)'", options).group(1)
            out.append(f"CREATE EXTERNAL TABLE {name} ({columns}) STORED AS CSV "
                       f"LOCATION '{path}/' OPTIONS ('format.has_header' 'false')")
            continue
        m = re.match(r"CREATE STREAM (\w+) WITH \(.*?\) AS (SELECT .*)$", s, re.S)
        if m:
            out.append(f"CREATE VIEW {m.group(1)} AS {m.group(2)}")
            continue
        sys.exit(f"nexmark_batch.py: a statement of the DDL not understood: {s[:80]}")
    return out


def query(text):
    out = []
    for s in statements(text):
        head = s.split(None, 2)
        if head[0].upper() == "SET" or s.upper().startswith("CREATE SINK"):
            continue
        m = re.match(r"INSERT INTO \w+\s+(.*)$", s, re.S | re.I)
        if m:
            out.append(f"SELECT count(*) AS result_rows FROM ({m.group(1)}) AS q")
        else:
            out.append(s)
    return out


def main():
    ddl, q = (open(p).read() for p in sys.argv[1:3])
    for s in tables(ddl) + query(q):
        print(s + ";")


if __name__ == "__main__":
    main()
