#!/usr/bin/env bash
# vxdp demo: three hosts (network namespaces) on one shared underlay (a bridge), vxdp on each
# with the embedded lease store; then ping and a TCP throughput test between every pair over
# the overlay, and the same single-stream test over a kernel vxlan overlay programmed exactly as
# flanneld does, on the same namespaces, for reference. Prints what it measured.
#
#   scripts/demo.sh            (root; installs packages, builds release, cleans up on exit)
#   DEMO_SECONDS=10 scripts/demo.sh
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_TEST=${DEMO_SECONDS:-5}
HOSTS=(1 2 3)

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root (network namespaces, TAP, XDP)" >&2
  exit 1
fi

scripts/setup.sh
echo "demo: building vxdp (release)"
cargo build --release --quiet --bin vxdp
VXDP=$PWD/target/release/vxdp

P="vxdemo$$"
WORK=$(mktemp -d "/tmp/vxdp-demo.XXXXXX")
PIDS=()

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null
  done
  for h in "${HOSTS[@]}"; do ip netns del "$P-h$h" 2>/dev/null; done
  ip netns del "$P-ul" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "demo: interrupted"; exit 130' INT TERM

ns() { local n=$1; shift; ip netns exec "$P-$n" "$@"; }

echo "demo: creating hosts ${HOSTS[*]} on underlay 192.0.2.0/24 (namespaces $P-*)"
ip netns add "$P-ul"
ip -n "$P-ul" link add br0 type bridge
ip -n "$P-ul" link set br0 up
for h in "${HOSTS[@]}"; do
  ip netns add "$P-h$h"
  ip -n "$P-h$h" link set lo up
  ip link add eth0 netns "$P-h$h" type veth peer name "h$h" netns "$P-ul"
  ip -n "$P-ul" link set "h$h" master br0 up
  ip -n "$P-h$h" addr add "192.0.2.$h/24" dev eth0
  ip -n "$P-h$h" link set eth0 up
done

STORE="$WORK/store"
mkdir -p "$STORE"
echo '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' > "$STORE/config"

echo "demo: starting vxdp on each host"
for h in "${HOSTS[@]}"; do
  # `ip netns exec` execs the command: $! is vxdp's own PID, the one to signal later.
  # Three nodes share this machine's CPUs: leave worker placement to the scheduler instead
  # of pinning every node's worker 0 to the same CPU (a real node pins: --worker-cpus auto).
  ip netns exec "$P-h$h" "$VXDP" run --local-store "$STORE" --iface eth0 \
    --subnet-file "$WORK/h$h.env" --control-socket "$WORK/h$h.sock" --worker-cpus none \
    > "$WORK/h$h.log" 2>&1 &
  PIDS+=($!)
done

overlay_ip() { # the VTEP address of host $1: its lease base address
  local subnet
  subnet=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/h$1.env" | cut -d/ -f1)
  echo "${subnet%.*}.0"
}

peers_of() { "$VXDP" status --json --control-socket "$WORK/h$1.sock" 2>/dev/null | grep -c '"subnet"' || true; }

for h in "${HOSTS[@]}"; do
  for _ in $(seq 1 100); do
    [ -s "$WORK/h$h.env" ] && [ -S "$WORK/h$h.sock" ] && break
    sleep 0.1
  done
  if [ ! -s "$WORK/h$h.env" ]; then
    echo "demo: vxdp on h$h did not become ready:" >&2
    cat "$WORK/h$h.log" >&2
    exit 1
  fi
done
# Each status lists its own lease plus two peers: three "subnet" fields.
for h in "${HOSTS[@]}"; do
  for _ in $(seq 1 50); do
    [ "$(peers_of "$h")" -ge 3 ] && break
    sleep 0.1
  done
done
for h in "${HOSTS[@]}"; do
  echo "  h$h: $(grep -m1 'backend xdp' "$WORK/h$h.log" | sed 's/.*backend xdp/backend xdp/')"
  echo "      lease $(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/h$h.env"), VTEP $(overlay_ip "$h")"
done

rtt() { # avg RTT in microseconds from host $1 to address $2 (empty if nothing came back)
  ns "h$1" ping -q -c 50 -i 0.01 -W 1 "$2" | awk -F'/' '/^rtt/ {printf "%.0f", $5 * 1000}' || true
}

