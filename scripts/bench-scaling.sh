#!/bin/bash
# Scaling across many cores: the UDP backend with 1, 2, 4 and 6 workers per node (pinned to
# their own CPUs, applications on others), TCP with 1/4/16 streams and the 64-byte UDP rate,
# and round trips with busy polling off and on for workers on dedicated cores; kernel vxlan
# measured in the same run for the ratios. Needs a machine with at least 16 CPUs (the 2-CPU
# development machines cannot show scaling; scripts/bench.sh is the benchmark there).
#
#   sudo scripts/bench-scaling.sh                 # uses target/release/{vxdp,vxdp-bench}
#   VXDP=... VXDP_BENCH=... OUT=dir scripts/bench-scaling.sh
#
# It needs only iproute2, ethtool, util-linux (taskset) and python3: no iperf3 (TCP streams come
# from vxdp-bench tcp), so it runs on machines without package access; copy the two binaries
# there (and libelf/libz, pointing LD_LIBRARY_PATH at them, if the machine lacks them).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
V=${VXDP:-$ROOT/target/release/vxdp}
T=${VXDP_BENCH:-$ROOT/target/release/vxdp-bench}
OUT=${OUT:-$(mktemp -d /tmp/vxdp-scaling.XXXXXX)}
[ "$(id -u)" -eq 0 ] || { echo "bench-scaling: needs root (network namespaces)" >&2; exit 1; }
[ "$(nproc)" -ge 16 ] || echo "bench-scaling: only $(nproc) CPUs: the pinning below assumes 16; figures will not show scaling" >&2
mkdir -p "$OUT"
log() { echo "$*" | tee -a "$OUT/results.txt"; }
log "== probe: $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for t in ip ethtool bridge taskset python3 iperf3; do log "  $t: $(command -v $t || echo MISSING)"; done
log "  isolated: $(cat /sys/devices/system/cpu/isolated 2>/dev/null) nohz_full: $(cat /sys/devices/system/cpu/nohz_full 2>/dev/null)"
$V --version 2>&1 | head -1 | sed 's/^/  /' | tee -a "$OUT/results.txt"
ip netns add vxscl-probe$$ 2>/dev/null && ip netns del vxscl-probe$$ && log "  netns: ok" || { log "  netns: NOT AVAILABLE"; exit 0; }

P=vxscl$$
Q=16
cleanup() { for p in $(jobs -p); do kill "$p" 2>/dev/null; done; wait 2>/dev/null; for n in ul h1 h2; do ip netns del $P-$n 2>/dev/null; done; }
trap cleanup EXIT

