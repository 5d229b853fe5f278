#!/usr/bin/env bash
# The one prepared GPU run (issue 8). GPU time is short and not always lent, so everything is in this one
# script, most important first, each step under its own timeout so one hang cannot eat the rest.
#
# Here:   bash scripts/build-gpu-binary.sh          (makes .gpu/cogvlm.xz, .gpu/run-on-gpu.sh, .gpu/check.sh)
# There:  bash .gpu/check.sh                         (device tool: carry [".gpu"], from the repo root)
#
# Every step's full output goes to $OUT/<step>.log; the JSON lines of the benchmarks to $OUT/bench.jsonl;
# the GPU's memory use, sampled every 200 ms, to $OUT/gpu-mem.csv. The console gets a short summary.
set -u
OUT=${OUT:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
BIN=/tmp/cogvlm-gpu
xz -dc .gpu/cogvlm.xz > "$BIN" 2>/dev/null \
  || python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' .gpu/cogvlm.xz "$BIN"
chmod +x "$BIN"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/gpu-mem.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT
date -u +"start %FT%TZ" > "$OUT/summary.txt"

# The device call's own limit is 600 s: steps share DEADLINE seconds, and a step that would overrun it is cut
# to what is left (or skipped), so the summary is always written and whatever ran comes back.
DEADLINE=${DEADLINE:-570}

# step NAME SECONDS ARGS...: runs the binary through run-on-gpu.sh (which resolves the CUDA libraries).
step() {
  local name=$1 secs=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped, $left s left of $DEADLINE" | tee -a "$OUT/summary.txt"
    return
  fi
  [ "$secs" -le "$left" ] || secs=$left
  local t0=$SECONDS
  timeout "$secs" bash .gpu/run-on-gpu.sh "$BIN" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  grep -E '^\{' "$OUT/$name.log" | tee -a "$OUT/bench.jsonl" >> "$OUT/summary.txt"
  grep -E 'passed, .* failed|^FAIL|^error' "$OUT/$name.log" | head -n 30 >> "$OUT/summary.txt"
  [ "$rc" = 0 ] || tail -n 5 "$OUT/$name.log" >> "$OUT/summary.txt"
}

B="bench --random-weights --device cuda --new-tokens 64 --repeat 3"
step cogvlm-bf16 180 $B --config cogvlm-17b
step parity-bf16 120 parity --fixtures server/fixtures --device cuda --dtype bf16
step parity-f32 120 parity --fixtures server/fixtures --device cuda --dtype f32
step cogagent-bf16 150 $B --config cogagent-18b
# CogVLM2 (issue 38): the 1344 px tower at full size, and its parity set in bf16 (the f32 cases against their f32
# reference within 2e-2, the two bf16 cases against the bf16 reference).
step cogvlm2-bf16 150 $B --config cogvlm2-19b --tokenizer server/fixtures/cogvlm2/tokenizer/tokenizer.json
step cogvlm2-parity-bf16 90 parity --fixtures server/fixtures/cogvlm2 --device cuda --dtype bf16
step cogvlm-int4 150 $B --config cogvlm-17b --quant 4
step cogvlm-int4-vision 150 $B --config cogvlm-17b --quant 4 --quant-vision
step cogvlm-int8 150 $B --config cogvlm-17b --quant 8
kill $SMI 2>/dev/null
echo "peak GPU memory (MiB, whole card): $(sort -n "$OUT/gpu-mem.csv" | tail -n 1)" >> "$OUT/summary.txt"
date -u +"end %FT%TZ" >> "$OUT/summary.txt"
echo "----"
cat "$OUT/summary.txt"
