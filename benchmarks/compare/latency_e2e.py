#!/usr/bin/env python3
"""End-to-end latency of Flumen, measured from outside the engine.

A producer (this script) listens on a loopback port and sends CSV lines
`sent_ns,auction,price` at a steady rate, each stamped with its send time; Flumen
(the CLI, as a user runs it) reads them with the `socket` source, runs a query and
writes its rows to a `console` sink (CSV on stdout); the consumer (this script again)
reads that output and computes, per row, the time from the send of the line it came
from to its arrival. Queries: `q0` (every bid, pass-through), `q2` (bids of auctions
divisible by 123: Nexmark q2's filter) and `window` (a count per 100 ms tumbling window
of event time = send time, watermark 1 ms behind, append mode: a window's latency runs from its
end to the arrival of its row). The first two seconds are left out.

Usage: latency_e2e.py FLUMEN_BINARY [--query q0|q2|window] [--interval-ms 10]
                      [--rate 10000] [--seconds 12]
Prints one JSON line: p50, p99, max in ms, rows measured.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

QUERIES = {
    "q0": "SELECT sent, auction, price FROM bid",
    "q2": "SELECT sent, auction, price FROM bid WHERE auction % 123 = 0",
    "window": "SELECT CAST(window_end AS BIGINT) AS window_end_ms, count(*) AS n "
              "FROM TUMBLE(bidt, ts, INTERVAL '100' MILLISECOND) "
              "GROUP BY window_start, window_end",
}


def producer(server, rate, seconds, stop):
    server.settimeout(30)
    try:
        conn, _ = server.accept()
    except OSError:
        stop.set()
        return
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.monotonic()
    sent = 0
    i = 0
    while not stop.is_set() and time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        if due <= sent:
            time.sleep(0.0005)
            continue
        lines = []
        for _ in range(due - sent):
            # One bid in 12 is of an auction divisible by 123 (q2 keeps those).
            auction = 123 * i if i % 12 == 0 else 123 * i + 1
            lines.append(f"{time.time_ns()},{auction},{i % 1000}\n")
            i += 1
        conn.sendall("".join(lines).encode())
        sent = due
    conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("flumen")
    p.add_argument("--query", default="q0", choices=sorted(QUERIES))
    p.add_argument("--interval-ms", type=int, default=10)
    p.add_argument("--rate", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=12)
    a = p.parse_args()

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    block = max(1, a.interval_ms // 2)
    script = f"""
SET batch_interval = '{a.interval_ms} ms';
SET output_mode = 'append';
CREATE STREAM bid (sent BIGINT NOT NULL, auction BIGINT NOT NULL, price BIGINT NOT NULL)
  WITH (connector = 'socket', host = '127.0.0.1', port = '{port}', format = 'csv',
        block_interval = '{block} ms');
CREATE STREAM bidt WITH (timestamp = 'ts', watermark_delay = '1 ms') AS
  SELECT sent, to_timestamp_nanos(sent) AS ts FROM bid;
CREATE SINK out WITH (connector = 'console', format = 'csv', num_rows = '100000000');
INSERT INTO out {QUERIES[a.query]};
"""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    stop = threading.Event()
    t = threading.Thread(target=producer, args=(server, a.rate, a.seconds, stop), daemon=True)
    t.start()
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([a.flumen, "-f", f.name], stdout=subprocess.PIPE,
                            stderr=log, text=True, bufsize=1)
    begin = time.time_ns()
    warmup = begin + 2_000_000_000
    latencies = []

    def consume():
        for line in proc.stdout:
            now = time.time_ns()
            head = line.split(",", 1)[0]
            if not head.isdigit():
                continue
            stamp = int(head)
            if a.query == "window":
                stamp *= 1_000_000  # the window's end, ms -> ns
            if stamp >= warmup:
                latencies.append((now - stamp) / 1e6)

    c = threading.Thread(target=consume, daemon=True)
    c.start()
    t.join()
    time.sleep(0.5)  # the last lines' batches
    proc.terminate()
    proc.wait(timeout=10)
    os.unlink(f.name)
    if not latencies:
        log.seek(0)
        sys.exit("no rows came out of Flumen:\n" + log.read()[-2000:])
    latencies.sort()
    q = lambda x: latencies[min(len(latencies) - 1, int(x * len(latencies)))]
    print(json.dumps({"system": "flumen", "workload": f"latency-{a.query}",
                      "interval_ms": a.interval_ms, "rate": a.rate, "rows": len(latencies),
                      "p50_ms": round(q(0.5), 2), "p99_ms": round(q(0.99), 2),
                      "max_ms": round(latencies[-1], 2)}), flush=True)


if __name__ == "__main__":
    main()
