#!/usr/bin/env python3
"""Reads the committed output of a Flumen `files` sink: only the files its commit log
(`_flumen_log/`) lists, so files of a batch that was being written when the process
died are never seen.

Usage: scripts/read_committed.py DIR [SQL]
  prints the row count with pyarrow, then runs SQL (default: a count) in DuckDB over
  the committed files as the view `output`.
"""
import json
import os
import sys

import duckdb
import pyarrow.dataset as ds


def committed_files(folder):
    """The union of the files the log's entries list (`<batch ms>` entries and the
    `<batch ms>.compact` files that fold earlier ones in; a file can be listed twice)."""
    log = os.path.join(folder, "_flumen_log")
    files = set()
    for entry in sorted(os.listdir(log)):
        stem = entry[: -len(".compact")] if entry.endswith(".compact") else entry
        if len(stem) != 13 or not stem.isdigit():
            continue
        try:
            with open(os.path.join(log, entry)) as f:
                files.update(os.path.join(folder, p) for p in json.load(f)["files"])
        except FileNotFoundError:
            # Folded into a .compact (written before the delete) by a compaction
            # running meanwhile: list again to see it.
            return committed_files(folder)
    return sorted(files)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: scripts/read_committed.py DIR [SQL]")
    folder = sys.argv[1]
    sql = sys.argv[2] if len(sys.argv) > 2 else "SELECT count(*) AS n FROM output"
    if not os.path.isdir(folder):
        sys.exit(f"{folder}: no such folder")
    if not os.path.isdir(os.path.join(folder, "_flumen_log")):
        print(f"{folder}: no committed batch yet (no _flumen_log)")
        return
    files = committed_files(folder)
    if not files:
        print(f"{folder}: no committed batch yet")
        return
    table = ds.dataset(files, format="parquet").to_table()
    print(f"pyarrow: {table.num_rows} rows in {len(files)} committed files")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW output AS SELECT * FROM read_parquet({files!r})")
    for row in con.execute(sql).fetchall():
        print("duckdb:", *row)


if __name__ == "__main__":
    main()
