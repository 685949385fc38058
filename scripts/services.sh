#!/usr/bin/env bash
# Installs and starts the real servers the test suite talks to, on 127.0.0.1 only.
#
# Usage: scripts/services.sh start|stop|status
#
#   Kafka-protocol broker  Tansu (crates.io), sqlite storage   127.0.0.1:9092
#   S3-compatible server   moto_server (PyPI moto[server])     127.0.0.1:9000
#
# Each is installed once (skipped when already on PATH) and started only when its port
# is not already served, so a second run is quick. State and logs live in
# $FLUMEN_SERVICES_DIR (default /tmp/flumen-services); `stop` kills what `start` began.
set -euo pipefail
DIR="${FLUMEN_SERVICES_DIR:-/tmp/flumen-services}"
mkdir -p "$DIR"
export PATH="$HOME/.cargo/bin:$PATH"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port log
  for _ in $(seq 1 100); do
    listening "$2" && return 0
    sleep 0.2
  done
  echo "$1 did not start on 127.0.0.1:$2; its log ($3):" >&2
  tail -n 30 "$3" >&2 || true
  exit 1
}

install_tansu() {
  command -v tansu >/dev/null && return
  echo "installing tansu (Kafka-protocol broker) from crates.io; about 13 minutes once"
  # A target directory outside the checkout so a reinstall reuses the build.
  CARGO_TARGET_DIR="${TANSU_TARGET_DIR:-$HOME/.cache/tansu-target}" \
    cargo install tansu --locked --features libsql
}

install_moto() {
  command -v moto_server >/dev/null && return
  echo "installing moto[server] (S3-compatible server) from PyPI"
  python3 -m pip install --quiet 'moto[server]==5.2.1'
  hash -r
}

start_tansu() {
  if listening 9092; then echo "kafka broker: already on 127.0.0.1:9092"; return; fi
  mkdir -p "$DIR/tansu"
  # sqlite storage: the memory engine answers ListOffsets(latest) wrongly.
  (cd "$DIR/tansu" && rm -f tansu.db* && nohup tansu broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine sqlite://tansu.db > "$DIR/tansu.log" 2>&1 & echo $! > "$DIR/tansu.pid")
  wait_port tansu 9092 "$DIR/tansu.log"
  echo "kafka broker: tansu on 127.0.0.1:9092 (log $DIR/tansu.log)"
}

start_moto() {
  if listening 9000; then echo "s3 server: already on 127.0.0.1:9000"; return; fi
  (nohup moto_server -H 127.0.0.1 -p 9000 > "$DIR/moto.log" 2>&1 & echo $! > "$DIR/moto.pid")
  wait_port moto_server 9000 "$DIR/moto.log"
  echo "s3 server: moto on 127.0.0.1:9000 (log $DIR/moto.log)"
}

stop() {
  for name in tansu moto; do
    if [ -f "$DIR/$name.pid" ]; then
      kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true
      rm -f "$DIR/$name.pid"
    fi
  done
}

case "${1:-start}" in
  start)
    install_tansu
    install_moto
    start_tansu
    start_moto
    ;;
  stop) stop ;;
  status)
    listening 9092 && echo "kafka 127.0.0.1:9092 up" || echo "kafka 127.0.0.1:9092 down"
    listening 9000 && echo "s3 127.0.0.1:9000 up" || echo "s3 127.0.0.1:9000 down"
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
