#!/usr/bin/env bash
# Several "hosts" on one machine for disaggregation tests: network namespaces joined by a bridge on
# a private /24 that this script creates (and only talks between its own addresses).
#
#   scripts/netns-cluster.sh up   [TAG] [NET]   # NET: the first three octets, default 10.231.7
#   scripts/netns-cluster.sh down [TAG]
#
# up creates, for TAG (default tdm; at most 10 characters):
#   TAG-hub      a namespace holding bridge br0 (the "switch")
#   TAG-prefill  a namespace with eth0 = NET.2/24   (run `tandem worker --role prefill` here)
#   TAG-decode   a namespace with eth0 = NET.3/24   (run `tandem worker --role decode` here)
#   TAG-r        a veth in the root namespace with NET.1/24 (the router and the test client)
# Nothing else changes: no forwarding, no NAT, no routes beyond the /24 of TAG-r. down deletes the
# namespaces (and with them every veth, TAG-r's peer included) and TAG-r; it never fails on what
# is already gone, so it is safe in cleanup paths. Needs root and iproute2.
set -euo pipefail

cmd=${1:?usage: netns-cluster.sh up|down [TAG] [NET]}
tag=${2:-tdm}
net=${3:-10.231.7}
if [ ${#tag} -gt 10 ]; then echo "TAG '$tag' is longer than 10 characters" >&2; exit 2; fi
hub=$tag-hub

down() {
  ip link del "$tag-r" 2>/dev/null || true
  for ns in "$tag-prefill" "$tag-decode" "$hub"; do ip netns del "$ns" 2>/dev/null || true; done
}

up() {
  ip netns add "$hub"
  ip -n "$hub" link set lo up
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  local i=2
  for role in prefill decode; do
    local ns=$tag-$role
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$hub" link add "port-$role" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "port-$role" master br0 up
    ip -n "$ns" addr add "$net.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    i=$((i + 1))
  done
  ip link add "$tag-r" type veth peer name port-router netns "$hub"
  ip -n "$hub" link set port-router master br0 up
  ip addr add "$net.1/24" dev "$tag-r"
  ip link set "$tag-r" up
}

case "$cmd" in
  up) trap 'down' ERR; up ;;
  down) down ;;
  *) echo "usage: netns-cluster.sh up|down [TAG] [NET]" >&2; exit 2 ;;
esac