tcp_gbps() { # single-stream TCP Gbit/s from host $1 to address $2 (server on host $3, port $4)
  local server PORT=$4 # a fresh port per test: a previous server may still be closing
  ip netns exec "$P-h$3" iperf3 -s -1 -B "$2" -p "$PORT" > "$WORK/iperf-s-$PORT.log" 2>&1 &
  server=$!
  for _ in $(seq 1 50); do
    ns "h$3" ss -ltn 2>/dev/null | grep -q ":$PORT " && break
    sleep 0.1
  done
  ns "h$1" iperf3 -c "$2" -p "$PORT" -t "$SECONDS_PER_TEST" -f g > "$WORK/iperf-c-$PORT.log" 2>&1 || \
    { echo "demo: iperf3 $1 -> $2 failed:" >&2; cat "$WORK/iperf-c-$PORT.log" >&2; }
  awk '/receiver/ {print $(NF-2)}' "$WORK/iperf-c-$PORT.log"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

echo "demo: measuring (${SECONDS_PER_TEST}s TCP per pair)"
RESULTS=()
port=5200
for pair in "1 2" "1 3" "2 3"; do
  read -r a b <<< "$pair"
  dst=$(overlay_ip "$b")
  port=$((port + 1))
  r=$(rtt "$a" "$dst")
  g=$(tcp_gbps "$a" "$dst" "$b" "$port")
  RESULTS+=("h$a -> h$b|${r:-fail}|${g:-0}")
done

status_h1=$("$VXDP" status --control-socket "$WORK/h1.sock" 2>&1 || true)
# The backend auto chose (udp where AF_XDP would only copy, as on veth), for the table.
backend=$("$VXDP" status --json --control-socket "$WORK/h1.sock" 2>/dev/null | jq -r '.backend // "?"' || echo "?")

echo "demo: stopping vxdp, programming a kernel vxlan overlay as flanneld does on the same hosts"
for pid in "${PIDS[@]}"; do kill "$pid"; done
for pid in "${PIDS[@]}"; do wait "$pid" || true; done
PIDS=()
for h in "${HOSTS[@]}"; do
  ip -n "$P-h$h" link add flannel.1 type vxlan id 1 local "192.0.2.$h" dev eth0 dstport 8472 nolearning
  ip -n "$P-h$h" link set flannel.1 address "02:00:00:00:00:0$h" mtu 1450 up
  ip -n "$P-h$h" addr add "10.245.$h.0/32" dev flannel.1
done
for h in "${HOSTS[@]}"; do
  for o in "${HOSTS[@]}"; do
    [ "$h" = "$o" ] && continue
    ip -n "$P-h$h" neigh replace "10.245.$o.0" lladdr "02:00:00:00:00:0$o" dev flannel.1 nud permanent
    ns "h$h" bridge fdb append "02:00:00:00:00:0$o" dev flannel.1 dst "192.0.2.$o" self permanent
    ip -n "$P-h$h" route replace "10.245.$o.0/24" via "10.245.$o.0" dev flannel.1 onlink
  done
done
kr=$(rtt 1 10.245.2.0)
kg=$(tcp_gbps 1 10.245.2.0 2 5300)

echo
echo "| pair | overlay | RTT avg (us) | TCP 1 stream (Gbit/s) |"
echo "|------|---------|--------------|-----------------------|"
for row in "${RESULTS[@]}"; do
  IFS='|' read -r pair r g <<< "$row"
  echo "| $pair | vxdp ($backend backend) | $r | $g |"
done
echo "| h1 -> h2 | kernel vxlan (flanneld-style) | ${kr:-fail} | ${kg:-0} |"
echo
echo "\`vxdp status\` on h1 after the vxdp runs:"
echo "$status_h1"

fail=0
for row in "${RESULTS[@]}"; do
  IFS='|' read -r pair r g <<< "$row"
  if [ "$r" = "fail" ] || awk -v g="$g" 'BEGIN { exit !(g + 0 <= 0) }'; then
    echo "demo: $pair did not pass traffic" >&2
    fail=1
  fi
done
exit $fail
