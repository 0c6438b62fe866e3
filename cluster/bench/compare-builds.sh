#!/usr/bin/env bash
# Times two builds of `worker` alternately (before/after a change), the way the project measures
# speed changes: ROUNDS rounds of `worker bench` and of `worker run` (one seed, 20 test pairs) on
# antonym, layer 4, at 2 and 1 threads, int8 and fp32. Prints one line per run; compare the medians.
#
#   cluster/bench/compare-builds.sh OLD/worker NEW/worker [ROUNDS]
set -euo pipefail
OLD=${1:?usage: compare-builds.sh OLD_WORKER NEW_WORKER [ROUNDS]}; NEW=${2:?}; ROUNDS=${3:-3}
cd "$(dirname "$0")/../.."
fmt='import json,sys; d=json.load(sys.stdin); print(" ".join(f"{k} {d[k]:.4g}" for k in sys.argv[1:] if k in d))'
for round in $(seq "$ROUNDS"); do
  for t in 2 1; do
    for p in int8 fp32; do
      for v in old new; do
        b=$OLD; [ "$v" = new ] && b=$NEW
        printf '%s %s T%s %s bench: ' "$round" "$v" "$t" "$p"
        "$b" bench --task antonym --layer 4 --steps 100 --threads "$t" --precision "$p" --json 2>/dev/null | tail -1 \
          | python3 -c "$fmt" step_ms forward_ms setup_ms eval_ms exact_match
        printf '%s %s T%s %s run:   ' "$round" "$v" "$t" "$p"
        "$b" run --task antonym --layer 4 --seed 0 --test 20 --threads "$t" --precision "$p" --json \
          --out "${TMPDIR:-/tmp}/compare-builds" 2>/dev/null | tail -1 | python3 -c "$fmt" step_ms exact_match final_loss
      done
    done
  done
done
