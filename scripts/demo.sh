#!/usr/bin/env bash
# Builds and runs `flumen demo` (no server needed) in the build directory
# scripts/test.sh uses, with the same targets (`--workspace --bins --tests`): the test
# targets' dev-dependencies change the features of shared dependencies, so building the
# binaries alone would resolve another variant of DataFusion than `cargo test` needs
# (`cargo run -p flumen-cli` would resolve yet another, for that package alone).
#
# Usage: scripts/demo.sh [--seconds N]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen-target}"
cargo build --quiet --workspace --bins --tests --locked
exec "$CARGO_TARGET_DIR/debug/flumen" demo "$@"
