#!/usr/bin/env bash
# Make the secret and SSH keys of the compose cluster in docker/keys/ (git-ignored).
# Nothing of it goes into an image: docker-compose.yml mounts it.
#
#   bash docker/make-keys.sh [DIR]      (default: docker/keys next to this script)
#
# DIR/secret                 the shared secret of the spawners and the pools
# DIR/ssh-node/              sshd's host key, config and authorized_keys
# DIR/client/                the client container's ~/.ssh: key, config, known_hosts
# DIR/host/.ssh/             the same for a pool on the Docker host: HOME=DIR/host
# DZQ_DOCKER_NET (default 10.215.0): the compose network's /24, where the host finds ssh-node
set -euo pipefail
NET=${DZQ_DOCKER_NET:-10.215.0}
DIR=${1:-$(cd "$(dirname "$0")" && pwd)/keys}
if [ -f "$DIR/secret" ]; then echo "$DIR exists: keeping its keys"; exit 0; fi
mkdir -p "$DIR/ssh-node" "$DIR/client" "$DIR/host/.ssh"
chmod 700 "$DIR" "$DIR/ssh-node" "$DIR/client" "$DIR/host" "$DIR/host/.ssh"
umask 077
python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$DIR/secret"
ssh-keygen -q -t ed25519 -N '' -C ssh-node -f "$DIR/ssh-node/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C distex_zmq-client -f "$DIR/client/id_ed25519"
cp "$DIR/client/id_ed25519.pub" "$DIR/ssh-node/authorized_keys"
cat >"$DIR/ssh-node/sshd_config" <<CONF
HostKey /etc/distex_zmq-ssh/host_ed25519
AuthorizedKeysFile /etc/distex_zmq-ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
CONF
hostkey=$(cut -d' ' -f1,2 "$DIR/ssh-node/host_ed25519.pub")
printf 'Host ssh-node\n  User root\n  IdentityFile /root/.ssh/id_ed25519\n' >"$DIR/client/config"
echo "ssh-node $hostkey" >"$DIR/client/known_hosts"
cp "$DIR/client/id_ed25519" "$DIR/host/.ssh/id_ed25519"
printf 'Host ssh-node\n  HostName %s.13\n  User root\n  IdentityFile %s\n' \
  "$NET" "$DIR/host/.ssh/id_ed25519" >"$DIR/host/.ssh/config"
echo "$NET.13 $hostkey" >"$DIR/host/.ssh/known_hosts"
echo "made $DIR"
