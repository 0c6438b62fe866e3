#!/usr/bin/env bash
# The main job, end to end on this machine: set up, start a coordinator and two workers on
# loopback, submit cluster/grids/quickstart.json (antonym × 2 layers × 3 seeds), follow it live
# to the end, and print the results table. Everything stays under runs/quickstart/.
#
#   cluster/quickstart.sh [GRID.json]        (default: cluster/grids/quickstart.json)
#   WORKERS=1 cluster/quickstart.sh          (number of local workers, default: one per core, max 2)
set -euo pipefail
cd "$(dirname "$0")/.."
GRID="${1:-cluster/grids/quickstart.json}"
bash cluster/setup.sh
BIN=.build/release
DIR=runs/quickstart
mkdir -p "$DIR"
PORT="${PORT:-5555}"; PUB=$((PORT + 1))
export INTERVENE_COORDINATOR="tcp://127.0.0.1:$PORT"
NW="${WORKERS:-$(( $(nproc) < 2 ? 1 : 2 ))}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/coordinator" serve --store "$DIR/store" --bind "tcp://127.0.0.1:$PORT" --pub "tcp://127.0.0.1:$PUB" \
  >"$DIR/coordinator.log" 2>&1 &
pids+=($!)
for i in $(seq 1 "$NW"); do
  "$BIN/worker" --connect "tcp://127.0.0.1:$PORT" --cpu --threads 1 --id "local-$i" >"$DIR/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "coordinator and $NW worker(s) running (logs in $DIR/)"
EXP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["experiment"])' "$GRID")
"$BIN/coordinator" submit "$GRID" --tail --wait
echo
"$BIN/coordinator" results "$EXP" --format table
echo
echo "Δ artefacts: $DIR/store/artefacts/   (results as CSV: $BIN/coordinator results $EXP --format csv)"
