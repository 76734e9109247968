#!/usr/bin/env bash
# Measure what users judge vpnhop by (docs/benchmarks.md), as root:
# client-visible downtime across checkpoint/"reboot"/restore, side by side
# with the same cycle done by hand with plain CRIU, and start-up against runc.
# Arguments go to the benchmark, e.g. `scripts/bench.sh --cycles 30 --clients 5`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [ "$(id -u)" -ne 0 ]; then
    echo "bench: must run as root (it creates namespaces and containers)" >&2
    exit 1
fi

scripts/setup.sh --stock-criu
# The benchmark drives the release binaries, the shim included.
cargo build --release --workspace --locked
cargo bench --locked -p vpnhop --bench downtime -- "$@"
