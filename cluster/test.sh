#!/usr/bin/env bash
# The test command: set-up without the release build (packages, model, task data), offline checks of
# the deployment files, the whole test suite, then the Python client end to end against the built
# coordinator and workers. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup.sh --no-build
python3 cluster/long-lines.py
bash cluster/validate-manifests.sh
swift build --build-tests
swift test --skip-build --disable-swift-testing "$@"
python3 clients/python/test_client_e2e.py --bin "$(swift build --show-bin-path)"
