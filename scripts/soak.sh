#!/usr/bin/env bash
# Soak test: SOAK_MINUTES (default 30) of mixed traffic between 3 vxdp hosts in network
# namespaces on the embedded lease store, while fake leases come, go and change every few
# seconds and one node (h3) is restarted every few minutes (SIGTERM and SIGKILL in turn).
# Samples every daemon's RSS every 30 s. At the end it prints RSS per node (start, end, max),
# panics found in the logs, leases a node lost, ping loss per pair and the bytes moved, and
# exits non-zero on a panic, a dead daemon, a lost lease, or RSS growing by more than 20% from
# the 5-minute mark to the end on a node that was never restarted (for runs shorter than
# 10 minutes the reference is the sample at a third of the run).
#
# Needs root, iproute2, iperf3, ping, flock and jq. Knobs (environment):
#   SOAK_MINUTES       run time in minutes (default 30)
#   VXDP_BIN           the vxdp binary (default: cargo build --release, target/release/vxdp)
#   SOAK_RESTART_SECS  seconds between restarts of h3 (default min(180, run/3))
#   SOAK_CHURN_SECS    seconds between fake-lease changes (default 3)
#   SOAK_TCP_RATE      iperf3 -b per TCP stream (default 100M; 4 streams)
#   SOAK_UDP_RATE      iperf3 -b per UDP stream (default 20M; 2 streams)
#   SOAK_KEEP=1        keep the work directory (logs, samples) also on success
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${SOAK_MINUTES:-30}
DUR=$((MINUTES * 60))
CHURN_SECS=${SOAK_CHURN_SECS:-3}
RESTART_SECS=${SOAK_RESTART_SECS:-$((DUR / 3 < 180 ? DUR / 3 : 180))}
TCP_RATE=${SOAK_TCP_RATE:-100M}
UDP_RATE=${SOAK_UDP_RATE:-20M}
CHUNK=60 # seconds per iperf3 run; a failed run is counted and the flow starts again

if [ "$(id -u)" -ne 0 ]; then
  echo "soak: needs root (network namespaces, TAP, XDP)" >&2
  exit 1
fi
for tool in ip iperf3 ping flock jq; do
  command -v "$tool" >/dev/null || {
    echo "soak: $tool is missing (apt-get install iproute2 iperf3 iputils-ping util-linux jq)" >&2
    exit 1
  }
done
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  # vxdp refuses to start without it, as flanneld does (scripts/setup.sh loads it).
  echo "soak: br_netfilter is not loaded: modprobe br_netfilter (or run scripts/setup.sh)" >&2
  exit 1
fi
if [ -z "${VXDP_BIN:-}" ]; then
  echo "soak: building vxdp (release)"
  cargo build --release --bin vxdp --quiet
  VXDP_BIN=$PWD/target/release/vxdp
fi
VXDP=$VXDP_BIN

P=vxs$$ # namespace prefix, unique to this run
WORK=$(mktemp -d /tmp/vxdp-soak.XXXXXX)
STORE=$WORK/store
BG=() # PIDs of everything started in the background (killed by PID at the end)

log() { echo "soak $(date +%T): $*"; }

cleanup() {
  local rc=$?
  set +e
  local pids=("${BG[@]}") i t
  for i in 1 2 3; do
    [ -f "$WORK/h$i/pid" ] && pids+=("$(cat "$WORK/h$i/pid")")
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for t in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do
      # A child that exited stays a zombie until waited for: ask ps for its state.
      case "$(ps -o stat= -p "$pid" 2>/dev/null)" in "" | Z*) ;; *) alive=1 ;; esac
    done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  for ns in "$P-h1" "$P-h2" "$P-h3" "$P-ul"; do ip netns del "$ns" 2>/dev/null; done
  if [ "$rc" -ne 0 ] || [ "${SOAK_KEEP:-0}" = 1 ]; then
    echo "soak: logs and samples kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the hosts ---------------------------------------------------------------------------
