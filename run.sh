#!/usr/bin/env bash
# Sets up what is missing, builds the page (the browser bundle in release, size-optimised) and the
# server (debug: the build `cargo test` shares), and serves http://127.0.0.1:3000.
# Extra arguments go to `cogvlm serve` (e.g. --models-dir models --device cuda --host 0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cogvlm-target}"
bash scripts/setup-web-tools.sh
./build.sh
exec "$CARGO_TARGET_DIR/debug/cogvlm" serve "$@"
