#!/usr/bin/env bash
# vxdp against the kernel vxlan path, side by side, on the same two-host topology.
#
#   scripts/bench.sh                   system benchmark: 5 rounds, both scenarios, ~20 min (root)
#   scripts/bench.sh --quick           1 round, short tests, both scenarios, ~2-3 min (development)
#   scripts/bench.sh --scenario pod    pod to pod only (host, pod, both, host6)
#   scripts/bench.sh --offloads off    the untuned host: veth (and vxlan link) offloads off
#   scripts/bench.sh --offloads flannel-workaround
#                                      defaults, but tx-checksum-ip-generic off on the vxlan links
#   scripts/bench.sh --micro [ARGS]    the criterion micro-benchmarks (the packet crate's, then the peer tables')
#   BENCH_KEEP_RAW=1 scripts/bench.sh  also keep the raw outputs (iperf3 JSON, ...) under /tmp
#
# Contenders, each on a fresh pair of hosts (network namespaces h1, h2 with veth eth0,
# 192.0.2.1/2 on a bridge in an underlay namespace, as in scripts/demo.sh):
#   underlay      no overlay: host to host h1 -> 192.0.2.2 directly, the ceiling of this machine;
#                 pod to pod through routes via the peer's underlay address (flannel host-gw)
#   kernel-vxlan  flannel.1 programmed as flanneld does (the same commands as scripts/demo.sh)
#   vxdp-xdp      vxdp run --local-store ... --backend xdp
#   vxdp-kernel   vxdp run --local-store ... --backend kernel  } n/a, with vxdp's reason, where
#   vxdp-udp      vxdp run --local-store ... --backend udp     } this build refuses the backend
# Scenarios, each contender in each (--scenario):
#   host  traffic between the hosts' own addresses (h1 -> h2's overlay address)
#   host6 host to host over an IPv6 underlay (2001:db8::/64 beside 192.0.2.0/24): the IPv6
#         overlay of a dual-stack network (fd00:244::/48), h1 -> h2's IPv6 overlay address;
#         kernel-vxlan is flannel-v6.1 as flanneld programs it, the underlay row 2001:db8::1 ->
#         ::2. TCP only: vxdp-bench (64 B rate, RTT) speaks IPv4. Not in `both`; ask for it with
#         --scenario host6.
#   pod   what operators run: on each host a bridge cni0 and a pod namespace (p1, p2) wired the
#         way flannel's CNI plugin does it (it delegates to the bridge plugin with host-local
#         IPAM from subnet.env; kube-flannel.yml adds hairpinMode and isDefaultGateway): cni0
#         holds the first address of FLANNEL_SUBNET, the pod's veth eth0 the next one, MTU =
#         FLANNEL_MTU on cni0 and both veth ends, pod routes to FLANNEL_NETWORK and default via
#         cni0's address, net.ipv4.ip_forward=1 on the host; traffic runs pod to pod.
# Offloads (--offloads): `on` keeps the kernel's defaults; `off` turns tso gso gro tx rx off on
# eth0, the underlay veth peers and the vxlan links; `flannel-workaround` keeps the defaults but
# runs `ethtool -K flannel.1 tx-checksum-ip-generic off` (flannel's troubleshooting guide, for
# corrupted VXLAN checksums behind NAT; many clusters run it) on the kernel contender's flannel.1
# and on vxdp's kernel-backend vxlan link.
# Rounds alternate the order of the (scenario, contender) blocks (ABCD, DCBA, ...) so drift on
# the host cancels out. Per block: TCP 1 and 4 streams (iperf3), 64-byte UDP forwarding rate at
# the receiver (vxdp-bench flood/sink, sendmmsg/recvmmsg; the sink also counts what was offered,
# so a path that kept up with the generator is marked >= and its "64 B bound" column says
# "generator"), RTT p50/p99 (vxdp-bench rtt, UDP ping-pong), CPU seconds per GB during the
# single-stream TCP test (machine-wide, and without other processes' CPU time) and vxdp's system
# calls per 1000 frames. Once per run: the generator over the raw underlay, first, and the CPU an
# idle vxdp node uses. Progress goes to stderr, one markdown table per scenario to stdout,
# everything measured to target/bench/bench-<timestamp>.json.
#
# The 64-byte generator runs 2 sending threads by default (one socket, so one flow, each),
# chosen with `--quick --flood-sweep 1,2,3,4` on a 2-CPU host (2026-12-04, other processes at
# most 0.13 CPUs), host to host, kpps received:
#   threads  raw underlay (sender cores)  kernel-vxlan  vxdp-kernel  vxdp-xdp (delivered)
#   1        197 (0.99)                   139           114          149 (36%)
#   2        358 (1.59)                   233           205          120 (21%)
#   3        377 (1.62)                   227           234           84 (14%)
#   4        401 (1.68)                   246           237           82 (12%)
# One thread is the bound of every kernel path: their encapsulation, forwarding and
# decapsulation run in the sending thread's softirq, so they can use no more than its one core
# (pod to pod the same: kernel-vxlan 98 kpps with 1 thread, 160 with 2). With 2, both CPUs are
# busy and the generator alone is 1.5x faster than the fastest overlay path, so every overlay row
# is bound by its path. More threads add 5-15% to the kernel paths (one round: near the noise)
# while taking CPU from vxdp's AF_XDP workers (an open-loop path that drops what it cannot take:
# 120 -> 84 -> 82 kpps).
# On a host with more CPUs, rerun the sweep before trusting the default.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

