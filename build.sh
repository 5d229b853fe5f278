#!/usr/bin/env bash
# Builds the web app without cargo-leptos and without downloading anything:
#   1. the browser bundle: `app` for wasm32 (feature hydrate), then wasm-bindgen (the CLI at exactly
#      the version in Cargo.lock), then, for a release bundle, `wasm-opt -Oz` (npm binaryen@132 from
#      scripts/web-tools, installed by scripts/setup-web-tools.sh; never Debian's binaryen 108, whose
#      output does not hydrate);
#   2. the site: target/site/pkg/cogvlm.<hash>.{js,wasm,css} (content-hashed names, listed in
#      pkg/hash.txt, so browsers may cache them for good) with .br and .gz copies next to each, + public/;
#   3. the `cogvlm` binary (server, with the app server-rendered).
# Usage: ./build.sh [debug|release]
#   (none)   the bundle in release, the server in debug (the dev profile, which optimises
#            dependencies and shares its build with `cargo test`): what ./run.sh and CI use;
#   debug    both in debug (the quickest rebuild while working on the page; a ~2 MB bundle);
#   release  both in release.
# Then: <target>/<debug|release>/cogvlm serve
set -euo pipefail
cd "$(dirname "$0")"

MODE=${1:-}
NAME=cogvlm
T=${CARGO_TARGET_DIR:-target}
SITE=target/site
PKG=$SITE/pkg
WASM_TARGET=wasm32-unknown-unknown

case "$MODE" in
  "") BUNDLE=release; SRV_ARGS=(); SRV_DIR=debug ;;
  debug) BUNDLE=debug; SRV_ARGS=(); SRV_DIR=debug ;;
  release) BUNDLE=release; SRV_ARGS=(--release); SRV_DIR=release ;;
  *) echo "usage: $0 [debug|release]" >&2; exit 2 ;;
esac
if [ "$BUNDLE" = release ]; then WASM_ARGS=(--profile wasm-release); WDIR=wasm-release
else WASM_ARGS=(); WDIR=debug; fi

# Leptos links /pkg/<name>_bg.wasm (wasm-bindgen's own name) when LEPTOS_OUTPUT_NAME is unset at
# compile time and there is no hash file; the server sets the name at run time.
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

# npm binaryen (scripts/web-tools), else a wasm-opt on PATH that is recent enough (Debian's 108
# breaks the module's function table: the page would never hydrate).
find_wasm_opt() {
  local local_bin=scripts/web-tools/node_modules/.bin/wasm-opt
  if [ -x "$local_bin" ]; then echo "$local_bin"; return; fi
  if command -v wasm-opt >/dev/null; then
    local v
    v=$(wasm-opt --version 2>/dev/null | awk '{print $3}')
    if [ "${v:-0}" -ge 116 ] 2>/dev/null; then command -v wasm-opt; return; fi
    echo "note: ignoring $(command -v wasm-opt) (binaryen ${v:-?}: its output does not hydrate)" >&2
  fi
}

echo "== browser bundle ($BUNDLE)"
cargo rustc -p app --lib --crate-type cdylib --target "$WASM_TARGET" \
  --no-default-features --features hydrate "${WASM_ARGS[@]}"
rm -rf "$PKG.tmp"
mkdir -p "$PKG.tmp"
wasm-bindgen --target web --no-typescript --out-dir "$PKG.tmp" --out-name "$NAME" \
  "$T/$WASM_TARGET/$WDIR/app.wasm"
mv "$PKG.tmp/${NAME}_bg.wasm" "$PKG.tmp/$NAME.wasm"
if [ "$BUNDLE" = release ]; then
  WASM_OPT=$(find_wasm_opt)
  if [ -n "${NO_WASM_OPT:-}" ]; then
    echo "note: NO_WASM_OPT is set: the bundle is not size-optimised"
  elif [ -n "$WASM_OPT" ]; then
    echo "wasm-opt -Oz ($("$WASM_OPT" --version))"
    "$WASM_OPT" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
      "$PKG.tmp/$NAME.wasm" -o "$PKG.tmp/$NAME.wasm"
  else
    echo "note: no wasm-opt (npm binaryen@132: bash scripts/setup-web-tools.sh): the bundle is ~2x larger"
  fi
fi
cp style/main.css "$PKG.tmp/$NAME.css"
# Content-hashed names: a changed file gets a new name, so an unchanged one can be cached for good.
for ext in js wasm css; do
  hash=$(sha256sum "$PKG.tmp/$NAME.$ext" | cut -c1-16)
  mv "$PKG.tmp/$NAME.$ext" "$PKG.tmp/$NAME.$hash.$ext"
  echo "$ext: $hash" >> "$PKG.tmp/hash.txt"
done
# Precompressed copies, served instead of compressing on each request.
if command -v node >/dev/null; then
  node scripts/precompress.mjs "$PKG.tmp"
else
  echo "note: node not found: no precompressed copies (the server compresses the bundle per request)"
fi
mkdir -p "$SITE"
rm -rf "$PKG"
mv "$PKG.tmp" "$PKG"
cp -r public/. "$SITE/"
ls -l "$PKG"

echo "== server ($SRV_DIR)"
cargo build -p server --bin cogvlm "${SRV_ARGS[@]}"
echo "built: $T/$SRV_DIR/cogvlm   (start it with: $T/$SRV_DIR/cogvlm serve)"
