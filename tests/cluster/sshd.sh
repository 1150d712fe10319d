#!/usr/bin/env bash
# A throwaway OpenSSH server for the tests: its own host key, config, pid file
# and log in DIR; never /etc/ssh or the system's sshd.
#
#   sshd.sh start DIR AUTHORIZED_KEYS [ADDR] [PORT] [NETNS]
#       With NETNS it runs inside that network namespace, in a UTS namespace
#       of its own whose host name is NETNS (what a session's `hostname` says).
#       Prints the host's public key line on success.
#   sshd.sh stop DIR
set -euo pipefail
cmd=${1:?usage: sshd.sh start|stop DIR ...}; DIR=${2:?dir}

start() {
  local keys=${1:?authorized_keys} addr=${2:-127.0.0.1} port=${3:-22} ns=${4:-}
  [ -x /usr/sbin/sshd ] || { echo "sshd.sh: /usr/sbin/sshd missing (apt-get install openssh-server)" >&2; exit 3; }
  mkdir -p /run/sshd && chmod 0755 /run/sshd     # sshd's privilege separation directory
  mkdir -p "$DIR" && chmod 700 "$DIR"
  [ -f "$DIR/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "$ns" -f "$DIR/host_ed25519"
  cat >"$DIR/sshd_config" <<CONF
Port $port
ListenAddress $addr
HostKey $DIR/host_ed25519
PidFile $DIR/sshd.pid
AuthorizedKeysFile $keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# the keys live under /tmp, which StrictModes would reject
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
ClientAliveInterval 0
LogLevel VERBOSE
CONF
  # OpenSSH 9.8 and later refuse an address for a while after connections
  # that did not log in (PerSourcePenalties), which the tests make on purpose
  if /usr/sbin/sshd -t -f "$DIR/sshd_config" -o PerSourcePenalties=no 2>/dev/null; then
    echo "PerSourcePenalties no" >>"$DIR/sshd_config"
  fi
  /usr/sbin/sshd -t -f "$DIR/sshd_config"
  local run=()
  if [ -n "$ns" ]; then
    run=(ip netns exec "$ns")
    "${run[@]}" unshare --uts sh -c \
      "hostname '$ns' && exec /usr/sbin/sshd -f '$DIR/sshd_config' -E '$DIR/sshd.log'"
  else
    /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log"
  fi
  for _ in $(seq 1 100); do
    if "${run[@]}" bash -c "exec 3<>/dev/tcp/$addr/$port" 2>/dev/null; then
      cut -d' ' -f1,2 "$DIR/host_ed25519.pub"
      return 0
    fi
    sleep 0.05
  done
  echo "sshd.sh: sshd did not come up on $addr:$port${ns:+ in $ns}; its log:" >&2
  cat "$DIR/sshd.log" >&2
  exit 1
}

descendants() {
  local child
  for child in $(pgrep -P "$1"); do
    echo "$child"
    descendants "$child"
  done
}

stop() {
  [ -f "$DIR/sshd.pid" ] || return 0
  local pid
  pid=$(cat "$DIR/sshd.pid")
  # SIGTERM to the listener leaves open sessions running: end them first,
  # all of each: since OpenSSH 9.8 (sshd-session) the process that holds a
  # connection is a grandchild of the listener, and lives on its parent
  local doomed
  doomed=$(descendants "$pid")
  [ -z "$doomed" ] || kill -KILL $doomed 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || break
    [ "$st" = Z ] && break     # init reaps orphans late: a zombie is gone
    sleep 0.05
  done
  rm -f "$DIR/sshd.pid"
}

case $cmd in
  start) shift 2; start "$@" ;;
  stop) stop ;;
  *) echo "usage: sshd.sh start|stop DIR ..." >&2; exit 2 ;;
esac
