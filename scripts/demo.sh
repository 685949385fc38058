#!/usr/bin/env bash
# Builds and runs `flumen demo` (no server needed) in the build directory
# scripts/test.sh uses, with the whole workspace's feature set (`cargo run -p
# flumen-cli` would resolve features for that package alone). `cargo test` still builds
# its dependencies once more on a fresh machine (another profile hash; see README).
#
# Usage: scripts/demo.sh [--seconds N]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen-target}"
cargo build --quiet --workspace --bins --locked
exec "$CARGO_TARGET_DIR/debug/flumen" demo "$@"
