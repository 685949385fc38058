#!/usr/bin/env bash
# Builds and runs `flumen demo` (no server needed), sharing the build directory that
# scripts/test.sh uses, so running both compiles DataFusion once.
#
# Usage: scripts/demo.sh [--seconds N]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flumen-target}"
exec cargo run --quiet -p flumen-cli -- demo "$@"
