#!/usr/bin/env bash
# Installs what the web build and its browser tests need and a fresh machine lacks: the wasm32 target, the
# wasm-bindgen CLI at exactly the Cargo.lock version, wasm-opt (npm binaryen, into scripts/web-tools),
# Debian's Chromium (only with --browser) and the end2end npm packages. Nothing is downloaded at build or
# run time after this.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown || {
    echo "error: the Rust target wasm32-unknown-unknown is missing and 'rustup target add' failed" >&2
    exit 1
  }
fi
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WB_VERSION" ]; then
  # Not --locked: its lock pins a webpki-roots that this registry lacks.
  cargo install wasm-bindgen-cli --version "$WB_VERSION" --no-default-features --bin wasm-bindgen --force
fi
# wasm-opt shrinks the release bundle; without it the build goes on with a larger bundle.
if [ ! -x scripts/web-tools/node_modules/.bin/wasm-opt ]; then
  if command -v npm >/dev/null; then
    (cd scripts/web-tools && npm ci --no-audit --no-fund) ||
      echo "note: installing npm binaryen (wasm-opt) failed: the browser bundle will not be size-optimised" >&2
  else
    echo "note: npm not found, so no wasm-opt (npm binaryen): the browser bundle will not be size-optimised" >&2
  fi
fi
if [ "${1:-}" = "--browser" ]; then
  if [ ! -x /usr/bin/chromium ]; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium
  fi
  (cd end2end && npm ci --no-audit --no-fund)
fi
