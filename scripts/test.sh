#!/usr/bin/env bash
# Install everything the tests need, then run every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
exec python3 -m pytest "$@"
