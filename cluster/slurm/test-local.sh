#!/usr/bin/env bash
# Runs cluster/slurm/worker.sbatch and worker-gpu.sbatch on a throw-away single-node Slurm on this
# machine against a real coordinator, then tears everything down. Not part of cluster/test.sh: it
# needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm), and starts daemons.
#
#   bash cluster/slurm/test-local.sh [--bin .build/debug] [--no-keys]
#
# The coordinator has CurveZMQ keys (made by `coordinator keys` under the temporary folder) unless --no-keys.
# What it checks:
#   1. a 2-task array of worker.sbatch (keys from INTERVENE_CURVE_SECRET/INTERVENE_SERVER_KEY) connects to the
#      coordinator as slurm-<job>-0 and -1, runs the synthetic grid (24 jobs, submitted and followed with a
#      client key) to the end, and leaves cleanly on scancel;
#   2. with keys: worker.sbatch without keys, and with a key the coordinator does not list (as arguments), is
#      refused: its output says why ("the coordinator requires keys", "refused this worker's key") and no
#      worker of it connects; then scancel;
#   3. worker-gpu.sbatch with --gres=gpu:2 (a fake gres: two files that are not GPUs; keys as arguments) gets
#      CUDA_VISIBLE_DEVICES=0,1 and starts two workers with --gpu 0 and --gpu 1; this build has no GPU
#      backend, so they exit with "no GPU backend in this build" and the job ends FAILED (exit 64).
# munged, slurmctld and slurmd run as root with every file under a temporary folder (ports 16817/16818).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="$ROOT/.build/debug"
USE_KEYS=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$(cd "$2" && pwd)"; shift 2 ;;
    --no-keys) USE_KEYS=0; shift ;;
    *) echo "usage: test-local.sh [--bin DIR] [--no-keys]" >&2; exit 2 ;;
  esac
done
for x in munged slurmctld slurmd sbatch; do
  command -v "$x" >/dev/null || [[ -x /usr/sbin/$x ]] \
    || { echo "SKIP: $x missing (apt-get install slurm-wlm)"; exit 0; }
done
[[ "$(id -u)" == 0 ]] || { echo "SKIP: needs root (slurmd runs jobs as their user)"; exit 0; }
[[ -x "$BIN/coordinator" && -x "$BIN/worker" ]] || { echo "no coordinator/worker in $BIN (swift build)" >&2; exit 1; }

