#!/usr/bin/env bash
# The test command: set-up without the release build (packages, model, task data), then the
# whole test suite. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup.sh --no-build
python3 cluster/long-lines.py
swift build --build-tests
swift test --skip-build --disable-swift-testing "$@"
