#!/usr/bin/env bash
# Builds and runs `flumen demo` (no server needed), sharing the build directory and
# the build that scripts/test.sh uses: both build the whole workspace with one feature
# set, so running both compiles DataFusion once (`cargo run -p flumen-cli` would
# resolve features for that package alone and compile it again).
#
# Usage: scripts/demo.sh [--seconds N]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen-target}"
cargo build --quiet --workspace --bins --locked
exec "$CARGO_TARGET_DIR/debug/flumen" demo "$@"
