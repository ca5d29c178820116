#!/usr/bin/env bash
# Micro-benchmarks of the per-frame costs (criterion): encapsulation, decapsulation, flow hash,
# peer-table lookups (also under concurrent updates). Reports ns per frame.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo bench --bench dataplane -- "$@"
