#!/usr/bin/env bash
# Builds the web app without cargo-leptos and without downloading anything:
#   1. the browser bundle: `app` for wasm32 (feature hydrate), then wasm-bindgen (the CLI at exactly
#      the version in Cargo.lock), then wasm-opt in release if it is on PATH (npm binaryen@132; never
#      Debian's binaryen 108, whose output does not hydrate);
#   2. the site: target/site/pkg/{cogvlm.js, cogvlm_bg.wasm, cogvlm.css} + public/;
#   3. the `cogvlm` binary (server, with the app server-rendered).
# Usage: ./build.sh [debug|release]   (debug: the dev profile, which optimises dependencies; it
# shares its build with `cargo test`.)  Then: <target>/<debug|release>/cogvlm serve
set -euo pipefail
cd "$(dirname "$0")"

MODE=${1:-debug}
NAME=cogvlm
T=${CARGO_TARGET_DIR:-target}
SITE=target/site
PKG=$SITE/pkg
WASM_TARGET=wasm32-unknown-unknown

case "$MODE" in
  debug) WASM_ARGS=(); WDIR=debug; SRV_ARGS=(); SRV_DIR=debug ;;
  release) WASM_ARGS=(--profile wasm-release); WDIR=wasm-release; SRV_ARGS=(--release); SRV_DIR=release ;;
  *) echo "usage: $0 [debug|release]" >&2; exit 2 ;;
esac

# Leptos links /pkg/<name>_bg.wasm (wasm-bindgen's own name) when LEPTOS_OUTPUT_NAME is unset at
# compile time; the server sets the name at run time.
unset LEPTOS_OUTPUT_NAME

if ! rustup target list --installed 2>/dev/null | grep -qx "$WASM_TARGET"; then
  echo "error: the Rust target $WASM_TARGET is missing: run 'rustup target add $WASM_TARGET'" >&2
  exit 1
fi
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  echo "error: wasm-bindgen CLI $WB_VERSION is needed (found: $(wasm-bindgen --version 2>/dev/null || echo none)):" >&2
  echo "  cargo install wasm-bindgen-cli --version $WB_VERSION --no-default-features --bin wasm-bindgen" >&2
  exit 1
fi

echo "== browser bundle ($MODE)"
cargo rustc -p app --lib --crate-type cdylib --target "$WASM_TARGET" \
  --no-default-features --features hydrate "${WASM_ARGS[@]}"
rm -rf "$PKG.tmp"
mkdir -p "$PKG.tmp"
wasm-bindgen --target web --no-typescript --out-dir "$PKG.tmp" --out-name "$NAME" \
  "$T/$WASM_TARGET/$WDIR/app.wasm"
if [ "$MODE" = release ]; then
  if command -v wasm-opt >/dev/null && [ -z "${NO_WASM_OPT:-}" ]; then
    wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
      "$PKG.tmp/${NAME}_bg.wasm" -o "$PKG.tmp/${NAME}_bg.wasm"
  else
    echo "note: wasm-opt not on PATH (npm binaryen@132): the bundle is not size-optimised"
  fi
fi
cp style/main.css "$PKG.tmp/$NAME.css"
mkdir -p "$SITE"
rm -rf "$PKG"
mv "$PKG.tmp" "$PKG"
cp -r public/. "$SITE/"
ls -l "$PKG"

echo "== server ($MODE)"
cargo build -p server --bin cogvlm "${SRV_ARGS[@]}"
echo "built: $T/$SRV_DIR/cogvlm   (start it with: $T/$SRV_DIR/cogvlm serve)"
