#!/usr/bin/env bash
# Set up everything the test suite needs and run it: the README's test command.
#   bash tests/run.sh [pytest arguments]
# Makes (or reuses) the virtual environment .venv with distex_zmq installed in
# editable mode plus its test dependencies, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# As root (CI on a fresh machine), install what the multi-host tests need:
# they run sshd in network namespaces; the reconnect tests cut connections
# with iproute2's ss; a spawner test drops one connection's packets with
# iptables and slows a link with tc (iproute2).
# The docker tests start a private Docker engine (docker.io), build a base
# image with debootstrap, and run compose (docker-compose).
if [ "$(id -u)" = 0 ]; then
  need=()
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  { command -v ip && command -v ss; } >/dev/null || need+=(iproute2)
  command -v iptables >/dev/null || need+=(iptables)
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${need[*]} for the multi-host and docker tests"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  fi
fi
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e '.[test,uvloop]'
exec "$VENV/bin/python" -m pytest "$@"
