#!/usr/bin/env bash
# Installs and starts the real servers the test suite talks to, on 127.0.0.1 only.
#
# Usage: scripts/services.sh start|stop|status
#
#   Kafka-protocol broker  Tansu (crates.io), sqlite storage   127.0.0.1:9092
#   S3-compatible server   moto_server (PyPI moto[server])     127.0.0.1:9000
#   PostgreSQL             Debian's postgresql, own cluster    127.0.0.1:5432
#                          user flumen, database flumen, trust auth on loopback
#   MariaDB                Debian's mariadb-server, own datadir 127.0.0.1:3306
#                          user flumen, password flumen, database flumen
#   Headless browser       Debian's chromium and chromium-driver (the web UI's test;
#                          chromedriver is started by that test on a free loopback port)
#   TLS                    a test CA and a certificate for 127.0.0.1 (openssl), in
#                          $FLUMEN_SERVICES_DIR/tls; PostgreSQL and MariaDB accept TLS
#                          on their ports; a second Tansu broker behind socat's TLS
#                          listener on 127.0.0.1:9093; a third Tansu broker with SASL
#                          (SCRAM users) on 127.0.0.1:9095
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

install_readers() {
  python3 -c 'import duckdb, pyarrow' 2>/dev/null && return
  echo "installing duckdb and pyarrow (scripts/read_committed.py) from PyPI"
  python3 -m pip install --quiet 'duckdb==2.0.1' 'pyarrow==26.0.1'
}

install_moto() {
  command -v moto_server >/dev/null && return
  echo "installing moto[server] (S3-compatible server) from PyPI"
  python3 -m pip install --quiet 'moto[server]==5.2.1'
  hash -r
}

apt_install() { # packages...
  echo "installing $* from Debian's packages"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" > "$DIR/apt.log" 2>&1 || {
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >> "$DIR/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" >> "$DIR/apt.log" 2>&1
  } || { echo "apt-get install $* failed; see $DIR/apt.log" >&2; exit 1; }
}

install_tls_tools() {
  command -v openssl >/dev/null && command -v socat >/dev/null && return
  apt_install openssl socat
}

# A test CA and a server certificate valid for the IP address 127.0.0.1 only (not for
# the name localhost: the tests tell verify-ca from verify-full by it).
make_certs() {
  local t="$DIR/tls"
  [ -f "$t/server.pem" ] && [ -f "$t/ca.pem" ] && return
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=flumen test CA" \
    -keyout "$t/ca.key" -out "$t/ca.pem" > "$t/openssl.log" 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$t/server.key" -out "$t/server.csr" >> "$t/openssl.log" 2>&1
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$t/ext.cnf"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 3650 -extfile "$t/ext.cnf" -out "$t/server.pem" >> "$t/openssl.log" 2>&1
  chmod 644 "$t/ca.pem" "$t/server.pem"
  chmod 600 "$t/server.key" "$t/ca.key"
  echo "tls: test CA $t/ca.pem"
}

install_chromium() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return
  apt_install chromium chromium-driver
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

install_postgres() {
  [ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] && return
  apt_install postgresql
}

install_mariadb() {
  command -v mariadbd >/dev/null && return
  apt_install mariadb-server
}

# PostgreSQL refuses to run as root: as root, the cluster belongs to user postgres.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  local bin data="$DIR/postgres/data"
  bin="$(pg_bin)"
  if listening 5432; then
    if [ "$(as_pg "$bin/psql" -h 127.0.0.1 -U flumen -d postgres -tAc 'SHOW ssl' 2>/dev/null)" = on ]; then
      echo "postgresql: already on 127.0.0.1:5432"; return
    fi
    echo "postgresql: running without TLS; restarting it"
    as_pg "$bin/pg_ctl" -D "$data" -m fast stop > /dev/null
  fi
  mkdir -p "$DIR/postgres"
  [ "$(id -u)" -eq 0 ] && chown postgres "$DIR/postgres"
  if [ ! -f "$data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$data" -U flumen --auth=trust -E UTF8 > "$DIR/postgres-init.log" 2>&1 \
      || { echo "initdb failed; see $DIR/postgres-init.log" >&2; exit 1; }
  fi
  # The server's key must belong to the server's user and be private.
  cp "$DIR/tls/server.pem" "$DIR/tls/server.key" "$DIR/postgres/"
  [ "$(id -u)" -eq 0 ] && chown postgres "$DIR/postgres/server.pem" "$DIR/postgres/server.key"
  chmod 600 "$DIR/postgres/server.key"
  as_pg "$bin/pg_ctl" -D "$data" -l "$DIR/postgres/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p 5432 -k $DIR/postgres -c fsync=off -c ssl=on \
        -c ssl_cert_file=$DIR/postgres/server.pem -c ssl_key_file=$DIR/postgres/server.key" \
    start > /dev/null
  wait_port postgresql 5432 "$DIR/postgres/postgres.log"
  as_pg "$bin/psql" -h 127.0.0.1 -U flumen -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'flumen'" | grep -q 1 \
    || as_pg "$bin/createdb" -h 127.0.0.1 -U flumen flumen
  echo "postgresql: on 127.0.0.1:5432 (log $DIR/postgres/postgres.log)"
}