T="$(mktemp -d /tmp/intervene-slurm-XXXXXX)"
chmod 755 "$T"
NODE="$(hostname -s)"
PORT=$(( 20000 + RANDOM % 20000 ))
ROUTER="tcp://127.0.0.1:$PORT"
PUB="tcp://127.0.0.1:$(( PORT + 1 ))"
export SLURM_CONF="$T/slurm.conf"
PIDS=()
cleanup() {
  set +e
  local all=("${PIDS[@]}")
  for f in "$T/slurmd.pid" "$T/slurmctld.pid" "$T/munge/munged.pid"; do [[ -f "$f" ]] && all+=("$(cat "$f")"); done
  for p in "${all[@]}"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    alive=0; for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    (( alive )) || break; sleep 0.2
  done
  if [[ "${OK:-0}" == 1 ]]; then rm -rf "$T"; else echo "kept $T (logs under log/, out/)"; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -n 20 "$T"/log/*.log "$T"/out/*.out 2>/dev/null >&2; exit 1; }
say() { echo "==> $*"; }

# ---- munge and a one-node Slurm, all under $T
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/log" "$T/out"
chmod 700 "$T/munge"
if [[ -f /etc/munge/munge.key ]]; then cp /etc/munge/munge.key "$T/munge/key"
else dd if=/dev/urandom of="$T/munge/key" bs=1 count=1024 status=none; fi
chmod 600 "$T/munge/key"
/usr/sbin/munged --force -S "$T/munge/sock" --key-file="$T/munge/key" --log-file="$T/munge/log" \
  --pid-file="$T/munge/munged.pid" --seed-file="$T/munge/seed"
cat > "$SLURM_CONF" <<EOF
ClusterName=intervene-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/sock
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=2000 Gres=gpu:2 State=UNKNOWN
PartitionName=test Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
# Two stand-in "GPUs" (gres/gpu wants device files; nothing opens them).
printf 'NodeName=%s Name=gpu File=/dev/null\nNodeName=%s Name=gpu File=/dev/zero\n' "$NODE" "$NODE" > "$T/gres.conf"
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 50); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 0.2; done
sinfo -h -o %t | grep -q idle || fail "the Slurm node did not come up: $(sinfo 2>&1)"
say "slurm $(sinfo -V | cut -d' ' -f2): node $NODE idle, $(nproc) CPUs, gres gpu:2 (fake)"

# ---- a coordinator on loopback, with keys unless --no-keys
K="$T/keys"
SERVE_KEYS=() CLIENT=() WORKER_ENV=() GPU_KEYS=()
# none from the caller's environment: each sbatch below is given its keys explicitly (or none)
unset INTERVENE_CURVE_SECRET INTERVENE_SERVER_KEY INTERVENE_SERVER_SECRET INTERVENE_WORKER_KEYS INTERVENE_CLIENT_KEYS
if (( USE_KEYS )); then
  "$BIN/coordinator" keys coordinator worker client stranger --out "$K" > "$T/log/keys.log"
  SERVE_KEYS=(--curve-secret "$K/coordinator.secret" --worker-keys "$K/worker.pub" --client-keys "$K/client.pub")
  CLIENT=(--curve-secret "$K/client.secret" --server-key "$K/coordinator.pub")
  WORKER_ENV=(INTERVENE_CURVE_SECRET="$K/worker.secret" INTERVENE_SERVER_KEY="$K/coordinator.pub")
  GPU_KEYS=("$K/worker.secret" "$K/coordinator.pub")
  say "keys: coordinator, worker, client, stranger (coordinator keys) in $K"
fi
"$BIN/coordinator" serve --store "$T/store" --bind "$ROUTER" --pub "$PUB" ${SERVE_KEYS[@]+"${SERVE_KEYS[@]}"} \
  > "$T/log/coordinator.log" 2>&1 &
PIDS+=($!)
coord() { "$BIN/coordinator" "$@" --coordinator "$ROUTER" ${CLIENT[@]+"${CLIENT[@]}"}; }
for _ in $(seq 50); do
  coord status --timeout 1 >/dev/null 2>&1 && break
  sleep 0.2
done
coord status --timeout 2 > /dev/null || fail "the coordinator does not answer: $(tail -n 3 "$T/log/coordinator.log")"
say "coordinator on $ROUTER ($(grep -o "CurveZMQ keys: .*" "$T/log/coordinator.log" || echo "no keys"))"

# ---- 1. CPU workers as a job array
cd "$T/out"
JOB=$(env INTERVENE_WORKER="$BIN/worker" INTERVENE_SYNTHETIC_STEP_MS=4 ${WORKER_ENV[@]+"${WORKER_ENV[@]}"} \
      sbatch --parsable --array=0-1 --cpus-per-task=1 --mem=500M --time=10 \
      "$ROOT/cluster/slurm/worker.sbatch" "$ROUTER")
say "sbatch worker.sbatch: array job $JOB"
for _ in $(seq 100); do
  n=$(coord status | grep -c "^slurm-$JOB-" || true)
  [[ "$n" == 2 ]] && break; sleep 0.2
done
[[ "$n" == 2 ]] || fail "the array's workers did not connect ($n of 2)"
head -n 1 "$T/out/intervene-worker-${JOB}_0.out"
coord submit "$ROOT/cluster/grids/synthetic.json" --tail > "$T/log/tail.log" 2>&1 \
  || fail "the grid did not finish: $(tail -n 3 "$T/log/tail.log")"
STATUS=$(coord status synthetic)
echo "$STATUS"
echo "$STATUS" | grep -Eq "^synthetic +24 +24 +0 +0 +0 +0" || fail "not 24 of 24 done"
for w in 0 1; do
  ran=$(grep -c "attempt 1 -> slurm-$JOB-$w " "$T/log/coordinator.log" || true)
  say "slurm-$JOB-$w ran $ran jobs"
done
scancel "$JOB"
for _ in $(seq 50); do [[ -z "$(squeue -h -j "$JOB" 2>/dev/null)" ]] && break; sleep 0.2; done
left=$(grep -c "left: finished cleanly" "$T/log/coordinator.log" || true)
[[ "$left" == 2 ]] || fail "after scancel $left of 2 workers left cleanly"
say "scancel: both workers finished cleanly"

# ---- 2. workers the keyed coordinator refuses: no keys, and a key on no list
if (( USE_KEYS )); then
  for label in "no keys" "a key on no list"; do
    args=("$ROUTER")
    expect="the coordinator requires keys"
    if [[ "$label" != "no keys" ]]; then
      args+=("$K/stranger.secret" "$K/coordinator.pub"); expect="refused this worker's key"
    fi
    RJOB=$(INTERVENE_WORKER="$BIN/worker" sbatch --parsable --array=0 --cpus-per-task=1 --mem=500M --time=10 \
           "$ROOT/cluster/slurm/worker.sbatch" "${args[@]}")
    f="$T/out/intervene-worker-${RJOB}_0.out"
    for _ in $(seq 100); do grep -q "$expect" "$f" 2>/dev/null && break; sleep 0.2; done
    grep -q "$expect" "$f" 2>/dev/null || fail "worker.sbatch with $label: no \"$expect\" in its output"
    n=$(coord status | grep -c "^slurm-$RJOB-" || true)
    [[ "$n" == 0 ]] || fail "worker.sbatch with $label: $n worker(s) connected"
    say "worker.sbatch with $label: refused, 0 connected: $(grep -o "worker: .*$expect.*" "$f" | head -n 1)"
    scancel "$RJOB"
    for _ in $(seq 50); do [[ -z "$(squeue -h -j "$RJOB" 2>/dev/null)" ]] && break; sleep 0.2; done
  done
  COUNTERS=$(coord status --verbose | grep -E "handshakes_failed_(no_keys|key_refused)" | tr -s ' \n' ' ')
  say "coordinator counters:$COUNTERS"
fi

# ---- 3. the GPU variant under --gres=gpu:2
GJOB=$(INTERVENE_WORKER="$BIN/worker" sbatch --parsable --array=0 --gres=gpu:2 --cpus-per-task=2 --mem=500M \
       --time=10 "$ROOT/cluster/slurm/worker-gpu.sbatch" "$ROUTER" ${GPU_KEYS[@]+"${GPU_KEYS[@]}"})
for _ in $(seq 100); do [[ -z "$(squeue -h -j "$GJOB" 2>/dev/null)" ]] && break; sleep 0.2; done
OUT=$(cat "$T"/out/intervene-worker-gpu-"$GJOB"_0.out)
echo "$OUT" | head -n 2
echo "$OUT" | grep -q "2 GPU worker(s) (CUDA_VISIBLE_DEVICES=0,1)" || fail "worker-gpu.sbatch did not see 2 GPUs"
if (( USE_KEYS )); then
  echo "$OUT" | head -n 1 | grep -q "keys $K/worker.secret" || fail "worker-gpu.sbatch did not take the keys"
fi
[[ $(echo "$OUT" | grep -c "no GPU backend in this build") == 2 ]] || fail "expected two --gpu workers refused"
STATE=$(scontrol show job "$GJOB" | grep -o "JobState=[A-Z]*\|ExitCode=[0-9:]*" | tr '\n' ' ')
say "worker-gpu.sbatch: 2 workers started with --gpu 0/1 under gres gpu:2; this build refuses --gpu ($STATE)"
OK=1
say "slurm local test: OK ($( (( USE_KEYS )) && echo "keys on" || echo "no keys"))"