mkdir -p "$STORE" "$WORK/flows"
echo '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' >"$STORE/config"
ip netns add "$P-ul"
ip -n "$P-ul" link set lo up
ip -n "$P-ul" link add br0 type bridge
ip -n "$P-ul" link set br0 up
# The fake leases' PublicIP: the bridge answers ARP for it, so their next hops resolve.
ip -n "$P-ul" addr add 192.0.2.254/24 dev br0
for i in 1 2 3; do
  ip netns add "$P-h$i"
  ip -n "$P-h$i" link set lo up
  ip link add eth0 netns "$P-h$i" type veth peer name "h$i" netns "$P-ul"
  ip -n "$P-ul" link set "h$i" master br0 up
  ip -n "$P-h$i" addr add "192.0.2.$i/24" dev eth0
  ip -n "$P-h$i" link set eth0 up
  mkdir -p "$WORK/h$i"
done

start_node() {
  local i=$1
  ip netns exec "$P-h$i" env RUST_LOG=info "$VXDP" run --iface eth0 --local-store "$STORE" \
    --subnet-file "$WORK/h$i/subnet.env" --control-socket "$WORK/h$i/control.sock" \
    --worker-cpus none --backend xdp >>"$WORK/h$i/vxdp.log" 2>&1 &
  echo $! >"$WORK/h$i/pid"
}

status() { "$VXDP" status --json --control-socket "$WORK/h$1/control.sock" 2>/dev/null; }

wait_ready() {
  local i=$1 t
  for t in $(seq 200); do
    if [ -s "$WORK/h$i/subnet.env" ] && status "$i" >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "soak: vxdp on h$i did not become ready:" >&2
  tail -20 "$WORK/h$i/vxdp.log" >&2
  return 1
}

# 10.244.7.1/24 in the subnet file -> 10.244.7.0, the address on the node's vxdp.1
overlay_ip() { sed -n 's/^FLANNEL_SUBNET=\(.*\)\.1\/.*/\1.0/p' "$WORK/h$1/subnet.env"; }
own_subnet() { sed -n 's/^FLANNEL_SUBNET=\(.*\)\.1\/\(.*\)/\1.0\/\2/p' "$WORK/h$1/subnet.env"; }

# Every lease in the store but node i's own, as sorted subnets.
store_peers() {
  local own
  own=$(own_subnet "$1")
  find "$STORE/subnets" -maxdepth 1 -type f ! -name '.*' -printf '%f\n' |
    sed 's/-/\//' | grep -vxF "$own" | sort
}
node_peers() { status "$1" | jq -r '.peers[].subnet' | sort; }

rss_of() { awk '/^VmRSS:/ {print $2}' "/proc/$(cat "$WORK/h$1/pid")/status" 2>/dev/null || echo 0; }

for i in 1 2 3; do start_node "$i"; done
for i in 1 2 3; do wait_ready "$i"; done
for t in $(seq 100); do
  ok=1
  for i in 1 2 3; do [ "$(node_peers "$i" | wc -l)" -eq 2 ] || ok=0; done
  [ $ok = 1 ] && break
  sleep 0.1
done
for i in 1 2 3; do log "h$i: subnet $(own_subnet "$i"), pid $(cat "$WORK/h$i/pid")"; done

START=$(date +%s)
END=$((START + DUR))
log "running ${MINUTES} min: restart h3 every ${RESTART_SECS} s, lease churn every ${CHURN_SECS} s"

# --- traffic -------------------------------------------------------------------------------
# name src dst proto port
FLOWS="tcp12 1 2 tcp 5212
tcp21 2 1 tcp 5221
tcp13 1 3 tcp 5213
tcp31 3 1 tcp 5231
udp23 2 3 udp 5223
udp32 3 2 udp 5232"

while read -r name src dst proto port; do
  ip netns exec "$P-h$dst" iperf3 -s -p "$port" >"$WORK/flows/server.$name.log" 2>&1 &
  BG+=($!)
done <<<"$FLOWS"
sleep 0.5

flow_loop() {
  local name=$1 src=$2 dst=$3 proto=$4 port=$5 n=0 left t opts err
  if [ "$proto" = udp ]; then opts="-u -b $UDP_RATE"; else opts="-b $TCP_RATE"; fi
  while :; do
    left=$((END - $(date +%s)))
    [ "$left" -ge 5 ] || break
    t=$((left < CHUNK ? left : CHUNK))
    n=$((n + 1))
    # iperf3 -J exits 0 also when the run failed: the JSON's "error" says so. A UDP run aborts
    # when its route vanishes for a moment (a restarting peer); it is simply started again.
    # shellcheck disable=SC2086
    ip netns exec "$P-h$src" timeout $((t + 30)) iperf3 -c "$(overlay_ip "$dst")" -p "$port" \
      -t "$t" -J $opts >"$WORK/flows/$name.$n.json" 2>&1 || true
    err=$(jq -r '.error // empty' "$WORK/flows/$name.$n.json" 2>/dev/null || echo "no JSON output")
    if [ -n "$err" ]; then
      echo "$(date +%T) $name run $n: $err" >>"$WORK/flows/failures"
      sleep 1
    fi
  done
}
FLOW_PIDS=()
while read -r name src dst proto port; do
  flow_loop "$name" "$src" "$dst" "$proto" "$port" &
  FLOW_PIDS+=($!)
  BG+=($!)
