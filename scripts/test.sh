#!/usr/bin/env bash
# Install everything the tests need, then run every test. Extra arguments go to pytest.
# Python packages go into the active virtual environment, else into .venv/ (made here when
# missing): Debian, Ubuntu and others refuse pip installs into their own Python (PEP 668).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || {
      echo "cannot make a virtual environment: on Debian/Ubuntu install python3-venv (apt install python3-venv)" >&2
      exit 1
    }
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
scripts/install-test-deps.sh
exec python3 -m pytest "$@"
