#!/usr/bin/env bash
# Builds the `cuda` release binary here (no GPU needed) and packs it for a lent GPU machine:
#   .gpu/cogvlm.xz      stripped, xz-compressed `cogvlm` (~9 MB; a device call carries at most 64 MiB)
#   .gpu/run-on-gpu.sh  (from ../shared/gpu) unpacks it there, finds the CUDA 13 libraries, runs it
#   .gpu/check.sh       the one prepared run: parity f32/bf16 on the GPU, then every benchmark
# nvcc must be 13.0 (the GPU driver loads PTX ISA ≤ 9.0); ../shared/gpu/setup-cuda13-toolchain.sh installs it
# from PyPI into ~/.cache. Cold build on 2 cores: ~30 min; later ones rebuild only our crates.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${COGVLM_SHARED:-../shared}
CUDA_HOME=${CUDA_HOME:-$HOME/.cache/cuda-13.0}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  [ -f "$SHARED/gpu/setup-cuda13-toolchain.sh" ] || {
    echo "error: no nvcc 13.0 at $CUDA_HOME and no $SHARED/gpu/setup-cuda13-toolchain.sh to install it" >&2
    exit 1
  }
  bash "$SHARED/gpu/setup-cuda13-toolchain.sh"
fi
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR=${COGVLM_CUDA_TARGET:-$HOME/.cache/cogvlm-cuda-release}
nvcc --version | tail -n 2
cargo build --release --features cuda -p server --bin cogvlm
mkdir -p .gpu
strip -o .gpu/cogvlm "$CARGO_TARGET_DIR/release/cogvlm"
rm -f .gpu/cogvlm.xz
xz -9e -T2 .gpu/cogvlm
cp "$SHARED/gpu/run-on-gpu.sh" .gpu/
cp scripts/gpu-check.sh .gpu/check.sh
ls -la .gpu
echo "carry .gpu to the device and run: bash .gpu/check.sh"