done <<<"$FLOWS"

for a in 1 2 3; do
  for b in 1 2 3; do
    [ "$a" = "$b" ] && continue
    ip netns exec "$P-h$a" ping -i 0.2 -W 2 "$(overlay_ip "$b")" >"$WORK/ping.$a$b.log" 2>&1 &
    echo $! >"$WORK/ping.$a$b.pid"
    BG+=($!)
  done
done

# --- lease churn: fake flanneld leases in 10.244.240-249.0/24, added, removed, changed -------
churn_loop() {
  local n=0 net file mac expiry real action
  while [ "$(date +%s)" -lt $((END - 10)) ]; do
    sleep "$CHURN_SECS"
    net=$((240 + RANDOM % 10))
    real=$(for i in 1 2 3; do own_subnet "$i"; done)
    if grep -qxF "10.244.$net.0/24" <<<"$real"; then continue; fi
    file="$STORE/subnets/10.244.$net.0-24"
    if [ -e "$file" ] && [ $((RANDOM % 2)) = 0 ]; then
      action=remove
      flock "$STORE/.lock" rm -f "$file"
    else
      [ -e "$file" ] && action=change || action=add
      mac=$(printf '02:%02x:%02x:%02x:%02x:%02x' $((RANDOM % 256)) $((RANDOM % 256)) \
        $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)))
      expiry=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
      printf '{"PublicIP":"192.0.2.254","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"},"Expiration":"%s"}' \
        "$mac" "$expiry" >"$STORE/subnets/.soak.tmp"
      flock "$STORE/.lock" mv -f "$STORE/subnets/.soak.tmp" "$file"
    fi
    n=$((n + 1))
    echo "$(date +%T) $action 10.244.$net.0/24" >>"$WORK/churn.log"
  done
}
churn_loop &
CHURN_PID=$!
BG+=($CHURN_PID)

# --- the clock: RSS samples every 30 s, a restart of h3 every RESTART_SECS ------------------
sample() {
  local now=$(($(date +%s) - START)) i
  for i in 1 2 3; do
    echo "$now h$i $(cat "$WORK/h$i/pid") $(rss_of "$i")" >>"$WORK/rss.tsv"
  done
}

restarts=0
restart_failures=0
next_sample=$START
next_restart=$((START + RESTART_SECS))
while [ "$(date +%s)" -lt "$END" ]; do
  now=$(date +%s)
  if [ "$now" -ge "$next_sample" ]; then
    sample
    next_sample=$((next_sample + 30))
  fi
  if [ "$now" -ge "$next_restart" ] && [ $((now + 30)) -lt "$END" ]; then
    if [ $((restarts % 2)) = 0 ]; then sig=TERM; else sig=KILL; fi
    pid=$(cat "$WORK/h3/pid")
    before=$(own_subnet 3)
    kill -"$sig" "$pid"
    wait "$pid" 2>/dev/null || true
    t0=$(date +%s%N)
    start_node 3
    if wait_ready 3; then
      log "h3 restarted after SIG$sig (ready in $((($(date +%s%N) - t0) / 1000000)) ms, subnet $(own_subnet 3))"
      [ "$(own_subnet 3)" = "$before" ] || log "h3 changed subnet: $before -> $(own_subnet 3)"
    else
      restart_failures=$((restart_failures + 1))
    fi
    restarts=$((restarts + 1))
    next_restart=$((next_restart + RESTART_SECS))
  fi
  sleep 1
done
sample
log "time is up; waiting for the traffic and churn to finish"
# The flow loops and the churn loop end by themselves (every iperf3 run is bounded by
# `timeout`); servers and pings are stopped in the cleanup.
wait "$CHURN_PID" "${FLOW_PIDS[@]}" 2>/dev/null || true

