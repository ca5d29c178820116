#!/usr/bin/env bash
# Installs every system package vxdp's build, tests, demo and benchmarks need.
# Idempotent: installs only what is missing (after `apt-get update`). Needs root.
set -euo pipefail

packages=(
  # build: libbpf-cargo compiles bpf/*.bpf.c with clang; libbpf-sys links libelf and zlib
  clang llvm libelf-dev zlib1g-dev pkg-config linux-libc-dev make
  # etcd-client (etcd v3 API) generates its protobuf code with protoc; its .proto files import
  # google/protobuf/descriptor.proto, which comes with libprotobuf-dev (only a Recommends of
  # protobuf-compiler, so --no-install-recommends leaves it out)
  protobuf-compiler libprotobuf-dev
  # cargo fetches crates from crates.io over HTTPS and needs the system's CA certificates
  ca-certificates
  # tests: namespaces, veth, kernel vxlan peers, a real etcd
  iproute2 iputils-ping procps ethtool libcap2-bin etcd-server etcd-client
  # modprobe, to load br_netfilter (below)
  kmod
  nftables iptables tcpdump openssl
  # demo and benchmarks
  iperf3 strace curl python3
  # tests: deploy/kube-vxdp.yml is checked with kubernetes-validate from PyPI (below)
  python3-pip
  # bench.sh counts vxdp's system calls per frame with perf (raw_syscalls tracepoint)
  linux-perf
  # scripts/soak.sh reads vxdp status and iperf3 JSON
  jq util-linux
  # the systemd unit is checked with systemd-analyze verify
  systemd
)

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh installs system packages and must run as root" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -q
  # etcd-server's postinst would start a system etcd; vxdp's tests start their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# vxdp, like flanneld, refuses to start without br_netfilter unless the network config sets
# EnableNFTables (bridged pod traffic must pass iptables for kube-proxy): the demo, the tests and
# the benchmarks run it with the default config, so the module must be loaded. Where it is built
# into the kernel, its sysctls are always there.
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  if modprobe br_netfilter; then
    echo "setup: loaded br_netfilter (add it to /etc/modules-load.d/ to keep it after a reboot)"
  else
    echo "setup: WARNING: cannot load br_netfilter (in a container or chroot, load it on the" \
      "host); vxdp will refuse to start without it unless EnableNFTables is set" >&2
  fi
fi

# tests/deploy_manifest.rs validates deploy/kube-vxdp.yml offline against the Kubernetes API's
# JSON schemas with PyPI's kubernetes-validate (kubectl --dry-run=client still asks a server).
if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  echo "setup: installing kubernetes-validate (PyPI)"
  # A Debian python3 refuses system-wide pip installs (PEP 668) unless told otherwise.
  python3 -m pip install --quiet kubernetes-validate 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is not installed; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
echo "setup: system packages present"