topo() {
  cleanup
  ip netns add $P-ul; ip -n $P-ul link add br0 type bridge; ip -n $P-ul link set br0 up
  ip netns exec $P-ul sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null
  for h in 1 2; do
    ip netns add $P-h$h; ip -n $P-h$h link set lo up
    ip link add eth0 netns $P-h$h numtxqueues $Q numrxqueues $Q type veth peer name h$h netns $P-ul numtxqueues $Q numrxqueues $Q
    ip -n $P-ul link set h$h master br0 up
    ip -n $P-h$h addr add 192.0.2.$h/24 dev eth0; ip -n $P-h$h link set eth0 up
  done
}
kvx() {
  for h in 1 2; do
    ip -n $P-h$h link add flannel.1 type vxlan id 1 local 192.0.2.$h dev eth0 dstport 8472 nolearning
    ip -n $P-h$h link set flannel.1 address 02:00:00:00:00:0$h mtu 1450 up
    ip -n $P-h$h addr add 10.244.$h.0/32 dev flannel.1
  done
  for h in 1 2; do o=$((3 - h))
    ip -n $P-h$h neigh replace 10.244.$o.0 lladdr 02:00:00:00:00:0$o dev flannel.1 nud permanent
    ip netns exec $P-h$h bridge fdb append 02:00:00:00:00:0$o dev flannel.1 dst 192.0.2.$o self permanent
    ip -n $P-h$h route replace 10.244.$o.0/24 via 10.244.$o.0 dev flannel.1 onlink
  done
  D=10.244.2.0
}
W=$(mktemp -d)
vx() { # args for both daemons; $1: h1 cpus, $2: h2 cpus, rest: extra
  local c1=$1 c2=$2; shift 2
  mkdir -p $W/store; echo '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' > $W/store/config
  rm -f $W/h1.env $W/h2.env $W/store/subnets/* 2>/dev/null
  ip netns exec $P-h1 $V run --local-store $W/store --iface eth0 --subnet-file $W/h1.env --control-socket $W/h1.sock --iptables-forward-rules=false --worker-cpus $c1 "$@" > $W/h1.log 2>&1 &
  ip netns exec $P-h2 $V run --local-store $W/store --iface eth0 --subnet-file $W/h2.env --control-socket $W/h2.sock --iptables-forward-rules=false --worker-cpus $c2 "$@" > $W/h2.log 2>&1 &
  for i in $(seq 100); do [ -s $W/h1.env ] && [ -s $W/h2.env ] && break; sleep 0.1; done
  local s2; s2=$(sed -n 's/^FLANNEL_SUBNET=//p' $W/h2.env | cut -d/ -f1); D=${s2%.*}.0
  for i in $(seq 50); do ip netns exec $P-h1 ping -c1 -W1 -q $D > /dev/null 2>&1 && break; sleep 0.1; done
}
APPS1=${APPS1:-12-13}  # where the applications run (taskset), apart from the workers
APPS2=${APPS2:-14-15}
tcp() { # streams -> Gbit/s
  local n=$1 port=$((5000 + RANDOM % 1000))
  ip netns exec $P-h2 taskset -c $APPS2 $T tcp server --bind $D:$port --streams $n > $W/tcp.json 2>/dev/null &
  local sp=$!; sleep 0.3
  ip netns exec $P-h1 taskset -c $APPS1 $T tcp client --dst $D:$port --streams $n --seconds ${TS:-4} > /dev/null 2>&1
  wait $sp; python3 -c "import json; print('%.2f' % json.load(open('$W/tcp.json'))['gbit_s'])" 2>/dev/null || echo "?"
}
pps() { # flood threads -> kpps received
  local th=$1 port=$((6000 + RANDOM % 1000))
  ip netns exec $P-h2 taskset -c $APPS2 $T sink --bind $D:$port --seconds 3 --warmup 0.5 > $W/sink.json 2>/dev/null &
  local sp=$!; sleep 0.3
  ip netns exec $P-h1 taskset -c $APPS1 $T flood --dst $D:$port --size 64 --threads $th --seconds 4 > /dev/null 2>&1
  wait $sp; python3 -c "import json; d=json.load(open('$W/sink.json')); print('%.0f (of %.0f offered)' % (d['pps']/1e3, d['offered_pps']/1e3))" 2>/dev/null || echo "?"
}
rtt() {
  local port=$((7000 + RANDOM % 1000))
  ip netns exec $P-h2 taskset -c $APPS2 $T rtt server --bind $D:$port > /dev/null 2>&1 &
  local sp=$!; sleep 0.3
  ip netns exec $P-h1 taskset -c $APPS1 $T rtt client --dst $D:$port --count 3000 --interval-us 500 > $W/rtt.json 2>/dev/null
  kill $sp 2>/dev/null
  python3 -c "import json; d=json.load(open('$W/rtt.json')); print('p50 %.0f p99 %.0f us' % (d['p50_us'], d['p99_us']))" 2>/dev/null || echo "?"
}

log "== kernel vxlan (apps on $APPS1 / $APPS2)"
topo; kvx
for n in 1 4 8 16; do log "  TCP $n streams: $(tcp $n) Gbit/s"; done
log "  64 B UDP, 4 generator threads: $(pps 4) kpps"
log "  RTT: $(rtt)"

log "== vxdp udp backend: workers scaling (h1 workers on CPUs 0..q-1, h2 on 6..)"
for q in 1 2 4 6; do
  topo
  c1=0-$((q - 1)); c2=6-$((6 + q - 1))
  vx "$c1" "$c2" --backend udp --queues $q
  sed 's/\x1b\[[0-9;]*m//g' $W/h1.log | grep -m1 -o 'backend udp.*' | cut -c1-170 | sed 's/^/  /' | tee -a "$OUT/results.txt"
  log "  q=$q TCP 1: $(tcp 1)  TCP 4: $(tcp 4)  TCP 16: $(tcp 16) Gbit/s;  64 B x4: $(pps 4) kpps"
done

log "== RTT, vxdp udp, 1 worker pinned per node, busy polling off vs on (dedicated cores 0 and 6)"
for bp in off on; do
  topo; vx 0 6 --backend udp --queues 1 --busy-poll $bp
  log "  busy-poll $bp: $(rtt)   (status: $($V status --control-socket $W/h1.sock 2>/dev/null | head -1 | grep -o 'busy polling' || true))"
done
log "== RTT, vxdp xdp (copy mode), busy polling on"
topo; vx 0 6 --backend xdp --queues 1 --busy-poll on
log "  xdp busy-poll on: $(rtt)"
cp $W/*.log "$OUT/" 2>/dev/null
rm -rf "$W"
log "== done: $OUT/results.txt"
