#!/usr/bin/env bash
# Set up everything the test suite needs and run it: the README's test command.
#   bash tests/run.sh [pytest arguments]
# Makes (or reuses) the virtual environment .venv with distex_zmq installed in
# editable mode plus its test dependencies, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The multi-host tests run sshd in network namespaces: as root, install what
# they need (CI runs as root on a fresh machine).
if [ "$(id -u)" = 0 ] && { [ ! -x /usr/sbin/sshd ] || ! command -v ip >/dev/null; }; then
  echo "tests/run.sh: installing openssh-server and iproute2 for the multi-host tests"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server iproute2 >/dev/null
fi
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e '.[test,uvloop]'
exec "$VENV/bin/python" -m pytest "$@"
