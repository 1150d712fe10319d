#!/usr/bin/env bash
# Run the tests on another Python than the machine's: Debian's, in a chroot
# that debootstrap makes (as root), with the project's tree copied in and its
# test dependencies installed as tests/run.sh installs them. The first
# argument names the Debian release: forky (testing: Python 3.14) or trixie
# (stable: 3.13). The chroot is kept for the next run (in
# /var/tmp/dzq-<release>, or DZQ_CHROOT); its mounts are undone at the end.
#   bash tests/run_on_debian.sh forky|trixie [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:-}
case "$release" in
  forky | trixie) shift ;;
  *)
    echo "usage: bash tests/run_on_debian.sh forky|trixie [pytest arguments]" >&2
    exit 2
    ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "tests/run_on_debian.sh: needs root (debootstrap, chroot, mounts)" >&2
  exit 2
fi
root=${DZQ_CHROOT:-/var/tmp/dzq-$release}
if ! command -v debootstrap >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi
if [ ! -x "$root/usr/bin/python3" ]; then
  echo "tests/run_on_debian.sh: making Debian $release in $root"
  rm -rf "$root"
  # what the tests use besides Python: sshd and ssh, iproute2 (network
  # namespaces, ss), iptables, util-linux (setpriv, unshare), gcc and the
  # headers for a package that has no wheel yet
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-dev,gcc,openssh-server,openssh-client,iproute2,iptables,procps,util-linux,ca-certificates \
    "$release" "$root" http://deb.debian.org/debian \
    /usr/share/debootstrap/scripts/sid >"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; exit 1; }
fi
mounts=()
undo_mounts() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount -l "${mounts[i]}" 2>/dev/null || true
  done
}
trap undo_mounts EXIT
bind() { mount --bind "$1" "$2" && mounts+=("$2"); }
# the root a mount point of its own, as the tests' network namespaces and
# `unshare --propagation` need
bind "$root" "$root"
for dir in proc sys dev dev/pts dev/shm; do bind "/$dir" "$root/$dir"; done
cp /etc/resolv.conf "$root/etc/resolv.conf"
# the machine's certificate authorities, through which pip reaches the
# package registries here
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$root/src" && mkdir "$root/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | tar -x -C "$root/src"
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  chroot "$root" bash -c '
    set -euo pipefail
    cd /src
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[test,uvloop]"
    .venv/bin/python -c "import sys; print(\"tests/run_on_debian.sh: Python\", sys.version)"
    exec .venv/bin/python -m pytest "$@"
  ' bash "$@"
