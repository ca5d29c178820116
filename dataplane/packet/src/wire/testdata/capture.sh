#!/bin/bash
# Captures real VXLAN traffic between two kernel vxlan links set up the way flanneld does it,
# inside throwaway network namespaces (nothing leaves them). The frames in the unit tests were cut
# from these captures with pcap2rust.py. Run as root: capture.sh [OUTDIR]
#
# Scenarios (one pcap each, taken on the underlay veth unless said otherwise):
#   v4-udpcsum     VNI 1, port 8472, IPv4 underlay, udpcsum, offloads off (all checksums final)
#   v4-noudpcsum   same with noudpcsum (flannel's default)
#   v4-vni42       VNI 42, port 4789 (IANA), noudpcsum
#   v6             VNI 1, port 8472, IPv6 underlay (fd00::/64); udp6 checksums are mandatory
#   v4-partial     udpcsum with veth/vxlan TX offloads left on, taken on the receiving side:
#                  the outer UDP checksum is still CHECKSUM_PARTIAL (only the pseudo header sum)
#   arp-inner      taken on the vxlan link: the kernel's ARP request for the peer's overlay
#                  address and the peer kernel's reply (the neighbour entry removed for this)
set -euo pipefail

OUT=$(realpath "${1:-$(dirname "$0")}")
P="wirecap-$$-"
A="${P}a"
B="${P}b"
MAC_A=c6:d2:32:6f:8f:44 # VtepMACs (flannel makes up locally administered ones)
MAC_B=9a:3b:5c:7d:1e:02
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ina() { ip netns exec "$A" "$@"; }
inb() { ip netns exec "$B" "$@"; }

ip netns add "$A"
ip netns add "$B"
ip -n "$A" link add veth address 02:00:00:00:0a:01 type veth peer name veth netns "$B" address 02:00:00:00:0b:01
ip -n "$A" addr add 192.0.2.1/24 dev veth
ip -n "$B" addr add 192.0.2.2/24 dev veth
ip -n "$A" addr add fd00::1/64 dev veth nodad
ip -n "$B" addr add fd00::2/64 dev veth nodad
for ns in "$A" "$B"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set veth up
done

# vx_up LOCAL_A LOCAL_B VNI PORT CSUM OFFLOAD MTU
vx_up() {
    local la=$1 lb=$2 vni=$3 port=$4 csum=$5 offload=$6 mtu=$7
    ip -n "$A" link add vx address "$MAC_A" mtu "$mtu" type vxlan id "$vni" dstport "$port" local "$la" dev veth nolearning "$csum"
    ip -n "$B" link add vx address "$MAC_B" mtu "$mtu" type vxlan id "$vni" dstport "$port" local "$lb" dev veth nolearning "$csum"
    ip -n "$A" addr add 10.1.1.0/32 dev vx
    ip -n "$B" addr add 10.1.2.0/32 dev vx
    ip -n "$A" link set vx up
    ip -n "$B" link set vx up
    ip -n "$A" route add 10.1.2.0/24 via 10.1.2.0 dev vx onlink
    ip -n "$B" route add 10.1.1.0/24 via 10.1.1.0 dev vx onlink
    ip -n "$A" neigh add 10.1.2.0 lladdr "$MAC_B" dev vx nud permanent
    ip -n "$B" neigh add 10.1.1.0 lladdr "$MAC_A" dev vx nud permanent
    bridge -n "$A" fdb add "$MAC_B" dev vx dst "$lb"
    bridge -n "$B" fdb add "$MAC_A" dev vx dst "$la"
    for ns in "$A" "$B"; do
        for dev in veth vx; do ip netns exec "$ns" ethtool -K "$dev" tx "$offload" >/dev/null 2>&1 || true; done
        ip -n "$ns" neigh flush dev veth
    done
}

vx_down() {
    ip -n "$A" link del vx
    ip -n "$B" link del vx
}

# capture NAME NS DEV: starts tcpdump; stop_capture ends it.
capture() {
    ip netns exec "$2" tcpdump -i "$3" -n -U --immediate-mode -s 0 -w "$OUT/$1.pcap" 2>/dev/null &
    CAP=$!
    PIDS+=("$CAP")
    sleep 1
}
stop_capture() {
    sleep 0.5
    kill -INT "$CAP"
    wait "$CAP" || true
}

traffic() {
    ina ping -c 2 -i 0.2 -W 1 10.1.2.0 >/dev/null
    # A small TCP exchange and a UDP datagram with its echo.
    inb python3 -c '
import socket
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("10.1.2.0", 5000)); t.listen(1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.1.2.0", 5001))
c, _ = t.accept(); c.sendall(c.recv(100).upper()); c.close()
d, a = u.recvfrom(100); u.sendto(d.upper(), a)
' &
    local srv=$!
    PIDS+=("$srv")
    sleep 0.5
    ina python3 -c '
import socket
t = socket.create_connection(("10.1.2.0", 5000), timeout=2); t.sendall(b"hello vxlan\n"); t.recv(100); t.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
u.sendto(b"ping over udp\n", ("10.1.2.0", 5001)); u.recvfrom(100)
'
    wait "$srv"
}

vx_up 192.0.2.1 192.0.2.2 1 8472 udpcsum off 1450
capture v4-udpcsum "$A" veth; traffic; stop_capture; vx_down

vx_up 192.0.2.1 192.0.2.2 1 8472 noudpcsum off 1450
capture v4-noudpcsum "$A" veth; traffic; stop_capture; vx_down

vx_up 192.0.2.1 192.0.2.2 42 4789 noudpcsum off 1450
capture v4-vni42 "$A" veth; ina ping -c 1 -W 1 10.1.2.0 >/dev/null; stop_capture; vx_down

vx_up fd00::1 fd00::2 1 8472 udpcsum off 1430
capture v6 "$A" veth; traffic; stop_capture; vx_down

vx_up 192.0.2.1 192.0.2.2 1 8472 udpcsum on 1450
capture v4-partial "$B" veth; ina ping -c 1 -W 1 10.1.2.0 >/dev/null; stop_capture; vx_down

vx_up 192.0.2.1 192.0.2.2 1 8472 noudpcsum off 1450
ip -n "$A" neigh del 10.1.2.0 dev vx
bridge -n "$A" fdb append 00:00:00:00:00:00 dev vx dst 192.0.2.2
capture arp-inner "$A" vx; ina ping -c 1 -W 1 10.1.2.0 >/dev/null; stop_capture; vx_down

echo "captures written to $OUT"
