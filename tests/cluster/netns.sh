#!/usr/bin/env bash
# Hosts for the multi-host tests: network namespaces joined by a bridge.
# Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
#
#   netns.sh up NAME...     bridge $BR = $NET.1 in the root namespace; one namespace
#                           per NAME with eth0 = $NET.11, .12, ...; lo up; default route
#                           via the bridge; /etc/netns/NAME/hosts (bind-mounted over
#                           /etc/hosts by `ip netns exec`) so that the names resolve
#   netns.sh down NAME...   kill what runs in them, delete namespaces, links, bridge
#
# Prints "NAME ADDRESS" per host on up. NET defaults to 10.213.0 (DZQ_NET), BR to
# dzq-br0 (DZQ_BRIDGE): other clusters (benchmarks/) use their own of both.
# Interface names are at most 15 characters: keep NAMEs short.
set -euo pipefail
NET=${DZQ_NET:-10.213.0}
BR=${DZQ_BRIDGE:-dzq-br0}
cmd=${1:?usage: netns.sh up|down NAME...}; shift

down() {
  for n in "$@"; do
    # processes still inside keep the namespace's ports: end them
    pids=$(ip netns pids "$n" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      kill $pids 2>/dev/null || true; sleep 0.2
      pids=$(ip netns pids "$n" 2>/dev/null || true)
      [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    fi
    ip netns del "$n" 2>/dev/null || true     # takes its end of the veth pair along
    ip link del "$n-h" 2>/dev/null || true
    rm -rf "/etc/netns/$n"
  done
  ip link del "$BR" 2>/dev/null || true
  rmdir /etc/netns 2>/dev/null || true
}

up() {
  ip link add "$BR" type bridge
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  local hosts="127.0.0.1 localhost"$'\n'"$NET.1 dzq-client" i=11
  for n in "$@"; do hosts+=$'\n'"$NET.$i $n"; i=$((i + 1)); done
  i=11
  for n in "$@"; do
    ip netns add "$n"
    ip link add "$n-h" type veth peer name eth0 netns "$n"
    ip link set "$n-h" master "$BR" up
    ip -n "$n" addr add "$NET.$i/24" dev eth0
    ip -n "$n" link set lo up
    ip -n "$n" link set eth0 up
    ip -n "$n" route add default via "$NET.1"
    mkdir -p "/etc/netns/$n"
    printf '%s\n' "$hosts" >"/etc/netns/$n/hosts"
    echo "$n $NET.$i"
    i=$((i + 1))
  done
}

case $cmd in
  up) down "$@"; up "$@" ;;
  down) down "$@" ;;
  *) echo "usage: netns.sh up|down NAME..." >&2; exit 2 ;;
esac
