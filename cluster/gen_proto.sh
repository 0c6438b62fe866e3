#!/usr/bin/env bash
# Regenerates Sources/Protocol/intervene.pb.swift from Sources/Protocol/intervene.proto.
# Needs Debian's protoc (apt-get install protobuf-compiler) and protoc-gen-swift 1.39.0, which this
# script builds once under $PROTOC_GEN_SWIFT_DIR (default /tmp/swift-protobuf) if it is not on PATH.
# CI never runs this: the generated file is committed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION=1.39.0
SRC="${PROTOC_GEN_SWIFT_DIR:-/tmp/swift-protobuf}"
ORIGIN="${SWIFT_PROTOBUF_GIT:-/opt/swift-packages/apple/swift-protobuf.git}"

command -v protoc >/dev/null || { echo "protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }

PLUGIN="$(command -v protoc-gen-swift || true)"
if [[ -z "$PLUGIN" ]]; then
  PLUGIN="$SRC/.build/release/protoc-gen-swift"
  if [[ ! -x "$PLUGIN" ]]; then
    if [[ ! -d "$SRC/.git" ]]; then
      [[ -d "$ORIGIN" ]] || ORIGIN=https://github.com/apple/swift-protobuf.git
      git clone -q "$ORIGIN" "$SRC"
    fi
    git -C "$SRC" checkout -q "$VERSION"
    echo "building protoc-gen-swift $VERSION in $SRC (about 75 s)..." >&2
    (cd "$SRC" && swift build -c release --product protoc-gen-swift >&2)
  fi
fi

cd "$ROOT/Sources/Protocol"
protoc --plugin=protoc-gen-swift="$PLUGIN" \
       --swift_opt=Visibility=Public \
       --swift_out=. \
       intervene.proto
echo "wrote Sources/Protocol/intervene.pb.swift ($(wc -l < intervene.pb.swift) lines)"