usage() {
  # The header comment is the manual.
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  cat <<EOF

Options:
  --rounds N           measurement rounds (default 5, --quick 1)
  --quick              1 round, short tests
  --scenario S         host, pod, both (default) or host6: host to host, pod to pod through
                       cni0, or host to host over an IPv6 underlay (TCP only)
  --offloads MODE      on (default: the kernel's defaults), off (ethtool -K ... tso gso gro tx
                       rx off on eth0, the underlay veth peers and the vxlan links), or
                       flannel-workaround (defaults, but tx-checksum-ip-generic off on flannel.1
                       and on vxdp's kernel-backend vxlan link)
  --contenders LIST    comma-separated subset, in this order (default all five:
                       ${ALL_CONTENDERS[*]})
  --flood-threads N    sending threads of the small-packet generator (default
                       $FLOOD_THREADS_DEFAULT; see the header)
  --flood-sweep LIST   only the 64-byte test, once per generator thread count in LIST (e.g.
                       1,2,3,4), over the raw underlay and in every block: how the default
                       --flood-threads was chosen (no TCP, RTT or idle tests)
  --settle S           before each block, wait up to S seconds for other processes on the host
                       to go quiet (default 15, --quick 5; at most 180 s, --quick 20 s, in all)
  --nice N             run every benchmark process (vxdp, iperf3, vxdp-bench) at niceness N,
                       e.g. -10 on a host shared with other work (softirq work that the
                       kernel defers to ksoftirqd keeps niceness 0); default 0
  --micro [ARGS]       run the criterion micro-benchmarks instead, passing ARGS on
EOF
}

ALL_CONTENDERS=(underlay kernel-vxlan vxdp-xdp vxdp-kernel vxdp-udp)
# As many threads as the CPUs of the host it was measured on; see the header.
FLOOD_THREADS_DEFAULT=2
ROUNDS=
QUICK=0
SCENARIO=both
OFFLOADS=on
CONTENDERS=("${ALL_CONTENDERS[@]}")
FLOOD_THREADS=$FLOOD_THREADS_DEFAULT
FLOOD_SWEEP=()
SETTLE_MAX=
NICE=0
while [ $# -gt 0 ]; do
  case $1 in
    --micro)
      shift
      scripts/setup.sh
      cargo bench -p vxdp-packet --bench packet -- "$@"
      exec cargo bench --bench tables -- "$@"
      ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --scenario) SCENARIO=${2:?--scenario needs host, pod, both or host6}; shift 2 ;;
    --offloads) OFFLOADS=${2:?--offloads needs on, off or flannel-workaround}; shift 2 ;;
    --contenders) IFS=, read -r -a CONTENDERS <<< "${2:?--contenders needs a list}"; shift 2 ;;
    --flood-threads) FLOOD_THREADS=${2:?--flood-threads needs a number}; shift 2 ;;
    --flood-sweep) IFS=, read -r -a FLOOD_SWEEP <<< "${2:?--flood-sweep needs a list}"; shift 2 ;;
    --settle) SETTLE_MAX=${2:?--settle needs seconds}; shift 2 ;;
    --nice) NICE=${2:?--nice needs a niceness}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $OFFLOADS in on | off | flannel-workaround) ;;
  *) echo "bench: --offloads takes on, off or flannel-workaround" >&2; exit 2 ;;
esac
case $SCENARIO in
  host | pod | host6) SCENARIOS=("$SCENARIO") ;;
  both) SCENARIOS=(host pod) ;;
  *) echo "bench: --scenario takes host, pod, both or host6" >&2; exit 2 ;;
esac
for c in "${CONTENDERS[@]}"; do
  case " ${ALL_CONTENDERS[*]} " in *" $c "*) ;;
    *) echo "bench: unknown contender $c (known: ${ALL_CONTENDERS[*]})" >&2; exit 2 ;;
  esac
done
for n in "$FLOOD_THREADS" "${FLOOD_SWEEP[@]}"; do
  if ! [[ $n =~ ^[1-9][0-9]*$ ]] || [ "$n" -gt 64 ]; then
    echo "bench: --flood-threads and --flood-sweep take 1..64" >&2
    exit 2
  fi
done
if [ -n "$ROUNDS" ] && ! [[ $ROUNDS =~ ^[1-9][0-9]*$ ]]; then echo "bench: --rounds takes a positive number" >&2; exit 2; fi
if ! [[ $NICE =~ ^-?[0-9]+$ ]]; then echo "bench: --nice takes a number" >&2; exit 2; fi
# `nice` execs its command: $! stays the benchmark process's own PID.
NICE_CMD=()
[ "$NICE" != 0 ] && NICE_CMD=(nice -n "$NICE")

if [ "$QUICK" = 1 ]; then
  ROUNDS=${ROUNDS:-1} TCP_S=2 PPS_WARMUP=0.5 PPS_S=2 RTT_COUNT=500 IDLE_S=5 SETTLE_MAX=${SETTLE_MAX:-5}
  SETTLE_BUDGET=20
else
  ROUNDS=${ROUNDS:-5} TCP_S=5 PPS_WARMUP=1 PPS_S=5 RTT_COUNT=2000 IDLE_S=20 SETTLE_MAX=${SETTLE_MAX:-15}
  SETTLE_BUDGET=180
fi
RTT_INTERVAL_US=1000
PPS_SIZE=64

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: needs root (network namespaces, TAP, XDP)" >&2
  exit 1