# --- verdict ---------------------------------------------------------------------------------
fail=0
report() { echo "  $*"; }

echo
echo "soak report (${MINUTES} min, $restarts restarts of h3, $(wc -l <"$WORK/churn.log" 2>/dev/null || echo 0) lease changes)"

# Leases: after the churn stopped, every node lists exactly the store's leases but its own.
echo "leases:"
for i in 1 2 3; do
  if ! status "$i" >/dev/null; then
    report "h$i: vxdp is not answering (dead?)"
    fail=1
    continue
  fi
  ok=0
  for t in $(seq 50); do
    if [ "$(node_peers "$i")" = "$(store_peers "$i")" ]; then ok=1 && break; fi
    sleep 0.2
  done
  if [ $ok = 1 ]; then
    report "h$i: $(node_peers "$i" | wc -l) peers, as in the store"
  else
    report "h$i: LOST LEASES: missing $(comm -13 <(node_peers "$i") <(store_peers "$i") | tr '\n' ' ')extra $(comm -23 <(node_peers "$i") <(store_peers "$i") | tr '\n' ' ')"
    fail=1
  fi
done

echo "panics:"
for i in 1 2 3; do
  n=$(grep -c 'panicked' "$WORK/h$i/vxdp.log" || true)
  report "h$i: $n"
  if [ "$n" -gt 0 ]; then
    grep -m3 -A3 'panicked' "$WORK/h$i/vxdp.log" | sed 's/^/    /'
    fail=1
  fi
done
[ "$restart_failures" = 0 ] || {
  report "h3 failed to come back $restart_failures time(s)"
  fail=1
}

echo "RSS (KiB; samples every 30 s):"
if [ "$DUR" -ge 600 ]; then ref_t=300; else ref_t=$((DUR / 3)); fi
for i in 1 2 3; do
  read -r start endv maxv refv < <(awk -v h="h$i" -v rt="$ref_t" '
    $2 == h { if (!n++) s = $4; e = $4; if ($4 > m) m = $4; if (!r && $1 >= rt) r = $4 }
    END { print s, e, m, r }' "$WORK/rss.tsv")
  line="h$i: start $start, end $endv, max $maxv, at ${ref_t}s $refv"
  if [ "$i" = 3 ] && [ "$restarts" -gt 0 ]; then
    report "$line (restarted: growth not judged)"
  elif [ -n "$refv" ] && [ "$refv" -gt 0 ] && [ $((endv * 100)) -gt $((refv * 120)) ]; then
    report "$line: GREW $(((endv - refv) * 100 / refv))% since ${ref_t}s"
    fail=1
  else
    report "$line"
  fi
done

echo "ping loss (restarts of h3 cost a few pings to and from it):"
for f in "$WORK"/ping.*.pid; do kill -INT "$(cat "$f")" 2>/dev/null || true; done
sleep 1
for a in 1 2 3; do
  for b in 1 2 3; do
    [ "$a" = "$b" ] && continue
    s=$(grep 'packets transmitted' "$WORK/ping.$a$b.log" || echo "no summary")
    report "h$a -> h$b: $s"
  done
done

echo "traffic:"
total=0
while read -r name src dst proto port; do
  bytes=0
  runs=0
  for f in "$WORK"/flows/"$name".*.json; do
    [ -e "$f" ] || continue
    runs=$((runs + 1))
    if [ "$proto" = tcp ]; then
      b=$(jq -r '.end.sum_received.bytes // 0' "$f" 2>/dev/null || echo 0)
    else
      b=$(jq -r '(.end.sum.bytes // 0) * (1 - (.end.sum.lost_percent // 0) / 100) | floor' "$f" 2>/dev/null || echo 0)
    fi
    bytes=$((bytes + ${b:-0}))
  done
  total=$((total + bytes))
  report "$name (h$src -> h$dst $proto): $((bytes / 1048576)) MiB received in $runs run(s)"
done <<<"$FLOWS"
report "total: $((total / 1048576)) MiB moved"
if [ -s "$WORK/flows/failures" ]; then
  report "iperf3 runs that failed (expected around restarts of h3): $(wc -l <"$WORK/flows/failures")"
  sed 's/^/    /' "$WORK/flows/failures" | tail -5
fi

if [ $fail = 0 ]; then
  echo "soak: passed"
else
  echo "soak: FAILED"
fi
exit $fail
