#!/usr/bin/env bash
# Installs and starts the real servers the test suite talks to, on 127.0.0.1 only.
#
# Usage: scripts/services.sh start|stop
#
# The engine tests need none: their sources and sinks are the in-process queue and
# memory ones. Connector issues add their servers here (Kafka-protocol broker,
# PostgreSQL, MariaDB, S3-compatible), each installed idempotently.
set -euo pipefail
case "${1:-start}" in
  start) echo "no external servers needed by the current test suite" ;;
  stop) ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
