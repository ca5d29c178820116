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

echo "test: running"
cargo test --workspace --quiet -- --test-threads="${VXDP_TEST_THREADS:-2}"

left=$(ip netns list | grep -c '^vxt' || true)
if [ "$left" -gt 0 ]; then
  echo "test: $left network namespaces left behind by the tests" >&2
  exit 1
fi
echo "test: all passed"
