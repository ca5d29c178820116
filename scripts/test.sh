#!/usr/bin/env bash
# Installs what the build needs, builds, and runs every test: unit tests, the veth AF_XDP test,
# the etcd store tests against a real etcd, and the end-to-end tests in network namespaces.
# Needs root (namespaces, TAP, XDP). Privileged tests fail, never skip, without it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "test: formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "test: building"
cargo build --workspace --all-targets --quiet

# Namespaces that already exist (another run on this machine, one killed earlier) are not this
# run's doing: only the ones the tests below create and leave behind fail the run.
test_namespaces() { ip netns list | awk '$1 ~ /^vxt/ {print $1}' | sort; }
before=$(test_namespaces)

echo "test: running"
cargo test --workspace --quiet -- --test-threads="${VXDP_TEST_THREADS:-2}"

left=$(comm -13 <(echo "$before") <(test_namespaces) | grep . || true)
if [ -n "$left" ]; then
  echo "test: network namespaces left behind by the tests: $(echo $left)" >&2
  exit 1
fi
echo "test: all passed"
