#!/usr/bin/env bash
# A private Docker engine for the tests, and a base image made without a registry.
# Needs root. Never touches a system Docker daemon or the host's firewall.
#
#   docker-engine.sh up DIR     dockerd with its own data, exec root and socket in DIR
#                               (--iptables=false, --bridge=none), then the image
#                               dzq/base:1 (Debian bookworm minbase with python3,
#                               python3-venv and openssh-server, made by debootstrap
#                               and `docker import`, cached in DIR/rootfs)
#   docker-engine.sh down DIR   remove every container, stop dockerd, unmount leftovers
#
# Then: DOCKER_HOST=unix://DIR/docker.sock docker ...
set -euo pipefail
cmd=${1:?usage: docker-engine.sh up|down DIR}; D=${2:?dir}
export DOCKER_HOST="unix://$D/docker.sock"

up() {
  mkdir -p "$D"
  for tool in dockerd docker docker-compose debootstrap; do
    command -v "$tool" >/dev/null || { echo "docker-engine.sh: $tool missing (apt-get install docker.io docker-compose debootstrap)" >&2; exit 3; }
  done
  # overlay2 works on this root file system; vfs would copy the image for each container
  setsid dockerd --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" \
    -H "$DOCKER_HOST" --storage-driver=overlay2 \
    --iptables=false --ip6tables=false --bridge=none \
    >"$D/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 120); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || {
    echo "docker-engine.sh: dockerd did not start; its log:" >&2; tail -30 "$D/dockerd.log" >&2; exit 4; }
  if ! docker image inspect dzq/base:1 >/dev/null 2>&1; then
    if ! [ -x "$D/rootfs/usr/bin/python3" ]; then
      debootstrap --variant=minbase --include=python3,python3-venv,openssh-server \
        bookworm "$D/rootfs" >"$D/debootstrap.log" 2>&1 || {
        echo "docker-engine.sh: debootstrap failed; its log:" >&2; tail -20 "$D/debootstrap.log" >&2; exit 5; }
    fi
    mkdir -p "$D/rootfs/run/sshd"
    tar -C "$D/rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - dzq/base:1 >/dev/null
  fi
}

down() {
  if [ -f "$D/dockerd.pid" ]; then
    ids=$(docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
    pid=$(cat "$D/dockerd.pid")
    kill -TERM "$pid" 2>/dev/null || true     # dockerd stops the containerd it started
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # mounts left under the private directories (overlays, network namespaces, shm)
  grep -o " $D/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

case $cmd in
  up) up ;;
  down) down ;;
  *) echo "usage: docker-engine.sh up|down DIR" >&2; exit 2 ;;
esac