# The database and users (idempotent): flumen, and flumen_tls, which only TLS admits.
mariadb_setup() { # socket
  mariadb --no-defaults --socket="$1" -uroot -e \
    "CREATE DATABASE IF NOT EXISTS flumen;
     CREATE USER IF NOT EXISTS 'flumen'@'%' IDENTIFIED BY 'flumen';
     CREATE USER IF NOT EXISTS 'flumen'@'localhost' IDENTIFIED BY 'flumen';
     GRANT ALL ON flumen.* TO 'flumen'@'%';
     GRANT ALL ON flumen.* TO 'flumen'@'localhost';
     CREATE USER IF NOT EXISTS 'flumen_tls'@'%' IDENTIFIED BY 'flumen' REQUIRE SSL;
     CREATE USER IF NOT EXISTS 'flumen_tls'@'localhost' IDENTIFIED BY 'flumen' REQUIRE SSL;
     GRANT ALL ON flumen.* TO 'flumen_tls'@'%';
     GRANT ALL ON flumen.* TO 'flumen_tls'@'localhost';"
}

start_mariadb() {
  local data="$DIR/mariadb/data" sock="$DIR/mariadb/mysqld.sock"
  if listening 3306; then
    if mariadb --no-defaults --socket="$sock" -uroot -N -e "SHOW VARIABLES LIKE 'have_ssl'" 2>/dev/null | grep -q YES; then
      mariadb_setup "$sock"
      echo "mariadb: already on 127.0.0.1:3306"; return
    fi
    echo "mariadb: running without TLS; restarting it"
    stop_pid mariadb
  fi
  mkdir -p "$DIR/mariadb"
  if [ ! -d "$data/mysql" ]; then
    mariadb-install-db --datadir="$data" --user="$(id -un)" --auth-root-authentication-method=socket \
      > "$DIR/mariadb-init.log" 2>&1 \
      || { echo "mariadb-install-db failed; see $DIR/mariadb-init.log" >&2; exit 1; }
  fi
  (nohup mariadbd --no-defaults --datadir="$data" --user="$(id -un)" --bind-address=127.0.0.1 \
      --port=3306 --socket="$sock" --pid-file="$DIR/mariadb/mariadbd.pid" \
      --innodb-flush-log-at-trx-commit=2 --ssl-cert="$DIR/tls/server.pem" \
      --ssl-key="$DIR/tls/server.key" --ssl-ca="$DIR/tls/ca.pem" \
      > "$DIR/mariadb.log" 2>&1 & echo $! > "$DIR/mariadb.pid")
  wait_port mariadb 3306 "$DIR/mariadb.log"
  mariadb_setup "$sock"
  echo "mariadb: on 127.0.0.1:3306 (log $DIR/mariadb.log)"
}

