#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, build, every test, every example.
#
# Usage: scripts/test.sh
#
# Builds go to $CARGO_TARGET_DIR (default: ~/.cache/flumen-target, outside the
# checkout, so a fresh clone reuses earlier builds). The servers later connector tests
# need are installed and started by scripts/services.sh, which this calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "servers for the tests"
scripts/services.sh start

step "cargo test"
# The CLI tests drive the real binary.
cargo build -p flumen-cli --locked
cargo test --workspace --locked

step "examples"
for ex in examples/*.rs; do
  name=$(basename "$ex" .rs)
  echo "-- example $name"
  cargo run --quiet --locked --example "$name" > "/tmp/flumen-example-$name.log"
  tail -n 5 "/tmp/flumen-example-$name.log"
done
