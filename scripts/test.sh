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

# The shared target directory keeps every test binary ever linked (~570 MB each, one
# per source change): keep the newest and drop the rest, so a long-lived cache
# does not fill the disk.
prune_test_binaries() {
  local deps="$CARGO_TARGET_DIR/debug/deps" name keep
  [ -d "$deps" ] || return 0
  # `flumen-*` is both the CLI binary and the root crate's unit tests: keep two.
  for name in main:1 flumen:2 flumen_engine:1 flumen_sql:1 flumen_connectors:1 flumen_benchmarks:1; do
    keep=${name#*:}
    name=${name%:*}
    find "$deps" -maxdepth 1 -type f -regextype posix-extended \
      -regex ".*/${name}-[0-9a-f]{16}" -printf '%T@ %p\n' \
      | sort -rn | tail -n +$((keep + 1)) | cut -d' ' -f2- | xargs -r rm -f
  done
}
prune_test_binaries

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "servers for the tests"
scripts/services.sh start

step "cargo test"
# The CLI tests drive the real binary: built with the whole workspace (the same build
# scripts/demo.sh makes; `-p flumen-cli` alone would compile DataFusion again with
# another feature set).
cargo build --workspace --bins --tests --locked
cargo test --workspace --locked

step "examples"
# Built by `cargo test --workspace` with the workspace's features: run those binaries
# (`cargo run --example` would resolve the root package's features alone and compile
# DataFusion again).
cargo build --workspace --examples --locked
for ex in examples/*.rs; do
  name=$(basename "$ex" .rs)
  echo "-- example $name"
  "$CARGO_TARGET_DIR/debug/examples/$name" > "/tmp/flumen-example-$name.log"
  tail -n 5 "/tmp/flumen-example-$name.log"
done