fi

START_EPOCH=$(date +%s)
log() { printf '[%s] %s\n' "$(date -u -d "@$(($(date +%s) - START_EPOCH))" +%M:%S)" "$*" >&2; }

scripts/setup.sh >&2
log "building release (vxdp, vxdp-bench)"
cargo build --release --quiet --bin vxdp --bin vxdp-bench
VXDP=$ROOT/target/release/vxdp
TOOL=$ROOT/target/release/vxdp-bench
REPORT=$ROOT/scripts/bench_report.py

# The benchmark runs in a child (main &) while this shell only waits: Ctrl-C interrupts the
# `wait` builtin at once and the trap below stops the child, whose EXIT trap kills what it
# started and deletes its namespaces. (A shell that waits for a foreground child which handles
# SIGINT itself, like iperf3 or vxdp, or exits just as it arrives, ignores the Ctrl-C.)
main() {
  P="vxbench$$"
  WORK=$(mktemp -d "/tmp/vxdp-bench.XXXXXX")
  RAW=$WORK/raw
  mkdir -p "$RAW"
  PIDS=()

  cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    PIDS=()
    for n in $(ip netns list | awk -v p="$P-" 'index($1, p) == 1 {print $1}'); do
      ip netns del "$n"
    done
    if [ -n "${BENCH_KEEP_RAW:-}" ]; then
      log "raw outputs kept in $WORK (BENCH_KEEP_RAW)"
    else
      rm -rf "$WORK"
    fi
  }
  trap cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM

  forget_pid() { # drop $1 from PIDS
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
  }

  stop_pid() { # SIGTERM $1, SIGKILL after 5 s, reap it
    local pid=$1 i
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
  }

  # Runs a command to completion like a foreground one, but as a child the `wait` builtin waits
  # for: a trapped SIGINT interrupts `wait` at once, while a foreground child that handles SIGINT
  # itself (iperf3, vxdp) would make bash ignore Ctrl-C.
  run_fg() {
    local pid rc=0
    "$@" &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return $rc
  }

  reap_pid() { # wait for $1 to exit by itself (up to $2 seconds), then stop it
    local pid=$1 i
    for i in $(seq 1 $(($2 * 10))); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$pid"
  }

  cpustat() { "$TOOL" cpustat --ours $$; }

  # Waits until processes outside this benchmark use less than a third of a CPU, at most
  # SETTLE_MAX seconds each time and SETTLE_BUDGET seconds in all (the run time stays bounded):
  # a shared host's other work lands in every figure otherwise. Prints the CPUs they used.
  SETTLE_SPENT=0
  settle() {
    local start=$SECONDS waited=0 announced=0 a b busy
    while :; do
      a=$(cpustat); sleep 1; b=$(cpustat)
      busy=$(python3 "$REPORT" foreign-cpus "$a" "$b")
      waited=$((SECONDS - start))
      if awk -v b="$busy" 'BEGIN { exit !(b < 0.33) }' || [ "$waited" -ge "$SETTLE_MAX" ] ||
        [ $((SETTLE_SPENT + waited)) -ge "$SETTLE_BUDGET" ]; then
        SETTLE_SPENT=$((SETTLE_SPENT + waited))
        [ "$announced" = 1 ] && log "  host: other processes now use $busy CPUs (waited ${waited}s)"
        echo "$busy"
        return
      fi
      if [ "$announced" = 0 ]; then
        log "  host busy: other processes use $busy CPUs; waiting up to ${SETTLE_MAX}s" \
          "($((SETTLE_BUDGET - SETTLE_SPENT))s of waiting left in this run)"
        announced=1
      fi
    done
  }



  # ---- topology ------------------------------------------------------------------------------
  TOPO_N=0
  T=          # namespace prefix of the current topology: $T-ul, $T-h1, $T-h2 (+ $T-p1, $T-p2)
  SRC_NS=     # where the traffic starts: $T-h1, or pod to pod $T-p1
  DST_NS=     # where it ends: $T-h2 or $T-p2
  DST=        # the address SRC_NS sends to: h2's underlay or overlay address, or p2's address
  VX_PIDS=()  # vxdp daemons of the current topology
  FAIL_REASON=
  # Per host, what flanneld (or vxdp) wrote into subnet.env: FLANNEL_SUBNET (the lease's first
  # address with its prefix length) and FLANNEL_MTU; the pod scenario's CNI setup reads them.
  declare -A HOST_SUBNET=() HOST_MTU=()
  FLANNEL_NETWORK=10.244.0.0/16
  # The network config vxdp gets: IPv4 only, or dual stack for host6 (set by contender_up).
  CONFIG_V4='{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
  CONFIG_DUAL='{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:244::/48","Backend":{"Type":"vxlan"}}'
  VX_CONFIG=$CONFIG_V4

  offloads_off() { # namespace, device
    ip netns exec "$1" ethtool -K "$2" tso off gso off gro off tx off rx off > /dev/null 2>&1 ||
      log "  warning: ethtool -K $2 (in $1) failed"
  }

  # What --offloads asks of a vxlan link ($1 namespace, $2 device): `off` as for every device;
  # `flannel-workaround` the one command flannel's troubleshooting guide gives for corrupted
  # VXLAN checksums (Documentation/troubleshooting.md, "NAT"): the kernel then checksums every
  # inner packet in software and, without checksum offload, cannot keep TSO/GSO on the link.
  # The link's features afterwards go to $OUT, to show what the contender ran with.
  vxlan_offloads() {
    case $OFFLOADS in
      off) offloads_off "$1" "$2" ;;
      flannel-workaround)
        ip netns exec "$1" ethtool -K "$2" tx-checksum-ip-generic off > /dev/null 2>&1 ||
          log "  warning: ethtool -K $2 tx-checksum-ip-generic off (in $1) failed"
        ;;
    esac
    ip netns exec "$1" ethtool -k "$2" > "$OUT/ethtool-${1##*-}-$2.txt" 2>&1 || true
  }

  topo_up() { # [scenario]: host6 adds the IPv6 underlay
    TOPO_N=$((TOPO_N + 1))
    T="$P-$TOPO_N"
    VX_PIDS=()
    ip netns add "$T-ul"
    ip -n "$T-ul" link add br0 type bridge
    ip -n "$T-ul" link set br0 up
    # A real underlay is a switch, not netfilter: keep bridged frames out of iptables where
    # br_netfilter is loaded (the same for every contender).
    ip netns exec "$T-ul" sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
      net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
    for h in 1 2; do
      ip netns add "$T-h$h"
      ip -n "$T-h$h" link set lo up
      ip link add eth0 netns "$T-h$h" type veth peer name "h$h" netns "$T-ul"
      ip -n "$T-ul" link set "h$h" master br0 up
      ip -n "$T-h$h" addr add "192.0.2.$h/24" dev eth0
      # nodad: no duplicate address detection delay before the address is usable.
      [ "${1:-}" = host6 ] && ip -n "$T-h$h" addr add "2001:db8::$h/64" dev eth0 nodad
      ip -n "$T-h$h" link set eth0 up
      if [ "$OFFLOADS" = off ]; then
        offloads_off "$T-h$h" eth0
        offloads_off "$T-ul" "h$h"
      fi
    done
  }

  topo_down() {
    local pid h
    for pid in "${VX_PIDS[@]}"; do stop_pid "$pid"; done
    VX_PIDS=()
    for h in p1 p2 ul h1 h2; do ip netns del "$T-$h" 2>/dev/null || true; done
  }

  # The pod scenario's no-overlay ceiling: flannel's host-gw backend, a route to the peer's pod
  # subnet via the peer's underlay address, MTU of the underlay.
  underlay_up() {
    local h o
    DST=192.0.2.2
    for h in 1 2; do
      HOST_SUBNET[$h]=10.244.$h.1/24
      HOST_MTU[$h]=1500
      o=$((3 - h))
      ip -n "$T-h$h" route replace "10.244.$o.0/24" via "192.0.2.$o" dev eth0
    done
  }

  # flannel.1 exactly as scripts/demo.sh programs it (flanneld's vxlan backend).
  kernel_vxlan_up() {
    local h o
    for h in 1 2; do
      ip -n "$T-h$h" link add flannel.1 type vxlan id 1 local "192.0.2.$h" dev eth0 dstport 8472 nolearning
      ip -n "$T-h$h" link set flannel.1 address "02:00:00:00:00:0$h" mtu 1450 up
      ip -n "$T-h$h" addr add "10.244.$h.0/32" dev flannel.1
      vxlan_offloads "$T-h$h" flannel.1
      # flanneld would write this subnet.env (its lease 10.244.$h.0/24, VXLAN's 50 bytes off
      # the underlay's 1500).
      HOST_SUBNET[$h]=10.244.$h.1/24
      HOST_MTU[$h]=1450
    done
    for h in 1 2; do
      o=$((3 - h))
      ip -n "$T-h$h" neigh replace "10.244.$o.0" lladdr "02:00:00:00:00:0$o" dev flannel.1 nud permanent
      ip netns exec "$T-h$h" bridge fdb append "02:00:00:00:00:0$o" dev flannel.1 dst "192.0.2.$o" self permanent
      ip -n "$T-h$h" route replace "10.244.$o.0/24" via "10.244.$o.0" dev flannel.1 onlink
    done
    DST=10.244.2.0
  }

  # The IPv6 overlay as flanneld programs flannel-v6.1 (dual stack), over the IPv6 underlay.
  # MTU 1430: the kernel refuses flanneld's 1450 on an IPv6 vxlan link over a 1500-byte
  # device (it keeps 70 bytes of headroom; flannel issue #1781).
  kernel_vxlan6_up() {
    local h o
    for h in 1 2; do
      ip -n "$T-h$h" link add flannel-v6.1 type vxlan id 1 local "2001:db8::$h" dev eth0 dstport 8472 nolearning
      ip -n "$T-h$h" link set flannel-v6.1 address "02:00:00:00:06:0$h" mtu 1430 up
      ip -n "$T-h$h" addr add "fd00:244:0:$h::/128" dev flannel-v6.1 nodad
      vxlan_offloads "$T-h$h" flannel-v6.1
      HOST_MTU[$h]=1430
    done
    for h in 1 2; do
      o=$((3 - h))
      ip -n "$T-h$h" neigh replace "fd00:244:0:$o::" lladdr "02:00:00:00:06:0$o" dev flannel-v6.1 nud permanent
      ip netns exec "$T-h$h" bridge fdb append "02:00:00:00:06:0$o" dev flannel-v6.1 dst "2001:db8::$o" self permanent
      ip -n "$T-h$h" route replace "fd00:244:0:$o::/64" via "fd00:244:0:$o::" dev flannel-v6.1 onlink
    done
    DST=fd00:244:0:2::
  }

  # Why a vxdp that exited did so, from its log $1: clap's `error:` line (an unknown --backend
  # value, with the values this build takes), else the last line (anyhow's error chain ends there).
  failure_reason() {
    local why
    why=$(grep -m1 '^error:' "$1" || true)
    if [ -n "$why" ]; then
      why="$why $(grep -m1 -o '\[possible values:[^]]*\]' "$1" || true)"
    else
      why=$(grep -v '^\s*$' "$1" | tail -1)
    fi
    echo "${why% }"
  }

  # vxdp on both hosts with a shared local store; $1 = a --backend value (xdp, kernel, udp): the
  # same command line for every backend. Returns 1 with FAIL_REASON set when a daemon exits or
  # does not come up.
  vxdp_up() {
    local backend=$1 h i store=$WORK/store-$TOPO_N
    mkdir -p "$store"
    echo "$VX_CONFIG" > "$store/config"
    for h in 1 2; do
      # `ip netns exec` execs: $! is vxdp's own PID. Two nodes share this machine's CPUs:
      # leave worker placement to the scheduler (pinning both nodes' worker 0 to CPU 0 would
      # measure the pinning). No FORWARD rules: no contender has netfilter rules.
      ip netns exec "$T-h$h" "${NICE_CMD[@]}" "$VXDP" run --backend "$backend" --local-store "$store" --iface eth0 \
        --subnet-file "$WORK/$T-h$h.env" --control-socket "$WORK/$T-h$h.sock" \
        --worker-cpus none --iptables-forward-rules=false > "$WORK/$T-h$h.log" 2>&1 &
      VX_PIDS+=($!)
      PIDS+=($!)
    done
    for i in $(seq 1 100); do
      for h in 1 2; do
        if ! kill -0 "${VX_PIDS[$((h - 1))]}" 2>/dev/null; then
          FAIL_REASON=$(failure_reason "$WORK/$T-h$h.log")
          return 1
        fi
      done
      [ -s "$WORK/$T-h1.env" ] && [ -s "$WORK/$T-h2.env" ] && break
      sleep 0.1
    done
    if ! [ -s "$WORK/$T-h1.env" ] || ! [ -s "$WORK/$T-h2.env" ]; then
      FAIL_REASON="vxdp wrote no subnet file within 10 s: $(tail -1 "$WORK/$T-h1.log")"
      return 1
    fi
    local subnet dev
    for h in 1 2; do
      HOST_SUBNET[$h]=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/$T-h$h.env")
      HOST_MTU[$h]=$(sed -n 's/^FLANNEL_MTU=//p' "$WORK/$T-h$h.env")
    done
    subnet=${HOST_SUBNET[2]%/*}
    DST="${subnet%.*}.0"
    if [ "$VX_CONFIG" = "$CONFIG_DUAL" ]; then
      # h2's IPv6 lease base (on its IPv6 link as a /128), from FLANNEL_IPV6_SUBNET.
      DST=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_interface(sys.argv[1]).network.network_address)' \
        "$(sed -n 's/^FLANNEL_IPV6_SUBNET=//p' "$WORK/$T-h2.env")")
    fi
    # A vxlan link of vxdp's (the kernel backend's; the AF_XDP and UDP backends have none) gets
    # what --offloads gives flannel.1.
    for h in 1 2; do
      for dev in $(ip -n "$T-h$h" -o link show type vxlan | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
        vxlan_offloads "$T-h$h" "$dev"
      done
    done
  }

  # A pod on each host, wired as flannel's CNI plugin has the bridge plugin do it from
  # subnet.env (bridge, host-local IPAM, kube-flannel.yml's hairpinMode and isDefaultGateway):
  # cni0 with the subnet's first address, a veth into the pod with the next one, MTU
  # FLANNEL_MTU on cni0 and both veth ends, pod routes to the flannel network and default via
  # cni0, forwarding on in the host. Pod to pod then crosses cni0, the host's routing and the
  # overlay on both sides. Sets SRC_NS, DST_NS and DST.
  pods_up() {
    local h gw pod plen mtu
    for h in 1 2; do
      read -r gw pod plen < <(python3 "$REPORT" pod-addrs "${HOST_SUBNET[$h]}")
      mtu=${HOST_MTU[$h]}
      ip netns exec "$T-h$h" sysctl -qw net.ipv4.ip_forward=1
      ip -n "$T-h$h" link add cni0 mtu "$mtu" type bridge
      ip -n "$T-h$h" addr add "$gw/$plen" dev cni0
      ip -n "$T-h$h" link set cni0 up
      ip netns add "$T-p$h"
      ip -n "$T-p$h" link set lo up
      ip link add eth0 mtu "$mtu" netns "$T-p$h" type veth peer name "veth$h" mtu "$mtu" netns "$T-h$h"
      ip -n "$T-h$h" link set "veth$h" master cni0 up
      ip -n "$T-h$h" link set "veth$h" type bridge_slave hairpin on
      ip -n "$T-p$h" addr add "$pod/$plen" dev eth0
      ip -n "$T-p$h" link set eth0 up
      ip -n "$T-p$h" route add "$FLANNEL_NETWORK" via "$gw" dev eth0
      ip -n "$T-p$h" route add default via "$gw" dev eth0
      [ "$h" = 2 ] && DST=$pod
    done
    SRC_NS=$T-p1
    DST_NS=$T-p2
  }

  # Sets up contender $2 in scenario $1 (host|pod) on a fresh topology; returns 1 with
  # FAIL_REASON on failure.
  contender_up() {
    FAIL_REASON=
    topo_up "$1"
    SRC_NS=$T-h1
    DST_NS=$T-h2
    VX_CONFIG=$CONFIG_V4
    [ "$1" = host6 ] && VX_CONFIG=$CONFIG_DUAL
    case $1/$2 in
      host6/underlay) DST=2001:db8::2 ;;
      host6/kernel-vxlan) kernel_vxlan6_up ;;
      */underlay) underlay_up ;;
      */kernel-vxlan) kernel_vxlan_up ;;
      */vxdp-*) vxdp_up "${2#vxdp-}" || return 1 ;;
    esac
    [ "$1" = pod ] && pods_up
    local i
    for i in $(seq 1 50); do
      ip netns exec "$SRC_NS" ping -c 1 -W 1 -q "$DST" > /dev/null 2>&1 && return 0
      sleep 0.2
    done
    FAIL_REASON="${SRC_NS#"$T-"} cannot ping $DST"
    return 1
  }

  wait_port() { # namespace, tcp|udp, port: wait until something listens there
    local flag=-Hltn i
    [ "$2" = udp ] && flag=-Hlun
    for i in $(seq 1 50); do
      ip netns exec "$1" ss $flag "sport = :$3" 2>/dev/null | grep -q . && return 0
      sleep 0.1
    done
    return 1
  }

  # ---- measurements (each writes raw files under $OUT) ----------------------------------------
  PORT=5200
  next_port() { PORT=$((PORT + 1)); }

  # The system calls h1's vxdp makes during the single-stream test (all its threads, counted by
  # the raw_syscalls tracepoint, which does not slow the traced process the way strace does),
  # and its frame counters around it: syscalls per 1000 frames shows the hot path's batching.
  syscalls_start() {
    SYSCALL_PERF=
    [ ${#VX_PIDS[@]} -gt 0 ] || return 0
    "$VXDP" status --json --control-socket "$WORK/$T-h1.sock" > "$OUT/tcp1-status0.json" 2>/dev/null || true
    perf stat -e raw_syscalls:sys_enter -x, -p "${VX_PIDS[0]}" -o "$OUT/tcp1-syscalls.txt" 2> "$OUT/tcp1-syscalls.err" &
    SYSCALL_PERF=$!
    PIDS+=("$SYSCALL_PERF")
    sleep 0.2 # perf attaches to every thread before the test starts
  }
  syscalls_stop() {
    [ -n "$SYSCALL_PERF" ] || return 0
    kill -INT "$SYSCALL_PERF" 2>/dev/null || true
    wait "$SYSCALL_PERF" 2>/dev/null || true
    forget_pid "$SYSCALL_PERF"
    "$VXDP" status --json --control-socket "$WORK/$T-h1.sock" > "$OUT/tcp1-status1.json" 2>/dev/null || true
  }

  tcp_test() { # name, parallel streams
    local name=$1 streams=$2 server
    next_port
    ip netns exec "$DST_NS" "${NICE_CMD[@]}" iperf3 -s -1 -B "$DST" -p "$PORT" > "$OUT/$name-server.log" 2>&1 &
    server=$!
    PIDS+=("$server")
    wait_port "$DST_NS" tcp "$PORT" || true
    [ "$name" = tcp1 ] && syscalls_start
    cpustat > "$OUT/$name-cpu0.json"
    run_fg ip netns exec "$SRC_NS" "${NICE_CMD[@]}" timeout $((TCP_S + 30)) iperf3 -c "$DST" -p "$PORT" -t "$TCP_S" \
      -P "$streams" -J > "$OUT/$name.json" 2> "$OUT/$name.err" || true
    cpustat > "$OUT/$name-cpu1.json"
    [ "$name" = tcp1 ] && syscalls_stop
    reap_pid "$server" 5
  }

  snap_links() { # device and qdisc counters of the hosts (and pods), to find where datagrams were dropped
    local h
    for h in h1 h2 $([ "$SRC_NS" = "$T-p1" ] && echo p1 p2); do
      ip -n "$T-$h" -j -s link show > "$OUT/links-$h-$1.json" 2>/dev/null || true
      ip netns exec "$T-$h" tc -j -s qdisc show > "$OUT/qdisc-$h-$1.json" 2>/dev/null || true
    done
  }

  pps_test() {
    local sink
    next_port
    ip netns exec "$DST_NS" "${NICE_CMD[@]}" "$TOOL" sink --bind "$DST:$PORT" --seconds "$PPS_S" --warmup "$PPS_WARMUP" \
      > "$OUT/sink.json" 2> "$OUT/sink.err" &
    sink=$!
    PIDS+=("$sink")
    wait_port "$DST_NS" udp "$PORT" || true
    snap_links 0
    cpustat > "$OUT/pps-cpu0.json"
    run_fg ip netns exec "$SRC_NS" "${NICE_CMD[@]}" "$TOOL" flood --dst "$DST:$PORT" --size "$PPS_SIZE" \
      --threads "$FLOOD_THREADS" --seconds "$(awk -v w="$PPS_WARMUP" -v s="$PPS_S" 'BEGIN { print w + s + 1 }')" \
      > "$OUT/flood.json" 2> "$OUT/flood.err" || true
    cpustat > "$OUT/pps-cpu1.json"
    snap_links 1
    reap_pid "$sink" 5
  }

  rtt_test() {
    local server
    next_port
    ip netns exec "$DST_NS" "${NICE_CMD[@]}" "$TOOL" rtt server --bind "$DST:$PORT" > /dev/null 2> "$OUT/rtt-server.err" &
    server=$!
    PIDS+=("$server")
    wait_port "$DST_NS" udp "$PORT" || true
    cpustat > "$OUT/rtt-cpu0.json"
    run_fg ip netns exec "$SRC_NS" "${NICE_CMD[@]}" "$TOOL" rtt client --dst "$DST:$PORT" --count "$RTT_COUNT" \
      --interval-us "$RTT_INTERVAL_US" > "$OUT/rtt.json" 2> "$OUT/rtt.err" || true
    cpustat > "$OUT/rtt-cpu1.json"
    stop_pid "$server"
  }

  vxdp_status() { # save both daemons' status (modes, counters, drops) after the tests
    local h
    for h in 1 2; do
      "$VXDP" status --json --control-socket "$WORK/$T-h$h.sock" > "$OUT/status-h$h.json" 2>/dev/null || true
      grep -m1 -E 'backend|mode' "$WORK/$T-h$h.log" > "$OUT/mode-h$h.txt" 2>/dev/null || true
    done
  }

  fig() { python3 "$REPORT" figure "$@"; }

  # The --backend values this vxdp build takes, from `vxdp run -h` ("[possible values: ...]"),
  # comma-separated: recorded with the results, so a table with n/a rows says what the build had.
  vxdp_backends() {
    "$VXDP" run -h 2>/dev/null | grep -- '--backend' | grep -o 'possible values: [^]]*' |
      sed 's/possible values: //; s/ //g' || true
  }

  # ---- preflight -----------------------------------------------------------------------------
  ENV_FILE=$WORK/env.json
  python3 "$REPORT" env --offloads "$OFFLOADS" --rounds "$ROUNDS" --quick "$QUICK" \
    --scenarios "$(IFS=,; echo "${SCENARIOS[*]}")" --vxdp-backends "$(vxdp_backends)" \
    --tcp-s "$TCP_S" --pps-s "$PPS_S" --pps-warmup "$PPS_WARMUP" --pps-size "$PPS_SIZE" \
    --flood-threads "$FLOOD_THREADS" --flood-sweep "$(IFS=,; echo "${FLOOD_SWEEP[*]}")" --nice "$NICE" --rtt-count "$RTT_COUNT" --rtt-interval-us "$RTT_INTERVAL_US" \
    --idle-s "$IDLE_S" --contenders "$(IFS=,; echo "${CONTENDERS[*]}")" > "$ENV_FILE"
  log "host: $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), offloads $OFFLOADS, $ROUNDS round(s), scenarios ${SCENARIOS[*]}"

  # The small-packet test of the current block: once, or once per thread count of --flood-sweep
  # (ascending in odd rounds, descending in even ones), each under $1/threads-N.
  pps_tests() {
    local base=$1 tag=$2 n list=("${FLOOD_SWEEP[@]}")
    if [ ${#list[@]} = 0 ]; then
      OUT=$base
      pps_test
      log "$tag: 64 B UDP      $(fig "$3" "$OUT" "$RAW/generator")"
      return
    fi
    if [ $((${round:-1} % 2)) = 0 ]; then
      list=()
      for ((n = ${#FLOOD_SWEEP[@]} - 1; n >= 0; n--)); do list+=("${FLOOD_SWEEP[$n]}"); done
    fi
    for n in "${list[@]}"; do
      OUT=$base/threads-$n
      mkdir -p "$OUT"
      FLOOD_THREADS=$n pps_test
      log "$tag: 64 B UDP, $n flood thread(s): $(fig "$3" "$OUT" "$RAW/generator/threads-$n")"
    done
    OUT=$base
  }

  # 1. The generator over the raw underlay: its rate bounds what the small-packet test can show.
  log "generator: vxdp-bench flood (${FLOOD_SWEEP[*]:-$FLOOD_THREADS} thread(s), sendmmsg, ${PPS_SIZE}-byte payloads) over the raw underlay"
  OUT=$RAW/generator
  mkdir -p "$OUT"
  contender_up host underlay
  ip netns exec "$T-ul" ethtool -k h1 > "$OUT/ethtool-ul-h1.txt" 2>&1 || true
  ip netns exec "$T-h1" ethtool -k eth0 > "$OUT/ethtool-h1-eth0.txt" 2>&1 || true
  settle > "$OUT/settle.txt"
  pps_tests "$OUT" generator generator
  topo_down

  # 2. Is the backend in this build? `vxdp run --backend kernel|udp` refuses a backend this
  # build does not have (or that cannot run here): the contender stays in the tables as n/a,
  # with vxdp's reason. The xdp backend is vxdp's own: a failure there is a FAILED block.
  declare -A SKIP=()
  mkdir -p "$RAW/unavailable"
  for c in "${CONTENDERS[@]}"; do
    case $c in vxdp-kernel | vxdp-udp) ;; *) continue ;; esac
    OUT=$RAW/unavailable
    topo_up
    FAIL_REASON=
    vxdp_up "${c#vxdp-}" || true
    topo_down
    if [ -n "$FAIL_REASON" ]; then
      SKIP[$c]=$FAIL_REASON
      log "$c: not available in this build: vxdp run --backend ${c#vxdp-} refused ($FAIL_REASON); kept in the tables as n/a"
      printf '%s\n' "$FAIL_REASON" > "$RAW/unavailable/$c.txt"
    else
      log "$c: vxdp run --backend ${c#vxdp-} starts; measuring it"
    fi
  done
  rm -f "$RAW"/unavailable/ethtool-*

  # 3. An idle vxdp node: CPU over IDLE_S seconds with no traffic (a dataplane that spins is not
  # a drop-in).
  proc_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
  proc_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
  for c in "${CONTENDERS[@]}"; do
    case $c in vxdp-*) ;; *) continue ;; esac
    [ -n "${SKIP[$c]:-}" ] && continue
    [ ${#FLOOD_SWEEP[@]} -gt 0 ] && continue
    OUT=$RAW/idle/$c
    mkdir -p "$OUT"
    if ! contender_up host "$c"; then
      log "idle $c: FAILED to start: $FAIL_REASON"
      printf '%s\n' "$FAIL_REASON" > "$OUT/failed.txt"
      topo_down
      continue
    fi
    settle > "$OUT/settle.txt"
    log "idle $c: measuring both nodes for ${IDLE_S}s with no traffic"
    sleep 2
    for h in 1 2; do
      pid=${VX_PIDS[$((h - 1))]}
      echo "$(proc_ticks "$pid") $(proc_switches "$pid") $(date +%s.%N)" > "$OUT/h$h-0.txt"
    done
    cpustat > "$OUT/cpu0.json"
    run_fg sleep "$IDLE_S"
    for h in 1 2; do
      pid=${VX_PIDS[$((h - 1))]}
      echo "$(proc_ticks "$pid") $(proc_switches "$pid") $(date +%s.%N)" > "$OUT/h$h-1.txt"
    done
    cpustat > "$OUT/cpu1.json"
    log "idle $c: $(fig idle "$OUT")"
    topo_down
  done

  # ---- rounds --------------------------------------------------------------------------------
  # A block is one contender in one scenario; each round runs every block, on even rounds in
  # reverse order, so slow drift on the host lands on both sides of every comparison.
  BLOCKS=()
  for scenario in "${SCENARIOS[@]}"; do
    for c in "${CONTENDERS[@]}"; do [ -z "${SKIP[$c]:-}" ] && BLOCKS+=("$scenario/$c"); done
  done
  BLOCKS_TOTAL=$((ROUNDS * ${#BLOCKS[@]}))
  BLOCKS_DONE=0
  ROUNDS_START=$(date +%s)
  FAILED=0
  for round in $(seq 1 "$ROUNDS"); do
    order=("${BLOCKS[@]}")
    if [ $((round % 2)) = 0 ]; then
      order=()
      for ((i = ${#BLOCKS[@]} - 1; i >= 0; i--)); do order+=("${BLOCKS[$i]}"); done
    fi
    log "round $round/$ROUNDS: ${order[*]}"
    mkdir -p "$RAW/rounds/$round"
    echo "${order[*]}" > "$RAW/rounds/$round/order.txt"
    for block in "${order[@]}"; do
      scenario=${block%%/*}
      c=${block#*/}
      OUT=$RAW/rounds/$round/$scenario/$c
      mkdir -p "$OUT"
      tag="round $round/$ROUNDS $scenario $c"
      if ! contender_up "$scenario" "$c"; then
        log "$tag: FAILED to set up: $FAIL_REASON"
        printf '%s\n' "$FAIL_REASON" > "$OUT/failed.txt"
        FAILED=1
        topo_down
        continue
      fi
      settle > "$OUT/settle.txt"
      if [ ${#FLOOD_SWEEP[@]} -gt 0 ]; then
        pps_tests "$OUT" "$tag" pps
      else
        tcp_test tcp1 1
        log "$tag: TCP 1 stream  $(fig tcp "$OUT" tcp1)"
        tcp_test tcp4 4
        log "$tag: TCP 4 streams $(fig tcp "$OUT" tcp4)"
        # vxdp-bench's flood, sink and RTT speak IPv4 only.
        if [ "$scenario" != host6 ]; then
          pps_tests "$OUT" "$tag" pps
          rtt_test
          log "$tag: RTT           $(fig rtt "$OUT")"
        fi
        case $c in vxdp-*) vxdp_status ;; esac
      fi
      topo_down
      BLOCKS_DONE=$((BLOCKS_DONE + 1))
      per=$((($(date +%s) - ROUNDS_START) / BLOCKS_DONE))
      log "$tag: done ($BLOCKS_DONE/$BLOCKS_TOTAL, about $(((BLOCKS_TOTAL - BLOCKS_DONE) * per))s left)"
    done
  done

  # ---- report --------------------------------------------------------------------------------
  mkdir -p "$ROOT/target/bench"
  JSON=$ROOT/target/bench/bench-$(date -u +%Y%m%dT%H%M%SZ).json
  python3 "$REPORT" report --raw "$RAW" --env "$ENV_FILE" --json "$JSON" \
    --seconds $(($(date +%s) - START_EPOCH))
  log "full results: $JSON"
  log "total time: $(($(date +%s) - START_EPOCH))s"
  exit $FAILED
}

main &
MAIN=$!
trap 'kill -TERM "$MAIN" 2>/dev/null; wait "$MAIN"; exit 130' INT
trap 'kill -TERM "$MAIN" 2>/dev/null; wait "$MAIN"; exit 143' TERM
rc=0
wait "$MAIN" || rc=$?
exit $rc