start_tansu() {
  if listening 9092; then echo "kafka broker: already on 127.0.0.1:9092"; return; fi
  mkdir -p "$DIR/tansu"
  # sqlite storage: the memory engine answers ListOffsets(latest) wrongly.
  (cd "$DIR/tansu" && rm -f tansu.db* && exec nohup tansu broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine sqlite://tansu.db > "$DIR/tansu.log" 2>&1 & echo $! > "$DIR/tansu.pid")
  wait_port tansu 9092 "$DIR/tansu.log"
  echo "kafka broker: tansu on 127.0.0.1:9092 (log $DIR/tansu.log)"
}

# TLS in front of Kafka: a second broker (its own storage) advertises 127.0.0.1:9093, where
# socat terminates TLS with the test certificate and forwards to it.
start_kafka_tls() {
  if listening 9093; then echo "kafka broker (TLS): already on 127.0.0.1:9093"; return; fi
  mkdir -p "$DIR/tansu-tls"
  if ! listening 9094; then
    (cd "$DIR/tansu-tls" && rm -f tansu.db* && exec nohup tansu broker \
        --listener-url tcp://127.0.0.1:9094 \
        --advertised-listener-url tcp://127.0.0.1:9093 \
        --storage-engine sqlite://tansu.db > "$DIR/tansu-tls.log" 2>&1 & echo $! > "$DIR/tansu-tls.pid")
    wait_port tansu-tls 9094 "$DIR/tansu-tls.log"
  fi
  (nohup socat "OPENSSL-LISTEN:9093,bind=127.0.0.1,reuseaddr,fork,cert=$DIR/tls/server.pem,key=$DIR/tls/server.key,verify=0" \
      TCP:127.0.0.1:9094 > "$DIR/socat-tls.log" 2>&1 & echo $! > "$DIR/socat-tls.pid")
  wait_port socat-tls 9093 "$DIR/socat-tls.log"
  echo "kafka broker (TLS): socat on 127.0.0.1:9093 in front of tansu on 127.0.0.1:9094"
}

# A third broker that admits only SASL-authenticated clients (SCRAM users alice, with
# SHA-256, and bob, with SHA-512, password s3cret). Tansu keeps its users in its
# storage and creates them only through an open broker: the first start creates them
# with authentication off, then the broker starts again with it on.
start_kafka_sasl() {
  if listening 9095; then echo "kafka broker (SASL): already on 127.0.0.1:9095"; return; fi
  local d="$DIR/tansu-sasl"
  mkdir -p "$d"
  local args=(--listener-url tcp://127.0.0.1:9095 --advertised-listener-url tcp://127.0.0.1:9095
              --storage-engine sqlite://tansu.db)
  if [ ! -f "$d/users-created" ]; then
    (cd "$d" && rm -f tansu.db* && exec nohup tansu broker "${args[@]}" > "$DIR/tansu-sasl-setup.log" 2>&1) &
    echo $! > "$DIR/tansu-sasl.pid"
    wait_port tansu-sasl 9095 "$DIR/tansu-sasl-setup.log"
    tansu user create --broker tcp://127.0.0.1:9095 --mechanism scram256 alice s3cret >> "$DIR/tansu-sasl-setup.log" 2>&1
    tansu user create --broker tcp://127.0.0.1:9095 --mechanism scram512 bob s3cret >> "$DIR/tansu-sasl-setup.log" 2>&1
    stop_pid tansu-sasl
    for _ in $(seq 1 50); do listening 9095 || break; sleep 0.1; done
    touch "$d/users-created"
  fi
  (cd "$d" && exec nohup tansu broker "${args[@]}" --authentication > "$DIR/tansu-sasl.log" 2>&1) &
  echo $! > "$DIR/tansu-sasl.pid"
  wait_port tansu-sasl 9095 "$DIR/tansu-sasl.log"
  echo "kafka broker (SASL): tansu on 127.0.0.1:9095 (log $DIR/tansu-sasl.log)"
}

start_moto() {
  if listening 9000; then echo "s3 server: already on 127.0.0.1:9000"; return; fi
  (nohup moto_server -H 127.0.0.1 -p 9000 > "$DIR/moto.log" 2>&1 & echo $! > "$DIR/moto.pid")
  wait_port moto_server 9000 "$DIR/moto.log"
  echo "s3 server: moto on 127.0.0.1:9000 (log $DIR/moto.log)"
}

stop_pid() { # name
  if [ -f "$DIR/$1.pid" ]; then
    local pid
    pid="$(cat "$DIR/$1.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/$1.pid"
  fi
}

stop() {
  if [ -f "$DIR/postgres/data/postmaster.pid" ]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$DIR/postgres/data" -m fast stop > /dev/null || true
  fi
  for name in tansu tansu-tls socat-tls tansu-sasl moto mariadb; do
    stop_pid "$name"
  done
}

case "${1:-start}" in
  start)
    install_tansu
    install_moto
    install_readers
    install_postgres
    install_mariadb
    install_chromium
    install_tls_tools
    make_certs
    start_tansu
    start_kafka_tls
    start_kafka_sasl
    start_moto
    start_postgres
    start_mariadb
    ;;
  stop) stop ;;
  status)
    listening 9092 && echo "kafka 127.0.0.1:9092 up" || echo "kafka 127.0.0.1:9092 down"
    listening 9000 && echo "s3 127.0.0.1:9000 up" || echo "s3 127.0.0.1:9000 down"
    listening 5432 && echo "postgresql 127.0.0.1:5432 up" || echo "postgresql 127.0.0.1:5432 down"
    listening 3306 && echo "mariadb 127.0.0.1:3306 up" || echo "mariadb 127.0.0.1:3306 down"
    listening 9093 && echo "kafka (TLS) 127.0.0.1:9093 up" || echo "kafka (TLS) 127.0.0.1:9093 down"
    listening 9095 && echo "kafka (SASL) 127.0.0.1:9095 up" || echo "kafka (SASL) 127.0.0.1:9095 down"
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
